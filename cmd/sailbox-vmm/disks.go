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
			top := root.TopPath(fmt.Sprintf("boot-%s-%s.top", randomName(), d.ID))
			if d.Layered, err = disklayer.Open(disklayer.Layout{Base: dc.Path}, top); err != nil {
				return fail(fmt.Errorf("%w: disk %d: %w", vmm.ErrConfig, i, err))
			}
			d.Chain = snapshot.DiskChain{Base: dc.Path, BaseSize: fi.Size(), Size: fi.Size()}
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
