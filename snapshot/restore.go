package snapshot

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"time"

	"github.com/sailbox-dev/sailbox/snapshot/disklayer"
	"github.com/sailbox-dev/sailbox/snapshot/internal/format"
	"github.com/sailbox-dev/sailbox/snapshot/memlayer"
)

// OpenMemory opens m's memory chain from the layer store, base first,
// checking each layer against the size and checksum m records. Plan the
// mappings with memlayer.Plan(chain, m.MemorySize); close the layers once
// mapped.
func (r *Root) OpenMemory(m *Manifest) ([]*memlayer.Layer, error) {
	var chain []*memlayer.Layer
	fail := func(err error) ([]*memlayer.Layer, error) {
		for _, l := range chain {
			l.Close()
		}
		return nil, fmt.Errorf("open memory of checkpoint %s: %w", m.ID, err)
	}
	for i, ref := range m.Memory {
		path, err := r.layers.Open(ref.ID)
		if err != nil {
			return fail(err)
		}
		l, err := memlayer.Open(path)
		if err != nil {
			return fail(err)
		}
		chain = append(chain, l)
		if err := checkRef(fmt.Sprintf("memory layer %d", i), ref, l.Size(), l.Checksum()); err != nil {
			return fail(err)
		}
	}
	return chain, nil
}

func checkRef(what string, ref LayerRef, size int64, checksum uint32) error {
	if size != ref.Size || checksum != ref.Checksum {
		return format.Corrupt("checkpoint", what, "layer %s is %d bytes with checksum %08x, the manifest says %d bytes, %08x",
			ref.ID, size, checksum, ref.Size, ref.Checksum)
	}
	return nil
}

// DiskLayout resolves disk diskID of m to the files a disklayer.Disk is
// opened over, checking each sealed layer against the size and checksum
// m records and the base image against its recorded size.
func (r *Root) DiskLayout(m *Manifest, diskID string) (disklayer.Layout, error) {
	d, ok := m.Disks[diskID]
	if !ok {
		return disklayer.Layout{}, fmt.Errorf("checkpoint %s has no disk %q", m.ID, diskID)
	}
	l := disklayer.Layout{Base: d.Base, Size: d.Size}
	if d.Base != "" {
		st, err := os.Stat(d.Base)
		if err != nil {
			return disklayer.Layout{}, fmt.Errorf("checkpoint %s disk %q: base: %w", m.ID, diskID, err)
		}
		if st.Size() != d.BaseSize {
			return disklayer.Layout{}, fmt.Errorf("checkpoint %s disk %q: base image %s is %d bytes, the manifest says %d",
				m.ID, diskID, d.Base, st.Size(), d.BaseSize)
		}
	}
	for i, ref := range d.Layers {
		path, err := r.layers.Open(ref.ID)
		if err != nil {
			return disklayer.Layout{}, fmt.Errorf("checkpoint %s disk %q: %w", m.ID, diskID, err)
		}
		ly, err := disklayer.OpenLayer(path)
		if err != nil {
			return disklayer.Layout{}, fmt.Errorf("checkpoint %s disk %q: %w", m.ID, diskID, err)
		}
		err = checkRef(fmt.Sprintf("disk %q layer %d", diskID, i), ref, ly.Info().FileBytes, ly.Checksum())
		ly.Close()
		if err != nil {
			return disklayer.Layout{}, fmt.Errorf("checkpoint %s: %w", m.ID, err)
		}
		l.Layers = append(l.Layers, path)
	}
	return l, nil
}

// OpenDisk opens disk diskID of m with a new writable top at top (see
// TopPath). Restore and fork alike: every box gets its own top over the
// shared sealed chain.
func (r *Root) OpenDisk(m *Manifest, diskID, top string) (*disklayer.Disk, error) {
	l, err := r.DiskLayout(m, diskID)
	if err != nil {
		return nil, err
	}
	d, err := disklayer.Open(l, top)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s disk %q: %w", m.ID, diskID, err)
	}
	return d, nil
}

// Compact writes checkpoint newID: checkpoint id with its memory chain and
// each disk's sealed chain merged into one new layer each (stored as
// "<newID>-memory" and "<newID>-disk-<n>", n counting disks in ID order),
// the same state, and no parent. Chains of one layer or none are kept as
// they are. Old layer files are only read: boxes mapping them are
// undisturbed. A running box built on id may continue its chain on the
// compacted one, since the two read alike.
func (r *Root) Compact(id, newID string) (*Manifest, error) { return r.CompactOnto(id, newID, "") }

// CompactOnto is Compact above base, an ancestor of id: the layers id's
// chains share with base's stay as they are (shared with whatever else
// builds on base, such as every box made from one template), id's layers
// above them are merged into one each, and the new checkpoint's parent
// is base. A chain that does not begin with base's whole chain (a box
// rebooted onto a new agent keeps its disks' chains but starts a new
// memory chain) keeps only the layers the two share, and the result then
// has no parent, since base's working set would not be its. An empty
// base is Compact.
func (r *Root) CompactOnto(id, newID, base string) (*Manifest, error) {
	m, err := r.Load(id)
	if err != nil {
		return nil, fmt.Errorf("compact: %w", err)
	}
	var b *Manifest
	if base != "" {
		if b, err = r.Load(base); err != nil {
			return nil, fmt.Errorf("compact %s onto %s: %w", id, base, err)
		}
	}
	p, err := r.Begin(newID)
	if err != nil {
		return nil, fmt.Errorf("compact %s: %w", id, err)
	}
	out, err := r.compact(m, b, p)
	if err != nil {
		p.Abort()
		return nil, fmt.Errorf("compact %s into %s: %w", id, newID, err)
	}
	return out, nil
}

// shared is how many layers chain begins with that base also begins
// with.
func shared(base, chain []LayerRef) int {
	n := 0
	for n < len(base) && n < len(chain) && base[n] == chain[n] {
		n++
	}
	return n
}

// compact merges m's layers above those it shares with base (all of them
// for a nil base) into the checkpoint p stages.
func (r *Root) compact(m, base *Manifest, p *Pending) (*Manifest, error) {
	out := *m
	out.ID, out.Parent, out.Created = p.id, "", time.Now()
	keep, whole := 0, base != nil
	if base != nil {
		keep = shared(base.Memory, m.Memory)
		whole = keep == len(base.Memory)
	}
	if len(m.Memory)-keep > 1 {
		chain, err := r.OpenMemory(m)
		if err != nil {
			return nil, err
		}
		info, err := memlayer.Compact(chain[keep:], p.StagingPath("memory"))
		for _, l := range chain {
			l.Close()
		}
		if err != nil {
			return nil, err
		}
		ref, err := p.AddMemoryLayer(p.id+"-memory", info)
		if err != nil {
			return nil, err
		}
		out.Memory = append(slices.Clone(m.Memory[:keep]), ref)
	}
	out.Disks = maps.Clone(m.Disks)
	for n, diskID := range slices.Sorted(maps.Keys(m.Disks)) {
		d := m.Disks[diskID]
		keep := 0
		if base != nil {
			keep = shared(base.Disks[diskID].Layers, d.Layers)
			whole = whole && keep == len(base.Disks[diskID].Layers)
		}
		if len(d.Layers)-keep <= 1 {
			continue
		}
		l, err := r.DiskLayout(m, diskID)
		if err != nil {
			return nil, err
		}
		var chain []*disklayer.Layer
		for _, path := range l.Layers[keep:] {
			ly, err := disklayer.OpenLayer(path)
			if err != nil {
				return nil, err
			}
			defer ly.Close()
			chain = append(chain, ly)
		}
		info, err := disklayer.Compact(chain, p.StagingPath(fmt.Sprintf("disk-%d", n)))
		if err != nil {
			return nil, err
		}
		ref, err := p.AddDiskLayer(fmt.Sprintf("%s-disk-%d", p.id, n), info)
		if err != nil {
			return nil, err
		}
		d.Layers = append(slices.Clone(d.Layers[:keep]), ref)
		out.Disks[diskID] = d
	}
	if whole {
		out.Parent = base.ID
	}
	if err := p.Commit(&out); err != nil {
		return nil, err
	}
	return &out, nil
}
