package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// guestFiles makes stand-ins for the kernel and initramfs, so that the
// binaries are the first thing a run finds missing.
func guestFiles(t *testing.T) (kernel, initrd string) {
	dir := t.TempDir()
	kernel, initrd = filepath.Join(dir, "bzImage"), filepath.Join(dir, "initramfs")
	for _, p := range []string{kernel, initrd} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return kernel, initrd
}

func TestMissingBinaryIsNamedWithItsFix(t *testing.T) {
	kernel, initrd := guestFiles(t)
	bin := t.TempDir()
	for _, name := range []string{"sail", "sailbox-vmm"} {
		if err := os.WriteFile(filepath.Join(bin, name), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	missing := filepath.Join(bin, "sailboxd")
	for name, args := range map[string][]string{
		"flag": {"-sailboxd", missing, "-sail", filepath.Join(bin, "sail"), "-vmm", filepath.Join(bin, "sailbox-vmm")},
		// Without flags, the binaries are looked for beside the test
		// binary, where there is no sailboxd.
		"default": {},
	} {
		t.Run(name, func(t *testing.T) {
			args = append(args, "-kernel", kernel, "-initrd", initrd)
			var stderr bytes.Buffer
			err := run(context.Background(), args, &bytes.Buffer{}, &stderr)
			if err == nil || !strings.Contains(err.Error(), "sailboxd binary") || !strings.Contains(err.Error(), "make demo builds it") {
				t.Errorf("run = %v, want an error naming the sailboxd binary and how to build it", err)
			}
		})
	}
}

func TestMissingGuestIsNamedWithItsFix(t *testing.T) {
	bin := t.TempDir()
	var args []string
	for _, name := range []string{"sailboxd", "sail", "sailbox-vmm"} {
		p := filepath.Join(bin, name)
		if err := os.WriteFile(p, nil, 0o755); err != nil {
			t.Fatal(err)
		}
		flag := map[string]string{"sailboxd": "-sailboxd", "sail": "-sail", "sailbox-vmm": "-vmm"}[name]
		args = append(args, flag, p)
	}
	t.Setenv("SAILBOX_GUEST_KERNEL", "")
	t.Setenv("SAILBOX_GUEST_INITRAMFS", "")
	err := run(context.Background(), args, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "no guest kernel") || !strings.Contains(err.Error(), "SAILBOX_GUEST_KERNEL") {
		t.Errorf("run = %v, want an error naming the missing guest kernel", err)
	}
}

func TestParseArgs(t *testing.T) {
	t.Setenv("SAILBOX_GUEST_KERNEL", "/k")
	t.Setenv("SAILBOX_GUEST_INITRAMFS", "/i")
	c, err := parseArgs(nil, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Kernel != "/k" || c.Initrd != "/i" || c.MemoryMiB != 256 {
		t.Errorf("defaults: %+v", c)
	}
	self, _ := os.Executable()
	if want := filepath.Join(filepath.Dir(self), "sailboxd"); c.Sailboxd != want {
		t.Errorf("default sailboxd %q, want %q beside this executable", c.Sailboxd, want)
	}
	for _, args := range [][]string{{"-mem", "0"}, {"extra"}, {"-nope"}} {
		if _, err := parseArgs(args, &bytes.Buffer{}); err == nil {
			t.Errorf("parseArgs(%q) accepted", args)
		}
	}
}

func TestShellJoin(t *testing.T) {
	got := shellJoin([]string{"sail", "exec", "sb-1", "--", "sh", "-c", "echo hello > /tmp/greeting", "it's", ""})
	want := `sail exec sb-1 -- sh -c 'echo hello > /tmp/greeting' 'it'\''s' ''`
	if got != want {
		t.Errorf("shellJoin = %s, want %s", got, want)
	}
}

func TestLsState(t *testing.T) {
	table := "ID      STATE     SCHEMA  CREATED\nsb-a    sleeping  3       2025-01-01T00:00:00Z\nsb-ab   running   3       2025-01-01T00:00:00Z\n"
	if st, ok := lsState(table, "sb-a"); !ok || st != "sleeping" {
		t.Errorf("sb-a: %q, %v", st, ok)
	}
	if _, ok := lsState(table, "sb-b"); ok {
		t.Error("found sb-b, which is not listed")
	}
}

func TestTail(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log")
	os.WriteFile(p, []byte("1\n2\n3\n4\n"), 0o644)
	if got := tail(p, 2); got != "3\n4\n" {
		t.Errorf("tail = %q", got)
	}
	if got := tail(p, 10); got != "1\n2\n3\n4\n" {
		t.Errorf("tail of a short file = %q", got)
	}
	if got := tail(filepath.Join(t.TempDir(), "none"), 2); !strings.Contains(got, "no such file") {
		t.Errorf("tail of a missing file = %q", got)
	}
}
