package i8042

import (
	"testing"

	"github.com/sailbox-dev/sailbox/devices/devicetest"
)

// controller is a controller under the conformance suite, counting the
// resets it asks for.
type controller struct {
	d      *Device
	resets int
}

func newController(t *testing.T) devicetest.Instance[State] {
	c := &controller{}
	c.d = New(func() { c.resets++ })
	c.d.Write(CommandPort-DataPort, []byte{0xd1}) // a command that changes nothing
	return c
}

func (c *controller) Save(t *testing.T) (State, devicetest.Restorer[State]) {
	return c.d.Save(), func(t *testing.T, st State) (devicetest.Instance[State], error) {
		r := &controller{}
		var err error
		r.d, err = Restore(st, func() { r.resets++ })
		return r, err
	}
}

// Mutate resets the CPU.
func (c *controller) Mutate(t *testing.T) {
	c.d.Write(CommandPort-DataPort, []byte{cmdResetCPU})
	if c.resets != 1 {
		t.Fatalf("%d resets", c.resets)
	}
}

// Check expects the reset line not yet pulsed, and working once.
func (c *controller) Check(t *testing.T) {
	c.d.Write(CommandPort-DataPort, []byte{cmdResetCPU})
	c.d.Write(CommandPort-DataPort, []byte{cmdResetCPU})
	if c.resets != 1 {
		t.Errorf("restored controller: %d resets, want 1", c.resets)
	}
}

func TestPersist(t *testing.T) {
	devicetest.Conformance(t, devicetest.Harness[State]{
		Start:   newController,
		Invalid: map[string]func(*State){"version": func(s *State) { s.Version = 2 }},
	})
}

// TestRestoreAfterReset checks that a controller saved after the reset
// does not reset again once restored.
func TestRestoreAfterReset(t *testing.T) {
	d := New(func() {})
	d.Write(CommandPort-DataPort, []byte{cmdResetCPU})
	n := 0
	r, err := Restore(d.Save(), func() { n++ })
	if err != nil {
		t.Fatal(err)
	}
	r.Write(CommandPort-DataPort, []byte{cmdResetCPU})
	if n != 0 {
		t.Errorf("%d resets after restoring a controller that had reset", n)
	}
}
