package usernet

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/sailbox-dev/sailbox/api/netapi"
)

func testPolicy(t *testing.T, noInternet bool, allow, deny []string) *policy {
	t.Helper()
	a, err := netapi.ParseRules(allow)
	if err != nil {
		t.Fatal(err)
	}
	d, err := netapi.ParseRules(deny)
	if err != nil {
		t.Fatal(err)
	}
	p := newPolicy(noInternet, a, d)
	p.hostAddrs = func() []netip.Addr { return []netip.Addr{netip.MustParseAddr("10.1.2.3")} }
	return p
}

func TestPolicyDecides(t *testing.T) {
	ip := netip.MustParseAddr
	public := ip("203.0.113.5")
	for _, tc := range []struct {
		name        string
		noInternet  bool
		allow, deny []string
		resolved    map[string][]netip.Addr // name → addresses the box's DNS answered
		guest, host netip.Addr
		allowed     bool
		reason      string
	}{
		{name: "internet by default", guest: public, host: public, allowed: true, reason: "internet"},
		{name: "no internet", noInternet: true, guest: public, host: public, reason: "no internet"},
		{name: "no internet, allowed CIDR", noInternet: true, allow: []string{"203.0.113.0/24"}, guest: public, host: public, allowed: true},
		{name: "deny CIDR", deny: []string{"203.0.113.0/24"}, guest: public, host: public, reason: "deny 203.0.113.0/24"},
		{name: "deny wins over allow", allow: []string{"203.0.113.5"}, deny: []string{"203.0.0.0/16"}, guest: public, host: public, reason: "deny"},
		{name: "host loopback through HostIP", guest: netapi.HostIP, host: netapi.HostLoopback, reason: "host loopback"},
		{name: "host loopback allowed", allow: []string{"127.0.0.1"}, guest: netapi.HostIP, host: netapi.HostLoopback, allowed: true},
		{name: "HostIP allowed by its guest address", allow: []string{netapi.HostIP.String()}, guest: netapi.HostIP, host: netapi.HostLoopback, allowed: true},
		{name: "host loopback denied by its guest address", allow: []string{"127.0.0.0/8"}, deny: []string{netapi.HostIP.String()}, guest: netapi.HostIP, host: netapi.HostLoopback, reason: "deny"},
		{name: "unspecified", guest: ip("0.0.0.0"), host: ip("0.0.0.0"), reason: "unspecified"},
		{name: "metadata", guest: ip("169.254.169.254"), host: ip("169.254.169.254"), reason: "link-local"},
		{name: "metadata allowed", allow: []string{"169.254.169.254"}, guest: ip("169.254.169.254"), host: ip("169.254.169.254"), allowed: true},
		{name: "multicast", guest: ip("239.1.1.1"), host: ip("239.1.1.1"), reason: "multicast"},
		{name: "broadcast", guest: ip("255.255.255.255"), host: ip("255.255.255.255"), reason: "broadcast"},
		{name: "host's own address", guest: ip("10.1.2.3"), host: ip("10.1.2.3"), reason: "host's own"},
		{name: "private network", guest: ip("10.9.9.9"), host: ip("10.9.9.9"), allowed: true},
		{name: "own network, even allowed", allow: []string{"0.0.0.0/0"}, guest: ip("192.168.127.9"), host: ip("192.168.127.9"), reason: "own network"},
		{name: "gateway", allow: []string{"0.0.0.0/0"}, guest: netapi.GatewayIP, host: netapi.GatewayIP, reason: "own network"},
		{
			name: "allowed domain", noInternet: true, allow: []string{"example.com"},
			resolved: map[string][]netip.Addr{"www.example.com": {public}},
			guest:    public, host: public, allowed: true, reason: "allow example.com",
		},
		{
			name: "a name resolved elsewhere does not count", noInternet: true, allow: []string{"example.com"},
			resolved: map[string][]netip.Addr{"example.org": {public}},
			guest:    public, host: public, reason: "no internet",
		},
		{
			name: "denied domain wins over allowed CIDR", allow: []string{"203.0.113.0/24"}, deny: []string{"ads.example"},
			resolved: map[string][]netip.Addr{"x.ads.example": {public}},
			guest:    public, host: public, reason: "deny ads.example",
		},
		{
			name: "denied and allowed domains on one address", allow: []string{"good.example"}, deny: []string{"bad.example"},
			resolved: map[string][]netip.Addr{"good.example": {public}, "bad.example": {public}},
			guest:    public, host: public, reason: "deny bad.example",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := testPolicy(t, tc.noInternet, tc.allow, tc.deny)
			for name, addrs := range tc.resolved {
				p.recordAnswer([]string{name}, addrs)
			}
			v := p.check(tc.guest, tc.host)
			if v.allow != tc.allowed || !strings.Contains(v.reason, tc.reason) {
				t.Fatalf("check(%v, %v) = %+v; want allowed %v, reason with %q", tc.guest, tc.host, v, tc.allowed, tc.reason)
			}
		})
	}
}

func TestPolicyLookups(t *testing.T) {
	open := testPolicy(t, false, nil, []string{"bad.example"})
	if !open.lookupAllowed("anything.example") || !open.lookupAllowed("bad.example") {
		t.Fatal("with internet, every name is looked up (denied ones too, so that connecting is refused)")
	}
	closed := testPolicy(t, true, []string{"pypi.org", "10.0.0.0/8"}, nil)
	for name, want := range map[string]bool{"pypi.org": true, "files.pypi.org": true, "evilpypi.org": false, "example.com": false} {
		if got := closed.lookupAllowed(name); got != want {
			t.Errorf("no internet: lookup %s allowed %v, want %v", name, got, want)
		}
	}
}

func TestPolicyRemembersBoundedAnswers(t *testing.T) {
	p := testPolicy(t, true, []string{"example.com"}, nil)
	p.recordAnswer([]string{"unrelated.org"}, []netip.Addr{netip.MustParseAddr("198.51.100.1")})
	if len(p.resolved) != 0 {
		t.Fatal("an answer no domain rule matches was kept")
	}
	first := netip.MustParseAddr("198.51.100.2")
	p.recordAnswer([]string{"example.com"}, []netip.Addr{first})
	for i := range maxResolved {
		p.recordAnswer([]string{"a.example.com"}, []netip.Addr{netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})})
	}
	if len(p.resolved) != maxResolved || p.resolved[first] != nil {
		t.Fatalf("%d answers kept, oldest kept: %v; want %d, the oldest dropped", len(p.resolved), p.resolved[first] != nil, maxResolved)
	}
}
