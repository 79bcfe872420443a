// Package fakeguest is a guest for tests of the box network: it connects
// to the network's SOCK_SEQPACKET socket as a VMM does, asks for its
// address by DHCP with raw frames, then runs a TCP/IP stack of its own
// (gVisor's netstack) on that address, through which a test connects,
// listens and resolves names as a program in the guest would.
package fakeguest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/insomniacslk/dhcp/dhcpv4"
	mdns "github.com/miekg/dns"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// Lease is what the network's DHCP server gave.
type Lease struct {
	IP     netip.Prefix // the address and the subnet's length
	Router netip.Addr
	DNS    []netip.Addr
	MTU    int
}

// Guest is one fake guest attached to a network.
type Guest struct {
	Lease Lease
	stack *stack.Stack
	conn  *net.UnixConn
}

const nic tcpip.NICID = 1

// Attach connects to the network's socket with mac, takes a lease by
// DHCP (discover, offer, request, ack), and starts the guest's stack.
// Everything stops when the test ends.
func Attach(t testing.TB, socket, mac string) *Guest {
	t.Helper()
	hw, err := net.ParseMAC(mac)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: socket, Net: "unixpacket"})
	if err != nil {
		t.Fatalf("attach to %s: %v", socket, err)
	}
	t.Cleanup(func() { conn.Close() })
	lease, err := DHCP(conn, hw, 10*time.Second)
	if err != nil {
		t.Fatalf("dhcp: %v", err)
	}
	g := &Guest{Lease: lease, conn: conn}
	g.start(t, hw)
	return g
}

// DHCP takes a lease for hw over conn with raw frames: DISCOVER, then
// REQUEST for the OFFER's address, which the ACK confirms.
func DHCP(conn *net.UnixConn, hw net.HardwareAddr, timeout time.Duration) (Lease, error) {
	conn.SetDeadline(time.Now().Add(timeout))
	defer conn.SetDeadline(time.Time{})
	discover, err := dhcpv4.NewDiscovery(hw)
	if err != nil {
		return Lease{}, err
	}
	offer, err := exchange(conn, hw, discover, dhcpv4.MessageTypeOffer)
	if err != nil {
		return Lease{}, fmt.Errorf("discover: %w", err)
	}
	request, err := dhcpv4.NewRequestFromOffer(offer)
	if err != nil {
		return Lease{}, err
	}
	ack, err := exchange(conn, hw, request, dhcpv4.MessageTypeAck)
	if err != nil {
		return Lease{}, fmt.Errorf("request: %w", err)
	}
	if !ack.YourIPAddr.Equal(offer.YourIPAddr) {
		return Lease{}, fmt.Errorf("ack for %v, offer was %v", ack.YourIPAddr, offer.YourIPAddr)
	}
	ip, _ := netip.AddrFromSlice(ack.YourIPAddr.To4())
	ones, _ := ack.SubnetMask().Size()
	l := Lease{IP: netip.PrefixFrom(ip, ones)}
	if r := ack.Router(); len(r) > 0 {
		l.Router, _ = netip.AddrFromSlice(r[0].To4())
	}
	for _, d := range ack.DNS() {
		a, _ := netip.AddrFromSlice(d.To4())
		l.DNS = append(l.DNS, a)
	}
	if b := ack.Options.Get(dhcpv4.OptionInterfaceMTU); len(b) == 2 {
		l.MTU = int(b[0])<<8 | int(b[1])
	}
	return l, nil
}

// exchange broadcasts m and waits for the server's answer of type want.
func exchange(conn *net.UnixConn, hw net.HardwareAddr, m *dhcpv4.DHCPv4, want dhcpv4.MessageType) (*dhcpv4.DHCPv4, error) {
	eth := &layers.Ethernet{SrcMAC: hw, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: net.IPv4zero, DstIP: net.IPv4bcast}
	u := &layers.UDP{SrcPort: 68, DstPort: 67}
	u.SetNetworkLayerForChecksum(ip)
	sb := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(sb, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, u, gopacket.Payload(m.ToBytes())); err != nil {
		return nil, err
	}
	if _, err := conn.Write(sb.Bytes()); err != nil {
		return nil, err
	}
	buf := make([]byte, 65536)
	for {
		n, err := conn.Read(buf)
		if err != nil {
			return nil, err
		}
		p := gopacket.NewPacket(buf[:n], layers.LayerTypeEthernet, gopacket.Default)
		ul, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if !ok || ul.DstPort != 68 {
			continue
		}
		reply, err := dhcpv4.FromBytes(ul.Payload)
		if err != nil || reply.TransactionID != m.TransactionID {
			continue
		}
		if reply.MessageType() != want {
			return nil, fmt.Errorf("got %v, want %v", reply.MessageType(), want)
		}
		return reply, nil
	}
}

// start runs the guest's stack on its lease, over conn.
func (g *Guest) start(t testing.TB, hw net.HardwareAddr) {
	ch := channel.New(1024, uint32(max(g.Lease.MTU, 1500))+header.EthernetMinimumSize, tcpip.LinkAddress(hw))
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	if err := s.CreateNIC(nic, ethernet.New(ch)); err != nil {
		t.Fatalf("guest nic: %s", err)
	}
	if err := s.AddProtocolAddress(nic, tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpip.AddrFrom4(g.Lease.IP.Addr().As4()), PrefixLen: g.Lease.IP.Bits()},
	}, stack.AddressProperties{}); err != nil {
		t.Fatalf("guest address: %s", err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, Gateway: tcpip.AddrFrom4(g.Lease.Router.As4()), NIC: nic}})
	g.stack = s

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { // network → guest
		buf := make([]byte, 65536)
		for {
			n, err := g.conn.Read(buf)
			if err != nil {
				return
			}
			pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(append([]byte(nil), buf[:n]...))})
			ch.InjectInbound(0, pkt)
			pkt.DecRef()
		}
	})
	wg.Go(func() { // guest → network
		for {
			pkt := ch.ReadContext(ctx)
			if pkt == nil {
				return
			}
			b := pkt.ToView().AsSlice()
			pkt.DecRef()
			if _, err := g.conn.Write(b); err != nil {
				return
			}
		}
	})
	t.Cleanup(func() {
		cancel()
		g.conn.Close()
		wg.Wait()
		s.Close()
		s.Wait()
	})
}

func full(a netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: nic, Addr: tcpip.AddrFrom4(a.Addr().As4()), Port: a.Port()}
}

// DialTCP connects from the guest to a.
func (g *Guest) DialTCP(ctx context.Context, a netip.AddrPort) (*gonet.TCPConn, error) {
	return gonet.DialContextTCP(ctx, g.stack, full(a), ipv4.ProtocolNumber)
}

// ListenTCP listens on the guest's address and port.
func (g *Guest) ListenTCP(port uint16) (net.Listener, error) {
	return gonet.ListenTCP(g.stack, full(netip.AddrPortFrom(g.Lease.IP.Addr(), port)), ipv4.ProtocolNumber)
}

// DialUDP opens a UDP socket from the guest, connected to a.
func (g *Guest) DialUDP(a netip.AddrPort) (*gonet.UDPConn, error) {
	to := full(a)
	return gonet.DialUDP(g.stack, nil, &to, ipv4.ProtocolNumber)
}

// HTTPClient is an HTTP client whose connections leave from the guest;
// hosts must be IP addresses (resolve names with Lookup).
func (g *Guest) HTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, address string) (net.Conn, error) {
			a, err := netip.ParseAddrPort(address)
			if err != nil {
				return nil, err
			}
			return g.DialTCP(ctx, a)
		},
		DisableKeepAlives: true,
	}}
}

// ErrNXDomain is a lookup answered "no such name".
var ErrNXDomain = errors.New("NXDOMAIN")

// Lookup asks the lease's DNS server, over UDP, for name's A records.
func (g *Guest) Lookup(ctx context.Context, name string) ([]netip.Addr, error) {
	return g.LookupOver(ctx, "udp", name)
}

// LookupOver asks the lease's DNS server for name's A records over
// network, "udp" or "tcp".
func (g *Guest) LookupOver(ctx context.Context, network, name string) ([]netip.Addr, error) {
	if len(g.Lease.DNS) == 0 {
		return nil, errors.New("the lease names no DNS server")
	}
	server := netip.AddrPortFrom(g.Lease.DNS[0], 53)
	var c net.Conn
	var err error
	if network == "tcp" {
		c, err = g.DialTCP(ctx, server)
	} else {
		c, err = g.DialUDP(server)
	}
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	q := new(mdns.Msg)
	q.SetQuestion(mdns.Fqdn(name), mdns.TypeA)
	dc := &mdns.Conn{Conn: c}
	if err := dc.WriteMsg(q); err != nil {
		return nil, err
	}
	r, err := dc.ReadMsg()
	if err != nil {
		return nil, err
	}
	if r.Rcode == mdns.RcodeNameError {
		return nil, ErrNXDomain
	}
	if r.Rcode != mdns.RcodeSuccess {
		return nil, fmt.Errorf("rcode %s", mdns.RcodeToString[r.Rcode])
	}
	var addrs []netip.Addr
	for _, rr := range r.Answer {
		if a, ok := rr.(*mdns.A); ok {
			ip, _ := netip.AddrFromSlice(a.A.To4())
			addrs = append(addrs, ip)
		}
	}
	return addrs, nil
}
