package kvm

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// DevicePath is where the KVM device lives on a Linux host.
const DevicePath = "/dev/kvm"

// ErrUnusable reports that /dev/kvm is missing, not accessible, or not a KVM
// this package can drive. It wraps the underlying cause.
var ErrUnusable = errors.New("kvm unusable")

// System is an open /dev/kvm. It is safe for concurrent use.
type System struct {
	fd int
}

// Open opens the KVM device at path (DevicePath if empty) and checks that it
// speaks the stable API (KVM_GET_API_VERSION == 12).
func Open(path string) (*System, error) {
	if path == "" {
		path = DevicePath
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, openError(path, err)
	}
	s := &System{fd: fd}
	v, err := ioctl(fd, ioctlGetAPIVersion, 0)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("%s: KVM_GET_API_VERSION: %w: %w", path, ErrUnusable, err)
	}
	if v != APIVersion {
		s.Close()
		return nil, fmt.Errorf("%s: KVM API version %d, want %d: %w", path, v, APIVersion, ErrUnusable)
	}
	return s, nil
}

// openError is the error of a failed open of the KVM device at path. A
// refusal says what an ordinary user needs: Sailbox needs no root, only
// read and write access to the device, which hosts give to its group.
func openError(path string, err error) error {
	if !errors.Is(err, unix.EACCES) && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("open %s: %w: %w", path, ErrUnusable, err)
	}
	group := "its group"
	if fi, serr := os.Stat(path); serr == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			gid := strconv.FormatUint(uint64(st.Gid), 10)
			group = "its group, ID " + gid
			if g, lerr := user.LookupGroupId(gid); lerr == nil {
				group = "its group " + g.Name
			}
		}
	}
	return fmt.Errorf("open %s: %w: %w (the user needs read and write access to it, as members of %s usually have; no root is needed)", path, ErrUnusable, err, group)
}

// Close closes /dev/kvm. VMs created from it stay valid.
func (s *System) Close() error {
	return unix.Close(s.fd)
}

// CheckExtension returns KVM_CHECK_EXTENSION for c: 0 when unsupported,
// otherwise 1 or a capability-specific value (a count, a bit mask).
func (s *System) CheckExtension(c Capability) (int, error) {
	r, err := ioctl(s.fd, ioctlCheckExtension, uintptr(c))
	if err != nil {
		return 0, fmt.Errorf("KVM_CHECK_EXTENSION %d: %w", c, err)
	}
	return int(r), nil
}

// VCPUMmapSize returns the size of the shared kvm_run region of a vCPU.
func (s *System) VCPUMmapSize() (int, error) {
	r, err := ioctl(s.fd, ioctlGetVCPUMmapSize, 0)
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	return int(r), nil
}

// CreateVM creates a new, empty virtual machine (KVM_CREATE_VM, type 0).
func (s *System) CreateVM() (*VM, error) {
	runSize, err := s.VCPUMmapSize()
	if err != nil {
		return nil, err
	}
	if runSize < runExitUnion+256 {
		return nil, fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE %d is smaller than struct kvm_run", runSize)
	}
	r, err := ioctl(s.fd, ioctlCreateVM, 0)
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	return &VM{fd: int(r), runSize: runSize}, nil
}

// SupportedCPUID returns the CPUID entries KVM can offer a guest on this
// host (KVM_GET_SUPPORTED_CPUID), including KVM's paravirtual leaves.
func (s *System) SupportedCPUID() ([]CPUIDEntry, error) {
	e, err := s.supportedCPUID()
	if err != nil {
		return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
	}
	return e, nil
}
