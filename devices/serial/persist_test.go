package serial

import (
	"bytes"
	"testing"

	"github.com/sailbox-dev/sailbox/devices/devicetest"
)

// uart is a UART under the conformance suite, with its line and console.
type uart struct {
	s   *Serial
	irq *countIRQ
	out *bytes.Buffer
}

func (u *uart) Save(t *testing.T) (State, devicetest.Restorer[State]) {
	return u.s.Save(), func(t *testing.T, st State) (devicetest.Instance[State], error) {
		r := &uart{irq: &countIRQ{}, out: &bytes.Buffer{}}
		var err error
		r.s, err = Restore(st, r.irq, r.out)
		return r, err
	}
}

// Mutate sets other registers and reads the FIFO out.
func (u *uart) Mutate(t *testing.T) {
	u.s.out8(regLCR, lcrDLAB)
	u.s.out8(regData, 1) // 115200 baud
	u.s.out8(regIER, 0)
	u.s.out8(regLCR, 0x1b) // 8E1
	u.s.out8(regSCR, 0xa5)
	for u.s.in8(regLSR)&lsrDR != 0 {
		u.s.in8(regData)
	}
}

// Check expects the registers and FIFO Start left, and a working
// transmitter.
func (u *uart) Check(t *testing.T) {
	if lcr, scr, mcr := u.s.in8(regLCR), u.s.in8(regSCR), u.s.in8(regMCR); lcr != 0x03 || scr != 0x5a || mcr != mcrOUT2|mcrRTS|mcrDTR {
		t.Errorf("LCR %#x SCR %#x MCR %#x, want 0x03 0x5a %#x", lcr, scr, mcr, mcrOUT2|mcrRTS|mcrDTR)
	}
	if iir := u.s.in8(regIIR); iir != iirFIFO|iirRDI {
		t.Errorf("IIR %#x, want received data pending with FIFOs on (%#x)", iir, iirFIFO|iirRDI)
	}
	u.s.out8(regLCR, 0x03|lcrDLAB)
	if dll, dlm := u.s.in8(regData), u.s.in8(regIER); dll != 0x0c || dlm != 0x01 {
		t.Errorf("divisor %#x:%#x, want 0x01:0x0c", dlm, dll)
	}
	u.s.out8(regLCR, 0x03)
	var got []byte
	for u.s.in8(regLSR)&lsrDR != 0 {
		got = append(got, u.s.in8(regData))
	}
	if string(got) != "ello" {
		t.Errorf("FIFO held %q, want %q", got, "ello")
	}
	// The THRE interrupt was pending at save: IIR reports it once.
	if iir := u.s.in8(regIIR) & 0x0f; iir != iirTHRI {
		t.Errorf("IIR %#x after the FIFO drained, want THRE", iir)
	}
	u.s.out8(regData, '!')
	if u.out.String() != "!" || u.irq.n != 2 {
		t.Errorf("transmit: output %q, %d interrupts; want \"!\", 2 (the pending one raised again at restore, then THRE)", u.out.String(), u.irq.n)
	}
}

func TestPersist(t *testing.T) {
	devicetest.Conformance(t, devicetest.Harness[State]{
		Start: func(t *testing.T) devicetest.Instance[State] {
			u := &uart{irq: &countIRQ{}, out: &bytes.Buffer{}}
			u.s = New(u.irq, u.out)
			u.s.out8(regLCR, lcrDLAB)
			u.s.out8(regData, 0x0c)
			u.s.out8(regIER, 0x01) // DLM: divisor 0x10c
			u.s.out8(regLCR, 0x03) // 8N1
			u.s.out8(regIIR, fcrEnable)
			u.s.out8(regMCR, mcrOUT2|mcrRTS|mcrDTR)
			u.s.out8(regSCR, 0x5a)
			u.s.out8(regIER, ierRDI|ierTHRI) // raises THRE
			u.s.Receive([]byte("hello"))
			u.s.in8(regData) // 'h'
			return u
		},
		Invalid: map[string]func(*State){
			"version":        func(s *State) { s.Version = 0 },
			"IER reserved":   func(s *State) { s.IER |= 0x10 },
			"MCR reserved":   func(s *State) { s.MCR |= 0x20 },
			"FIFO too large": func(s *State) { s.RxFIFO = make([]byte, fifoMax+1) },
		},
	})
}

// RaisePending raises the interrupt exactly when one is pending.
func TestRaisePending(t *testing.T) {
	irq := &countIRQ{}
	s := New(irq, nil)
	if err := s.RaisePending(); err != nil || irq.n != 0 {
		t.Fatalf("nothing pending: %v, %d interrupts", err, irq.n)
	}
	s.Write(regIER, []byte{ierTHRI}) // enabling THRE with the holder empty raises it
	before := irq.n
	if err := s.RaisePending(); err != nil || irq.n != before+1 {
		t.Fatalf("THRE pending: %v, %d interrupts, want %d", err, irq.n, before+1)
	}
}
