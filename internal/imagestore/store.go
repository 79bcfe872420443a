package imagestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Image is one converted image: its read-only ext4 base and the parts of
// its config a box runs with.
type Image struct {
	// Digest is the image's config digest ("sha256:…"): the same image
	// read from a registry, an OCI layout or a docker-save tarball has
	// one config digest, while its manifest digest depends on how its
	// layers were compressed for that transport (see doc.go).
	Digest string
	// Path is the ext4 base file, mode 0444, shared by every box made
	// from the image.
	Path string
	// Bytes is the size of the file system the base holds (its apparent
	// size: the file is sparse).
	Bytes int64
	// Ref is the REF the image was first imported from.
	Ref string
	// Created is when the base was converted.
	Created time.Time
	Config  Config
}

// Config is what the image's config says about running it.
type Config struct {
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
}

// record is the JSON file beside a base, <name>.json. It is renamed into
// place before the base: a base exists once <name>.ext4 does.
type record struct {
	Digest  string    `json:"digest"`
	Ref     string    `json:"ref"`
	Created time.Time `json:"created"`
	Config  Config    `json:"config"`
}

// Options tune a Store; zero fields take the defaults below.
type Options struct {
	// MaxImageBytes bounds a layer's uncompressed tar stream and the
	// flattened tree (in ext4 blocks). Default 16 GiB.
	MaxImageBytes int64
	// SpareBytes is the room a base's file system has beyond the image's
	// tree, for what a box writes on it (the file is sparse: the room
	// costs no host disk until a box's layer uses it). Default 1 GiB.
	// Negative means none.
	SpareBytes int64
	// ReserveBytes is the free space an import leaves on the store's file
	// system; it refuses to start, or stops, with ErrNoSpace rather than
	// go below it. Default 64 MiB.
	ReserveBytes int64
	// Keychain authenticates to registries. Default authn.DefaultKeychain
	// (the docker config of the daemon's user).
	Keychain authn.Keychain
	// Transport reaches registries. Default remote.DefaultTransport. Plain
	// HTTP is refused, whatever the transport, to hosts other than
	// loopback ones.
	Transport http.RoundTripper
}

const (
	defaultMaxImageBytes = 16 << 30
	defaultSpareBytes    = 1 << 30
	defaultReserveBytes  = 64 << 20
)

func (o Options) withDefaults() Options {
	if o.MaxImageBytes <= 0 {
		o.MaxImageBytes = defaultMaxImageBytes
	}
	if o.SpareBytes == 0 {
		o.SpareBytes = defaultSpareBytes
	} else if o.SpareBytes < 0 {
		o.SpareBytes = 0
	}
	if o.ReserveBytes <= 0 {
		o.ReserveBytes = defaultReserveBytes
	}
	if o.Keychain == nil {
		o.Keychain = authn.DefaultKeychain
	}
	return o
}

// Store keeps one ext4 base per image digest in a directory that belongs
// to one process (the daemon): Open removes what an interrupted import
// left there.
//
// Layout of the directory:
//
//	sha256-<hex>.ext4   the base, mode 0444; present only once complete
//	sha256-<hex>.json   its record (config, REF, creation time)
//	.tmp/               work directories of imports in flight
type Store struct {
	dir  string
	opts Options

	mu   sync.Mutex               // guards busy
	busy map[string]chan struct{} // digest → closed when the import or removal holding it ends

	conversions atomic.Int64 // conversions run, for tests
}

const tmpDir = ".tmp"

// Open returns the store in dir, creating dir (mode 0700: a base's tree
// holds setuid files while it is unpacked) and removing any work an
// interrupted import left, and records without a base.
func Open(dir string, opts Options) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	s := &Store{dir: dir, opts: opts.withDefaults(), busy: map[string]chan struct{}{}}
	if err := os.RemoveAll(filepath.Join(dir, tmpDir)); err != nil {
		return nil, fmt.Errorf("image store: remove interrupted imports: %w", err)
	}
	if err := os.Mkdir(filepath.Join(dir, tmpDir), 0o700); err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	for _, e := range entries {
		stem, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, stem+".ext4")); errors.Is(err, fs.ErrNotExist) {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return nil, fmt.Errorf("image store: remove orphan record: %w", err)
			}
		}
	}
	return s, nil
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

// fileStem names the files of digest h: "sha256-<hex>" (no colon, which
// some path lists use as a separator).
func fileStem(h v1.Hash) string { return h.Algorithm + "-" + h.Hex }

func parseDigest(digest string) (v1.Hash, error) {
	h, err := v1.NewHash(digest)
	if err != nil || h.Algorithm != "sha256" {
		return v1.Hash{}, fmt.Errorf("%w: %q is not a sha256 digest", ErrNotFound, digest)
	}
	return h, nil
}

// Get returns the image with digest ("sha256:<hex>").
func (s *Store) Get(digest string) (Image, error) {
	h, err := parseDigest(digest)
	if err != nil {
		return Image{}, err
	}
	return s.get(h)
}

func (s *Store) get(h v1.Hash) (Image, error) {
	stem := filepath.Join(s.dir, fileStem(h))
	st, err := os.Stat(stem + ".ext4")
	if errors.Is(err, fs.ErrNotExist) {
		return Image{}, fmt.Errorf("image %s: %w", h, ErrNotFound)
	}
	if err != nil {
		return Image{}, fmt.Errorf("image %s: %w", h, err)
	}
	data, err := os.ReadFile(stem + ".json")
	if err != nil {
		return Image{}, fmt.Errorf("image %s: record: %w", h, err)
	}
	var rec record
	if err := json.Unmarshal(data, &rec); err != nil {
		return Image{}, fmt.Errorf("image %s: record: %w", h, err)
	}
	return Image{
		Digest:  h.String(),
		Path:    stem + ".ext4",
		Bytes:   st.Size(),
		Ref:     rec.Ref,
		Created: rec.Created,
		Config:  rec.Config,
	}, nil
}

// List returns every image in the store, oldest first.
func (s *Store) List() ([]Image, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	var out []Image
	for _, e := range entries {
		stem, ok := strings.CutSuffix(e.Name(), ".ext4")
		if !ok {
			continue
		}
		hex, ok := strings.CutPrefix(stem, "sha256-")
		if !ok {
			continue
		}
		img, err := s.Get("sha256:" + hex)
		if errors.Is(err, ErrNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, img)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].Digest < out[j].Digest
	})
	return out, nil
}

// Remove deletes the base with digest and its record. It waits for an
// import of the same digest in flight. The caller makes sure no box uses
// the base (a VMM that has it open keeps reading the unlinked file).
func (s *Store) Remove(digest string) error {
	h, err := parseDigest(digest)
	if err != nil {
		return err
	}
	unlock, err := s.lock(context.Background(), h)
	if err != nil {
		return err
	}
	defer unlock()
	stem := filepath.Join(s.dir, fileStem(h))
	if err := os.Remove(stem + ".ext4"); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("image %s: %w", h, ErrNotFound)
	} else if err != nil {
		return fmt.Errorf("remove image %s: %w", h, err)
	}
	if err := os.Remove(stem + ".json"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove image %s: record: %w", h, err)
	}
	return syncDir(s.dir)
}

// lock makes the caller the only import or removal of digest h until
// unlock; it waits for the current holder or ctx.
func (s *Store) lock(ctx context.Context, h v1.Hash) (unlock func(), err error) {
	key := h.String()
	for {
		s.mu.Lock()
		held, ok := s.busy[key]
		if !ok {
			done := make(chan struct{})
			s.busy[key] = done
			s.mu.Unlock()
			return func() {
				s.mu.Lock()
				delete(s.busy, key)
				s.mu.Unlock()
				close(done)
			}, nil
		}
		s.mu.Unlock()
		select {
		case <-held:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// ReadRecord reads the image record beside a base disk made elsewhere
// (such as image/build.sh's rootfs.ext4 and rootfs.json): the file
// recordPath in the store's record format. The Image it returns has no
// Path or Bytes.
func ReadRecord(recordPath string) (Image, error) {
	data, err := os.ReadFile(recordPath)
	if err != nil {
		return Image{}, fmt.Errorf("image record: %w", err)
	}
	var rec record
	if err := json.Unmarshal(data, &rec); err != nil {
		return Image{}, fmt.Errorf("%w: image record %s: %w", ErrBadImage, recordPath, err)
	}
	return Image{Digest: rec.Digest, Ref: rec.Ref, Created: rec.Created, Config: rec.Config}, nil
}
