package guestlog

import (
	"bytes"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"
)

// slogTo returns a logger writing text lines without times into w.
func slogTo(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{
		Level: slog.LevelInfo,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.Attr{}
			}
			return a
		},
	}))
}

// fakeClock is a Limiter's clock that moves only when told to.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestLimiter(t *testing.T) {
	var buf bytes.Buffer
	clock := &fakeClock{t: time.Unix(1000, 0)}
	l := NewLimiter(3, time.Second)
	l.now = clock.now
	log := l.Logger(slogTo(&buf))
	dev := log.With("device", "blk") // shares the budget

	for i := range 10 {
		log.Warn("malformed request", "i", i)
	}
	dev.Warn("request failed")
	log.Debug("not enabled: neither logged nor counted")
	want := []string{
		`level=WARN msg="malformed request" i=0`,
		`level=WARN msg="malformed request" i=1`,
		`level=WARN msg="malformed request" i=2`,
	}
	if got := logLines(&buf); !slices.Equal(got, want) {
		t.Fatalf("first interval logged\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	clock.t = clock.t.Add(999 * time.Millisecond)
	log.Warn("still suppressed")
	clock.t = clock.t.Add(time.Millisecond)
	dev.Info("resumed")
	want = append(want,
		`level=WARN msg="similar messages suppressed" device=blk count=9 first="malformed request"`,
		`level=INFO msg=resumed device=blk`,
	)
	if got := logLines(&buf); !slices.Equal(got, want) {
		t.Fatalf("second interval logged\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestLimiterBound floods a limiter across many intervals: what is logged
// is bounded by the intervals, not by the flood.
func TestLimiterBound(t *testing.T) {
	var buf bytes.Buffer
	clock := &fakeClock{t: time.Unix(1000, 0)}
	l := NewLimiter(10, time.Second)
	l.now = clock.now
	log := l.Logger(slogTo(&buf))
	const intervals = 5
	for i := range 100_000 {
		if i > 0 && i%20_000 == 0 {
			clock.t = clock.t.Add(time.Second)
		}
		log.Warn("bad request", "i", i)
	}
	// Each interval: ten records, and after the first one report.
	if got, want := len(logLines(&buf)), intervals*10+intervals-1; got != want {
		t.Errorf("%d lines logged, want %d", got, want)
	}
}
