package serial

import (
	"bytes"
	"testing"
)

type countIRQ struct{ n int }

func (c *countIRQ) Trigger() error { c.n++; return nil }

func (s *Serial) in8(off uint64) byte {
	b := []byte{0}
	s.Read(off, b)
	return b[0]
}
func (s *Serial) out8(off uint64, v byte) { s.Write(off, []byte{v}) }

func TestTransmit(t *testing.T) {
	var out bytes.Buffer
	irq := &countIRQ{}
	s := New(irq, &out)
	for _, c := range []byte("hello\n") {
		if s.in8(regLSR)&lsrTHRE == 0 {
			t.Fatal("THRE not set before a write")
		}
		s.out8(regData, c)
	}
	if out.String() != "hello\n" {
		t.Errorf("output %q", out.String())
	}
	if irq.n != 0 {
		t.Errorf("%d interrupts with IER 0", irq.n)
	}
}

func TestTHREInterrupt(t *testing.T) {
	irq := &countIRQ{}
	s := New(irq, nil)
	s.out8(regIER, ierTHRI)
	if irq.n != 1 || s.in8(regIIR)&0x0f != iirTHRI {
		t.Fatalf("enabling THRI: %d interrupts", irq.n)
	}
	if s.in8(regIIR)&0x0f != iirNone {
		t.Fatal("THRE interrupt not cleared by reading IIR")
	}
	s.out8(regData, 'x')
	if irq.n != 2 || s.in8(regIIR)&0x0f != iirTHRI {
		t.Fatalf("after a write: %d interrupts", irq.n)
	}
}

func TestDivisorLatchAndScratch(t *testing.T) {
	var out bytes.Buffer
	s := New(&countIRQ{}, &out)
	s.out8(regLCR, lcrDLAB)
	s.out8(regData, 0x01)
	s.out8(regIER, 0x02)
	if s.in8(regData) != 0x01 || s.in8(regIER) != 0x02 {
		t.Error("divisor latch not readable")
	}
	s.out8(regLCR, 0x03)
	if s.in8(regIER) != 0 || out.Len() != 0 {
		t.Error("divisor writes leaked into IER or output")
	}
	s.out8(regSCR, 0x5a)
	if s.in8(regSCR) != 0x5a {
		t.Error("scratch register")
	}
}

// Linux's probe puts the UART in loopback and expects MSR to mirror MCR.
func TestLoopback(t *testing.T) {
	var out bytes.Buffer
	irq := &countIRQ{}
	s := New(irq, &out)
	s.out8(regMCR, mcrLoop|0x0a) // OUT2 | RTS
	if msr := s.in8(regMSR) & 0xf0; msr != msrDCD|msrCTS {
		t.Errorf("loopback MSR = %#x, want %#x", msr, msrDCD|msrCTS)
	}
	s.out8(regIER, ierRDI)
	s.out8(regData, 'z')
	if out.Len() != 0 || s.in8(regLSR)&lsrDR == 0 || s.in8(regData) != 'z' || irq.n == 0 {
		t.Errorf("loopback byte: out %q, irq %d", out.String(), irq.n)
	}
}

func TestReceive(t *testing.T) {
	irq := &countIRQ{}
	s := New(irq, nil)
	s.out8(regIER, ierRDI)
	s.Receive([]byte("ab"))
	if irq.n != 1 || s.in8(regIIR)&0x0f != iirRDI {
		t.Fatalf("receive: %d interrupts", irq.n)
	}
	if s.in8(regData) != 'a' || s.in8(regData) != 'b' || s.in8(regLSR)&lsrDR != 0 {
		t.Error("received bytes")
	}
	s.Receive(make([]byte, 2*fifoMax))
	if len(s.in) != fifoMax {
		t.Errorf("fifo holds %d bytes, want at most %d", len(s.in), fifoMax)
	}
}
