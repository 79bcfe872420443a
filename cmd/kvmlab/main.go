// Command kvmlab runs programs and kvm-tier tests on real /dev/kvm: directly
// where the host has a usable KVM, otherwise inside the KVM lab (see
// internal/kvmlab).
//
//	kvmlab test [flags] [packages]     build and run the TestKVM tests (default ./...)
//	kvmlab test -boots N ...           the same in N fresh labs: a soak of the lab itself
//	kvmlab run  [flags] -- prog args   run one program
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/sailbox-dev/sailbox/internal/kvmlab"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code, err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kvmlab:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

const usage = `usage:
  kvmlab test [flags] [packages]     build and run the kvm-tier (TestKVM) tests
  kvmlab run  [flags] -- prog [args] run one program on real KVM`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) (int, error) {
	if len(args) == 0 {
		return 2, errors.New(usage)
	}
	verb := args[0]
	fs := flag.NewFlagSet("kvmlab "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cache := os.Getenv("SAILBOX_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "sailbox")
	}
	r := &kvmlab.Runner{Out: stdout, Log: stderr}
	where := os.Getenv("SAILBOX_KVM")
	if where == "" {
		where = kvmlab.WhereAuto
	}
	fs.StringVar(&r.Where, "where", where, "where to run: auto, host or lab (env SAILBOX_KVM)")
	fs.StringVar(&r.LabKernel, "lab-kernel", "", "unpacked lab kernel `dir` (default: from build/lab-kernel.sh)")
	fs.StringVar(&r.LabQEMU, "lab-qemu", "", "unpacked lab QEMU `dir` (default: from build/lab-qemu.sh)")
	fs.StringVar(&r.WorkDir, "work", filepath.Join(cache, "labrun", verb), "work `dir` for binaries, initramfs and console log")
	fs.IntVar(&r.MemoryMiB, "mem", 4096, "lab memory in MiB")
	fs.IntVar(&r.CPUs, "cpus", 2, "lab vCPUs")
	boots := fs.Int("boots", 0, "test: soak the lab itself: run the tests in this many fresh labs one after another, without reruns, and count the labs that crashed")
	fs.DurationVar(&r.Timeout, "timeout", 45*time.Minute, "kill a lab after this long (a rerun after a lab fault gets its own)")
	testRun := fs.String("run", "", "test: only kvm-tier tests matching this -test.run `pattern` (default ^TestKVM)")
	if err := fs.Parse(args[1:]); err != nil {
		return 2, err
	}
	if r.MemoryMiB < 512 || r.CPUs < 1 || r.Timeout <= 0 || *boots < 0 || (*boots > 0 && verb != "test") {
		return 2, fmt.Errorf("-mem must be >= 512, -cpus >= 1, -timeout > 0, -boots >= 0 and only with test")
	}
	if err := os.MkdirAll(r.WorkDir, 0o755); err != nil {
		return 1, err
	}
	unlock, err := kvmlab.LockWorkDir(r.WorkDir, stderr)
	if err != nil {
		return 1, err
	}
	defer unlock()

	var plan *kvmlab.Plan
	switch verb {
	case "test":
		patterns := fs.Args()
		if len(patterns) == 0 {
			patterns = []string{"./..."}
		}
		var err error
		plan, err = kvmlab.BuildTests(ctx, patterns, r.WorkDir, kvmlab.ForwardedEnv(), *testRun, r.Timeout, stderr)
		if err != nil {
			return 1, err
		}
	case "run":
		if fs.NArg() == 0 {
			return 2, errors.New("run: no program given\n" + usage)
		}
		prog, err := filepath.Abs(fs.Arg(0))
		if err != nil {
			return 1, err
		}
		wd, _ := os.Getwd()
		plan = &kvmlab.Plan{Steps: []kvmlab.Step{{Name: filepath.Base(prog), Path: prog, Args: fs.Args()[1:], Dir: wd, Env: kvmlab.ForwardedEnv()}}}
	default:
		return 2, fmt.Errorf("unknown verb %q\n%s", verb, usage)
	}

	if *boots > 0 {
		soak, err := r.Soak(ctx, plan, *boots)
		if err != nil {
			return 1, err
		}
		fmt.Fprintln(stdout, soak.Summary())
		if !soak.OK() {
			return 1, nil
		}
		return 0, nil
	}
	res, err := r.Run(ctx, plan)
	if err != nil {
		return 1, err
	}
	if verb == "run" {
		if res.LabError != "" || !res.Done {
			return 1, fmt.Errorf("run %s: %v", plan.Steps[0].Name, res.Problems(plan))
		}
		return res.Exit[0], nil
	}
	for _, p := range res.Problems(plan) {
		fmt.Fprintln(stderr, "kvmlab: FAIL:", p)
	}
	fmt.Fprintf(stdout, "kvmlab: kvm-tier tests ran on real /dev/kvm (%s)\n", map[string]string{"lab": "inside the KVM lab", "host": "on this host"}[res.Where])
	fmt.Fprintln(stdout, res.Summary())
	if !res.OK() {
		return 1, nil
	}
	return 0, nil
}
