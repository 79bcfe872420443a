package kvm

import "unsafe"

func (vm *VM) irqfdIoctl(a *irqfd) error {
	_, err := ioctlPtr(vm.fd, ioctlIRQFD, unsafe.Pointer(a))
	return err
}
