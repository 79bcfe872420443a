package snapshot

import (
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"time"

	"github.com/sailbox-dev/sailbox/snapshot/internal/format"
	"github.com/sailbox-dev/sailbox/snapshot/layerstore"
	"github.com/sailbox-dev/sailbox/snapshot/memlayer"
)

// FormatVersion is the manifest format version Encode writes. Decode
// accepts MinFormatVersion through FormatVersion; see FORMAT.md for how
// versions evolve.
const (
	FormatVersion    = 1
	MinFormatVersion = 1
)

// ErrIncompatibleVersion is matched by errors for files (manifests and
// layers) of a format version this build does not read; errors.As with a
// *VersionError gives both versions.
var ErrIncompatibleVersion = format.ErrIncompatibleVersion

// ErrCorrupt is matched by errors for damaged or truncated files;
// errors.As with a *CorruptError gives the section.
var ErrCorrupt = format.ErrCorrupt

// VersionError and CorruptError are the error types behind
// ErrIncompatibleVersion and ErrCorrupt, shared by every snapshot format.
type (
	VersionError = format.VersionError
	CorruptError = format.CorruptError
)

// Manifest describes one checkpoint: what it needs to be restored, and the
// opaque saved state of the VM's parts. It is the last file a checkpoint
// writes; a checkpoint exists once its manifest does.
type Manifest struct {
	ID      string    // this checkpoint's ID in its Root
	Parent  string    // the checkpoint this one's layers build on; "" for none
	Created time.Time // when it was taken (stored in UTC, to the nanosecond)

	VMMVersion         string // the VMM build that wrote it, informational
	GuestSchemaVersion int    // the guest agent's protocol/schema version
	HostCPU            CPU    // the host it was taken on (see Compatible)
	CPUID              []CPUIDEntry

	MemorySize uint64 // guest RAM in bytes, a multiple of memlayer.PageSize
	VCPUs      int

	// Memory is the chain of memory layers, base→top; memlayer.Plan
	// maps it.
	Memory []LayerRef
	// Disks are the disks' chains, keyed by stable disk ID (e.g. "vda").
	Disks map[string]DiskChain
	// State holds the opaque saved state of the VM's parts, keyed by
	// stable IDs such as "vcpu/0", "vm/irqchip", "dev/virtio-blk/0". This
	// package stores and checksums the bytes and never interprets them.
	State map[string][]byte
}

// LayerRef names a layer in a Root's layer store, with what identifies its
// exact content: the layer's size and header checksum (which covers its
// index and data checksums).
type LayerRef struct {
	ID       string `json:"id"`
	Size     int64  `json:"size"`
	Checksum uint32 `json:"checksum"`
}

// DiskChain is one disk: a read-only base image and sealed layers.
type DiskChain struct {
	// Base is the path of the read-only raw base image, "" for none.
	// Images are managed outside the checkpoint store and must not
	// change; BaseSize catches a swapped image cheaply.
	Base     string     `json:"base,omitempty"`
	BaseSize int64      `json:"base_size,omitempty"`
	Size     int64      `json:"size"`   // virtual size in bytes
	Layers   []LayerRef `json:"layers"` // base→top
}

// Limits that bound what a manifest may hold, and so what decoding one may
// allocate.
const (
	MaxSections    = 4096     // state sections, plus the metadata
	MaxSectionSize = 64 << 20 // bytes of one section's payload
	MaxIDLen       = 128      // bytes of a state or disk ID
	MaxManifest    = 256 << 20
	maxVCPUs       = 1024
	// MaxMemorySize bounds a guest's memory: 1 TiB. What is sized by it
	// (a working set's bitmaps: 32 MiB each at most) stays bounded for
	// a manifest that claims more.
	MaxMemorySize = 1 << 40
)

var stateIDPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*(/[a-z0-9._-]+)*$`)

// ValidStateID reports whether id can key a state section or a disk:
// lower-case ASCII words of [a-z0-9._-] separated by '/', at most MaxIDLen
// bytes (e.g. "vcpu/0", "dev/virtio-blk/0").
func ValidStateID(id string) error {
	if len(id) > MaxIDLen || !stateIDPattern.MatchString(id) {
		return fmt.Errorf("invalid ID %q: want lower-case [a-z0-9._-] words separated by '/', at most %d bytes", id, MaxIDLen)
	}
	return nil
}

// Validate checks the manifest's invariants; Encode and Decode call it.
// The error names the field.
func (m *Manifest) Validate() error {
	if err := layerstore.ValidID(m.ID); err != nil {
		return fmt.Errorf("manifest ID: %w", err)
	}
	if m.Parent != "" {
		if err := layerstore.ValidID(m.Parent); err != nil {
			return fmt.Errorf("manifest parent: %w", err)
		}
	}
	if m.MemorySize == 0 || m.MemorySize%memlayer.PageSize != 0 || m.MemorySize > MaxMemorySize {
		return fmt.Errorf("manifest memory size %d: want a non-zero multiple of %d, at most %d", m.MemorySize, memlayer.PageSize, uint64(MaxMemorySize))
	}
	if m.VCPUs < 1 || m.VCPUs > maxVCPUs {
		return fmt.Errorf("manifest vCPU count %d: want 1 to %d", m.VCPUs, maxVCPUs)
	}
	if m.GuestSchemaVersion < 0 {
		return fmt.Errorf("manifest guest schema version %d is negative", m.GuestSchemaVersion)
	}
	if err := validRefs(m.Memory); err != nil {
		return fmt.Errorf("manifest memory chain: %w", err)
	}
	for _, id := range slices.Sorted(maps.Keys(m.Disks)) {
		d := m.Disks[id]
		if err := ValidStateID(id); err != nil {
			return fmt.Errorf("manifest disk: %w", err)
		}
		if d.Size <= 0 || d.BaseSize < 0 || (d.Base == "") != (d.BaseSize == 0) {
			return fmt.Errorf("manifest disk %q: size %d, base %q of size %d", id, d.Size, d.Base, d.BaseSize)
		}
		if err := validRefs(d.Layers); err != nil {
			return fmt.Errorf("manifest disk %q: %w", id, err)
		}
	}
	if len(m.State)+1 > MaxSections {
		return fmt.Errorf("manifest: %d state sections, at most %d", len(m.State), MaxSections-1)
	}
	for id, b := range m.State {
		if err := ValidStateID(id); err != nil {
			return fmt.Errorf("manifest state: %w", err)
		}
		if len(b) > MaxSectionSize {
			return fmt.Errorf("manifest state %q: %d bytes, at most %d", id, len(b), MaxSectionSize)
		}
	}
	return nil
}

func validRefs(refs []LayerRef) error {
	for i, r := range refs {
		if err := layerstore.ValidID(r.ID); err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		if r.Size <= 0 {
			return fmt.Errorf("layer %d (%s): size %d", i, r.ID, r.Size)
		}
	}
	return nil
}

// Errors of a Root.
var (
	// ErrNotFound: no completed checkpoint has the ID.
	ErrNotFound = errors.New("checkpoint not found")
	// ErrExists: the ID is taken by a completed checkpoint, which is
	// never overwritten.
	ErrExists = errors.New("checkpoint already exists")
)
