package daemon

import (
	"context"
	"fmt"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/api/netapi"
	"github.com/sailbox-dev/sailbox/internal/catalog"
)

// Boxes' networks: each box has one by default (catalog.Spec.Net), run
// by the backend beside the box's VM under the box's egress policy. The
// policy is part of the box's spec: recorded at create, inherited by
// forks, used by every start of the box's VM (wakes, restores after a
// crash or a daemon restart, upgrades), and left out of its template's
// key (catalog.Spec.TemplateSpec).

// netPolicy is the network a create request asks for: nil for none
// (no_network), else its policy with each rule in netapi's canonical
// form. A malformed rule, or a policy without a network, is refused.
func netPolicy(req api.CreateRequest) (*catalog.NetPolicy, error) {
	if req.NoNetwork {
		if req.NoInternet || len(req.Allow) > 0 || len(req.Deny) > 0 {
			return nil, fmt.Errorf("%w: no_network with an egress policy (no_internet, allow, deny): a box without a network has no policy", ErrInvalidArgument)
		}
		return nil, nil
	}
	allow, err := canonicalRules("allow", req.Allow)
	if err != nil {
		return nil, err
	}
	deny, err := canonicalRules("deny", req.Deny)
	if err != nil {
		return nil, err
	}
	return &catalog.NetPolicy{NoInternet: req.NoInternet, Allow: allow, Deny: deny}, nil
}

// canonicalRules checks the rules of list field and returns them as
// netapi writes them ("10.1.2.3/8" is 10.0.0.0/8, "Example.COM." is
// example.com).
func canonicalRules(field string, list []string) ([]string, error) {
	rules, err := netapi.ParseRules(list)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalidArgument, field, err)
	}
	var out []string
	for _, r := range rules {
		out = append(out, r.String())
	}
	return out, nil
}

// networkToAPI is a box's network as the API reports it.
func networkToAPI(p *catalog.NetPolicy) *api.NetworkPolicy {
	if p == nil {
		return nil
	}
	return &api.NetworkPolicy{NoInternet: p.NoInternet, Allow: p.Allow, Deny: p.Deny}
}

// Network returns the counters of box id's network: its stack's, and its
// network device's (Device). It does not wake the box: one that runs no
// VM reports Running false and zeros. A box without a network is an
// ErrConflict.
func (m *Manager) Network(ctx context.Context, id string) (api.NetworkStats, error) {
	b, err := m.record(id)
	if err != nil {
		return api.NetworkStats{}, err
	}
	out := api.NetworkStats{BoxID: id}
	switch {
	case b.Spec.Net == nil:
		return out, fmt.Errorf("box %s: %w: it has no network", id, ErrConflict)
	case b.State != lifecycle.Running:
		return out, nil
	}
	c, err := m.be.NetworkStats(ctx, id)
	if err != nil {
		return out, err
	}
	st := c.Stack
	return api.NetworkStats{
		BoxID: id, Running: true, GuestAttached: st.GuestAttached,
		BytesOut: st.BytesOut, BytesIn: st.BytesIn, FramesOut: st.FramesOut, FramesIn: st.FramesIn, FramesDropped: st.FramesDropped,
		ConnectionsOut: st.ConnectionsOut, ConnectionsIn: st.ConnectionsIn, OpenConnections: st.OpenConnections,
		Refused: st.Refused, RefusedLookups: st.RefusedLookups, DialFailures: st.DialFailures,
		Device: c.Device,
	}, nil
}
