package kvmlab

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// kvmTest matches the declaration of a kvm-tier test.
var kvmTest = regexp.MustCompile(`(?m)^func TestKVM\w*\(`)

// testArgs are the arguments every kvm-tier test binary gets. Its own
// timeout is shorter than the run's, so that a hung test panics with every
// goroutine's stack before the runner kills the lab.
func testArgs(runTimeout time.Duration, run string) []string {
	t := max(runTimeout-runTimeout/5, time.Minute)
	return []string{"-test.v", "-test.run", run, "-test.count", "1", "-test.timeout", t.String()}
}

// BuildTests compiles one static test binary per package (among the go list
// patterns) that declares a TestKVM test, into outDir, and returns the plan
// that runs them with env added. Progress goes to log.
//
// run selects the tests (a -test.run pattern; "" means every TestKVM test)
// and timeout is the whole run's, from which each binary's is derived.
func BuildTests(ctx context.Context, patterns []string, outDir string, env []string, run string, timeout time.Duration, log io.Writer) (*Plan, error) {
	if run == "" {
		run = "^TestKVM"
	}
	args := append([]string{"list", "-f", "{{.ImportPath}}\t{{.Dir}}\t{{join .TestGoFiles \",\"}},{{join .XTestGoFiles \",\"}}"}, patterns...)
	out, err := exec.CommandContext(ctx, "go", args...).Output()
	if err != nil {
		return nil, fmt.Errorf("go list %s: %w", strings.Join(patterns, " "), exitDetail(err))
	}
	plan := &Plan{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.SplitN(line, "\t", 3)
		if len(f) != 3 {
			continue
		}
		pkg, dir, files := f[0], f[1], f[2]
		if !declaresKVMTest(dir, strings.Split(files, ",")) {
			continue
		}
		bin := filepath.Join(outDir, strings.ReplaceAll(pkg, "/", "_")+".test")
		fmt.Fprintf(log, "kvmlab: building kvm-tier tests of %s\n", pkg)
		cmd := exec.CommandContext(ctx, "go", "test", "-c", "-o", bin, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("build tests of %s: %w", pkg, err)
		}
		plan.Steps = append(plan.Steps, Step{Name: pkg, Path: bin, Args: testArgs(timeout, run), Dir: dir, Env: env})
	}
	if len(plan.Steps) == 0 {
		return nil, fmt.Errorf("no package among %s declares a TestKVM test", strings.Join(patterns, " "))
	}
	return plan, nil
}

func declaresKVMTest(dir string, files []string) bool {
	for _, f := range files {
		if f == "" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err == nil && kvmTest.Match(b) {
			return true
		}
	}
	return false
}

func exitDetail(err error) error {
	if ee, ok := err.(*exec.ExitError); ok && len(bytes.TrimSpace(ee.Stderr)) > 0 {
		return fmt.Errorf("%w: %s", err, bytes.TrimSpace(ee.Stderr))
	}
	return err
}
