package main

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/client"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/kvmtest"
)

// The lifecycle policies through a real sailboxd.

// waitFor polls cond (every poll) until it holds or the test's patience
// (a bound on a slow lab, not a measurement) runs out.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Minute); !cond(); time.Sleep(250 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting: %s", what)
		}
	}
}

// An idle box falls asleep on its own (its state is polled, not timed),
// and a connection to its exposed port wakes it and is answered by the
// server that slept in it; then, unused again, it falls asleep again.
func TestKVMIdleSleepWakeByConnection(t *testing.T) {
	img := kvmtest.Artifact(t, "SAILBOX_DEFAULT_IMAGE")
	h := newHost(t, "-image", img)
	ctx := ctxFor(t, 20*time.Minute)
	c := h.c
	b, err := c.Create(ctx, api.CreateRequest{IdleTimeoutSeconds: 10})
	if err != nil {
		t.Fatal(err)
	}
	if b.IdleTimeoutSeconds != 10 {
		t.Fatalf("idle_timeout_seconds = %d", b.IdleTimeoutSeconds)
	}
	startGuestServer(h, b.ID, "idle")
	p, err := c.Expose(ctx, b.ID, api.ExposeRequest{GuestPort: 8000})
	if err != nil {
		t.Fatal(err)
	}
	asleep := func() bool { return h.state(b.ID) == string(lifecycle.Sleeping) }
	waitFor(t, "the idle box to fall asleep", asleep)
	if vmms := h.vmmPIDsOf(b.ID); len(vmms) != 0 {
		t.Errorf("the sleeping box still has VMMs %v", vmms)
	}
	if got, _ := c.Get(ctx, b.ID); got.LastCheckpoint == nil {
		t.Errorf("asleep without a checkpoint: %+v", got)
	}

	if got, err := get(t, p, "/who"); err != nil || got != "idle" {
		t.Fatalf("GET /who of the box asleep: %q, %v", got, err)
	}
	if st := h.state(b.ID); st != string(lifecycle.Running) {
		t.Errorf("box is %s after a connection woke it", st)
	}
	waitFor(t, "the woken box to fall asleep again", asleep)
	if out, err := get(t, p, "/who"); err != nil || out != "idle" {
		t.Errorf("GET /who after the second sleep: %q, %v", out, err)
	}
	if _, err := c.Terminate(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
}

// Labels, a TTL (kept across a daemon restart, extended, expiring) and a
// fork of several children from one checkpoint, through sailboxd and
// real VMs.
func TestKVMPolicies(t *testing.T) {
	h := newHost(t)
	ctx := ctxFor(t, 20*time.Minute)
	c := h.c
	parent, err := c.Create(ctx, api.CreateRequest{Labels: map[string]string{"suite": "policies", "role": "parent"}, TTLSeconds: 3600})
	if err != nil {
		t.Fatal(err)
	}
	short, err := c.Create(ctx, api.CreateRequest{Labels: map[string]string{"suite": "policies"}, TTLSeconds: 30})
	if err != nil {
		t.Fatal(err)
	}
	// The TTLs are in the record: a restarted daemon keeps them.
	h.stop()
	h.start()
	c = h.c
	got, err := c.Get(ctx, parent.ID)
	if err != nil || got.ExpiresAt == nil || !got.ExpiresAt.Equal(*parent.ExpiresAt) || got.Labels["role"] != "parent" {
		t.Fatalf("after a restart: %+v, %v (expires_at was %v)", got, err, parent.ExpiresAt)
	}
	list := func(labels map[string]string) []string {
		t.Helper()
		boxes, err := c.List(ctx, client.ListOptions{Labels: labels})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, b := range boxes {
			ids = append(ids, b.ID)
		}
		slices.Sort(ids)
		return ids
	}
	if ids := list(map[string]string{"suite": "policies", "role": "parent"}); !slices.Equal(ids, []string{parent.ID}) {
		t.Errorf("list by suite and role: %v, want %s", ids, parent.ID)
	}

	// The short-lived box expires (the restarted daemon re-armed it):
	// its record and its VM go.
	waitFor(t, "the box with a 30s TTL to be terminated", func() bool {
		_, err := c.Get(ctx, short.ID)
		return client.IsNotFound(err)
	})
	if vmms := h.vmmPIDsOf(short.ID); len(vmms) != 0 {
		t.Errorf("the expired box still has VMMs %v", vmms)
	}

	x, err := c.Extend(ctx, parent.ID, 2*time.Hour)
	if err != nil || x.TTLSeconds != 7200 || x.ExpiresAt == nil || !x.ExpiresAt.After(*parent.ExpiresAt) {
		t.Fatalf("extend: %+v, %v", x, err)
	}

	// Three children of one checkpoint, started together; each is a
	// machine of its own and carries the parent's labels.
	h.run(parent.ID, "sh", "-c", "echo before-fork > /tmp/mark")
	fr, err := c.ForkN(ctx, parent.ID, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(fr.Boxes) != 3 || fr.Box.ID != fr.Boxes[0].ID {
		t.Fatalf("fork of 3: %+v", fr)
	}
	for _, k := range fr.Boxes {
		if k.State != lifecycle.Running || k.ParentID != parent.ID || k.Labels["role"] != "parent" || k.ExpiresAt == nil {
			t.Errorf("child %+v", k)
		}
		if out := h.run(k.ID, "hostname"); out != "sbx-"+k.ID+"\n" { // a new machine of its name
			t.Errorf("child %s: hostname %q", k.ID, out)
		}
		if out := h.run(k.ID, "cat", "/tmp/mark"); out != "before-fork\n" {
			t.Errorf("child %s: /tmp/mark %q", k.ID, out)
		}
	}
	if ids := list(map[string]string{"role": "parent"}); len(ids) != 4 {
		t.Errorf("list by role after the fork: %v, want the parent and 3 children", ids)
	}
	var e *client.Error
	if _, err := c.ForkN(ctx, parent.ID, api.MaxForkCount+1); !errors.As(err, &e) || e.Status != 400 {
		t.Errorf("a fork of too many children: %v, want 400", err)
	}
	for _, id := range append([]string{parent.ID}, fr.Boxes[0].ID, fr.Boxes[1].ID, fr.Boxes[2].ID) {
		if _, err := c.Terminate(context.WithoutCancel(ctx), id); err != nil {
			t.Error(err)
		}
	}
}
