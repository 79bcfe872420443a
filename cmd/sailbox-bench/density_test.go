package main

import (
	"image/png"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api/vmmapi"
)

// The first lines of a lab's /proc/meminfo.
const meminfoFixture = `MemTotal:        4016164 kB
MemFree:         3411488 kB
MemAvailable:    3560216 kB
Buffers:            2156 kB
Cached:           420464 kB
`

func TestMeminfoKiB(t *testing.T) {
	for _, c := range []struct {
		key  string
		want uint64
		ok   bool
	}{{"MemAvailable", 3560216, true}, {"MemTotal", 4016164, true}, {"Mem", 0, false}, {"SwapTotal", 0, false}} {
		got, ok := meminfoKiB(meminfoFixture, c.key)
		if got != c.want || ok != c.ok {
			t.Errorf("meminfoKiB(%s) = %d, %v; want %d, %v", c.key, got, ok, c.want, c.ok)
		}
	}
	if _, err := memAvailable(); err != nil {
		t.Errorf("this host's MemAvailable: %v", err)
	}
}

func TestPSSPointsAreFewAndIncludeTheLast(t *testing.T) {
	var points []int
	for k := 1; k <= 100; k++ {
		if pssPoint(k, 100) {
			points = append(points, k)
		}
	}
	if want := []int{1, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100}; !slices.Equal(points, want) {
		t.Errorf("points of 100: %v, want %v", points, want)
	}
	if !pssPoint(7, 7) {
		t.Error("the last of 7 is not a point")
	}
}

// 100 forks in 50 s against a 5 s cold boot; 40 MiB per box measured of
// 128 MiB each.
func densitySample(res *Results) densitySummary {
	for i := range 100 {
		res.values("density.vmm.rss", "density", "vmm rss", "MiB", 9+float64(i%3)) // p50 10
		res.values("density.vmm.private", "density", "vmm private", "MiB", 4)
	}
	return densitySummary{forks: 100, wall: 50 * time.Second, bootMS: 5000, guestMiB: 128,
		hostUsed: 4000 << 20, pss: 2000 << 20, store: 140 << 20}
}

func TestDensitySummaryArithmetic(t *testing.T) {
	res := sampleResults()
	d := densitySample(res)
	if v := d.forksPerSecond(); v != 2 {
		t.Errorf("forks/s = %v, want 100 / 50 s = 2", v)
	}
	if v := d.bootsPerSecond(); v != 0.2 {
		t.Errorf("boots/s = %v, want 1 / 5 s = 0.2", v)
	}
	if v := d.nominalMiB(); v != 12800 {
		t.Errorf("nominal = %v MiB, want 100 × 128", v)
	}
	d.record(res)
	want := map[string]float64{
		"density.forks_per_s/density.boots_per_s":      10,
		"density.host.used/density.guest.nominal":      4000.0 / 12800,
		"density.pss/density.guest.nominal":            2000.0 / 12800,
		"density.vmm.rss/firecracker.vmm.overhead":     10.0 / 5,
		"density.vmm.private/firecracker.vmm.overhead": 4.0 / 5,
	}
	for _, q := range res.Ratios {
		if w, ok := want[q.ID]; ok {
			if math.Abs(q.Value-w) > 1e-9 {
				t.Errorf("ratio %s = %v, want %v", q.ID, q.Value, w)
			}
			delete(want, q.ID)
		}
	}
	for id := range want {
		t.Errorf("ratio %s not recorded", id)
	}
	if v, _ := res.p50("density.store"); v != 140 {
		t.Errorf("store = %v MiB, want 140", v)
	}
	var out strings.Builder
	d.print(&out, res)
	for _, s := range []string{"2.000", "forks/s ÷ boots/s 10.00", "4000.0 MiB  ÷ 100 × 128 MiB = 0.3125", "10.00 MiB  (Firecracker publishes <= 5 MiB)"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("the density table lacks %q:\n%s", s, out.String())
		}
	}
}

func TestDensityWithoutBootRowsRecordsNoRateRatio(t *testing.T) {
	res := sampleResults()
	d := densitySample(res)
	d.bootMS = 0
	d.record(res)
	for _, q := range res.Ratios {
		if strings.HasPrefix(q.ID, "density.forks_per_s") {
			t.Errorf("ratio %s recorded without a cold boot", q.ID)
		}
	}
	if _, ok := res.rowByID("density.boots_per_s"); ok {
		t.Error("boots per second recorded without a cold boot")
	}
}

// The fork-memory plot draws the density curves, up to the last fork,
// beside the snapshots rows' private memory.
func TestForkMemoryPlotDrawsTheDensityCurves(t *testing.T) {
	res := sampleResults()
	for n := 1; n <= 100; n++ {
		res.curve("density.host.curve", "density", "host used", "MiB", "forks", float64(n), 40*float64(n))
		if pssPoint(n, 100) {
			res.curve("density.pss.curve", "density", "pss", "MiB", "forks", float64(n), 20*float64(n))
		}
	}
	path := filepath.Join(t.TempDir(), "m.png")
	var spec plotSpec
	for _, s := range plots {
		if s.name == "fork-memory" {
			spec = s
		}
	}
	ok, err := drawPlot(res, spec, path)
	if err != nil || !ok {
		t.Fatalf("drawPlot = %v, %v", ok, err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := png.Decode(f); err != nil {
		t.Errorf("not a PNG: %v", err)
	}
	md := markdown(res, "results-x", map[string]bool{"fork-memory": true})
	if !strings.Contains(md, "| host used, at 100 forks `density.host.curve` | 1 | 4000 |") {
		t.Errorf("the Markdown lacks the curve's last point:\n%s", md)
	}
}

// A child's launch is one sailbox-vmm accepts: a restore as a fork, with
// the control socket the rows read its memory from.
func TestChildLaunchParsesBack(t *testing.T) {
	l := childLaunch("/run/kvmlab/tmp/d/store", "/run/kvmlab/tmp/d/density7-0", "density7-0")
	got, err := vmmapi.ParseLaunch(l.Args(), io.Discard)
	if err != nil {
		t.Fatalf("sailbox-vmm %q: %v", l.Args(), err)
	}
	if got.Restore != "density7-0" || got.ForkName != "density7-0" || got.APISocket == "" || got.VsockUDS == "" || got.Store != l.Store {
		t.Errorf("parsed back as %+v", got)
	}
}

func TestCPUTimes(t *testing.T) {
	// user nice system idle iowait irq softirq steal guest guest_nice
	stat := "cpu  100 5 50 800 20 3 2 0 40 0\ncpu0 50 2 25 400 10 1 1 0 20 0\n"
	busy, total, ok := cpuTimes(stat)
	if !ok || total != 980 || busy != 160 {
		t.Errorf("cpuTimes = %d busy of %d, %v; want 160 of 980 (guest time is in user already)", busy, total, ok)
	}
	if _, _, ok := cpuTimes("intr 1 2 3\n"); ok {
		t.Error("a /proc/stat without the cpu line parsed")
	}
	if b, err := hostBusy(20 * time.Millisecond); err != nil || b < 0 || b > 100 {
		t.Errorf("this host: %v%% busy, %v", b, err)
	}
}
