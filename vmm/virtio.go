package vmm

import (
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/sailbox-dev/sailbox/devices"
	"github.com/sailbox-dev/sailbox/devices/virtio"
	"github.com/sailbox-dev/sailbox/devices/virtio/blk"
	"github.com/sailbox-dev/sailbox/devices/virtio/rng"
	"github.com/sailbox-dev/sailbox/devices/virtio/vsock"
)

// Disk is a raw image served to the guest as a virtio-blk device; the
// guest sees the disks as /dev/vda, /dev/vdb, ... in order.
type Disk struct {
	Path     string
	ReadOnly bool
}

// Vsock is a virtio-vsock device whose host side is Unix sockets: host
// programs connect to UDSPath and send "CONNECT <port>\n"; guest connections
// to the host's port P reach UDSPath_P.
type Vsock struct {
	CID     uint64
	UDSPath string
}

// virtioMMIO places a virtio device behind the MMIO transport.
func virtioMMIO(dev virtio.Device) MMIODevice {
	return MMIODevice{
		Size: virtio.MMIOSize,
		New: func(mem devices.GuestMemory, irq devices.Interrupt) (devices.BusDevice, error) {
			return virtio.NewMMIO(dev, mem, irq), nil
		},
		CmdlineArg: virtio.KernelCmdline,
	}
}

// standardDevices builds the machine's virtio devices from its config:
// disks first (so the first disk is /dev/vda), then entropy, then vsock. It returns
// the devices and what to close when the machine is closed.
func standardDevices(cfg Config) ([]MMIODevice, []io.Closer, error) {
	var (
		devs    []MMIODevice
		closers []io.Closer
	)
	fail := func(err error) ([]MMIODevice, []io.Closer, error) {
		for _, c := range closers {
			c.Close()
		}
		return nil, nil, err
	}
	for i, d := range cfg.Disks {
		flag := os.O_RDWR
		if d.ReadOnly {
			flag = os.O_RDONLY
		}
		f, err := os.OpenFile(d.Path, flag, 0)
		if err != nil {
			return fail(fmt.Errorf("%w: disk %d: %w", ErrConfig, i, err))
		}
		be, err := blk.FileBackend(f)
		if err != nil {
			f.Close()
			return fail(fmt.Errorf("%w: disk %d (%s): %w", ErrConfig, i, d.Path, err))
		}
		b, err := blk.New(be, blk.Config{ReadOnly: d.ReadOnly, ID: be.ID()})
		if err != nil {
			be.Close()
			return fail(fmt.Errorf("%w: disk %d (%s): %w", ErrConfig, i, d.Path, err))
		}
		devs = append(devs, virtioMMIO(b))
		closers = append(closers, b)
	}
	devs = append(devs, virtioMMIO(rng.New()))
	if v := cfg.Vsock; v != nil {
		log := cfg.Logger
		if log == nil {
			log = slog.New(slog.DiscardHandler)
		}
		d, err := vsock.New(vsock.Config{GuestCID: v.CID, UDSPath: v.UDSPath, Logger: log})
		if err != nil {
			return fail(fmt.Errorf("%w: vsock: %w", ErrConfig, err))
		}
		devs = append(devs, virtioMMIO(d))
		closers = append(closers, d)
	}
	return devs, closers, nil
}
