package acpi

import (
	"testing"

	"github.com/sailbox-dev/sailbox/devices/devicetest"
)

// pm is a PM block under the conformance suite, counting power-offs.
type pm struct {
	p   *PM
	off int
}

func (p *pm) Save(t *testing.T) (State, devicetest.Restorer[State]) {
	return p.p.Save(), func(t *testing.T, st State) (devicetest.Instance[State], error) {
		r := &pm{}
		var err error
		r.p, err = Restore(st, func() { r.off++ })
		return r, err
	}
}

// Mutate powers off.
func (p *pm) Mutate(t *testing.T) {
	write16(p.p, offsetControl, 5<<slpTypeShift|slpEnable|sciEnable)
	if p.off != 1 {
		t.Fatalf("%d power-offs", p.off)
	}
}

// Check expects S5 to be 5 and not yet entered.
func (p *pm) Check(t *testing.T) {
	write16(p.p, offsetControl, 3<<slpTypeShift|slpEnable|sciEnable)
	write16(p.p, offsetControl, 5<<slpTypeShift|slpEnable|sciEnable)
	write16(p.p, offsetControl, 5<<slpTypeShift|slpEnable|sciEnable)
	if p.off != 1 {
		t.Errorf("restored PM: %d power-offs, want 1", p.off)
	}
}

func TestPersist(t *testing.T) {
	devicetest.Conformance(t, devicetest.Harness[State]{
		Start: func(t *testing.T) devicetest.Instance[State] {
			p := &pm{}
			p.p = New(5, func() { p.off++ })
			write16(p.p, offsetControl, 5<<slpTypeShift|sciEnable) // SLP_TYP without SLP_EN
			return p
		},
		Invalid: map[string]func(*State){
			"version":    func(s *State) { s.Version = 0 },
			"sleep type": func(s *State) { s.S5 = 8 },
		},
	})
}
