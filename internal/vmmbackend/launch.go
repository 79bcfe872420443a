package vmmbackend

import (
	"path/filepath"
	"strings"

	"github.com/sailbox-dev/sailbox/api/vmmapi"
	"github.com/sailbox-dev/sailbox/internal/catalog"
)

// Where a box's VMM keeps its files, and the Launch of each kind of start.

// boxFiles are where box's VMM keeps its sockets and logs.
type boxFiles struct {
	dir, apiSock, vsockSock, console, log string
}

func (b *Backend) files(box string) boxFiles {
	dir := filepath.Join(b.cfg.RunDir, box)
	return boxFiles{dir: dir, apiSock: filepath.Join(dir, "api.sock"), vsockSock: filepath.Join(dir, "vsock.sock"),
		console: filepath.Join(dir, "console.log"), log: filepath.Join(dir, "vmm.log")}
}

// launch is what every VMM of box is started with: its sockets and logs,
// the store, no console on stdout.
func (b *Backend) launch(box string) vmmapi.Launch {
	f := b.files(box)
	return vmmapi.Launch{
		MemoryMiB: vmmapi.DefaultMemoryMiB, VCPUs: vmmapi.DefaultVCPUs,
		Store: b.cfg.Store, VsockUDS: f.vsockSock, APISocket: f.apiSock, ConsoleLog: f.console, Log: f.log,
	}
}

// bootLaunch boots box from spec.
func (b *Backend) bootLaunch(box string, spec catalog.Spec) vmmapi.Launch {
	l := b.launch(box)
	l.Kernel, l.Initrd, l.Cmdline = b.cfg.Kernel, b.cfg.Initrd, b.cfg.Cmdline
	l.MemoryMiB, l.VCPUs, l.VsockCID = spec.MemoryMiB, spec.VCPUs, guestCID
	if spec.Image != "" {
		// A disk size of its own is the disk's virtual size over the
		// image; the guest agent grows the root file system to it.
		l.Disks = []vmmapi.LaunchDisk{{Path: spec.Image, Layered: true, ID: "vda", Size: spec.DiskSizeBytes}}
	}
	if spec.Root != nil {
		// The disk is the box's root file system: the guest agent mounts
		// it as / before serving (guestagent.MountRoot).
		l.Cmdline = strings.TrimSpace(l.Cmdline + " " + rootCmdline)
	}
	return l
}

// rootCmdline has the guest agent mount the box's disk as its root.
const rootCmdline = "sailbox.root=/dev/vda"

// rebootLaunch boots box from spec on the disks of checkpoint ckpt: a
// boot with the checkpoint's disks instead of a new one over spec's image.
func (b *Backend) rebootLaunch(box string, spec catalog.Spec, ckpt string) vmmapi.Launch {
	spec.Image = ""
	l := b.bootLaunch(box, spec)
	l.DisksFrom = ckpt
	return l
}

// restoreLaunch restores box from ckpt, as a fork named box if fork.
func (b *Backend) restoreLaunch(box, ckpt string, fork bool) vmmapi.Launch {
	l := b.launch(box)
	l.Restore = ckpt
	if fork {
		l.ForkName = box
	}
	return l
}
