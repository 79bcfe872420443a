package vmm

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"

	"github.com/sailbox-dev/sailbox/devices"
	"github.com/sailbox-dev/sailbox/devices/virtio"
	"github.com/sailbox-dev/sailbox/devices/virtio/blk"
	"github.com/sailbox-dev/sailbox/snapshot"
	"github.com/sailbox-dev/sailbox/snapshot/disklayer"
)

// Disk is a virtio-blk device; the guest sees the disks as /dev/vda,
// /dev/vdb, ... in order.
type Disk struct {
	// Path is a raw image, served as is. A machine with a raw disk cannot
	// be checkpointed: a restore rebuilds disks from layered chains.
	Path     string
	ReadOnly bool
	// Layered, if set, serves the disk instead of Path: a base image,
	// sealed layers and a writable top, which a checkpoint seals without
	// copying. The machine owns it from New on and closes it.
	Layered *disklayer.Disk
	// Chain is what Layered is made of below its top, as a checkpoint
	// records it: the base image and the sealed layers' references.
	Chain snapshot.DiskChain
	// ID names the disk in checkpoints ("disk0" if empty for the first,
	// and so on); it must be stable across restores.
	ID string
}

// diskID is the stable name of disk i in checkpoints.
func diskID(cfg Config, i int) string {
	if id := cfg.Disks[i].ID; id != "" {
		return id
	}
	return fmt.Sprintf("disk%d", i)
}

// openDisk builds the virtio-blk device of cfg.Disks[i].
func openDisk(cfg Config, i int) (*blk.Block, error) {
	d := cfg.Disks[i]
	if d.Layered != nil {
		// The ID the guest reads is the disk's stable name, not the
		// identity of a top file that changes at every checkpoint.
		b, err := blk.New(d.Layered, blk.Config{ReadOnly: d.ReadOnly, ID: "sbx-" + diskID(cfg, i)})
		if err != nil {
			return nil, fmt.Errorf("%w: disk %d (%s): %w", ErrConfig, i, diskID(cfg, i), err)
		}
		return b, nil
	}
	flag := os.O_RDWR
	if d.ReadOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(d.Path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: disk %d: %w", ErrConfig, i, err)
	}
	be, err := blk.FileBackend(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: disk %d (%s): %w", ErrConfig, i, d.Path, err)
	}
	b, err := blk.New(be, blk.Config{ReadOnly: d.ReadOnly, ID: be.ID()})
	if err != nil {
		be.Close()
		return nil, fmt.Errorf("%w: disk %d (%s): %w", ErrConfig, i, d.Path, err)
	}
	return b, nil
}

// diskChain is disk i's chain below its top as the machine's chain
// records it: from the last checkpoint, or from the disk's config.
func (m *Machine) diskChain(i int) snapshot.DiskChain {
	id := diskID(m.cfg, i)
	if m.chain != nil {
		if c, ok := m.chain.Disks[id]; ok {
			c.Layers = slices.Clone(c.Layers)
			return c
		}
	}
	d := m.cfg.Disks[i]
	c := d.Chain
	c.Layers = slices.Clone(c.Layers)
	if d.Layered != nil {
		c.Size = d.Layered.Size()
	}
	return c
}

// CheckpointDisks opens the disks of completed checkpoint id for a cold
// boot on them: a new kernel and guest agent on the same disks, memory not
// restored. Each layered disk gets a new writable top over the
// checkpoint's sealed chain, named "<topPrefix>-<disk ID>.top" in root's
// tops (an empty topPrefix means a random one). The disks come in the
// checkpoint's device order, so the guest finds each where it was (vda
// stays vda), with their IDs and read-only flags. Each Disk's Chain is the
// checkpoint's: the booted machine's checkpoints build on its layers.
//
// The caller owns the disks until it gives them to New.
func CheckpointDisks(root *snapshot.Root, id, topPrefix string) ([]Disk, error) {
	man, err := root.Load(id)
	if err != nil {
		return nil, fmt.Errorf("disks of checkpoint: %w", err)
	}
	shape, err := decodeMachine(man)
	if err != nil {
		return nil, fmt.Errorf("disks of checkpoint %s: %w", id, err)
	}
	if topPrefix == "" {
		topPrefix = randomTopPrefix(id)
	}
	var disks []Disk
	fail := func(err error) ([]Disk, error) {
		for _, d := range disks {
			d.Layered.Close()
		}
		return nil, err
	}
	diskErr := func(disk string, err error) error {
		return fmt.Errorf("checkpoint %s disk %q: %w", id, disk, err)
	}
	for i, ss := range shape.Slots {
		if ss.Kind != kindBlock {
			continue
		}
		chain, ok := man.Disks[ss.Disk]
		if !ok {
			return fail(diskErr(ss.Disk, fmt.Errorf("mmio device %d serves it, the manifest has no such disk", i)))
		}
		if slices.ContainsFunc(disks, func(d Disk) bool { return d.ID == ss.Disk }) {
			return fail(diskErr(ss.Disk, fmt.Errorf("mmio device %d serves it again", i)))
		}
		var st virtio.MMIOState
		if err := decodeSection(man, sectionMMIO(i), &st); err != nil {
			return fail(diskErr(ss.Disk, err))
		}
		var bs blk.State
		if err := devices.DecodeState("virtio-blk", st.Device, &bs); err != nil {
			return fail(diskErr(ss.Disk, err))
		}
		layered, err := root.OpenDisk(man, ss.Disk, root.TopPath(topPrefix+"-"+ss.Disk+".top"))
		if err != nil {
			return fail(err) // it names the checkpoint and the disk
		}
		disks = append(disks, Disk{Layered: layered, Chain: chain, ID: ss.Disk, ReadOnly: bs.ReadOnly})
	}
	for _, disk := range slices.Sorted(maps.Keys(man.Disks)) {
		if !slices.ContainsFunc(disks, func(d Disk) bool { return d.ID == disk }) {
			return fail(diskErr(disk, errors.New("no device serves it")))
		}
	}
	return disks, nil
}

// randomTopPrefix names the new disk tops of one machine made from
// checkpoint id: every machine made from a checkpoint gets its own.
func randomTopPrefix(id string) string {
	var b [6]byte
	rand.Read(b[:])
	return id + "-" + hex.EncodeToString(b[:])
}
