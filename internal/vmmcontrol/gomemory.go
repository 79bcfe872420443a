package vmmcontrol

import (
	"runtime/metrics"

	"github.com/sailbox-dev/sailbox/api/vmmapi"
)

// goMemoryClasses are the runtime/metrics classes GoMemory adds up, each
// to the field it goes to. Together they are /memory/classes/total.
var goMemoryClasses = []struct {
	name  string
	field func(*vmmapi.GoMemory) *uint64
}{
	{"/memory/classes/heap/objects:bytes", func(g *vmmapi.GoMemory) *uint64 { return &g.HeapObjects }},
	{"/memory/classes/heap/free:bytes", func(g *vmmapi.GoMemory) *uint64 { return &g.HeapFree }},
	{"/memory/classes/heap/unused:bytes", func(g *vmmapi.GoMemory) *uint64 { return &g.HeapFree }},
	{"/memory/classes/heap/released:bytes", func(g *vmmapi.GoMemory) *uint64 { return &g.HeapReleased }},
	{"/memory/classes/heap/stacks:bytes", func(g *vmmapi.GoMemory) *uint64 { return &g.Stacks }},
	{"/memory/classes/os-stacks:bytes", func(g *vmmapi.GoMemory) *uint64 { return &g.Stacks }},
	{"/memory/classes/metadata/mcache/free:bytes", func(g *vmmapi.GoMemory) *uint64 { return &g.Other }},
	{"/memory/classes/metadata/mcache/inuse:bytes", func(g *vmmapi.GoMemory) *uint64 { return &g.Other }},
	{"/memory/classes/metadata/mspan/free:bytes", func(g *vmmapi.GoMemory) *uint64 { return &g.Other }},
	{"/memory/classes/metadata/mspan/inuse:bytes", func(g *vmmapi.GoMemory) *uint64 { return &g.Other }},
	{"/memory/classes/metadata/other:bytes", func(g *vmmapi.GoMemory) *uint64 { return &g.Other }},
	{"/memory/classes/profiling/buckets:bytes", func(g *vmmapi.GoMemory) *uint64 { return &g.Other }},
	{"/memory/classes/other:bytes", func(g *vmmapi.GoMemory) *uint64 { return &g.Other }},
}

// heapGoal is the runtime/metrics name of GoMemory.HeapGoal.
const heapGoal = "/gc/heap/goal:bytes"

// goMemory reads the Go runtime's account of this process's memory. A
// class this runtime does not know is left out (its sample reads as
// KindBad).
func goMemory() *vmmapi.GoMemory {
	samples := make([]metrics.Sample, len(goMemoryClasses)+1)
	for i, c := range goMemoryClasses {
		samples[i].Name = c.name
	}
	samples[len(goMemoryClasses)].Name = heapGoal
	metrics.Read(samples)
	var g vmmapi.GoMemory
	for i, c := range goMemoryClasses {
		if samples[i].Value.Kind() == metrics.KindUint64 {
			*c.field(&g) += samples[i].Value.Uint64()
		}
	}
	if v := samples[len(goMemoryClasses)].Value; v.Kind() == metrics.KindUint64 {
		g.HeapGoal = v.Uint64()
	}
	return &g
}
