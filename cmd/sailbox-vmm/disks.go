package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"

	"github.com/sailbox-dev/sailbox/api/vmmapi"
	"github.com/sailbox-dev/sailbox/snapshot"
	"github.com/sailbox-dev/sailbox/snapshot/disklayer"
	"github.com/sailbox-dev/sailbox/vmm"
)

// openDisks opens the configured disks; layered ones get a new top in
// root.
func openDisks(c vmmapi.Launch, root *snapshot.Root) ([]vmm.Disk, error) {
	var disks []vmm.Disk
	fail := func(err error) ([]vmm.Disk, error) {
		for _, d := range disks {
			if d.Layered != nil {
				d.Layered.Close()
			}
		}
		return nil, err
	}
	for i, dc := range c.Disks {
		d := vmm.Disk{Path: dc.Path, ReadOnly: dc.ReadOnly, ID: dc.ID}
		if dc.Layered {
			if d.ID == "" {
				d.ID = fmt.Sprintf("disk%d", i)
			}
			fi, err := os.Stat(dc.Path)
			if err != nil {
				return fail(fmt.Errorf("%w: disk %d: %w", vmm.ErrConfig, i, err))
			}
			// A size of its own makes the disk larger than its base,
			// never smaller: that would cut the guest's file system.
			if dc.Size != 0 && dc.Size < fi.Size() {
				return fail(fmt.Errorf("%w: disk %d: size %d is smaller than its base %s (%d bytes)", vmm.ErrConfig, i, dc.Size, dc.Path, fi.Size()))
			}
			top := root.TopPath(fmt.Sprintf("boot-%s-%s.top", randomName(), d.ID))
			if d.Layered, err = disklayer.Open(disklayer.Layout{Base: dc.Path, Size: dc.Size}, top); err != nil {
				return fail(fmt.Errorf("%w: disk %d: %w", vmm.ErrConfig, i, err))
			}
			d.Chain = snapshot.DiskChain{Base: dc.Path, BaseSize: fi.Size(), Size: d.Layered.Size()}
		}
		disks = append(disks, d)
	}
	return disks, nil
}

func randomName() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
