package usernet

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/sailbox-dev/sailbox/api/netapi"
	"github.com/sailbox-dev/sailbox/internal/usernet/fakeguest"
)

// rawGuest is a guest that writes and reads raw frames on the network's
// socket, as the VMM's virtio-net device hands them over, answering the
// gateway's ARP requests for its address while it reads.
type rawGuest struct {
	t    *testing.T
	conn *net.UnixConn
	mac  net.HardwareAddr
	ip   net.IP
	gw   net.HardwareAddr
}

func attachRaw(t *testing.T, path string) *rawGuest {
	t.Helper()
	conn, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	g := &rawGuest{t: t, conn: conn, mac: mustMAC(t, netapi.DefaultGuestMAC), gw: mustMAC(t, netapi.GatewayMAC)}
	lease, err := fakeguest.DHCP(conn, g.mac, 10*time.Second)
	if err != nil {
		t.Fatalf("dhcp: %v", err)
	}
	g.ip = net.IP(lease.IP.Addr().AsSlice())
	return g
}

// send writes one frame of the given layers, lengths and checksums
// computed, with no padding.
func (g *rawGuest) send(ls ...gopacket.SerializableLayer) int {
	g.t.Helper()
	sb := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(sb, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		g.t.Fatal(err)
	}
	if _, err := g.conn.Write(sb.Bytes()); err != nil {
		g.t.Fatalf("write a %d-byte frame: %v", len(sb.Bytes()), err)
	}
	return len(sb.Bytes())
}

// next returns the next frame from the network that is not an ARP
// request (those it answers).
func (g *rawGuest) next() []byte {
	g.t.Helper()
	buf := make([]byte, 1<<17)
	g.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		n, err := g.conn.Read(buf)
		if err != nil {
			g.t.Fatalf("read a frame: %v", err)
		}
		p := gopacket.NewPacket(buf[:n], layers.LayerTypeEthernet, gopacket.Default)
		if a, ok := p.Layer(layers.LayerTypeARP).(*layers.ARP); ok {
			if a.Operation == layers.ARPRequest && net.IP(a.DstProtAddress).Equal(g.ip) {
				g.send(&layers.Ethernet{SrcMAC: g.mac, DstMAC: a.SourceHwAddress, EthernetType: layers.EthernetTypeARP},
					&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
						Operation: layers.ARPReply, SourceHwAddress: g.mac, SourceProtAddress: g.ip.To4(), DstHwAddress: a.SourceHwAddress, DstProtAddress: a.SourceProtAddress})
			}
			continue
		}
		return bytes.Clone(buf[:n])
	}
}

// tcp returns the next TCP segment from the network, with its frame's
// length.
func (g *rawGuest) tcp() (*layers.TCP, int) {
	g.t.Helper()
	for {
		f := g.next()
		if s, ok := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default).Layer(layers.LayerTypeTCP).(*layers.TCP); ok {
			return s, len(f)
		}
	}
}

func (g *rawGuest) eth() *layers.Ethernet {
	return &layers.Ethernet{SrcMAC: g.mac, DstMAC: g.gw, EthernetType: layers.EthernetTypeIPv4}
}

func (g *rawGuest) ipv4(proto layers.IPProtocol, id uint16) *layers.IPv4 {
	return &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, Id: id, Flags: layers.IPv4DontFragment,
		SrcIP: g.ip, DstIP: net.IP(netapi.HostIP.AsSlice())}
}

// The VMM's virtio-net device hands the guest's TSO packets on whole, up
// to 64 KiB: the stack takes a TCP segment far above the link's MTU, and
// the host socket gets every byte of it, once. What the network sends
// back stays within the guest's MTU and MSS: TCP segments, and a UDP
// reply larger than the MTU, which goes as IP fragments.
func TestSegmentsAboveTheMTUFromTheGuestAreTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const reply = 20000
	sizes, got := make(chan int, 1), make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		b := make([]byte, <-sizes)
		n, _ := io.ReadFull(c, b)
		got <- b[:n]
		c.Write(payload(reply))
	}()
	port := uint16(netip.MustParseAddrPort(ln.Addr().String()).Port())
	n, path, _ := start(t, Config{Allow: []string{"127.0.0.1"}})
	g := attachRaw(t, path)

	// The handshake, without window scaling: the SYN-ACK's window is the
	// window.
	const iss = 1000
	syn := &layers.TCP{SrcPort: 40000, DstPort: layers.TCPPort(port), Seq: iss, SYN: true, Window: 65535,
		Options: []layers.TCPOption{{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}}}}
	ip := g.ipv4(layers.IPProtocolTCP, 1)
	syn.SetNetworkLayerForChecksum(ip)
	g.send(g.eth(), ip, syn)
	synAck, _ := g.tcp()
	if !synAck.SYN || !synAck.ACK || synAck.Ack != iss+1 {
		t.Fatalf("got %+v, want a SYN-ACK", synAck)
	}
	size := min(int(synAck.Window), 60000)
	if size <= 4*netapi.MTU {
		t.Fatalf("the stack's window is %d bytes: too small to show a large segment", synAck.Window)
	}
	sizes <- size
	t.Logf("one segment of %d bytes (the window: %d)", size, synAck.Window)
	// One segment: the ACK and size bytes, a frame of size+54 bytes.
	data := payload(size)
	seg := &layers.TCP{SrcPort: 40000, DstPort: layers.TCPPort(port), Seq: iss + 1, Ack: synAck.Seq + 1, ACK: true, PSH: true, Window: 65535}
	ip = g.ipv4(layers.IPProtocolTCP, 2)
	seg.SetNetworkLayerForChecksum(ip)
	if fl := g.send(g.eth(), ip, seg, gopacket.Payload(data)); fl <= netapi.MTU+14 {
		t.Fatalf("a %d-byte frame is not above the MTU", fl)
	}
	for acked := false; !acked; {
		s, fl := g.tcp()
		if fl > netapi.MTU+14 || len(s.Payload) > 1460 {
			t.Fatalf("the network sent a %d-byte frame, %d bytes of TCP payload: above the guest's MTU or MSS", fl, len(s.Payload))
		}
		acked = s.Ack == iss+1+uint32(size)
	}
	// The host's reply comes in MSS-sized segments, each acknowledged.
	for next := synAck.Seq + 1; next != synAck.Seq+1+reply; {
		s, fl := g.tcp()
		if fl > netapi.MTU+14 || len(s.Payload) > 1460 {
			t.Fatalf("the network sent a %d-byte frame, %d bytes of TCP payload: above the guest's MTU or MSS", fl, len(s.Payload))
		}
		if s.Seq == next {
			next += uint32(len(s.Payload))
		}
		ack := &layers.TCP{SrcPort: 40000, DstPort: layers.TCPPort(port), Seq: iss + 1 + uint32(size), Ack: next, ACK: true, Window: 65535}
		ip := g.ipv4(layers.IPProtocolTCP, 3)
		ack.SetNetworkLayerForChecksum(ip)
		g.send(g.eth(), ip, ack)
	}
	if b := <-got; !bytes.Equal(b, data) {
		t.Fatalf("the host read %d bytes, want the %d-byte segment", len(b), size)
	}
	if st := n.Stats(); st.FramesDropped != 0 || st.BytesOut < uint64(size) {
		t.Fatalf("stats %+v", st)
	}
}

// A UDP reply larger than the MTU reaches the guest as IP fragments, each
// within the MTU, that carry the whole datagram.
func TestLargeUDPRepliesAreFragmentedToTheMTU(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	const size = 4000
	go func() {
		buf := make([]byte, 2048)
		pc.SetDeadline(time.Now().Add(20 * time.Second))
		_, from, err := pc.ReadFrom(buf)
		if err == nil {
			pc.WriteTo(payload(size), from)
		}
	}()
	port := uint16(netip.MustParseAddrPort(pc.LocalAddr().String()).Port())
	_, path, _ := start(t, Config{Allow: []string{"127.0.0.1"}})
	g := attachRaw(t, path)
	ip := g.ipv4(layers.IPProtocolUDP, 3)
	u := &layers.UDP{SrcPort: 40001, DstPort: layers.UDPPort(port)}
	u.SetNetworkLayerForChecksum(ip)
	g.send(g.eth(), ip, u, gopacket.Payload([]byte("ask")))
	var carried int
	for carried < size+8 {
		f := g.next()
		if len(f) > netapi.MTU+14 {
			t.Fatalf("the network sent a %d-byte frame, above the guest's MTU", len(f))
		}
		p := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
		if l, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok && l.Protocol == layers.IPProtocolUDP {
			carried += len(l.Payload)
		}
	}
	if carried != size+8 {
		t.Fatalf("fragments carried %d bytes, want the %d-byte datagram", carried, size+8)
	}
}
