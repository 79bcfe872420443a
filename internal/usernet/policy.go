package usernet

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/sailbox-dev/sailbox/api/netapi"
)

// policy decides, when the guest opens a connection, whether it may. Its
// rules, in order:
//
//  1. an address of the box's own network that does not lead to the host
//     (everything but HostIP) is never dialled on the host;
//  2. a deny rule that matches refuses: a CIDR containing the address, or
//     a domain one of whose names resolved to it through the box's DNS;
//  3. an allow rule that matches lets it through, host-local addresses
//     included;
//  4. a host-local address is refused: loopback (which HostIP leads to),
//     0.0.0.0/8 (which reaches loopback), link-local 169.254.0.0/16 (cloud
//     metadata), multicast, broadcast, and the host's own addresses;
//  5. with no internet, everything else is refused; without, let through.
//
// A connection has two addresses: the one the guest asked for, and the
// one dialled on the host (the same, but for HostIP, which leads to
// 127.0.0.1). CIDR rules match either; domain rules match the guest's.
type policy struct {
	// Set by newPolicy, then read-only.
	noInternet         bool
	allowNets, denyNet []netip.Prefix
	allowDom, denyDom  []netapi.Rule
	hostAddrs          func() []netip.Addr // the host's own addresses

	mu sync.Mutex // guards the fields below
	// resolved holds, for an address the box's DNS answered, the domain
	// rules whose names resolved to it. Only names some domain rule
	// matches are kept, at most maxResolved addresses; the oldest go
	// first.
	resolved map[netip.Addr]*resolvedAddr
	order    []netip.Addr // resolved's keys, oldest first
	// hostCache is hostAddrs' last answer, taken at hostCacheAt.
	hostCache   []netip.Addr
	hostCacheAt time.Time
}

// resolvedAddr is what the domain rules know of one address.
type resolvedAddr struct {
	allow, deny string // a matching rule's domain, "" if none
}

const (
	maxResolved  = 16384
	hostCacheFor = 5 * time.Second
)

// verdict is a policy's answer for one connection.
type verdict struct {
	allow  bool
	reason string // why: the rule, or the default that decided
}

func newPolicy(noInternet bool, allow, deny []netapi.Rule) *policy {
	p := &policy{noInternet: noInternet, resolved: map[netip.Addr]*resolvedAddr{}, hostAddrs: interfaceAddrs}
	for _, r := range allow {
		if r.Prefix.IsValid() {
			p.allowNets = append(p.allowNets, r.Prefix)
		} else {
			p.allowDom = append(p.allowDom, r)
		}
	}
	for _, r := range deny {
		if r.Prefix.IsValid() {
			p.denyNet = append(p.denyNet, r.Prefix)
		} else {
			p.denyDom = append(p.denyDom, r)
		}
	}
	return p
}

// check decides for a connection to guestDst (as the guest asked),
// dialled on the host as hostDst.
func (p *policy) check(guestDst, hostDst netip.Addr) verdict {
	if netapi.Subnet.Contains(guestDst) && guestDst == hostDst {
		return verdict{reason: "the box's own network"}
	}
	for _, n := range p.denyNet {
		if n.Contains(guestDst) || n.Contains(hostDst) {
			return verdict{reason: "deny " + n.String()}
		}
	}
	p.mu.Lock()
	r := p.resolved[guestDst]
	var byName resolvedAddr
	if r != nil {
		byName = *r
	}
	p.mu.Unlock()
	if byName.deny != "" {
		return verdict{reason: "deny " + byName.deny}
	}
	for _, n := range p.allowNets {
		if n.Contains(guestDst) || n.Contains(hostDst) {
			return verdict{allow: true, reason: "allow " + n.String()}
		}
	}
	if byName.allow != "" {
		return verdict{allow: true, reason: "allow " + byName.allow}
	}
	if what := p.hostLocal(hostDst); what != "" {
		return verdict{reason: what + " (not allowed by default)"}
	}
	if p.noInternet {
		return verdict{reason: "no internet, and no allow rule matches"}
	}
	return verdict{allow: true, reason: "internet"}
}

// hostLocal says which kind of host-local address a is, "" if none.
func (p *policy) hostLocal(a netip.Addr) string {
	switch {
	case a.IsLoopback():
		return "host loopback"
	case a.Is4() && a.As4()[0] == 0, a.IsUnspecified():
		return "unspecified address (reaches the host's loopback)"
	case a.IsLinkLocalUnicast():
		return "link-local address (cloud metadata)"
	case a.IsMulticast(), a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast():
		return "multicast address"
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "broadcast address"
	}
	for _, h := range p.hostAddresses() {
		if h == a {
			return "the host's own address"
		}
	}
	return ""
}

// hostAddresses are the host's interface addresses, looked up at most
// every hostCacheFor.
func (p *policy) hostAddresses() []netip.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.hostCache == nil || time.Since(p.hostCacheAt) > hostCacheFor {
		p.hostCache, p.hostCacheAt = p.hostAddrs(), time.Now()
	}
	return p.hostCache
}

func interfaceAddrs() []netip.Addr {
	addrs, err := net.InterfaceAddrs()
	list := []netip.Addr{} // not nil: cached even when empty
	if err != nil {
		return list
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				list = append(list, ip.Unmap())
			}
		}
	}
	return list
}

// hasDomainRules says whether DNS answers need recording at all.
func (p *policy) hasDomainRules() bool {
	return len(p.allowDom) > 0 || len(p.denyDom) > 0
}

// lookupAllowed decides whether the box's DNS asks the host's resolver
// about name (lower case, no final dot). With no internet, only names an
// allow rule matches are looked up: other lookups would be a way out.
// Names a deny rule matches are looked up, so that a connection to their
// addresses is refused (and logged) like any other.
func (p *policy) lookupAllowed(name string) bool {
	if !p.noInternet {
		return true
	}
	for _, r := range p.allowDom {
		if r.Matches(name) {
			return true
		}
	}
	return false
}

// recordAnswer notes that names resolved to addrs through the box's DNS.
func (p *policy) recordAnswer(names []string, addrs []netip.Addr) {
	var ra resolvedAddr
	for _, n := range names {
		for _, r := range p.denyDom {
			if ra.deny == "" && r.Matches(n) {
				ra.deny = r.Domain
			}
		}
		for _, r := range p.allowDom {
			if ra.allow == "" && r.Matches(n) {
				ra.allow = r.Domain
			}
		}
	}
	if ra == (resolvedAddr{}) {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, a := range addrs {
		a = a.Unmap()
		if old := p.resolved[a]; old != nil {
			// A deny once learnt stays; an allow is kept too.
			if old.deny == "" {
				old.deny = ra.deny
			}
			if old.allow == "" {
				old.allow = ra.allow
			}
			continue
		}
		if len(p.order) >= maxResolved {
			delete(p.resolved, p.order[0])
			p.order = p.order[1:]
		}
		v := ra
		p.resolved[a] = &v
		p.order = append(p.order, a)
	}
}
