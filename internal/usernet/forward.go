package usernet

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/sailbox-dev/sailbox/api/netapi"
)

// destination is where a guest's connection goes: the address it asked
// for, and the one dialled on the host (HostIP leads to loopback).
type destination struct {
	proto string // "tcp" or "udp"
	guest netip.AddrPort
	host  netip.AddrPort
}

func (n *Network) destination(proto string, id stack.TransportEndpointID) destination {
	guest := id.LocalAddress
	host := guest
	if to, ok := n.nat[guest]; ok {
		host = to
	}
	return destination{
		proto: proto,
		guest: netip.AddrPortFrom(netipAddr(guest), id.LocalPort),
		host:  netip.AddrPortFrom(netipAddr(host), id.LocalPort),
	}
}

// admit applies the policy and the limit of open connections to a new
// connection, counting and logging a refusal. On true the caller must
// call n.closed1 when the connection ends.
func (n *Network) admit(d destination) bool {
	v := n.policy.check(d.guest.Addr(), d.host.Addr())
	if v.allow && n.c.open.Add(1) > maxOpen {
		n.c.open.Add(-1)
		v = verdict{reason: "too many open connections"}
	}
	if !v.allow {
		n.c.refused.Add(1)
		args := []any{"proto", d.proto, "dst", d.host.String(), "reason", v.reason}
		if d.guest != d.host {
			args = append(args, "guest_dst", d.guest.String())
		}
		n.refused.Warn("usernet: refused connection", args...)
		return false
	}
	return true
}

func (n *Network) closed1() { n.c.open.Add(-1) }

// forwardTCP handles the guest's TCP SYNs to addresses no endpoint of the
// stack has: the policy decides, then the host dials; a refusal or a
// failed dial answers the SYN with a reset, so the guest fails at once.
// Only then is the guest's connection accepted, and spliced to the host's.
// Runs on a goroutine of its own, one per SYN.
func (n *Network) forwardTCP(r *tcp.ForwarderRequest) {
	d := n.destination("tcp", r.ID())
	if !n.admit(d) {
		r.Complete(true)
		return
	}
	defer n.closed1()
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	out, err := n.dial(ctx, "tcp", d.host.String())
	cancel()
	if err != nil {
		n.c.dialFailures.Add(1)
		n.log.Debug("usernet: dial failed", "dst", d.host.String(), "err", err)
		r.Complete(true)
		return
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	r.Complete(false)
	if terr != nil {
		// The guest gave up (reset, or its SYN timed out meanwhile).
		out.Close()
		return
	}
	n.c.connsOut.Add(1)
	hc, ok := out.(halfCloser)
	if !ok {
		out.Close()
		ep.Close()
		return
	}
	splice(gonet.NewTCPConn(&wq, ep), hc)
}

// forwardUDP handles a datagram of a new flow (no endpoint has its
// addresses): the policy decides, then a flow is created that proxies
// every datagram between the guest's address and port and a host socket
// connected to the destination, until it is idle for udpIdle. A refused
// datagram is dropped, as are broadcasts and multicasts (no flow, no
// log: guests send them unprompted). The stack calls it in its receive
// path: it must not block.
func (n *Network) forwardUDP(r *udp.ForwarderRequest) {
	id := r.ID()
	if id.LocalAddress == header.IPv4Broadcast || header.IsV4MulticastAddress(id.LocalAddress) ||
		id.LocalAddress == subnetBroadcast {
		return
	}
	d := n.destination("udp", id)
	if !n.admit(d) {
		return
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		n.closed1()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	host, err := n.dial(ctx, "udp", d.host.String())
	cancel()
	if err != nil {
		ep.Close()
		n.closed1()
		n.c.dialFailures.Add(1)
		return
	}
	n.c.connsOut.Add(1)
	go func() {
		defer n.closed1()
		udpFlow(gonet.NewUDPConn(&wq, ep), host)
	}()
}

// subnetBroadcast is the box network's broadcast address.
var subnetBroadcast = func() tcpip.Address {
	b := netapi.Subnet.Addr().As4()
	for i := netapi.Subnet.Bits(); i < 32; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	return tcpip.AddrFrom4(b)
}()

// udpIdle ends a UDP flow after this long without a datagram either way.
const udpIdle = 90 * time.Second

// udpFlow copies datagrams between the guest's side of a flow and the
// host's connected socket until the flow is idle for udpIdle, or either
// side fails; then it closes both.
func udpFlow(guest *gonet.UDPConn, host net.Conn) {
	var last atomic.Int64 // unix nanoseconds of the last datagram
	last.Store(time.Now().UnixNano())
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			guest.Close()
			host.Close()
		})
	}
	pipe := func(dst, src net.Conn) {
		defer closeBoth()
		buf := make([]byte, 65535)
		for {
			src.SetReadDeadline(time.Now().Add(udpIdle))
			k, err := src.Read(buf)
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) && time.Since(time.Unix(0, last.Load())) < udpIdle {
					continue // the other direction is busy
				}
				if errors.Is(err, syscall.ECONNREFUSED) {
					continue // an ICMP error for an earlier datagram
				}
				return
			}
			last.Store(time.Now().UnixNano())
			if _, err := dst.Write(buf[:k]); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
				return
			}
		}
	}
	go pipe(host, guest)
	pipe(guest, host)
}

// halfCloser is a connection whose sending side closes alone.
type halfCloser interface {
	net.Conn
	CloseWrite() error
}

// splice copies a to b and b to a until both directions end: a side's
// end of stream half-closes the other, so each peer sees its EOF, and a
// failure either way closes both.
func splice(a, b halfCloser) {
	var wg sync.WaitGroup
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			a.Close()
			b.Close()
		})
	}
	pipe := func(dst, src halfCloser) {
		defer wg.Done()
		if _, err := io.Copy(dst, src); err != nil && !errors.Is(err, net.ErrClosed) {
			closeBoth()
			return
		}
		dst.CloseWrite()
	}
	wg.Add(2)
	go pipe(a, b)
	go pipe(b, a)
	wg.Wait()
	closeBoth()
}
