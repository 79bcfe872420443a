package kvm

import (
	"fmt"
	"os"
)

// Backend names the kernel module that implements /dev/kvm on this host.
type Backend string

const (
	BackendIntel   Backend = "kvm_intel" // VMX
	BackendAMD     Backend = "kvm_amd"   // SVM
	BackendPVM     Backend = "kvm_pvm"   // software "pagetable virtual machine": PVM-aware guests only
	BackendUnknown Backend = ""
)

// sysModule is where loaded (and built-in, parameterised) modules appear.
var sysModule = "/sys/module"

// HostBackend reports which KVM implementation this host has, from
// /sys/module. It does not open /dev/kvm.
func HostBackend() Backend {
	for _, b := range []Backend{BackendIntel, BackendAMD, BackendPVM} {
		if _, err := os.Stat(sysModule + "/" + string(b)); err == nil {
			return b
		}
	}
	return BackendUnknown
}

// OpenUsable opens /dev/kvm and checks that it can run Sailbox's guests:
// the stable API, backed by hardware virtualisation. A KVM provided by
// kvm_pvm is refused: it runs only guest kernels built for PVM, not the
// standard x86 boot ABI Sailbox's guest kernel uses.
func OpenUsable() (*System, error) {
	if b := HostBackend(); b == BackendPVM {
		return nil, fmt.Errorf("%s is provided by %s, which runs only PVM-aware guest kernels: %w", DevicePath, b, ErrUnusable)
	}
	return Open(DevicePath)
}
