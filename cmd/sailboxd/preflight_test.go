package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sailbox-dev/sailbox/internal/daemon"
	"github.com/sailbox-dev/sailbox/internal/daemon/fakebackend"
	"github.com/sailbox-dev/sailbox/kernel"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// fakeBzImage is the smallest file kernel.ParseBzImage accepts with a
// 64-bit entry point: one setup sector after the boot sector, then 4 KiB
// of "kernel" (boot.rst, "The Real-Mode Kernel Header").
func fakeBzImage() []byte {
	b := make([]byte, 2*512+0x1000)
	le := binary.LittleEndian
	b[0x1f1] = 1                       // setup_sects
	le.PutUint32(b[0x1f4:], 0x1000/16) // syssize
	le.PutUint16(b[0x1fe:], 0xaa55)    // boot_flag
	copy(b[0x202:], "HdrS")            // header
	le.PutUint16(b[0x206:], 0x020c)    // version 2.12
	b[0x211] = 0x01                    // loadflags: LOADED_HIGH
	le.PutUint16(b[0x236:], 0x0001)    // xloadflags: XLF_KERNEL_64
	return b
}

func TestFakeBzImage(t *testing.T) {
	b := fakeBzImage()
	img, err := kernel.ParseBzImage(strings.NewReader(string(b)), int64(len(b)))
	if err != nil || !img.Header.Supports64BitEntry() {
		t.Fatalf("the fake bzImage: %+v, %v", img, err)
	}
}

// goodBackend is a configuration whose kernel, initramfs and VMM pass
// checkBackend, in dir.
func goodBackend(t *testing.T, dir string) config {
	t.Helper()
	c := config{
		Kernel: filepath.Join(dir, "bzImage"),
		Initrd: filepath.Join(dir, "initramfs.cpio"),
		VMM:    filepath.Join(dir, "sailbox-vmm"),
		Net:    filepath.Join(dir, "sailbox-net"),
	}
	writeFile(t, c.Kernel, fakeBzImage(), 0o644)
	writeFile(t, c.Initrd, []byte("070701..."), 0o644)
	writeFile(t, c.VMM, []byte("#!/bin/sh\n"), 0o755)
	writeFile(t, c.Net, []byte("#!/bin/sh\n"), 0o755)
	return c
}

func writeFile(t *testing.T, path string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func kvmOK() error { return nil }

// problemsOf is the problems err lists, failing the test if it is no
// preflightError.
func problemsOf(t *testing.T, err error) []string {
	t.Helper()
	var pe preflightError
	if !errors.As(err, &pe) {
		t.Fatalf("not a preflight error: %v", err)
	}
	var lines []string
	for _, p := range pe {
		lines = append(lines, p.String())
	}
	return lines
}

// requireProblems checks that got names exactly the problems in want, in
// order, each by substrings.
func requireProblems(t *testing.T, got []string, want ...[]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d problems, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i, subs := range want {
		for _, s := range subs {
			if !strings.Contains(got[i], s) {
				t.Errorf("problem %d %q does not say %q", i, got[i], s)
			}
		}
	}
}

func TestCheckBackendGood(t *testing.T) {
	c := goodBackend(t, t.TempDir())
	if err := checkBackend(c, kvmOK); err != nil {
		t.Fatalf("a good configuration: %v", err)
	}
}

// Every check of the real backend's needs fails, and all are reported.
func TestCheckBackendAllBad(t *testing.T) {
	dir := t.TempDir()
	c := config{Kernel: "/nonexistent", Initrd: filepath.Join(dir, "empty.cpio"), VMM: filepath.Join(dir, "sailbox-vmm"), Net: "sailbox-net-nowhere"}
	writeFile(t, c.Initrd, nil, 0o644)
	writeFile(t, c.VMM, []byte("#!/bin/sh\n"), 0o644)
	pvm := fmt.Errorf("%s is provided by %s, which runs only PVM-aware guest kernels: %w", kvm.DevicePath, kvm.BackendPVM, kvm.ErrUnusable)
	err := checkBackend(c, func() error { return pvm })
	requireProblems(t, problemsOf(t, err),
		[]string{"-kernel /nonexistent: no such file (build one with kernel/build.sh, or set $SAILBOX_GUEST_KERNEL)"},
		[]string{"-initrd " + c.Initrd, "empty", "guestagent/initramfs.sh", "$SAILBOX_GUEST_INITRAMFS"},
		[]string{"-vmm " + c.VMM, "not executable"},
		[]string{"-sailbox-net sailbox-net-nowhere: not found beside sailboxd or on $PATH", "go build -o bin/sailbox-net ./cmd/sailbox-net"},
		[]string{"/dev/kvm: is provided by kvm_pvm", "kvm_intel or kvm_amd"},
	)
	if !strings.HasPrefix(err.Error(), "5 problems with the configuration:\n  -kernel") {
		t.Errorf("message:\n%s", err)
	}
}

// Each way a single path can be wrong is named with its flag and path.
func TestCheckBackendEach(t *testing.T) {
	missing := &os.PathError{Op: "open", Path: kvm.DevicePath, Err: os.ErrNotExist}
	for _, tc := range []struct {
		name  string
		spoil func(c *config, dir string)
		kvm   error
		want  []string
	}{
		{"no kernel", func(c *config, _ string) { c.Kernel = "" }, nil, []string{"-kernel: not given", "kernel/build.sh", "$SAILBOX_GUEST_KERNEL"}},
		{"kernel is a directory", func(c *config, dir string) { c.Kernel = dir }, nil, []string{"-kernel " + "DIR", "a directory"}},
		{"kernel is vmlinux", func(c *config, dir string) {
			writeFile(t, c.Kernel, append([]byte("\x7fELF"), make([]byte, 4096)...), 0o644)
		}, nil, []string{"-kernel DIR/bzImage: not a bootable bzImage", "boot flag", "vmlinux"}},
		{"32-bit kernel", func(c *config, dir string) {
			b := fakeBzImage()
			b[0x236] = 0
			writeFile(t, c.Kernel, b, 0o644)
		}, nil, []string{"-kernel DIR/bzImage", "64-bit entry point"}},
		{"no initrd", func(c *config, _ string) { c.Initrd = "" }, nil, []string{"-initrd: not given", "guestagent/initramfs.sh"}},
		{"missing initrd", func(c *config, dir string) { c.Initrd = dir + "/none.cpio" }, nil, []string{"-initrd DIR/none.cpio: no such file", "guestagent/initramfs.sh"}},
		{"vmm not on PATH", func(c *config, _ string) { c.VMM = "sailbox-vmm-nowhere" }, nil, []string{"-vmm sailbox-vmm-nowhere: not found beside sailboxd or on $PATH", "go build"}},
		{"vmm missing", func(c *config, dir string) { c.VMM = dir + "/vmm" }, nil, []string{"-vmm DIR/vmm: not found", "go build"}},
		{"sailbox-net missing", func(c *config, dir string) { c.Net = dir + "/net" }, nil, []string{"-sailbox-net DIR/net: not found", "go build -o bin/sailbox-net"}},
		{"no /dev/kvm", func(*config, string) {}, fmt.Errorf("open %s: %w: %w", kvm.DevicePath, kvm.ErrUnusable, missing), []string{"/dev/kvm: ", "modprobe"}},
		{"/dev/kvm refused", func(*config, string) {}, fmt.Errorf("open %s: %w: %w", kvm.DevicePath, kvm.ErrUnusable, os.ErrPermission), []string{"/dev/kvm: ", "permission denied", "group"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			c := goodBackend(t, dir)
			tc.spoil(&c, dir)
			err := checkBackend(c, func() error { return tc.kvm })
			var want []string
			for _, w := range tc.want {
				want = append(want, strings.ReplaceAll(w, "DIR", dir))
			}
			requireProblems(t, problemsOf(t, err), want)
		})
	}
}

func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "base.ext4")
	writeFile(t, img, []byte("disk"), 0o644)
	good := config{StateDir: filepath.Join(dir, "state"), Image: img, ImageDirs: []string{dir}}
	if ps := checkConfig(good); len(ps) != 0 {
		t.Fatalf("a good configuration: %v", ps)
	}
	if st, err := os.Stat(good.StateDir); err != nil || !st.IsDir() {
		t.Errorf("the state directory was not made: %v", err)
	}
	// An image with a selector names an existing path before it.
	for _, ref := range []string{img + ":latest", dir + "@sha256:abc", img + ":name:tag"} {
		if ps := checkConfig(config{StateDir: good.StateDir, Image: ref}); len(ps) != 0 {
			t.Errorf("-image %s: %v", ref, ps)
		}
	}

	bad := config{StateDir: filepath.Join(img, "state"), Image: filepath.Join(dir, "none.ext4"), ImageDirs: []string{dir, img, filepath.Join(dir, "nodir")}}
	requireProblems(t, problemsOf(t, asError(checkConfig(bad))),
		[]string{"-state-dir " + bad.StateDir + ": cannot create it: not a directory", "may write"},
		[]string{"-image " + bad.Image + ": no such file or directory", "registry reference"},
		[]string{"-image-dir " + img + ": not a directory"},
		[]string{"-image-dir " + filepath.Join(dir, "nodir") + ": no such directory"},
	)
	if os.Geteuid() != 0 {
		ro := filepath.Join(dir, "ro")
		if err := os.Mkdir(ro, 0o500); err != nil {
			t.Fatal(err)
		}
		requireProblems(t, problemsOf(t, asError(checkConfig(config{StateDir: ro}))), []string{"-state-dir " + ro + ": not writable"})
	}
}

// The daemon refuses to start on a bad configuration, with every problem
// at once, the config's and the backend's, and serves nothing.
func TestRunPreflight(t *testing.T) {
	saved := newBackend
	t.Cleanup(func() { newBackend = saved })
	kvmErr := fmt.Errorf("open %s: %w: %w", kvm.DevicePath, kvm.ErrUnusable, os.ErrNotExist)
	// The real backend's checks, with a fake /dev/kvm.
	newBackend = func(c config, _ *slog.Logger) (daemon.Backend, error) {
		if err := checkBackend(c, func() error { return kvmErr }); err != nil {
			return nil, err
		}
		return fakebackend.New(1), nil
	}
	dir := t.TempDir()
	notDir := filepath.Join(dir, "file")
	writeFile(t, notDir, []byte("x"), 0o644)
	sock := filepath.Join(dir, "d.sock")
	err := run(context.Background(), []string{
		"-state-dir", filepath.Join(notDir, "state"), "-socket", sock, "-host-id", "h",
		"-kernel", "/nonexistent", "-initrd", "/nonexistent.cpio", "-vmm", "/nonexistent-vmm", "-image", "/nonexistent.ext4",
		"-sailbox-net", "/nonexistent-net",
	}, io.Discard, io.Discard)
	requireProblems(t, problemsOf(t, err),
		[]string{"-state-dir"}, []string{"-image /nonexistent.ext4"},
		[]string{"-kernel /nonexistent"}, []string{"-initrd /nonexistent.cpio"}, []string{"-vmm /nonexistent-vmm"},
		[]string{"-sailbox-net /nonexistent-net"}, []string{"/dev/kvm"},
	)
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("a refused daemon made its socket: %v", err)
	}

	// A good configuration starts (the state directory's check only).
	good := goodBackend(t, dir)
	kvmErr = nil
	runBriefly(t, sock, "-state-dir", filepath.Join(dir, "state"), "-socket", sock, "-host-id", "h",
		"-kernel", good.Kernel, "-initrd", good.Initrd, "-vmm", good.VMM)
}

// sailboxd itself, as a new user runs it with a kernel that does not
// exist: it exits with status 1, naming the flag and the path on stderr
// after its name, and serves nothing. (The test binary runs main as
// sailboxd when $SAILBOXD_TEST_MAIN is set.)
func TestSailboxdExitsOnABadKernel(t *testing.T) {
	if os.Getenv("SAILBOXD_TEST_MAIN") == "1" {
		os.Args = append([]string{"sailboxd"}, strings.Fields(os.Getenv("SAILBOXD_TEST_ARGS"))...)
		main()
		os.Exit(0) // main returned: it served and stopped
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "d.sock")
	cmd := exec.Command(os.Args[0], "-test.run=^TestSailboxdExitsOnABadKernel$")
	cmd.Env = append(os.Environ(), "SAILBOXD_TEST_MAIN=1",
		"SAILBOXD_TEST_ARGS=-kernel /nonexistent -state-dir "+filepath.Join(dir, "state")+" -socket "+sock+" -host-id h")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("sailboxd -kernel /nonexistent: %v, want exit status 1; stderr:\n%s", err, stderr.String())
	}
	if msg := stderr.String(); !strings.HasPrefix(msg, "sailboxd: ") || !strings.Contains(msg, "-kernel /nonexistent: no such file") {
		t.Errorf("stderr does not name the kernel's problem:\n%s", msg)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("a refused sailboxd made its socket: %v", err)
	}
}
