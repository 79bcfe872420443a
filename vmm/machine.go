package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"

	"github.com/sailbox-dev/sailbox/devices"
	"github.com/sailbox-dev/sailbox/devices/acpi"
	"github.com/sailbox-dev/sailbox/devices/i8042"
	"github.com/sailbox-dev/sailbox/devices/serial"
	"github.com/sailbox-dev/sailbox/vmm/boot"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
	"github.com/sailbox-dev/sailbox/vmm/memory"
)

// Config describes a machine to boot.
type Config struct {
	KernelPath string // bzImage
	InitrdPath string // optional
	Cmdline    string // appended to the VMM's own arguments (console, devices)
	MemoryMiB  int
	VCPUs      int
	Serial     io.Writer // the guest console; nil discards it
	Disks      []Disk
	Vsock      *Vsock       // nil: no vsock device
	Logger     *slog.Logger // device diagnostics; nil discards them
	// MMIODevices are extra devices, placed after the standard ones (disks,
	// entropy) from boot.MMIOStart, one window and one interrupt each, and
	// announced on the kernel command line.
	MMIODevices []MMIODevice
}

// MMIODevice is a device the VMM maps in the MMIO space. New builds it once
// guest memory and its interrupt line exist; CmdlineArg describes it to the
// kernel given its base address and interrupt.
type MMIODevice struct {
	Size       uint64
	New        func(mem devices.GuestMemory, irq devices.Interrupt) (devices.BusDevice, error)
	CmdlineArg func(base uint64, irq uint32) string
}

// Exit says how a machine stopped.
type Exit int

const (
	ExitStopped  Exit = iota // Stop was called
	ExitReset                // the guest reset the CPU (reboot, panic with reboot=k)
	ExitShutdown             // a triple fault or a KVM shutdown/crash event
	ExitPowerOff             // the guest powered off
)

func (e Exit) String() string {
	return [...]string{"stopped", "reset", "shutdown", "poweroff"}[e]
}

// Platform interrupt lines and ports.
const (
	serialIRQ = 4
	comPort   = 0x3f8
)

// deviceIRQs are the interrupt lines given to MMIO devices, in order: the
// ISA lines nothing else uses. Not 8 (the RTC), not 9 (the ACPI SCI, level
// triggered), not 16-23 (Linux treats them as PCI lines: level, active low),
// while the devices pulse edges.
var deviceIRQs = []uint32{5, 6, 7, 10, 11, 12, 13, 14, 15}

// baseCmdline is what every guest gets: console on COM1, reboot through the
// keyboard controller, no PCI probing, the TSC trusted (kvm-clock provides
// its frequency), and no legacy timer check.
const baseCmdline = "console=ttyS0 reboot=k panic=-1 pci=off tsc=reliable no_timer_check"

// ErrConfig wraps configuration errors (bad files, sizes, counts).
var ErrConfig = errors.New("invalid machine configuration")

// Machine is one booted VM. Build it with New, then Run it.
type Machine struct {
	cfg   Config
	vm    *kvm.VM
	mem   *memory.Memory
	pio   devices.Bus
	mmio  devices.Bus
	cpuid []kvm.CPUIDEntry
	entry *boot.Entry

	vcpus   []*vcpu
	closers []io.Closer // device back ends

	exitOnce sync.Once
	exitCh   chan struct{} // closed when the machine stops
	exit     Exit          // set before exitCh is closed
	exitErr  error
}

// New creates and loads a machine on sys; nothing runs until Run.
func New(sys *kvm.System, cfg Config) (*Machine, error) {
	if cfg.VCPUs < 1 || cfg.VCPUs > boot.MaxCPUs {
		return nil, fmt.Errorf("%w: %d vCPUs, want 1 to %d", ErrConfig, cfg.VCPUs, boot.MaxCPUs)
	}
	if cfg.MemoryMiB < 1 || uint64(cfg.MemoryMiB)<<20 > boot.MaxRAM {
		return nil, fmt.Errorf("%w: %d MiB of memory, want 1 to %d", ErrConfig, cfg.MemoryMiB, boot.MaxRAM>>20)
	}
	kernel, err := os.Open(cfg.KernelPath)
	if err != nil {
		return nil, fmt.Errorf("%w: kernel: %w", ErrConfig, err)
	}
	defer kernel.Close()
	var initrd *os.File
	if cfg.InitrdPath != "" {
		if initrd, err = os.Open(cfg.InitrdPath); err != nil {
			return nil, fmt.Errorf("%w: initrd: %w", ErrConfig, err)
		}
		defer initrd.Close()
	}

	m := &Machine{cfg: cfg, exitCh: make(chan struct{})}
	built := false
	defer func() {
		if !built {
			m.Close() // whatever was set up before the failure
		}
	}()
	if m.mem, err = memory.New(uint64(cfg.MemoryMiB) << 20); err != nil {
		return nil, err
	}
	if m.vm, err = sys.CreateVM(); err != nil {
		return nil, err
	}
	if err := m.vm.SetTSSAddr(boot.TSSAddr); err != nil {
		return nil, err
	}
	if err := m.vm.SetIdentityMapAddr(boot.IdentityMapAddr); err != nil {
		return nil, err
	}
	if err := m.vm.CreateIRQChip(); err != nil {
		return nil, err
	}
	if err := m.vm.CreatePIT2(); err != nil {
		return nil, err
	}
	if err := m.vm.MapMemory(0, 0, m.mem.Host(), 0); err != nil {
		return nil, err
	}
	if m.cpuid, err = sys.SupportedCPUID(); err != nil {
		return nil, err
	}

	// Platform devices.
	console := serial.New(irqLine{m.vm, serialIRQ}, cfg.Serial)
	if err := m.pio.Insert(console, comPort, serial.Size); err != nil {
		return nil, err
	}
	if err := m.pio.Insert(i8042.New(func() { m.stop(ExitReset, nil) }), i8042.DataPort, i8042.Size); err != nil {
		return nil, err
	}
	if err := m.pio.Insert(acpi.New(boot.SleepTypeS5, func() { m.stop(ExitPowerOff, nil) }), boot.PM1Port, acpi.Size); err != nil {
		return nil, err
	}

	mmioDevs, closers, err := standardDevices(cfg)
	if err != nil {
		return nil, err
	}
	m.closers = closers
	mmioDevs = append(mmioDevs, cfg.MMIODevices...)
	if len(mmioDevs) > len(deviceIRQs) {
		return nil, fmt.Errorf("%w: %d MMIO devices (disks, entropy, vsock), at most %d", ErrConfig, len(mmioDevs), len(deviceIRQs))
	}
	cmdline := []string{baseCmdline}
	for i, d := range mmioDevs {
		base := uint64(boot.MMIOStart) + uint64(i)*0x1000
		gsi := deviceIRQs[i]
		dev, err := d.New(m.mem, irqLine{m.vm, gsi})
		if err != nil {
			return nil, fmt.Errorf("mmio device %d: %w", i, err)
		}
		if err := m.mmio.Insert(dev, base, d.Size); err != nil {
			return nil, err
		}
		cmdline = append(cmdline, d.CmdlineArg(base, gsi))
	}
	if cfg.Cmdline != "" {
		cmdline = append(cmdline, cfg.Cmdline)
	}

	ksize, err := fileSize(kernel)
	if err != nil {
		return nil, err
	}
	l := boot.Linux{Kernel: kernel, KernelSize: ksize, Cmdline: strings.Join(cmdline, " "), CPUs: cfg.VCPUs}
	if initrd != nil {
		l.Initrd = initrd
		if l.InitrdSize, err = fileSize(initrd); err != nil {
			return nil, err
		}
	}
	if m.entry, err = boot.LoadLinux(m.mem, l); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	built = true
	return m, nil
}

func fileSize(f *os.File) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// Run starts every vCPU and blocks until the machine stops: the guest
// resets or shuts down, Stop is called, ctx ends, or a vCPU fails. It
// returns how the machine stopped; err is non-nil only for failures.
func (m *Machine) Run(ctx context.Context) (Exit, error) {
	started := make(chan error, m.cfg.VCPUs)
	var wg sync.WaitGroup
	for i := 0; i < m.cfg.VCPUs; i++ {
		v := &vcpu{m: m, id: i}
		m.vcpus = append(m.vcpus, v)
		wg.Add(1)
		go func() {
			defer wg.Done()
			v.run(started)
		}()
	}
	for range m.cfg.VCPUs {
		if err := <-started; err != nil {
			m.stop(ExitStopped, err)
			break
		}
	}
	select {
	case <-ctx.Done():
		m.stop(ExitStopped, nil)
	case <-m.exitCh:
	}
	for _, v := range m.vcpus {
		v.kick()
	}
	wg.Wait()
	return m.exit, m.exitErr
}

// Stop asks the machine to stop; Run returns ExitStopped.
func (m *Machine) Stop() { m.stop(ExitStopped, nil) }

// stop records the first reason the machine stops and wakes Run.
func (m *Machine) stop(e Exit, err error) {
	m.exitOnce.Do(func() {
		m.exit, m.exitErr = e, err
		close(m.exitCh)
	})
}

// Memory is the guest's RAM.
func (m *Machine) Memory() *memory.Memory { return m.mem }

// Close releases the VM and its memory. Run must have returned.
func (m *Machine) Close() error {
	var errs []error
	for _, v := range m.vcpus {
		if cpu := v.cpu.Load(); cpu != nil {
			errs = append(errs, cpu.Close())
		}
	}
	if m.vm != nil {
		errs = append(errs, m.vm.Close())
	}
	for _, c := range m.closers {
		errs = append(errs, c.Close())
	}
	if m.mem != nil {
		errs = append(errs, m.mem.Close())
	}
	return errors.Join(errs...)
}
