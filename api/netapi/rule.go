package netapi

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Rule is one entry of an egress policy's allow or deny list: an address
// block, or a domain name. A domain matches itself and every name under
// it ("example.com" matches "example.com" and "www.example.com"), and an
// address when a name it matches resolved to that address through the
// box's DNS.
type Rule struct {
	// Prefix, if valid, is the rule's address block (a bare address is a
	// /32 or /128); else the rule is Domain.
	Prefix netip.Prefix
	// Domain is lower case, without a final dot.
	Domain string
}

// MaxRules bounds each of a policy's lists.
const MaxRules = 1024

// maxDomainLen is the longest name DNS can carry, in its text form
// without the final dot (RFC 1035: 255 octets on the wire).
const maxDomainLen = 253

// ParseRule reads a rule: a CIDR block ("10.0.0.0/8"; host bits are
// cleared), an address ("203.0.113.7", "2001:db8::1"), or a domain name
// ("example.com", "pypi.org."). Wildcards are not needed (a domain covers
// the names under it) and are refused.
func ParseRule(s string) (Rule, error) {
	if s == "" {
		return Rule{}, errors.New("empty rule")
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return Rule{}, fmt.Errorf("bad CIDR %q: %w", s, err)
		}
		return Rule{Prefix: unmapPrefix(p).Masked()}, nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" {
			return Rule{}, fmt.Errorf("address %q: zones are not allowed", s)
		}
		a = a.Unmap()
		return Rule{Prefix: netip.PrefixFrom(a, a.BitLen())}, nil
	}
	d, err := ParseDomain(s)
	if err != nil {
		return Rule{}, err
	}
	return Rule{Domain: d}, nil
}

func unmapPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p
}

// String is the rule as ParseRule reads it.
func (r Rule) String() string {
	if r.Prefix.IsValid() {
		return r.Prefix.String()
	}
	return r.Domain
}

// Matches reports whether name (lower case, without a final dot) is the
// rule's domain or a name under it.
func (r Rule) Matches(name string) bool {
	return r.Domain != "" && (name == r.Domain || strings.HasSuffix(name, "."+r.Domain))
}

// ParseDomain reads a DNS name: letters, digits, '-' and '_' in labels of
// 1 to 63 characters, at most 253 in all, one final dot allowed. It
// returns it in lower case without the final dot. A name whose last label
// is all digits is refused: it is a mistyped address.
func ParseDomain(s string) (string, error) {
	d := strings.ToLower(strings.TrimSuffix(s, "."))
	if d == "" {
		return "", fmt.Errorf("bad domain %q: empty", s)
	}
	if len(d) > maxDomainLen {
		return "", fmt.Errorf("bad domain %.40q...: longer than %d characters", s, maxDomainLen)
	}
	labels := strings.Split(d, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 {
			return "", fmt.Errorf("bad domain %q: labels have 1 to 63 characters", s)
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return "", fmt.Errorf("bad domain %q: a label starts or ends with '-'", s)
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("bad domain %q: character %q (not a CIDR, address or domain name; no wildcards: a domain covers the names under it)", s, c)
			}
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return "", fmt.Errorf("bad address %q", s)
	}
	return d, nil
}

// ParseRules reads a list of rules, naming the entry at fault.
func ParseRules(list []string) ([]Rule, error) {
	if len(list) > MaxRules {
		return nil, fmt.Errorf("%d rules: at most %d", len(list), MaxRules)
	}
	rules := make([]Rule, 0, len(list))
	for _, s := range list {
		r, err := ParseRule(s)
		if err != nil {
			return nil, err
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// ParseHost reads a static DNS entry NAME=IPV4, which the box's DNS
// answers before asking the host's resolver.
func ParseHost(s string) (string, netip.Addr, error) {
	name, ip, ok := strings.Cut(s, "=")
	if !ok {
		return "", netip.Addr{}, fmt.Errorf("host %q: want NAME=IPV4", s)
	}
	d, err := ParseDomain(name)
	if err != nil {
		return "", netip.Addr{}, fmt.Errorf("host %q: %w", s, err)
	}
	a, err := netip.ParseAddr(ip)
	if err != nil || !a.Unmap().Is4() {
		return "", netip.Addr{}, fmt.Errorf("host %q: %q is not an IPv4 address (the box's network is IPv4)", s, ip)
	}
	a = a.Unmap()
	switch {
	case a.IsLoopback():
		return "", netip.Addr{}, fmt.Errorf("host %q: %s is the box's own loopback; the host's 127.0.0.1 is %s in a box", s, a, HostIP)
	case a.IsUnspecified() || a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "", netip.Addr{}, fmt.Errorf("host %q: %s is no address a box can connect to", s, a)
	}
	return d, a, nil
}
