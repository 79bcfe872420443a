package daemon

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/catalog"
)

// Lifecycle policies a create sets on a box and its forks inherit:
// labels (list filters on them), an idle timeout (idle.go) and a TTL,
// after which the daemon terminates the box unless it was extended. All
// are kept in the box's record; a starting daemon re-arms the TTLs from
// the stored expiry, terminating at once the boxes that expired while it
// was down.

// Bounds on labels.
const (
	maxLabelKey   = 63
	maxLabelValue = 255
)

// policies are the parts of a box record that a create's policies set.
type policies struct {
	labels      map[string]string
	idleTimeout int64
	ttl         int64
}

// createPolicies checks the policies of req.
func createPolicies(req api.CreateRequest) (policies, error) {
	if err := checkLabels(req.Labels); err != nil {
		return policies{}, err
	}
	if err := checkSeconds("idle_timeout_seconds", req.IdleTimeoutSeconds, false); err != nil {
		return policies{}, err
	}
	if err := checkSeconds("ttl_seconds", req.TTLSeconds, false); err != nil {
		return policies{}, err
	}
	return policies{labels: maps.Clone(req.Labels), idleTimeout: req.IdleTimeoutSeconds, ttl: req.TTLSeconds}, nil
}

// inherited are the policies of b that its forks take.
func inherited(b catalog.Box) policies {
	return policies{labels: maps.Clone(b.Labels), idleTimeout: b.IdleTimeoutSeconds, ttl: b.TTLSeconds}
}

// setOn records p on new box b, created at b.Created.
func (p policies) setOn(b *catalog.Box) {
	if len(p.labels) > 0 {
		b.Labels = p.labels
	}
	b.IdleTimeoutSeconds = p.idleTimeout
	b.TTLSeconds = p.ttl
	if p.ttl > 0 {
		b.ExpiresAt = b.Created.Add(time.Duration(p.ttl) * time.Second)
	}
}

func checkSeconds(name string, v int64, required bool) error {
	switch {
	case v < 0 || v > api.MaxPolicySeconds:
		return fmt.Errorf("%w: %s %d is outside [0, %d]", ErrInvalidArgument, name, v, api.MaxPolicySeconds)
	case required && v == 0:
		return fmt.Errorf("%w: %s must be positive", ErrInvalidArgument, name)
	}
	return nil
}

// checkLabels checks a create's labels against api.CreateRequest's rules.
func checkLabels(labels map[string]string) error {
	if len(labels) > api.MaxLabels {
		return fmt.Errorf("%w: %d labels, at most %d allowed", ErrInvalidArgument, len(labels), api.MaxLabels)
	}
	for k, v := range labels {
		if err := CheckLabel(k, v); err != nil {
			return err
		}
	}
	return nil
}

// CheckLabel checks one label: a key of 1 to 63 letters, digits, '.',
// '_', '-' and '/', starting with a letter or digit, and a value of at
// most 255 characters with no control character.
func CheckLabel(k, v string) error {
	if k == "" || len(k) > maxLabelKey {
		return fmt.Errorf("%w: label key %q is not 1 to %d characters", ErrInvalidArgument, k, maxLabelKey)
	}
	for i, c := range k {
		alnum := c < utf8.RuneSelf && (unicode.IsLetter(c) || unicode.IsDigit(c))
		if !alnum && (i == 0 || (c != '.' && c != '_' && c != '-' && c != '/')) {
			return fmt.Errorf("%w: label key %q: only ASCII letters, digits, '.', '_', '-' and '/', starting with a letter or digit", ErrInvalidArgument, k)
		}
	}
	if !utf8.ValidString(v) || utf8.RuneCountInString(v) > maxLabelValue {
		return fmt.Errorf("%w: label %s: the value is not UTF-8 of at most %d characters", ErrInvalidArgument, k, maxLabelValue)
	}
	for _, c := range v {
		if unicode.IsControl(c) {
			return fmt.Errorf("%w: label %s: the value holds a control character", ErrInvalidArgument, k)
		}
	}
	return nil
}

// hasLabels reports whether b carries every label of want.
func hasLabels(b catalog.Box, want map[string]string) bool {
	for k, v := range want {
		if got, ok := b.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// Extend sets box id's expiry to now plus req.TTLSeconds, whether or
// not it had a TTL, and returns the box.
func (m *Manager) Extend(ctx context.Context, id string, req api.ExtendRequest) (api.Box, error) {
	if err := checkSeconds("ttl_seconds", req.TTLSeconds, true); err != nil {
		return api.Box{}, fmt.Errorf("extend: %w", err)
	}
	unlock := m.lock(id)
	defer unlock()
	b, err := m.record(id)
	if err != nil {
		return api.Box{}, err
	}
	b.TTLSeconds = req.TTLSeconds
	b.ExpiresAt = m.clock.Now().UTC().Add(time.Duration(req.TTLSeconds) * time.Second)
	if err := m.save(b); err != nil {
		return api.Box{}, fmt.Errorf("box %s: extend: %w", id, err)
	}
	m.armExpiry(b)
	m.log.Info("box extended", "box", id, "expires_at", b.ExpiresAt)
	return m.box(id)
}

// expiries are the TTL timers of the Manager's boxes.
type expiries struct {
	mu     sync.Mutex
	timers map[string]Timer // guarded by mu
}

// armExpiry (re)starts b's TTL timer for b.ExpiresAt; a box without
// one has none.
func (m *Manager) armExpiry(b catalog.Box) {
	e := &m.exp
	e.mu.Lock()
	defer e.mu.Unlock()
	if t := e.timers[b.ID]; t != nil {
		t.Stop()
		delete(e.timers, b.ID)
	}
	if b.ExpiresAt.IsZero() {
		return
	}
	id := b.ID
	e.timers[id] = m.clock.AfterFunc(b.ExpiresAt.Sub(m.clock.Now()), func() { m.expire(id) })
}

// disarmExpiry stops box id's TTL timer: the box is gone.
func (m *Manager) disarmExpiry(id string) {
	m.armExpiry(catalog.Box{ID: id})
}

// expire, box id's TTL timer, terminates the box if its expiry has
// passed, as its record says under its lock (an extend may have moved
// it).
func (m *Manager) expire(id string) {
	if m.closed.Load() {
		return
	}
	unlock := m.lock(id)
	defer unlock()
	b, err := m.record(id)
	if err != nil || b.ExpiresAt.IsZero() {
		return
	}
	if m.clock.Now().Before(b.ExpiresAt) {
		m.armExpiry(b)
		return
	}
	m.log.Info("box expired; terminating it", "box", id, "expires_at", b.ExpiresAt)
	if _, err := m.terminate(context.Background(), id); err != nil {
		m.log.Error("expired box not terminated", "box", id, "err", err)
	}
}

// armPolicies starts the timers of box b as its record stands: its TTL,
// and its idle timeout if it runs.
func (m *Manager) armPolicies(b catalog.Box) {
	m.armExpiry(b)
	if b.State == lifecycle.Running {
		m.armIdle(b.ID, b.IdleTimeoutSeconds)
	}
}

// disarmPolicies stops box id's timers.
func (m *Manager) disarmPolicies(id string) {
	m.disarmExpiry(id)
	m.disarmIdle(id)
}

// stopPolicyTimers stops every timer (Close).
func (m *Manager) stopPolicyTimers() {
	m.exp.mu.Lock()
	for id, t := range m.exp.timers {
		t.Stop()
		delete(m.exp.timers, id)
	}
	m.exp.mu.Unlock()
	m.uses.mu.Lock()
	for _, bu := range m.uses.boxes {
		if bu.timer != nil {
			bu.timer.Stop()
			bu.timer = nil
		}
		bu.gen++
	}
	m.uses.mu.Unlock()
}
