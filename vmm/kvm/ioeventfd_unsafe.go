package kvm

import "unsafe"

func (vm *VM) ioeventfdIoctl(a *ioeventfd) error {
	_, err := ioctlPtr(vm.fd, ioctlIOEventFD, unsafe.Pointer(a))
	return err
}
