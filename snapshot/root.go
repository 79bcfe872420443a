package snapshot

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/sailbox-dev/sailbox/snapshot/disklayer"
	"github.com/sailbox-dev/sailbox/snapshot/internal/format"
	"github.com/sailbox-dev/sailbox/snapshot/layerstore"
	"github.com/sailbox-dev/sailbox/snapshot/memlayer"
)

// Root is a checkpoint store on local disk:
//
//	<dir>/checkpoints/<id>/manifest   a completed checkpoint
//	<dir>/checkpoints/<id>/*.tmp      files staged by a checkpoint in progress
//	<dir>/layers/                     the layer store (unless another is given)
//	<dir>/tops/                       writable disk tops of running boxes
//	<dir>/lock                        taken by Clean, exclusively, and by Begin
//
// A checkpoint is completed, and exists, exactly when its manifest is in
// place: every file it references was made durable first. Anything else
// under checkpoints/ and tops/ that no live process holds is debris,
// removed by Clean. Layers live in the layer store so that chains can
// share them across checkpoints and boxes; their lifetime (who still
// references a layer) is the daemon's to track.
//
// A Root may be used from several goroutines and processes at once.
type Root struct {
	dir    string
	layers layerstore.Store
	log    *slog.Logger // set before the root is shared (SetLogger); nil: silent
}

// OpenRoot opens (creating if needed) the store at dir. layers is where
// layer files go; nil means a layerstore.Dir in <dir>/layers.
func OpenRoot(dir string, layers layerstore.Store) (*Root, error) {
	for _, d := range []string{"checkpoints", "tops"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("open checkpoint store: %w", err)
		}
	}
	if layers == nil {
		s, err := layerstore.NewDir(filepath.Join(dir, "layers"))
		if err != nil {
			return nil, fmt.Errorf("open checkpoint store: %w", err)
		}
		layers = s
	}
	return &Root{dir: dir, layers: layers}, nil
}

// SetLogger has the root log every completed or unfinished checkpoint it
// removes, and why, to l (nil: none): a checkpoint that goes missing can
// then be traced to its removal. Call it before the root is shared.
func (r *Root) SetLogger(l *slog.Logger) { r.log = l }

// removed logs the removal of checkpoint directory dir.
func (r *Root) removed(dir, why string) {
	if r.log != nil {
		r.log.Info("checkpoint removed from the store", "checkpoint", filepath.Base(dir), "why", why)
	}
}

// Layers returns the root's layer store.
func (r *Root) Layers() layerstore.Store { return r.layers }

// TopPath returns where a running box's disk top named name should live:
// on the store's file system, so that putting the sealed top into a
// layerstore.Dir is a rename. A top no live Disk holds is debris.
func (r *Root) TopPath(name string) string { return filepath.Join(r.dir, "tops", name) }

func (r *Root) checkpointDir(id string) string { return filepath.Join(r.dir, "checkpoints", id) }

const manifestName = "manifest"

// lockRoot takes the root's lock file: shared for Begin, exclusive for
// Clean, so that Clean never sees a checkpoint directory between its
// creation and its lock.
func (r *Root) lockRoot(how int) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(r.dir, "lock"), os.O_RDONLY|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("flock %s: %w", f.Name(), err)
	}
	return f, nil
}

// Pending is a checkpoint being written. It holds its directory locked
// until Commit or Abort, so Clean leaves it alone. A Pending is used by
// one goroutine.
type Pending struct {
	r      *Root
	id     string
	dir    string
	lock   *os.File // the directory, flocked
	layers []pendingLayer
	done   bool
}

type pendingLayer struct{ id, path string }

// Begin starts checkpoint id. It fails with ErrExists when a completed
// checkpoint has the ID, and otherwise when the ID's directory exists
// (a checkpoint in progress, or debris for Clean).
func (r *Root) Begin(id string) (*Pending, error) {
	if err := layerstore.ValidID(id); err != nil {
		return nil, fmt.Errorf("begin checkpoint: %w", err)
	}
	dir := r.checkpointDir(id)
	if _, err := os.Stat(filepath.Join(dir, manifestName)); err == nil {
		return nil, fmt.Errorf("begin checkpoint %s: %w", id, ErrExists)
	}
	rl, err := r.lockRoot(unix.LOCK_SH)
	if err != nil {
		return nil, fmt.Errorf("begin checkpoint %s: %w", id, err)
	}
	defer rl.Close()
	if err := os.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, os.ErrExist) {
			if _, err := os.Stat(filepath.Join(dir, manifestName)); err == nil {
				return nil, fmt.Errorf("begin checkpoint %s: %w", id, ErrExists)
			}
			return nil, fmt.Errorf("begin checkpoint %s: an incomplete checkpoint directory exists (in progress, or debris for Clean)", id)
		}
		return nil, fmt.Errorf("begin checkpoint %s: %w", id, err)
	}
	lock, err := os.Open(dir)
	if err == nil {
		err = format.Lock(lock)
		if err != nil {
			lock.Close()
		}
	}
	if err != nil {
		os.Remove(dir)
		return nil, fmt.Errorf("begin checkpoint %s: %w", id, err)
	}
	return &Pending{r: r, id: id, dir: dir, lock: lock}, nil
}

// ID returns the checkpoint's ID.
func (p *Pending) ID() string { return p.id }

// StagingPath returns a path in the checkpoint's locked directory for a
// file to be written there (a memory layer, say) before AddLayer moves it
// into the layer store. Staged files left behind are removed with the
// checkpoint (Abort, or Clean after a crash).
//
// The directory is on the store's file system, so putting a staged layer
// into a layerstore.Dir is a rename.
func (p *Pending) StagingPath(name string) string {
	return filepath.Join(p.dir, filepath.Base(name)+".tmp")
}

// AddMemoryLayer records that the finished memory layer info becomes
// layer id of the store at Commit (before the manifest is written), and
// returns the reference to put in the manifest's chain.
func (p *Pending) AddMemoryLayer(id string, info memlayer.Info) (LayerRef, error) {
	return p.addLayer(id, info.Path, info.FileBytes, info.Checksum)
}

// AddDiskLayer records that the sealed disk layer info (from Disk.Seal,
// still at the old top's path) becomes layer id of the store at Commit,
// and returns the reference to put in the disk's chain. Until a Commit
// has put it, the sealed file stays in tops/ and the caller must add it
// to its next checkpoint again.
func (p *Pending) AddDiskLayer(id string, info disklayer.Info) (LayerRef, error) {
	return p.addLayer(id, info.Path, info.FileBytes, info.Checksum)
}

func (p *Pending) addLayer(id, path string, size int64, checksum uint32) (LayerRef, error) {
	if err := layerstore.ValidID(id); err != nil {
		return LayerRef{}, fmt.Errorf("checkpoint %s: add layer: %w", p.id, err)
	}
	p.layers = append(p.layers, pendingLayer{id, path})
	return LayerRef{ID: id, Size: size, Checksum: checksum}, nil
}

// Commit completes the checkpoint: it puts the added layers into the
// layer store (each made durable there), checks that every layer the
// manifest references is stored with the size it records, then writes the
// manifest to a temporary file, fsyncs it, renames it into place (never
// over an existing one) and fsyncs the directories. m.ID must be the
// checkpoint's ID.
//
// If Commit fails the checkpoint does not exist; layers already put stay
// in the store (a later checkpoint of the same chain references them).
// Call Abort to remove the directory.
func (p *Pending) Commit(m *Manifest) error {
	if p.done {
		return fmt.Errorf("commit checkpoint %s: already committed or aborted", p.id)
	}
	if m.ID != p.id {
		return fmt.Errorf("commit checkpoint %s: manifest has ID %q", p.id, m.ID)
	}
	data, err := m.Encode()
	if err != nil {
		return fmt.Errorf("commit checkpoint %s: %w", p.id, err)
	}
	for len(p.layers) > 0 {
		l := p.layers[0]
		if err := p.r.layers.Put(l.id, l.path); err != nil {
			return fmt.Errorf("commit checkpoint %s: %w", p.id, err)
		}
		p.layers = p.layers[1:]
	}
	if err := p.r.checkRefs(m); err != nil {
		return fmt.Errorf("commit checkpoint %s: %w", p.id, err)
	}
	if m.Parent != "" {
		// The parent's working set, if it has one, is this checkpoint's
		// too (a hard link: the file is never rewritten), so that a
		// restore reads it here rather than up a long chain. Best effort:
		// Root.WorkingSet walks the chain for what this misses.
		os.Link(filepath.Join(p.r.checkpointDir(m.Parent), workingSetName), filepath.Join(p.dir, workingSetName))
	}
	tmp := filepath.Join(p.dir, manifestName+".tmp")
	if err := writeFileSync(tmp, data); err != nil {
		return fmt.Errorf("commit checkpoint %s: %w", p.id, err)
	}
	err = format.MoveNoReplace(tmp, filepath.Join(p.dir, manifestName))
	if errors.Is(err, os.ErrExist) {
		err = ErrExists
	}
	if err == nil {
		err = format.SyncDir(filepath.Dir(p.dir)) // the checkpoint directory's own entry
	}
	if err != nil {
		return fmt.Errorf("commit checkpoint %s: %w", p.id, err)
	}
	p.done = true
	p.lock.Close()
	return nil
}

// checkRefs checks that every layer m references is in the store with the
// size m records.
func (r *Root) checkRefs(m *Manifest) error {
	check := func(what string, ref LayerRef) error {
		info, err := r.layers.Stat(ref.ID)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if info.Size != ref.Size {
			return fmt.Errorf("%s: layer %s is %d bytes, the manifest says %d", what, ref.ID, info.Size, ref.Size)
		}
		return nil
	}
	for i, ref := range m.Memory {
		if err := check(fmt.Sprintf("memory layer %d", i), ref); err != nil {
			return err
		}
	}
	for id, d := range m.Disks {
		for i, ref := range d.Layers {
			if err := check(fmt.Sprintf("disk %q layer %d", id, i), ref); err != nil {
				return err
			}
		}
	}
	return nil
}

func writeFileSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}

// Abort abandons an uncommitted checkpoint and removes its directory with
// any staged files. Layers added from outside the directory are left
// where they are. It is a no-op after Commit.
func (p *Pending) Abort() error {
	if p.done {
		return nil
	}
	p.done = true
	err := os.RemoveAll(p.dir)
	p.lock.Close()
	if err != nil {
		return fmt.Errorf("abort checkpoint %s: %w", p.id, err)
	}
	return nil
}

// Load reads and decodes completed checkpoint id's manifest. It fails with
// ErrNotFound when there is none.
func (r *Root) Load(id string) (*Manifest, error) {
	if err := layerstore.ValidID(id); err != nil {
		return nil, fmt.Errorf("load checkpoint: %w", err)
	}
	f, err := os.Open(filepath.Join(r.checkpointDir(id), manifestName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("load checkpoint %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("load checkpoint %s: %w", id, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxManifest+1))
	if err != nil {
		return nil, fmt.Errorf("load checkpoint %s: %w", id, err)
	}
	if len(data) > MaxManifest {
		return nil, fmt.Errorf("load checkpoint %s: manifest larger than %d bytes", id, MaxManifest)
	}
	m, err := Decode(data)
	if err != nil {
		return nil, fmt.Errorf("load checkpoint %s: %w", id, err)
	}
	if m.ID != id {
		return nil, fmt.Errorf("load checkpoint %s: manifest is for checkpoint %q", id, m.ID)
	}
	return m, nil
}

// List returns the IDs of the completed checkpoints, sorted.
func (r *Root) List() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(r.dir, "checkpoints"))
	if err != nil {
		return nil, fmt.Errorf("list checkpoints: %w", err)
	}
	var ids []string
	for _, e := range ents {
		if !e.IsDir() || layerstore.ValidID(e.Name()) != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(r.checkpointDir(e.Name()), manifestName)); err == nil {
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}

// cleanCheckpointDir removes checkpoint directory dir if it is debris (no
// manifest, and no writer) and reports whether it did; from a completed
// checkpoint it removes the temporary files no one holds (with remove).
// A checkpoint in progress, and a directory already gone, are left.
//
// It looks for the manifest only once it holds the directory's lock. A
// writer holds that lock from Begin until its manifest is in place, so an
// unlocked directory without a manifest never gets one. The other order
// (look, then ask whether the directory is locked) removed checkpoints
// whose commit finished in between: a daemon compacting one box's chain
// while it collected another's lost the compacted checkpoint.
func (r *Root) cleanCheckpointDir(dir string, remove func(path string) error) (bool, error) {
	lock, err := format.TryLock(dir)
	if testHookCleanDir != nil {
		testHookCleanDir(dir)
	}
	if errors.Is(err, format.ErrBusy) || (lock == nil && err == nil) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer lock.Close()
	_, err = os.Stat(filepath.Join(dir, manifestName))
	if errors.Is(err, os.ErrNotExist) {
		r.removed(dir, "debris: no manifest, and no writer holds its directory")
		return true, os.RemoveAll(dir)
	}
	if err != nil {
		return false, err
	}
	files, err := os.ReadDir(dir)
	if err != nil {
		return false, err
	}
	for _, f := range files {
		if strings.HasSuffix(f.Name(), ".tmp") {
			if err := remove(filepath.Join(dir, f.Name())); err != nil {
				return false, err
			}
		}
	}
	return false, nil
}

// testHookCleanDir, set by a test, runs between Clean's first look at
// checkpoint directory dir and what it does about it: where a commit
// finishing meanwhile must not be lost.
var testHookCleanDir func(dir string)

// Remove deletes completed checkpoint id: its manifest first (so it stops
// existing at once), then its directory. Its layers stay in the store;
// deleting those no checkpoint references is the caller's job.
func (r *Root) Remove(id string) error { return r.remove(id, "Remove") }

// remove is Remove, logging why (SetLogger).
func (r *Root) remove(id, why string) error {
	if err := layerstore.ValidID(id); err != nil {
		return fmt.Errorf("remove checkpoint: %w", err)
	}
	dir := r.checkpointDir(id)
	if err := os.Remove(filepath.Join(dir, manifestName)); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove checkpoint %s: %w", id, ErrNotFound)
		}
		return fmt.Errorf("remove checkpoint %s: %w", id, err)
	}
	r.removed(dir, why)
	if err := format.SyncDir(dir); err != nil {
		return fmt.Errorf("remove checkpoint %s: %w", id, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove checkpoint %s: %w", id, err)
	}
	return nil
}

// Clean removes debris and returns the paths it removed: checkpoint
// directories without a manifest, temporary files in completed ones, disk
// tops no Disk holds, and the layer store's temporary files (when it is a
// layerstore.Cleaner). Whatever a live process is writing is locked and
// left alone, so Clean is safe to run while boxes run: it decides what is
// debris holding the lock a writer would hold (format.RemoveDebris), and
// leaves empty files, which a writer may have just created and not yet
// locked.
func (r *Root) Clean() ([]string, error) {
	rl, err := r.lockRoot(unix.LOCK_EX)
	if err != nil {
		return nil, fmt.Errorf("clean checkpoint store: %w", err)
	}
	defer rl.Close()
	return r.clean()
}

// clean is Clean with the root's lock held exclusively.
func (r *Root) clean() ([]string, error) {
	var removed []string
	remove := func(p string) error {
		gone, err := format.RemoveDebris(p)
		if gone {
			removed = append(removed, p)
		}
		return err
	}
	ckpts := filepath.Join(r.dir, "checkpoints")
	ents, err := os.ReadDir(ckpts)
	if err != nil {
		return nil, fmt.Errorf("clean checkpoint store: %w", err)
	}
	for _, e := range ents {
		dir := filepath.Join(ckpts, e.Name())
		if !e.IsDir() {
			continue
		}
		gone, err := r.cleanCheckpointDir(dir, remove)
		if err != nil {
			return removed, fmt.Errorf("clean checkpoint store: %w", err)
		}
		if gone {
			removed = append(removed, dir)
		}
	}
	tops, err := os.ReadDir(filepath.Join(r.dir, "tops"))
	if err != nil {
		return removed, fmt.Errorf("clean checkpoint store: %w", err)
	}
	for _, e := range tops {
		if err := remove(filepath.Join(r.dir, "tops", e.Name())); err != nil {
			return removed, fmt.Errorf("clean checkpoint store: %w", err)
		}
	}
	if c, ok := r.layers.(layerstore.Cleaner); ok {
		more, err := c.Clean()
		removed = append(removed, more...)
		if err != nil {
			return removed, fmt.Errorf("clean checkpoint store: %w", err)
		}
	}
	if err := format.SyncDir(ckpts); err != nil {
		return removed, err
	}
	sort.Strings(removed)
	return removed, nil
}
