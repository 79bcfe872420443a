package guestlog

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Limiter passes at most burst log records in each interval and drops the
// rest. The first record to pass after some were dropped is preceded by a
// "similar messages suppressed" record giving their count and the message
// of the first of them; records that are never followed by another that
// passes are not reported.
//
// One Limiter is one budget: give each device its own, kept for the
// device's lifetime, so that a guest cannot renew the budget by resetting
// the device, nor spend another device's.
type Limiter struct {
	// Set by NewLimiter, then read-only.
	burst    int
	interval time.Duration
	now      func() time.Time // time.Now; tests replace it

	mu         sync.Mutex // guards the fields below
	start      time.Time  // when the current interval began
	passed     int        // records passed in it
	suppressed int        // records dropped since the last one passed
	first      string     // the message of the first of them
	level      slog.Level // the highest level among them
}

// NewLimiter returns a limiter passing at most burst records (at least
// one) per interval.
func NewLimiter(burst int, interval time.Duration) *Limiter {
	return &Limiter{burst: max(burst, 1), interval: interval, now: time.Now}
}

// Logger returns a logger that sends the records of log (nil discards
// them) through the limiter. Every logger derived from it, with With or
// WithGroup, shares the limiter's budget.
func (l *Limiter) Logger(log *slog.Logger) *slog.Logger {
	if log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(&limitedHandler{next: log.Handler(), l: l})
}

// suppression is what a Limiter dropped before a record passed.
type suppression struct {
	count int
	first string
	level slog.Level
}

// admit reports whether r may pass, and if so, what was dropped since the
// last record that passed.
func (l *Limiter) admit(r slog.Record) (bool, suppression) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now := l.now(); now.Sub(l.start) >= l.interval {
		l.start, l.passed = now, 0
	}
	if l.passed >= l.burst {
		if l.suppressed == 0 {
			l.first, l.level = r.Message, r.Level
		}
		l.suppressed++
		l.level = max(l.level, r.Level)
		return false, suppression{}
	}
	l.passed++
	s := suppression{count: l.suppressed, first: l.first, level: l.level}
	l.suppressed, l.first = 0, ""
	return true, s
}

// limitedHandler is the slog.Handler of Limiter.Logger.
type limitedHandler struct {
	next slog.Handler
	l    *Limiter
}

func (h *limitedHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.next.Enabled(ctx, level)
}

func (h *limitedHandler) Handle(ctx context.Context, r slog.Record) error {
	pass, s := h.l.admit(r)
	if !pass {
		return nil
	}
	if s.count > 0 {
		sr := slog.NewRecord(r.Time, s.level, "similar messages suppressed", 0)
		sr.AddAttrs(slog.Int("count", s.count), slog.String("first", s.first))
		if err := h.next.Handle(ctx, sr); err != nil {
			return err
		}
	}
	return h.next.Handle(ctx, r)
}

func (h *limitedHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &limitedHandler{next: h.next.WithAttrs(attrs), l: h.l}
}

func (h *limitedHandler) WithGroup(name string) slog.Handler {
	return &limitedHandler{next: h.next.WithGroup(name), l: h.l}
}
