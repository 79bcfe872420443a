// Command sailbox-demo is the project's main job: it shows what Sailbox can
// do today on this host's real KVM. `make demo` runs it, inside the KVM lab
// when the host has no usable /dev/kvm.
//
// It starts the real daemon (sailboxd) on a fresh state directory and
// socket, with a small ext4 base image, then walks one box through its
// lifecycle with the real CLI (sail), printing each command as a user
// would type it, its output and how long it took: create, list, exec,
// checkpoint, fork of the running box (the child has the parent's memory
// but its own hostname), sleep, wake by exec, terminate. Every step must
// succeed; on a failure it prints the tail of the daemon's log. At the end,
// on success or not, it terminates every box and stops the daemon.
//
// sailboxd, sail and sailbox-vmm are taken from beside this executable
// unless flags say otherwise; the guest kernel and initramfs from
// $SAILBOX_GUEST_KERNEL and $SAILBOX_GUEST_INITRAMFS.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/sailbox-dev/sailbox/internal/cli"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

func main() { cli.Main("sailbox-demo", run) }

// config is the demo's configuration, from flags.
type config struct {
	Sailboxd string // the daemon binary
	Sail     string // the CLI binary
	VMM      string // sailbox-vmm, which the daemon runs per box
	Kernel   string
	Initrd   string
	// Image is the boxes' root file system image (sailboxd -image); ""
	// gives them an empty ext4 data disk and the initramfs as root.
	Image     string
	MemoryMiB int // the daemon's default for new boxes
}

// beside is the file name next to this executable ("" if that is unknown).
func beside(name string) string {
	self, err := os.Executable()
	if err != nil {
		return ""
	}
	return filepath.Join(filepath.Dir(self), name)
}

func parseArgs(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("sailbox-demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	fs.StringVar(&c.Sailboxd, "sailboxd", beside("sailboxd"), "the daemon `binary`")
	fs.StringVar(&c.Sail, "sail", beside("sail"), "the CLI `binary`")
	fs.StringVar(&c.VMM, "vmm", beside("sailbox-vmm"), "the sailbox-vmm `binary` the daemon runs")
	fs.StringVar(&c.Kernel, "kernel", os.Getenv("SAILBOX_GUEST_KERNEL"), "guest kernel `bzImage` (default $SAILBOX_GUEST_KERNEL)")
	fs.StringVar(&c.Initrd, "initrd", os.Getenv("SAILBOX_GUEST_INITRAMFS"), "guest `initramfs` (default $SAILBOX_GUEST_INITRAMFS)")
	fs.StringVar(&c.Image, "image", os.Getenv("SAILBOX_DEFAULT_IMAGE"), "the boxes' root file system `image`, as sailboxd -image takes it (default $SAILBOX_DEFAULT_IMAGE, which make demo sets to image/build.sh's Debian image); empty: an empty data disk")
	fs.IntVar(&c.MemoryMiB, "mem", 256, "guest memory of each box, MiB")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if c.MemoryMiB <= 0 {
		return c, fmt.Errorf("-mem %d is not positive", c.MemoryMiB)
	}
	return c, nil
}

// resolve makes c's paths absolute and reports, before anything starts, a
// file or tool the demo lacks, with what provides it.
func (c *config) resolve() error {
	const built = "make demo builds it; or: go build -o bin/ ./cmd/..."
	for _, f := range []struct {
		what string
		path *string
		hint string
	}{
		{"sailboxd binary", &c.Sailboxd, built},
		{"sail binary", &c.Sail, built},
		{"sailbox-vmm binary", &c.VMM, built},
		{"guest kernel", &c.Kernel, "make demo builds it (kernel/build.sh); or give -kernel or $SAILBOX_GUEST_KERNEL"},
		{"guest initramfs", &c.Initrd, "make demo builds it (guestagent/initramfs.sh); or give -initrd or $SAILBOX_GUEST_INITRAMFS"},
	} {
		if *f.path == "" {
			return fmt.Errorf("no %s (%s)", f.what, f.hint)
		}
		abs, err := filepath.Abs(*f.path)
		if err == nil {
			_, err = os.Stat(abs)
		}
		if err != nil {
			return fmt.Errorf("%s: %w (%s)", f.what, err, f.hint)
		}
		*f.path = abs
	}
	if c.Image != "" {
		if _, err := os.Stat(c.Image); err == nil {
			if abs, err := filepath.Abs(c.Image); err == nil {
				c.Image = abs
			}
		}
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		return fmt.Errorf("the base image needs mkfs.ext4: %w (build/deps.sh installs e2fsprogs)", err)
	}
	return nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	c, err := parseArgs(args, stderr)
	if err != nil {
		return err
	}
	if err := c.resolve(); err != nil {
		return err
	}
	// Refuse early, with KVM's own reason, rather than in a box's VMM log.
	sys, err := kvm.OpenUsable()
	if err != nil {
		return err
	}
	sys.Close()
	fmt.Fprintf(stdout, "# Sailbox on %s, backed by %s\n", kvm.DevicePath, kvm.HostBackend())

	// Short, because the daemon's and the boxes' Unix sockets live under
	// it and their paths must fit in 108 bytes.
	dir, err := os.MkdirTemp("", "sbdemo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if dir, err = filepath.Abs(dir); err != nil {
		return err
	}

	d, err := startDaemon(ctx, c, dir, stdout)
	if err != nil {
		return err
	}
	defer func() {
		if stopErr := d.stop(); stopErr != nil {
			err = errors.Join(err, stopErr)
		}
	}()
	fmt.Fprintf(stdout, "$ export %s\n", shellJoin(d.env()))
	s := &session{sail: c.Sail, env: append(os.Environ(), d.env()...), out: stdout, rootImage: c.Image != ""}
	if s.rootImage {
		if s.fileURL, err = serveFile(ctx); err != nil {
			return err
		}
	}
	if err := s.walkthrough(ctx); err != nil {
		d.printLogs(stderr)
		return err
	}
	return nil
}
