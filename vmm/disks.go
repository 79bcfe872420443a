package vmm

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/sailbox-dev/sailbox/devices"
	"github.com/sailbox-dev/sailbox/devices/virtio"
	"github.com/sailbox-dev/sailbox/devices/virtio/blk"
	"github.com/sailbox-dev/sailbox/devices/virtio/rng"
	"github.com/sailbox-dev/sailbox/devices/virtio/vsock"
	"github.com/sailbox-dev/sailbox/snapshot"
	"github.com/sailbox-dev/sailbox/snapshot/disklayer"
	"github.com/sailbox-dev/sailbox/vmm/boot"
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

// Vsock is a virtio-vsock device whose host side is Unix sockets: host
// programs connect to UDSPath and send "CONNECT <port>\n"; guest connections
// to the host's port P reach UDSPath_P.
type Vsock struct {
	CID     uint64
	UDSPath string
}

// deviceKind names what sits in an MMIO slot, in checkpoints too.
type deviceKind string

const (
	kindBlock   deviceKind = "virtio-blk"
	kindEntropy deviceKind = "virtio-rng"
	kindVsock   deviceKind = "virtio-vsock"
	kindExtra   deviceKind = "extra" // Config.MMIODevices: not checkpointable
)

// slot is one device in the MMIO window.
type slot struct {
	kind      deviceKind
	base      uint64
	gsi       uint32
	disk      int          // kindBlock: index in Config.Disks
	transport *virtio.MMIO // nil for kindExtra
	dev       virtio.Device
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

// deviceLogger is where devices log: cfg.Logger, or nowhere.
func deviceLogger(cfg Config) *slog.Logger {
	if cfg.Logger != nil {
		return cfg.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// addStandardDevices builds the machine's virtio devices from its config,
// disks first (so the first disk is /dev/vda), then entropy, then vsock,
// then cfg.MMIODevices, and places them in the MMIO window. It returns
// the kernel command-line arguments that announce them.
func (m *Machine) addStandardDevices() ([]string, error) {
	cfg := m.cfg
	var args []string
	// place puts the device build returns in the next slot.
	place := func(s *slot, size uint64, arg func(uint64, uint32) string, build func(devices.Interrupt) (devices.BusDevice, error)) error {
		i := len(m.slots)
		if i >= len(deviceIRQs) {
			return fmt.Errorf("%w: more than %d MMIO devices (disks, entropy, vsock, extras)", ErrConfig, len(deviceIRQs))
		}
		s.base, s.gsi = mmioBase(i), deviceIRQs[i]
		line, err := m.interruptLine(s.gsi)
		if err != nil {
			return fmt.Errorf("mmio device %d: %w", i, err)
		}
		bus, err := build(line)
		if err != nil {
			return fmt.Errorf("mmio device %d: %w", i, err)
		}
		if err := m.mmio.Insert(bus, s.base, size); err != nil {
			return err
		}
		m.slots = append(m.slots, *s)
		args = append(args, arg(s.base, s.gsi))
		return nil
	}
	placeVirtio := func(s slot) error {
		return place(&s, virtio.MMIOSize, virtio.KernelCmdline, func(line devices.Interrupt) (devices.BusDevice, error) {
			s.transport = virtio.NewMMIO(s.dev, m.mem, line)
			s.transport.Logger = cfg.Logger
			return s.transport, nil
		})
	}
	for i := range cfg.Disks {
		b, err := openDisk(cfg, i)
		if err != nil {
			return nil, err
		}
		m.closers = append(m.closers, b)
		if err := placeVirtio(slot{kind: kindBlock, disk: i, dev: b}); err != nil {
			return nil, err
		}
	}
	if err := placeVirtio(slot{kind: kindEntropy, dev: rng.New()}); err != nil {
		return nil, err
	}
	if v := cfg.Vsock; v != nil {
		d, err := vsock.New(vsock.Config{GuestCID: v.CID, UDSPath: v.UDSPath, Logger: deviceLogger(cfg)})
		if err != nil {
			return nil, fmt.Errorf("%w: vsock: %w", ErrConfig, err)
		}
		m.closers = append(m.closers, d)
		if err := placeVirtio(slot{kind: kindVsock, dev: d}); err != nil {
			return nil, err
		}
	}
	for _, x := range cfg.MMIODevices {
		build := func(line devices.Interrupt) (devices.BusDevice, error) { return x.New(m.mem, line) }
		if err := place(&slot{kind: kindExtra}, x.Size, x.CmdlineArg, build); err != nil {
			return nil, err
		}
	}
	return args, nil
}

// mmioBase is the register window of MMIO slot i.
func mmioBase(i int) uint64 { return uint64(boot.MMIOStart) + uint64(i)*0x1000 }
