package vmm

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/devices/virtio"
	"github.com/sailbox-dev/sailbox/devices/virtio/blk"
	"github.com/sailbox-dev/sailbox/snapshot"
	"github.com/sailbox-dev/sailbox/snapshot/disklayer"
)

// diskCheckpoint writes checkpoint id to root the way Checkpoint lays out
// disks: slot 0 serves disk "vdb" (writable, "hello" written at offset
// 4096), slot 1 disk "vda" (read-only), slot 2 the entropy device. The
// slot order is not the IDs' order, so a cold boot that kept vda as vda
// cannot have sorted them.
func diskCheckpoint(t *testing.T, root *snapshot.Root, id string) *snapshot.Manifest {
	t.Helper()
	const size = 1 << 20
	base := filepath.Join(t.TempDir(), "base.img")
	if err := os.WriteFile(base, make([]byte, size), 0o444); err != nil {
		t.Fatal(err)
	}
	p, err := root.Begin(id)
	if err != nil {
		t.Fatal(err)
	}
	shape := machineState{MemoryBytes: 1 << 20, VCPUs: 1}
	man := &snapshot.Manifest{
		ID: id, Created: time.Now(), VMMVersion: "test", MemorySize: shape.MemoryBytes, VCPUs: 1,
		Disks: map[string]snapshot.DiskChain{}, State: map[string][]byte{},
	}
	put := func(section string, v any) {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		man.State[section] = b
	}
	for i, disk := range []struct {
		id       string
		readOnly bool
	}{{"vdb", false}, {"vda", true}} {
		d, err := disklayer.Open(disklayer.Layout{Base: base}, root.TopPath(id+"-"+disk.id+".top"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.WriteAt([]byte("hello "+disk.id), 4096); err != nil {
			t.Fatal(err)
		}
		info, err := d.Seal(root.TopPath(id + "-" + disk.id + ".next"))
		d.Close()
		if err != nil {
			t.Fatal(err)
		}
		ref, err := p.AddDiskLayer(id+"-"+disk.id, info)
		if err != nil {
			t.Fatal(err)
		}
		man.Disks[disk.id] = snapshot.DiskChain{Base: base, BaseSize: size, Size: size, Layers: []snapshot.LayerRef{ref}}
		dev, _ := json.Marshal(blk.State{Version: blk.StateVersion, ReadOnly: disk.readOnly, Capacity: size / blk.SectorSize, ID: "sbx-" + disk.id})
		put(sectionMMIO(i), virtio.MMIOState{Version: virtio.MMIOStateVersion, DeviceType: 2, Device: dev})
		shape.Slots = append(shape.Slots, slotState{Kind: kindBlock, Base: mmioBase(i), GSI: deviceIRQs[i], Disk: disk.id})
	}
	shape.Slots = append(shape.Slots, slotState{Kind: kindEntropy, Base: mmioBase(2), GSI: deviceIRQs[2]})
	put(sectionMachine, shape)
	if err := p.Commit(man); err != nil {
		t.Fatal(err)
	}
	return man
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count open files: %v", err)
	}
	return len(ents)
}

// A cold boot gets a checkpoint's disks in device order, each with its ID,
// read-only flag and chain, over a new top that holds the checkpoint's
// writes.
func TestCheckpointDisks(t *testing.T) {
	root, err := snapshot.OpenRoot(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	man := diskCheckpoint(t, root, "c1")
	disks, err := CheckpointDisks(root, "c1", "boot")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, d := range disks {
			d.Layered.Close()
		}
	}()
	if len(disks) != 2 || disks[0].ID != "vdb" || disks[1].ID != "vda" {
		t.Fatalf("disks %+v, want vdb then vda (the slots' order)", disks)
	}
	for i, ro := range []bool{false, true} {
		d := disks[i]
		if d.ReadOnly != ro {
			t.Errorf("disk %s read-only %v, want %v", d.ID, d.ReadOnly, ro)
		}
		if !reflect.DeepEqual(d.Chain, man.Disks[d.ID]) {
			t.Errorf("disk %s chain %+v, want the checkpoint's %+v", d.ID, d.Chain, man.Disks[d.ID])
		}
		buf := make([]byte, 9)
		if _, err := d.Layered.ReadAt(buf, 4096); err != nil || string(buf) != "hello "+d.ID {
			t.Errorf("disk %s reads %q, %v; want the checkpoint's write", d.ID, buf, err)
		}
		if _, err := os.Stat(root.TopPath("boot-" + d.ID + ".top")); err != nil {
			t.Errorf("disk %s top: %v", d.ID, err)
		}
	}
}

// A checkpoint that is missing, or whose second disk cannot be opened, is
// refused by name, and nothing stays open.
func TestCheckpointDisksRefuses(t *testing.T) {
	root, err := snapshot.OpenRoot(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CheckpointDisks(root, "nope", ""); !errors.Is(err, snapshot.ErrNotFound) || !strings.Contains(err.Error(), "nope") {
		t.Errorf("missing checkpoint: %v", err)
	}
	man := diskCheckpoint(t, root, "c1")
	if err := root.Layers().Delete(man.Disks["vda"].Layers[0].ID); err != nil {
		t.Fatal(err)
	}
	before := openFDs(t)
	disks, err := CheckpointDisks(root, "c1", "")
	if err == nil || !strings.Contains(err.Error(), `checkpoint c1 disk "vda"`) {
		t.Errorf("a lost layer: %v, %v; want an error naming checkpoint c1 disk vda", disks, err)
	}
	if after := openFDs(t); after != before {
		t.Errorf("%d open files after a failed open, %d before: the first disk was not closed", after, before)
	}
}
