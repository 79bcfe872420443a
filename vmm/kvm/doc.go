// Package kvm is Sailbox's one door to the Linux KVM API: every ioctl on
// /dev/kvm, a VM or a vCPU file descriptor is issued here and nowhere else,
// and every use of package unsafe lives in this package's *_unsafe.go files.
//
// The types mirror KVM's object hierarchy:
//
//	System (/dev/kvm) → VM (KVM_CREATE_VM) → VCPU (KVM_CREATE_VCPU)
//
// Structs that mirror the kernel ABI (include/uapi/linux/kvm.h and
// arch/x86/include/uapi/asm/kvm.h) name the C struct they mirror and have a
// size test. Errors name the ioctl that failed and wrap the errno, so callers
// can test for unix.EINTR, unix.EAGAIN and friends with errors.Is.
//
// Devices never import this package: they see guest memory, an interrupt
// line and a bus (see package devices).
package kvm
