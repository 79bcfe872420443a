package netapi

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseRule(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.0/8":            "10.0.0.0/8",
		"10.1.2.3/8":            "10.0.0.0/8",
		"203.0.113.7":           "203.0.113.7/32",
		"::ffff:203.0.113.7":    "203.0.113.7/32",
		"2001:db8::/32":         "2001:db8::/32",
		"2001:db8::1":           "2001:db8::1/128",
		"Example.COM.":          "example.com",
		"pypi.org":              "pypi.org",
		"_srv.example.com":      "_srv.example.com",
		"xn--bcher-kva.test":    "xn--bcher-kva.test",
		"localhost":             "localhost",
		"a1.example.museum":     "a1.example.museum",
		"1.example.com":         "1.example.com",
		"::ffff:10.0.0.0/104":   "10.0.0.0/8",
		strings.Repeat("a", 63): strings.Repeat("a", 63),
	} {
		r, err := ParseRule(in)
		if err != nil || r.String() != want {
			t.Errorf("ParseRule(%q) = %v, %v; want %s", in, r, err, want)
		}
	}
}

func TestParseRuleRefusesBadInput(t *testing.T) {
	long := strings.Repeat("abcdefghi.", 25) + "example" // 257 characters
	for _, in := range []string{
		"",
		"10.0.0.0/33",
		"10.0.0/8",
		"10.0.0.0/",
		"/8",
		"300.1.1.1",
		"1.2.3",
		"fe80::1%eth0",
		"*.example.com",
		"example..com",
		".example.com",
		"-bad.example",
		"bad-.example",
		"exa mple.com",
		"exämple.com",
		"http://example.com",
		"example.com:443",
		strings.Repeat("a", 64) + ".com",
		long,
		"..",
		".",
	} {
		if r, err := ParseRule(in); err == nil {
			t.Errorf("ParseRule(%q) = %v, want an error", in, r)
		}
	}
	if _, err := ParseRules(make([]string, MaxRules+1)); err == nil {
		t.Error("more than MaxRules rules accepted")
	}
}

func TestRuleMatchesItsDomainAndNamesUnderIt(t *testing.T) {
	r, _ := ParseRule("example.com")
	for name, want := range map[string]bool{"example.com": true, "www.example.com": true, "a.b.example.com": true, "badexample.com": false, "example.com.evil": false, "com": false} {
		if r.Matches(name) != want {
			t.Errorf("%s matches %s: %v, want %v", r, name, !want, want)
		}
	}
	cidr, _ := ParseRule("10.0.0.0/8")
	if cidr.Matches("example.com") {
		t.Error("a CIDR rule matched a name")
	}
}

func TestParseHost(t *testing.T) {
	name, ip, err := ParseHost("Files.Test=192.168.127.254")
	if err != nil || name != "files.test" || ip != HostIP {
		t.Fatalf("ParseHost = %s, %v, %v", name, ip, err)
	}
	for _, in := range []string{"files.test", "=1.2.3.4", "files.test=", "files.test=::1", "files.test=x", "*.test=1.2.3.4",
		"files.test=127.0.0.1", "files.test=0.0.0.0", "files.test=224.0.0.1", "files.test=255.255.255.255"} {
		if _, _, err := ParseHost(in); err == nil {
			t.Errorf("ParseHost(%q) accepted", in)
		}
	}
}

func TestLaunchArgsRoundTrip(t *testing.T) {
	l := Launch{
		Socket: "/run/b/net.sock", Control: "/run/b/net.ctl", Box: "sb-1", MAC: "02:00:00:00:00:01",
		NoInternet: true, Allow: []string{"pypi.org", "10.0.0.0/8"}, Deny: []string{"10.9.0.0/16"},
		Hosts: map[string]netip.Addr{"b.test": HostIP, "a.test": netip.MustParseAddr("198.51.100.1")},
	}
	got, err := ParseLaunch(l.Args(), new(strings.Builder))
	if err != nil {
		t.Fatal(err)
	}
	if got.Socket != l.Socket || got.Control != l.Control || got.Box != l.Box || got.MAC != l.MAC || !got.NoInternet ||
		strings.Join(got.Allow, ",") != "pypi.org,10.0.0.0/8" || strings.Join(got.Deny, ",") != "10.9.0.0/16" ||
		len(got.Hosts) != 2 || got.Hosts["a.test"] != l.Hosts["a.test"] || got.Hosts["b.test"] != HostIP {
		t.Fatalf("ParseLaunch(Args) = %+v, want %+v", got, l)
	}
	if a := strings.Join(l.Args(), " "); !strings.Contains(a, "-host a.test=198.51.100.1 -host b.test=") {
		t.Errorf("hosts not in order: %s", a)
	}
}

func TestParseLaunchRefusesBadFlags(t *testing.T) {
	base := []string{"-socket", "s", "-control", "c", "-box", "b"}
	for _, extra := range [][]string{
		{"-allow", "10.0.0.0/33"},
		{"-deny", ""},
		{"-allow", strings.Repeat("a", 64) + ".com"},
		{"-mac", "01:00:5e:00:00:01"},
		{"-mac", GatewayMAC},
		{"-mac", "nope"},
		{"-host", "x.test=::1"},
		{"stray"},
	} {
		if _, err := ParseLaunch(append(append([]string{}, base...), extra...), new(strings.Builder)); err == nil {
			t.Errorf("ParseLaunch accepted %q", extra)
		}
	}
	for _, missing := range []int{0, 2, 4} {
		args := append(append([]string{}, base[:missing]...), base[missing+2:]...)
		if _, err := ParseLaunch(args, new(strings.Builder)); err == nil {
			t.Errorf("ParseLaunch without %s accepted", base[missing])
		}
	}
}
