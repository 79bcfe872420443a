package guestagent

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// rootDeviceWait bounds how long MountRoot waits for the root's device
// node to appear. virtio-blk devices are probed before the kernel starts
// init, so the node is normally there at once; a box whose disk is
// missing must still come up, only this much later.
const rootDeviceWait = 5 * time.Second

// MountRoot makes the box's disk the agent's root file system, if the
// kernel command line names one with sailbox.root=DEVICE (the daemon does
// for boxes made from an image), and does nothing otherwise. It must run
// in the guest, as root, before the agent serves, and after PrepareGuest
// has set the hostname. It:
//
//   - waits up to 5 seconds for DEVICE to appear in /dev, and mounts it on
//     /sysroot, with the type sailbox.rootfstype=TYPE (ext4 by default)
//     and the options sailbox.rootflags=OPT,... (read-write by default);
//   - grows an ext4 root, online, to fill its device when the device is
//     larger (a box created with a disk size of its own; see
//     growRootFS), logging what it did; a failure to grow is logged and
//     leaves the file system as it was;
//   - mounts proc, sysfs, devtmpfs on /dev, devpts on /dev/pts, and tmpfs
//     on /dev/shm, /tmp (mode 1777) and /run (0755) in it, creating
//     missing mount points, and adds /dev/fd, /dev/stdin, /dev/stdout and
//     /dev/stderr if they are missing;
//   - moves it onto / and changes the agent's root directory to it, as
//     switch_root does (chdir /sysroot; mount --move . /; chroot .).
//     Everything the agent does from then on, every process exec starts
//     and every file op, sees the image's tree, with no chroot per call.
//     The initramfs stays in memory, out of reach; u-root's init, PID 1,
//     keeps it as its root and goes on reaping orphans;
//   - writes the kernel's hostname to the image's /etc/hostname if it has
//     one, and gives it a new /etc/machine-id unless it has a valid one.
//
// It returns an error, naming the device and what failed, only if the
// agent has not moved into the root: then the agent goes on in its
// initramfs, and the error belongs in Server.RootErr, which makes exec
// and the file ops refuse to act on the wrong tree. Failures after the
// move, such as a file system that could not be mounted in the root, are
// logged; the root is usable regardless. A nil logger discards the logs.
func MountRoot(log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return fmt.Errorf("box root: %w", err)
	}
	spec, ok, err := rootFromCmdline(string(cmdline))
	if err != nil {
		return fmt.Errorf("box root: %w", err)
	}
	if !ok {
		return nil
	}
	if err := mountRoot(spec); err != nil {
		return fmt.Errorf("box root %s: %w", spec.Device, err)
	}
	growRootFS(log, spec, sysroot)
	for _, err := range mountInRoot(sysroot) {
		log.Error("agent: box root: "+err.Error(), "device", spec.Device)
	}
	if err := switchRoot(sysroot); err != nil {
		return fmt.Errorf("box root %s: %w", spec.Device, err)
	}
	log.Info("agent: box root mounted on /", "device", spec.Device, "fstype", spec.FSType)

	if name, err := os.Hostname(); err != nil {
		log.Warn("agent: box root: read hostname", "err", err)
	} else if _, err := updateHostnameFile("/", name); err != nil {
		log.Warn("agent: box root: "+err.Error(), "hostname", name)
	}
	if wrote, err := ensureMachineID("/"); err != nil {
		log.Warn("agent: box root: " + err.Error())
	} else if wrote {
		log.Info("agent: box root: wrote a new /etc/machine-id")
	}
	return nil
}

// mountRoot waits for spec's device and mounts it on sysroot.
func mountRoot(spec rootSpec) error {
	if err := waitForDevice(spec.Device, rootDeviceWait); err != nil {
		return err
	}
	if err := os.MkdirAll(sysroot, 0o755); err != nil {
		return err
	}
	err := unix.Mount(spec.Device, sysroot, spec.FSType, spec.Flags, spec.Data)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EINVAL):
		// The kernel says why on the console (e.g. "EXT4-fs (vda): VFS:
		// Can't find ext4 filesystem").
		return fmt.Errorf("mount on %s as %s: %w (not a %s file system, a corrupt one, or bad options %q; see the kernel's log)",
			sysroot, spec.FSType, err, spec.FSType, spec.Data)
	case errors.Is(err, unix.ENODEV):
		return fmt.Errorf("mount on %s as %s: %w (the kernel has no %s support)", sysroot, spec.FSType, err, spec.FSType)
	default:
		return fmt.Errorf("mount on %s as %s: %w", sysroot, spec.FSType, err)
	}
}

// waitForDevice waits up to timeout for dev to exist as a block device.
func waitForDevice(dev string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		fi, err := os.Stat(dev)
		if err == nil && fi.Mode()&fs.ModeDevice != 0 && fi.Mode()&fs.ModeCharDevice == 0 {
			return nil
		}
		if err == nil {
			return fmt.Errorf("%s is not a block device (%v)", dev, fi.Mode().Type())
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no such device after %v (is the disk attached?)", timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// mountInRoot mounts rootMounts and adds devLinks under root, and returns
// what failed: each mount is attempted whatever became of the others.
func mountInRoot(root string) []error {
	var errs []error
	for _, m := range rootMounts {
		target := filepath.Join(root, m.Target)
		if err := os.MkdirAll(target, m.Mode); err != nil {
			errs = append(errs, fmt.Errorf("mount %s on %s: %w", m.FSType, m.Target, err))
			continue
		}
		if err := unix.Mount(m.Source, target, m.FSType, m.Flags, m.Data); err != nil {
			errs = append(errs, fmt.Errorf("mount %s on %s: %w", m.FSType, m.Target, err))
		}
	}
	for _, l := range devLinks {
		err := os.Symlink(l.Target, filepath.Join(root, l.Name))
		if err != nil && !errors.Is(err, fs.ErrExist) {
			errs = append(errs, fmt.Errorf("link %s to %s: %w", l.Name, l.Target, err))
		}
	}
	return errs
}

// switchRoot makes the file system mounted on dir the root of the mount
// namespace and of the agent, the way switch_root(8) does: the initramfs
// (rootfs) cannot be unmounted or pivoted away, so the new root is moved
// over it and the process chroots into it. chroot and chdir act on the
// whole process: Go's threads share their file system context
// (CLONE_FS).
func switchRoot(dir string) error {
	if err := unix.Chdir(dir); err != nil {
		return fmt.Errorf("chdir %s: %w", dir, err)
	}
	if err := unix.Mount(dir, "/", "", unix.MS_MOVE, ""); err != nil {
		unix.Chdir("/")
		unix.Unmount(dir, unix.MNT_DETACH) // and what is mounted in it
		return fmt.Errorf("move %s to /: %w", dir, err)
	}
	// A process's root directory does not follow mounts made over it: the
	// agent, like init, still sees the initramfs until it chroots into the
	// moved mount, its working directory.
	if err := unix.Chroot("."); err != nil {
		unix.Chdir("/")
		return fmt.Errorf("chroot to the moved %s: %w", dir, err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("chdir / in the new root: %w", err)
	}
	return nil
}
