package api

import (
	"time"

	"github.com/sailbox-dev/sailbox/api/lifecycle"
)

// The daemon's API (sailboxd): HTTP+JSON on a Unix socket, every path
// under /v1. openapi.yaml, beside this file, is its contract; a test in
// internal/apiserver fails when the server and the document drift apart.
//
// Errors are an ErrorBody with a 4xx or 5xx status: 400 for a malformed
// request, 404 for an unknown box, 409 for a call the box's state does not
// allow (see package lifecycle) or that conflicts with another box or
// port, 421 for a box that lives on another host, 501 for what the
// daemon's backend cannot do yet, 500 for a failure of the daemon or VM.

// Box is one Sailbox as the daemon reports it.
type Box struct {
	ID    string          `json:"id"`
	State lifecycle.State `json:"state"`
	// GuestSchemaVersion is the protocol revision of the box's guest
	// agent, as it last reported it.
	GuestSchemaVersion int       `json:"guest_schema_version"`
	Created            time.Time `json:"created"`
	// LastCheckpoint is when the box's most recent completed checkpoint
	// was taken; null if it has none.
	LastCheckpoint *time.Time `json:"last_checkpoint"`
	// LastCheckpointID names that checkpoint; "" if none.
	LastCheckpointID string `json:"last_checkpoint_id,omitempty"`
	// ParentID is the box this one was forked from; "" if it was created.
	ParentID string `json:"parent_id,omitempty"`
	// HostID is the placement: the host whose daemon owns the box.
	HostID string `json:"host_id"`
	// PendingUpgrade reports an upgrade recorded while the box was down,
	// applied when it next wakes.
	PendingUpgrade bool `json:"pending_upgrade"`
	MemoryMiB      int  `json:"memory_mib"`
	VCPUs          int  `json:"vcpus"`
	// DiskSizeBytes is the size of the box's disk as its create asked
	// (a fork's as its parent's); absent: its image's size.
	DiskSizeBytes int64  `json:"disk_size_bytes,omitempty"`
	Ports         []Port `json:"ports"`
	// Network is the box's network and its egress policy; absent: the
	// box has no network (it was created with no_network, or before
	// boxes had networks).
	Network *NetworkPolicy `json:"network,omitempty"`
	// Labels are the box's labels, as its create set them (a fork's
	// as its parent's); absent: none.
	Labels map[string]string `json:"labels,omitempty"`
	// IdleTimeoutSeconds, if positive, is how long the box may run
	// unused (no exec, no file call, no connection on an exposed port)
	// before the daemon puts it to sleep.
	IdleTimeoutSeconds int64 `json:"idle_timeout_seconds,omitempty"`
	// TTLSeconds is the box's time to live as last set, by create or
	// extend; 0: the box does not expire.
	TTLSeconds int64 `json:"ttl_seconds,omitempty"`
	// ExpiresAt is when the daemon terminates the box unless it is
	// extended; absent when it has no TTL.
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

// NetworkPolicy is a box's egress policy, enforced by its network when
// the guest opens a connection (at its TCP SYN or a UDP flow's first
// datagram): a refused TCP connection is reset at once, a refused
// datagram dropped, and both logged with the box's ID. In order: a deny
// rule that matches refuses; an allow rule that matches lets through,
// even to the host's own addresses; host-local addresses (loopback,
// link-local, the host's interfaces) are refused; with no_internet,
// everything else is refused, and without it let through.
type NetworkPolicy struct {
	NoInternet bool     `json:"no_internet"`
	Allow      []string `json:"allow,omitempty"`
	Deny       []string `json:"deny,omitempty"`
}

// Port is a host TCP port forwarded to a guest port. A connection to it
// wakes a sleeping box.
type Port struct {
	HostAddr  string `json:"host_addr"` // the listening address, host:port
	HostPort  int    `json:"host_port"`
	GuestPort int    `json:"guest_port"`
}

// Checkpoint is a checkpoint in the daemon's catalog.
type Checkpoint struct {
	ID    string `json:"id"`
	BoxID string `json:"box_id"` // the box it was taken of
	// ParentID is the checkpoint whose layers this one builds on; "" for
	// the first of a chain.
	ParentID  string    `json:"parent_id,omitempty"`
	Created   time.Time `json:"created"`
	Completed bool      `json:"completed"`
}

// CreateRequest asks for a new box. Zero fields take the daemon's
// defaults.
type CreateRequest struct {
	MemoryMiB int `json:"memory_mib,omitempty"`
	VCPUs     int `json:"vcpus,omitempty"`
	// Image is the box's disk, a REF: a path relative to one of the
	// daemon's image directories (sailboxd -image-dir), or an absolute
	// path inside one, naming an OCI image layout directory (DIR,
	// DIR:TAG, DIR@sha256:…), a `docker save` tarball (FILE.tar,
	// FILE.tar:NAME:TAG) or a raw ext4 disk; or a registry reference
	// (docker.io/library/debian:12). An OCI or Docker image is imported
	// once into the daemon's image store and becomes the box's root file
	// system, its config (Env, WorkingDir, User) applied to every exec; so
	// does a raw disk with an image record (<stem>.json) beside it; a raw
	// disk without one is a data disk. The box writes to its own layer
	// over the image. Empty: the daemon's default image.
	Image string `json:"image,omitempty"`
	// DiskSizeBytes is the size of the box's disk: the guest grows its
	// root file system to it when it boots. The image stays one shared,
	// unchanged base; the box's disk is a layer over it, so the host
	// pays only for what the box writes. At least the image's size, at
	// most 1 TiB, rounded up to a multiple of 4096; only with an image
	// that is a root file system. Forks keep it. Zero: the image's size.
	DiskSizeBytes int64 `json:"disk_size_bytes,omitempty"`
	// NoNetwork gives the box no network: no network device (exposed
	// ports then reach the guest's 127.0.0.1 through its agent). By
	// default a box has a network of its own, 192.168.127.0/24 in every
	// box, with a gateway and DNS server at 192.168.127.1; the host's
	// loopback is 192.168.127.254, reachable only if allowed.
	NoNetwork bool `json:"no_network,omitempty"`
	// NoInternet refuses every outbound connection that Allow does not
	// name.
	NoInternet bool `json:"no_internet,omitempty"`
	// Allow and Deny are the box's egress rules, at most 1024 each: a
	// CIDR block (10.0.0.0/8), an address, or a domain name (example.com,
	// covering the names under it, matched against the addresses the
	// box's DNS resolved it to). Deny wins. A malformed rule is refused
	// (400, naming it). Forks inherit the policy.
	Allow []string `json:"allow,omitempty"`
	Deny  []string `json:"deny,omitempty"`
	// Labels are free key=value tags, at most MaxLabels: a key is 1 to
	// 63 characters of letters, digits, '.', '_', '-' and '/', starting
	// with a letter or digit; a value at most 255 characters, none of
	// them a control character. List filters on them
	// (GET /v1/boxes?label=k=v). Forks inherit them.
	Labels map[string]string `json:"labels,omitempty"`
	// IdleTimeoutSeconds, if positive, puts the box to sleep once it
	// has run that long with no exec, no file call and no connection on
	// an exposed port (none in flight, none open); the usual wake rules
	// then apply. Forks inherit it.
	IdleTimeoutSeconds int64 `json:"idle_timeout_seconds,omitempty"`
	// TTLSeconds, if positive, terminates the box that long after its
	// creation unless extended (POST /v1/boxes/{id}/extend). Forks
	// inherit it, counted from their own creation.
	TTLSeconds int64 `json:"ttl_seconds,omitempty"`
}

// Bounds on a create's policies.
const (
	MaxLabels = 64
	// MaxPolicySeconds bounds idle_timeout_seconds and ttl_seconds (and
	// extend's): ten years.
	MaxPolicySeconds = 10 * 365 * 24 * 3600
	// MaxForkCount bounds a fork's count.
	MaxForkCount = 64
)

// ExtendRequest sets a box's expiry to now plus TTLSeconds (positive).
type ExtendRequest struct {
	TTLSeconds int64 `json:"ttl_seconds"`
}

// ForkRequest asks for Count children (1 to MaxForkCount; 0 means 1),
// all restored from one checkpoint of the parent and started
// concurrently: all of them start, or none is left (the children that
// started are terminated and the error returned).
type ForkRequest struct {
	Count int `json:"count,omitempty"`
}

// NetworkStats are the counters of a box's network, since it last
// started: every start of the box's VM (create, wake, restore, fork,
// upgrade) gets a new network, whose counters start at zero. Bytes and
// frames count Ethernet frames between the guest and its network ("out":
// sent by the guest), DNS, DHCP and ARP included.
type NetworkStats struct {
	BoxID string `json:"box_id"`
	// Running: the box's VM runs, and so its network; false: the box is
	// down (paused, sleeping) and every counter is zero.
	Running bool `json:"running"`
	// GuestAttached: the VM is connected to its network.
	GuestAttached bool   `json:"guest_attached"`
	BytesOut      uint64 `json:"bytes_out"`
	BytesIn       uint64 `json:"bytes_in"`
	FramesOut     uint64 `json:"frames_out"`
	FramesIn      uint64 `json:"frames_in"`
	// FramesDropped: malformed frames from the guest, and frames to it
	// the VMM did not take in time.
	FramesDropped uint64 `json:"frames_dropped"`
	// ConnectionsOut: TCP connections and UDP flows the guest opened
	// that the policy let through and the host made.
	ConnectionsOut uint64 `json:"connections_out"`
	// ConnectionsIn: connections into the guest (exposed ports).
	ConnectionsIn uint64 `json:"connections_in"`
	// OpenConnections: outbound connections and flows open now.
	OpenConnections int64 `json:"open_connections"`
	// Refused: outbound connections and datagrams the policy refused.
	Refused uint64 `json:"refused"`
	// RefusedLookups: DNS questions refused under the policy (with
	// no_internet, names no allowed domain covers).
	RefusedLookups uint64 `json:"refused_lookups"`
	// DialFailures: allowed connections the host could not make.
	DialFailures uint64 `json:"dial_failures"`
	// Device: the other end of the link, the box's network device as
	// its VMM counts it; nil while the box is down, or from a VMM that
	// does not report it. The counters above are its network's (the
	// user-space stack's).
	Device *NetworkDeviceStats `json:"device,omitempty"`
}

// NetworkDeviceStats are the counters of a box's network device (its
// VM's virtio-net), since its VM last started. "Out" is from the guest,
// "in" to it; bytes are of Ethernet frames, and a TCP segment the guest
// hands over whole (up to 64 KiB, TSO) is one frame, as its network
// counts it. Frames the device refused or dropped never reach the
// network's counters (out), or the guest (in).
type NetworkDeviceStats struct {
	FramesOut uint64 `json:"frames_out"` // frames from the guest sent to the network
	BytesOut  uint64 `json:"bytes_out"`
	// InvalidOut: what the guest queued that was not a frame (oversize,
	// runt, malformed).
	InvalidOut uint64 `json:"invalid_out"`
	// DroppedOut: frames from the guest the network did not take (it was
	// gone, or its socket refused them).
	DroppedOut uint64 `json:"dropped_out"`
	FramesIn   uint64 `json:"frames_in"` // frames from the network delivered to the guest
	BytesIn    uint64 `json:"bytes_in"`
	// InvalidIn: messages from the network that were not a frame.
	InvalidIn uint64 `json:"invalid_in"`
	// DroppedIn: frames from the network the guest did not get (its
	// driver was down or posted too few or too small buffers for too
	// long, or a checkpoint came first).
	DroppedIn uint64 `json:"dropped_in"`
	// PeerGone: the network closed the link; every frame since is
	// dropped.
	PeerGone bool `json:"peer_gone"`
}

// Empty is the body of calls that take no arguments: absent, or {}.
type Empty struct{}

// BoxList is the answer to list.
type BoxList struct {
	Boxes []Box `json:"boxes"`
}

// CheckpointList is the answer to listing a box's checkpoints: its
// chain, newest first.
type CheckpointList struct {
	Checkpoints []Checkpoint `json:"checkpoints"`
}

// ForkResponse is the answer to fork: the new, running children (Box is
// the first of Boxes) and the checkpoint they were restored from.
type ForkResponse struct {
	Box        Box        `json:"box"`
	Boxes      []Box      `json:"boxes"`
	Checkpoint Checkpoint `json:"checkpoint"`
}

// UpgradeResponse is the answer to upgrade. Upgraded is true when the box
// runs the current guest agent now (it was rebooted, or already was), and
// false when the upgrade was only recorded for the box's next wake.
type UpgradeResponse struct {
	Upgraded bool `json:"upgraded"`
	Box      Box  `json:"box"`
}

// TerminateResponse is the answer to terminate: the checkpoints whose
// storage was freed (those no other box's chain references).
type TerminateResponse struct {
	ID               string   `json:"id"`
	State            string   `json:"state"` // "terminated"
	FreedCheckpoints []string `json:"freed_checkpoints"`
}

// ExposeRequest asks to forward a host TCP port to a guest port.
type ExposeRequest struct {
	GuestPort int `json:"guest_port"`
	// HostPort 0 picks a free port; the answer names it.
	HostPort int `json:"host_port,omitempty"`
	// HostAddr is the address to listen on; "" means 127.0.0.1.
	HostAddr string `json:"host_addr,omitempty"`
}

// ExecRequest runs a command in the guest.
type ExecRequest struct {
	Argv []string `json:"argv"`
	Env  []string `json:"env,omitempty"` // KEY=value
	Dir  string   `json:"dir,omitempty"`
	// User, if not empty, is who the process runs as: "user",
	// "user:group", "uid" or "uid:gid", names looked up in the guest's
	// /etc/passwd and /etc/group. Empty means root, or the image's user
	// in a box made from an image whose config names one.
	User string `json:"user,omitempty"`
	// TimeoutMS, if positive, bounds how long the process may run.
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
	// Stdin is the process's whole input (base64 in JSON); empty means
	// /dev/null.
	Stdin []byte `json:"stdin,omitempty"`
}

// ExecEvent is one line of an exec's answer. The answer to a valid exec
// is 200 with Content-Type application/x-ndjson: one ExecEvent per line,
// any number of Stdout and Stderr events as the process writes, then
// exactly one line with Exit (the process ended) or Error (the exchange
// failed after the stream began). A stream that ends without either was
// cut. Stdout and Stderr are base64 in JSON. An exec refused before it
// starts (unknown box, paused box, bad request) is an ordinary error
// answer, not a stream.
type ExecEvent struct {
	Stdout []byte      `json:"stdout,omitempty"`
	Stderr []byte      `json:"stderr,omitempty"`
	Exit   *ExecResult `json:"exit,omitempty"`
	Error  *ErrorBody  `json:"error,omitempty"`
}

// ExecResult is how an exec'd process ended.
type ExecResult struct {
	ExitCode int  `json:"exit_code"` // -1 if a signal killed it
	Signal   int  `json:"signal,omitempty"`
	TimedOut bool `json:"timed_out,omitempty"`
}

// WriteFileResponse is the answer to a file write.
type WriteFileResponse struct {
	Written int64 `json:"written"`
}

// ErrorBody is the body of every error answer.
type ErrorBody struct {
	Error string `json:"error"`
	// Code is a stable, machine-readable kind: one of the Code constants.
	Code string `json:"code"`
	// Status is the HTTP status the error maps to (repeated here for
	// errors carried inside an exec stream).
	Status int `json:"status"`
}

// Error codes.
const (
	CodeBadRequest        = "bad_request"
	CodeNotFound          = "not_found"
	CodeInvalidTransition = "invalid_transition"
	CodeConflict          = "conflict"
	CodeWrongHost         = "wrong_host"
	CodeCapacity          = "capacity" // 507: the host is at a configured limit
	CodeTooLarge          = "too_large"
	CodeUnsupported       = "unsupported"
	CodeUnavailable       = "unavailable"
	CodeInternal          = "internal"
)

// SailboxIDHeader names the box an inference call through the daemon's
// proxy (/v1/inference/...) is made for: the box sleeps while the
// upstream call is in flight and is resumed when it completes.
const SailboxIDHeader = "X-SailboxId"
