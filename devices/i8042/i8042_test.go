package i8042

import "testing"

func TestResetLine(t *testing.T) {
	n := 0
	d := New(func() { n++ })
	status := []byte{0xff}
	d.Read(CommandPort-DataPort, status)
	if status[0] != 0 {
		t.Errorf("status = %#x, want 0 (input buffer empty)", status[0])
	}
	d.Write(DataPort-DataPort, []byte{cmdResetCPU}) // the data port does not reset
	d.Write(CommandPort-DataPort, []byte{0xd1})     // another command
	if n != 0 {
		t.Fatal("reset on a non-reset write")
	}
	d.Write(CommandPort-DataPort, []byte{cmdResetCPU})
	d.Write(CommandPort-DataPort, []byte{cmdResetCPU})
	if n != 1 {
		t.Errorf("reset called %d times, want 1", n)
	}
}
