// Package catalog is sailboxd's record of its boxes and their
// checkpoints, in an embedded bbolt database in the daemon's state
// directory.
//
// Every read and write happens in a transaction, so a multi-step change
// is all or nothing. The daemon uses that to leave nothing half-created:
//
//	// 1. record the intent, visibly unfinished
//	cat.Update(func(tx *catalog.Tx) error { return tx.PutBox(catalog.Box{ID: id, State: lifecycle.Creating, ...}) })
//	// 2. do the slow work outside any transaction
//	inst, err := backend.Boot(ctx, ...)
//	// 3. commit it, or undo step 1
//	cat.Update(func(tx *catalog.Tx) error {
//		if err != nil { return tx.DeleteBox(id) }
//		b, _ := tx.Box(id); b.State = lifecycle.Running; return tx.PutBox(b)
//	})
//
// and, when it starts, removes what a crash left between steps 1 and 3:
// boxes still Creating and checkpoints not Completed.
//
// A box's chain is the checkpoints its state builds on: from its newest
// completed checkpoint (or, for a fork that has not checkpointed yet, the
// checkpoint it was restored from) back through each checkpoint's parent.
// A template (a booted guest checkpointed once, which creates restore new
// boxes from) has a chain too. A checkpoint on no box's or template's
// chain is unreferenced: its storage can be freed (Unreferenced).
//
// A Catalog is safe for concurrent use; bbolt serializes writers.
package catalog

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sailbox-dev/sailbox/api/lifecycle"
)

// Errors.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	// ErrDangling reports a record that names a box or checkpoint the
	// catalog does not hold.
	ErrDangling = errors.New("dangling reference")
	// ErrCorrupt reports a record that does not decode, or a chain that
	// loops.
	ErrCorrupt = errors.New("catalog corrupt")
	// ErrVersion reports a catalog written by a newer daemon.
	ErrVersion = errors.New("unsupported catalog version")
)

// version is the record layout this package writes; Open refuses a
// catalog of another.
const version = "1"

var (
	bucketMeta        = []byte("meta")
	bucketBoxes       = []byte("boxes")
	bucketCheckpoints = []byte("checkpoints")
	bucketTemplates   = []byte("templates")
	keyVersion        = []byte("version")
)

// Box is a box's record.
type Box struct {
	ID                 string          `json:"id"`
	State              lifecycle.State `json:"state"`
	GuestSchemaVersion int             `json:"guest_schema_version"`
	Created            time.Time       `json:"created"`
	ParentID           string          `json:"parent_id,omitempty"` // the box it was forked from
	Template           string          `json:"template,omitempty"`  // the template it was created from
	HostID             string          `json:"host_id"`
	PendingUpgrade     bool            `json:"pending_upgrade,omitempty"`
	Spec               Spec            `json:"spec"`
	// BaseCheckpoint is the checkpoint a fork was restored from; "" for a
	// created box.
	BaseCheckpoint string `json:"base_checkpoint,omitempty"`
	// LastCheckpoint is the box's newest completed checkpoint, "" if none.
	LastCheckpoint string `json:"last_checkpoint,omitempty"`
	// CheckpointSeq is the last number used in the box's checkpoint IDs.
	CheckpointSeq int    `json:"checkpoint_seq,omitempty"`
	Ports         []Port `json:"ports,omitempty"`
	// Terminating is set before a terminate stops the box's VM: a daemon
	// that crashes before deleting the record finishes the terminate at
	// its next start instead of bringing the box back.
	Terminating bool `json:"terminating,omitempty"`
	// The box's lifecycle policies (internal/daemon's policies.go):
	// its labels; the idle time after which the daemon puts it to
	// sleep; its TTL as last set and the instant it expires (zero: it
	// does not).
	Labels             map[string]string `json:"labels,omitempty"`
	IdleTimeoutSeconds int64             `json:"idle_timeout_seconds,omitempty"`
	TTLSeconds         int64             `json:"ttl_seconds,omitempty"`
	ExpiresAt          time.Time         `json:"expires_at,omitzero"`
}

// Head is the newest checkpoint of the box's chain: LastCheckpoint, or
// for a fork that has not checkpointed yet, BaseCheckpoint.
func (b *Box) Head() string {
	if b.LastCheckpoint != "" {
		return b.LastCheckpoint
	}
	return b.BaseCheckpoint
}

// Spec is what a box was created with; a reboot uses it again.
type Spec struct {
	MemoryMiB int    `json:"memory_mib"`
	VCPUs     int    `json:"vcpus"`
	Image     string `json:"image,omitempty"`
	// Root is set when Image is a root file system (an imported OCI or
	// Docker image, or a disk with an image record beside it): the box
	// boots with it as / and its execs run with its config.
	Root *RootImage `json:"root,omitempty"`
	// DiskSizeBytes is the virtual size of the box's disk over Image,
	// larger than the image (which stays as it is: the box's writes and
	// what it reads past the image's end, zeros, are its own layer's);
	// the guest grows its root file system to it. Zero: the image's
	// size. Only with Root. Forks inherit it with the spec.
	DiskSizeBytes int64 `json:"disk_size_bytes,omitempty"`
	// Net, when set, gives the box a network of its own (a virtio-net
	// device on a sailbox-net process) under this egress policy; nil:
	// no network device (boxes created before networks existed, and
	// creates that ask for none). Forks inherit it with the spec. Only
	// its presence shapes the guest: the policy is sailbox-net's alone,
	// so it is left out of a template's key (see TemplateSpec).
	Net *NetPolicy `json:"net,omitempty"`
}

// NetPolicy is a box's egress policy, enforced by its sailbox-net when
// the guest opens a connection (api/netapi: the rules, and how they are
// applied).
type NetPolicy struct {
	// NoInternet refuses every connection that Allow does not name.
	NoInternet bool `json:"no_internet,omitempty"`
	// Allow and Deny are netapi rules (CIDR, address or domain); Deny
	// wins.
	Allow []string `json:"allow,omitempty"`
	Deny  []string `json:"deny,omitempty"`
}

// TemplateSpec is the spec of s's template: s without what only a box's
// own processes use, so that boxes differing only in it share one
// template. A template's guest is booted with its network device and a
// network that refuses every connection (NoInternet, no rule); each box
// restored from it gets a network of its own under its own policy.
func (s Spec) TemplateSpec() Spec {
	if s.Net != nil {
		s.Net = &NetPolicy{NoInternet: true}
	}
	return s
}

// RootImage is the config of the image a box's root file system was made
// from: what its execs run with.
type RootImage struct {
	Digest     string   `json:"digest,omitempty"`
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
}

// Template is a guest booted once for a spec and checkpointed with its
// agent ready: create restores new boxes from its checkpoint instead of
// booting them. Its ID is derived from everything a boot depends on, so
// a template is never used for a guest it does not match.
type Template struct {
	ID   string `json:"id"`
	Spec Spec   `json:"spec"`
	// Checkpoint is the template's completed checkpoint; "" while the
	// template is being made.
	Checkpoint         string    `json:"checkpoint,omitempty"`
	GuestSchemaVersion int       `json:"guest_schema_version"`
	Created            time.Time `json:"created"`
}

// Port is an exposed port.
type Port struct {
	HostAddr  string `json:"host_addr"`
	HostPort  int    `json:"host_port"`
	GuestPort int    `json:"guest_port"`
}

// Checkpoint is a checkpoint's record. Its ID is also its ID in the
// checkpoint store (the manifest).
type Checkpoint struct {
	ID        string    `json:"id"`
	BoxID     string    `json:"box_id"`
	ParentID  string    `json:"parent_id,omitempty"`
	Created   time.Time `json:"created"`
	Completed bool      `json:"completed"`
}

// Options tune Open.
type Options struct {
	// NoSync skips fsync on commit: for tests only, a crash can lose
	// or corrupt the catalog.
	NoSync bool
	// LockTimeout bounds the wait for another process's lock on the
	// file; zero means one second.
	LockTimeout time.Duration
}

// Catalog is an open catalog.
type Catalog struct {
	db *bolt.DB
}

// Open opens the catalog at path, creating it (mode 0600) if need be.
// A catalog another process has open fails after opts.LockTimeout.
func Open(path string, opts *Options) (*Catalog, error) {
	if opts == nil {
		opts = &Options{}
	}
	timeout := opts.LockTimeout
	if timeout == 0 {
		timeout = time.Second
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout, NoSync: opts.NoSync, NoFreelistSync: true})
	if err != nil {
		return nil, fmt.Errorf("open catalog %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		switch v := meta.Get(keyVersion); {
		case v == nil:
			if err := meta.Put(keyVersion, []byte(version)); err != nil {
				return err
			}
		case string(v) != version:
			return fmt.Errorf("%w %q (this daemon writes %q)", ErrVersion, v, version)
		}
		for _, b := range [][]byte{bucketBoxes, bucketCheckpoints, bucketTemplates} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open catalog %s: %w", path, err)
	}
	return &Catalog{db: db}, nil
}

// Close closes the catalog.
func (c *Catalog) Close() error { return c.db.Close() }

// View runs fn in a read-only transaction.
func (c *Catalog) View(fn func(*Tx) error) error {
	return c.db.View(func(tx *bolt.Tx) error { return fn(&Tx{tx: tx}) })
}

// Update runs fn in a read-write transaction, committed if fn returns
// nil and rolled back otherwise.
func (c *Catalog) Update(fn func(*Tx) error) error {
	return c.db.Update(func(tx *bolt.Tx) error { return fn(&Tx{tx: tx}) })
}

// Tx is a transaction. It is valid only inside the function given to
// View or Update, and only on that function's goroutine.
type Tx struct {
	tx *bolt.Tx
}

// Box returns box id's record.
func (t *Tx) Box(id string) (Box, error) {
	var b Box
	return b, t.get(bucketBoxes, "box", id, &b)
}

// CreateBox stores a new box; ErrExists if one has its ID.
func (t *Tx) CreateBox(b Box) error {
	if t.tx.Bucket(bucketBoxes).Get([]byte(b.ID)) != nil {
		return fmt.Errorf("box %s: %w", b.ID, ErrExists)
	}
	return t.PutBox(b)
}

// PutBox stores b, replacing any record with its ID. The checkpoints it
// names must exist.
func (t *Tx) PutBox(b Box) error {
	if b.ID == "" {
		return errors.New("put box: empty id")
	}
	for _, ck := range []string{b.BaseCheckpoint, b.LastCheckpoint} {
		if ck != "" && t.tx.Bucket(bucketCheckpoints).Get([]byte(ck)) == nil {
			return fmt.Errorf("put box %s: checkpoint %s: %w", b.ID, ck, ErrDangling)
		}
	}
	return t.put(bucketBoxes, b.ID, b)
}

// DeleteBox deletes box id's record (not its checkpoints: see
// Unreferenced). ErrNotFound if there is none.
func (t *Tx) DeleteBox(id string) error { return t.delete(bucketBoxes, "box", id) }

// Boxes returns every box, sorted by ID.
func (t *Tx) Boxes() ([]Box, error) { return all[Box](t, bucketBoxes, "box") }

// Checkpoint returns checkpoint id's record.
func (t *Tx) Checkpoint(id string) (Checkpoint, error) {
	var c Checkpoint
	return c, t.get(bucketCheckpoints, "checkpoint", id, &c)
}

// PutCheckpoint stores c, replacing any record with its ID. A new
// checkpoint's box (or template) and parent must exist; a stored one may
// outlive its box.
func (t *Tx) PutCheckpoint(c Checkpoint) error {
	if c.ID == "" {
		return errors.New("put checkpoint: empty id")
	}
	if t.tx.Bucket(bucketCheckpoints).Get([]byte(c.ID)) == nil {
		if t.tx.Bucket(bucketBoxes).Get([]byte(c.BoxID)) == nil && t.tx.Bucket(bucketTemplates).Get([]byte(c.BoxID)) == nil {
			return fmt.Errorf("put checkpoint %s: box %s: %w", c.ID, c.BoxID, ErrDangling)
		}
		if c.ParentID != "" && t.tx.Bucket(bucketCheckpoints).Get([]byte(c.ParentID)) == nil {
			return fmt.Errorf("put checkpoint %s: parent %s: %w", c.ID, c.ParentID, ErrDangling)
		}
	}
	return t.put(bucketCheckpoints, c.ID, c)
}

// DeleteCheckpoint deletes checkpoint id's record. ErrNotFound if there
// is none.
func (t *Tx) DeleteCheckpoint(id string) error { return t.delete(bucketCheckpoints, "checkpoint", id) }

// Checkpoints returns every checkpoint, sorted by ID.
func (t *Tx) Checkpoints() ([]Checkpoint, error) {
	return all[Checkpoint](t, bucketCheckpoints, "checkpoint")
}

// Chain returns box id's chain, newest first; empty for a box without
// checkpoints.
func (t *Tx) Chain(id string) ([]Checkpoint, error) {
	b, err := t.Box(id)
	if err != nil {
		return nil, err
	}
	return t.chainFrom(b.Head())
}

func (t *Tx) chainFrom(head string) ([]Checkpoint, error) {
	var chain []Checkpoint
	seen := map[string]bool{}
	for id := head; id != ""; {
		if seen[id] {
			return nil, fmt.Errorf("chain of %s: %w: loops at %s", head, ErrCorrupt, id)
		}
		seen[id] = true
		c, err := t.Checkpoint(id)
		if err != nil {
			return nil, fmt.Errorf("chain of %s: %w", head, err)
		}
		chain = append(chain, c)
		id = c.ParentID
	}
	return chain, nil
}

// Referenced returns the IDs of the checkpoints on some box's or
// template's chain.
func (t *Tx) Referenced() (map[string]bool, error) {
	boxes, err := t.Boxes()
	if err != nil {
		return nil, err
	}
	templates, err := t.Templates()
	if err != nil {
		return nil, err
	}
	heads := map[string]string{} // head → who holds it, for errors
	for _, b := range boxes {
		heads[b.Head()] = "box " + b.ID
	}
	for _, tp := range templates {
		heads[tp.Checkpoint] = "template " + tp.ID
	}
	ref := map[string]bool{}
	for head, owner := range heads {
		// Chains share their older parts: stop at the first checkpoint
		// already seen.
		for id := head; id != "" && !ref[id]; {
			c, err := t.Checkpoint(id)
			if err != nil {
				return nil, fmt.Errorf("chain of %s: %w", owner, err)
			}
			ref[id] = true
			id = c.ParentID
		}
	}
	return ref, nil
}

// Unreferenced returns the completed checkpoints on no box's chain,
// children before their parents (the order to delete them in). Checkpoints
// not yet completed are in flight, or debris for Incomplete.
func (t *Tx) Unreferenced() ([]Checkpoint, error) {
	ref, err := t.Referenced()
	if err != nil {
		return nil, err
	}
	all, err := t.Checkpoints()
	if err != nil {
		return nil, err
	}
	var out []Checkpoint
	for _, c := range all {
		if c.Completed && !ref[c.ID] {
			out = append(out, c)
		}
	}
	// Children first: a checkpoint's depth in its chain is greater than
	// its parent's.
	depth := map[string]int{}
	var depthOf func(id string, n int) int
	byID := map[string]Checkpoint{}
	for _, c := range all {
		byID[c.ID] = c
	}
	depthOf = func(id string, n int) int {
		if d, ok := depth[id]; ok {
			return d
		}
		c, ok := byID[id]
		if !ok || c.ParentID == "" || n > len(all) {
			return 0
		}
		d := depthOf(c.ParentID, n+1) + 1
		depth[id] = d
		return d
	}
	sort.SliceStable(out, func(i, j int) bool { return depthOf(out[i].ID, 0) > depthOf(out[j].ID, 0) })
	return out, nil
}

// Template returns template id's record.
func (t *Tx) Template(id string) (Template, error) {
	var tp Template
	return tp, t.get(bucketTemplates, "template", id, &tp)
}

// PutTemplate stores tp, replacing any record with its ID. The
// checkpoint it names must exist.
func (t *Tx) PutTemplate(tp Template) error {
	if tp.ID == "" {
		return errors.New("put template: empty id")
	}
	if tp.Checkpoint != "" && t.tx.Bucket(bucketCheckpoints).Get([]byte(tp.Checkpoint)) == nil {
		return fmt.Errorf("put template %s: checkpoint %s: %w", tp.ID, tp.Checkpoint, ErrDangling)
	}
	return t.put(bucketTemplates, tp.ID, tp)
}

// DeleteTemplate deletes template id's record (not its checkpoint: see
// Unreferenced). ErrNotFound if there is none.
func (t *Tx) DeleteTemplate(id string) error { return t.delete(bucketTemplates, "template", id) }

// Templates returns every template, sorted by ID.
func (t *Tx) Templates() ([]Template, error) { return all[Template](t, bucketTemplates, "template") }

// Incomplete returns the checkpoints not completed.
func (t *Tx) Incomplete() ([]Checkpoint, error) {
	all, err := t.Checkpoints()
	if err != nil {
		return nil, err
	}
	var out []Checkpoint
	for _, c := range all {
		if !c.Completed {
			out = append(out, c)
		}
	}
	return out, nil
}

// all decodes every record of bucket, sorted by key.
func all[T any](t *Tx, bucket []byte, kind string) ([]T, error) {
	var out []T
	err := t.tx.Bucket(bucket).ForEach(func(k, v []byte) error {
		var r T
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("%s %s: %w: %v", kind, k, ErrCorrupt, err)
		}
		out = append(out, r)
		return nil
	})
	return out, err
}

func (t *Tx) get(bucket []byte, kind, id string, v any) error {
	data := t.tx.Bucket(bucket).Get([]byte(id))
	if data == nil {
		return fmt.Errorf("%s %s: %w", kind, id, ErrNotFound)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s %s: %w: %v", kind, id, ErrCorrupt, err)
	}
	return nil
}

func (t *Tx) put(bucket []byte, id string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return t.tx.Bucket(bucket).Put([]byte(id), data)
}

func (t *Tx) delete(bucket []byte, kind, id string) error {
	b := t.tx.Bucket(bucket)
	if b.Get([]byte(id)) == nil {
		return fmt.Errorf("%s %s: %w", kind, id, ErrNotFound)
	}
	return b.Delete([]byte(id))
}
