package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sailbox-dev/sailbox/api/vmmapi"
	"github.com/sailbox-dev/sailbox/snapshot"
	"github.com/sailbox-dev/sailbox/vmm"
)

// A layered disk with a size of its own is that large over its unchanged
// base, reads zeros past the base's end, and records its size in its
// chain (what a checkpoint saves); one smaller than its base is refused.
func TestOpenDisksSize(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.ext4")
	baseData := bytes.Repeat([]byte("base"), 2048) // 8 KiB
	if err := os.WriteFile(base, baseData, 0o444); err != nil {
		t.Fatal(err)
	}
	before, _ := os.Stat(base)
	root, err := snapshot.OpenRoot(filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	const size = 1 << 20
	l := vmmapi.Launch{Disks: []vmmapi.LaunchDisk{{Path: base, Layered: true, ID: "vda", Size: size}, {Path: base, Layered: true, ID: "vdb"}}}
	disks, err := openDisks(l, root)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, d := range disks {
			d.Layered.Close()
		}
	}()
	vda, vdb := disks[0], disks[1]
	if got := vda.Layered.Size(); got != size {
		t.Errorf("vda is %d bytes, want %d", got, size)
	}
	if vda.Chain.Size != size || vda.Chain.BaseSize != int64(len(baseData)) || vda.Chain.Base != base {
		t.Errorf("vda's chain %+v: want size %d over the base's %d", vda.Chain, size, len(baseData))
	}
	if got := vdb.Layered.Size(); got != int64(len(baseData)) || vdb.Chain.Size != got {
		t.Errorf("vdb without a size: %d bytes, chain %+v; want the base's %d", got, vdb.Chain, len(baseData))
	}
	buf := make([]byte, size)
	if _, err := vda.Layered.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf[:len(baseData)], baseData) || !bytes.Equal(buf[len(baseData):], make([]byte, size-len(baseData))) {
		t.Error("vda does not read as its base followed by zeros")
	}
	// Writing past the base's end goes to the top; the base is untouched.
	if _, err := vda.Layered.WriteAt([]byte("end"), size-3); err != nil {
		t.Fatal(err)
	}
	after, _ := os.Stat(base)
	if got, _ := os.ReadFile(base); !bytes.Equal(got, baseData) || after.Size() != before.Size() || !after.ModTime().Equal(before.ModTime()) {
		t.Error("the base changed")
	}

	l.Disks = []vmmapi.LaunchDisk{{Path: base, Layered: true, ID: "vda", Size: 4096}}
	if _, err := openDisks(l, root); !errors.Is(err, vmm.ErrConfig) || !strings.Contains(err.Error(), "smaller than its base") {
		t.Errorf("a disk smaller than its base: %v", err)
	}
}
