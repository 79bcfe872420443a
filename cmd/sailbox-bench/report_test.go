package main

import (
	"bytes"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// sampleResults is a run as the bench records one: boot rows against
// QEMU, the snapshot rows the plots draw, a retried boot and a note, the
// boot rows from a lab that crashed after handing them back.
func sampleResults() *Results {
	res := &Results{
		Format: resultsFormat, Started: time.Date(2026, 12, 6, 21, 30, 0, 0, time.UTC), Quick: true, Commit: "v0.1-5-gabc",
		Flags: map[string]string{"runs": "2", "quick": "true"}, Machine: Machine{CPUModel: "AMD EPYC", CPUs: 2, MemoryMiB: 3900, Kernel: "6.12", InLab: true},
		Peers: map[string]string{"qemu": "QEMU emulator version 7.2.15"}, Guest: map[string]string{"kernel": "/k"},
		Rows: []Row{}, Ratios: []Ratio{}, Retries: []Retry{}, Notes: []string{},
		Groups: []string{"boot", "snapshots"}, Resumed: []string{"boot"},
	}
	for i := 1; i <= 10; i++ {
		res.durations("boot.sailbox", "boot", "boot to agent ready, sailbox", time.Duration(i)*time.Second)
		res.durations("boot.qemu", "boot", "boot to agent ready, qemu", time.Duration(2*i)*time.Second)
	}
	for range 2 {
		for _, mib := range []float64{0, 16, 64} {
			res.pair("checkpoint.pause", "snapshots", "checkpoint pause", "ms", "MiB", mib, 10+mib/4)
		}
	}
	res.durations("fork.cold", "snapshots", "fork", 300*time.Millisecond, 320*time.Millisecond)
	res.durations("fork.ws", "snapshots", "fork, working set", 100*time.Millisecond, 120*time.Millisecond)
	for n := 1; n <= 3; n++ {
		res.curve("forks.private", "snapshots", "private memory", "MiB", "forks", float64(n), 12*float64(n))
	}
	res.ratio("boot.sailbox/boot.qemu", "sailbox boot / qemu boot", "boot.sailbox", "boot.qemu")
	res.Retries = append(res.Retries, Retry{What: "snapshots parent boot", Attempt: 1, Error: "boot broke: agent not healthy\nconsole ends: x"})
	res.note("qemu run 1 failed, left out: exit 1")
	return res
}

func TestPercentileOfKnownSamples(t *testing.T) {
	samples := []float64{}
	for i := 100; i >= 1; i-- { // 1..100, given unsorted
		samples = append(samples, float64(i))
	}
	for _, c := range []struct{ p, want float64 }{{0.5, 51}, {0.9, 91}, {0.99, 100}, {0, 1}, {1, 100}} {
		if got := percentile(samples, c.p); got != c.want {
			t.Errorf("percentile(1..100, %v) = %v, want %v", c.p, got, c.want)
		}
	}
	few := []float64{30, 10, 20}
	if got := percentile(few, 0.5); got != 20 {
		t.Errorf("p50 of 10,20,30 = %v, want 20", got)
	}
	if got := percentile(few, 0.99); got != 30 {
		t.Errorf("p99 of 3 samples = %v, want the largest, 30", got)
	}
	if !math.IsNaN(percentile(nil, 0.5)) {
		t.Error("percentile of no samples is not NaN")
	}
	if got := median([]time.Duration{3, 1, 2, 4}); got != 3 {
		t.Errorf("median(1,2,3,4) = %v, want the upper median 3 (the same percentile)", got)
	}
}

func TestRatioIsOfP50s(t *testing.T) {
	res := sampleResults()
	// p50 of 1..10 s is 6 s; of 2..20 s, 12 s.
	if len(res.Ratios) != 1 || res.Ratios[0].Value != 0.5 {
		t.Fatalf("ratios = %+v, want one of 0.5", res.Ratios)
	}
	if v := res.ratio("x", "x", "boot.sailbox", "boot.qemu", "boot.sailbox"); v != 6.0/18 {
		t.Errorf("ratio over a sum = %v, want 6/18", v)
	}
	if v := res.ratio("y", "y", "boot.sailbox", "missing"); v != 0 {
		t.Errorf("ratio to a missing row = %v, want 0", v)
	}
}

func TestHandbackRoundTrip(t *testing.T) {
	res := sampleResults()
	var out bytes.Buffer
	out.WriteString("sailbox run 0: agent ready in 5s\n")
	if err := handBack(&out, res); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out.String(), handbackMarker); n < 1 {
		t.Fatalf("no handback lines in %q", out.String())
	}
	// As a lab console passes it: CRLF, a kernel line in between.
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var console bytes.Buffer
	for i, l := range lines {
		console.WriteString(l + "\r\n")
		if i == 1 {
			console.WriteString("[  477.04] random: crng init done\r\n")
		}
	}
	got, err := readHandback(&console)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, res) {
		t.Errorf("round trip changed the results:\n got %+v\nwant %+v", got, res)
	}
}

func TestHandbackRefusesDamage(t *testing.T) {
	var out bytes.Buffer
	if err := handBack(&out, sampleResults()); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	// A line cut short, as a kernel message mid-line leaves it.
	damaged := strings.Join(lines, "\n")
	last := lines[len(lines)-1]
	damaged = strings.Replace(damaged, last, last[:len(last)-10]+"[ 1.0] x", 1)
	if _, err := readHandback(strings.NewReader(damaged)); err == nil {
		t.Error("a damaged handback was accepted")
	}
	if _, err := readHandback(strings.NewReader(strings.Join(lines[1:], "\n"))); len(lines) > 1 && err == nil {
		t.Error("a handback missing a line was accepted")
	}
	if _, err := readHandback(strings.NewReader("no results here\n")); err == nil {
		t.Error("output without a handback was accepted")
	}
}

func TestReportWritesJSONMarkdownAndPNGs(t *testing.T) {
	res := sampleResults()
	dir := t.TempDir()
	files, err := writeReport(res, dir)
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, "results-20261206T213000Z-quick")
	want := []string{base + ".json", base + "-pause.png", base + "-latency.png", base + "-fork-memory.png", base + ".md"}
	if !reflect.DeepEqual(files, want) {
		t.Fatalf("wrote %q, want %q", files, want)
	}

	b, err := os.ReadFile(base + ".json")
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeResults(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, res) {
		t.Errorf("the JSON does not read back as the results:\n got %+v\nwant %+v", got, res)
	}

	for _, f := range want[1:4] {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(fh)
		fh.Close()
		if err != nil {
			t.Errorf("%s does not decode as PNG: %v", f, err)
		} else if r := img.Bounds(); r.Dx() < 100 || r.Dy() < 100 {
			t.Errorf("%s is %v: too small to be a plot", f, r)
		}
	}

	md, err := os.ReadFile(base + ".md")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		"QUICK",
		"`v0.1-5-gabc`",
		"QEMU emulator version 7.2.15",
		"inside the KVM lab",
		// p50, p90, p99 of 1..10 s in ms; the ratio of the p50s.
		"| boot to agent ready, sailbox `boot.sailbox` | 10 | 6000 | 10000 | 10000 | ms | 0.500 ÷ boot.qemu |",
		"| boot to agent ready, qemu `boot.qemu` | 10 | 12000 | 20000 | 20000 | ms |  |",
		// A row measured against repeated X: a line per X.
		"| checkpoint pause, at 16 MiB `checkpoint.pause` | 2 | 14.0 | 14.0 | 14.0 | ms |  |",
		"| private memory, at 3 forks `forks.private` | 1 | 36.0 | 36.0 | 36.0 | MiB |  |",
		"snapshots parent boot, attempt 1 of 3 (taken again): boot broke: agent not healthy",
		"qemu run 1 failed, left out",
		"resumed: the lab crashed during the run; the boot rows were measured in a lab before the crash",
		"](results-20261206T213000Z-quick-pause.png)",
		"](results-20261206T213000Z-quick-latency.png)",
		"](results-20261206T213000Z-quick-fork-memory.png)",
	} {
		if !strings.Contains(string(md), s) {
			t.Errorf("the Markdown lacks %q:\n%s", s, md)
		}
	}
}

func TestReportLeavesOutPlotsOfRowsNotMeasured(t *testing.T) {
	res := sampleResults()
	res.Quick = false
	res.Rows = res.Rows[:2] // the boot rows alone
	dir := t.TempDir()
	files, err := writeReport(res, dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 {
		t.Errorf("wrote %q, want the JSON and Markdown only", files)
	}
	md, _ := os.ReadFile(filepath.Join(dir, "results-20261206T213000Z.md"))
	if strings.Contains(string(md), "QUICK") || !strings.Contains(string(md), "checkpoint pause against MiB dirtied since the last: not drawn") {
		t.Errorf("the Markdown of a full run without snapshot rows:\n%s", md)
	}
}

func TestValuesLeaveOutWhatJSONCannotHold(t *testing.T) {
	res := sampleResults()
	res.values("net.throughput.sailbox", "net", "throughput", "MiB/s", 3.5, math.Inf(1), math.NaN())
	if row, _ := res.rowByID("net.throughput.sailbox"); len(row.Samples) != 1 {
		t.Errorf("samples %v, want the finite one alone", row.Samples)
	}
	var out bytes.Buffer
	if err := handBack(&out, res); err != nil {
		t.Fatalf("hand back: %v", err)
	}
}

func TestHandbackTakesTheLastComplete(t *testing.T) {
	interim, final := sampleResults(), sampleResults()
	interim.Error = "interim results"
	final.Commit = "final"
	var out bytes.Buffer
	for _, r := range []*Results{interim, final} {
		if err := handBack(&out, r); err != nil {
			t.Fatal(err)
		}
	}
	got, err := readHandback(&out)
	if err != nil {
		t.Fatal(err)
	}
	if got.Commit != "final" || got.Error != "" {
		t.Errorf("read back commit %q, error %q: want the last hand-back", got.Commit, got.Error)
	}
	// A run killed before its last hand-back: the interim one.
	out.Reset()
	handBack(&out, interim)
	var cut bytes.Buffer
	handBack(&cut, final)
	out.WriteString(strings.SplitAfter(cut.String(), "\n")[0][:100])
	if got, err := readHandback(&out); err != nil || got.Error != "interim results" {
		t.Errorf("after a cut final hand-back: %v, %v; want the interim results", got, err)
	}
}

func TestRatioAtTakesTheSamplesAtOneX(t *testing.T) {
	res := sampleResults()
	res.durations("qemu.shared.save", "snapshots", "qemu save", 20*time.Millisecond, 25*time.Millisecond, 15*time.Millisecond)
	// At 0 MiB the pauses are 10 ms (and 14, 26 ms at 16, 64 MiB): 10/20.
	if v := res.ratioAt("checkpoint.pause@0MiB/qemu.shared.save", "idle pause / qemu save", "checkpoint.pause", 0, "qemu.shared.save"); v != 0.5 {
		t.Errorf("ratio at 0 MiB = %v, want 0.5", v)
	}
	if v := res.ratioAt("z", "z", "checkpoint.pause", 8, "qemu.shared.save"); v != 0 {
		t.Errorf("ratio at an X never measured = %v, want 0", v)
	}
	if v := res.ratioAt("z", "z", "fork.cold", 0, "qemu.shared.save"); v != 0 {
		t.Errorf("ratio at an X of a row without X = %v, want 0", v)
	}
	var out bytes.Buffer
	if err := handBack(&out, res); err != nil {
		t.Fatal(err)
	}
	if got, err := readHandback(&out); err != nil || !reflect.DeepEqual(got, res) {
		t.Errorf("round trip of a ratio at one X: %v, changed: %v", err, !reflect.DeepEqual(got, res))
	}
	md := markdown(res, "results-x", nil)
	for _, s := range []string{
		// On the line of its X alone; one at an X no line has, nowhere.
		"| checkpoint pause, at 0 MiB `checkpoint.pause` | 2 | 10.0 | 10.0 | 10.0 | ms | 0.500 ÷ qemu.shared.save |",
		"| checkpoint pause, at 16 MiB `checkpoint.pause` | 2 | 14.0 | 14.0 | 14.0 | ms |  |",
		"| fork `fork.cold` | 2 | 320 | 320 | 320 | ms |  |",
	} {
		if !strings.Contains(md, s) {
			t.Errorf("the Markdown lacks %q:\n%s", s, md)
		}
	}
}
