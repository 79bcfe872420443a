package serial

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/sailbox-dev/sailbox/internal/guestlog"
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

// TestConsoleLogIsCapped has the guest print far more than the console
// log's cap, a byte at a time as the 8250 driver does: the log and its
// backup hold at most two caps' worth, the end of the output, and the
// transmitter never looks busy, even once the log's directory is gone.
func TestConsoleLogIsCapped(t *testing.T) {
	const capBytes = 16 << 10
	const total = 16 * capBytes
	dir := t.TempDir()
	path := filepath.Join(dir, "console.log")
	log, err := guestlog.OpenCapped(path, capBytes, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := New(&countIRQ{}, log)
	out := func(n int) {
		t.Helper()
		for i := range n {
			if s.in8(regLSR)&lsrTHRE == 0 {
				t.Fatal("THRE clear: the guest would wait for the console log")
			}
			s.out8(regData, 'a'+byte(i%26))
		}
	}
	out(total)
	var use int64
	for _, name := range []string{"console.log", "console.log.1"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		use += fi.Size()
	}
	if use != 2*capBytes {
		t.Errorf("%d bytes printed leave %d bytes of log, want %d", total, use, 2*capBytes)
	}
	if b, _ := os.ReadFile(path + ".1"); len(b) == 0 || b[0] != 'a'+byte((total-2*capBytes)%26) {
		t.Error("the backup is not the output before the current file")
	}

	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	out(2 * capBytes)
	if err := log.Close(); err != nil {
		t.Fatal(err)
	}
	if log.Lost() == 0 {
		t.Error("no bytes counted lost with the log's directory gone")
	}
}
