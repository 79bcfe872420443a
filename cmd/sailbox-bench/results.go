package main

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// Results is one run of the bench as a harness reads it: every sample of
// every row, the ratios the text tables print, the boots the lab broke and
// were retried, and where and on what it ran. It is what the run hands
// back (handback.go) and what `sailbox-bench report` writes as
// bench/results-<time>.json; its field names are the file's format.
type Results struct {
	// Format is resultsFormat; a reader refuses others.
	Format   int       `json:"format"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Quick    bool      `json:"quick"` // -quick: a smoke test, few samples
	// Commit is `git describe --always --dirty` of the tree the bench was
	// built from (-commit, which make bench passes).
	Commit string `json:"commit"`
	// Flags are every flag's value, defaults included.
	Flags map[string]string `json:"flags"`
	// Machine is where the guests ran: inside the KVM lab, the lab's
	// emulated machine. Host is the machine that ran the report: for a
	// lab run, the one the lab ran on.
	Machine Machine  `json:"machine"`
	Host    *Machine `json:"host,omitempty"`
	// Peers are the versions of what Sailbox is compared with ("qemu",
	// "gokvm": the module version its binary records).
	Peers map[string]string `json:"peers"`
	// Guest is what the guests booted: kernel, initramfs and image paths.
	Guest   map[string]string `json:"guest"`
	Rows    []Row             `json:"rows"`
	Ratios  []Ratio           `json:"ratios"`
	Retries []Retry           `json:"retries"`
	// Groups are the row groups (-rows) measured to their end, in order.
	Groups []string `json:"groups"`
	// Resumed are the groups that an earlier lab of this run measured
	// and handed back before it crashed (resume.go); the run measured
	// the rest in a later lab.
	Resumed []string `json:"resumed,omitempty"`
	// Notes are what the run left out and why (a peer's failed sample, a
	// row group skipped).
	Notes []string `json:"notes"`
	// Error, if not empty, ended the run early: the rows are those
	// measured until then.
	Error string `json:"error,omitempty"`
}

// resultsFormat is the version of the Results JSON.
const resultsFormat = 1

// Row is one measured quantity: its samples in measurement order.
type Row struct {
	ID    string `json:"id"` // stable, e.g. "boot.sailbox"
	Group string `json:"group"`
	Label string `json:"label"`
	Unit  string `json:"unit"` // "ms", "MiB", "MiB/s"
	// Samples are the measurements; X, if not empty, is the variable each
	// was measured against (XUnit), one per sample: the MiB a checkpoint
	// saw dirtied, the number of forks running.
	Samples []float64 `json:"samples"`
	X       []float64 `json:"x,omitempty"`
	XUnit   string    `json:"x_unit,omitempty"`
	// Curve: the samples are one quantity as X grows (the private memory
	// of 1, 2, ... forks), not repeated measurements at each X.
	Curve bool `json:"curve,omitempty"`
}

// Ratio is a row's p50 over the sum of other rows' p50s, in the same run:
// a peer's (QEMU's, gokvm's) or a cold boot's.
type Ratio struct {
	ID    string `json:"id"`
	Label string `json:"label"`
	Num   string `json:"num"` // a row ID
	// NumX, if set, narrows Num to its samples measured at this X (the
	// checkpoints at 0 MiB dirtied).
	NumX  *float64 `json:"num_x,omitempty"`
	Den   []string `json:"den"` // row IDs, summed
	Value float64  `json:"value"`
}

// Retry is one attempt at a sample that failed because the boot broke
// (the agent never answered, the guest shut down): the sample was taken
// again, up to bootAttempts times.
type Retry struct {
	What    string `json:"what"`
	Attempt int    `json:"attempt"` // 1-based
	Error   string `json:"error"`
	GaveUp  bool   `json:"gave_up"` // the last attempt; the run failed
}

// Machine is what a program ran on.
type Machine struct {
	CPUModel  string `json:"cpu_model"`
	CPUs      int    `json:"cpus"`
	MemoryMiB int64  `json:"memory_mib"`
	Kernel    string `json:"kernel"`
	InLab     bool   `json:"in_lab"` // inside the KVM lab
}

// row returns the row id, adding it if new.
func (r *Results) row(id, group, label, unit string) *Row {
	for i := range r.Rows {
		if r.Rows[i].ID == id {
			return &r.Rows[i]
		}
	}
	r.Rows = append(r.Rows, Row{ID: id, Group: group, Label: label, Unit: unit, Samples: []float64{}})
	return &r.Rows[len(r.Rows)-1]
}

// durations records d, in ms, as row id's samples.
func (r *Results) durations(id, group, label string, d ...time.Duration) {
	row := r.row(id, group, label, "ms")
	for _, v := range d {
		row.Samples = append(row.Samples, ms(v))
	}
}

// values records v (in unit) as row id's samples. A sample that is not a
// number (JSON has none) is left out, with a note.
func (r *Results) values(id, group, label, unit string, v ...float64) {
	row := r.row(id, group, label, unit)
	for _, x := range v {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			r.note("%s: a sample of %v left out", id, x)
			continue
		}
		row.Samples = append(row.Samples, x)
	}
}

// pair records one sample y measured at x.
func (r *Results) pair(id, group, label, unit, xUnit string, x, y float64) {
	row := r.row(id, group, label, unit)
	row.XUnit = xUnit
	row.X = append(row.X, x)
	row.Samples = append(row.Samples, y)
}

// curve records the point (x, y) of a curve (Row.Curve).
func (r *Results) curve(id, group, label, unit, xUnit string, x, y float64) {
	r.pair(id, group, label, unit, xUnit, x, y)
	r.row(id, group, label, unit).Curve = true
}

// note records what the run left out.
func (r *Results) note(format string, a ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, a...))
}

// ratio records and returns row num's p50 over the sum of den's p50s; 0
// (recorded as such) if a row is missing or empty.
func (r *Results) ratio(id, label, num string, den ...string) float64 {
	n, ok := r.p50(num)
	return r.addRatio(Ratio{ID: id, Label: label, Num: num, Den: den}, n, ok)
}

// ratioAt is ratio with num's samples measured at x alone.
func (r *Results) ratioAt(id, label, num string, x float64, den ...string) float64 {
	n, ok := r.p50At(num, x)
	return r.addRatio(Ratio{ID: id, Label: label, Num: num, NumX: &x, Den: den}, n, ok)
}

// addRatio records q with the value n (if ok) over the sum of its den's
// p50s.
func (r *Results) addRatio(q Ratio, n float64, ok bool) float64 {
	v := 0.0
	if ok {
		d := 0.0
		for _, id := range q.Den {
			p, ok := r.p50(id)
			if !ok {
				d = 0
				break
			}
			d += p
		}
		if d > 0 {
			v = n / d
		}
	}
	q.Value = v
	r.Ratios = append(r.Ratios, q)
	return v
}

// p50 is row id's p50, false if the run has no sample of it.
func (r *Results) p50(id string) (float64, bool) {
	if row, ok := r.rowByID(id); ok {
		return percentile(row.Samples, 0.5), true
	}
	return 0, false
}

// p50At is the p50 of row id's samples measured at x, false if it has
// none.
func (r *Results) p50At(id string, x float64) (float64, bool) {
	row, ok := r.rowByID(id)
	if !ok || len(row.X) != len(row.Samples) {
		return 0, false
	}
	var at []float64
	for i, v := range row.Samples {
		if row.X[i] == x {
			at = append(at, v)
		}
	}
	if len(at) == 0 {
		return 0, false
	}
	return percentile(at, 0.5), true
}

// rowByID returns row id if it has samples.
func (r *Results) rowByID(id string) (*Row, bool) {
	for i := range r.Rows {
		if r.Rows[i].ID == id && len(r.Rows[i].Samples) > 0 {
			return &r.Rows[i], true
		}
	}
	return nil, false
}

// percentile is the sample at rank floor(p·n) of the sorted samples
// (clamped to the last): the upper median for p = 0.5, the largest of
// fewer than 100 samples for p = 0.99. NaN for none.
func percentile(samples []float64, p float64) float64 {
	if len(samples) == 0 {
		return math.NaN()
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	return s[min(len(s)-1, int(math.Floor(p*float64(len(s)))))]
}

// median is the text tables' p50, the same percentile.
func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	f := make([]float64, len(d))
	for i, v := range d {
		f[i] = float64(v)
	}
	return time.Duration(percentile(f, 0.5))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// fromMS is a row's p50 back as a duration, for the text tables.
func fromMS(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }
