package vmm

import (
	"encoding/json"
	"fmt"

	"github.com/sailbox-dev/sailbox/devices"
	"github.com/sailbox-dev/sailbox/devices/acpi"
	"github.com/sailbox-dev/sailbox/devices/i8042"
	"github.com/sailbox-dev/sailbox/devices/serial"
	"github.com/sailbox-dev/sailbox/devices/virtio"
	"github.com/sailbox-dev/sailbox/devices/virtio/blk"
	virtionet "github.com/sailbox-dev/sailbox/devices/virtio/net"
	"github.com/sailbox-dev/sailbox/devices/virtio/rng"
	"github.com/sailbox-dev/sailbox/devices/virtio/vsock"
	"github.com/sailbox-dev/sailbox/snapshot"
	"github.com/sailbox-dev/sailbox/vmm/boot"
)

// The device table: every kind of device the VMM builds, and how each is
// built at boot, saved in a checkpoint and rebuilt by a restore. Boot,
// Checkpoint and Restore iterate it and name no device themselves, so
// adding a device is one entry here plus its package (with its State,
// Save and Restore constructor, see package devices).

// platformDevice is a device on the port bus that every machine has, in
// a state section of its own.
type platformDevice struct {
	section    string
	port, size uint64
	// boot builds the device of a booting machine; restore rebuilds it
	// from its section. Both keep it in the Machine's field for it.
	boot    func(m *Machine) (devices.BusDevice, error)
	restore func(m *Machine, state json.RawMessage) (devices.BusDevice, error)
	// save returns the device's State; the vCPUs are paused.
	save func(m *Machine) any
}

// Platform interrupt lines and ports.
const (
	serialIRQ = 4
	comPort   = 0x3f8
)

var platformDevices = []platformDevice{
	{
		section: "dev/serial", port: comPort, size: serial.Size,
		boot: func(m *Machine) (devices.BusDevice, error) {
			line, err := m.interruptLine(serialIRQ)
			if err != nil {
				return nil, err
			}
			m.serial = serial.New(line, m.cfg.Serial)
			return m.serial, nil
		},
		restore: func(m *Machine, state json.RawMessage) (devices.BusDevice, error) {
			line, err := m.interruptLine(serialIRQ)
			if err != nil {
				return nil, err
			}
			m.serial, err = restoreState("serial", state, func(st serial.State) (*serial.Serial, error) {
				return serial.Restore(st, line, m.cfg.Serial)
			})
			return m.serial, err
		},
		save: func(m *Machine) any { return m.serial.Save() },
	},
	{
		section: "dev/i8042", port: i8042.DataPort, size: i8042.Size,
		boot: func(m *Machine) (devices.BusDevice, error) {
			m.kbd = i8042.New(m.guestReset)
			return m.kbd, nil
		},
		restore: func(m *Machine, state json.RawMessage) (devices.BusDevice, error) {
			var err error
			m.kbd, err = restoreState("i8042", state, func(st i8042.State) (*i8042.Device, error) {
				return i8042.Restore(st, m.guestReset)
			})
			return m.kbd, err
		},
		save: func(m *Machine) any { return m.kbd.Save() },
	},
	{
		section: "dev/acpi", port: boot.PM1Port, size: acpi.Size,
		boot: func(m *Machine) (devices.BusDevice, error) {
			m.pm = acpi.New(boot.SleepTypeS5, m.guestPowerOff)
			return m.pm, nil
		},
		restore: func(m *Machine, state json.RawMessage) (devices.BusDevice, error) {
			var err error
			m.pm, err = restoreState("acpi", state, func(st acpi.State) (*acpi.PM, error) {
				return acpi.Restore(st, m.guestPowerOff)
			})
			return m.pm, err
		},
		save: func(m *Machine) any { return m.pm.Save() },
	},
}

// deviceKind names what sits in an MMIO slot, in checkpoints too.
type deviceKind string

const (
	kindBlock   deviceKind = "virtio-blk"
	kindEntropy deviceKind = "virtio-rng"
	kindVsock   deviceKind = "virtio-vsock"
	kindNet     deviceKind = "virtio-net"
	kindExtra   deviceKind = "extra" // Config.MMIODevices: not checkpointable
)

// slot is one device in the MMIO window.
type slot struct {
	kind      deviceKind
	base      uint64
	gsi       uint32
	disk      string       // kindBlock: the disk's ID
	transport *virtio.MMIO // nil for kindExtra
	dev       virtio.Device
}

// mmioKind is one kind of virtio device in the MMIO window. Its state is
// saved by the transport, with the transport's own (virtio.Persistent),
// in section dev/mmio/<slot>; the machine section records each slot's
// kind, so that a restore rebuilds the same window.
type mmioKind struct {
	kind deviceKind
	// boot builds the devices of this kind that m.cfg asks for, in the
	// order the guest finds them, and gives each to add, which places it
	// in the next slot. Back ends that need closing go in m.closers.
	boot func(m *Machine, add func(slot) error) error
	// restore rebuilds one from its saved State (virtio.MMIOState.Device)
	// and the slot's record.
	restore func(m *Machine, rc RestoreConfig, man *snapshot.Manifest, ss slotState, state json.RawMessage) (slot, error)
}

// mmioKinds are placed in this order: disks first (the first is
// /dev/vda), then entropy, then vsock, then the network (eth0);
// Config.MMIODevices follow.
var mmioKinds = []mmioKind{
	{
		kind: kindBlock,
		boot: func(m *Machine, add func(slot) error) error {
			for i := range m.cfg.Disks {
				b, err := openDisk(m.cfg, i)
				if err != nil {
					return err
				}
				m.closers = append(m.closers, b)
				if err := add(slot{dev: b, disk: diskID(m.cfg, i)}); err != nil {
					return err
				}
			}
			return nil
		},
		restore: func(m *Machine, rc RestoreConfig, man *snapshot.Manifest, ss slotState, state json.RawMessage) (slot, error) {
			disk, err := rc.Root.OpenDisk(man, ss.Disk, rc.Root.TopPath(rc.TopPrefix+"-"+ss.Disk+".top"))
			if err != nil {
				return slot{}, err
			}
			var readOnly bool
			b, err := restoreState("virtio-blk", state, func(st blk.State) (*blk.Block, error) {
				readOnly = st.ReadOnly
				return blk.Restore(st, disk)
			})
			if err != nil {
				disk.Close()
				return slot{}, err
			}
			m.closers = append(m.closers, b)
			m.cfg.Disks = append(m.cfg.Disks, Disk{Layered: disk, Chain: man.Disks[ss.Disk], ID: ss.Disk, ReadOnly: readOnly})
			return slot{dev: b, disk: ss.Disk}, nil
		},
	},
	{
		kind: kindEntropy,
		boot: func(m *Machine, add func(slot) error) error {
			return add(slot{dev: rng.New()})
		},
		restore: func(m *Machine, rc RestoreConfig, man *snapshot.Manifest, ss slotState, state json.RawMessage) (slot, error) {
			r, err := restoreState("virtio-rng", state, rng.Restore)
			return slot{dev: r}, err
		},
	},
	{
		kind: kindVsock,
		boot: func(m *Machine, add func(slot) error) error {
			v := m.cfg.Vsock
			if v == nil {
				return nil
			}
			d, err := vsock.New(vsock.Config{GuestCID: v.CID, UDSPath: v.UDSPath, Logger: deviceLogger(m.cfg)})
			if err != nil {
				return fmt.Errorf("%w: vsock: %w", ErrConfig, err)
			}
			m.closers = append(m.closers, d)
			return add(slot{dev: d})
		},
		restore: func(m *Machine, rc RestoreConfig, man *snapshot.Manifest, ss slotState, state json.RawMessage) (slot, error) {
			if rc.VsockUDSPath == "" {
				return slot{}, fmt.Errorf("the checkpoint has a vsock device and RestoreConfig.VsockUDSPath is empty")
			}
			var cid uint64
			d, err := restoreState("vsock", state, func(st vsock.State) (*vsock.Device, error) {
				cid = st.GuestCID
				return vsock.Restore(st, rc.VsockUDSPath, deviceLogger(m.cfg))
			})
			if err != nil {
				return slot{}, err
			}
			m.closers = append(m.closers, d)
			m.cfg.Vsock = &Vsock{CID: cid, UDSPath: rc.VsockUDSPath}
			return slot{dev: d}, nil
		},
	},
	{
		kind: kindNet,
		boot: func(m *Machine, add func(slot) error) error {
			n := m.cfg.Net
			if n == nil {
				return nil
			}
			var mac virtionet.MAC
			if n.MAC != "" {
				var err error
				if mac, err = virtionet.ParseMAC(n.MAC); err != nil {
					return fmt.Errorf("%w: network: %w", ErrConfig, err)
				}
			}
			d, err := virtionet.New(virtionet.Config{SocketPath: n.SocketPath, MAC: mac, Logger: deviceLogger(m.cfg)})
			if err != nil {
				return fmt.Errorf("%w: network: %w", ErrConfig, err)
			}
			m.closers = append(m.closers, d)
			return add(slot{dev: d})
		},
		restore: func(m *Machine, rc RestoreConfig, man *snapshot.Manifest, ss slotState, state json.RawMessage) (slot, error) {
			if rc.NetSocketPath == "" {
				return slot{}, fmt.Errorf("%w: the checkpoint has a network device: restore it with a network socket (sailbox-vmm -net, RestoreConfig.NetSocketPath)", ErrConfig)
			}
			var mac string
			d, err := restoreState("virtio-net", state, func(st virtionet.State) (*virtionet.Device, error) {
				mac = st.MAC
				return virtionet.Restore(st, rc.NetSocketPath, deviceLogger(m.cfg))
			})
			if err != nil {
				return slot{}, err
			}
			m.closers = append(m.closers, d)
			m.cfg.Net = &Net{SocketPath: rc.NetSocketPath, MAC: mac}
			return slot{dev: d}, nil
		},
	},
}

// lookupMMIOKind returns the table's entry for kind.
func lookupMMIOKind(kind deviceKind) (mmioKind, bool) {
	for _, k := range mmioKinds {
		if k.kind == kind {
			return k, true
		}
	}
	return mmioKind{}, false
}

// NetStats returns the counters of the machine's network device, and
// false if it has none.
func (m *Machine) NetStats() (virtionet.Stats, bool) {
	for _, s := range m.slots {
		if d, ok := s.dev.(*virtionet.Device); ok && s.kind == kindNet {
			return d.Stats(), true
		}
	}
	return virtionet.Stats{}, false
}

// restoreState decodes a device's State strictly (devices.DecodeState)
// and rebuilds the device from it with its package's constructor.
func restoreState[S, D any](name string, data json.RawMessage, restore func(S) (D, error)) (D, error) {
	var st S
	if err := devices.DecodeState(name, data, &st); err != nil {
		var zero D
		return zero, err
	}
	return restore(st)
}

// deviceIRQs are the interrupt lines given to MMIO devices, in order: the
// ISA lines nothing else uses. Not 8 (the RTC), not 9 (the ACPI SCI, level
// triggered), not 16-23 (Linux treats them as PCI lines: level, active low),
// while the devices pulse edges.
var deviceIRQs = []uint32{5, 6, 7, 10, 11, 12, 13, 14, 15}

// mmioBase is the register window of MMIO slot i.
func mmioBase(i int) uint64 { return uint64(boot.MMIOStart) + uint64(i)*0x1000 }

// bootDevices builds a booting machine's devices from the table, then
// cfg.MMIODevices, and places them: the platform devices on the port bus,
// the others in the MMIO window. It returns the kernel command-line
// arguments that announce the MMIO devices.
func (m *Machine) bootDevices() ([]string, error) {
	for _, p := range platformDevices {
		d, err := p.boot(m)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.section, err)
		}
		if err := m.pio.Insert(d, p.port, p.size); err != nil {
			return nil, err
		}
	}
	var args []string
	for _, k := range mmioKinds {
		err := k.boot(m, func(s slot) error {
			s.kind = k.kind
			return m.placeMMIO(&s, virtio.MMIOSize, virtio.KernelCmdline, &args, func(line devices.Interrupt) (devices.BusDevice, error) {
				s.transport = virtio.NewMMIO(s.dev, m.mem, line)
				s.transport.Logger = m.cfg.Logger
				return s.transport, nil
			})
		})
		if err != nil {
			return nil, err
		}
	}
	for _, x := range m.cfg.MMIODevices {
		build := func(line devices.Interrupt) (devices.BusDevice, error) { return x.New(m.mem, line) }
		if err := m.placeMMIO(&slot{kind: kindExtra}, x.Size, x.CmdlineArg, &args, build); err != nil {
			return nil, err
		}
	}
	m.catchQueueNotifies()
	return args, nil
}

// placeMMIO puts the device build returns in the next MMIO slot, records
// the slot, and adds the kernel argument that announces it (arg, given
// its base address and interrupt) to args.
func (m *Machine) placeMMIO(s *slot, size uint64, arg func(base uint64, irq uint32) string, args *[]string, build func(devices.Interrupt) (devices.BusDevice, error)) error {
	i := len(m.slots)
	if i >= len(deviceIRQs) {
		return fmt.Errorf("%w: more than %d MMIO devices (disks, entropy, vsock, network, extras)", ErrConfig, len(deviceIRQs))
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
	*args = append(*args, arg(s.base, s.gsi))
	return nil
}

// saveDevices adds every device's section to state; the vCPUs and the
// devices are paused. It returns the MMIO window's record.
func (m *Machine) saveDevices(state map[string][]byte) ([]slotState, error) {
	for _, p := range platformDevices {
		b, err := encodeSection(p.section, p.save(m))
		if err != nil {
			return nil, err
		}
		state[p.section] = b
	}
	var slots []slotState
	for i, s := range m.slots {
		st, err := s.transport.Save()
		if err != nil {
			return nil, fmt.Errorf("save mmio device %d (%s): %w", i, s.kind, err)
		}
		if state[sectionMMIO(i)], err = encodeSection(sectionMMIO(i), st); err != nil {
			return nil, err
		}
		slots = append(slots, slotState{Kind: s.kind, Base: s.base, GSI: s.gsi, Disk: s.disk})
	}
	return slots, nil
}

// restoreDevices rebuilds every device of man from its section and
// places it where it was: the platform devices, then the MMIO window as
// the machine section records it. The irqchip must be restored: a
// restored device re-raises an interrupt that was pending.
func (m *Machine) restoreDevices(rc RestoreConfig, man *snapshot.Manifest, slots []slotState) error {
	for _, p := range platformDevices {
		state, ok := man.State[p.section]
		if !ok {
			return fmt.Errorf("no state section %q: %w", p.section, devices.ErrInvalidState)
		}
		d, err := p.restore(m, state)
		if err != nil {
			return err
		}
		if err := m.pio.Insert(d, p.port, p.size); err != nil {
			return err
		}
	}
	for i, ss := range slots {
		if err := m.restoreSlot(rc, man, i, ss); err != nil {
			return fmt.Errorf("mmio device %d (%s): %w", i, ss.Kind, err)
		}
	}
	m.catchQueueNotifies()
	return nil
}

// restoreSlot rebuilds MMIO slot i from its saved transport and device.
func (m *Machine) restoreSlot(rc RestoreConfig, man *snapshot.Manifest, i int, ss slotState) error {
	if ss.Base != mmioBase(i) || ss.GSI != deviceIRQs[i] {
		return fmt.Errorf("saved at %#x, IRQ %d; this VMM puts slot %d at %#x, IRQ %d", ss.Base, ss.GSI, i, mmioBase(i), deviceIRQs[i])
	}
	k, ok := lookupMMIOKind(ss.Kind)
	if !ok {
		return fmt.Errorf("unknown device kind %q: %w", ss.Kind, devices.ErrInvalidState)
	}
	var st virtio.MMIOState
	if err := decodeSection(man, sectionMMIO(i), &st); err != nil {
		return err
	}
	s, err := k.restore(m, rc, man, ss, st.Device)
	if err != nil {
		return err
	}
	line, err := m.interruptLine(ss.GSI)
	if err != nil {
		return err
	}
	t, err := virtio.RestoreMMIO(st, s.dev, m.mem, line)
	if err != nil {
		return err
	}
	t.Logger = m.cfg.Logger
	if err := m.mmio.Insert(t, ss.Base, virtio.MMIOSize); err != nil {
		return err
	}
	s.kind, s.base, s.gsi, s.transport = ss.Kind, ss.Base, ss.GSI, t
	m.slots = append(m.slots, s)
	return nil
}
