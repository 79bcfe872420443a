package guestagent

// Resetting a restored guest's TCP connections.
//
// A restored guest's network is a new stack on the host (sailbox-net)
// that never knew the connections the guest had at the checkpoint. Its
// kernel still holds them, and one that waits to receive (a download, a
// server waiting for its client) sends nothing, so nothing tells it the
// peer is gone: it would wait for ever. The restored op therefore makes
// every such connection speak once: for each, it loops back to the
// guest, through a raw socket, a segment that seems to come from the
// peer: a bare SYN. The guest's TCP answers a SYN on a synchronized
// connection with a challenge ACK carrying its true sequence numbers
// (RFC 5961 4.2), whatever the SYN's sequence number, and changes
// nothing else: a SYN carries no acknowledgement that could touch the
// connection's state. That ACK goes out to the new stack. A connection
// the new stack knows (one made after the restore, before the probe)
// takes it as a duplicate ACK, harmlessly; one it does not know it
// answers with a reset whose sequence number is exactly what the guest
// expects (RFC 5961 3.2), so the guest resets the connection at once:
// its program sees ECONNRESET, not a hang.

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// tcpSocket is one TCP socket of /proc/net/tcp.
type tcpSocket struct {
	Local, Remote netip.AddrPort
	State         uint8 // the kernel's TCP_ESTABLISHED and so on
}

// TCP states as /proc/net/tcp numbers them (include/net/tcp_states.h).
const (
	tcpEstablished = 0x01
	tcpSynRecv     = 0x03
	tcpFinWait1    = 0x04
	tcpFinWait2    = 0x05
	tcpCloseWait   = 0x08
	tcpLastAck     = 0x09
	tcpClosing     = 0x0b
)

// stale reports whether c is a connection a restore leaves dead: one with
// a peer that is not the guest itself (on loopback), in a state where
// both ends hold it. Listeners, connections still opening (their SYN is
// retransmitted to the new stack, which takes it) and closed ones are
// left alone.
func (c tcpSocket) stale() bool {
	if c.Local.Addr().IsLoopback() || c.Remote.Addr().IsLoopback() {
		return false
	}
	switch c.State {
	case tcpEstablished, tcpSynRecv, tcpFinWait1, tcpFinWait2, tcpCloseWait, tcpLastAck, tcpClosing:
		return true
	}
	return false
}

// parseProcNetTCP reads the IPv4 TCP sockets of /proc/net/tcp: after a
// header line, one a line, "sl local_address rem_address st ...", the
// addresses as hex ADDR:PORT with ADDR in the kernel's (little-endian)
// byte order.
func parseProcNetTCP(r io.Reader) ([]tcpSocket, error) {
	sc := bufio.NewScanner(r)
	var conns []tcpSocket
	for line := 1; sc.Scan(); line++ {
		if line == 1 {
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 4 {
			return nil, fmt.Errorf("/proc/net/tcp line %d: %q: too few fields", line, sc.Text())
		}
		local, err := parseProcAddr(f[1])
		if err != nil {
			return nil, fmt.Errorf("/proc/net/tcp line %d: %w", line, err)
		}
		remote, err := parseProcAddr(f[2])
		if err != nil {
			return nil, fmt.Errorf("/proc/net/tcp line %d: %w", line, err)
		}
		st, err := strconv.ParseUint(f[3], 16, 8)
		if err != nil {
			return nil, fmt.Errorf("/proc/net/tcp line %d: state %q: %w", line, f[3], err)
		}
		conns = append(conns, tcpSocket{Local: local, Remote: remote, State: uint8(st)})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("/proc/net/tcp: %w", err)
	}
	return conns, nil
}

// parseProcAddr reads "0100007F:1F90" (127.0.0.1:8080).
func parseProcAddr(s string) (netip.AddrPort, error) {
	a, p, ok := strings.Cut(s, ":")
	b, err := hex.DecodeString(a)
	if !ok || err != nil || len(b) != 4 {
		return netip.AddrPort{}, fmt.Errorf("address %q: want 8 hex digits, a colon, a port", s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("address %q: port: %w", s, err)
	}
	var ip [4]byte
	binary.BigEndian.PutUint32(ip[:], binary.LittleEndian.Uint32(b))
	return netip.AddrPortFrom(netip.AddrFrom4(ip), uint16(port)), nil
}

// Sizes of the probe: an IPv4 header without options and a TCP header
// without options.
const (
	ipv4HeaderLen = 20
	tcpHeaderLen  = 20
	probeLen      = ipv4HeaderLen + tcpHeaderLen
)

// resetProbe is the segment that makes c's guest end speak: an IPv4
// packet from c's peer to the guest, a bare SYN with sequence number seq.
func resetProbe(c tcpSocket, seq uint32) []byte {
	p := make([]byte, probeLen)
	ip, tcp := p[:ipv4HeaderLen], p[ipv4HeaderLen:]
	src, dst := c.Remote.Addr().As4(), c.Local.Addr().As4()
	ip[0] = 4<<4 | ipv4HeaderLen/4 // version, header length in words
	binary.BigEndian.PutUint16(ip[2:], probeLen)
	ip[8] = 64 // TTL
	ip[9] = 6  // TCP
	copy(ip[12:16], src[:])
	copy(ip[16:20], dst[:])
	binary.BigEndian.PutUint16(ip[10:], checksum(ip, 0))

	binary.BigEndian.PutUint16(tcp[0:], c.Remote.Port())
	binary.BigEndian.PutUint16(tcp[2:], c.Local.Port())
	binary.BigEndian.PutUint32(tcp[4:], seq)
	tcp[12] = tcpHeaderLen / 4 << 4
	tcp[13] = 0x02 // SYN
	binary.BigEndian.PutUint16(tcp[14:], 0xffff)
	// The pseudo-header: addresses, protocol, TCP length.
	var pseudo uint32
	for i := 0; i < 4; i += 2 {
		pseudo += uint32(src[i])<<8 | uint32(src[i+1])
		pseudo += uint32(dst[i])<<8 | uint32(dst[i+1])
	}
	pseudo += 6 + tcpHeaderLen
	binary.BigEndian.PutUint16(tcp[16:], checksum(tcp, pseudo))
	return p
}

// checksum is the Internet checksum (RFC 1071) of b, its sum started at
// initial.
func checksum(b []byte, initial uint32) uint16 {
	sum := initial
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
