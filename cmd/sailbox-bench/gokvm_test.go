package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/vmm"
)

func TestGokvmArgsBootTheSameGuest(t *testing.T) {
	o := options{kernel: "/k/bzImage", initrd: "/i/initramfs.cpio", memMiB: 256}
	args := gokvmArgs(o, "console=ttyS0 quiet")
	want := []string{"boot", "-k", "/k/bzImage", "-i", "/i/initramfs.cpio", "-m", "256M", "-c", "1", "-p", "console=ttyS0 quiet"}
	if !slices.Equal(args, want) {
		t.Errorf("gokvm args %q, want %q", args, want)
	}
	// Each boot gives gokvm Sailbox's command line, and what its machine
	// needs (noapic) alone.
	for _, b := range append([]consoleBoot{gokvmProbe}, consoleBoots...) {
		rest, ok := strings.CutPrefix(b.gokvm, vmm.BaseCmdline+" ")
		if !ok {
			t.Errorf("%s: gokvm's command line %q is not Sailbox's and more", b.rows, b.gokvm)
			continue
		}
		for _, arg := range strings.Fields(rest) {
			if arg != strings.TrimSpace(gokvmNoAPIC) && !strings.Contains(b.sailbox+" quiet", arg) {
				t.Errorf("%s: gokvm gets %q, Sailbox's boot does not", b.rows, arg)
			}
		}
	}
}

// fakeGokvm writes a shell script that plays gokvm's part: it prints what
// gokvm and its guest would, then waits to be killed.
func fakeGokvm(t *testing.T, script string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "gokvm")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestBenchGokvmTimesTheMarker(t *testing.T) {
	o := options{gokvmTimeout: time.Minute, memMiB: 256}
	o.gokvm = fakeGokvm(t, `[ "$1" = boot ] || exit 2
echo "Start CPU 0 of 1"
echo "this is not terminal and does not accept input" >&2
printf '[    0.1] x\n2026/12/07 00:40:00 Welcome to '
sleep 0.05
printf 'u-root!\n'
exec sleep 60
`)
	took, err := benchGokvm(context.Background(), o, consoleBoots[0])
	if err != nil {
		t.Fatal(err)
	}
	if took <= 0 {
		t.Errorf("took %v", took)
	}
}

func TestBenchGokvmReportsAFailedBoot(t *testing.T) {
	for _, c := range []struct{ name, script, want string }{
		{"vcpu stopped", "echo 'err: unexpected io port 0x61'\necho 'CPU 0 exits'\nexec sleep 60\n", "unexpected io port 0x61"},
		{"exited", "echo 'no /dev/kvm' >&2\nexit 1\n", "no /dev/kvm"},
		{"silent", "exec sleep 60\n", "after 200ms"},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := options{gokvmTimeout: 200 * time.Millisecond, memMiB: 256, gokvm: fakeGokvm(t, c.script)}
			if c.name != "silent" {
				o.gokvmTimeout = time.Minute // failed by what it printed, not by the timeout
			}
			_, err := benchGokvm(context.Background(), o, consoleBoots[0])
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want one with %q", err, c.want)
			}
		})
	}
}

func TestGokvmVersionOfAGoBinary(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Skip(err)
	}
	if v := gokvmVersion(self); strings.HasPrefix(v, "unknown") || !strings.Contains(v, "go1.") {
		t.Errorf("version of a Go binary: %q", v)
	}
	if v := gokvmVersion(fakeGokvm(t, "")); !strings.HasPrefix(v, "unknown") {
		t.Errorf("version of a script: %q", v)
	}
}
