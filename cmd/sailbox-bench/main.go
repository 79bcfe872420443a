// Command sailbox-bench measures Sailbox against QEMU on the same host, in
// the same run, with the same guest kernel and initramfs:
//
//   - boot to agent ready: from creating the VM to the guest agent's first
//     health answer over vsock (Sailbox: hybrid vsock; QEMU: vhost-vsock);
//   - exec round trip: `true` run through the agent, end to end;
//   - health round trip: the agent's health call, the same exchange with
//     no process spawned, so that exec ≈ transport (health) + spawn;
//   - against gokvm (-gokvm, gokvm.go), which has no vsock: boot to init's
//     first line on the serial console.
//
// Then checkpoints, restores and forks of a running box, each against a
// boot of the same run (snapshot.go), and against QEMU's own snapshots:
// stop and migrate to a file, -incoming from it, with guest RAM in the
// stream or in a shared memory file the stream skips (qemusnap.go). Given
// a root file system image (-image), boxes booted on it: boot to agent
// ready against the initramfs alone, create from a template and fork of a
// box with python3 warm to the first exec, against a cold boot of the
// image (image.go). Last, given the image, the network (network.go): guest
// → host TCP throughput and connection set-up through a box's
// sailbox-net, against QEMU's user-mode network. -rows picks the groups
// to run.
//
// On a machine without KVM it runs inside the KVM lab (`make bench`), where
// absolute times mean little: compare the ratios, measured in one run.
//
// Besides the text tables, a run hands its results back in its output
// (results.go, handback.go); `sailbox-bench report` finds them there and
// writes results-<time>.json, .md and PNG plots (report.go, plots.go).
package main

import "github.com/sailbox-dev/sailbox/internal/cli"

func main() { cli.Main("sailbox-bench", run) }
