package kvm

import (
	"testing"
	"unsafe"
)

func TestIRQFDSize(t *testing.T) {
	if got := unsafe.Sizeof(irqfd{}); got != sizeofIRQFD {
		t.Errorf("sizeof kvm_irqfd = %d, want %d", got, sizeofIRQFD)
	}
}
