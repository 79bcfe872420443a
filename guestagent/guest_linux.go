package guestagent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	"golang.org/x/sys/unix"
)

// PrepareGuest readies a freshly booted guest for the host's requests,
// before the agent starts serving:
//
//   - if /bin has a busybox but no sh, it runs "busybox --install -s /bin",
//     so that sh, cat, uname, poweroff and the rest exist;
//   - it sets the hostname from sailbox.hostname=NAME on the kernel command
//     line, or to "sailbox";
//   - it mounts a tmpfs on /tmp unless a file system is mounted there.
//
// It attempts every step and returns their errors joined. It must run only
// in the guest: on a host it would rename and remount the host. A nil
// logger discards its logs.
func PrepareGuest(log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var errs []error
	if installed, err := installBusybox("/bin"); err != nil {
		errs = append(errs, err)
	} else if installed {
		log.Info("agent: installed busybox commands in /bin")
	}

	if err := setHostname(log); err != nil {
		errs = append(errs, err)
	}

	if err := mountTmp(log); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// setHostname sets the hostname that the kernel command line asks for.
func setHostname(log *slog.Logger) error {
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return fmt.Errorf("set hostname: %w", err)
	}
	name, perr := hostnameFromCmdline(string(cmdline))
	if err := unix.Sethostname([]byte(name)); err != nil {
		return errors.Join(perr, fmt.Errorf("set hostname %q: %w", name, err))
	}
	log.Info("agent: hostname set", "hostname", name)
	return perr
}

// mountTmp mounts a tmpfs on /tmp, unless something is mounted there.
func mountTmp(log *slog.Logger) error {
	mounts, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return fmt.Errorf("mount /tmp: %w", err)
	}
	if isMountPoint(string(mounts), "/tmp") {
		return nil
	}
	if err := os.MkdirAll("/tmp", 0o755); err != nil {
		return fmt.Errorf("mount /tmp: %w", err)
	}
	if err := unix.Mount("tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"); err != nil {
		return fmt.Errorf("mount tmpfs on /tmp: %w", err)
	}
	log.Info("agent: mounted a tmpfs on /tmp")
	return nil
}
