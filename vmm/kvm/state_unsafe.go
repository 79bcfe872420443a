package kvm

import "unsafe"

// xsaveIoctl runs KVM_GET_XSAVE, KVM_GET_XSAVE2 or KVM_SET_XSAVE with buf as
// the struct kvm_xsave. The kernel reads or writes the vCPU's whole XSAVE
// size, whatever the ioctl number says, so buf must be at least that long.
func xsaveIoctl(fd int, req uintptr, buf []byte) error {
	if len(buf) < sizeofXSave {
		panic("kvm: xsaveIoctl: buffer smaller than struct kvm_xsave")
	}
	_, err := ioctlPtr(fd, req, unsafe.Pointer(unsafe.SliceData(buf)))
	return err
}

// msrListIoctl runs KVM_GET_MSR_INDEX_LIST or KVM_GET_MSR_FEATURE_INDEX_LIST
// with buf as the struct kvm_msr_list: buf[0] is nmsrs, the room for
// indices that follows it; KVM writes back the number it has.
func msrListIoctl(fd int, req uintptr, buf []uint32) error {
	if len(buf) == 0 || uint64(buf[0]) > uint64(len(buf)-1) {
		panic("kvm: msrListIoctl: nmsrs larger than the buffer")
	}
	_, err := ioctlPtr(fd, req, unsafe.Pointer(&buf[0]))
	return err
}
