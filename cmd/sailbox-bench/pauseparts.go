package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/sailbox-dev/sailbox/vmm"
)

// pausePart is one part of a checkpoint's pause (vmm.PauseParts) as a
// bench row: checkpoint.pause.<id>.
type pausePart struct {
	id, label string
	d         time.Duration
}

// pauseParts are p's parts in the order the pause runs them.
func pauseParts(p vmm.PauseParts) []pausePart {
	return []pausePart{
		{"stop", "stopping vCPUs and devices", p.Stop},
		{"dirty_log", "dirty log fetch and clear", p.DirtyLog},
		{"copy", "copy of the pages dirtied since the pre-copy", p.Copy},
		{"vm_state", "irqchip, PIT and clock save", p.VMState},
		{"vcpu_state", "vCPU state save", p.VCPUState},
		{"devices", "device state save", p.Devices},
		{"disk_switch", "disk switch to new tops", p.DiskSwitch},
		{"resume", "resume", p.Resume},
	}
}

// recordPauseParts records st's pause parts and paused pages as rows
// paired with the MiB dirtied since the last checkpoint, beside
// checkpoint.pause: the table then shows which part grows with them.
func (r *Results) recordPauseParts(mib float64, st vmm.CheckpointStats) {
	for _, part := range pauseParts(st.PauseParts) {
		r.pair("checkpoint.pause."+part.id, "snapshots", "checkpoint pause: "+part.label+", against MiB dirtied since the last", "ms", "MiB", mib, ms(part.d))
	}
	r.pair("checkpoint.paused_pages", "snapshots", "checkpoint pages copied while paused, against MiB dirtied since the last", "pages", "MiB", mib, float64(st.PausedPages))
}

// pausePartsLine is st's pause parts for the text table, in ms.
func pausePartsLine(p vmm.PauseParts) string {
	var b strings.Builder
	for i, part := range pauseParts(p) {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%s=%.3f", part.id, ms(part.d))
	}
	return b.String()
}
