package lifecycle

import (
	"errors"
	"strings"
	"testing"
)

// want is the lifecycle written out cell by cell, independently of the
// table: one row per state, one column per op (in Ops order). A cell is
// "next/action", or "-" for an invalid transition.
var want = map[State]string{
	//           checkpoint         fork                          pause                  sleep                    resume          connect         upgrade                 terminate          exec            file            expose        inference                ingress         booted       lost            fail
	Creating:   "-                  -                             -                      -                        -               -               -                       -                  -               -               -             -                        -               running/none -               failed/none",
	Running:    "running/checkpoint running/fork-live             paused/checkpoint+stop sleeping/checkpoint+stop -               running/none    running/reboot          terminated/destroy running/none    running/none    running/none  sleeping/checkpoint+stop running/none    -            running/restore failed/none",
	Paused:     "-                  paused/fork-from-checkpoint   -                      sleeping/none            running/restore running/restore paused/record-upgrade   terminated/destroy -               -               paused/none   -                        -               -            -               failed/none",
	Sleeping:   "-                  sleeping/fork-from-checkpoint paused/none            -                        running/restore running/restore sleeping/record-upgrade terminated/destroy running/restore running/restore sleeping/none -                        running/restore -            -               failed/none",
	Failed:     "-                  -                             -                      -                        running/restore running/restore failed/record-upgrade   terminated/destroy -               -               failed/none   -                        -               -            -               failed/none",
	Terminated: "-                  -                             -                      -                        -               -               -                       -                  -               -               -             -                        -               -            -               -",
}

func TestEveryCell(t *testing.T) {
	if len(want) != len(States) {
		t.Fatalf("want has %d rows for %d states", len(want), len(States))
	}
	for _, s := range States {
		cells := strings.Fields(want[s])
		if len(cells) != len(Ops) {
			t.Fatalf("%s: %d cells for %d ops", s, len(cells), len(Ops))
		}
		for i, op := range Ops {
			eff, err := Next(s, op)
			if cells[i] == "-" {
				var ite *InvalidTransitionError
				if !errors.As(err, &ite) || !errors.Is(err, ErrInvalidTransition) || ite.State != s || ite.Op != op {
					t.Errorf("Next(%s, %s) = %+v, %v; want an invalid transition", s, op, eff, err)
				}
				if err != nil && err.Error() != "cannot "+string(op)+" a "+string(s)+" box" {
					t.Errorf("Next(%s, %s) error = %q", s, op, err)
				}
				if Allowed(s, op) {
					t.Errorf("Allowed(%s, %s) = true", s, op)
				}
				continue
			}
			next, action, _ := strings.Cut(cells[i], "/")
			if err != nil || eff != (Effect{State(next), Action(action)}) {
				t.Errorf("Next(%s, %s) = %+v, %v; want %s", s, op, eff, err, cells[i])
			}
			if !Allowed(s, op) {
				t.Errorf("Allowed(%s, %s) = false", s, op)
			}
		}
	}
}

// The table holds no state or op outside States and Ops, and every next
// state is a known one.
func TestTableClosed(t *testing.T) {
	ops := map[Op]bool{}
	for _, op := range Ops {
		ops[op] = true
	}
	for s, row := range table {
		if !s.Valid() {
			t.Errorf("table has unknown state %q", s)
		}
		for op, eff := range row {
			if !ops[op] {
				t.Errorf("%s: unknown op %q", s, op)
			}
			if !eff.Next.Valid() {
				t.Errorf("%s %s: unknown next state %q", s, op, eff.Next)
			}
		}
	}
	if _, err := Next("bogus", OpResume); !errors.Is(err, ErrInvalidTransition) {
		t.Errorf("Next on an unknown state: %v", err)
	}
	if State("bogus").Valid() || !Running.Valid() {
		t.Error("Valid")
	}
}

// The semantics the issue names, spelled out.
func TestSemantics(t *testing.T) {
	for _, c := range []struct {
		s    State
		op   Op
		want Effect
	}{
		{Sleeping, OpExec, Effect{Running, ActRestore}},         // exec wakes a sleeping box
		{Sleeping, OpIngress, Effect{Running, ActRestore}},      // so does a connection
		{Paused, OpFork, Effect{Paused, ActForkFromCheckpoint}}, // the parent stays down
		{Sleeping, OpFork, Effect{Sleeping, ActForkFromCheckpoint}},
		{Running, OpUpgrade, Effect{Running, ActReboot}},      // reboots, stays running
		{Paused, OpUpgrade, Effect{Paused, ActRecordUpgrade}}, // recorded only
		{Sleeping, OpUpgrade, Effect{Sleeping, ActRecordUpgrade}},
	} {
		if got, err := Next(c.s, c.op); err != nil || got != c.want {
			t.Errorf("Next(%s, %s) = %+v, %v; want %+v", c.s, c.op, got, err, c.want)
		}
	}
	for _, op := range []Op{OpExec, OpFile, OpIngress, OpCheckpoint} {
		if Allowed(Paused, op) {
			t.Errorf("a paused box accepts %s: only resume or connect wake it", op)
		}
	}
}
