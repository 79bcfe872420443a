// Package vmm is the Sailbox virtual machine monitor: it owns a VM's guest
// memory, its vCPU run loops, its boot, and its checkpoints. All access to
// KVM goes through the sub-package vmm/kvm; devices (package devices) never
// see KVM.
//
// A Machine's life, and the file that holds each part:
//
//   - New (machine.go) builds a VM that boots a Linux bzImage; Restore
//     (restore.go) builds one from a checkpoint instead. Either way Run
//     (machine.go, vcpu.go) runs one goroutine per vCPU, locked to its
//     thread, until the guest powers off or resets, or Stop.
//   - Pause and Resume (pause.go) park every vCPU on its thread, out of
//     KVM_RUN with its last exit completed, and quiesce the devices with
//     goroutines of their own.
//   - Checkpoint (checkpoint.go) writes a checkpoint while the guest runs:
//     the pages changed since the last one (dirty.go: KVM's dirty log
//     merged with the VMM's own writes, copied to a spill file), then,
//     stopped only briefly, the state of every vCPU and of the VM
//     (persist.go) and of every device, and the sealed disk tops, into a
//     snapshot.Root.
//   - Restore maps the checkpoint's memory layers copy-on-write and loads
//     that state back, so a fork is a Checkpoint followed by a Restore.
//     CheckpointDisks (restore.go) opens only a checkpoint's disks, for a
//     fresh boot on them: how a box is upgraded onto a new guest agent.
//
// Invariants: Pause, Resume and Checkpoint are serialized by the machine's
// lifecycle lock and need Run to be running; a vCPU's KVM state is only
// read or written on its own thread, while it is parked (vcpu.do).
package vmm
