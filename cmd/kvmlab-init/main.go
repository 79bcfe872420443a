// Command kvmlab-init is PID 1 of the KVM lab guest: it sets the lab up,
// runs the plan the host put in its initramfs, and powers off. See
// internal/kvmlab.
package main

import (
	"os"

	"github.com/sailbox-dev/sailbox/internal/kvmlab"
)

func main() {
	if err := kvmlab.RunInit(os.Stdout); err != nil {
		kvmlab.ReportError(os.Stdout, err)
	}
	kvmlab.PowerOff()
}
