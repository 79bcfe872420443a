package main

// Preflight: sailboxd checks its configuration before it serves, and
// refuses to start naming every problem at once (the flag, the path, what
// is wrong and how to fix it), rather than starting and failing at the
// first create.
//
// Two groups of checks, run where their subject is built:
//   - checkConfig (run): the state directory, the default image and the
//     image directories, whatever the backend;
//   - checkBackend (newBackend, the real one): the guest kernel, the
//     initramfs, the VMM and sailbox-net binaries and /dev/kvm, which only the real backend
//     needs; the unit tests' fake backend skips them, and test them
//     through checkBackend's injectable KVM opener.

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/sailbox-dev/sailbox/internal/daemon"
	"github.com/sailbox-dev/sailbox/kernel"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// problem is one thing wrong with the configuration.
type problem struct {
	what  string // the flag and its value ("-kernel /x"), or the device
	wrong string // what is wrong with it
	fix   string // how to fix it; may be empty
}

func (p problem) String() string {
	s := p.what + ": " + p.wrong
	if p.fix != "" {
		s += " (" + p.fix + ")"
	}
	return s
}

// preflightError is every problem preflight found.
type preflightError []problem

func (e preflightError) Error() string {
	if len(e) == 1 {
		return e[0].String()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d problems with the configuration:", len(e))
	for _, p := range e {
		b.WriteString("\n  ")
		b.WriteString(p.String())
	}
	return b.String()
}

// asError is the problems as an error, nil when there are none.
func asError(ps []problem) error {
	if len(ps) == 0 {
		return nil
	}
	return preflightError(ps)
}

// preflight checks c and builds the backend (newBackend, which checks what
// the real backend needs), and fails with every problem found.
func preflight(c config, log *slog.Logger) (daemon.Backend, error) {
	ps := checkConfig(c)
	be, err := newBackend(c, log)
	var pe preflightError
	switch {
	case errors.As(err, &pe):
		ps = append(ps, pe...)
	case err != nil && len(ps) == 0:
		return nil, err
		// Otherwise the backend failed over a problem already found (it
		// makes its directories in the state directory).
	}
	if len(ps) > 0 {
		return nil, preflightError(ps)
	}
	return be, nil
}

// checkConfig checks what every backend needs: a state directory the
// daemon can create and write in, and the images it is told to serve. It
// creates the state directory.
func checkConfig(c config) []problem {
	var ps []problem
	if p, ok := checkStateDir(c.StateDir); !ok {
		ps = append(ps, p)
	}
	if c.Image != "" && filepath.IsAbs(c.Image) && !operatorImageExists(c.Image) {
		ps = append(ps, problem{"-image " + c.Image, "no such file or directory",
			"give an existing OCI layout directory, docker save .tar or raw ext4 disk, as image/build.sh builds, or a registry reference such as debian:12"})
	}
	for _, d := range c.ImageDirs {
		if st, err := os.Stat(d); err != nil {
			ps = append(ps, problem{"-image-dir " + d, strings.Replace(reason(err), "no such file", "no such directory", 1), "give an existing directory of images"})
		} else if !st.IsDir() {
			ps = append(ps, problem{"-image-dir " + d, "not a directory", "give the directory that holds the images, not an image"})
		}
	}
	return ps
}

// checkStateDir makes dir (as run always did) and writes a file in it.
func checkStateDir(dir string) (problem, bool) {
	what := "-state-dir " + dir
	fix := "give a directory the daemon's user may write, or run as root for /var/lib/sailbox"
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return problem{what, "cannot create it: " + bare(err), fix}, false
	}
	f, err := os.CreateTemp(dir, ".preflight-*")
	if err != nil {
		return problem{what, "not writable: " + bare(err), fix}, false
	}
	f.Close()
	os.Remove(f.Name())
	return problem{}, true
}

// operatorImageExists mirrors daemon.OperatorImage's reading of an
// absolute -image: the path itself, or the path before a :TAG, @DIGEST
// or :NAME:TAG selector, is a directory or a regular file.
func operatorImageExists(ref string) bool {
	exists := func(p string) bool {
		st, err := os.Stat(p)
		return err == nil && (st.IsDir() || st.Mode().IsRegular())
	}
	if exists(ref) {
		return true
	}
	for i := len(ref) - 1; i > 0; i-- {
		if (ref[i] == ':' || ref[i] == '@') && exists(ref[:i]) {
			return true
		}
	}
	return false
}

// openUsableKVM opens /dev/kvm as the VMM will, and closes it: the stable
// API (KVM_GET_API_VERSION 12) and not kvm_pvm (kvm.OpenUsable).
func openUsableKVM() error {
	sys, err := kvm.OpenUsable()
	if err != nil {
		return err
	}
	return sys.Close()
}

// checkBackend checks what the real backend needs: a bzImage kernel, an
// initramfs, the sailbox-vmm and sailbox-net binaries and a usable
// /dev/kvm (openKVM; the real one is openUsableKVM). It returns a
// preflightError, or nil.
func checkBackend(c config, openKVM func() error) error {
	var ps []problem
	kernelFix := "build one with kernel/build.sh, or set $SAILBOX_GUEST_KERNEL"
	if c.Kernel == "" {
		ps = append(ps, problem{"-kernel", "not given", kernelFix + " or give -kernel"})
	} else if p, ok := checkKernel(c.Kernel, kernelFix); !ok {
		ps = append(ps, p)
	}
	initrdFix := "build one with guestagent/initramfs.sh, or set $SAILBOX_GUEST_INITRAMFS"
	if c.Initrd == "" {
		ps = append(ps, problem{"-initrd", "not given", initrdFix + " or give -initrd"})
	} else if p, ok := checkReadableFile("-initrd "+c.Initrd, c.Initrd, initrdFix); !ok {
		ps = append(ps, p)
	}
	if p, ok := checkBinary("-vmm", c.VMM, "sailbox-vmm"); !ok {
		ps = append(ps, p)
	}
	if p, ok := checkBinary("-sailbox-net", c.Net, "sailbox-net"); !ok {
		ps = append(ps, p)
	}
	if err := openKVM(); err != nil {
		wrong := strings.TrimPrefix(err.Error(), "open ")
		wrong = strings.TrimPrefix(strings.TrimPrefix(wrong, kvm.DevicePath+":"), kvm.DevicePath)
		ps = append(ps, problem{kvm.DevicePath, strings.TrimSpace(wrong), kvmFix(err)})
	}
	return asError(ps)
}

// checkKernel checks that path is a readable bzImage the VMM can boot
// (vmm/boot needs the 64-bit entry point).
func checkKernel(path, fix string) (problem, bool) {
	what := "-kernel " + path
	if p, ok := checkReadableFile(what, path, fix); !ok {
		return p, false
	}
	f, err := os.Open(path)
	if err != nil {
		return problem{what, reason(err), fix}, false
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return problem{what, reason(err), fix}, false
	}
	img, err := kernel.ParseBzImage(f, st.Size())
	if err != nil {
		return problem{what, "not a bootable bzImage: " + strings.TrimPrefix(err.Error(), "bzimage: "), "give arch/x86/boot/bzImage, which kernel/build.sh builds, not a vmlinux"}, false
	}
	if !img.Header.Supports64BitEntry() {
		return problem{what, "a bzImage without a 64-bit entry point (XLF_KERNEL_64)", "build an x86_64 kernel, as kernel/build.sh does"}, false
	}
	return problem{}, true
}

// checkReadableFile checks that path is a non-empty regular file the
// daemon can read.
func checkReadableFile(what, path, fix string) (problem, bool) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			fix = "let the daemon's user read it"
		}
		return problem{what, reason(err), fix}, false
	}
	defer f.Close()
	st, err := f.Stat()
	switch {
	case err != nil:
		return problem{what, reason(err), fix}, false
	case st.IsDir():
		return problem{what, "a directory, not a file", fix}, false
	case !st.Mode().IsRegular():
		return problem{what, "not a regular file", fix}, false
	case st.Size() == 0:
		return problem{what, "an empty file", fix}, false
	}
	return problem{}, true
}

// checkBinary checks that the binary path, given by flag (a program of
// ours, cmd/name), is found and executable, as the backend will run it.
func checkBinary(flag, path, name string) (problem, bool) {
	fix := fmt.Sprintf("build it with `go build -o bin/%s ./cmd/%s` and install it beside sailboxd or on $PATH, or give %s", name, name, flag)
	if _, err := exec.LookPath(path); err != nil {
		var wrong string
		switch {
		case errors.Is(err, fs.ErrNotExist) || errors.Is(err, exec.ErrNotFound):
			wrong = "not found"
			if !strings.Contains(path, "/") {
				wrong = "not found beside sailboxd or on $PATH"
			}
		case errors.Is(err, fs.ErrPermission):
			wrong, fix = "not executable", "chmod +x it, or let the daemon's user run it"
		default:
			wrong = reason(err)
		}
		return problem{flag + " " + path, wrong, fix}, false
	}
	return problem{}, true
}

// kvmFix says how to get a usable /dev/kvm, after err.
func kvmFix(err error) string {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "load kvm_intel or kvm_amd (modprobe), with virtualisation enabled in the firmware; in a VM, enable nested virtualisation"
	case errors.Is(err, fs.ErrPermission):
		return "add the daemon's user to /dev/kvm's group (usually kvm)"
	case strings.Contains(err.Error(), string(kvm.BackendPVM)):
		return "Sailbox needs hardware virtualisation: kvm_intel or kvm_amd; `make test` runs the KVM tier in the KVM lab"
	}
	return "Sailbox needs /dev/kvm from kvm_intel or kvm_amd"
}

// reason is err without the path os.PathError repeats, and a missing
// file said plainly: "no such file".
func reason(err error) string {
	if errors.Is(err, fs.ErrNotExist) {
		return "no such file"
	}
	return bare(err)
}

// bare is err without the operation and path an fs.PathError adds.
func bare(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}
