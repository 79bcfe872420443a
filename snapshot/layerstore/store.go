// Package layerstore keeps immutable layer files (memory layers and sealed
// disk layers) by ID, at rest, and hands them back as mappable files.
//
// # The interface
//
// Store is deliberately small: put, open, stat, list, delete. Every
// implementation passes the one suite in package storetest. A checkpoint
// writer uses it like this:
//
//	info, err := w.Finish()                    // a finished memory layer at some path
//	err = store.Put("box1-mem-7", info.Path)   // moved in; the path is gone after
//
// and a restore like this:
//
//	path, err := store.Open("box1-mem-7")      // an uncompressed file, on local disk
//	layer, err := memlayer.Open(path)          // then mmap it
//
// Layers are immutable: Put never replaces an existing ID (ErrExists), and
// there is no way to modify a stored layer. Delete removes a layer that no
// checkpoint references any more; files already open or mapped stay valid
// (POSIX unlink semantics).
//
// # Implementations
//
// Dir keeps layers as plain files: Put is a rename (no copy) when the
// source is on the same file system, and Open returns the stored file
// itself. It is the default.
//
// Zstd keeps layers zstd-compressed: smaller at rest, but not mappable, so
// Open first decompresses into a cache directory (keeping holes sparse)
// and returns the cached copy; later Opens reuse it.
package layerstore

import (
	"errors"
	"fmt"
	"regexp"
)

// Store holds immutable layer files by ID. Implementations are safe for
// concurrent use, by goroutines and by processes sharing the directory.
type Store interface {
	// Put moves the complete, closed file at path into the store as
	// layer id: renamed where possible, else copied then removed.
	// After Put returns nil, path no longer exists and the layer is
	// durable. It fails with ErrExists if id is taken, leaving path
	// untouched.
	Put(id, path string) error
	// Open returns the path of an uncompressed, mappable copy of layer
	// id on local disk, valid until Delete(id). Callers must not
	// modify it. It fails with ErrNotFound.
	Open(id string) (string, error)
	// Stat describes layer id, or fails with ErrNotFound.
	Stat(id string) (Info, error)
	// List describes every layer, sorted by ID.
	List() ([]Info, error)
	// Delete removes layer id (and any cached copy), or fails with
	// ErrNotFound.
	Delete(id string) error
}

// Info describes a stored layer.
type Info struct {
	ID   string
	Size int64 // bytes of the layer file as Open presents it
}

// Cleaner is implemented by stores that leave temporary files behind when
// a process dies mid-Put or mid-Open. Clean removes those no live process
// is writing (they are locked while written) and returns their paths.
type Cleaner interface {
	Clean() ([]string, error)
}

// Errors returned by every Store.
var (
	ErrNotFound  = errors.New("layer not found")
	ErrExists    = errors.New("layer already exists")
	ErrInvalidID = errors.New("invalid layer ID")
)

var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidID reports whether id can name a layer: 1 to 128 characters from
// [A-Za-z0-9._-], not starting with '.', '_' or '-' (names starting with
// '.' are the stores' temporary files).
func ValidID(id string) error {
	if !idPattern.MatchString(id) {
		return fmt.Errorf("%w %q", ErrInvalidID, id)
	}
	return nil
}
