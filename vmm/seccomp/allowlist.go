package seccomp

import (
	seccompbpf "github.com/elastic/go-seccomp-bpf"
	"golang.org/x/sys/unix"
)

// allowed is every system call sailbox-vmm may make once its guest runs,
// each named once, grouped by who needs it. Arguments are not looked at,
// except by the argument rules below. Start-up (opening /dev/kvm, the
// kernel, disks and checkpoint layers, building the machine, binding the
// sockets) is over before the filter goes on, so what only start-up does
// is absent: bind, listen, prlimit64, sched_setaffinity, mincore, execve.
var allowed = []struct {
	why   string
	calls []string
}{
	// The Go runtime (runtime/sys_linux_amd64.s, internal/runtime/syscall).
	{"heap and stacks; prctl is the runtime naming its mappings (PR_SET_VMA)",
		[]string{"mmap", "munmap", "madvise", "mprotect", "prctl"}},
	{"OS threads: the runtime starts more as goroutines block, and each vCPU has its own; arch_prctl sets a new thread's TLS",
		[]string{"clone", "arch_prctl", "exit", "exit_group", "gettid", "getpid"}},
	{"scheduling and locks; sched_getaffinity is the runtime re-reading the CPUs it may use (GOMAXPROCS follows them)",
		[]string{"futex", "sched_yield", "sched_getaffinity"}},
	{"signals: preemption and vCPU kicks (SIGURG), SIGTERM, and the runtime raising a fatal signal on itself",
		[]string{"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "tgkill", "kill"}},
	{"the kernel's restart of a sleep or futex wait a signal interrupted",
		[]string{"restart_syscall"}},
	{"time: the vDSO answers most clock reads, these are its fallback and the runtime's sleeps",
		[]string{"clock_gettime", "gettimeofday", "nanosleep", "clock_nanosleep"}},
	{"the network poller (every socket and eventfd is non-blocking)",
		[]string{"epoll_create1", "epoll_ctl", "epoll_pwait", "eventfd2"}},
	{"randomness: the runtime's seeds, crypto/rand for a restored guest's new entropy",
		[]string{"getrandom"}},
	{"the C library's threads and allocator, in a binary built with cgo (the default when a C compiler is present)",
		[]string{"set_robust_list", "rseq", "brk", "mremap"}},

	// Guest memory and KVM.
	{"KVM: KVM_RUN and every other vCPU and VM call, and the userfaultfd's write-protection calls",
		[]string{"ioctl"}},
	{"write tracking for checkpoints: a userfaultfd in asynchronous write-protect mode",
		[]string{"userfaultfd"}},

	// Files: disks, guest memory layers, checkpoints, the console log.
	{"reading and writing open files (disk images, layers, the dirty-page spill file, pagemap, eventfds, irqfds)",
		[]string{"read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "lseek", "close"}},
	{"durability: a layered disk's top and a checkpoint are synced before they count",
		[]string{"fsync", "fdatasync", "ftruncate"}},
	{"copies between descriptors the standard library may choose for io.Copy; uname is its kernel-version check, pipe2 splice's pipe",
		[]string{"copy_file_range", "sendfile", "splice", "pipe2", "uname"}},
	{"checkpoints create files and directories in the store, seal layers read-only, rename into place, and delete debris; the console log rotates",
		[]string{"openat", "mkdirat", "unlinkat", "renameat", "renameat2", "linkat", "fchmod", "getdents64"}},
	{"file metadata and locks: the store's lock, layer sizes, the O_NONBLOCK flag",
		[]string{"fstat", "newfstatat", "statx", "fcntl", "flock"}},

	// Sockets: the control API, the vsock device's host side, the agent.
	{"connections: accepted on the API and vsock sockets bound at start-up, dialled to <vsock-uds>_PORT and to the guest agent",
		[]string{"socket", "connect", "accept4", "getsockopt", "setsockopt", "getsockname", "getpeername", "shutdown"}},
	{"socket I/O the standard library may use besides read and write",
		[]string{"recvfrom", "sendto", "recvmsg", "sendmsg"}},
}

// argRule narrows an allowed call: it is refused when any condition of
// refuse holds of its arguments. In a rule with againstPID, each
// condition's Value is this process's ID.
type argRule struct {
	call       string
	refuse     []seccompbpf.Condition
	againstPID bool
	why        string
}

// ioctl request numbers carry their driver's type in bits 8-15
// (_IOC_TYPE). KVMIO (0xAE) and UFFDIO (0xAA) differ only in bit 2 of it,
// so "the type is one of the two" is: bits 7, 5, 3 and 1 of the type set,
// bits 6, 4 and 0 clear, bit 2 either.
const (
	ioctlTypeSet   = 0xAA << 8 // 1010_1010
	ioctlTypeClear = 0x51 << 8 // 0101_0001
)

// argRules are the allowed calls that are refused for some arguments.
// Each call is also in allowed.
var argRules = []argRule{
	{call: "ioctl", refuse: append(eachBitClear(ioctlTypeSet), cond(1, seccompbpf.BitsSet, ioctlTypeClear)),
		why: "KVM's and userfaultfd's requests only: no terminal (TIOCSTI), block-device, file-system or network ioctl"},
	{call: "socket", refuse: []seccompbpf.Condition{cond(0, seccompbpf.NotEqual, unix.AF_UNIX)},
		why: "Unix sockets only: the VMM has no network, and a guest that escapes into it gets none"},
	{call: "clone", refuse: []seccompbpf.Condition{cond(0, seccompbpf.BitsNotSet, unix.CLONE_THREAD)},
		why: "threads only: no new process, which could outlive the VMM"},
	{call: "prctl", refuse: []seccompbpf.Condition{cond(0, seccompbpf.NotEqual, unix.PR_SET_VMA)},
		why: "the runtime naming its mappings only: no PR_SET_MM, PR_SET_DUMPABLE, PR_CAP_AMBIENT and the like"},
	{call: "kill", refuse: []seccompbpf.Condition{cond(0, seccompbpf.NotEqual, 0)}, againstPID: true,
		why: "this process only: not the daemon, not another box's VMM"},
	{call: "tgkill", refuse: []seccompbpf.Condition{cond(0, seccompbpf.NotEqual, 0)}, againstPID: true,
		why: "this process's threads only"},
}

func cond(arg uint32, op seccompbpf.Operation, v uint64) seccompbpf.Condition {
	return seccompbpf.Condition{Argument: arg, Operation: op, Value: v}
}

// eachBitClear is one condition per bit of mask: ioctl's request (argument
// 1) has that bit clear.
func eachBitClear(mask uint64) []seccompbpf.Condition {
	var cs []seccompbpf.Condition
	for b := uint64(1); b <= mask; b <<= 1 {
		if mask&b != 0 {
			cs = append(cs, cond(1, seccompbpf.BitsNotSet, b))
		}
	}
	return cs
}

// unsupported are calls answered ENOSYS, as if the kernel were older,
// rather than killing the VMM: clone3 is how glibc's pthread_create (in a
// cgo build) starts a thread, falling back to clone on ENOSYS. Allowing
// it would allow a fork, since its flags are in memory a filter cannot
// read.
var unsupported = []string{"clone3"}

// forbidden are calls the filter must never allow: what a guest that
// escaped into the VMM would want next. A test holds allowed to it.
var forbidden = []string{
	"execve", "execveat", "fork", "vfork", "clone3",
	"ptrace", "process_vm_readv", "process_vm_writev", "pidfd_open", "pidfd_getfd",
	"mount", "umount2", "pivot_root", "chroot", "setns", "unshare", "open_by_handle_at",
	"bpf", "perf_event_open", "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
	"io_uring_setup", "keyctl", "add_key", "request_key", "seccomp",
	"bind", "listen", "socketpair", "setuid", "setgid", "setresuid", "setgroups", "capset",
	"chown", "fchown", "fchownat", "mknodat", "symlinkat", "memfd_create", "reboot", "settimeofday", "clock_settime",
}
