// Package daemon is the core of sailboxd: it owns every box on the host,
// keeps their records in the catalog, drives their VMs through a Backend,
// and enforces the lifecycle of package lifecycle.
//
// Every call that changes a box runs under that box's lock and follows the
// same steps: look up the record, ask lifecycle.Next whether the box's
// state accepts the op, do the effect's Action to the VM, and record the
// next state. Each step that creates something first records it as
// unfinished (a box in state Creating, a checkpoint not Completed) and
// then commits or deletes it, so a failed call leaves nothing
// half-created, and Start removes what a crash left unfinished.
//
// Errors match ErrNotFound, ErrInvalidArgument, ErrConflict, ErrWrongHost, ErrCapacity,
// lifecycle.ErrInvalidTransition, or errors.ErrUnsupported (a backend that
// cannot do something yet); package internal/apiserver maps them to HTTP statuses.
package daemon

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sailbox-dev/sailbox/internal/catalog"
	"github.com/sailbox-dev/sailbox/internal/images"
)

// Errors.
var (
	ErrNotFound        = errors.New("not found")
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrConflict reports a call that clashes with what exists: a port in
	// use, a box without the checkpoint a call needs.
	ErrConflict = errors.New("conflict")
	// ErrWrongHost reports a box placed on another host.
	ErrWrongHost = errors.New("box lives on another host")
)

// Limits on a create request.
const (
	MinMemoryMiB = 64
	MaxMemoryMiB = 256 << 10
	MaxVCPUs     = 64
)

// Config configures a Manager.
type Config struct {
	Catalog *catalog.Catalog
	Backend Backend
	// HostID is this host's placement ID, reported in every box.
	HostID string
	// Defaults fill a create request's zero fields.
	Defaults catalog.Spec
	// Images resolves the images a create request names; nil refuses
	// every image but the default.
	Images *images.Dirs
	// Store imports the OCI and Docker images a create request names;
	// nil refuses them (raw disks in Images still work).
	Store ImageStore
	// Limits bound what the host runs (admission control).
	Limits Limits
	// MinResumableSchema is the oldest guest schema version that can be
	// restored safely; a box older than that is rebooted onto the
	// current agent when it next wakes. 0: any.
	MinResumableSchema int
	// Templates makes create a restore from a template checkpoint of the
	// box's spec, booted once (see templates.go); false boots every box.
	Templates bool
	// CompactAfter is how many of its own checkpoints a box's chain
	// holds before a pause or sleep merges them into one (compact.go);
	// 0 never compacts. sailboxd's -compact-after gives
	// DefaultCompactAfter unless told otherwise.
	CompactAfter int
	Logger       *slog.Logger // nil discards
	// Observer hears about VM starts, checkpoints and wakes (metrics;
	// see observe.go); nil hears nothing.
	Observer Observer
	// NewID makes box IDs; nil uses "sb-" and 12 random hex digits.
	NewID func() string
	// Clock runs the boxes' idle timeouts and TTLs; nil is the wall
	// clock.
	Clock Clock
}

// Manager owns the host's boxes. Its methods are safe for concurrent use.
type Manager struct {
	cat       *catalog.Catalog
	be        Backend
	hostID    string
	defaults  catalog.Spec
	images    *images.Dirs
	store     ImageStore
	limits    Limits
	minSchema int
	templates bool
	compactAt int
	log       *slog.Logger
	obs       Observer
	newID     func() string
	clock     Clock

	locks sync.Map   // box ID → *sync.Mutex, held for every change of the box
	gcMu  sync.Mutex // one collection of unreferenced checkpoints at a time

	admitMu sync.Mutex // guards adm
	adm     admission

	exitsMu sync.Mutex             // guards exits
	exits   map[string][]time.Time // recent exits of each box's VM on its own

	uses   usage    // idle timeouts: see idle.go
	exp    expiries // TTLs: see policies.go
	fwd    forwards
	closed atomic.Bool // Close was called
}

// New returns a Manager; call Start before serving.
func New(cfg Config) (*Manager, error) {
	if cfg.Catalog == nil || cfg.Backend == nil {
		return nil, errors.New("daemon: a catalog and a backend are required")
	}
	m := &Manager{
		cat: cfg.Catalog, be: cfg.Backend, hostID: cfg.HostID, defaults: cfg.Defaults, images: cfg.Images, store: cfg.Store, limits: cfg.Limits,
		minSchema: cfg.MinResumableSchema, templates: cfg.Templates, compactAt: cfg.CompactAfter, log: cfg.Logger, newID: cfg.NewID, clock: cfg.Clock,
	}
	if m.clock == nil {
		m.clock = wallClock{}
	}
	m.uses.boxes = map[string]*boxUse{}
	m.exp.timers = map[string]Timer{}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if m.newID == nil {
		m.newID = randomID
	}
	m.obs = cfg.Observer
	if m.obs == nil {
		m.obs = nopObserver{}
	}
	m.be = observedBackend{Backend: m.be, obs: m.obs} // see observe.go
	if m.defaults.MemoryMiB == 0 {
		m.defaults.MemoryMiB = 256
	}
	if m.defaults.VCPUs == 0 {
		m.defaults.VCPUs = 1
	}
	m.exits = map[string][]time.Time{}
	m.fwd.init(m)
	return m, nil
}

func randomID() string {
	var b [6]byte
	rand.Read(b[:])
	return "sb-" + hex.EncodeToString(b[:])
}

// HostID is the host's placement ID.
func (m *Manager) HostID() string { return m.hostID }

// Close stops the exposed ports' listeners and waits for their
// connections to end, and stops acting on VMs that exit and on the
// boxes' idle timeouts and TTLs. Boxes' VMs keep running.
func (m *Manager) Close() error {
	m.closed.Store(true)
	m.be.Watch(nil)
	m.stopPolicyTimers()
	m.fwd.closeAll()
	return nil
}

// lock takes box id's lock and returns its release. The release forgets
// the lock of a box that does not exist (any more), so that calls naming
// unknown IDs do not grow the map; a caller that still waits on it finds
// no box either.
func (m *Manager) lock(id string) func() {
	v, _ := m.locks.LoadOrStore(id, &sync.Mutex{})
	mu := v.(*sync.Mutex)
	mu.Lock()
	return func() {
		if _, err := m.record(id); errors.Is(err, ErrNotFound) {
			m.locks.CompareAndDelete(id, mu)
		}
		mu.Unlock()
	}
}

// record returns box id's record.
func (m *Manager) record(id string) (catalog.Box, error) {
	var b catalog.Box
	err := m.cat.View(func(tx *catalog.Tx) error {
		var err error
		b, err = tx.Box(id)
		return err
	})
	if errors.Is(err, catalog.ErrNotFound) {
		return b, fmt.Errorf("box %s: %w", id, ErrNotFound)
	}
	return b, err
}

// save stores b.
func (m *Manager) save(b catalog.Box) error {
	return m.cat.Update(func(tx *catalog.Tx) error { return tx.PutBox(b) })
}
