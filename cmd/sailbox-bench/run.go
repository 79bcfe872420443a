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
	"github.com/sailbox-dev/sailbox/internal/kvmtest"
	"github.com/sailbox-dev/sailbox/vmm"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

type options struct {
	kernel, initrd string
	image          string // a root file system image; empty: no image rows
	runs, execs    int
	memMiB         int
	qemu           string
	gokvm          string // gokvm's binary; empty: no gokvm rows
	gokvmTimeout   time.Duration
	timeout        time.Duration
	snapshots      bool
	rows           map[string]bool // the row groups to measure (-rows)
	netBinary      string
	netRuns        int // net rounds: each streams for long, so fewer than -runs
	netMiB         int
	netConns       int
	densityForks   int    // children of one running box (-rows density)
	vmmBinary      string // the sailbox-vmm each density child runs in
	counters       bool   // KVM's counters are read around the execs (kvmstats.go)
}

// rowGroups are -rows' groups, in the order they run.
var rowGroups = []string{"boot", "snapshots", "density", "image", "net"}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "report" {
		return runReport(args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("sailbox-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: sailbox-bench [flags]            measure (needs KVM), the results handed back in the output\n       sailbox-bench report [-in output] [-out dir]   write them as results-<time>.{json,md,png}\n")
		fs.PrintDefaults()
	}
	var o options
	fs.StringVar(&o.kernel, "kernel", os.Getenv("SAILBOX_GUEST_KERNEL"), "guest kernel (default $SAILBOX_GUEST_KERNEL)")
	fs.StringVar(&o.initrd, "initrd", os.Getenv("SAILBOX_GUEST_INITRAMFS"), "guest initramfs (default $SAILBOX_GUEST_INITRAMFS)")
	fs.IntVar(&o.runs, "runs", 20, "samples of each latency row: boots per VMM, restores and forks of each kind, image rounds")
	fs.IntVar(&o.execs, "execs", 20, "exec round trips per boot, and as many health round trips")
	fs.IntVar(&o.memMiB, "mem", 256, "guest memory in MiB")
	fs.StringVar(&o.qemu, "qemu", "qemu-system-x86_64", "QEMU binary for the comparison (empty: skip)")
	fs.StringVar(&o.gokvm, "gokvm", "", "gokvm `binary` (build/gokvm.sh builds it; make bench passes it) for a comparison of boots to a console line (empty: skip, with a note)")
	fs.DurationVar(&o.gokvmTimeout, "gokvm-timeout", time.Minute, "a gokvm boot that has not printed its console line after this long failed (it is left out, not taken again)")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Minute, "a boot whose agent has not answered after this long is broken: its sample is taken again, up to 3 attempts")
	fs.BoolVar(&o.snapshots, "snapshots", true, "also measure checkpoints, restores and forks")
	fs.StringVar(&o.image, "image", os.Getenv("SAILBOX_DEFAULT_IMAGE"), "root file system `image` (ext4) for the image rows: boot, create from a template, fork with python3 warm (default $SAILBOX_DEFAULT_IMAGE, which make bench sets to image/build.sh's Debian image); empty: skip them")
	rows := fs.String("rows", strings.Join(rowGroups, ","), "comma-separated row `groups` to measure: boot (boot and exec against QEMU), snapshots (needs boot), density (-density-forks children of one running box, each a sailbox-vmm: forks/s against boot's boots/s, host memory against forks × -mem, the VMM's own memory per box against Firecracker's published 5 MiB), image (needs -image), net (guest → host TCP against QEMU's -netdev user; needs -image)")
	fs.StringVar(&o.netBinary, "net-binary", besideMe("sailbox-net"), "the sailbox-net `binary` for the net rows (default: beside this one)")
	fs.IntVar(&o.netRuns, "net-runs", 3, "net rounds (each a stream and -net-conns connections, under both VMMs)")
	fs.IntVar(&o.netMiB, "net-mib", 128, "MiB each net round streams from guest to host")
	fs.IntVar(&o.netConns, "net-conns", 50, "connections each net round opens, for the set-up time")
	fs.IntVar(&o.densityForks, "density-forks", 100, "density rows: children of one running box to start and keep running together (fewer if the host's memory runs short: the rows say how many)")
	fs.StringVar(&o.vmmBinary, "vmm-binary", besideMe("sailbox-vmm"), "the sailbox-vmm `binary` each density child runs in (default: beside this one)")
	quick := fs.Bool("quick", false, "a smoke test: -runs 2 -execs 5 -net-runs 1 -net-mib 16 -net-conns 10 -density-forks 10, unless given")
	commit := fs.String("commit", "", "the `version` of the tree built (git describe), for the results (default: git describe here)")
	resumeFrom := fs.String("resume", os.Getenv(kvmtest.CrashedConsolesEnv), "`outputs` of earlier attempts at this run (separated by "+string(os.PathListSeparator)+"), whose row groups handed back are kept, not measured again (default $"+kvmtest.CrashedConsolesEnv+": the consoles of the labs that crashed under it)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *quick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for name, v := range map[string]string{"runs": "2", "execs": "5", "net-runs": "1", "net-mib": "16", "net-conns": "10", "density-forks": "10"} {
			if !set[name] {
				fs.Set(name, v)
			}
		}
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
	if o.densityForks < 1 {
		return errors.New("need -density-forks >= 1")
	}
	if o.netMiB < 1 || o.netConns < 1 || o.netRuns < 1 {
		return errors.New("need -net-runs, -net-mib and -net-conns >= 1")
	}
	if o.kernel == "" || o.initrd == "" || o.runs < 1 || o.execs < 1 {
		return errors.New("need -kernel, -initrd, -runs >= 1 and -execs >= 1")
	}
	if o.image != "" {
		if _, err := os.Stat(o.image); err != nil {
			return fmt.Errorf("-image: %w", err)
		}
	}
	res := newResults(ctx, fs, o, *quick, *commit)
	if err := res.resume(*resumeFrom, stdout); err != nil {
		return err
	}
	err := measureAll(ctx, o, res, stdout, stderr)
	res.Finished = time.Now().UTC()
	if err != nil {
		res.Error = err.Error()
	}
	if herr := handBack(stdout, res); herr != nil && err == nil {
		err = herr
	}
	return err
}

// newResults starts a run's Results: what it runs on and with.
func newResults(ctx context.Context, fs *flag.FlagSet, o options, quick bool, commit string) *Results {
	res := &Results{
		Format: resultsFormat, Started: time.Now().UTC(), Quick: quick, Commit: commit,
		Flags: map[string]string{}, Machine: thisMachine(), Peers: map[string]string{},
		Guest: map[string]string{"kernel": o.kernel, "initramfs": o.initrd, "image": o.image, "memory_mib": fmt.Sprint(o.memMiB)},
		Rows:  []Row{}, Ratios: []Ratio{}, Retries: []Retry{}, Groups: []string{}, Notes: []string{},
	}
	fs.VisitAll(func(f *flag.Flag) { res.Flags[f.Name] = f.Value.String() })
	if res.Commit == "" {
		res.Commit = firstLine(ctx, "git", "describe", "--always", "--dirty")
	}
	if o.qemu != "" {
		res.Peers["qemu"] = firstLine(ctx, o.qemu, "--version")
	}
	if o.gokvm != "" {
		res.Peers["gokvm"] = gokvmVersion(o.gokvm)
	}
	return res
}

// measureAll measures into res the row groups o.rows names, but those
// res has from an earlier attempt (resume.go). After each group but the
// last it hands back what it has so far (handback.go), so that a run the
// lab kills later (its timeout, a lab crash) keeps them, and a run
// started again after a crash resumes from them.
func measureAll(ctx context.Context, o options, res *Results, stdout, stderr io.Writer) error {
	sys, err := kvm.OpenUsable()
	if err != nil {
		return err
	}
	defer sys.Close()

	groups := []rowGroup{
		{"boot", func() error { return benchBoot(ctx, sys, o, res, stdout, stderr) }},
		{"snapshots", func() error { return benchSnapshots(ctx, sys, o, res, stdout, stderr) }},
		{"density", func() error {
			if !o.rows["boot"] {
				res.note("density: no boot rows, so no cold boots per second to compare the forks per second with")
			}
			return benchDensity(ctx, sys, o, res, stdout, stderr)
		}},
		{"image", func() error {
			if o.image == "" {
				fmt.Fprintf(stdout, "\nroot image rows skipped: no -image (make bench passes image/build.sh's)\n")
				res.note("image rows skipped: no -image")
				return nil
			}
			return benchImage(ctx, sys, o, res, stdout, stderr)
		}},
		{"net", func() error { return benchNetwork(ctx, sys, o, res, stdout, stderr) }},
	}
	return res.measureGroups(groups, o.rows, stdout)
}

// rowGroup is one -rows group and what measures it.
type rowGroup struct {
	name    string
	measure func() error
}

// measureGroups measures, in order, the groups that rows names and r
// has not finished yet, handing back r after each but the last.
func (r *Results) measureGroups(groups []rowGroup, rows map[string]bool, stdout io.Writer) error {
	todo := slices.DeleteFunc(slices.Clone(groups), func(g rowGroup) bool { return !rows[g.name] || slices.Contains(r.Groups, g.name) })
	for i, g := range todo {
		if err := g.measure(); err != nil {
			return err
		}
		r.Groups = append(r.Groups, g.name)
		if i < len(todo)-1 {
			interim := *r
			interim.Error = fmt.Sprintf("interim results, handed back after the %s rows: the run was stopped before it finished", g.name)
			if err := handBack(stdout, &interim); err != nil {
				return err
			}
		}
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

// benchBoot measures boots and execs of Sailbox against QEMU, and boots
// to console lines against gokvm (gokvm.go).
func benchBoot(ctx context.Context, sys *kvm.System, o options, res *Results, stdout, stderr io.Writer) error {
	if o.gokvm == "" {
		res.note("gokvm rows skipped: no -gokvm (build/gokvm.sh builds it; make bench passes it)")
	}
	if err := openKVMCounters(); err != nil {
		res.note("KVM counter rows skipped: %v", err)
	} else {
		o.counters = true
	}
	gokvm := newGokvmRuns()
	for i := 0; i < o.runs; i++ {
		var sb sailboxBoot
		err := res.retryBoot(stderr, fmt.Sprintf("sailbox run %d", i), func() (err error) {
			sb, err = benchSailbox(ctx, sys, o)
			return err
		})
		if err != nil {
			return fmt.Errorf("sailbox run %d: %w", i, err)
		}
		fmt.Fprintf(stderr, "sailbox run %d: init on the console after %v, agent ready in %v, exec p50 %v, health p50 %v\n", i, sb.init.Round(time.Millisecond), sb.boot.Round(time.Millisecond), median(sb.execs), median(sb.healths))
		res.durations("boot.sailbox", "boot", "boot to agent ready, sailbox", sb.boot)
		res.durations("exec.sailbox", "boot", "exec round trip (true), sailbox", sb.execs...)
		res.durations("health.sailbox", "boot", "agent health round trip (no process), sailbox", sb.healths...)
		res.recordCounters(stderr, i, sb.agentTimes, "sailbox")
		if o.qemu != "" {
			q, err := benchQEMU(ctx, o, uint32(100+i))
			if err != nil {
				fmt.Fprintf(stderr, "qemu    run %d: failed, left out: %v\n", i, err)
				res.note("qemu run %d failed, left out: %v", i, err)
			} else {
				fmt.Fprintf(stderr, "qemu    run %d: agent ready in %v, exec p50 %v, health p50 %v\n", i, q.boot.Round(time.Millisecond), median(q.execs), median(q.healths))
				res.durations("boot.qemu", "boot", "boot to agent ready, qemu", q.boot)
				res.durations("exec.qemu", "boot", "exec round trip (true), qemu", q.execs...)
				res.durations("health.qemu", "boot", "agent health round trip (no process), qemu", q.healths...)
				res.recordCounters(stderr, i, q, "qemu")
			}
		}
		if o.gokvm != "" {
			if err := gokvm.round(ctx, sys, o, res, stderr, i, sb); err != nil {
				return err
			}
		}
	}

	fmt.Fprintf(stdout, "\n%-34s %12s %12s %12s\n", "median over runs", "sailbox", "qemu", "gokvm")
	cell := func(id string) string {
		if v, ok := res.p50(id); ok {
			return fromMS(v).Round(10 * time.Microsecond).String()
		}
		return "-"
	}
	row := func(name, sailbox, qemu, gokvm string) {
		fmt.Fprintf(stdout, "%-34s %12s %12s %12s\n", name, cell(sailbox), cell(qemu), cell(gokvm))
	}
	for _, b := range consoleBoots {
		if o.gokvm != "" {
			row("boot to "+b.rows+" (console line)", b.rows+".sailbox", "", b.rows+".gokvm")
		}
	}
	row("boot to agent ready", "boot.sailbox", "boot.qemu", "")
	row("exec round trip (true)", "exec.sailbox", "exec.qemu", "")
	row("health round trip (no process)", "health.sailbox", "health.qemu", "")
	fmt.Fprintf(stdout, "\nratios (same run):\n")
	fmt.Fprintf(stdout, "  sailbox exec RTT / sailbox boot        %.4f\n", res.ratio("exec.sailbox/boot.sailbox", "sailbox exec RTT / sailbox boot", "exec.sailbox", "boot.sailbox"))
	if _, ok := res.p50("boot.qemu"); ok {
		fmt.Fprintf(stdout, "  sailbox boot / qemu boot               %.3f\n", res.ratio("boot.sailbox/boot.qemu", "sailbox boot / qemu boot", "boot.sailbox", "boot.qemu"))
		fmt.Fprintf(stdout, "  sailbox exec RTT / qemu exec RTT       %.3f\n", res.ratio("exec.sailbox/exec.qemu", "sailbox exec RTT / qemu exec RTT", "exec.sailbox", "exec.qemu"))
		fmt.Fprintf(stdout, "  sailbox health RTT / qemu health RTT   %.3f\n", res.ratio("health.sailbox/health.qemu", "sailbox health RTT / qemu health RTT", "health.sailbox", "health.qemu"))
		for _, call := range []string{"exec", "health"} {
			if _, ok := res.p50("kvm.exits." + call + ".sailbox"); ok {
				fmt.Fprintf(stdout, "  sailbox / qemu KVM exits per %-6s    %.3f\n", call, res.ratio("kvm.exits."+call+".sailbox/kvm.exits."+call+".qemu", "sailbox / qemu KVM exits per "+call+" call", "kvm.exits."+call+".sailbox", "kvm.exits."+call+".qemu"))
			}
		}
	}
	for _, b := range consoleBoots {
		if _, ok := res.p50(b.rows + ".gokvm"); ok {
			fmt.Fprintf(stdout, "  sailbox boot to %-5s / gokvm's         %.3f\n", b.rows, res.ratio(b.rows+".sailbox/"+b.rows+".gokvm", "sailbox "+b.label+" / gokvm's", b.rows+".sailbox", b.rows+".gokvm"))
		}
	}
	return nil
}

// sailboxBoot is one boot of benchSailbox.
type sailboxBoot struct {
	init time.Duration // to initMarker on the console; 0 if it never came
	agentTimes
}

// agentTimes are what measure times in one boot: the boot to the agent's
// first health answer, then exec round trips, then as many health round
// trips. A health call is an exec's exchange (a connection, a request
// frame, an answer frame) without the process: the two rows side by side
// split an exec into transport and spawn.
type agentTimes struct {
	boot           time.Duration
	execs, healths []time.Duration
	// KVM's counters per exec and per health call (kvmstats.go); nil
	// where they could not be read.
	execCounters, healthCounters map[string]float64
}

// benchSailbox boots one VM, waits for its agent and times exec round trips.
func benchSailbox(ctx context.Context, sys *kvm.System, o options) (sailboxBoot, error) {
	var sb sailboxBoot
	dir, err := os.MkdirTemp("", "sailbox-bench")
	if err != nil {
		return sb, err
	}
	defer os.RemoveAll(dir)
	uds := filepath.Join(dir, "vsock")
	console := newConsoleWatch(initMarker)
	start := time.Now()
	m, err := vmm.New(sys, vmm.Config{
		KernelPath: o.kernel, InitrdPath: o.initrd, MemoryMiB: o.memMiB, VCPUs: 1,
		Cmdline: "quiet", Vsock: &vmm.Vsock{CID: 3, UDSPath: uds}, Serial: console,
	})
	if err != nil {
		return sb, err
	}
	defer m.Close()
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	defer func() { m.Stop(); <-done }()
	c := guestagent.NewHybridClient(uds)
	sb.agentTimes, err = measure(ctx, c, start, o, os.Getpid(), done)
	if at, ok := console.seenAt(); ok {
		sb.init = at.Sub(start)
	}
	return sb, err
}

// benchQEMU boots the same kernel and initramfs under QEMU/KVM with a
// vhost-vsock device and measures the same things through AF_VSOCK.
func benchQEMU(ctx context.Context, o options, cid uint32) (agentTimes, error) {
	start := time.Now()
	cmd := exec.CommandContext(ctx, o.qemu, qemuArgs(o, cid, "", "")...)
	var qerr bytes.Buffer
	cmd.Stderr = &qerr
	if err := cmd.Start(); err != nil {
		return agentTimes{}, err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	defer func() { cmd.Process.Kill(); <-done }()
	c := &guestagent.Client{Dial: func(ctx context.Context) (net.Conn, error) { return dialVsock(ctx, cid) }}
	t, err := measure(ctx, c, start, o, cmd.Process.Pid, done)
	if err != nil {
		select {
		case <-done:
			err = fmt.Errorf("%w; qemu exited: %s", err, qerr.String())
		default:
		}
	}
	return t, err
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

// measure waits for the agent to be healthy, then times o.execs execs,
// then o.execs health calls, and reads the KVM counters of process pid's
// VM around each series when o.counters.
func measure(ctx context.Context, c *guestagent.Client, start time.Time, o options, pid int, exited <-chan struct{}) (agentTimes, error) {
	var t agentTimes
	waitCtx, cancel := context.WithTimeout(ctx, o.timeout)
	_, err := c.WaitHealthy(waitCtx, 5*time.Millisecond, exited)
	cancel()
	if err != nil {
		return t, brokenBoot{err}
	}
	t.boot = time.Since(start)
	counters := func() kvmCounters {
		if !o.counters {
			return nil
		}
		c, err := readKVMCounters(kvmDebugfs, threadOf(pid))
		if err != nil {
			return nil // the row then misses this boot; the run notes why once (openKVMCounters)
		}
		return c
	}
	delta := func(a, b kvmCounters) map[string]float64 {
		if a == nil || b == nil {
			return nil
		}
		return perCall(a, b, o.execs)
	}
	c0 := counters()
	for range o.execs {
		t0 := time.Now()
		ectx, cancel := context.WithTimeout(ctx, time.Minute) // a hang detector, not a measure
		_, _, code, err := c.Run(ectx, "true")
		cancel()
		if err != nil || code != 0 {
			return t, fmt.Errorf("exec true: exit %d: %v", code, err)
		}
		t.execs = append(t.execs, time.Since(t0))
	}
	c1 := counters()
	for range o.execs {
		t0 := time.Now()
		hctx, cancel := context.WithTimeout(ctx, time.Minute) // a hang detector, not a measure
		_, err := c.Health(hctx)
		cancel()
		if err != nil {
			return t, fmt.Errorf("health: %w", err)
		}
		t.healths = append(t.healths, time.Since(t0))
	}
	t.execCounters, t.healthCounters = delta(c0, c1), delta(c1, counters())
	return t, nil
}
