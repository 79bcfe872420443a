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
// Unix stream is joined to the guest's vsock stream. [DialHybridVsock]
// performs that handshake; [Client] then speaks the protocol over any
// [net.Conn], which also makes it testable over a Unix socket or a pipe.
//
// # Trust
//
// The agent trusts the host: the host owns the guest's memory and CPUs
// anyway. The host must not trust the agent, because the guest may run
// hostile code. Host-side code in this package therefore bounds everything
// it reads from the guest: frame payloads are at most [MaxPayload] bytes and
// are buffered only as they arrive, the hybrid vsock reply line is at most
// 64 bytes, and every exchange honours the caller's context deadline.
// Callers should always pass a context with a deadline.
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
// stream may exchange other frames before the terminal frame. The host
// closes the connection once it has the terminal frame; until then the
// agent discards anything more it receives, since closing a Unix or vsock
// socket with unread data resets the connection and can destroy an answer
// still in flight. Half-closing a stream (shutdown(SHUT_WR)) is never part of
// the protocol, since not every transport between host and guest passes it
// on: the end of a stream is always an explicit frame.
//
// Only the "health" op ([OpHealth]) is implemented. The protocol reserves
// room for these, which are planned with the frame sequences shown
// (host → agent, agent → host):
//
//	exec         → Request{argv, env, cwd, timeout, ...}
//	             → Stdin* StdinEOF    (optional; Signal frames at any time)
//	             ← Stdout*, Stderr*   (interleaved, in the order produced)
//	             ← Response{exit code, signal, timed out} | Error
//	read_file    → Request{path, ...}
//	             ← Stdout* (the file's bytes), then Response{size} | Error
//	write_file   → Request{path, mode, ...}, Stdin* StdinEOF (the bytes)
//	             ← Response{bytes written} | Error
//	stat         → Request{path}           ← Response{size, mode, times} | Error
//	set_clock    → Request{unix nanos}     ← Response{} | Error
//	add_entropy  → Request{seed bytes}     ← Response{} | Error
//
// Stream frames are bounded by MaxPayload like any other, so bulk data is
// split across as many frames as it needs, and flow control is the
// transport's: a side that stops reading eventually blocks the writer.
//
// # Evolution
//
// [GuestSchemaVersion] is an integer that names the protocol revision. It
// is bumped on every incompatible change, that is one an agent or host of
// the previous revision would misread: changing the frame header, renumbering
// a frame type, changing the type or meaning of an existing JSON field,
// removing an op or a field, making an optional field mandatory, or changing
// the frame sequence of an existing op. Compatible changes do not bump it:
// adding an op (older agents answer with [CodeUnknownOp]), adding an optional
// field whose zero value means the old behaviour (both sides ignore fields
// they do not know), or adding an error code (callers treat unknown codes
// like [CodeInternal]).
//
// Some things never change, in any revision, so that any host can always ask
// any agent which revision it speaks: the frame header, the numbers of
// FrameRequest, FrameResponse and FrameError, the [Request] envelope, the
// [Error] payload, and the health op with its [HealthResponse]. A host
// should call [Client.Health] once the guest is up and refuse to use an
// agent whose GuestSchemaVersion differs from its own. [AgentVersion]
// identifies the agent's build for humans and logs; it never decides
// compatibility.
package guestagent
