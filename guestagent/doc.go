// Package guestagent is the Sailbox guest agent and its host-side client:
// the program that runs inside a guest and lets the host act on it, and
// the wire protocol between the two.
//
// # The agent
//
// The agent is a static Go binary (cmd/sailbox-agent) in the guest's
// initramfs. u-root's init mounts the pseudo file systems, reaps zombies
// and then starts the agent, which listens on the guest's vsock port Port
// with [ListenVsock] and answers requests with a [Server].
//
// The host reaches that port through the VMM's hybrid vsock device
// (Firecracker's scheme): it connects to a Unix socket owned by the VMM,
// writes "CONNECT <port>\n", reads "OK <host port>\n", and from then on the
// Unix stream is joined to the guest's vsock stream. vsock.Dial, beside
// the device that answers it, performs that handshake ([NewHybridClient]
// uses it); [Client] then speaks the protocol over any [net.Conn], which
// also makes it testable over a Unix socket or a pipe.
//
// # The box's root
//
// The agent lives outside any image, so that any image works and an
// upgrade swaps only the agent. A box made from an image boots with
// sailbox.root=/dev/vda on its kernel command line (optionally
// sailbox.rootfstype=TYPE, ext4 by default, and sailbox.rootflags=OPTS),
// and before it serves, the agent makes that disk its root ([MountRoot]):
// it mounts it read-write on /sysroot, mounts proc, sysfs, devtmpfs,
// devpts on /dev/pts and tmpfs on /dev/shm, /tmp and /run in it, moves it
// onto / and chroots into it, as switch_root does. From then on every
// process exec starts and every path the file ops take is the image's,
// with no chroot per call; /etc/hostname (if the image has one) and
// /etc/machine-id (unless it holds a valid one) are the box's own, and so
// are the ones a fork's restored op rewrites. u-root's init stays PID 1 in
// the initramfs, which is out of everyone else's reach. Without the
// parameter the agent serves from its initramfs, as before. If the disk
// cannot be mounted (no such device after 5 seconds, not the given type,
// corrupt), the agent logs why on the console and serves all the same,
// answering exec, read_file, write_file and stat with
// [CodeRootUnavailable] and that reason rather than act on the initramfs.
//
// # The guest's network
//
// The guest kernel has no IP autoconfiguration. A box with a network
// boots with sailbox.net=ADDR/BITS,gw=GATEWAY,dns=SERVER,mtu=N on its
// command line ([NetConfig.KernelParam]), and after the root is mounted
// the agent configures eth0 with it through rtnetlink and writes the
// root's /etc/resolv.conf if it has none usable ([ConfigureNetwork]). A
// restore or fork changes nothing: every box's network has the same
// addresses. A failure is logged; the agent serves without a network.
//
// # Trust
//
// The agent trusts the host: the host owns the guest's memory and CPUs
// anyway. The host must not trust the agent, because the guest may run
// hostile code. Host-side code in this package therefore bounds everything
// it reads from the guest: frame payloads are at most [MaxPayload] bytes and
// are buffered only as they arrive, the hybrid vsock reply line is at most
// 64 bytes, and every exchange honours the caller's context deadline.
// Callers should always pass a context with a deadline. The output of exec
// and read_file goes to the caller's writers frame by frame and is never
// accumulated, except by [Client.Run], which stops at 64 MiB; the bytes of
// a dial_tcp connection go straight into the caller's Read buffers.
//
// # Framing
//
// A connection carries exactly one request and its answer, then both sides
// close it. Everything on the stream is a sequence of frames:
//
//	+--------+----------------------+-------------------+
//	| type   | length               | payload           |
//	| 1 byte | 4 bytes, big endian  | length bytes      |
//	+--------+----------------------+-------------------+
//
// A declared length above [MaxPayload] (1 MiB) is a protocol error, reported
// before anything is allocated for it. Frame types are the [FrameType]
// constants; JSON payloads use encoding/json with the field names given by
// the struct tags in this package.
//
// The host opens a connection and sends one [FrameRequest] holding a JSON
// [Request], whose Op names the operation and whose Args carry its
// arguments. The agent answers with exactly one terminal frame, either
// [FrameResponse] (the op's JSON result) or [FrameError] (a JSON [Error]
// with a machine-readable Code and a human-readable Message). Ops that
// stream exchange other frames before the terminal frame. The host closes
// the connection once it has the terminal frame; until then the agent
// discards anything more it receives, since closing a Unix or vsock socket
// with unread data resets the connection and can destroy an answer still
// in flight. (The host of a dial_tcp exchange may close it sooner, to
// close the TCP connection.) Half-closing a stream (shutdown(SHUT_WR)) is
// never part of the protocol, since not every transport between host and
// guest passes it on: the end of a stream is always an explicit frame.
//
// # Operations
//
// Each op's arguments (the Request's Args) and result (the FrameResponse
// payload) are JSON objects with the fields named below; optional fields
// may be left out. The frames of each op are, host → agent and agent →
// host:
//
//	health      → Request{}
//	            ← Response{status, agent_version, guest_schema_version}
//	exec        → Request{argv, env, dir, user, stdin, timeout_ms}
//	            → Stdin* StdinEOF  (only if stdin is true), Signal* (any time)
//	            ← Stdout*, Stderr* (interleaved, in the order produced)
//	            ← Response{exit_code, signal, timed_out} | Error
//	read_file   → Request{path, offset, length}
//	            ← Stdout* (the file's bytes), then Response{size} | Error
//	write_file  → Request{path, mode, append, create_dirs}
//	            → Stdin* StdinEOF  (the file's bytes)
//	            ← Response{written} | Error
//	stat        → Request{path}
//	            ← Response{name, size, mode, mode_string, mod_time, is_dir} | Error
//	restored    → Request{time_unix_nano, entropy, hostname, machine_id}
//	            ← Response{entropy_bits, reseeded, clock_before_unix_nano,
//	                       clock_after_unix_nano, hostname, machine_id} | Error
//	dial_tcp    → Request{host, port}
//	            ← Connected{remote_addr} | Error
//	            then, both directions at once:
//	            → Stdin* StdinEOF
//	            ← Stdout* StdoutEOF
//	            ← Response{} | Error
//
// exec starts argv (argv[0] looked up in the PATH of the process's
// environment) in dir, with env added to a default environment, as user
// (schema version 4: an OCI image's User, "name", "uid" or either followed
// by ":group", resolved against the guest's /etc/passwd and /etc/group;
// root if left out), in the box's root; see [ExecRequest]. A user the
// guest does not know is answered with [CodeExecFailed], a malformed one
// with [CodeBadRequest]. The process leads a new process group, and runs with
// stdin from the host's Stdin frames if stdin is true, from /dev/null
// otherwise; StdinEOF closes it. A Signal frame, {"signal":N} with N a
// Linux signal number, signals the process group; the timeout, a host that
// goes away or stops taking output, a protocol violation, and the agent's
// own shutdown all kill it with SIGKILL. After the process exits, the
// agent forwards what remains in its pipes, and output from processes it
// left behind until they are silent for a moment, then answers with
// [ExecResult]. A process that cannot be started is answered with
// [CodeExecFailed].
//
// read_file sends the bytes of the file at path, an absolute path, from
// offset on and at most length of them (0 for all), reading to the end of
// the file rather than to its reported size; size counts the bytes sent.
// write_file writes the host's bytes to path, creating parent directories
// if create_dirs is true, either appending (append) or replacing the file
// atomically; mode holds the permission bits of a file it creates, 0 for
// 0644; written counts the bytes written ([WriteOptions]). stat describes
// path, following symbolic links ([FileInfo]); mode is a Go fs.FileMode
// and mod_time an RFC 3339 time. File errors carry [CodeNotFound],
// [CodePermission], [CodeBadRequest] (a relative path, a directory where a
// file is needed) or [CodeInternal], with a message that names the path;
// paths are those of the box's root (see "The box's root").
//
// restored (schema version 2) fixes up a guest that has just been restored
// or forked from a snapshot, whose clock is stale and whose kernel random
// number generator is in the state it had when the snapshot was taken,
// which every other restore of that snapshot shares. The host sends its
// wall-clock time in Unix nanoseconds (time_unix_nano, after 1970), and
// [MinRestoredEntropy] to [MaxRestoredEntropy] bytes of fresh randomness
// (entropy, in base64), and for a fork a new hostname and machine ID
// ([RestoredArgs]). The agent checks all of them before it changes
// anything, answering [CodeBadRequest] if one is invalid. It then mixes the
// entropy into the kernel's pool, crediting every bit (the RNDADDENTROPY
// ioctl), and has the kernel reseed its CRNG from it (RNDRESEEDCRNG;
// reseeded is false on kernels before 4.17, which lack it); sets
// CLOCK_REALTIME; sets the hostname, and rewrites /etc/hostname if the
// guest has one; and replaces /etc/machine-id atomically, creating /etc if
// need be. It attempts every step even if one fails, and then answers
// [CodePermission] or [CodeInternal] with a message that says which steps
// were applied. Its result ([RestoredResult]) reports what it applied and
// the guest's clock before and after it set it. Only an agent that runs as
// a guest's ([Server].Guest) performs the op; others answer
// [CodeUnknownOp].
//
// dial_tcp (schema version 3) forwards a TCP connection into the guest:
// the agent connects to port (1 to 65535) of host, an IP address or a
// name the guest resolves, 127.0.0.1 if it is left out; any address the
// guest can reach is allowed; invalid arguments are answered with
// [CodeBadRequest]. The dial must succeed within the server's
// RequestTimeout. If it fails, the agent answers [CodeConnRefused] when
// nothing listens on the port and [CodeNetwork] otherwise, with a message
// that names the address. Once connected, it sends a Connected frame holding the address
// it connected to, and from then on the exchange carries the connection's
// bytes both ways at once: the host's as Stdin frames, the guest's as
// Stdout frames. Each direction ends with its own frame, so that either
// end may half-close: the host's StdinEOF makes the agent shut down its
// sending side of the TCP connection (shutdown(SHUT_WR)), and the agent
// sends StdoutEOF when the guest's end has shut down its own, after which
// the host may still send. Once both directions have ended, the agent
// answers Response{}. A failure of the connection, such as a reset, is
// answered with [CodeNetwork] in place of whatever frames remain, and a
// host frame that has no place, such as Stdin after StdinEOF, with
// [CodeProtocol]. The host may close the agent connection at any time, which closes the TCP
// connection; so does the agent's shutdown, answered with [CodeInternal].
// See [Client.DialTCP].
//
// # Streams and flow control
//
// Stream frames (Stdin, Stdout, Stderr) are bounded by MaxPayload like any
// other, and senders put at most 64 KiB in each, so bulk data travels in
// many frames and memory stays bounded on both sides. Flow control is the
// transport's: a side that stops reading eventually blocks the writer. The
// agent does not wait forever: every frame it sends must be taken within
// the server's RequestTimeout, and every frame of write_file's input must
// arrive within it; otherwise the agent gives up on the exchange, killing
// an exec's process. dial_tcp is the exception: either end of a TCP
// connection may rightly keep quiet, or stop reading, for as long as it
// likes, so its stream frames wait without a deadline, and the connection
// lasts until an end closes it. Its frames too are read in order: bytes
// that the guest's end does not read hold back whatever the host sends
// after them. A host must therefore keep reading an exec's output.
// The agent reads the host's frames in order, so Stdin that a process does
// not read holds back whatever the host sends after it, Signal frames and
// the end of the connection included, until the process reads it or
// exits. The exec's timeout applies regardless: a host that may need to
// stop a process which may stop reading its input should set one.
//
// # Evolution
//
// [GuestSchemaVersion] is an integer that names the protocol revision,
// counting up from 1. It is bumped on every incompatible change, that is
// one an agent or host of the previous revision would misread: changing the
// frame header, renumbering a frame type, changing the type or meaning of
// an existing JSON field, removing an op or a field, making an optional
// field mandatory, or changing the frame sequence of an existing op.
//
// It is also bumped when a revision adds an op that hosts must be able to
// count on, so that they can tell from the number alone whether an agent
// has it: the number is recorded in snapshot manifests and listed for each
// box, and decides, before anyone talks to the agent, whether a box can be
// restored or forked safely or needs its agent upgraded first. Other
// compatible changes do not bump it: adding an op that hosts can do without
// (older agents answer with [CodeUnknownOp]), adding an optional field
// whose zero value means the old behaviour (both sides ignore fields they
// do not know), or adding an error code (callers treat unknown codes like
// [CodeInternal]).
//
// The revisions:
//
//   - 1: health, exec, read_file, write_file and stat.
//   - 2: adds restored ([RestoredSchemaVersion]), which a host must run
//     after every restore or fork. Nothing else changed: an agent of
//     revision 2 serves a host of revision 1, and a host of revision 2 can
//     use an agent of revision 1 for everything but restored, for which
//     [Client.Restored] returns an [AgentTooOldError].
//   - 3: adds dial_tcp ([DialTCPSchemaVersion]), which forwards a TCP
//     connection into the guest, with the frame types Connected (9) and
//     StdoutEOF (10) that only it uses, and the error codes
//     connection_refused and network. Nothing else changed: an agent of
//     revision 3 serves hosts of revisions 1 and 2, and a host of revision
//     3 can use older agents for everything but dial_tcp, for which
//     [Client.DialTCP] returns an [AgentTooOldError].
//   - 4: adds exec's user field ([ExecUserSchemaVersion]), the box's root
//     named by sailbox.root= (see "The box's root"), and the error code
//     root_unavailable; exec's default PATH gains /usr/local/sbin and
//     /usr/local/bin. An older agent would ignore user and run the process
//     as root, and would ignore sailbox.root=, so hosts must be able to
//     tell: [Client.Exec] asks the agent's revision before it sends a user,
//     and returns an [AgentTooOldError] for an older one. Nothing else
//     changed: an agent of revision 4 serves hosts of revisions 1 to 3.
//   - 5: configures the guest's network at boot from sailbox.net=
//     ([NetworkSchemaVersion], [ConfigureNetwork]): eth0's address, MTU
//     and default route, and the root's /etc/resolv.conf. An older agent
//     ignores the parameter and leaves the guest without a network, so
//     hosts must be able to tell: they reach its ports through dial_tcp.
//     The protocol did not change: an agent of revision 5 serves hosts
//     of revisions 1 to 4.
//   - 6: the restored op resets the TCP connections the restore left
//     without a peer ([ConnectionResetSchemaVersion]) and reports how many
//     in the optional connections_reset field. A box on an older agent
//     keeps such connections hanging after a restore or fork, so users
//     must be able to tell from the number listed for a box. The protocol
//     did not change: an agent of revision 6 serves hosts of revisions 1
//     to 5.
//
// Some things never change, in any revision, so that any host can always ask
// any agent which revision it speaks: the frame header, the numbers of
// FrameRequest, FrameResponse and FrameError, the [Request] envelope, the
// [Error] payload, and the health op with its [HealthResponse]. A host
// should call [Client.Health] once the guest is up and refuse to use an
// agent whose GuestSchemaVersion is newer than its own, or older than the
// oldest revision it still supports (see the list above for what each
// revision is compatible with). [AgentVersion] identifies the agent's build
// for humans and logs; it never decides compatibility.
package guestagent
