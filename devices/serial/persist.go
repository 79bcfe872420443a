package serial

import (
	"bytes"
	"fmt"
	"io"

	"github.com/sailbox-dev/sailbox/devices"
)

// StateVersion is the version of State that Save writes and Restore
// accepts.
const StateVersion = 1

// State is a UART's state: its registers and the receive FIFO. The other
// registers are derived from these: IIR from IER, the pending THRE
// interrupt and the FIFO; LSR is always THRE|TEMT, with DR while the FIFO
// holds data; MSR follows MCR in loopback and is fixed otherwise.
type State struct {
	Version uint32 // StateVersion

	IER byte // interrupt enable (bits 0-3)
	LCR byte // line control, with DLAB
	MCR byte // modem control (bits 0-4)
	SCR byte // scratch
	FCR byte // FIFO control, as last written
	DLL byte // divisor latch, low byte
	DLM byte // divisor latch, high byte
	// THRInterrupt reports a transmitter-empty interrupt not yet
	// acknowledged by a read of IIR.
	THRInterrupt bool
	// RxFIFO holds received bytes the guest has not read, oldest first;
	// at most 4096.
	RxFIFO []byte
}

// Save returns the UART's state. Call it with the vCPUs paused; it takes
// the UART's lock, so host input (Receive) lands wholly before or after
// it.
func (s *Serial) Save() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	var fifo []byte
	if len(s.in) > 0 {
		fifo = bytes.Clone(s.in)
	}
	return State{
		Version: StateVersion,
		IER:     s.ier, LCR: s.lcr, MCR: s.mcr, SCR: s.scr, FCR: s.fcr, DLL: s.dll, DLM: s.dlm,
		THRInterrupt: s.thrIntr,
		RxFIFO:       fifo,
	}
}

// Restore returns a UART in state st, raising irq and writing the guest's
// output to out (nil discards it). If an interrupt is pending it raises
// it again: a spurious edge costs the driver a read of IIR, a lost one
// could leave received bytes unread. So that this edge is not lost,
// restore the interrupt controller first.
func Restore(st State, irq devices.Interrupt, out io.Writer) (*Serial, error) {
	if err := devices.CheckStateVersion("serial", st.Version, StateVersion); err != nil {
		return nil, err
	}
	switch {
	case st.IER&^ierMask != 0:
		return nil, fmt.Errorf("serial: restore: IER %#x has reserved bits set: %w", st.IER, devices.ErrInvalidState)
	case st.MCR&^0x1f != 0:
		return nil, fmt.Errorf("serial: restore: MCR %#x has reserved bits set: %w", st.MCR, devices.ErrInvalidState)
	case len(st.RxFIFO) > fifoMax:
		return nil, fmt.Errorf("serial: restore: %d bytes in the receive FIFO, more than %d: %w", len(st.RxFIFO), fifoMax, devices.ErrInvalidState)
	}
	s := New(irq, out)
	s.ier, s.lcr, s.mcr, s.scr, s.fcr, s.dll, s.dlm = st.IER, st.LCR, st.MCR, st.SCR, st.FCR, st.DLL, st.DLM
	s.thrIntr = st.THRInterrupt
	if len(st.RxFIFO) > 0 {
		s.in = bytes.Clone(st.RxFIFO)
	}
	if s.pendingLocked() != iirNone {
		if err := irq.Trigger(); err != nil {
			return nil, fmt.Errorf("serial: restore: raise pending interrupt: %w", err)
		}
	}
	return s, nil
}

// RaisePending raises the interrupt again if one is pending; see
// virtio.MMIO.RaisePending for when a VMM needs it after a restore.
func (s *Serial) RaisePending() error {
	s.mu.Lock()
	pending := s.pendingLocked() != iirNone
	s.mu.Unlock()
	if !pending {
		return nil
	}
	if err := s.irq.Trigger(); err != nil {
		return fmt.Errorf("serial: raise pending interrupt: %w", err)
	}
	return nil
}
