package main

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/vmm"
)

// Every part of a checkpoint's pause is a row of its own, paired with the
// MiB dirtied, so the report's table has a line per part and dirty size.
func TestPausePartsRows(t *testing.T) {
	msec := time.Millisecond
	p := vmm.PauseParts{Stop: 1 * msec, DirtyLog: 2 * msec, Copy: 3 * msec, VMState: 4 * msec, VCPUState: 5 * msec, Devices: 6 * msec, DiskSwitch: 7 * msec, Resume: 8 * msec}
	parts := pauseParts(p)
	var sum time.Duration
	ids := map[string]bool{}
	for _, part := range parts {
		sum += part.d
		ids[part.id] = true
	}
	if n := reflect.TypeOf(p).NumField(); len(parts) != n || len(ids) != n || sum != p.Sum() {
		t.Fatalf("%d parts (%d IDs) summing to %v; want every one of the %d fields, summing to %v", len(parts), len(ids), sum, n, p.Sum())
	}

	var res Results
	for _, mib := range []float64{0, 64, 0} {
		res.recordPauseParts(mib, vmm.CheckpointStats{Pause: 40 * msec, PauseParts: p, PausedPages: 12})
	}
	row, ok := res.rowByID("checkpoint.pause.copy")
	if !ok || len(row.X) != 3 || row.X[1] != 64 || row.Samples[1] != 3 || row.XUnit != "MiB" {
		t.Fatalf("copy row = %+v", row)
	}
	if row, ok := res.rowByID("checkpoint.paused_pages"); !ok || row.Samples[0] != 12 || row.Unit != "pages" {
		t.Errorf("paused pages row = %+v", row)
	}
	md := markdown(&res, "results-x", nil)
	for _, want := range []string{
		"| checkpoint pause: copy of the pages dirtied since the pre-copy, against MiB dirtied since the last, at 0 MiB `checkpoint.pause.copy` | 2 | 3.00 |",
		"| checkpoint pause: disk switch to new tops, against MiB dirtied since the last, at 64 MiB `checkpoint.pause.disk_switch` | 1 | 7.00 |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if got, want := pausePartsLine(p), "stop=1.000 dirty_log=2.000 copy=3.000 vm_state=4.000 vcpu_state=5.000 devices=6.000 disk_switch=7.000 resume=8.000"; got != want {
		t.Errorf("text line = %q, want %q", got, want)
	}
}
