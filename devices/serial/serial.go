// Package serial models a 16550A UART (the PC's COM1 at 0x3f8) well enough
// for Linux's 8250 driver: the register file with the divisor latch,
// loopback (which the driver's probe uses), the transmit-empty and
// receive-data interrupts, and a receive FIFO for host input.
//
// Output is written synchronously to an io.Writer: the transmitter is always
// empty, so LSR reports THRE|TEMT and the guest never waits. Its write
// errors are ignored, and the writer is called on the vCPU's goroutine, so
// it should neither block nor grow without bound: a console log is a
// guestlog.CappedFile.
package serial

import (
	"io"
	"sync"

	"github.com/sailbox-dev/sailbox/devices"
)

// Register offsets from the base port.
const (
	regData = 0 // RBR (read) / THR (write); DLL when LCR.DLAB
	regIER  = 1 // interrupt enable; DLM when LCR.DLAB
	regIIR  = 2 // interrupt identification (read) / FCR (write)
	regLCR  = 3
	regMCR  = 4
	regLSR  = 5
	regMSR  = 6
	regSCR  = 7

	// Size is the number of ports the UART decodes.
	Size = 8
)

// Register bits.
const (
	ierRDI  = 0x01 // received data available
	ierTHRI = 0x02 // transmitter holding register empty
	ierMask = 0x0f

	iirNone = 0x01 // no interrupt pending
	iirTHRI = 0x02
	iirRDI  = 0x04
	iirFIFO = 0xc0 // FIFOs enabled

	fcrEnable = 0x01

	lcrDLAB = 0x80

	mcrDTR  = 0x01
	mcrRTS  = 0x02
	mcrOUT1 = 0x04
	mcrOUT2 = 0x08
	mcrLoop = 0x10

	lsrDR   = 0x01 // data ready
	lsrTHRE = 0x20
	lsrTEMT = 0x40

	msrCTS = 0x10
	msrDSR = 0x20
	msrRI  = 0x40
	msrDCD = 0x80

	// fifoMax bounds buffered host input; bytes beyond it are dropped, as a
	// real UART overruns.
	fifoMax = 4096
)

// Serial is one UART. Its methods are safe for concurrent use.
type Serial struct {
	irq devices.Interrupt

	mu      sync.Mutex // guards everything below; out is written under it to keep order
	out     io.Writer
	ier     byte
	lcr     byte
	mcr     byte
	scr     byte
	fcr     byte
	dll     byte
	dlm     byte
	thrIntr bool   // a transmit-empty interrupt is pending (cleared by reading IIR)
	in      []byte // received bytes not yet read by the guest
}

// New returns a UART writing the guest's output to out (nil discards it)
// and raising irq.
func New(irq devices.Interrupt, out io.Writer) *Serial {
	if out == nil {
		out = io.Discard
	}
	return &Serial{irq: irq, out: out, dll: 12 /* 9600 baud */, mcr: mcrOUT2}
}

// Read implements devices.BusDevice.
func (s *Serial) Read(offset uint64, data []byte) {
	if len(data) != 1 {
		clear(data)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	data[0] = s.readLocked(offset)
}

func (s *Serial) readLocked(offset uint64) byte {
	switch offset {
	case regData:
		if s.lcr&lcrDLAB != 0 {
			return s.dll
		}
		if len(s.in) == 0 {
			return 0
		}
		b := s.in[0]
		s.in = s.in[1:]
		return b
	case regIER:
		if s.lcr&lcrDLAB != 0 {
			return s.dlm
		}
		return s.ier
	case regIIR:
		id := s.pendingLocked()
		if id == iirTHRI {
			s.thrIntr = false // reading IIR acknowledges THRE
		}
		if s.fcr&fcrEnable != 0 {
			id |= iirFIFO
		}
		return id
	case regLCR:
		return s.lcr
	case regMCR:
		return s.mcr
	case regLSR:
		lsr := byte(lsrTHRE | lsrTEMT)
		if len(s.in) > 0 {
			lsr |= lsrDR
		}
		return lsr
	case regMSR:
		if s.mcr&mcrLoop != 0 {
			var msr byte
			if s.mcr&mcrDTR != 0 {
				msr |= msrDSR
			}
			if s.mcr&mcrRTS != 0 {
				msr |= msrCTS
			}
			if s.mcr&mcrOUT1 != 0 {
				msr |= msrRI
			}
			if s.mcr&mcrOUT2 != 0 {
				msr |= msrDCD
			}
			return msr
		}
		return msrDCD | msrDSR | msrCTS
	case regSCR:
		return s.scr
	}
	return 0
}

// Write implements devices.BusDevice.
func (s *Serial) Write(offset uint64, data []byte) {
	if len(data) != 1 {
		return
	}
	s.mu.Lock()
	raise := s.writeLocked(offset, data[0])
	s.mu.Unlock()
	if raise {
		s.irq.Trigger() // the line is edge-triggered; a lost edge is retried by the driver's timeout
	}
}

// writeLocked applies a register write and reports whether to raise the
// interrupt line.
func (s *Serial) writeLocked(offset uint64, b byte) bool {
	switch offset {
	case regData:
		if s.lcr&lcrDLAB != 0 {
			s.dll = b
			return false
		}
		if s.mcr&mcrLoop != 0 {
			s.receiveLocked([]byte{b})
			return s.ier&ierRDI != 0
		}
		s.out.Write([]byte{b}) // a console that cannot keep up must not stop the guest
		s.thrIntr = true
		return s.ier&ierTHRI != 0
	case regIER:
		if s.lcr&lcrDLAB != 0 {
			s.dlm = b
			return false
		}
		was := s.ier
		s.ier = b & ierMask
		// Enabling THRI while the transmitter is empty raises it at once,
		// which Linux's driver relies on to start transmitting.
		if s.ier&ierTHRI != 0 && was&ierTHRI == 0 {
			s.thrIntr = true
		}
		return s.pendingLocked() != iirNone
	case regIIR:
		s.fcr = b
	case regLCR:
		s.lcr = b
	case regMCR:
		s.mcr = b & 0x1f
	case regSCR:
		s.scr = b
	}
	return false
}

// pendingLocked returns the highest-priority pending interrupt's IIR code.
func (s *Serial) pendingLocked() byte {
	switch {
	case s.ier&ierRDI != 0 && len(s.in) > 0:
		return iirRDI
	case s.ier&ierTHRI != 0 && s.thrIntr:
		return iirTHRI
	}
	return iirNone
}

func (s *Serial) receiveLocked(b []byte) {
	room := fifoMax - len(s.in)
	s.in = append(s.in, b[:min(len(b), room)]...)
}

// Receive queues host input for the guest to read.
func (s *Serial) Receive(b []byte) {
	s.mu.Lock()
	s.receiveLocked(b)
	raise := s.ier&ierRDI != 0 && len(s.in) > 0
	s.mu.Unlock()
	if raise {
		s.irq.Trigger()
	}
}
