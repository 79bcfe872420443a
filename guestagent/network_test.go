package guestagent

import (
	"net/netip"
	"strings"
	"testing"
)

func TestNetFromCmdline(t *testing.T) {
	want := NetConfig{
		Addr:    netip.MustParsePrefix("192.168.127.2/24"),
		Gateway: netip.MustParseAddr("192.168.127.1"),
		DNS:     netip.MustParseAddr("192.168.127.1"),
		MTU:     1500,
	}
	param := want.KernelParam()
	if param != "sailbox.net=192.168.127.2/24,gw=192.168.127.1,dns=192.168.127.1,mtu=1500" {
		t.Errorf("KernelParam = %q", param)
	}
	got, ok, err := netFromCmdline("console=ttyS0 sailbox.root=/dev/vda " + param + " quiet")
	if err != nil || !ok || got != want {
		t.Errorf("netFromCmdline(KernelParam) = %+v, %v, %v; want %+v", got, ok, err, want)
	}
	// Without dns and mtu: no resolver written, the device's MTU.
	min := NetConfig{Addr: want.Addr, Gateway: want.Gateway}
	if got, ok, err := netFromCmdline(min.KernelParam()); err != nil || !ok || got != min {
		t.Errorf("netFromCmdline(%q) = %+v, %v, %v", min.KernelParam(), got, ok, err)
	}
	if _, ok, err := netFromCmdline("console=ttyS0 sailbox.root=/dev/vda"); ok || err != nil {
		t.Errorf("no sailbox.net: ok %v, err %v", ok, err)
	}
	for _, bad := range []string{
		"sailbox.net=",
		"sailbox.net=1",
		"sailbox.net=192.168.127.2,gw=192.168.127.1",            // no prefix length
		"sailbox.net=192.168.127.2/24",                          // no gateway
		"sailbox.net=192.168.127.2/24,gw=10.0.0.1",              // gateway off the network
		"sailbox.net=192.168.127.2/24,gw=192.168.127.2",         // the guest itself
		"sailbox.net=192.168.127.2/32,gw=192.168.127.1",         // no room for a gateway
		"sailbox.net=fd00::2/64,gw=fd00::1",                     // IPv6
		"sailbox.net=192.168.127.2/24,gw=192.168.127.1,mtu=64",  // too small
		"sailbox.net=192.168.127.2/24,gw=192.168.127.1,mtu=x",   // not a number
		"sailbox.net=192.168.127.2/24,gw=192.168.127.1,dns=::1", // IPv6 DNS
		"sailbox.net=192.168.127.2/24,gw=192.168.127.1,via=eth1",
	} {
		if _, ok, err := netFromCmdline(bad); err == nil || ok || !strings.Contains(err.Error(), "sailbox.net=") {
			t.Errorf("netFromCmdline(%q): ok %v, err %v; want an error naming the parameter", bad, ok, err)
		}
	}
}

func TestResolvConfUsable(t *testing.T) {
	for content, want := range map[string]bool{
		"":            false,
		"# nothing\n": false,
		"nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n": false, // systemd-resolved's stub
		"nameserver 127.0.0.1\n":                                    false,
		"nameserver ::1\n":                                          false,
		"nameserver 0.0.0.0\n":                                      false,
		"nameserver 192.168.127.1\n":                                true,
		"search example.com\nnameserver 10.0.0.2":                   true,
		"nameserver 127.0.0.53\nnameserver 1.1.1.1\n":               true,
		"nameserver\n":                                              false,
	} {
		if got := resolvConfUsable([]byte(content)); got != want {
			t.Errorf("resolvConfUsable(%q) = %v, want %v", content, got, want)
		}
	}
}
