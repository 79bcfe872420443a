// Package metrics is sailboxd's Prometheus metrics, in a registry of the
// daemon's own (with the Go runtime and process collectors), served by
// Handler on -metrics-listen.
//
//	met := metrics.New()
//	m, _ := daemon.New(daemon.Config{..., Observer: met})
//	met.CountBoxes(m)
//	srv := apiserver.New(apiserver.Config{..., Observe: met.ObserveCall})
//	http.Serve(l, met.Handler())
//
// Labels are few and bounded (calls, outcomes, error codes, states,
// start kinds, wake reasons): never a box or checkpoint ID.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/daemon"
)

// Metric names.
const (
	NameBoxes           = "sailbox_boxes"
	NameCallDuration    = "sailbox_call_duration_seconds"
	NameCallErrors      = "sailbox_call_errors_total"
	NameCheckpointBytes = "sailbox_checkpoint_bytes"
	NameCheckpointPause = "sailbox_checkpoint_pause_seconds"
	NameVMStart         = "sailbox_vm_start_seconds"
	NameWakes           = "sailbox_wakes_total"
)

// callBuckets span 1 ms to 2 min: a file call, a checkpoint, a restore,
// a boot, a long exec.
var callBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}

// Metrics holds sailboxd's metrics. It is a daemon.Observer, and its
// ObserveCall an apiserver.CallObserver. Its methods are safe for
// concurrent use.
type Metrics struct {
	reg       *prometheus.Registry
	calls     *prometheus.HistogramVec
	errors    *prometheus.CounterVec
	ckptBytes prometheus.Histogram
	ckptPause prometheus.Histogram
	starts    *prometheus.HistogramVec
	wakes     *prometheus.CounterVec
}

var _ daemon.Observer = (*Metrics)(nil)

// New returns Metrics registered in a new registry.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		calls: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    NameCallDuration,
			Help:    "Lifecycle calls served by the API, by call and outcome (ok, error).",
			Buckets: callBuckets,
		}, []string{"call", "outcome"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: NameCallErrors,
			Help: "Lifecycle calls that failed, by call and kind (the API's error code: not_found, bad_request, conflict, invalid_transition, capacity, internal, ...).",
		}, []string{"call", "kind"}),
		ckptBytes: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    NameCheckpointBytes,
			Help:    "Bytes each completed checkpoint wrote to the store (memory layer and sealed disk blocks); the sum is all bytes written.",
			Buckets: prometheus.ExponentialBuckets(64<<10, 4, 12), // 64 KiB … 256 GiB
		}),
		ckptPause: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    NameCheckpointPause,
			Help:    "How long each checkpoint stopped its guest.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		starts: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    NameVMStart,
			Help:    "Time to start a box's VM until its agent answered, by kind: restore (a wake from the box's checkpoint), fork (a fork's child), create (a create restored from its template), boot, reboot (an upgrade).",
			Buckets: callBuckets,
		}, []string{"kind"}),
		wakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: NameWakes,
			Help: "Boxes woken from a checkpoint, by reason: exec, file, resume, connect, exposed_port, inference_end, crash_recovery.",
		}, []string{"reason"}),
	}
	// Series that exist from the start, so that rates and absences read
	// right before the first event.
	for _, k := range daemon.StartKinds {
		m.starts.WithLabelValues(string(k))
	}
	for _, r := range daemon.WakeReasons {
		m.wakes.WithLabelValues(string(r))
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.calls, m.errors, m.ckptBytes, m.ckptPause, m.starts, m.wakes,
	)
	return m
}

// Registry is the registry the metrics are in.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in Prometheus's exposition formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// ObserveCall records a lifecycle call served by the API (an
// apiserver.CallObserver): code is its error code, "" if it succeeded.
func (m *Metrics) ObserveCall(call string, d time.Duration, code string) {
	outcome := "ok"
	if code != "" {
		outcome = "error"
		m.errors.WithLabelValues(call, code).Inc()
	}
	m.calls.WithLabelValues(call, outcome).Observe(d.Seconds())
}

// Checkpointed records a completed checkpoint's bytes and pause.
func (m *Metrics) Checkpointed(info daemon.CheckpointInfo) {
	m.ckptBytes.Observe(float64(info.Bytes))
	m.ckptPause.Observe(info.Pause.Seconds())
}

// Started records a VM's start time.
func (m *Metrics) Started(how daemon.StartKind, d time.Duration) {
	m.starts.WithLabelValues(string(how)).Observe(d.Seconds())
}

// Woke counts a wake.
func (m *Metrics) Woke(reason daemon.WakeReason) {
	m.wakes.WithLabelValues(string(reason)).Inc()
}

// BoxCounter counts boxes by state; *daemon.Manager is one.
type BoxCounter interface {
	BoxesByState() (map[lifecycle.State]int, error)
}

// CountBoxes adds sailbox_boxes{state}, read from src at every scrape.
func (m *Metrics) CountBoxes(src BoxCounter) {
	m.reg.MustRegister(boxCollector{src})
}

var boxesDesc = prometheus.NewDesc(NameBoxes, "Boxes on this host, by state (read from the catalog at each scrape).", []string{"state"}, nil)

// boxCollector reports boxes by state at scrape time, so never stale.
type boxCollector struct{ src BoxCounter }

func (c boxCollector) Describe(ch chan<- *prometheus.Desc) { ch <- boxesDesc }

func (c boxCollector) Collect(ch chan<- prometheus.Metric) {
	counts, err := c.src.BoxesByState()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(boxesDesc, err)
		return
	}
	for state, n := range counts {
		ch <- prometheus.MustNewConstMetric(boxesDesc, prometheus.GaugeValue, float64(n), string(state))
	}
}
