package guestagent

import (
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
)

// The kernel command line parameters that give a box a root file system
// of its own (see MountRoot); the last of each wins. Without rootParam the
// agent stays in its initramfs, as before.
const (
	rootParam       = "sailbox.root"       // the device, such as /dev/vda
	rootFSTypeParam = "sailbox.rootfstype" // its file system type; default defaultRootFSType
	rootFlagsParam  = "sailbox.rootflags"  // mount options, comma-separated
)

// defaultRootFSType is the root's file system type unless the kernel
// command line says otherwise: what the daemon makes image disks with.
const defaultRootFSType = "ext4"

// sysroot is where the agent mounts the box's root before it moves into
// it, as an initramfs's init does.
const sysroot = "/sysroot"

// Mount flags, with the values of Linux's MS_* constants (<linux/mount.h>),
// which are ABI; a Linux test checks them against golang.org/x/sys/unix.
// They are repeated here so that the parsing of rootFlagsParam and the
// table of rootMounts build, and are tested, everywhere.
const (
	msRdonly      = 0x1
	msNosuid      = 0x2
	msNodev       = 0x4
	msNoexec      = 0x8
	msSynchronous = 0x10
	msDirsync     = 0x80
	msNoatime     = 0x400
	msNodiratime  = 0x800
	msRelatime    = 0x200000
	msStrictatime = 0x1000000
	msLazytime    = 0x2000000
)

// mountFlagNames are the options of rootFlagsParam that are mount flags
// rather than options for the file system, as mount(8) names them.
var mountFlagNames = map[string]uintptr{
	"ro":          msRdonly,
	"nosuid":      msNosuid,
	"nodev":       msNodev,
	"noexec":      msNoexec,
	"sync":        msSynchronous,
	"dirsync":     msDirsync,
	"noatime":     msNoatime,
	"nodiratime":  msNodiratime,
	"relatime":    msRelatime,
	"strictatime": msStrictatime,
	"lazytime":    msLazytime,
}

// rootSpec is the root file system the kernel command line names.
type rootSpec struct {
	Device string  // a block device, an absolute path under /dev
	FSType string  // the file system type, such as ext4
	Flags  uintptr // mount flags (ms*) from rootFlagsParam
	Data   string  // the other options of rootFlagsParam, for the file system
}

// rootFromCmdline returns the root file system that cmdline, a kernel
// command line as in /proc/cmdline, names with sailbox.root=DEVICE and
// optionally sailbox.rootfstype=TYPE and sailbox.rootflags=OPT,OPT...;
// ok is false if it names none (or an empty one). It fails for a device
// that is not a clean absolute path under /dev, a malformed type or
// options. Quoted values are not supported.
func rootFromCmdline(cmdline string) (spec rootSpec, ok bool, err error) {
	var dev, fstype, flags string
	for _, f := range strings.Fields(cmdline) {
		if v, found := strings.CutPrefix(f, rootParam+"="); found {
			dev = v
		} else if v, found := strings.CutPrefix(f, rootFSTypeParam+"="); found {
			fstype = v
		} else if v, found := strings.CutPrefix(f, rootFlagsParam+"="); found {
			flags = v
		}
	}
	if dev == "" {
		return rootSpec{}, false, nil
	}
	if !strings.HasPrefix(dev, "/dev/") || filepath.Clean(dev) != dev || len(dev) > 255 {
		return rootSpec{}, false, fmt.Errorf("kernel command line: %s=%q: want a device path under /dev/, such as /dev/vda", rootParam, dev)
	}
	spec = rootSpec{Device: dev, FSType: defaultRootFSType}
	if fstype != "" {
		if !validFSType(fstype) {
			return rootSpec{}, false, fmt.Errorf("kernel command line: %s=%q: want a file system type such as ext4", rootFSTypeParam, fstype)
		}
		spec.FSType = fstype
	}
	var data []string
	for opt := range strings.SplitSeq(flags, ",") {
		switch flag, isFlag := mountFlagNames[opt]; {
		case opt == "" || opt == "defaults":
		case opt == "rw":
			spec.Flags &^= msRdonly
		case isFlag:
			spec.Flags |= flag
		default:
			data = append(data, opt)
		}
	}
	spec.Data = strings.Join(data, ",")
	return spec, true, nil
}

// validFSType reports whether t looks like a Linux file system type: 1 to
// 32 lowercase letters, digits, dots and underscores.
func validFSType(t string) bool {
	if t == "" || len(t) > 32 {
		return false
	}
	for _, r := range t {
		if !('a' <= r && r <= 'z' || '0' <= r && r <= '9' || r == '.' || r == '_') {
			return false
		}
	}
	return true
}

// A rootMount is a file system that the agent mounts in the box's root.
type rootMount struct {
	Source, Target, FSType string
	Flags                  uintptr
	Data                   string
	// Mode is that of the mount point, if the agent has to create it.
	Mode fs.FileMode
}

// rootMounts are the file systems the agent mounts in the box's root, in
// this order, under sysroot before it moves in: what a Linux distribution
// expects to find, with the options its init (systemd) and container
// runtimes give them. A missing mount point is created.
//
// devtmpfs is the kernel's one instance, shared with the initramfs's
// /dev, and devpts a new instance whose ptmx anyone may open: /dev/ptmx,
// whether devtmpfs's character device or u-root's link to pts/ptmx,
// opens it (Linux 4.7 and later look ptmx's devpts up beside it).
var rootMounts = []rootMount{
	{"proc", "/proc", "proc", msNosuid | msNodev | msNoexec, "", 0o555},
	{"sysfs", "/sys", "sysfs", msNosuid | msNodev | msNoexec, "", 0o555},
	{"devtmpfs", "/dev", "devtmpfs", msNosuid, "mode=0755", 0o755},
	{"devpts", "/dev/pts", "devpts", msNosuid | msNoexec, "newinstance,ptmxmode=0666,mode=0620,gid=5", 0o755},
	{"tmpfs", "/dev/shm", "tmpfs", msNosuid | msNodev, "mode=1777", 0o1777},
	{"tmpfs", "/tmp", "tmpfs", msNosuid | msNodev, "mode=1777", 0o1777},
	{"tmpfs", "/run", "tmpfs", msNosuid | msNodev, "mode=0755", 0o755},
}

// devLinks are the symbolic links in /dev that udev or systemd would make
// and devtmpfs does not: /dev/fd for bash's process substitution, and
// /dev/stdin and the like. The agent adds those that are missing.
var devLinks = []struct{ Name, Target string }{
	{"/dev/fd", "/proc/self/fd"},
	{"/dev/stdin", "/proc/self/fd/0"},
	{"/dev/stdout", "/proc/self/fd/1"},
	{"/dev/stderr", "/proc/self/fd/2"},
}
