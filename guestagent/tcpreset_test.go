package guestagent

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// A guest's /proc/net/tcp: a listener, a download from the host through
// the box's network, a connection on loopback, a closing one, one still
// opening, and a client of a server in the guest.
const procNetTCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 027FA8C0:A1B2 FE7FA8C0:1F90 01 00000000:00000000 02:000000FA 00000000     0        0 1002 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F40 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 20 4 30 10 -1
   3: 027FA8C0:A1B3 FE7FA8C0:1F90 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
   4: 027FA8C0:A1B4 04030201:0050 02 00000000:00000001 01:00000100 00000002     0        0 1005 1 0000000000000000 100 0 0 10 -1
   5: 027FA8C0:1F40 017FA8C0:C001 08 00000000:00000000 00:00000000 00000000     0        0 1006 1 0000000000000000 20 4 30 10 -1
`

func TestParseProcNetTCP(t *testing.T) {
	socks, err := parseProcNetTCP(strings.NewReader(procNetTCP))
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort
	want := []tcpSocket{
		{ap("0.0.0.0:8000"), ap("0.0.0.0:0"), 0x0a},
		{ap("192.168.127.2:41394"), ap("192.168.127.254:8080"), tcpEstablished},
		{ap("127.0.0.1:8000"), ap("127.0.0.1:50000"), tcpEstablished},
		{ap("192.168.127.2:41395"), ap("192.168.127.254:8080"), 0x06},
		{ap("192.168.127.2:41396"), ap("1.2.3.4:80"), 0x02},
		{ap("192.168.127.2:8000"), ap("192.168.127.1:49153"), tcpCloseWait},
	}
	if !slices.Equal(socks, want) {
		t.Fatalf("parsed\n%v\nwant\n%v", socks, want)
	}
	var stale []int
	for i, s := range socks {
		if s.stale() {
			stale = append(stale, i)
		}
	}
	// The download and the client of the guest's server; not the
	// listener, loopback, a closed one or one still opening.
	if !slices.Equal(stale, []int{1, 5}) {
		t.Errorf("stale sockets %v, want [1 5]", stale)
	}
	for _, bad := range []string{
		"header\n   0: 0100007F:1F40\n",
		"header\n   0: 0100007F 00000000:0000 0A\n",
		"header\n   0: 0100007F:1F40 00000000:0000 XY\n",
		"header\n   0: 0100007F:1F40 00000000:10000 0A\n",
	} {
		if _, err := parseProcNetTCP(strings.NewReader(bad)); err == nil {
			t.Errorf("parsed %q", bad)
		}
	}
}

// A probe is a valid IPv4 TCP packet from the peer to the guest: a bare
// SYN, with the sequence number asked for.
func TestResetProbe(t *testing.T) {
	c := tcpSocket{Local: netip.MustParseAddrPort("192.168.127.2:41394"), Remote: netip.MustParseAddrPort("192.168.127.254:8080"), State: tcpEstablished}
	for _, seq := range []uint32{0, 0x80000001, 0xffffffff} {
		p := resetProbe(c, seq)
		ip := header.IPv4(p)
		if !ip.IsValid(len(p)) || !ip.IsChecksumValid() || ip.TransportProtocol() != header.TCPProtocolNumber ||
			ip.SourceAddress() != tcpip.AddrFrom4([4]byte{192, 168, 127, 254}) || ip.DestinationAddress() != tcpip.AddrFrom4([4]byte{192, 168, 127, 2}) {
			t.Fatalf("seq %#x: bad IPv4 header % x", seq, p[:ipv4HeaderLen])
		}
		tcp := header.TCP(ip.Payload())
		if !tcp.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), 0, 0) {
			t.Errorf("seq %#x: bad TCP checksum", seq)
		}
		if tcp.SourcePort() != 8080 || tcp.DestinationPort() != 41394 || tcp.SequenceNumber() != seq || tcp.Flags() != header.TCPFlagSyn || tcp.AckNumber() != 0 || len(tcp.Payload()) != 0 {
			t.Errorf("seq %#x: TCP header % x", seq, []byte(tcp))
		}
	}
}
