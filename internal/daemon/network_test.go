package daemon_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/internal/daemon"
	"github.com/sailbox-dev/sailbox/internal/daemon/fakebackend"
)

// A box has a network by default, with the default policy (internet,
// nothing of the host); a create's policy is checked and kept in
// netapi's canonical form; no_network gives none, and takes no policy.
func TestCreateNetworkPolicy(t *testing.T) {
	e := newEnv(t)
	b := e.create()
	if b.Network == nil || b.Network.NoInternet || len(b.Network.Allow)+len(b.Network.Deny) != 0 {
		t.Errorf("default network %+v, want one with the default policy", b.Network)
	}
	if p, dev := e.fake.Network(b.ID); p == nil || !dev {
		t.Errorf("the box's VM: network %+v, device %v", p, dev)
	}

	req := api.CreateRequest{NoInternet: true, Allow: []string{"192.168.127.254", "PyPI.org.", "10.1.2.3/8"}, Deny: []string{"files.pypi.org"}}
	p, err := e.m.Create(e.ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	want := &api.NetworkPolicy{NoInternet: true, Allow: []string{"192.168.127.254/32", "pypi.org", "10.0.0.0/8"}, Deny: []string{"files.pypi.org"}}
	if !reflect.DeepEqual(p.Network, want) {
		t.Errorf("network %+v, want %+v", p.Network, want)
	}
	if got, _ := e.fake.Network(p.ID); got == nil || !reflect.DeepEqual(got.Allow, want.Allow) || !got.NoInternet {
		t.Errorf("the VM's network runs under %+v", got)
	}

	none, err := e.m.Create(e.ctx, api.CreateRequest{NoNetwork: true})
	if err != nil {
		t.Fatal(err)
	}
	if none.Network != nil {
		t.Errorf("a box created with no_network reports %+v", none.Network)
	}
	if p, dev := e.fake.Network(none.ID); p != nil || dev {
		t.Errorf("a box without a network: its VM has network %+v, device %v", p, dev)
	}

	for _, tc := range []struct {
		req  api.CreateRequest
		want string
	}{
		{api.CreateRequest{Allow: []string{"exa mple.com"}}, "exa mple.com"},
		{api.CreateRequest{Deny: []string{"10.0.0.0/33"}}, "10.0.0.0/33"},
		{api.CreateRequest{Allow: []string{"*.example.com"}}, "*.example.com"},
		{api.CreateRequest{Deny: []string{""}}, "empty rule"},
		{api.CreateRequest{NoNetwork: true, NoInternet: true}, "no_network"},
		{api.CreateRequest{NoNetwork: true, Allow: []string{"10.0.0.1"}}, "no_network"},
	} {
		_, err := e.m.Create(e.ctx, tc.req)
		if !errors.Is(err, daemon.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("create %+v: %v, want an invalid argument naming %q", tc.req, err, tc.want)
		}
	}
}

// A fork inherits its parent's network and policy, live or from a
// checkpoint; every start of a box's VM (wake, restore after a lost VM,
// a daemon restart) runs its network under its own policy; a box
// without a network stays without one.
func TestNetworkPolicyKept(t *testing.T) {
	e := newEnv(t)
	p, err := e.m.Create(e.ctx, api.CreateRequest{NoInternet: true, Allow: []string{"example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	none, err := e.m.Create(e.ctx, api.CreateRequest{NoNetwork: true})
	if err != nil {
		t.Fatal(err)
	}
	requirePolicy := func(id string, want *api.NetworkPolicy) {
		t.Helper()
		if got := e.get(id).Network; !reflect.DeepEqual(got, want) {
			t.Errorf("box %s's network %+v, want %+v", id, got, want)
		}
		got, dev := e.fake.Network(id)
		switch {
		case want == nil && (got != nil || dev):
			t.Errorf("box %s's VM has a network (%+v, device %v), want none", id, got, dev)
		case want != nil && (got == nil || got.NoInternet != want.NoInternet || !reflect.DeepEqual(got.Allow, want.Allow)):
			t.Errorf("box %s's VM's network runs under %+v, want %+v", id, got, want)
		}
	}
	want := p.Network
	live, err := e.m.Fork(e.ctx, p.ID, api.ForkRequest{})
	if err != nil {
		t.Fatal(err)
	}
	requirePolicy(live.Box.ID, want)
	if _, err := e.m.Sleep(e.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	asleep, err := e.m.Fork(e.ctx, p.ID, api.ForkRequest{})
	if err != nil {
		t.Fatal(err)
	}
	requirePolicy(asleep.Box.ID, want)
	if _, err := e.exec(p.ID, "echo", "wake"); err != nil {
		t.Fatal(err)
	}
	requirePolicy(p.ID, want)
	if _, err := e.m.Sleep(e.ctx, none.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.exec(none.ID, "echo", "wake"); err != nil {
		t.Fatal(err)
	}
	requirePolicy(none.ID, nil)
	noneKid, err := e.m.Fork(e.ctx, none.ID, api.ForkRequest{})
	if err != nil {
		t.Fatal(err)
	}
	requirePolicy(noneKid.Box.ID, nil)

	// A host failure: the VMs are gone, the restarted daemon restores
	// them, each with its own policy.
	e.close()
	for _, id := range []string{p.ID, live.Box.ID, none.ID} {
		e.fake.Kill(id)
	}
	e.open()
	requirePolicy(p.ID, want)
	requirePolicy(live.Box.ID, want)
	requirePolicy(none.ID, nil)
}

// Boxes that differ only in their policies share one template: its
// guest boots with a network device on a network that refuses
// everything, and each box restored from it runs its own policy. A box
// without a network has a template of its own (no network device).
func TestTemplatesNotSplitByPolicy(t *testing.T) {
	e := newTemplateEnv(t)
	reqs := []api.CreateRequest{
		{},
		{NoInternet: true},
		{Allow: []string{"192.168.127.254"}},
		{Deny: []string{"example.com"}, Allow: []string{"10.0.0.0/8"}},
	}
	var boxes []api.Box
	for _, req := range reqs {
		b, err := e.m.Create(e.ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		boxes = append(boxes, b)
	}
	tps := e.templateRecords()
	if len(tps) != 1 || len(e.calls("Boot")) != 1 {
		t.Fatalf("templates %+v, boots %q; want one", tps, e.calls("Boot"))
	}
	if tp := tps[0]; tp.Spec.Net == nil || !tp.Spec.Net.NoInternet || len(tp.Spec.Net.Allow) != 0 {
		t.Errorf("the template's spec has network %+v, want one that refuses everything", tp.Spec.Net)
	}
	for i, b := range boxes {
		got, dev := e.fake.Network(b.ID)
		wantNoInternet := reqs[i].NoInternet
		if !dev || got == nil || got.NoInternet != wantNoInternet || len(got.Allow) != len(reqs[i].Allow) || len(got.Deny) != len(reqs[i].Deny) {
			t.Errorf("box %d (%+v) restored from the template runs network %+v (device %v)", i, reqs[i], got, dev)
		}
	}
	// A box without a network needs a guest without the device.
	if _, err := e.m.Create(e.ctx, api.CreateRequest{NoNetwork: true}); err != nil {
		t.Fatal(err)
	}
	if tps := e.templateRecords(); len(tps) != 2 {
		t.Errorf("%d templates after a box without a network, want 2", len(tps))
	}
	// The template of a box with a network is found again after a
	// restart, and not remade.
	e.close()
	e.open()
	if _, err := e.m.Create(e.ctx, api.CreateRequest{NoInternet: true, Deny: []string{"10.0.0.0/8"}}); err != nil {
		t.Fatal(err)
	}
	if n := len(e.calls("Boot")); n != 2 {
		t.Errorf("%d boots, want 2 (one template each)", n)
	}
}

// The network's counters: a running box's from its network and its
// network device, a sleeping box's zero and no device's (it is not
// woken), a box without a network refused.
func TestNetworkStats(t *testing.T) {
	e := newEnv(t)
	b := e.create()
	c, err := e.fake.DialGuest(e.ctx, b.ID, 80)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	st, err := e.m.Network(e.ctx, b.ID)
	if err != nil || !st.Running || st.BoxID != b.ID || st.ConnectionsIn != 1 || !st.GuestAttached {
		t.Errorf("running box's counters: %+v, %v", st, err)
	}
	want := api.NetworkDeviceStats{FramesOut: 1, BytesOut: fakebackend.FakeFrameBytes, FramesIn: 1, BytesIn: fakebackend.FakeFrameBytes}
	if st.Device == nil || *st.Device != want {
		t.Errorf("running box's device counters: %+v, want the backend's %+v", st.Device, want)
	}
	if _, err := e.m.Sleep(e.ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	st, err = e.m.Network(e.ctx, b.ID)
	if err != nil || st.Running || st.ConnectionsIn != 0 || st.BoxID != b.ID || st.Device != nil {
		t.Errorf("sleeping box's counters: %+v, %v", st, err)
	}
	if e.fake.Running(b.ID) {
		t.Error("reading the counters woke the box")
	}
	none, err := e.m.Create(e.ctx, api.CreateRequest{NoNetwork: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Network(e.ctx, none.ID); !errors.Is(err, daemon.ErrConflict) {
		t.Errorf("counters of a box without a network: %v, want a conflict", err)
	}
	if _, err := e.m.Network(e.ctx, "sb-nope"); !errors.Is(err, daemon.ErrNotFound) {
		t.Errorf("counters of no box: %v", err)
	}
}
