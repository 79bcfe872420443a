// Command sailbox-demo is the project's main job: it shows what Sailbox can
// do today on this host's real KVM. `make demo` runs it, inside the KVM lab
// when the host has no usable /dev/kvm.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/sailbox-dev/sailbox/vmm"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "sailbox-demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) != 0 {
		return fmt.Errorf("takes no arguments (got %q)", args)
	}
	sys, err := kvm.OpenUsable()
	if err != nil {
		return err
	}
	defer sys.Close()
	fmt.Fprintf(stdout, "== KVM: %s backed by %s\n", kvm.DevicePath, kvm.HostBackend())

	fmt.Fprintln(stdout, "== Booting the probe guest (real mode, one vCPU, one memory slot); its serial output:")
	res, err := vmm.Probe(ctx, sys, stdout)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "== The guest halted (%v) after %d exits to the VMM.\n", res.Exit, res.Exits)
	return nil
}
