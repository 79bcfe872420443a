package guestagent

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"time"
)

// Port is the guest vsock port the agent listens on.
const Port uint32 = 1024

// GuestSchemaVersion is the revision of the host–agent protocol this
// package speaks. It is bumped on every incompatible change, and for ops a
// host must be able to count on; see "Evolution" in the package
// documentation. Hosts compare it with the agent's, as reported by the
// health op, before using any other op.
const GuestSchemaVersion = 6

// RestoredSchemaVersion is the first GuestSchemaVersion whose agents have
// the restored op ([Client.Restored]). A box whose agent is older cannot be
// restored or forked safely: nothing would reseed its entropy pool or give
// a fork a new identity. Hosts compare it with the guest_schema_version
// recorded in a snapshot's manifest before restoring or forking from it.
const RestoredSchemaVersion = 2

// DialTCPSchemaVersion is the first GuestSchemaVersion whose agents have
// the dial_tcp op ([Client.DialTCP]), which forwards a TCP connection into
// the guest.
const DialTCPSchemaVersion = 3

// ExecUserSchemaVersion is the first GuestSchemaVersion whose agents run
// an exec as the user that ExecRequest.User names, and move into the box's
// root file system when the kernel command line names one
// (sailbox.root=DEVICE; see MountRoot). An older agent would ignore User
// and run the process as root, so Client.Exec refuses to send one to it.
const ExecUserSchemaVersion = 4

// NetworkSchemaVersion is the first GuestSchemaVersion whose agents
// configure the guest's network at boot when the kernel command line
// says how (sailbox.net=; see ConfigureNetwork). An older agent leaves
// eth0 down, so a host reaches such a guest through dial_tcp, not its
// network.
const NetworkSchemaVersion = 5

// ConnectionResetSchemaVersion is the first GuestSchemaVersion whose
// agents, in the restored op, reset the guest's TCP connections that a
// restore left without a peer (see tcpreset_linux.go), so that a
// program sees ECONNRESET instead of waiting forever. An older agent
// leaves them to the program's own timeouts or keepalives.
const ConnectionResetSchemaVersion = 6

// AgentVersion identifies the build of the agent, for humans and logs only.
// Release builds set it with
//
//	-ldflags "-X github.com/sailbox-dev/sailbox/guestagent.AgentVersion=v1.2.3"
var AgentVersion = "dev"

// MaxPayload is the largest payload a frame may carry, in bytes. Readers
// reject a frame that declares more before allocating anything for it.
const MaxPayload = 1 << 20

// headerLen is the size of a frame header: type byte and big-endian length.
const headerLen = 5

// FrameType is the first byte of a frame; it says what the payload holds
// and which way the frame travels. The numbers are part of the wire
// protocol: a number, once assigned, is never reused for something else.
type FrameType uint8

// Frame types. The numbers of FrameRequest, FrameResponse and FrameError
// are frozen across all schema versions; the package documentation says
// which ops use the others, and how.
const (
	// FrameRequest (host → agent) is the first frame of every connection.
	// Payload: a JSON Request.
	FrameRequest FrameType = 1

	// FrameResponse (agent → host) ends a successful exchange. Payload: the
	// op's JSON result, such as a HealthResponse.
	FrameResponse FrameType = 2

	// FrameStdin (host → agent) carries the op's input byte stream: a
	// process's stdin for exec, file contents for write_file, what the host
	// sends on a dial_tcp connection. Payload: raw bytes.
	FrameStdin FrameType = 3

	// FrameStdout (agent → host) carries the op's output byte stream: a
	// process's stdout for exec, file contents for read_file, what the
	// guest sends on a dial_tcp connection. Payload: raw bytes.
	FrameStdout FrameType = 4

	// FrameStderr (agent → host) carries a process's stderr for exec.
	// Payload: raw bytes.
	FrameStderr FrameType = 5

	// FrameStdinEOF (host → agent) ends the input stream begun by FrameStdin
	// frames. Payload: empty.
	FrameStdinEOF FrameType = 6

	// FrameSignal (host → agent) asks the agent to signal the process group
	// started by exec. Payload: JSON {"signal":N}, N a Linux signal number.
	FrameSignal FrameType = 7

	// FrameError (agent → host) ends a failed exchange. Payload: a JSON
	// Error.
	FrameError FrameType = 8

	// FrameConnected (agent → host, schema version 3) tells the host that
	// dial_tcp has connected, and that the stream frames may begin.
	// Payload: JSON {"remote_addr":"<ip>:<port>"}.
	FrameConnected FrameType = 9

	// FrameStdoutEOF (agent → host, schema version 3) ends the output
	// stream begun by FrameStdout frames, before the terminal frame: for
	// dial_tcp, the guest's end of the connection has stopped sending.
	// Payload: empty.
	FrameStdoutEOF FrameType = 10
)

var frameTypeNames = [...]string{
	FrameRequest:   "request",
	FrameResponse:  "response",
	FrameStdin:     "stdin",
	FrameStdout:    "stdout",
	FrameStderr:    "stderr",
	FrameStdinEOF:  "stdin-eof",
	FrameSignal:    "signal",
	FrameError:     "error",
	FrameConnected: "connected",
	FrameStdoutEOF: "stdout-eof",
}

// String returns the frame type's name, such as "request", or
// "FrameType(0x2a)" for a number with no name.
func (t FrameType) String() string {
	if int(t) < len(frameTypeNames) && frameTypeNames[t] != "" {
		return frameTypeNames[t]
	}
	return fmt.Sprintf("FrameType(0x%02x)", uint8(t))
}

// ErrFrameTooLarge reports a frame whose payload length exceeds MaxPayload.
// It is returned wrapped; test for it with errors.Is.
var ErrFrameTooLarge = errors.New("frame payload too large")

// WriteFrame writes one frame to w. It fails with ErrFrameTooLarge, writing
// nothing, if payload is longer than MaxPayload.
//
// WriteFrame is not safe for concurrent use on the same w: a frame is
// written with one or more calls to w.Write, so goroutines sharing a stream
// must serialize their frames.
func WriteFrame(w io.Writer, typ FrameType, payload []byte) error {
	if len(payload) > MaxPayload {
		return fmt.Errorf("write %v frame: payload length %d exceeds maximum %d: %w",
			typ, len(payload), MaxPayload, ErrFrameTooLarge)
	}
	hdr := make([]byte, headerLen)
	hdr[0] = byte(typ)
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
	bufs := net.Buffers{hdr}
	if len(payload) > 0 {
		bufs = append(bufs, payload)
	}
	// On a net.Conn this is a single writev(2).
	if _, err := bufs.WriteTo(w); err != nil {
		return fmt.Errorf("write %v frame: %w", typ, err)
	}
	return nil
}

// ReadFrame reads one frame from r and returns its type and payload. The
// payload belongs to the caller. To read many frames from one stream, use a
// FrameReader, which reuses its buffer.
//
// ReadFrame returns io.EOF, unwrapped, if r ends before the first byte of
// the frame, an error wrapping io.ErrUnexpectedEOF if r ends inside it, and
// an error wrapping ErrFrameTooLarge if the frame declares more than
// MaxPayload bytes.
func ReadFrame(r io.Reader) (FrameType, []byte, error) {
	fr := FrameReader{r: r}
	return fr.Next()
}

// FrameReader reads successive frames from a stream, reusing one payload
// buffer. It is owned by one goroutine at a time.
type FrameReader struct {
	r   io.Reader
	hdr [headerLen]byte
	buf []byte // reused payload buffer; cap(buf) <= MaxPayload
}

// NewFrameReader returns a FrameReader that reads frames from r. It reads
// exactly the bytes of each frame and never past it, so r may be used
// directly between frames.
func NewFrameReader(r io.Reader) *FrameReader {
	return &FrameReader{r: r}
}

// initialPayloadBuf is how much Next buffers for a frame whose declared
// length exceeds the reused buffer before any of the payload has arrived.
const initialPayloadBuf = 16 << 10

// Next reads the next frame. The payload aliases the FrameReader's buffer
// and is valid only until the next call to Next. Errors are as for
// ReadFrame.
func (fr *FrameReader) Next() (FrameType, []byte, error) {
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		if err == io.EOF {
			return 0, nil, io.EOF // clean end of stream, between frames
		}
		return 0, nil, fmt.Errorf("frame header: %w", err)
	}
	typ := FrameType(fr.hdr[0])
	n := binary.BigEndian.Uint32(fr.hdr[1:])
	if n > MaxPayload {
		return 0, nil, fmt.Errorf("%v frame: payload length %d exceeds maximum %d: %w",
			typ, n, MaxPayload, ErrFrameTooLarge)
	}
	p, err := fr.readPayload(int(n))
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF // the header promised more
		}
		return 0, nil, fmt.Errorf("%v frame payload (%d bytes): %w", typ, n, err)
	}
	return typ, p, nil
}

// readPayload reads n <= MaxPayload bytes into fr.buf.
func (fr *FrameReader) readPayload(n int) ([]byte, error) {
	if n <= cap(fr.buf) {
		p := fr.buf[:n]
		_, err := io.ReadFull(fr.r, p)
		return p, err
	}
	// The declared length is only the peer's claim. Grow the buffer as the
	// bytes arrive, at most doubling each time, so that a peer declaring a
	// large frame and then stalling or hanging up costs memory in proportion
	// to what it sent, not to what it declared.
	p := fr.buf[:0]
	for len(p) < n {
		want := min(n, max(2*len(p), cap(p), initialPayloadBuf))
		if want > cap(p) {
			np := make([]byte, len(p), want)
			copy(np, p)
			p = np
			fr.buf = np
		}
		m, err := io.ReadFull(fr.r, p[len(p):want])
		p = p[:len(p)+m]
		if err != nil {
			return nil, err
		}
	}
	return p, nil
}

// OpHealth is the op of a health check. Its Request has no Args, and its
// result is a HealthResponse. The op is frozen across schema versions.
const OpHealth = "health"

// Request is the payload of a FrameRequest.
type Request struct {
	// Op names the operation, such as OpHealth.
	Op string `json:"op"`
	// Args holds the op's arguments as a JSON object, or nothing for ops
	// that take none.
	Args json.RawMessage `json:"args,omitempty"`
}

// HealthStatusOK is the Status of a healthy agent.
const HealthStatusOK = "ok"

// HealthResponse is the result of the health op.
type HealthResponse struct {
	// Status is HealthStatusOK when the agent is ready to serve requests.
	Status string `json:"status"`
	// AgentVersion is the agent's AgentVersion.
	AgentVersion string `json:"agent_version"`
	// GuestSchemaVersion is the agent's GuestSchemaVersion.
	GuestSchemaVersion int `json:"guest_schema_version"`
}

// Error codes carried by Error.Code. Callers must treat a code they do not
// know like CodeInternal: newer agents may add codes.
const (
	// CodeProtocol reports a framing violation: an oversized or truncated
	// frame, or a frame of a type not expected at that point.
	CodeProtocol = "protocol"
	// CodeBadRequest reports a request whose JSON or arguments are invalid.
	CodeBadRequest = "bad_request"
	// CodeUnknownOp reports an op this agent does not implement.
	CodeUnknownOp = "unknown_op"
	// CodeInternal reports an unexpected failure inside the agent.
	CodeInternal = "internal"
	// CodeNotFound reports a file, or a directory on its path, that does
	// not exist.
	CodeNotFound = "not_found"
	// CodePermission reports that the guest's kernel denied access to a
	// file.
	CodePermission = "permission"
	// CodeExecFailed reports a process that exec could not start: no such
	// program, not executable, or no such working directory.
	CodeExecFailed = "exec_failed"
	// CodeConnRefused reports that dial_tcp's connection was refused:
	// nothing listens on the port in the guest.
	CodeConnRefused = "connection_refused"
	// CodeNetwork reports any other failure of dial_tcp's connection in the
	// guest: a dial that timed out or found no route or no such host, or a
	// connection reset once it was up.
	CodeNetwork = "network"
	// CodeRootUnavailable reports an exec or file op refused because the
	// box's root file system, which the kernel command line names, could
	// not be mounted (schema version 4). The message says why; the guest's
	// console has the agent's log of it.
	CodeRootUnavailable = "root_unavailable"
)

// Error is the payload of a FrameError: an error reported by the agent.
// Client methods return it (wrapped) so that callers can inspect Code with
// errors.As.
type Error struct {
	// Code classifies the error for programs; see the Code constants.
	Code string `json:"code"`
	// Message describes the error for humans.
	Message string `json:"message"`
}

// Error returns the message followed by the code in parentheses.
func (e *Error) Error() string {
	if e.Message == "" {
		return "agent error (" + e.Code + ")"
	}
	return e.Message + " (" + e.Code + ")"
}

// The ops besides health. Their arguments, results and frames are described
// in the package documentation.
const (
	// Schema version 1.
	opExec      = "exec"
	opReadFile  = "read_file"
	opWriteFile = "write_file"
	opStat      = "stat"

	// Schema version 2 (RestoredSchemaVersion).
	opRestored = "restored"

	// Schema version 3 (DialTCPSchemaVersion).
	opDialTCP = "dial_tcp"
)

// maxChunk is the most that a peer puts in one stream frame (FrameStdin,
// FrameStdout or FrameStderr). Receivers accept anything up to MaxPayload;
// senders keep frames small so that the other stream of an exec, and the
// host's signals, are not held up behind a large one.
const maxChunk = 64 << 10

// ExecRequest describes a process for Client.Exec to run in the guest.
type ExecRequest struct {
	// Argv is the program and its arguments. A program name without a slash
	// is looked up in the PATH of the process's environment.
	Argv []string `json:"argv"`
	// Env holds variables, "KEY=value", added to the process's default
	// environment and overriding it. The default is
	// PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
	// HOME=/root TERM=dumb, with HOME the user's home directory when User
	// names one. The agent's own environment is not inherited.
	Env []string `json:"env,omitempty"`
	// Dir is the process's working directory, an absolute path. Empty
	// means the agent's, the root directory in a guest.
	Dir string `json:"dir,omitempty"`
	// User, if not empty, is who the process runs as, in the form of an
	// OCI image's User: "user", "user:group", "uid", "uid:gid" or a mix,
	// names looked up in the guest's /etc/passwd and /etc/group. A user
	// without a group runs with the group of its /etc/passwd entry (0 for
	// a uid that has none) and the supplementary groups /etc/group lists
	// it in; one with a group runs with that group alone. Empty means
	// root, the agent's own user. Agents older than
	// ExecUserSchemaVersion do not know the field; Client.Exec refuses to
	// send it to them.
	User string `json:"user,omitempty"`
	// Timeout, if positive, bounds how long the process may run: when it
	// expires, the agent kills the process group and the result says so.
	// It travels as whole milliseconds, rounded up.
	Timeout time.Duration `json:"-"`
	// Signals, if not nil, carries signal numbers (Linux's, 1 to 64) for
	// the client to deliver to the process group while the process runs.
	// The client stops reading it when the exchange ends.
	Signals <-chan int `json:"-"`
}

// execArgs is the Args of an exec Request.
type execArgs struct {
	ExecRequest
	// Stdin says whether the host streams the process's stdin as FrameStdin
	// frames ended by FrameStdinEOF. If false, stdin is /dev/null.
	Stdin bool `json:"stdin,omitempty"`
	// TimeoutMS is ExecRequest.Timeout in milliseconds; 0 means none.
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
}

// ExecResult is the result of the exec op: how the process ended.
type ExecResult struct {
	// ExitCode is the process's exit status, or -1 if a signal killed it.
	ExitCode int `json:"exit_code"`
	// Signal is the Linux number of the signal that killed the process, or
	// 0 if it exited.
	Signal int `json:"signal"`
	// TimedOut reports that the request's timeout expired and the agent
	// killed the process group.
	TimedOut bool `json:"timed_out"`
}

// signalArgs is the payload of a FrameSignal.
type signalArgs struct {
	Signal int `json:"signal"`
}

// sigkill is SIGKILL's number on Linux, whatever the host's system.
const sigkill = 9

// readFileArgs is the Args of a read_file Request.
type readFileArgs struct {
	Path string `json:"path"`
	// Offset is where to start reading.
	Offset int64 `json:"offset,omitempty"`
	// Length, if positive, is the most to read; 0 reads to the end.
	Length int64 `json:"length,omitempty"`
}

// readFileResult is the result of the read_file op.
type readFileResult struct {
	// Size is how many bytes the agent sent, in FrameStdout frames.
	Size int64 `json:"size"`
}

// WriteOptions says how Client.WriteFile writes a file.
type WriteOptions struct {
	// Mode is the permission bits (at most 0777) of a file that the write
	// creates; the agent's umask does not apply. Zero means 0644.
	Mode fs.FileMode `json:"mode,omitempty"`
	// Append adds the data to the end of the file, creating it if need be.
	// Otherwise the data goes to a temporary file in the same directory
	// that then replaces the file, so that readers see either the old
	// contents or all of the new.
	Append bool `json:"append,omitempty"`
	// CreateDirs creates the file's missing parent directories, with mode
	// 0755.
	CreateDirs bool `json:"create_dirs,omitempty"`
}

// writeFileArgs is the Args of a write_file Request.
type writeFileArgs struct {
	Path string `json:"path"`
	WriteOptions
}

// writeFileResult is the result of the write_file op.
type writeFileResult struct {
	// Written is how many bytes the agent wrote to the file.
	Written int64 `json:"written"`
}

// statArgs is the Args of a stat Request.
type statArgs struct {
	Path string `json:"path"`
}

// FileInfo describes a file in the guest: the result of the stat op.
type FileInfo struct {
	// Name is the last element of the path.
	Name string `json:"name"`
	// Size is the length in bytes of a regular file, and system-dependent
	// for others.
	Size int64 `json:"size"`
	// Mode is the file's type and permission bits, encoded as Go's
	// fs.FileMode.
	Mode fs.FileMode `json:"mode"`
	// ModeString is Mode.String(), such as "-rw-r--r--", for programs in
	// other languages.
	ModeString string `json:"mode_string"`
	// ModTime is the file's modification time; it travels as an RFC 3339
	// string with nanoseconds, in UTC.
	ModTime time.Time `json:"mod_time"`
	// IsDir reports whether the file is a directory.
	IsDir bool `json:"is_dir"`
}

// Bounds on the Entropy of a restored request, in bytes.
const (
	// MinRestoredEntropy is 256 bits, a whole key for the kernel's CRNG.
	MinRestoredEntropy = 32
	// MaxRestoredEntropy is 4096 bits, the size of the kernel's input pool
	// before Linux 5.18; more would be credited only in part.
	MaxRestoredEntropy = 512
)

// RestoredArgs are the arguments of Client.Restored: what the agent fixes
// up in a guest that has just been restored or forked from a snapshot.
// RestoreArgs and ForkArgs fill them in from the host.
type RestoredArgs struct {
	// Time is the host's wall-clock time, to which the agent sets the
	// guest's (CLOCK_REALTIME). Zero means the host's clock when Restored
	// sends the request, which is what a host normally wants: the clock is
	// read as late as possible. It travels as Unix nanoseconds, so it must
	// lie between 1970 and 2262.
	Time time.Time `json:"-"`
	// Entropy is fresh randomness from the host, MinRestoredEntropy to
	// MaxRestoredEntropy bytes, which the agent mixes into the kernel's
	// entropy pool, crediting every bit, before it reseeds the kernel's
	// CRNG. It travels as base64.
	Entropy []byte `json:"entropy"`
	// Hostname, if not empty, is the guest's new hostname: 1 to 64
	// letters, digits, hyphens and dots, not starting with a hyphen or a
	// dot. A fork needs one; see ForkHostname.
	Hostname string `json:"hostname,omitempty"`
	// MachineID, if not empty, is the guest's new machine ID for
	// /etc/machine-id: 32 lowercase hexadecimal digits, not all zero (see
	// machine-id(5)). A fork needs one; see NewMachineID.
	MachineID string `json:"machine_id,omitempty"`
}

// restoredArgs is the Args of a restored Request.
type restoredArgs struct {
	RestoredArgs
	// TimeUnixNano is RestoredArgs.Time in nanoseconds since 1970 UTC.
	TimeUnixNano int64 `json:"time_unix_nano"`
}

// RestoredResult is the result of the restored op: what the agent applied.
// The op applies everything it was asked to or fails, so the result echoes
// the arguments, together with what the host may want to log.
type RestoredResult struct {
	// EntropyBits is how many bits of entropy the agent credited to the
	// kernel's pool: eight per byte of RestoredArgs.Entropy.
	EntropyBits int `json:"entropy_bits"`
	// Reseeded reports that the kernel's CRNG was reseeded at once, so that
	// all random numbers from now on derive from the host's entropy. It is
	// false on kernels before Linux 4.17, which cannot be asked to: there
	// the CRNG takes the new entropy at its next scheduled reseed, within
	// five minutes.
	Reseeded bool `json:"reseeded"`
	// ClockBefore is the guest's wall clock just before the agent set it:
	// how stale the restored clock was.
	ClockBefore time.Time `json:"-"`
	// ClockAfter is the guest's wall clock just after the agent set it.
	// Compared with the host's clock when the answer arrives, it bounds the
	// skew that remains.
	ClockAfter time.Time `json:"-"`
	// Hostname is the hostname the agent set, or "" if it was given none.
	Hostname string `json:"hostname,omitempty"`
	// MachineID is the machine ID the agent wrote, or "" if it was given
	// none.
	MachineID string `json:"machine_id,omitempty"`
	// ConnectionsReset is how many TCP connections with a peer off the
	// guest the agent had the kernel reset: the guest's network is a new
	// one after a restore, which never knew them.
	ConnectionsReset int `json:"connections_reset,omitempty"`
}

// restoredResult is the result of the restored op on the wire.
type restoredResult struct {
	RestoredResult
	// ClockBeforeUnixNano and ClockAfterUnixNano are
	// RestoredResult.ClockBefore and ClockAfter in nanoseconds since 1970
	// UTC.
	ClockBeforeUnixNano int64 `json:"clock_before_unix_nano"`
	ClockAfterUnixNano  int64 `json:"clock_after_unix_nano"`
}

// defaultDialHost is the host that dial_tcp connects to when it is given
// none: the guest's own loopback address.
const defaultDialHost = "127.0.0.1"

// maxDialHost bounds the host of a dial_tcp request, in bytes: the length
// of the longest DNS name.
const maxDialHost = 253

// dialTCPArgs is the Args of a dial_tcp Request.
type dialTCPArgs struct {
	// Host is what to connect to in the guest: an IP address, or a name the
	// guest resolves. Empty means defaultDialHost.
	Host string `json:"host,omitempty"`
	// Port is the TCP port, 1 to 65535.
	Port int `json:"port"`
}

// dialTCPConnected is the payload of a FrameConnected.
type dialTCPConnected struct {
	// RemoteAddr is the address the agent connected to, as "<ip>:<port>"
	// or "[<ipv6>]:<port>".
	RemoteAddr string `json:"remote_addr"`
}

// dialTCPResult is the result of the dial_tcp op: an empty object, which
// says that both directions of the connection ended cleanly.
type dialTCPResult struct{}
