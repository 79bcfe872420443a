package kvm

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl issues an ioctl whose argument is an integer (or absent).
//
// A signal can interrupt an ioctl before it takes effect (EINTR); the Go
// runtime sends them to every thread (SIGURG for preemption), so ioctl and
// ioctlPtr retry. The one ioctl whose EINTR means something is KVM_RUN (a
// kick), which goes through runIoctl and is never retried.
func ioctl(fd int, req, arg uintptr) (uintptr, error) {
	for {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
		switch errno {
		case 0:
			return r, nil
		case unix.EINTR:
			continue
		}
		return r, errno
	}
}

// ioctlPtr issues an ioctl whose argument points at a Go value that the
// kernel reads or fills in, retrying on EINTR as ioctl does. p must stay
// reachable for the call, which the conversion inside the argument list
// guarantees.
func ioctlPtr(fd int, req uintptr, p unsafe.Pointer) (uintptr, error) {
	for {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(p))
		switch errno {
		case 0:
			return r, nil
		case unix.EINTR:
			continue
		}
		return r, errno
	}
}

// ioctlValue issues an ioctl whose argument points at *p, an ABI struct
// (one of the mirrors in abi_amd64.go) that the kernel reads or fills in.
// It retries EINTR as ioctlPtr does.
func ioctlValue[T any](fd int, req uintptr, p *T) (uintptr, error) {
	return ioctlPtr(fd, req, unsafe.Pointer(p))
}

// runIoctl issues KVM_RUN once. EINTR is returned to the caller: it is how
// a kick (or any signal) takes the vCPU out of the guest.
func runIoctl(fd int) error {
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), ioctlRun, 0); errno != 0 {
		return errno
	}
	return nil
}

// addressOf returns the host virtual address of b's first byte, as KVM
// wants it in kvm_userspace_memory_region.userspace_addr. b must be memory
// that Go's garbage collector never moves: an mmap'ed region.
func addressOf(b []byte) uint64 {
	return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
}

// header views the mmap'ed kvm_run page of a vCPU as its fixed header.
func (v *VCPU) header() *runHeader {
	return (*runHeader)(unsafe.Pointer(&v.run[0]))
}

func (v *VCPU) ioExit() *runIO {
	return (*runIO)(unsafe.Pointer(&v.run[runExitUnion]))
}

func (v *VCPU) mmioExit() *runMMIO {
	return (*runMMIO)(unsafe.Pointer(&v.run[runExitUnion]))
}

func (v *VCPU) internalExit() *runInternal {
	return (*runInternal)(unsafe.Pointer(&v.run[runExitUnion]))
}

// cpuid2 is struct kvm_cpuid2 with room for maxCPUIDEntries entries.
type cpuid2 struct {
	NEnt    uint32
	_       uint32
	Entries [maxCPUIDEntries]CPUIDEntry
}

func (s *System) supportedCPUID() ([]CPUIDEntry, error) {
	c := &cpuid2{NEnt: maxCPUIDEntries}
	if _, err := ioctlValue(s.fd, ioctlGetSupportedCPUID, c); err != nil {
		return nil, err
	}
	return append([]CPUIDEntry(nil), c.Entries[:min(c.NEnt, maxCPUIDEntries)]...), nil
}

func (v *VCPU) setCPUID2(entries []CPUIDEntry) error {
	c := &cpuid2{NEnt: uint32(len(entries))}
	copy(c.Entries[:], entries)
	_, err := ioctlValue(v.fd, ioctlSetCPUID2, c)
	return err
}

// msrs is struct kvm_msrs with room for up to maxMSRs entries.
type msrs struct {
	NMSRs   uint32
	_       uint32
	Entries [maxMSRs]MSREntry
}

const maxMSRs = 256

// msrsIoctl runs KVM_GET_MSRS or KVM_SET_MSRS on fd (a vCPU, or /dev/kvm
// for feature MSRs) and returns how many entries the kernel processed; it
// stops at the first MSR it cannot handle. len(entries) <= maxIOMSRs.
func msrsIoctl(fd int, req uintptr, entries []MSREntry) (int, error) {
	if len(entries) > maxIOMSRs {
		panic("kvm: msrsIoctl: too many entries")
	}
	m := &msrs{NMSRs: uint32(len(entries))}
	copy(m.Entries[:], entries)
	n, err := ioctlValue(fd, req, m)
	if err != nil {
		return 0, err
	}
	copy(entries, m.Entries[:len(entries)])
	return int(n), nil
}

func (v *VCPU) systemEvent() *runSystemEvent {
	return (*runSystemEvent)(unsafe.Pointer(&v.run[runExitUnion]))
}
