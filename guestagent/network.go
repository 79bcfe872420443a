package guestagent

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// The guest's network, configured at boot from the kernel command line
// (the guest kernel has no IP autoconfiguration): the host side, the
// daemon's backend, writes NetConfig.KernelParam, and ConfigureNetwork
// reads it back in the guest. A restore or fork changes nothing: every
// box's network has the same addresses (api/netapi).

// netParam is the kernel command line parameter of the guest's network:
// sailbox.net=ADDR/BITS,gw=GATEWAY,dns=SERVER,mtu=N (the last one wins).
const netParam = "sailbox.net"

// NetInterface is the guest's network interface: the VM's only virtio-net
// device.
const NetInterface = "eth0"

// NetConfig is the guest's static network configuration.
type NetConfig struct {
	// Addr is the guest's address and its network's prefix
	// (192.168.127.2/24).
	Addr netip.Prefix
	// Gateway is the default route's next hop.
	Gateway netip.Addr
	// DNS is the name server written to /etc/resolv.conf (see
	// resolvConfAction); invalid: none is written.
	DNS netip.Addr
	// MTU of the interface; 0 leaves the device's.
	MTU int
}

// KernelParam is c as the kernel command line parameter that
// ConfigureNetwork reads.
func (c NetConfig) KernelParam() string {
	s := netParam + "=" + c.Addr.String() + ",gw=" + c.Gateway.String()
	if c.DNS.IsValid() {
		s += ",dns=" + c.DNS.String()
	}
	if c.MTU != 0 {
		s += ",mtu=" + strconv.Itoa(c.MTU)
	}
	return s
}

// validate checks c: IPv4 throughout, the gateway inside the guest's
// network and not the guest itself, an Ethernet MTU.
func (c NetConfig) validate() error {
	switch {
	case !c.Addr.IsValid() || !c.Addr.Addr().Is4() || c.Addr.Bits() < 1 || c.Addr.Bits() > 30:
		return fmt.Errorf("address %s: want an IPv4 address with a prefix length of 1 to 30", c.Addr)
	case !c.Gateway.Is4() || !c.Addr.Masked().Contains(c.Gateway) || c.Gateway == c.Addr.Addr():
		return fmt.Errorf("gateway %s: want another IPv4 address of %s", c.Gateway, c.Addr.Masked())
	case c.DNS.IsValid() && !c.DNS.Is4():
		return fmt.Errorf("dns %s: want an IPv4 address", c.DNS)
	case c.MTU != 0 && (c.MTU < 576 || c.MTU > 9000):
		return fmt.Errorf("mtu %d: want 576 to 9000", c.MTU)
	}
	return nil
}

// netFromCmdline returns the network that cmdline, a kernel command line
// as in /proc/cmdline, configures with sailbox.net=; ok is false if it
// names none.
func netFromCmdline(cmdline string) (c NetConfig, ok bool, err error) {
	var v string
	for _, f := range strings.Fields(cmdline) {
		if s, found := strings.CutPrefix(f, netParam+"="); found {
			v, ok = s, true
		}
	}
	if !ok {
		return c, false, nil
	}
	bad := func(why string) (NetConfig, bool, error) {
		return NetConfig{}, false, fmt.Errorf("kernel command line: %s=%q: %s (want ADDR/BITS,gw=ADDR[,dns=ADDR][,mtu=N])", netParam, v, why)
	}
	fields := strings.Split(v, ",")
	if c.Addr, err = netip.ParsePrefix(fields[0]); err != nil {
		return bad("bad address")
	}
	for _, f := range fields[1:] {
		key, val, _ := strings.Cut(f, "=")
		switch key {
		case "gw":
			c.Gateway, err = netip.ParseAddr(val)
		case "dns":
			c.DNS, err = netip.ParseAddr(val)
		case "mtu":
			c.MTU, err = strconv.Atoi(val)
		default:
			return bad("unknown field " + strconv.Quote(key))
		}
		if err != nil {
			return bad("bad " + key)
		}
	}
	if err := c.validate(); err != nil {
		return bad(err.Error())
	}
	return c, true, nil
}

// resolvConfPath is the resolver's configuration, in the root the agent
// serves from (the box's image, or the initramfs).
const resolvConfPath = "/etc/resolv.conf"

// resolvConf is what ConfigureNetwork writes to resolvConfPath.
func resolvConf(dns netip.Addr) []byte {
	return []byte("# Written by sailbox-agent at boot: the DNS server of the box's network.\n" +
		"# Replace this file to use another; the agent leaves a file naming a\n" +
		"# non-loopback name server alone.\n" +
		"nameserver " + dns.String() + "\n")
}

// resolvConfUsable reports whether content, an existing resolv.conf,
// names a name server a box can use: one that is not on loopback. A stub
// resolver's file (systemd-resolved's 127.0.0.53, a local dnsmasq's
// 127.0.0.1) names one that does not run in a box, and is replaced.
func resolvConfUsable(content []byte) bool {
	for line := range bytes.Lines(content) {
		f := strings.Fields(string(line))
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err == nil && !a.IsLoopback() && !a.IsUnspecified() {
			return true
		}
	}
	return false
}

// errNoInterface is a missing network interface.
var errNoInterface = errors.New("no such network interface")
