package usernet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containers/gvisor-tap-vsock/pkg/services/dhcp"
	"github.com/containers/gvisor-tap-vsock/pkg/tap"
	"github.com/containers/gvisor-tap-vsock/pkg/types"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/sailbox-dev/sailbox/api/netapi"
	"github.com/sailbox-dev/sailbox/internal/guestlog"
)

// Config describes one box's network.
type Config struct {
	// Box is the box's id, in every log line.
	Box string
	// MAC is the guest's Ethernet address, which DHCP gives
	// netapi.GuestIP ("" is netapi.DefaultGuestMAC).
	MAC string
	// NoInternet refuses every outbound connection that Allow does not
	// name.
	NoInternet bool
	// Allow and Deny are the egress policy's rules (netapi.ParseRule);
	// deny wins.
	Allow, Deny []string
	// Hosts are static DNS entries, answered before the host's resolver
	// is asked (and whatever the policy).
	Hosts map[string]netip.Addr
	// Log receives the network's log (nil discards it); every record
	// names the box.
	Log *slog.Logger
}

// Network is one box's user-space network: a gvisor netstack whose only
// NIC is the guest's link, with a gateway at netapi.GatewayIP serving
// DHCP and DNS, and forwarders that turn the guest's outbound TCP
// connections and UDP flows into host sockets, under the egress policy.
//
// Use: New, then Serve on the listener the VMM connects to; DialGuest
// for connections into the guest, Stats for the counters; Close when
// the box goes.
type Network struct {
	// Set by New, then read-only.
	box     string
	log     *slog.Logger // the network's log, naming the box
	refused *slog.Logger // refusals: rate-limited, a guest causes them
	stack   *stack.Stack
	sw      *tap.Switch
	policy  *policy
	hosts   map[string]netip.Addr
	nat     map[tcpip.Address]tcpip.Address // guest address → host address
	// dial makes the host's side of an outbound connection, and upstream
	// answers the DNS questions no static host does; tests replace both
	// (before Serve) to keep every host-side socket on loopback.
	dial     func(ctx context.Context, network, address string) (net.Conn, error)
	upstream upstreamResolver
	c        counters

	mu     sync.Mutex // guards the fields below
	conn   *frameConn // the attached VMM's connection, nil if none
	closed bool
}

// counters are a Network's Stats; atomic, so that the stack's goroutines
// never wait on a lock to count.
type counters struct {
	bytesOut, bytesIn, framesOut, framesIn, framesDropped    atomic.Uint64
	connsOut, connsIn, refused, refusedLookups, dialFailures atomic.Uint64
	open                                                     atomic.Int64
}

// Limits a guest cannot pass.
const (
	// maxOpen bounds the outbound connections and UDP flows open at once:
	// each is a host socket.
	maxOpen = 4096
	// maxConnecting bounds the TCP connections being dialled on the host
	// at once; more SYNs wait for the guest's retransmission.
	maxConnecting = 256
	// dialTimeout bounds a host dial; the guest then gets a reset.
	dialTimeout = 30 * time.Second
	// Refusals logged: at most refusedBurst per refusedEvery.
	refusedBurst = 20
	refusedEvery = 10 * time.Second
)

// nicID is the stack's only NIC, the guest's link.
const nicID tcpip.NICID = 1

// New builds the network described by cfg. It serves nothing until Serve
// attaches a VMM.
func New(cfg Config) (*Network, error) {
	if cfg.Box == "" {
		return nil, errors.New("usernet: no box id")
	}
	mac, err := netapi.ParseMAC(cfg.MAC)
	if err != nil {
		return nil, fmt.Errorf("usernet: %w", err)
	}
	allow, err := netapi.ParseRules(cfg.Allow)
	if err != nil {
		return nil, fmt.Errorf("usernet: allow: %w", err)
	}
	deny, err := netapi.ParseRules(cfg.Deny)
	if err != nil {
		return nil, fmt.Errorf("usernet: deny: %w", err)
	}
	hosts := make(map[string]netip.Addr, len(cfg.Hosts))
	for name, ip := range cfg.Hosts {
		d, a, err := netapi.ParseHost(name + "=" + ip.String())
		if err != nil {
			return nil, fmt.Errorf("usernet: %w", err)
		}
		hosts[d] = a
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("box", cfg.Box)
	n := &Network{
		box:      cfg.Box,
		log:      log,
		refused:  guestlog.NewLimiter(refusedBurst, refusedEvery).Logger(log),
		policy:   newPolicy(cfg.NoInternet, allow, deny),
		hosts:    hosts,
		nat:      map[tcpip.Address]tcpip.Address{addr(netapi.HostIP): addr(netapi.HostLoopback)},
		dial:     (&net.Dialer{Timeout: dialTimeout}).DialContext,
		upstream: &net.Resolver{},
	}
	if err := n.build(mac); err != nil {
		if n.stack != nil {
			n.stack.Close()
		}
		return nil, fmt.Errorf("usernet: %w", err)
	}
	return n, nil
}

// build makes the stack and its services, as gvisor-tap-vsock's
// virtualnetwork.New does, but with forwarders and a DNS server of our
// own wiring: the library's have no hook for a policy.
func (n *Network) build(guestMAC string) error {
	cfg := &types.Configuration{
		MTU:               netapi.MTU,
		Subnet:            netapi.Subnet.String(),
		GatewayIP:         netapi.GatewayIP.String(),
		GatewayMacAddress: netapi.GatewayMAC,
		GatewayVirtualIPs: []string{netapi.HostIP.String()},
		DHCPStaticLeases:  map[string]string{netapi.GuestIP.String(): guestMAC},
	}
	_, subnet, _ := net.ParseCIDR(cfg.Subnet)
	pool := tap.NewIPPool(subnet)
	pool.Reserve(net.ParseIP(cfg.GatewayIP), cfg.GatewayMacAddress)
	pool.Reserve(net.ParseIP(netapi.HostIP.String()), cfg.GatewayMacAddress)
	for ip, mac := range cfg.DHCPStaticLeases {
		pool.Reserve(net.ParseIP(ip), mac)
	}

	link, err := tap.NewLinkEndpoint(false, netapi.MTU, cfg.GatewayMacAddress, cfg.GatewayIP, cfg.GatewayVirtualIPs)
	if err != nil {
		return fmt.Errorf("link: %w", err)
	}
	n.sw = tap.NewSwitch(false)
	link.Connect(n.sw)
	n.sw.Connect(link)

	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
	})
	n.stack = s
	sack := tcpip.TCPSACKEnabled(true)
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack); err != nil {
		return fmt.Errorf("tcp sack: %s", err)
	}
	if err := s.CreateNIC(nicID, link); err != nil {
		return fmt.Errorf("nic: %s", err)
	}
	if err := s.AddProtocolAddress(nicID, tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: addr(netapi.GatewayIP).WithPrefix(),
	}, stack.AddressProperties{}); err != nil {
		return fmt.Errorf("gateway address: %s", err)
	}
	// The gateway answers for every address: the guest's connections to
	// the outside end in this stack, whose forwarders dial them.
	if err := s.SetSpoofing(nicID, true); err != nil {
		return fmt.Errorf("spoofing: %s", err)
	}
	if err := s.SetPromiscuousMode(nicID, true); err != nil {
		return fmt.Errorf("promiscuous: %s", err)
	}
	sub, err := tcpip.NewSubnet(addr(netapi.Subnet.Addr()), tcpip.MaskFromBytes(subnet.Mask))
	if err != nil {
		return fmt.Errorf("subnet: %w", err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: sub, NIC: nicID}})

	s.SetTransportProtocolHandler(tcp.ProtocolNumber, tcp.NewForwarder(s, 0, maxConnecting, n.forwardTCP).HandlePacket)
	s.SetTransportProtocolHandler(udp.ProtocolNumber, udp.NewForwarder(s, n.forwardUDP).HandlePacket)

	if err := n.serveDNS(); err != nil {
		return fmt.Errorf("dns: %w", err)
	}
	d, err := dhcp.New(cfg, s, pool)
	if err != nil {
		return fmt.Errorf("dhcp: %w", err)
	}
	go d.Serve() // ends when the stack closes
	return nil
}

// Serve attaches the VMMs that connect to l, one at a time: a new
// connection replaces the previous one (a restored VMM reconnects). It
// returns when ctx is done or l fails, closing l and the attached
// connection.
func (n *Network) Serve(ctx context.Context, l net.Listener) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer n.detach(nil)
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("usernet: accept: %w", err)
		}
		uc, ok := c.(*net.UnixConn)
		if !ok {
			c.Close()
			return fmt.Errorf("usernet: accept: %T is not a Unix connection", c)
		}
		fc := &frameConn{UnixConn: uc, c: &n.c}
		if !n.attach(fc) {
			fc.Close()
			return errors.New("usernet: network closed")
		}
		wg.Go(func() {
			// Accept returns when the connection fails: the VMM went,
			// or a new one replaced it.
			err := n.sw.Accept(ctx, fc, types.BessProtocol)
			if n.detach(fc) && ctx.Err() == nil {
				n.log.Info("usernet: VMM detached", "err", err)
			}
		})
	}
}

// attach makes fc the guest's link, closing the previous one.
func (n *Network) attach(fc *frameConn) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return false
	}
	if n.conn != nil {
		n.log.Info("usernet: a new VMM connection replaces the previous one")
		n.conn.Close()
	}
	n.conn = fc
	n.log.Info("usernet: VMM attached")
	return true
}

// detach closes fc (nil: whichever is attached) and reports whether it
// was the attached one.
func (n *Network) detach(fc *frameConn) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if fc == nil {
		fc = n.conn
	}
	if fc == nil {
		return false
	}
	fc.Close()
	if n.conn != fc {
		return false
	}
	n.conn = nil
	return true
}

func (n *Network) attached() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.conn != nil
}

// Stats are the network's counters.
func (n *Network) Stats() netapi.Stats {
	return netapi.Stats{
		Box:             n.box,
		GuestAttached:   n.attached(),
		BytesOut:        n.c.bytesOut.Load(),
		BytesIn:         n.c.bytesIn.Load(),
		FramesOut:       n.c.framesOut.Load(),
		FramesIn:        n.c.framesIn.Load(),
		FramesDropped:   n.c.framesDropped.Load(),
		ConnectionsOut:  n.c.connsOut.Load(),
		ConnectionsIn:   n.c.connsIn.Load(),
		OpenConnections: n.c.open.Load(),
		Refused:         n.c.refused.Load(),
		RefusedLookups:  n.c.refusedLookups.Load(),
		DialFailures:    n.c.dialFailures.Load(),
	}
}

// Close detaches the VMM and stops the stack: every connection through
// it ends.
func (n *Network) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.mu.Unlock()
	n.detach(nil)
	n.stack.Close()
	n.stack.Wait()
	return nil
}

func addr(a netip.Addr) tcpip.Address {
	return tcpip.AddrFrom4(a.As4())
}

func netipAddr(a tcpip.Address) netip.Addr {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return ip.Unmap()
}
