package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/mdlayher/vsock"

	"github.com/sailbox-dev/sailbox/guestagent"
	"github.com/sailbox-dev/sailbox/vmm"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

type options struct {
	kernel, initrd string
	image          string // a root file system image; empty: no image rows
	runs, execs    int
	memMiB         int
	qemu           string
	timeout        time.Duration
	snapshots      bool
	rows           map[string]bool // the row groups to measure (-rows)
	netBinary      string
	netMiB         int
	netConns       int
}

// rowGroups are -rows' groups, in the order they run.
var rowGroups = []string{"boot", "snapshots", "image", "net"}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sailbox-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	fs.StringVar(&o.kernel, "kernel", os.Getenv("SAILBOX_GUEST_KERNEL"), "guest kernel (default $SAILBOX_GUEST_KERNEL)")
	fs.StringVar(&o.initrd, "initrd", os.Getenv("SAILBOX_GUEST_INITRAMFS"), "guest initramfs (default $SAILBOX_GUEST_INITRAMFS)")
	fs.IntVar(&o.runs, "runs", 3, "boots per VMM")
	fs.IntVar(&o.execs, "execs", 20, "exec round trips per boot")
	fs.IntVar(&o.memMiB, "mem", 256, "guest memory in MiB")
	fs.StringVar(&o.qemu, "qemu", "qemu-system-x86_64", "QEMU binary for the comparison (empty: skip)")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Minute, "give up on a boot after this long")
	fs.BoolVar(&o.snapshots, "snapshots", true, "also measure checkpoints, restores and forks")
	fs.StringVar(&o.image, "image", os.Getenv("SAILBOX_DEFAULT_IMAGE"), "root file system `image` (ext4) for the image rows: boot, create from a template, fork with python3 warm (default $SAILBOX_DEFAULT_IMAGE, which make bench sets to image/build.sh's Debian image); empty: skip them")
	rows := fs.String("rows", strings.Join(rowGroups, ","), "comma-separated row `groups` to measure: boot (boot and exec against QEMU), snapshots (needs boot), image (needs -image), net (guest → host TCP against QEMU's -netdev user; needs -image)")
	fs.StringVar(&o.netBinary, "net-binary", besideMe("sailbox-net"), "the sailbox-net `binary` for the net rows (default: beside this one)")
	fs.IntVar(&o.netMiB, "net-mib", 128, "MiB each net round streams from guest to host")
	fs.IntVar(&o.netConns, "net-conns", 50, "connections each net round opens, for the set-up time")
	if err := fs.Parse(args); err != nil {
		return err
	}
	o.rows = map[string]bool{}
	for _, g := range strings.Split(*rows, ",") {
		if !slices.Contains(rowGroups, g) {
			return fmt.Errorf("-rows: unknown group %q (want some of %s)", g, strings.Join(rowGroups, ","))
		}
		o.rows[g] = true
	}
	if !o.snapshots {
		delete(o.rows, "snapshots")
	}
	if o.rows["snapshots"] && !o.rows["boot"] {
		return errors.New("-rows: snapshots needs boot (its ratios are to the boot's)")
	}
	if o.netMiB < 1 || o.netConns < 1 {
		return errors.New("need -net-mib >= 1 and -net-conns >= 1")
	}
	if o.kernel == "" || o.initrd == "" || o.runs < 1 || o.execs < 1 {
		return errors.New("need -kernel, -initrd, -runs >= 1 and -execs >= 1")
	}
	if o.image != "" {
		if _, err := os.Stat(o.image); err != nil {
			return fmt.Errorf("-image: %w", err)
		}
	}
	sys, err := kvm.OpenUsable()
	if err != nil {
		return err
	}
	defer sys.Close()

	if o.rows["boot"] {
		if err := benchBoot(ctx, sys, o, stdout, stderr); err != nil {
			return err
		}
	}
	if o.rows["image"] {
		if o.image == "" {
			fmt.Fprintf(stdout, "\nroot image rows skipped: no -image (make bench passes image/build.sh's)\n")
		} else if err := benchImage(ctx, sys, o, stdout, stderr); err != nil {
			return err
		}
	}
	if o.rows["net"] {
		return benchNetwork(ctx, sys, o, stdout, stderr)
	}
	return nil
}

// besideMe is the path of the binary name in this one's directory.
func besideMe(name string) string {
	self, err := os.Executable()
	if err != nil {
		return name
	}
	return filepath.Join(filepath.Dir(self), name)
}

// benchBoot measures boots and execs of Sailbox against QEMU, then the
// snapshots rows against those boots.
func benchBoot(ctx context.Context, sys *kvm.System, o options, stdout, stderr io.Writer) error {
	var sb, qb, sx, qx []time.Duration
	for i := 0; i < o.runs; i++ {
		boot, execs, err := benchSailbox(ctx, sys, o)
		if err != nil {
			return fmt.Errorf("sailbox run %d: %w", i, err)
		}
		fmt.Fprintf(stderr, "sailbox run %d: agent ready in %v, exec p50 %v\n", i, boot.Round(time.Millisecond), median(execs))
		sb, sx = append(sb, boot), append(sx, execs...)
		if o.qemu != "" {
			boot, execs, err := benchQEMU(ctx, o, uint32(100+i))
			if err != nil {
				fmt.Fprintf(stderr, "qemu    run %d: failed, left out: %v\n", i, err)
				continue
			}
			fmt.Fprintf(stderr, "qemu    run %d: agent ready in %v, exec p50 %v\n", i, boot.Round(time.Millisecond), median(execs))
			qb, qx = append(qb, boot), append(qx, execs...)
		}
	}

	fmt.Fprintf(stdout, "\n%-34s %12s %12s\n", "median over runs", "sailbox", "qemu")
	row := func(name string, s, q []time.Duration) {
		qs := "-"
		if len(q) > 0 {
			qs = median(q).Round(10 * time.Microsecond).String()
		}
		fmt.Fprintf(stdout, "%-34s %12v %12s\n", name, median(s).Round(10*time.Microsecond), qs)
	}
	row("boot to agent ready", sb, qb)
	row("exec round trip (true)", sx, qx)
	fmt.Fprintf(stdout, "\nratios (same run):\n")
	fmt.Fprintf(stdout, "  sailbox exec RTT / sailbox boot        %.4f\n", ratio(median(sx), median(sb)))
	if len(qb) > 0 {
		fmt.Fprintf(stdout, "  sailbox boot / qemu boot               %.3f\n", ratio(median(sb), median(qb)))
		fmt.Fprintf(stdout, "  sailbox exec RTT / qemu exec RTT       %.3f\n", ratio(median(sx), median(qx)))
	}
	if o.rows["snapshots"] {
		return benchSnapshots(ctx, sys, o, median(sb), stdout, stderr)
	}
	return nil
}

// benchSailbox boots one VM, waits for its agent and times exec round trips.
func benchSailbox(ctx context.Context, sys *kvm.System, o options) (time.Duration, []time.Duration, error) {
	dir, err := os.MkdirTemp("", "sailbox-bench")
	if err != nil {
		return 0, nil, err
	}
	defer os.RemoveAll(dir)
	uds := filepath.Join(dir, "vsock")
	start := time.Now()
	m, err := vmm.New(sys, vmm.Config{
		KernelPath: o.kernel, InitrdPath: o.initrd, MemoryMiB: o.memMiB, VCPUs: 1,
		Cmdline: "quiet", Vsock: &vmm.Vsock{CID: 3, UDSPath: uds},
	})
	if err != nil {
		return 0, nil, err
	}
	defer m.Close()
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	defer func() { m.Stop(); <-done }()
	c := guestagent.NewHybridClient(uds)
	return measure(ctx, c, start, o, done)
}

// benchQEMU boots the same kernel and initramfs under QEMU/KVM with a
// vhost-vsock device and measures the same things through AF_VSOCK.
func benchQEMU(ctx context.Context, o options, cid uint32) (time.Duration, []time.Duration, error) {
	start := time.Now()
	cmd := exec.CommandContext(ctx, o.qemu,
		"-M", "microvm,acpi=off", "-enable-kvm", "-cpu", "host", "-m", fmt.Sprint(o.memMiB), "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "null", "-no-reboot",
		"-kernel", o.kernel, "-initrd", o.initrd, "-append", "console=ttyS0 quiet panic=-1",
		"-device", fmt.Sprintf("vhost-vsock-device,guest-cid=%d", cid))
	var qerr bytes.Buffer
	cmd.Stderr = &qerr
	if err := cmd.Start(); err != nil {
		return 0, nil, err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	defer func() { cmd.Process.Kill(); <-done }()
	c := &guestagent.Client{Dial: func(ctx context.Context) (net.Conn, error) { return dialVsock(ctx, cid) }}
	boot, execs, err := measure(ctx, c, start, o, done)
	if err != nil {
		select {
		case <-done:
			err = fmt.Errorf("%w; qemu exited: %s", err, qerr.String())
		default:
		}
	}
	return boot, execs, err
}

// dialVsock connects to the guest agent through the host's AF_VSOCK. In
// the lab a connect now and then times out (vhost-vsock under emulation
// answers late); those are retried, a few times.
func dialVsock(ctx context.Context, cid uint32) (net.Conn, error) {
	var err error
	for range 5 {
		var c net.Conn
		if c, err = vsock.Dial(cid, guestagent.Port, nil); err == nil || !errors.Is(err, syscall.ETIMEDOUT) {
			return c, err
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	return nil, err
}

// measure waits for the agent to be healthy, then times o.execs execs.
func measure(ctx context.Context, c *guestagent.Client, start time.Time, o options, exited <-chan struct{}) (time.Duration, []time.Duration, error) {
	waitCtx, cancel := context.WithTimeout(ctx, o.timeout)
	_, err := c.WaitHealthy(waitCtx, 5*time.Millisecond, exited)
	cancel()
	if err != nil {
		return 0, nil, err
	}
	boot := time.Since(start)
	var rtts []time.Duration
	for range o.execs {
		t0 := time.Now()
		ectx, cancel := context.WithTimeout(ctx, time.Minute) // a hang detector, not a measure
		_, _, code, err := c.Run(ectx, "true")
		cancel()
		if err != nil || code != 0 {
			return 0, nil, fmt.Errorf("exec true: exit %d: %v", code, err)
		}
		rtts = append(rtts, time.Since(t0))
	}
	return boot, rtts, nil
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}
