// Command sailbox-bench measures Sailbox against QEMU on the same host, in
// the same run, with the same guest kernel and initramfs:
//
//   - boot to agent ready: from creating the VM to the guest agent's first
//     health answer over vsock (Sailbox: hybrid vsock; QEMU: vhost-vsock);
//   - exec round trip: `true` run through the agent, end to end.
//
// On a machine without KVM it runs inside the KVM lab (`make bench`), where
// absolute times mean little: compare the ratios, measured in one run.
package main

import "github.com/sailbox-dev/sailbox/internal/cli"

func main() { cli.Main("sailbox-bench", run) }
