package kvmlab

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// shareTag is the 9p mount tag of the host's root directory.
const shareTag = "hostroot"

// hostRoot is where the lab mounts the host's root; steps chroot into it.
const hostRoot = "/host"

// stepPath is the PATH steps get: the host's usual one, with Go.
const stepPath = "/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// scratch is the steps' writable space (TMPDIR, HOME), on a tmpfs the lab
// mounts at the host's /run. The host's /tmp stays visible, read-only,
// because a checkout (CI's, say) may live there.
const (
	scratch     = "/run/kvmlab"
	scratchTmp  = scratch + "/tmp"
	scratchHome = scratch + "/home"
)

// RunInit is the lab's PID 1: it prepares the lab (mounts, modules,
// /dev/kvm, the host share), runs the plan in /plan.json, and reports each
// step's exit status on out. It returns when all steps ran; the caller
// powers the lab off. An error means the lab itself could not be set up.
func RunInit(out io.Writer) error {
	for _, m := range []struct{ src, dst, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
	} {
		if err := unix.Mount(m.src, m.dst, m.fstype, 0, ""); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.dst, err)
		}
	}
	if err := pinGuestMemory(); err != nil {
		return err
	}
	var idle io.Closer
	err := alone(func() error {
		if err := loadModules("/modules"); err != nil {
			return err
		}
		if err := waitFor("/dev/kvm", 10*time.Second); err != nil {
			return fmt.Errorf("kvm-amd loaded but %w", err)
		}
		var err error
		idle, err = holdKVM()
		return err
	})
	if err != nil {
		return err
	}
	defer idle.Close()
	cpus, _ := os.ReadFile("/sys/devices/system/cpu/online")
	fmt.Fprintf(out, "%s/dev/kvm after %s of lab uptime, CPUs %s online\n", markerReady, uptime(), strings.TrimSpace(string(cpus)))

	if err := mountHostRoot(); err != nil {
		return err
	}
	if err := loopbackUp(); err != nil {
		return err
	}
	b, err := os.ReadFile("/plan.json")
	if err != nil {
		return fmt.Errorf("read plan: %w", err)
	}
	plan, err := decodePlan(b)
	if err != nil {
		return err
	}
	if err := stageImages(plan, hostRoot, scratch+"/images", out); err != nil {
		return err
	}
	// The heartbeat: one whole line in one write, between the steps'
	// own lines.
	go func() {
		for range time.Tick(heartbeatInterval) {
			fmt.Fprintln(out, markerAlive)
		}
	}()
	for i, s := range plan.Steps {
		code := runStep(s, out)
		fmt.Fprintln(out, stepMarker(i, code))
	}
	fmt.Fprintln(out, markerDone)
	return nil
}

// holdKVM creates a VM that stays for the lab's life: an in-kernel
// irqchip and one vCPU that never runs. KVM switches static keys on with
// its first VM and vCPU and off after its last (preempt notifiers in
// __schedule, the LAPIC's software-disabled key), and each switch
// live-patches the lab kernel's text with a breakpoint on the way. Under
// QEMU 7.2's multi-threaded TCG another lab CPU sometimes still executes
// that breakpoint after the patch completed, and the lab kernel dies of
// an "Oops: int3" in __schedule; the lab's 6.12 kernel did, twice in one
// kvm-tier run, where every test creates and frees VMs. With this VM the
// keys stay on and the text is not patched again; the first switch, when
// it is created, happens alone (see alone).
func holdKVM() (io.Closer, error) {
	sys, err := kvm.Open("")
	if err != nil {
		return nil, fmt.Errorf("lab idle VM: %w", err)
	}
	vm, err := sys.CreateVM()
	if err == nil {
		err = vm.CreateIRQChip()
	}
	var cpu *kvm.VCPU
	if err == nil {
		cpu, err = vm.CreateVCPU(0)
	}
	if err != nil {
		if vm != nil {
			vm.Close()
		}
		sys.Close()
		return nil, fmt.Errorf("lab idle VM: %w", err)
	}
	return idleVM{sys, vm, cpu}, nil
}

// alone runs fn with every lab CPU but the boot CPU offline, so that no
// other CPU executes kernel text that fn live-patches: loading KVM's
// modules and creating its first VM switch static keys and static calls
// (see holdKVM). The issue that made this necessary crashed a lab at 3.9
// s of uptime, while the idle VM was being created. Single-threaded TCG
// would avoid the race for the whole run, but nested guests under it
// could not boot in two minutes. The lab boots with the other CPUs
// offline too (maxcpus=1, see Lab.Run), so alone is where they first
// come online: after fn, every lab CPU is online.
func alone(fn func() error) error {
	paths, _ := filepath.Glob("/sys/devices/system/cpu/cpu[1-9]*/online")
	for i, path := range paths {
		if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == "0" {
			continue // not booted (maxcpus=1)
		}
		if err := os.WriteFile(path, []byte("0"), 0); err != nil {
			return errors.Join(fmt.Errorf("lab: offline %s: %w", filepath.Dir(path), err), online(paths[:i]))
		}
	}
	return errors.Join(fn(), online(paths))
}

// online brings the CPUs whose online files are paths online.
func online(paths []string) error {
	var errs []error
	for _, path := range paths {
		if err := os.WriteFile(path, []byte("1"), 0); err != nil {
			errs = append(errs, fmt.Errorf("lab: online %s: %w", filepath.Dir(path), err))
		}
	}
	return errors.Join(errs...)
}

type idleVM struct {
	sys *kvm.System
	vm  *kvm.VM
	cpu *kvm.VCPU
}

func (v idleVM) Close() error {
	return errors.Join(v.cpu.Close(), v.vm.Close(), v.sys.Close())
}

// PowerOff ends the lab; QEMU runs with -no-reboot and exits.
func PowerOff() {
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

// ReportError prints a lab failure the host runner recognises.
func ReportError(out io.Writer, err error) {
	fmt.Fprintf(out, "%s%v\n", markerError, err)
}

// pinGuestMemory stops the lab kernel from moving the pages of a guest's
// memory behind its back: no transparent huge pages (khugepaged collapses
// them) and no proactive compaction (which migrates them). Every such move
// makes the lab's KVM zap the guest's nested page tables, which QEMU's
// emulation of SVM must then flush; under load, guests running on the
// lab's KVM were seen executing from addresses nothing maps, in a loop of
// page faults, with the nested-paging state of TCG out of step.
func pinGuestMemory() error {
	for _, w := range []struct{ path, value string }{
		{"/sys/kernel/mm/transparent_hugepage/enabled", "never"},
		{"/sys/kernel/mm/transparent_hugepage/defrag", "never"},
		{"/proc/sys/vm/compaction_proactiveness", "0"},
	} {
		if err := os.WriteFile(w.path, []byte(w.value), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("lab memory settings: %w", err)
		}
	}
	return nil
}

func loadModules(dir string) error {
	names, err := filepath.Glob(filepath.Join(dir, "*.ko"))
	if err != nil {
		return err
	}
	sort.Strings(names) // the host numbered them in dependency order
	for _, n := range names {
		f, err := os.Open(n)
		if err != nil {
			return fmt.Errorf("load module: %w", err)
		}
		params := ""
		if strings.Contains(filepath.Base(n), "kvm-amd") || strings.Contains(filepath.Base(n), "kvm_amd") {
			params = strings.ReplaceAll(os.Getenv("KVMLAB_AMD_PARAMS"), ",", " ")
		}
		err = unix.FinitModule(int(f.Fd()), params, 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("load module %s: %w", filepath.Base(n), err)
		}
	}
	return nil
}

func mountHostRoot() error {
	opts := "trans=virtio,version=9p2000.L,msize=512000,cache=loose"
	var err error
	// virtio-pci probes the 9p device asynchronously after module load.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if err = unix.Mount(shareTag, hostRoot, "9p", unix.MS_RDONLY, opts); err == nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("mount host root (9p %s): %w", shareTag, err)
	}
	// The share is read-only; give steps their own kernel filesystems and
	// writable scratch space on top of it (see scratch).
	for _, m := range []struct{ src, dst, fstype, data string }{
		{"proc", "/proc", "proc", ""},
		{"sysfs", "/sys", "sysfs", ""},
		{"devtmpfs", "/dev", "devtmpfs", ""},
		{"tmpfs", "/dev/shm", "tmpfs", ""},
		{"tmpfs", "/run", "tmpfs", "mode=755"},
	} {
		dst := hostRoot + m.dst
		if m.dst == "/dev/shm" {
			os.MkdirAll(dst, 0o755)
		}
		if err := unix.Mount(m.src, dst, m.fstype, 0, m.data); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, dst, err)
		}
	}
	for _, d := range []string{scratchTmp, scratchHome} {
		if err := os.MkdirAll(hostRoot+d, 0o1777); err != nil {
			return fmt.Errorf("scratch space: %w", err)
		}
	}
	return nil
}

// loopbackUp brings up lo, which tests use for their own servers.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback: SIOCGIFFLAGS: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback: SIOCSIFFLAGS: %w", err)
	}
	return nil
}

// runStep runs one step chrooted into the host share and returns its exit
// status (127 when it could not start).
func runStep(s Step, out io.Writer) int {
	cmd := exec.Command(s.Path, s.Args...)
	cmd.Dir = s.Dir
	cmd.Env = append([]string{"PATH=" + stepPath, "HOME=" + scratchHome, "TMPDIR=" + scratchTmp}, s.Env...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: hostRoot}
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			fmt.Fprintf(out, "kvmlab: step %s killed by %v\n", s.Name, ws.Signal())
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	default:
		fmt.Fprintf(out, "kvmlab: step %s: %v\n", s.Name, err)
		return 127
	}
}

func waitFor(path string, d time.Duration) error {
	for deadline := time.Now().Add(d); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(path); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within %v: %w", path, d, err)
		}
	}
}

func uptime() string {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0] + "s"
}
