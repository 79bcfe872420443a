package metrics_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/client"
	"github.com/sailbox-dev/sailbox/internal/apiserver"
	"github.com/sailbox-dev/sailbox/internal/catalog"
	"github.com/sailbox-dev/sailbox/internal/daemon"
	"github.com/sailbox-dev/sailbox/internal/daemon/fakebackend"
	"github.com/sailbox-dev/sailbox/internal/metrics"
)

// serve runs a daemon over the fake backend, with templates, observed by
// met, on a Unix socket until the test ends.
func serve(t *testing.T, met *metrics.Metrics) *client.Client {
	t.Helper()
	dir, err := os.MkdirTemp("", "sbm") // Unix socket paths are short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cat, err := catalog.Open(filepath.Join(dir, "catalog.db"), &catalog.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	m, err := daemon.New(daemon.Config{Catalog: cat, Backend: fakebackend.New(2), HostID: "h", Templates: true, Observer: met})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	met.CountBoxes(m)
	srv := apiserver.New(apiserver.Config{Manager: m, Logger: slog.New(slog.DiscardHandler), Observe: met.ObserveCall})
	sock := filepath.Join(dir, "d.sock")
	l, err := apiserver.Listen(sock, "")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- apiserver.Serve(ctx, l, srv) }()
	t.Cleanup(func() {
		cancel()
		<-done
		m.Close()
		cat.Close()
	})
	return client.New(sock)
}

// scrape fetches the metrics as Prometheus does and parses them.
func scrape(t *testing.T, met *metrics.Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	met.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("scrape: %d %s", rec.Code, rec.Body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("parse: %v\n%s", err, rec.Body)
	}
	return fams
}

// scrapeUntil scrapes until ready holds of the metrics, or gives up
// after a minute and returns the last scrape (whose checks then fail).
func scrapeUntil(t *testing.T, met *metrics.Metrics, ready func(map[string]*dto.MetricFamily) bool) map[string]*dto.MetricFamily {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		fams := scrape(t, met)
		if ready(fams) || time.Now().After(deadline) {
			return fams
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// value is the value of the series of family name with labels (a
// histogram's: its count), and whether it exists.
func value(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue next
			}
		}
		switch {
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		}
	}
	return 0, false
}

func histogramSum(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	f := fams[name]
	if f == nil {
		return 0
	}
	for _, m := range f.GetMetric() {
		if m.Histogram != nil && len(labels) == 0 {
			return m.Histogram.GetSampleSum()
		}
	}
	return 0
}

// After a lifecycle run, every metric family is there with the counts
// the run makes.
func TestLifecycleMetrics(t *testing.T) {
	met := metrics.New()
	c := serve(t, met)
	ctx := context.Background()

	b, err := c.Create(ctx, api.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, b.ID, api.ExecRequest{Argv: []string{"echo", "hi"}}, &bytes.Buffer{}, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Checkpoint(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	fork, err := c.Fork(ctx, b.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Sleep(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	fams := scrape(t, met)
	for state, want := range map[string]float64{"running": 1, "sleeping": 1, "paused": 0, "creating": 0, "failed": 0} {
		if got, ok := value(fams, metrics.NameBoxes, "state", string(state)); !ok || got != want {
			t.Errorf("boxes{state=%s} = %v (%v), want %v", state, got, ok, want)
		}
	}

	// A sleeping box woken by an exec; failing calls.
	if _, err := c.Exec(ctx, b.ID, api.ExecRequest{Argv: []string{"echo", "awake"}}, &bytes.Buffer{}, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Pause(ctx, "sb-nope"); !client.IsNotFound(err) {
		t.Fatalf("pause of an unknown box: %v", err)
	}
	if _, err := c.Sleep(ctx, fork.Box.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Checkpoint(ctx, fork.Box.ID); err == nil {
		t.Fatal("checkpoint of a sleeping box succeeded")
	}
	if _, err := c.Terminate(ctx, b.ID); err != nil {
		t.Fatal(err)
	}

	// An exec is observed when its handler returns, which may be after
	// the client read its exit event: wait for the second one.
	fams = scrapeUntil(t, met, func(fams map[string]*dto.MetricFamily) bool {
		n, _ := value(fams, metrics.NameCallDuration, "call", "exec", "outcome", "ok")
		return n >= 2
	})
	for _, name := range []string{
		metrics.NameBoxes, metrics.NameCallDuration, metrics.NameCallErrors, metrics.NameCheckpointBytes,
		metrics.NameCheckpointPause, metrics.NameVMStart, metrics.NameWakes, "go_goroutines", "process_cpu_seconds_total",
	} {
		if fams[name] == nil {
			t.Errorf("no %s", name)
		}
	}
	// The boxes now: the fork asleep, its parent gone.
	for state, want := range map[string]float64{"running": 0, "sleeping": 1} {
		if got, _ := value(fams, metrics.NameBoxes, "state", state); got != want {
			t.Errorf("after terminate: boxes{state=%s} = %v, want %v", state, got, want)
		}
	}
	type series struct {
		name   string
		labels []string
		want   float64
	}
	for _, s := range []series{
		{metrics.NameCallDuration, []string{"call", "create", "outcome", "ok"}, 1},
		{metrics.NameCallDuration, []string{"call", "exec", "outcome", "ok"}, 2},
		{metrics.NameCallDuration, []string{"call", "checkpoint", "outcome", "ok"}, 1},
		{metrics.NameCallDuration, []string{"call", "checkpoint", "outcome", "error"}, 1},
		{metrics.NameCallDuration, []string{"call", "fork", "outcome", "ok"}, 1},
		{metrics.NameCallDuration, []string{"call", "sleep", "outcome", "ok"}, 2},
		{metrics.NameCallDuration, []string{"call", "pause", "outcome", "error"}, 1},
		{metrics.NameCallDuration, []string{"call", "terminate", "outcome", "ok"}, 1},
		{metrics.NameCallErrors, []string{"call", "pause", "kind", api.CodeNotFound}, 1},
		{metrics.NameCallErrors, []string{"call", "checkpoint", "kind", api.CodeInvalidTransition}, 1},
		// The template's, the explicit one, the live fork's, two sleeps'.
		{metrics.NameCheckpointPause, nil, 5},
		{metrics.NameCheckpointBytes, nil, 5},
		{metrics.NameVMStart, []string{"kind", "boot"}, 1},   // the template
		{metrics.NameVMStart, []string{"kind", "create"}, 1}, // the box, from it
		{metrics.NameVMStart, []string{"kind", "fork"}, 1},
		{metrics.NameVMStart, []string{"kind", "restore"}, 1}, // the wake by exec
		{metrics.NameVMStart, []string{"kind", "reboot"}, 0},
		{metrics.NameWakes, []string{"reason", "exec"}, 1},
		{metrics.NameWakes, []string{"reason", "resume"}, 0},
	} {
		if got, ok := value(fams, s.name, s.labels...); !ok || got != s.want {
			t.Errorf("%s%q = %v (present %v), want %v", s.name, s.labels, got, ok, s.want)
		}
	}
	if _, ok := value(fams, metrics.NameCallDuration, "call", "create", "outcome", "error"); ok {
		t.Error("a create error that never happened has a series")
	}
	if got, want := histogramSum(fams, metrics.NameCheckpointBytes), float64(5*fakebackend.CheckpointBytes); got != want {
		t.Errorf("checkpoint bytes sum = %v, want %v", got, want)
	}
	if got, want := histogramSum(fams, metrics.NameCheckpointPause), 5*fakebackend.CheckpointPause.Seconds(); got < want*0.999 || got > want*1.001 {
		t.Errorf("checkpoint pause sum = %v, want %v", got, want)
	}
}
