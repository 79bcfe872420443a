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
	"sync/atomic"

	"github.com/sailbox-dev/sailbox/devices"
	"github.com/sailbox-dev/sailbox/devices/acpi"
	"github.com/sailbox-dev/sailbox/devices/i8042"
	"github.com/sailbox-dev/sailbox/devices/serial"
	"github.com/sailbox-dev/sailbox/snapshot"
	"github.com/sailbox-dev/sailbox/snapshot/disklayer"
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
	Net        *Net         // nil: no network device
	Logger     *slog.Logger // device diagnostics; nil discards them
	// MMIODevices are extra devices, placed after the standard ones (disks,
	// entropy) from boot.MMIOStart, one window and one interrupt each, and
	// announced on the kernel command line.
	MMIODevices []MMIODevice
}

// Vsock is a virtio-vsock device whose host side is Unix sockets: host
// programs connect to UDSPath and send "CONNECT <port>\n"; guest connections
// to the host's port P reach UDSPath_P.
type Vsock struct {
	CID     uint64
	UDSPath string
}

// Net is a virtio-net device whose host side is a user-space network
// stack's Unix SOCK_SEQPACKET socket, one Ethernet frame per message
// (gvisor-tap-vsock's "bess" framing). The machine connects to SocketPath
// when it is built, and fails if it cannot; a peer that goes away later
// leaves a link that drops frames.
type Net struct {
	SocketPath string
	// MAC is the guest's (six colon-separated hexadecimal bytes, unicast);
	// empty means virtio-net's DefaultMAC, which every machine may share:
	// each has a network of its own.
	MAC string
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

// BaseCmdline is what every guest gets: console on COM1, reboot through the
// keyboard controller, no PCI probing, the TSC trusted (kvm-clock provides
// its frequency), and no legacy timer check. The benchmark gives a peer
// VMM's boot of the same kernel the same arguments.
const BaseCmdline = "console=ttyS0 reboot=k panic=-1 pci=off tsc=reliable no_timer_check"

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
	irqfds  []*kvm.IRQFD
	// ioeventfds reports KVM_CAP_IOEVENTFD: the virtio devices' queue
	// notifications are caught by the kernel and delivered by notifiers
	// (notify.go).
	ioeventfds bool
	notifiers  notifiers

	// The devices, kept for pausing and saving them.
	serial *serial.Serial
	kbd    *i8042.Device
	pm     *acpi.PM
	slots  []slot // the MMIO window, in order

	// Checkpoints. Guarded by lifeMu.
	dirty        *dirtyLog
	msrIndex     []uint32                      // KVM's MSRs to save and restore
	chain        *snapshot.Manifest            // the last checkpoint taken or restored from
	carryDirty   []uint64                      // pages a failed checkpoint took from the dirty log
	pendingSeals map[string][]*disklayer.Layer // disk layers switched out of the top, not yet in a checkpoint
	restored     []VCPUState                   // for a restored machine: its vCPUs, by ID
	workingSet   *memory.WorkingSet            // for a restored machine: pages to map before it runs
	restoredFrom string                        // for a restored machine: the checkpoint
	restoredRoot *snapshot.Root                // and its store
	// workingSetFrom is the checkpoint workingSet was recorded for ("" if
	// given by the caller); mappedAhead what prefault did of it, stored
	// once by vCPU 0's setup, read by MappedAhead from any goroutine.
	workingSetFrom string
	mappedAhead    atomic.Pointer[MappedAhead]

	// lifeMu guards running and paused, and serializes Pause, Resume and
	// Checkpoint.
	lifeMu  sync.Mutex
	running bool // every vCPU started and the machine has not stopped
	paused  bool

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

	m := &Machine{cfg: cfg, exitCh: make(chan struct{}), pendingSeals: map[string][]*disklayer.Layer{}}
	built := false
	defer func() {
		if !built {
			m.Close() // whatever was set up before the failure
		}
	}()
	if m.mem, err = memory.New(uint64(cfg.MemoryMiB) << 20); err != nil {
		return nil, err
	}
	if err := m.createVM(sys); err != nil {
		return nil, err
	}

	devArgs, err := m.bootDevices()
	if err != nil {
		return nil, err
	}
	cmdline := append([]string{BaseCmdline}, devArgs...)
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

// createVM creates the VM with its in-kernel irqchip and PIT, and maps
// guest memory (m.mem) with dirty logging on.
func (m *Machine) createVM(sys *kvm.System) error {
	var err error
	if m.vm, err = sys.CreateVM(); err != nil {
		return err
	}
	if err := m.vm.SetTSSAddr(boot.TSSAddr); err != nil {
		return err
	}
	if err := m.vm.SetIdentityMapAddr(boot.IdentityMapAddr); err != nil {
		return err
	}
	if err := m.vm.CreateIRQChip(); err != nil {
		return err
	}
	if err := m.vm.CreatePIT2(); err != nil {
		return err
	}
	n, err := m.vm.CheckExtension(kvm.CapIOEventFD)
	if err != nil {
		return err
	}
	m.ioeventfds = n > 0
	flags, err := m.enableDirtyLog()
	if err != nil {
		return err
	}
	if err := m.vm.MapMemory(memorySlot, 0, m.mem.Host(), flags); err != nil {
		return err
	}
	if m.msrIndex, err = sys.MSRIndexList(); err != nil {
		return err
	}
	m.cpuid, err = hostCPUID(sys)
	return err
}

func (m *Machine) guestReset()    { m.stop(ExitReset, nil) }
func (m *Machine) guestPowerOff() { m.stop(ExitPowerOff, nil) }

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
		v := newVCPU(m, i)
		m.vcpus = append(m.vcpus, v)
		wg.Add(1)
		go func() {
			defer wg.Done()
			v.run(started)
		}()
	}
	ok := true
	for range m.cfg.VCPUs {
		if err := <-started; err != nil {
			m.stop(ExitStopped, err)
			ok = false
			break
		}
	}
	m.lifeMu.Lock()
	m.running = ok
	m.lifeMu.Unlock()
	if ok && m.restored != nil {
		m.raisePendingInterrupts()
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
	m.lifeMu.Lock()
	m.running = false
	if m.paused {
		m.resumeLocked() // let device goroutines drain for Close
		m.paused = false
	}
	m.lifeMu.Unlock()
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

// VCPUs is how many vCPUs the machine has.
func (m *Machine) VCPUs() int { return m.cfg.VCPUs }

// Close releases the VM and its memory. Run must have returned.
func (m *Machine) Close() error {
	var errs []error
	for _, v := range m.vcpus {
		if cpu := v.cpu.Load(); cpu != nil {
			errs = append(errs, cpu.Close())
		}
	}
	// The notifiers before the devices they kick. Devices before the
	// irqfds: their goroutines may raise interrupts until closed, and an
	// irqfd's descriptor number must not be reused under them.
	errs = append(errs, m.notifiers.close())
	for _, c := range m.closers {
		errs = append(errs, c.Close())
	}
	for _, f := range m.irqfds {
		errs = append(errs, f.Close())
	}
	if m.vm != nil {
		errs = append(errs, m.vm.Close())
	}
	if m.mem != nil {
		errs = append(errs, m.mem.Close())
	}
	return errors.Join(errs...)
}

// deviceLogger is where devices log: cfg.Logger, or nowhere.
func deviceLogger(cfg Config) *slog.Logger {
	if cfg.Logger != nil {
		return cfg.Logger
	}
	return slog.New(slog.DiscardHandler)
}
