package snapshot

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/sailbox-dev/sailbox/snapshot/internal/format"
)

// The manifest file (FORMAT.md has the full description):
//
//	header   magic "SBXCKPT\n", le32 format version, le32 section count,
//	         le32 CRC-32C of the preceding 16 bytes
//	section  u8 kind, u8 ID length, ID, le32 payload length, payload,
//	         le32 CRC-32C of everything from kind to the end of the payload
//
// Section 0 is the metadata (kind 1, ID "meta", a JSON object); the state
// sections follow (kind 2, keyed by state ID, strictly ascending).
var manifestMagic = [8]byte{'S', 'B', 'X', 'C', 'K', 'P', 'T', '\n'}

const (
	manifestHeaderLen = 20
	kindMeta          = 1
	kindState         = 2
	metaID            = "meta"
	whatManifest      = "manifest"
)

// metaV1 is the metadata section of format version 1. Fields may only be
// added with a version bump (see FORMAT.md); decoding rejects unknown ones.
type metaV1 struct {
	ID                 string               `json:"id"`
	Parent             string               `json:"parent,omitempty"`
	Created            time.Time            `json:"created"`
	VMMVersion         string               `json:"vmm_version"`
	GuestSchemaVersion int                  `json:"guest_schema_version"`
	HostCPU            CPU                  `json:"host_cpu"`
	CPUID              []CPUIDEntry         `json:"cpuid"`
	MemorySize         uint64               `json:"memory_size"`
	VCPUs              int                  `json:"vcpus"`
	Memory             []LayerRef           `json:"memory"`
	Disks              map[string]DiskChain `json:"disks"`
}

// Encode validates m and returns its encoding in the current format
// version. The encoding is deterministic: equal manifests encode to equal
// bytes.
func (m *Manifest) Encode() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("encode %w", err)
	}
	meta, err := json.Marshal(metaV1{
		ID:                 m.ID,
		Parent:             m.Parent,
		Created:            m.Created.UTC(),
		VMMVersion:         m.VMMVersion,
		GuestSchemaVersion: m.GuestSchemaVersion,
		HostCPU:            m.HostCPU,
		CPUID:              m.CPUID,
		MemorySize:         m.MemorySize,
		VCPUs:              m.VCPUs,
		Memory:             m.Memory,
		Disks:              m.Disks,
	})
	if err != nil {
		return nil, fmt.Errorf("encode manifest metadata: %w", err)
	}
	if len(meta) > MaxSectionSize {
		return nil, fmt.Errorf("encode manifest: metadata is %d bytes, at most %d", len(meta), MaxSectionSize)
	}
	b := make([]byte, 0, manifestHeaderLen+len(meta)+64)
	b = append(b, manifestMagic[:]...)
	b = binary.LittleEndian.AppendUint32(b, FormatVersion)
	b = binary.LittleEndian.AppendUint32(b, uint32(1+len(m.State)))
	b = binary.LittleEndian.AppendUint32(b, format.Checksum(b))
	b = appendSection(b, kindMeta, metaID, meta)
	for _, id := range slices.Sorted(maps.Keys(m.State)) {
		b = appendSection(b, kindState, id, m.State[id])
	}
	return b, nil
}

func appendSection(b []byte, kind byte, id string, payload []byte) []byte {
	start := len(b)
	b = append(b, kind, byte(len(id)))
	b = append(b, id...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(payload)))
	b = append(b, payload...)
	return binary.LittleEndian.AppendUint32(b, format.Checksum(b[start:]))
}

// Decode decodes and validates a manifest. A file of another format
// version fails with a *VersionError (ErrIncompatibleVersion); a damaged
// or truncated one with a *CorruptError (ErrCorrupt) naming the section.
// Allocations are bounded by len(b).
func Decode(b []byte) (*Manifest, error) {
	corrupt := func(section, f string, args ...any) error {
		return fmt.Errorf("decode %w", format.Corrupt(whatManifest, section, f, args...))
	}
	if len(b) < 12 {
		return nil, corrupt("header", "truncated: %d bytes", len(b))
	}
	if [8]byte(b[:8]) != manifestMagic {
		return nil, corrupt("header", "bad magic %q (not a manifest)", b[:8])
	}
	le := binary.LittleEndian
	if v := le.Uint32(b[8:]); v < MinFormatVersion || v > FormatVersion {
		return nil, fmt.Errorf("decode %w", &format.VersionError{What: whatManifest, Got: v, Min: MinFormatVersion, Max: FormatVersion})
	}
	if len(b) < manifestHeaderLen {
		return nil, corrupt("header", "truncated: %d bytes", len(b))
	}
	if got, want := format.Checksum(b[:16]), le.Uint32(b[16:]); got != want {
		return nil, corrupt("header", "checksum %08x, stored %08x", got, want)
	}
	n := le.Uint32(b[12:])
	if n < 1 || n > MaxSections {
		return nil, corrupt("header", "%d sections, want 1 to %d", n, MaxSections)
	}
	rest := b[manifestHeaderLen:]
	m := &Manifest{State: map[string][]byte{}}
	prev := ""
	for i := range n {
		name := fmt.Sprintf("section %d", i)
		if i > 0 {
			name = fmt.Sprintf("section %d (after %q)", i, prev)
		}
		if len(rest) < 2 {
			return nil, corrupt(name, "truncated")
		}
		kind, idLen := rest[0], int(rest[1])
		if len(rest) < 2+idLen+4 {
			return nil, corrupt(name, "truncated")
		}
		id := string(rest[2 : 2+idLen])
		if kind == kindState {
			name = fmt.Sprintf("state %q", id)
		} else {
			name = fmt.Sprintf("%s %q", name, id)
		}
		plen := le.Uint32(rest[2+idLen:])
		if plen > MaxSectionSize {
			return nil, corrupt(name, "payload of %d bytes, at most %d", plen, MaxSectionSize)
		}
		end := 2 + idLen + 4 + int(plen)
		if len(rest) < end+4 {
			return nil, corrupt(name, "truncated: %d bytes left, section needs %d", len(rest), end+4)
		}
		if got, want := format.Checksum(rest[:end]), le.Uint32(rest[end:]); got != want {
			return nil, corrupt(name, "checksum %08x, stored %08x", got, want)
		}
		payload := rest[2+idLen+4 : end]
		rest = rest[end+4:]
		switch {
		case i == 0 && (kind != kindMeta || id != metaID):
			return nil, corrupt(name, "the first section must be the metadata")
		case i == 0:
			if err := decodeMeta(payload, m); err != nil {
				return nil, corrupt(name, "%v", err)
			}
		case kind != kindState:
			return nil, corrupt(name, "unknown section kind %d", kind)
		case i > 1 && id <= prev:
			return nil, corrupt(name, "state sections out of order or repeated (after %q)", prev)
		case ValidStateID(id) != nil:
			return nil, corrupt(name, "%v", ValidStateID(id))
		default:
			m.State[id] = bytes.Clone(payload)
		}
		prev = id
	}
	if len(rest) != 0 {
		return nil, corrupt("trailer", "%d bytes after the last section", len(rest))
	}
	if err := m.Validate(); err != nil {
		return nil, corrupt(fmt.Sprintf("section 0 %q", metaID), "%v", err)
	}
	return m, nil
}

func decodeMeta(b []byte, m *Manifest) error {
	var meta metaV1
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&meta); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("data after the metadata object")
	}
	m.ID = meta.ID
	m.Parent = meta.Parent
	m.Created = meta.Created.UTC()
	m.VMMVersion = meta.VMMVersion
	m.GuestSchemaVersion = meta.GuestSchemaVersion
	m.HostCPU = meta.HostCPU
	m.CPUID = meta.CPUID
	m.MemorySize = meta.MemorySize
	m.VCPUs = meta.VCPUs
	m.Memory = meta.Memory
	m.Disks = meta.Disks
	return nil
}
