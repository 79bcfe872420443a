package vmmcontrol

import (
	"runtime/metrics"
	"strings"
	"testing"
)

// GoMemory's classes are the runtime's whole account: they add up to
// /memory/classes/total, so none is missed or counted twice.
func TestGoMemoryAddsUpToTheRuntimesTotal(t *testing.T) {
	all := map[string]bool{}
	for _, d := range metrics.All() {
		all[d.Name] = true
	}
	for _, c := range goMemoryClasses {
		if !all[c.name] {
			t.Errorf("this runtime has no %s", c.name)
		}
	}
	for _, d := range metrics.All() {
		if strings.HasPrefix(d.Name, "/memory/classes/") && d.Name != "/memory/classes/total:bytes" {
			found := false
			for _, c := range goMemoryClasses {
				found = found || c.name == d.Name
			}
			if !found {
				t.Errorf("class %s is not in GoMemory", d.Name)
			}
		}
	}
	total := []metrics.Sample{{Name: "/memory/classes/total:bytes"}}
	g := goMemory()
	metrics.Read(total)
	sum := g.HeapObjects + g.HeapFree + g.HeapReleased + g.Stacks + g.Other
	if g.HeapObjects == 0 || g.Stacks == 0 || g.HeapGoal == 0 {
		t.Errorf("GoMemory %+v: no heap objects, stacks or heap goal", g)
	}
	// Read apart, the two can differ by what was allocated between.
	if tot := total[0].Value.Uint64(); sum > tot+1<<20 || sum+1<<20 < tot {
		t.Errorf("GoMemory adds up to %d, the runtime's total is %d", sum, tot)
	}
}
