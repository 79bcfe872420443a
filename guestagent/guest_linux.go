package guestagent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

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

// defaultGuestSystem returns the guest's own system, for the restored op.
func defaultGuestSystem() guestSystem { return &linuxGuest{root: "/"} }

// linuxGuest is the system of the Linux guest the agent runs in. Its files,
// /etc/hostname and /etc/machine-id, are under root ("/" in a guest);
// /dev/urandom and the system calls are the kernel's whatever root says.
type linuxGuest struct {
	root string
}

func (*linuxGuest) clock() time.Time { return time.Now() }

func (*linuxGuest) setClock(t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return fmt.Errorf("set clock to %v: clock_settime(CLOCK_REALTIME): %w", t.UTC(), err)
	}
	return nil
}

// addEntropy writes seed into the kernel's input pool with RNDADDENTROPY,
// which, unlike a plain write to /dev/urandom, credits it as entropy, and
// then asks the kernel to reseed its CRNG from the pool at once with
// RNDRESEEDCRNG. Both need CAP_SYS_ADMIN.
//
// Kernels before 4.17 have no RNDRESEEDCRNG and answer EINVAL (random's
// ioctl handler rejects requests it does not know) or ENOTTY; then the seed
// waits in the pool for the CRNG's next scheduled reseed, and addEntropy
// reports reseeded false. Since Linux 5.18 crediting the seed already
// reseeds a CRNG that was not yet initialized, but one that was, as in any
// restored guest, reseeds only on request or on schedule.
func (*linuxGuest) addEntropy(seed []byte) (reseeded bool, err error) {
	fd, err := unix.Open("/dev/urandom", unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("add entropy: open /dev/urandom: %w", err)
	}
	defer unix.Close(fd)
	if err := ioctlBytes(fd, unix.RNDADDENTROPY, randPoolInfo(seed)); err != nil {
		return false, fmt.Errorf("add entropy: ioctl(/dev/urandom, RNDADDENTROPY, %d bytes): %w", len(seed), err)
	}
	switch err := ioctl(fd, unix.RNDRESEEDCRNG, 0); err {
	case nil:
		return true, nil
	case unix.ENOTTY, unix.EINVAL:
		return false, nil
	default:
		return false, fmt.Errorf("add entropy: ioctl(/dev/urandom, RNDRESEEDCRNG): %w", err)
	}
}

func (g *linuxGuest) setHostname(name string) error {
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("set hostname %q: %w", name, err)
	}
	_, err := updateHostnameFile(g.root, name)
	return err
}

func (g *linuxGuest) setMachineID(id string) error {
	return writeMachineID(g.root, id)
}
