package vmmbackend

import (
	"net/netip"
	"path/filepath"
	"strings"

	"github.com/sailbox-dev/sailbox/api/netapi"
	"github.com/sailbox-dev/sailbox/api/vmmapi"
	"github.com/sailbox-dev/sailbox/guestagent"
	"github.com/sailbox-dev/sailbox/internal/catalog"
)

// Where a box's VMM and network keep their files, and the Launch of each
// kind of start.

// boxFiles are where box's VMM and its network (sailbox-net) keep their
// sockets and logs.
type boxFiles struct {
	dir, apiSock, vsockSock, console, log string
	netSock, netCtl, netLog               string // the network's frame and control sockets, and its log
}

func (b *Backend) files(box string) boxFiles {
	dir := filepath.Join(b.cfg.RunDir, box)
	return boxFiles{dir: dir, apiSock: filepath.Join(dir, "api.sock"), vsockSock: filepath.Join(dir, "vsock.sock"),
		console: filepath.Join(dir, "console.log"), log: filepath.Join(dir, "vmm.log"),
		netSock: filepath.Join(dir, "net.sock"), netCtl: filepath.Join(dir, "net-ctl.sock"), netLog: filepath.Join(dir, "net.log")}
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

// bootLaunch boots box from spec. A box with a network gets the network
// device on its sailbox-net's socket, and its guest the addresses to
// configure (guestNet).
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
	if spec.Net != nil {
		l.NetSocket = b.files(box).netSock
		l.Cmdline = strings.TrimSpace(l.Cmdline + " " + guestNet.KernelParam())
	}
	return l
}

// rootCmdline has the guest agent mount the box's disk as its root.
const rootCmdline = "sailbox.root=/dev/vda"

// guestNet is how the guest agent configures eth0 at boot (the guest
// kernel has no IP autoconfiguration): every box's network has the same
// addresses (api/netapi), and sailbox-net's DHCP server leases the same
// one to the guest's MAC. A restore or fork keeps them.
var guestNet = guestagent.NetConfig{
	Addr:    netip.PrefixFrom(netapi.GuestIP, netapi.Subnet.Bits()),
	Gateway: netapi.GatewayIP,
	DNS:     netapi.GatewayIP,
	MTU:     netapi.MTU,
}

// rebootLaunch boots box from spec on the disks of checkpoint ckpt: a
// boot with the checkpoint's disks instead of a new one over spec's image.
func (b *Backend) rebootLaunch(box string, spec catalog.Spec, ckpt string) vmmapi.Launch {
	spec.Image = ""
	l := b.bootLaunch(box, spec)
	l.DisksFrom = ckpt
	return l
}

// restoreLaunch restores box, of spec, from ckpt, as a fork named box if
// fork. A box with a network gets its restored network device onto its
// new sailbox-net; one without (spec.Net nil: a box whose checkpoints
// have no network device) gets no -net.
func (b *Backend) restoreLaunch(box string, spec catalog.Spec, ckpt string, fork bool) vmmapi.Launch {
	l := b.launch(box)
	l.Restore = ckpt
	if fork {
		l.ForkName = box
	}
	if spec.Net != nil {
		l.NetSocket = b.files(box).netSock
	}
	return l
}

// netLaunch starts box's network under policy p.
func (b *Backend) netLaunch(box string, p catalog.NetPolicy) netapi.Launch {
	f := b.files(box)
	return netapi.Launch{Socket: f.netSock, Control: f.netCtl, Box: box, NoInternet: p.NoInternet, Allow: p.Allow, Deny: p.Deny, Hosts: b.cfg.NetHosts}
}
