// Package vmm is the Sailbox virtual machine monitor: it owns a VM's guest
// memory, its vCPU run loops and its boot. All access to KVM goes through
// the sub-package vmm/kvm; devices (package devices) never see KVM.
package vmm
