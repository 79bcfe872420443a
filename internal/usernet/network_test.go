package usernet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api/netapi"
	"github.com/sailbox-dev/sailbox/internal/logtest"
	"github.com/sailbox-dev/sailbox/internal/nettest"
	"github.com/sailbox-dev/sailbox/internal/usernet/fakeguest"
)

// Every host-side connection these tests make the network open goes to
// 127.0.0.1; refused destinations elsewhere are never dialled.

const testBox = "sb-test1"

// start builds a network for cfg (Box and Log filled in), serves it on a
// fresh SOCK_SEQPACKET socket, and returns it with the socket's path and
// the log.
func start(t *testing.T, cfg Config) (*Network, string, *logtest.Buffer) {
	t.Helper()
	logs := &logtest.Buffer{}
	cfg.Box = testBox
	cfg.Log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	guardHost(t, n)
	path := nettest.SocketPath(t)
	l, err := net.Listen("unixpacket", path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		n.Close()
		if t.Failed() {
			t.Logf("network log:\n%s", logs)
		}
	})
	return n, path, logs
}

// guardHost keeps n's host side on loopback whatever its policy decides:
// a dial elsewhere, or a DNS question for the host's resolver, fails the
// test instead of leaving the machine.
func guardHost(t *testing.T, n *Network) {
	var d net.Dialer
	n.dial = func(ctx context.Context, network, address string) (net.Conn, error) {
		if a, err := netip.ParseAddrPort(address); err != nil || !a.Addr().IsLoopback() {
			t.Errorf("the network dialled %s %s: tests reach loopback only", network, address)
			return nil, errors.New("not loopback")
		}
		return d.DialContext(ctx, network, address)
	}
	n.upstream = refusingResolver{t}
}

// refusingResolver fails every question: tests resolve static hosts only.
type refusingResolver struct{ t *testing.T }

func (r refusingResolver) fail(name string) error {
	r.t.Errorf("the network asked the host's resolver about %q", name)
	return &net.DNSError{Err: "no upstream in tests", Name: name, IsNotFound: true}
}

func (r refusingResolver) LookupIPAddr(_ context.Context, host string) ([]net.IPAddr, error) {
	return nil, r.fail(host)
}

func (r refusingResolver) LookupCNAME(_ context.Context, host string) (string, error) {
	return "", r.fail(host)
}

func (r refusingResolver) LookupMX(_ context.Context, name string) ([]*net.MX, error) {
	return nil, r.fail(name)
}

func (r refusingResolver) LookupNS(_ context.Context, name string) ([]*net.NS, error) {
	return nil, r.fail(name)
}

func (r refusingResolver) LookupSRV(_ context.Context, _, _, name string) (string, []*net.SRV, error) {
	return "", nil, r.fail(name)
}

func (r refusingResolver) LookupTXT(_ context.Context, name string) ([]string, error) {
	return nil, r.fail(name)
}

// hostServer serves payload at /file on 127.0.0.1 and returns its port.
func hostServer(t *testing.T, payload []byte) uint16 {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/file" {
			http.NotFound(w, r)
			return
		}
		w.Write(payload)
	}))
	t.Cleanup(srv.Close)
	return netip.MustParseAddrPort(srv.Listener.Addr().String()).Port()
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func payload(size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

func fetch(t *testing.T, g *fakeguest.Guest, url string) []byte {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctxFor(t, 20*time.Second), http.MethodGet, url, nil)
	resp, err := g.HTTPClient().Do(req)
	if err != nil {
		t.Fatalf("GET %s from the guest: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s from the guest: %s, %v", url, resp.Status, err)
	}
	return b
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDHCPGivesTheGuestItsStaticLease(t *testing.T) {
	for _, mac := range []string{"", "02:00:00:00:00:07"} {
		t.Run("mac="+mac, func(t *testing.T) {
			_, path, _ := start(t, Config{MAC: mac})
			want := mac
			if want == "" {
				want = netapi.DefaultGuestMAC
			}
			g := fakeguest.Attach(t, path, want)
			l := g.Lease
			if l.IP != netip.PrefixFrom(netapi.GuestIP, 24) || l.Router != netapi.GatewayIP ||
				len(l.DNS) != 1 || l.DNS[0] != netapi.GatewayIP || l.MTU != netapi.MTU {
				t.Fatalf("lease %+v: want %v/24, router and DNS %v, MTU %d", l, netapi.GuestIP, netapi.GatewayIP, netapi.MTU)
			}
		})
	}
}

func TestGuestFetchesFromAllowedHostLoopbackByIPAndName(t *testing.T) {
	body := payload(1 << 20)
	port := hostServer(t, body)
	n, path, _ := start(t, Config{
		Allow: []string{"127.0.0.1"},
		Hosts: map[string]netip.Addr{"files.test": netapi.HostIP},
	})
	g := fakeguest.Attach(t, path, netapi.DefaultGuestMAC)

	addrs, err := g.Lookup(ctxFor(t, 5*time.Second), "files.test")
	if err != nil || len(addrs) != 1 || addrs[0] != netapi.HostIP {
		t.Fatalf("lookup files.test: %v, %v; want %v", addrs, err, netapi.HostIP)
	}
	for _, host := range []string{netapi.HostIP.String(), addrs[0].String()} {
		got := fetch(t, g, fmt.Sprintf("http://%s:%d/file", host, port))
		if sha256.Sum256(got) != sha256.Sum256(body) {
			t.Fatalf("fetched %d bytes, not the %d served", len(got), len(body))
		}
	}
	st := n.Stats()
	if st.ConnectionsOut != 2 || st.BytesIn < 2<<20 || st.BytesOut == 0 || st.FramesIn == 0 ||
		st.FramesOut == 0 || st.Refused != 0 || !st.GuestAttached || st.Box != testBox {
		t.Fatalf("stats %+v", st)
	}
	waitFor(t, "connections to close", func() bool { return n.Stats().OpenConnections == 0 })
}

func TestRefusedConnectionsAreResetAtOnceCountedAndLogged(t *testing.T) {
	port := hostServer(t, []byte("secret"))
	loop := netip.AddrPortFrom(netapi.HostIP, port)
	for _, tc := range []struct {
		name   string
		cfg    Config
		lookup string // resolved through the box's DNS first
		dst    netip.AddrPort
		reason string
	}{
		{"host loopback by default", Config{}, "", loop, "host loopback"},
		{"cloud metadata by default", Config{}, "", netip.MustParseAddrPort("169.254.169.254:80"), "link-local"},
		{"own network", Config{Allow: []string{"0.0.0.0/0"}}, "", netip.MustParseAddrPort("192.168.127.9:80"), "own network"},
		{"deny wins over allow", Config{Allow: []string{"127.0.0.0/8"}, Deny: []string{"127.0.0.1/32"}}, "", loop, "deny 127.0.0.1/32"},
		{"denied domain", Config{
			Allow: []string{"127.0.0.1"}, Deny: []string{"blocked.test"},
			Hosts: map[string]netip.Addr{"www.blocked.test": netapi.HostIP},
		}, "www.blocked.test", loop, "deny blocked.test"},
		{"no internet", Config{NoInternet: true}, "", netip.MustParseAddrPort("198.51.100.7:80"), "no internet"},
		{"allowed domain not resolved", Config{
			NoInternet: true, Allow: []string{"files.test"},
			Hosts: map[string]netip.Addr{"files.test": netapi.HostIP},
		}, "", loop, "host loopback"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, path, logs := start(t, tc.cfg)
			g := fakeguest.Attach(t, path, netapi.DefaultGuestMAC)
			if tc.lookup != "" {
				if _, err := g.Lookup(ctxFor(t, 5*time.Second), tc.lookup); err != nil {
					t.Fatalf("lookup %s: %v", tc.lookup, err)
				}
			}
			began := time.Now()
			c, err := g.DialTCP(ctxFor(t, 10*time.Second), tc.dst)
			if err == nil {
				c.Close()
				t.Fatalf("connected to %v", tc.dst)
			}
			if took := time.Since(began); took > 2*time.Second || !strings.Contains(err.Error(), "refused") {
				t.Fatalf("connect to %v: %v after %v; want a reset at once", tc.dst, err, took)
			}
			st := n.Stats()
			if st.Refused != 1 || st.ConnectionsOut != 0 || st.DialFailures != 0 {
				t.Fatalf("stats %+v: want one refusal and no dial", st)
			}
			log := logs.String()
			if !strings.Contains(log, "refused connection") || !strings.Contains(log, "box="+testBox) || !strings.Contains(log, tc.reason) {
				t.Fatalf("log names no refusal of box %s for %q:\n%s", testBox, tc.reason, log)
			}
		})
	}
}

func TestNoInternetLetsOnlyAllowedDomainsThrough(t *testing.T) {
	body := []byte("allowed")
	port := hostServer(t, body)
	n, path, logs := start(t, Config{
		NoInternet: true,
		Allow:      []string{"files.test"},
		Hosts:      map[string]netip.Addr{"files.test": netapi.HostIP},
	})
	g := fakeguest.Attach(t, path, netapi.DefaultGuestMAC)
	// Over TCP: the answer is read back from the stream, length-prefixed.
	addrs, err := g.LookupOver(ctxFor(t, 5*time.Second), "tcp", "files.test")
	if err != nil || len(addrs) != 1 {
		t.Fatalf("lookup files.test over TCP: %v, %v", addrs, err)
	}
	if got := fetch(t, g, fmt.Sprintf("http://%s:%d/file", addrs[0], port)); !bytes.Equal(got, body) {
		t.Fatalf("fetched %q", got)
	}
	// A name no allow rule matches is not even looked up on the host.
	if _, err := g.Lookup(ctxFor(t, 5*time.Second), "elsewhere.example"); !errors.Is(err, fakeguest.ErrNXDomain) {
		t.Fatalf("lookup elsewhere.example: %v, want NXDOMAIN", err)
	}
	if c, err := g.DialTCP(ctxFor(t, 10*time.Second), netip.MustParseAddrPort("198.51.100.7:443")); err == nil {
		c.Close()
		t.Fatal("connected to an address no rule allows")
	}
	st := n.Stats()
	if st.ConnectionsOut != 1 || st.Refused != 1 || st.RefusedLookups != 1 {
		t.Fatalf("stats %+v", st)
	}
	if !strings.Contains(logs.String(), "refused DNS lookup") {
		t.Fatalf("no refused lookup logged:\n%s", logs)
	}
}

// A name without a dot, such as the box's own hostname (its id), and one
// whose last label is a number, such as the SRV name apt looks up for a
// repository on an address, are answered NXDOMAIN by the box's DNS and
// never asked of the host's resolver, whatever the policy: under the
// default policy too, which looks up every other name on the host. It is
// no refusal of the policy's: not counted, not logged.
func TestNamesNoInternetServerKnowsNeverLeaveTheBox(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"default policy", Config{}},
		{"no internet", Config{NoInternet: true}},
		{"allowed everything", Config{Allow: []string{"0.0.0.0/0"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, path, logs := start(t, tc.cfg) // its host resolver fails the test if asked
			g := fakeguest.Attach(t, path, netapi.DefaultGuestMAC)
			for _, name := range []string{testBox, testBox + ".", "SB-Other", "192.168.127.254", "host.10"} {
				if _, err := g.Lookup(ctxFor(t, 5*time.Second), name); !errors.Is(err, fakeguest.ErrNXDomain) {
					t.Errorf("lookup %q: %v, want NXDOMAIN", name, err)
				}
			}
			// apt's: an SRV question, which fakeguest does not ask.
			if _, _, err := (&resolver{n: n}).LookupSRV(ctxFor(t, 5*time.Second), "", "", "_http._tcp.192.168.127.254."); err == nil {
				t.Error("an SRV lookup of an address's name was answered")
			}
			if _, err := g.LookupOver(ctxFor(t, 5*time.Second), "tcp", testBox); !errors.Is(err, fakeguest.ErrNXDomain) {
				t.Errorf("lookup %q over TCP: %v, want NXDOMAIN", testBox, err)
			}
			if st := n.Stats(); st.RefusedLookups != 0 {
				t.Errorf("stats %+v: a name no internet server knows counted as a refused lookup", st)
			}
			if strings.Contains(logs.String(), "refused DNS lookup") {
				t.Errorf("a name no internet server knows logged as a refusal:\n%s", logs)
			}
		})
	}
}

func TestUDPFlowsToAllowedHostAndRefusals(t *testing.T) {
	echo, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { echo.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			k, from, err := echo.ReadFrom(buf)
			if err != nil {
				return
			}
			echo.WriteTo(append([]byte("echo "), buf[:k]...), from)
		}
	}()
	port := netip.MustParseAddrPort(echo.LocalAddr().String()).Port()
	n, path, _ := start(t, Config{NoInternet: true, Allow: []string{"127.0.0.1"}})
	g := fakeguest.Attach(t, path, netapi.DefaultGuestMAC)

	c, err := g.DialUDP(netip.AddrPortFrom(netapi.HostIP, port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	for _, msg := range []string{"one", "two"} {
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		k, err := c.Read(buf)
		if err != nil || string(buf[:k]) != "echo "+msg {
			t.Fatalf("udp echo: %q, %v", buf[:k], err)
		}
	}
	if st := n.Stats(); st.ConnectionsOut != 1 {
		t.Fatalf("stats %+v: want one flow", st)
	}

	refused, err := g.DialUDP(netip.MustParseAddrPort("198.51.100.7:53"))
	if err != nil {
		t.Fatal(err)
	}
	defer refused.Close()
	refused.Write([]byte("x"))
	waitFor(t, "the datagram's refusal", func() bool { return n.Stats().Refused == 1 })
}

// guestEcho serves, on the guest's port, a server that answers what it
// reads, upper-cased, until EOF.
func guestEcho(t *testing.T, g *fakeguest.Guest, port uint16) {
	t.Helper()
	l, err := g.ListenTCP(port)
	if err != nil {
		t.Fatal(err)
	}
	nettest.Serve(t, l, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		c.Write(bytes.ToUpper(b))
	})
}

func TestDialGuestReachesAServerInTheGuest(t *testing.T) {
	n, path, _ := start(t, Config{NoInternet: true})
	if _, err := n.DialGuest(ctxFor(t, 5*time.Second), 8080); !errors.Is(err, netapi.ErrUnreachable) {
		t.Fatalf("dial with no VMM attached: %v, want unreachable", err)
	}
	g := fakeguest.Attach(t, path, netapi.DefaultGuestMAC)
	guestEcho(t, g, 8080)

	c, err := n.DialGuest(ctxFor(t, 5*time.Second), 8080)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("hello guest"))
	c.CloseWrite() // the guest's server reads EOF, answers, closes
	b, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(b) != "HELLO GUEST" {
		t.Fatalf("answer %q, %v", b, err)
	}

	began := time.Now()
	if _, err := n.DialGuest(ctxFor(t, 5*time.Second), 8081); !errors.Is(err, netapi.ErrRefused) || time.Since(began) > 2*time.Second {
		t.Fatalf("dial to a port nothing listens on: %v after %v, want refused at once", err, time.Since(began))
	}
	if st := n.Stats(); st.ConnectionsIn != 1 || st.Refused != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestANewVMMConnectionReplacesThePrevious(t *testing.T) {
	port := hostServer(t, []byte("again"))
	n, path, _ := start(t, Config{Allow: []string{"127.0.0.1"}})
	first := fakeguest.Attach(t, path, netapi.DefaultGuestMAC)
	fetch(t, first, fmt.Sprintf("http://%s:%d/file", netapi.HostIP, port))

	// A restored VMM connects again: same MAC, same lease.
	second := fakeguest.Attach(t, path, netapi.DefaultGuestMAC)
	if second.Lease.IP.Addr() != netapi.GuestIP {
		t.Fatalf("lease after reconnecting: %v", second.Lease.IP)
	}
	if got := fetch(t, second, fmt.Sprintf("http://%s:%d/file", netapi.HostIP, port)); string(got) != "again" {
		t.Fatalf("fetched %q", got)
	}
	guestEcho(t, second, 80)
	c, err := n.DialGuest(ctxFor(t, 5*time.Second), 80)
	if err != nil {
		t.Fatalf("dial the reconnected guest: %v", err)
	}
	c.Close()
	if !n.Stats().GuestAttached {
		t.Fatal("no guest attached")
	}
}

func TestRuntFramesAreDropped(t *testing.T) {
	n, path, _ := start(t, Config{})
	conn, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, b := range [][]byte{{1}, make([]byte, 13)} {
		if _, err := conn.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "two dropped frames", func() bool { return n.Stats().FramesDropped == 2 })
	// The link still works.
	if _, err := fakeguest.DHCP(conn, mustMAC(t, netapi.DefaultGuestMAC), 5*time.Second); err != nil {
		t.Fatalf("dhcp after runts: %v", err)
	}
}

func mustMAC(t *testing.T, s string) net.HardwareAddr {
	hw, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return hw
}

func TestNewRefusesBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{},
		{Box: "b", MAC: "ff:ff:ff:ff:ff:ff"},
		{Box: "b", Allow: []string{"10.0.0.0/33"}},
		{Box: "b", Deny: []string{""}},
		{Box: "b", Hosts: map[string]netip.Addr{"x.test": netip.MustParseAddr("::1")}},
	} {
		if n, err := New(cfg); err == nil {
			n.Close()
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}
