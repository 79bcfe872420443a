//go:build linux

package guestagent

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"
)

// netInterfaceWait bounds how long ConfigureNetwork waits for the
// interface to appear. virtio-net is probed before the kernel starts
// init, so it is normally there at once.
const netInterfaceWait = 5 * time.Second

// ConfigureNetwork configures the guest's network if the kernel command
// line says how (sailbox.net=..., which the daemon adds for a box with a
// network; see NetConfig), and does nothing otherwise. It must run in the
// guest, as root, after MountRoot (the resolver's file is the box's
// root's) and before the agent serves. Through rtnetlink it brings up lo
// and eth0 with the MTU, the address and a default route through the
// gateway; then, in the root the agent serves from, it writes
// /etc/resolv.conf naming the DNS server when the file is missing,
// empty, a link to nothing (systemd-resolved's stub on a fresh /run) or
// names only loopback name servers (a stub resolver that does not run
// in a box); a file naming another server is the image's choice and is
// kept. It returns what failed; the agent serves regardless (exec still
// works, without a network). A nil logger discards the logs.
func ConfigureNetwork(log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	c, ok, err := netFromCmdline(string(cmdline))
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if !ok {
		return nil
	}
	if err := configureInterface(NetInterface, c); err != nil {
		return fmt.Errorf("network %s: %w", NetInterface, err)
	}
	log.Info("agent: network configured", "interface", NetInterface, "addr", c.Addr, "gateway", c.Gateway, "mtu", c.MTU)
	if !c.DNS.IsValid() {
		return nil
	}
	wrote, err := writeResolvConf("/", c.DNS)
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if wrote {
		log.Info("agent: resolver configured", "file", resolvConfPath, "nameserver", c.DNS)
	} else {
		log.Info("agent: the root's resolver configuration names a name server; kept", "file", resolvConfPath)
	}
	return nil
}

// configureInterface brings lo up, and name up with c's MTU, address and
// default route.
func configureInterface(name string, c NetConfig) error {
	if lo, err := netlink.LinkByName("lo"); err == nil {
		if err := netlink.LinkSetUp(lo); err != nil {
			return fmt.Errorf("lo up: %w", err)
		}
	}
	var link netlink.Link
	var err error
	for deadline := time.Now().Add(netInterfaceWait); ; time.Sleep(20 * time.Millisecond) {
		if link, err = netlink.LinkByName(name); err == nil {
			break
		}
		var notFound netlink.LinkNotFoundError
		if !errors.As(err, &notFound) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w after %v (is the VM's network device missing?)", errNoInterface, netInterfaceWait)
		}
	}
	if c.MTU != 0 {
		if err := netlink.LinkSetMTU(link, c.MTU); err != nil {
			return fmt.Errorf("mtu %d: %w", c.MTU, err)
		}
	}
	addr := &netlink.Addr{IPNet: ipNet(c.Addr)}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("address %s: %w", c.Addr, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("up: %w", err)
	}
	route := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNet(netip.PrefixFrom(netip.IPv4Unspecified(), 0)), Gw: c.Gateway.AsSlice()}
	if err := netlink.RouteReplace(route); err != nil {
		return fmt.Errorf("default route via %s: %w", c.Gateway, err)
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// writeResolvConf writes resolvConf(dns) to /etc/resolv.conf under root
// unless the file there names a usable name server (resolvConfUsable),
// and reports whether it wrote. A symbolic link is replaced, not
// followed: its target may be on a file system that starts empty (/run).
func writeResolvConf(root string, dns netip.Addr) (bool, error) {
	p := filepath.Join(root, resolvConfPath)
	content, err := os.ReadFile(p) // through a link, if it is one
	switch {
	case err == nil && resolvConfUsable(content):
		return false, nil
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return false, fmt.Errorf("read %s: %w", resolvConfPath, err)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return false, err
	}
	tmp := p + ".sailbox-agent"
	if err := os.WriteFile(tmp, resolvConf(dns), 0o644); err != nil {
		return false, fmt.Errorf("write %s: %w", resolvConfPath, err)
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return false, fmt.Errorf("write %s: %w", resolvConfPath, err)
	}
	return true, nil
}
