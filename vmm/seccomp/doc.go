// Package seccomp is sailbox-vmm's system-call filter, as Firecracker has
// one: once start-up is over, just before the guest runs, Install confines
// every thread of the VMM, and every thread started later, to an
// allow-list of the calls the VMM makes from then on (allowlist.go).
//
// # Threat model
//
// The guest is an adversary, and the VMM parses what it writes: virtqueue
// descriptors, block requests, vsock packets. A bug there could hand the
// guest the VMM process. The filter bounds what it gets: the calls on the
// list, as the VMM's user. Never a new program (execve, execveat), a new
// process (fork, vfork; clone without CLONE_THREAD; clone3 answers
// ENOSYS), another process's memory or control (ptrace,
// process_vm_readv/writev, pidfd_getfd), a signal to another process
// (kill and tgkill only at this one), the network (socket only for
// AF_UNIX), a new listening socket (bind, listen), an ioctl of a driver
// other than KVM and userfaultfd, a prctl other than naming mappings,
// mounts, namespaces, BPF, perf events, kernel modules or kexec,
// io_uring, keys, or a change of user or capabilities; no_new_privs is
// set too. A call off the list kills the whole VMM (Kill), as if by
// SIGSYS, before the call runs.
//
// # What it still allows, and why
//
//   - ioctl with KVM's and userfaultfd's requests (their type byte),
//     on any descriptor: KVM is driven by ioctls on the VM and vCPU
//     descriptors, write tracking by ioctls on a userfaultfd. Which
//     descriptor a request goes to, and its argument, are not checked, so
//     an escaped guest can create VMs on /dev/kvm or change its own VM.
//     Other drivers' requests (a terminal's TIOCSTI, block devices, file
//     systems, network) are refused.
//   - openat, mkdirat, unlinkat, renameat(2), linkat, fchmod: checkpoints
//     create layer files, directories and manifests in the store, seal them
//     read-only, rename them into place and delete debris; the console log
//     rotates. So the filter does not confine the VMM's files: whatever its
//     user may open, an escaped guest may too. Confining the file system is
//     Landlock's and the VMM's user's job, not this filter's.
//   - socket (AF_UNIX) and connect: the vsock device dials
//     <vsock-uds>_PORT for the guest's connections, and a restored VMM
//     dials its own guest's agent. Any Unix socket its user may connect to
//     is reachable.
//   - mmap and mprotect without argument checks: the Go runtime needs them,
//     so memory may be made executable.
//
// Arguments are checked only where a few alternatives of one comparison
// each say enough (argRules): go-seccomp-bpf v1.6.0 cannot soundly check
// more (filter.go).
//
// # Modes, and finding a missing call
//
// -seccomp kill (the default) kills; trap sends SIGSYS instead, which the
// Go runtime reports as "SIGSYS: bad system call" with the stack of the
// goroutine that made the call (the number in its syscall.Syscall or
// RawSyscall frame is the call's); off installs nothing. A call made with
// signals blocked, as thread creation is, dies without a stack even in
// trap mode. Either way the kernel logs the death with the call's number
// (dmesg: "audit: type=1326 ... sig=31 ... syscall=N"). A call the list
// lacks is a bug of the list: the kvm tier runs the VMMs it starts as
// processes under Kill.
package seccomp
