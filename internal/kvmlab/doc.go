// Package kvmlab runs Sailbox's kvm-tier tests where KVM really is.
//
// Where the host's /dev/kvm is usable (see vmm/kvm.OpenUsable) the test
// binaries run directly. Elsewhere — development and CI machines are VMs
// without nested hardware virtualisation — they run in the KVM lab: a
// Debian kernel (6.12 from bookworm-backports, see build/lab-kernel.sh)
// booted under QEMU's emulator (TCG) with an emulated AMD CPU that offers
// SVM, so the lab kernel's kvm-amd gives a real /dev/kvm. The
// project's code then runs on real KVM code paths, slowly but faithfully.
//
// A run is a Plan: steps (a binary, its arguments, environment and working
// directory). On the host the runner (cmd/kvmlab) builds the test binaries,
// writes the plan and the lab's init (cmd/kvmlab-init) into an initramfs
// with the kernel modules the lab needs, and boots QEMU with the host's root
// directory shared read-only over 9p. Inside, the init loads the modules,
// mounts the share, and runs each step chrooted into it, so every path in a
// plan means the same file in the lab as on the host. Output streams over
// the serial console; marker lines carry each step's exit status back.
// A lab that does not finish before its timeout is killed and its console
// log printed.
package kvmlab
