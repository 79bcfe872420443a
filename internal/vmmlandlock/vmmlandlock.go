// Package vmmlandlock confines sailbox-vmm's file system with Landlock:
// once start-up is over, just before the guest runs (and before the
// seccomp filter, which does not allow Landlock's calls), Restrict
// leaves every thread of the VMM only the files its Launch names (Rules).
//
// # Why
//
// The guest is an adversary and the VMM parses what it writes; the seccomp
// filter (vmm/seccomp) bounds the calls an escaped guest could make, but
// not which files it could open with them: checkpoints create, rename and
// delete files, so open, rename and unlink stay allowed. Landlock bounds
// the files, whatever the VMM's user may otherwise reach (root included:
// Landlock is not discretionary access control, and capabilities do not
// bypass it).
//
// # What a VMM keeps
//
// Everything the VMM opened before Restrict stays usable (/dev/kvm, the
// VM and vCPU descriptors, a restore's layer files and mapped memory).
// From then on it may:
//
//   - read the kernel, the initramfs, read-only disk images and the base
//     images of layered disks; read and write its raw writable disks;
//   - read, create, rename, link and delete files and directories under
//     the checkpoint store (checkpoints, memory and disk layers, disk
//     tops, working sets, the store's lock; a sealed top moves from
//     tops/ into layers/, a staged checkpoint into checkpoints/);
//   - in the directories of its control socket, its vsock socket and its
//     console log (the box's run directory, for sailboxd): create, write,
//     rotate and delete files and sockets, and connect to the Unix
//     sockets there (guest connections to host port P dial
//     <vsock_uds>_P). Landlock confines connections only from ABI 9:
//     before, the VMM reaches every Unix socket its user may;
//   - read /proc: /proc/cpuinfo at every checkpoint, the VMM's own
//     pagemap, smaps, status and threads. All of /proc, not /proc/self: a
//     rule holds an inode, and procfs makes a new one for /proc/PID each
//     time it looks the directory up again, so a rule there could lapse.
//     Landlock itself keeps a confined VMM from the ptrace-guarded files
//     of every process outside its domain (mem, environ, maps, ...).
//
// The network device's socket (vmmapi.Launch.NetSocket) needs no rule:
// the VMM connects to it during start-up, before Restrict, and never
// again. Landlock looks at a pathname Unix socket when a call resolves
// its path (connect, or a send naming an address, confined from ABI 9),
// not at the messages of a socket connected before the domain existed.
//
// Nothing else: no other file, no program to execute, no device to open
// (so no ioctl on a new one), no TCP or UDP bind or connect (Landlock
// ABI 4 and 10), no abstract Unix socket or signal reaching a process
// outside the VMM (ABI 6). Open of anything else fails with EACCES.
//
// # Older kernels
//
// Restrict enforces as much as the host's Landlock ABI offers (go-landlock's
// best effort): path rules from ABI 2 (Linux 5.19), truncation from ABI 3,
// and so on. Without Landlock (before 5.13, or not enabled at boot), and
// with ABI 1, which cannot allow the store's moves between directories,
// nothing is confined: Restrict then logs a warning and the VMM runs as
// before. -landlock=false (vmmapi.Launch.NoLandlock) turns it off, to find
// out whether a failure is a missing rule.
package vmmlandlock

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"time"

	"github.com/landlock-lsm/go-landlock/landlock"
	llsys "github.com/landlock-lsm/go-landlock/landlock/syscall"

	"github.com/sailbox-dev/sailbox/api/vmmapi"
)

// Access is what a Rule lets the VMM do at its path.
type Access int

const (
	// ReadFile: open the file for reading.
	ReadFile Access = iota
	// ReadWriteFile: open the file for reading and writing, and truncate
	// it.
	ReadWriteFile
	// ReadTree: read the files and list the directories beneath.
	ReadTree
	// StoreTree: beneath it, read, write and truncate files, list,
	// create and delete files and directories, and move or link them
	// between directories beneath it.
	StoreTree
	// BoxDir: beneath it, read, write and truncate files, create and
	// delete files and sockets, rename files within a directory (log
	// rotation), and connect to Unix sockets whatever process listens.
	BoxDir
)

func (a Access) String() string {
	switch a {
	case ReadFile:
		return "read file"
	case ReadWriteFile:
		return "read-write file"
	case ReadTree:
		return "read tree"
	case StoreTree:
		return "store tree"
	case BoxDir:
		return "box directory"
	}
	return fmt.Sprintf("Access(%d)", int(a))
}

// rights are a's Landlock access rights, for the newest ABI go-landlock
// knows; Restrict drops those the host's kernel lacks.
func (a Access) rights() landlock.AccessFSSet {
	const (
		read     = llsys.AccessFSReadFile
		write    = llsys.AccessFSWriteFile | llsys.AccessFSTruncate
		listDir  = llsys.AccessFSReadDir
		files    = llsys.AccessFSMakeReg | llsys.AccessFSRemoveFile
		dirs     = llsys.AccessFSMakeDir | llsys.AccessFSRemoveDir
		sockets  = llsys.AccessFSMakeSock | llsys.AccessFSResolveUnix
		reparent = llsys.AccessFSRefer
	)
	switch a {
	case ReadFile:
		return read
	case ReadWriteFile:
		return read | write
	case ReadTree:
		return read | listDir
	case StoreTree:
		return read | write | listDir | files | dirs | reparent
	case BoxDir:
		return read | write | listDir | files | sockets
	}
	panic(fmt.Sprintf("vmmlandlock: unknown access %d", int(a)))
}

// Rule lets the VMM do Access at Path (a file, or a directory and
// everything beneath it).
type Rule struct {
	Path   string
	Access Access
	Why    string
}

// procDir is read-only to every VMM: see the package comment.
const procDir = "/proc"

// Rules are the file-system rights a VMM started with l keeps once the
// guest runs: what l names, and /proc. A path named twice keeps one rule
// per kind of access. Relative paths are relative to the VMM's working
// directory, as in l.
func Rules(l vmmapi.Launch) []Rule {
	var rules []Rule
	add := func(path string, a Access, why string) {
		if path == "" {
			return
		}
		path = filepath.Clean(path)
		if slices.ContainsFunc(rules, func(r Rule) bool { return r.Path == path && r.Access == a }) {
			return
		}
		rules = append(rules, Rule{Path: path, Access: a, Why: why})
	}
	add(l.Kernel, ReadFile, "the guest kernel")
	add(l.Initrd, ReadFile, "the initramfs")
	for _, d := range l.Disks {
		switch {
		case d.Layered:
			add(d.Path, ReadFile, "the base image of a layered disk")
		case d.ReadOnly:
			add(d.Path, ReadFile, "a read-only disk image")
		default:
			add(d.Path, ReadWriteFile, "a writable disk image")
		}
	}
	add(l.Store, StoreTree, "the checkpoint store: checkpoints, layers, disk tops, working sets")
	if l.APISocket != "" {
		add(filepath.Dir(l.APISocket), BoxDir, "the control socket's directory")
	}
	if l.VsockUDS != "" {
		add(filepath.Dir(l.VsockUDS), BoxDir, "the vsock socket's directory: guest connections dial <vsock_uds>_PORT")
	}
	if l.ConsoleLog != "" {
		add(filepath.Dir(l.ConsoleLog), BoxDir, "the console log's directory: it rotates to console_log.1")
	}
	add(procDir, ReadTree, "/proc/cpuinfo at checkpoints; the VMM's own pagemap, smaps and threads")
	return rules
}

// config is the Landlock ABI the rules were written for (its file
// system, network and IPC scopes, all handled). A newer ABI restricts
// more: check what the VMM needs of it (go-landlock documents each
// version) before moving on.
var config = landlock.V11

// Restrict confines every thread of this process, and every thread it
// starts later, to Rules(l), as far as the host's Landlock allows, unless
// l.NoLandlock. Call it once start-up is over, just before the guest
// runs: it cannot be undone. A kernel without a usable Landlock is not an
// error: it is logged to log, and nothing is confined. An error means the
// rules could not be applied (a path l names is missing, say); sailbox-vmm
// then does not run the guest.
func Restrict(l vmmapi.Launch, log *slog.Logger) error {
	if l.NoLandlock {
		return nil
	}
	switch abi, err := llsys.LandlockGetABIVersion(); {
	case err != nil:
		log.Warn("landlock: the host kernel has none (before Linux 5.13, or not in its lsm= list); the VMM's files are not confined", "err", err)
	case abi < 2:
		log.Warn("landlock: the host kernel's ABI 1 cannot let checkpoints move files between directories (Linux 5.19 can); the VMM's files are not confined", "abi", abi)
	}
	// Load the local time zone while /etc is reachable: log records
	// after this would otherwise come out in UTC.
	time.Now().Zone()
	var rules []landlock.Rule
	for _, r := range Rules(l) {
		rules = append(rules, landlock.PathAccess(r.Access.rights(), r.Path))
	}
	if err := config.BestEffort().Restrict(rules...); err != nil {
		return fmt.Errorf("landlock: %w", err)
	}
	return nil
}
