package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api/netapi"
	"github.com/sailbox-dev/sailbox/api/vmmapi"
	virtionet "github.com/sailbox-dev/sailbox/devices/virtio/net"
	"github.com/sailbox-dev/sailbox/guestagent"
	"github.com/sailbox-dev/sailbox/internal/kvmtest"
)

// The guest's side of the test network, and the fake network's gateway:
// the addresses sailbox-net gives every box.
var (
	guestIP       = net.IP(netapi.GuestIP.AsSlice())
	gatewayIP     = net.IP(netapi.GatewayIP.AsSlice())
	gatewayMAC, _ = net.ParseMAC(netapi.GatewayMAC)
)

// fakeNet is a user-space network in a few lines, where sailbox-net
// would be: it listens on a SOCK_SEQPACKET socket (one Ethernet frame per
// message, as gvisor-tap-vsock's bess transport) and answers ARP and ICMP
// echo requests for gatewayIP. It dials nothing.
type fakeNet struct {
	path       string
	frames     atomic.Int64 // frames received
	bytes      atomic.Int64 // their bytes
	replies    atomic.Int64 // frames sent (ARP and echo replies)
	replyBytes atomic.Int64 // their bytes
	echoes     atomic.Int64 // echo requests answered
	largest    atomic.Int64 // the longest frame received

	mu      sync.Mutex
	senders map[string]bool // source MACs seen
}

func startFakeNet(t *testing.T, path string) *fakeNet {
	t.Helper()
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	n := &fakeNet{path: path, senders: map[string]bool{}}
	var wg sync.WaitGroup
	var conns sync.Map
	t.Cleanup(func() {
		ln.Close()
		conns.Range(func(c, _ any) bool { c.(net.Conn).Close(); return true })
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			conns.Store(c, true)
			wg.Add(1)
			go func() {
				defer wg.Done()
				n.serve(c)
			}()
		}
	}()
	return n
}

// serve answers what the guest sends on c until the link ends.
func (n *fakeNet) serve(c *net.UnixConn) {
	buf := make([]byte, 64<<10)
	for {
		size, err := c.Read(buf)
		if err != nil {
			return
		}
		frame := buf[:size]
		n.frames.Add(1)
		n.bytes.Add(int64(size))
		if int64(size) > n.largest.Load() {
			n.largest.Store(int64(size))
		}
		if len(frame) < 14 {
			continue
		}
		n.mu.Lock()
		n.senders[net.HardwareAddr(frame[6:12]).String()] = true
		n.mu.Unlock()
		var reply []byte
		switch binary.BigEndian.Uint16(frame[12:]) {
		case 0x0806:
			reply = arpReply(frame)
		case 0x0800:
			if reply = echoReply(frame); reply != nil {
				n.echoes.Add(1)
			}
		}
		if reply != nil {
			if _, err := c.Write(reply); err != nil {
				return
			}
			n.replies.Add(1)
			n.replyBytes.Add(int64(len(reply)))
		}
	}
}

func (n *fakeNet) sawSender(mac string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.senders[mac]
}

// arpReply answers an ARP request (RFC 826) for gatewayIP.
func arpReply(f []byte) []byte {
	a := f[14:]
	if len(a) < 28 || binary.BigEndian.Uint16(a[0:]) != 1 || binary.BigEndian.Uint16(a[2:]) != 0x0800 ||
		a[4] != 6 || a[5] != 4 || binary.BigEndian.Uint16(a[6:]) != 1 || !bytes.Equal(a[24:28], gatewayIP) {
		return nil
	}
	r := make([]byte, 14+28)
	copy(r[0:], a[8:14]) // to the requester
	copy(r[6:], gatewayMAC)
	binary.BigEndian.PutUint16(r[12:], 0x0806)
	ra := r[14:]
	copy(ra[0:8], a[0:6])
	binary.BigEndian.PutUint16(ra[6:], 2) // reply
	copy(ra[8:], gatewayMAC)
	copy(ra[14:], gatewayIP)
	copy(ra[18:], a[8:18]) // the requester's MAC and IP
	return r
}

// echoReply answers an ICMP echo request (RFC 792) to gatewayIP.
func echoReply(f []byte) []byte {
	ip := f[14:]
	if len(ip) < 20 || ip[0]>>4 != 4 {
		return nil
	}
	ihl := int(ip[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if ihl < 20 || total < ihl+8 || total > len(ip) || ip[9] != 1 || !bytes.Equal(ip[16:20], gatewayIP) || ip[ihl] != 8 {
		return nil
	}
	r := make([]byte, 14+total)
	copy(r[0:], f[6:12])
	copy(r[6:], gatewayMAC)
	binary.BigEndian.PutUint16(r[12:], 0x0800)
	rip := r[14:]
	copy(rip, ip[:total])
	copy(rip[12:16], ip[16:20])
	copy(rip[16:20], ip[12:16])
	rip[8] = 64
	binary.BigEndian.PutUint16(rip[10:], 0)
	binary.BigEndian.PutUint16(rip[10:], checksum(rip[:ihl]))
	icmp := rip[ihl:]
	icmp[0] = 0 // echo reply
	binary.BigEndian.PutUint16(icmp[2:], 0)
	binary.BigEndian.PutUint16(icmp[2:], checksum(icmp))
	return r
}

// checksum is the Internet checksum (RFC 1071).
func checksum(b []byte) uint16 {
	var sum uint32
	for ; len(b) >= 2; b = b[2:] {
		sum += uint32(binary.BigEndian.Uint16(b))
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// ping runs script, then pings the gateway once, in the guest: the ping
// must be answered.
func ping(ctx context.Context, t *testing.T, agent *guestagent.Client, script string) {
	t.Helper()
	out, stderr, code, err := agent.Run(ctx, "sh", "-c", script+"ping -c 1 -W 10 "+gatewayIP.String())
	if err != nil || code != 0 || !strings.Contains(string(out), "1 packets received") {
		t.Fatalf("ping the gateway: exit %d, %v\nstdout:\n%s\nstderr:\n%s", code, err, out, stderr)
	}
}

// A guest with -net has eth0 on the network behind the socket: it pings
// the fake network's gateway (ARP, then ICMP echo, frames both ways
// through the device), and the VMM's status counts those frames in the
// directions the network saw them. A checkpoint of it restores only with a network
// socket; the restored guest, in a sailbox-vmm process with its seccomp
// filter and Landlock rules on, keeps its address and pings through its
// new peer, while the original pings on through its own.
func TestKVMNet(t *testing.T) {
	kvmtest.Require(t)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	peer := startFakeNet(t, filepath.Join(dir, "net.sock"))
	p := startVMM(t, "-store", store, "-net", peer.path)
	agent := p.waitAgent(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	ping(ctx, t, agent, "ip link set eth0 up && ip addr add "+guestIP.String()+"/24 dev eth0 && ")
	if peer.echoes.Load() == 0 {
		t.Fatal("the network answered no echo request")
	}
	// Full-size frames both ways: 1472 bytes of data fill the MTU.
	ping(ctx, t, agent, "ping -c 2 -s 1472 -W 10 "+gatewayIP.String()+" && ")
	if got := peer.largest.Load(); got != 14+virtionet.MTU {
		t.Errorf("the largest frame from the guest had %d bytes, want %d", got, 14+virtionet.MTU)
	}
	if mac := virtionet.DefaultMAC.String(); !peer.sawSender(mac) {
		t.Errorf("no frame from the guest's MAC %s", mac)
	}

	api := vmmapi.NewClient(p.api)
	if _, err := api.Checkpoint(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	echoes := peer.echoes.Load()
	got, gotBytes, sent := peer.frames.Load(), peer.bytes.Load(), peer.replies.Load()
	ping(ctx, t, agent, "")
	if peer.echoes.Load() == echoes {
		t.Error("the original's ping after the checkpoint did not reach its network")
	}
	// The device's counters in the VMM's status. Each frame the network
	// got or sent before that ping was counted by the device before the
	// ping's own, which came back: the network's counts from then bound
	// the device's from below, each in its direction (out: from the
	// guest). The ping of 1472 bytes made a full frame each way.
	st, err := api.Status(ctx)
	if n := st.Network; err != nil || n == nil {
		t.Errorf("status: %+v, %v; want the network device's counters", st, err)
	} else {
		t.Logf("device: %+v; the network got %d frames (%d bytes) and sent %d (%d bytes)", *n, peer.frames.Load(), peer.bytes.Load(), peer.replies.Load(), peer.replyBytes.Load())
		if n.FramesOut < uint64(got) || n.BytesOut < uint64(gotBytes) || n.BytesOut < 14+virtionet.MTU ||
			n.FramesIn+n.DroppedIn+n.InvalidIn < uint64(sent) || n.FramesIn == 0 || n.BytesIn < 14+virtionet.MTU ||
			n.InvalidOut != 0 || n.InvalidIn != 0 || n.PeerGone {
			t.Errorf("device counters %+v; the network got %d frames (%d bytes) and sent %d before the last ping", *n, got, gotBytes, sent)
		}
	}

	t.Run("RestoreNeedsNetwork", func(t *testing.T) {
		err := run(ctx, []string{"-store", store, "-restore", "n1", "-vsock-uds", filepath.Join(dir, "r.vsock"),
			"-console=false", "-seccomp", "off", "-landlock=false"}, &bytes.Buffer{}, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), "network socket") || !strings.Contains(err.Error(), "-net") {
			t.Errorf("restore without -net: %v", err)
		}
	})
	t.Run("BootNeedsItsSocket", func(t *testing.T) {
		nobody := filepath.Join(dir, "nobody.sock")
		err := run(ctx, []string{"-kernel", kvmtest.Artifact(t, "SAILBOX_GUEST_KERNEL"), "-net", nobody,
			"-console=false", "-seccomp", "off", "-landlock=false"}, &bytes.Buffer{}, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), nobody) {
			t.Errorf("boot with a network socket nobody listens on: %v", err)
		}
	})

	peer2 := startFakeNet(t, filepath.Join(dir, "net2.sock"))
	kid := startNetRestore(ctx, t, store, "n1", dir, peer2.path)
	out, _, code, err := kid.Run(ctx, "ip", "addr", "show", "eth0")
	if err != nil || code != 0 || !strings.Contains(string(out), guestIP.String()+"/24") {
		t.Fatalf("restored eth0: %q, %d, %v", out, code, err)
	}
	ping(ctx, t, kid, "")
	if peer2.echoes.Load() == 0 {
		t.Error("the restored guest's ping did not reach its new network")
	}
	echoes = peer.echoes.Load()
	ping(ctx, t, agent, "")
	if peer.echoes.Load() == echoes {
		t.Error("the original's ping went elsewhere once the restore ran")
	}
}

// startNetRestore starts a sailbox-vmm process (this test binary as its
// main, with its seccomp filter and Landlock rules) restored from ckpt,
// connected to the network at netSock, and returns its agent once it
// answers. It is killed at cleanup.
func startNetRestore(ctx context.Context, t *testing.T, store, ckpt, dir, netSock string) *guestagent.Client {
	t.Helper()
	t.Setenv(asMain, "1")
	l := vmmapi.Launch{
		MemoryMiB: vmmapi.DefaultMemoryMiB, VCPUs: vmmapi.DefaultVCPUs,
		Store: store, Restore: ckpt, NetSocket: netSock,
		APISocket: filepath.Join(dir, "restored.api"),
		VsockUDS:  filepath.Join(dir, "restored.vsock"),
		Log:       filepath.Join(dir, "restored.log"),
	}
	cmd, err := l.Start(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			b, _ := os.ReadFile(l.Log)
			t.Logf("restored VMM's log:\n%s", b)
		}
	})
	agent := guestagent.NewHybridClient(l.VsockUDS)
	if _, err := agent.WaitHealthy(ctx, 100*time.Millisecond, exited); err != nil {
		t.Fatalf("restored agent: %v", err) // the cleanup prints the VMM's log
	}
	return agent
}
