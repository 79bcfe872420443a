// Package netapi is the contract between sailboxd and sailbox-net, the
// user-space network of one box (internal/usernet runs it): the addresses
// every box sees, the flags that start the process (Launch), the egress
// policy's rules (Rule), and the control socket's calls and their client
// (GetStats, Dial).
//
// The VMM's side of the network is one Unix SOCK_SEQPACKET socket
// (Launch.Socket): sailbox-net listens on it, the VMM connects to it, and
// each message is exactly one Ethernet frame, with neither a length prefix
// nor a virtio header. A new connection replaces the previous one (a
// restored VMM reconnects).
//
// The control socket (Launch.Control) is HTTP on a Unix stream socket:
//
//	GET  /v1/stats           200, Stats as JSON
//	POST /v1/dial?port=N     with "Connection: Upgrade" and "Upgrade: tcp":
//	                         101, then the connection is a byte stream to
//	                         the guest's TCP port N, made from inside the
//	                         box's network (GuestIP:N); else an ErrorBody
//
// A failed dial answers 502 with code "refused" when the guest reset the
// connection (nothing listens on the port), 504 with "unreachable" when no
// VMM is attached or the guest did not answer in time, 400 with
// "bad_request" for a malformed call.
package netapi

import (
	"net/netip"
)

// The addresses of every box's network. Each box has a network of its
// own, so every box sees the same ones: a fork or a restore keeps its
// addresses and routes, and no two boxes share a connection.
var (
	// Subnet is the box's network.
	Subnet = netip.MustParsePrefix("192.168.127.0/24")
	// GatewayIP is the gateway, and the DNS server the DHCP offer names.
	GatewayIP = netip.MustParseAddr("192.168.127.1")
	// GuestIP is the guest's address: a static DHCP lease for its MAC.
	GuestIP = netip.MustParseAddr("192.168.127.2")
	// HostIP reaches the host's loopback (127.0.0.1): a connection to
	// HostIP:P is made to 127.0.0.1:P on the host, if the policy allows
	// 127.0.0.1 (it does not by default).
	HostIP = netip.MustParseAddr("192.168.127.254")
	// HostLoopback is where HostIP leads.
	HostLoopback = netip.MustParseAddr("127.0.0.1")
)

const (
	// GatewayMAC is the gateway's Ethernet address.
	GatewayMAC = "5a:94:ef:e4:0c:dd"
	// DefaultGuestMAC is the guest's Ethernet address unless -mac says
	// otherwise; the DHCP lease of GuestIP is for it.
	DefaultGuestMAC = "5a:94:ef:e4:0c:ee"
	// MTU is the link's MTU, which the DHCP offer carries: Ethernet
	// frames carry at most MTU bytes after their 14-byte header.
	MTU = 1500
)

// Paths of the control socket's calls.
const (
	StatsPath = "/v1/stats"
	DialPath  = "/v1/dial"
)

// DialProtocol is the Upgrade header's value of a dial.
const DialProtocol = "tcp"

// Stats are one box network's counters since sailbox-net started.
// Bytes and frames count Ethernet frames between the guest and the
// network ("out": sent by the guest; "in": delivered to it), so they
// include DNS, DHCP and ARP.
type Stats struct {
	Box string `json:"box"`
	// GuestAttached: a VMM is connected to the socket.
	GuestAttached bool   `json:"guest_attached"`
	BytesOut      uint64 `json:"bytes_out"`
	BytesIn       uint64 `json:"bytes_in"`
	FramesOut     uint64 `json:"frames_out"`
	FramesIn      uint64 `json:"frames_in"`
	// FramesDropped: frames from the guest too short to be Ethernet, and
	// frames to it that the VMM did not take in time.
	FramesDropped uint64 `json:"frames_dropped"`
	// ConnectionsOut: TCP connections and UDP flows the guest opened to
	// the outside that the policy let through and the host connected.
	ConnectionsOut uint64 `json:"connections_out"`
	// ConnectionsIn: connections made to the guest through Dial.
	ConnectionsIn uint64 `json:"connections_in"`
	// OpenConnections: outbound TCP connections and UDP flows open now.
	OpenConnections int64 `json:"open_connections"`
	// Refused: outbound TCP connections (reset) and UDP datagrams
	// (dropped) that the policy refused, or that were over the limit of
	// open connections.
	Refused uint64 `json:"refused"`
	// RefusedLookups: DNS questions the gateway refused (NXDOMAIN) under
	// the policy: with no internet, every name that no allowed domain
	// matches.
	RefusedLookups uint64 `json:"refused_lookups"`
	// DialFailures: outbound connections the policy allowed but the host
	// could not make (refused, unreachable, timed out); the guest gets a
	// reset.
	DialFailures uint64 `json:"dial_failures"`
}

// ErrorBody is the JSON body of a refused control call.
type ErrorBody struct {
	Error string `json:"error"`
	// Code is "refused", "unreachable" or "bad_request".
	Code string `json:"code"`
}

// Codes of ErrorBody.
const (
	CodeRefused     = "refused"
	CodeUnreachable = "unreachable"
	CodeBadRequest  = "bad_request"
)
