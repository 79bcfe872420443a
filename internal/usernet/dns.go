package usernet

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/containers/gvisor-tap-vsock/pkg/services/dns"
	mdns "github.com/miekg/dns"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"github.com/sailbox-dev/sailbox/api/netapi"
)

// serveDNS runs gvisor-tap-vsock's DNS server on the gateway's port 53
// (UDP and TCP), with two hooks the library leaves room for: its upstream
// resolver is ours (static hosts, then the policy, then the host's
// resolver), and its sockets are wrapped so that every answer it sends
// is read back for the policy's domain rules.
func (n *Network) serveDNS() error {
	at := tcpip.FullAddress{NIC: nicID, Addr: addr(netapi.GatewayIP), Port: 53}
	udpConn, err := gonet.DialUDP(n.stack, &at, nil, ipv4.ProtocolNumber)
	if err != nil {
		return err
	}
	tcpLn, err := gonet.ListenTCP(n.stack, at, ipv4.ProtocolNumber)
	if err != nil {
		udpConn.Close()
		return err
	}
	srv, err := dns.NewWithUpstreamResolver(
		&answerPacketConn{PacketConn: udpConn, n: n},
		&answerListener{Listener: tcpLn, n: n},
		nil,
		&resolver{n: n},
	)
	if err != nil {
		return err
	}
	// Both end when the stack closes.
	go srv.Serve()
	go srv.ServeTCP()
	return nil
}

// noteAnswer reads a DNS answer the gateway sends to the guest and
// records, for the policy's domain rules, which names resolved to which
// addresses. It runs before the answer is sent, so the guest cannot
// connect to an address before the policy knows its name.
func (n *Network) noteAnswer(b []byte) {
	if !n.policy.hasDomainRules() {
		return
	}
	var m mdns.Msg
	if m.Unpack(b) != nil {
		return
	}
	var names []string
	var addrs []netip.Addr
	norm := func(s string) string { return strings.ToLower(strings.TrimSuffix(s, ".")) }
	for _, q := range m.Question {
		names = append(names, norm(q.Name))
	}
	for _, rr := range m.Answer {
		names = append(names, norm(rr.Header().Name))
		switch rr := rr.(type) {
		case *mdns.A:
			if a, ok := netip.AddrFromSlice(rr.A); ok {
				addrs = append(addrs, a.Unmap())
			}
		case *mdns.AAAA:
			if a, ok := netip.AddrFromSlice(rr.AAAA); ok {
				addrs = append(addrs, a.Unmap())
			}
		case *mdns.CNAME:
			names = append(names, norm(rr.Target))
		}
	}
	if len(addrs) > 0 {
		n.policy.recordAnswer(names, addrs)
	}
}

// answerPacketConn is the DNS server's UDP socket; what it writes are
// answers.
type answerPacketConn struct {
	net.PacketConn
	n *Network
}

func (c *answerPacketConn) WriteTo(b []byte, to net.Addr) (int, error) {
	c.n.noteAnswer(b)
	return c.PacketConn.WriteTo(b, to)
}

// answerListener is the DNS server's TCP listener; its connections'
// writes are answers, each after a two-byte length.
type answerListener struct {
	net.Listener
	n *Network
}

func (l *answerListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &answerConn{Conn: c, n: l.n}, nil
}

type answerConn struct {
	net.Conn
	n *Network

	mu  sync.Mutex // guards buf
	buf []byte     // written bytes not yet part of a whole answer
}

func (c *answerConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	c.buf = append(c.buf, b...)
	for len(c.buf) >= 2 {
		size := 2 + int(binary.BigEndian.Uint16(c.buf))
		if len(c.buf) < size {
			break
		}
		c.n.noteAnswer(c.buf[2:size])
		c.buf = c.buf[size:]
	}
	if len(c.buf) == 0 {
		c.buf = nil
	}
	c.mu.Unlock()
	return c.Conn.Write(b)
}

// upstreamResolver is what gvisor-tap-vsock's DNS server asks about
// names it has no zone for (its own interface is not exported).
type upstreamResolver interface {
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
	LookupCNAME(ctx context.Context, host string) (string, error)
	LookupMX(ctx context.Context, name string) ([]*net.MX, error)
	LookupNS(ctx context.Context, name string) ([]*net.NS, error)
	LookupSRV(ctx context.Context, service, proto, name string) (string, []*net.SRV, error)
	LookupTXT(ctx context.Context, name string) ([]string, error)
}

// resolver is the DNS server's upstream: static hosts first, then, if
// the name could be on the internet and the policy lets it be looked up
// (allowed), the host's resolver (Network.upstream). A refused name
// answers NXDOMAIN.
type resolver struct {
	n *Network
}

var _ upstreamResolver = (*resolver)(nil)

// allowed says whether name may be looked up on the host, counting and
// logging a refusal by the policy.
//
// Two kinds of names are never looked up on the host, whatever the
// policy, and are neither counted nor logged: no DNS server on the
// internet answers them, and programs ask about them in passing. A name
// without a dot: the one a box asks about is its own hostname (its box
// id, which the image's /etc/hosts does not name), which Python's
// http.server, for one, resolves when it starts. A name whose last label
// is a number (no top-level domain is): apt looks up an SRV record for
// every repository host, an address too (_http._tcp.192.168.127.254).
// Asked of the host's resolver, such lookups would send the box's id and
// the addresses it uses to the host's DNS servers, and make a test that
// runs such a program in a box dial a DNS server off the machine.
func (r *resolver) allowed(name string) bool {
	d := strings.ToLower(strings.TrimSuffix(name, "."))
	if i := strings.LastIndexByte(d, '.'); i < 0 || strings.Trim(d[i+1:], "0123456789") == "" {
		return false
	}
	if r.n.policy.lookupAllowed(d) {
		return true
	}
	r.n.c.refusedLookups.Add(1)
	r.n.refused.Warn("usernet: refused DNS lookup", "name", d, "reason", "no internet, and no allow rule matches")
	return false
}

func refusedErr(name string) error {
	return &net.DNSError{Err: "refused by the box's egress policy", Name: name, IsNotFound: true}
}

func (r *resolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	if a, ok := r.n.hosts[strings.ToLower(strings.TrimSuffix(host, "."))]; ok {
		return []net.IPAddr{{IP: a.AsSlice()}}, nil
	}
	if !r.allowed(host) {
		return nil, refusedErr(host)
	}
	return r.n.upstream.LookupIPAddr(ctx, host)
}

func (r *resolver) LookupCNAME(ctx context.Context, host string) (string, error) {
	if !r.allowed(host) {
		return "", refusedErr(host)
	}
	return r.n.upstream.LookupCNAME(ctx, host)
}

func (r *resolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	if !r.allowed(name) {
		return nil, refusedErr(name)
	}
	return r.n.upstream.LookupMX(ctx, name)
}

func (r *resolver) LookupNS(ctx context.Context, name string) ([]*net.NS, error) {
	if !r.allowed(name) {
		return nil, refusedErr(name)
	}
	return r.n.upstream.LookupNS(ctx, name)
}

func (r *resolver) LookupSRV(ctx context.Context, service, proto, name string) (string, []*net.SRV, error) {
	if !r.allowed(name) {
		return "", nil, refusedErr(name)
	}
	return r.n.upstream.LookupSRV(ctx, service, proto, name)
}

func (r *resolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	if !r.allowed(name) {
		return nil, refusedErr(name)
	}
	return r.n.upstream.LookupTXT(ctx, name)
}
