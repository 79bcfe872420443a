package main

import (
	"context"
	"testing"

	"github.com/sailbox-dev/sailbox/api/client"
	"github.com/sailbox-dev/sailbox/internal/kvmtest"
	"github.com/sailbox-dev/sailbox/internal/pyclienttest"
)

// TestKVMPythonClient drives a real sailboxd with the Python client only
// (clients/python/tests/e2e/lifecycle_kvm.py, run by pytest), through every call: a box
// on the Debian image runs Python, is extended, checkpointed, forked once
// and three times at once, put to sleep and woken by an exec, paused and
// resumed, serves on an exposed port that wakes it from sleep, is
// upgraded, found by its label and schema and terminated; then a box with
// an idle timeout falls asleep on its own and a connection wakes it.
func TestKVMPythonClient(t *testing.T) {
	img := kvmtest.Artifact(t, "SAILBOX_DEFAULT_IMAGE")
	pyclienttest.Python(t) // before the daemon: a missing interpreter says so first
	h := newHost(t, "-image", img)
	pyclienttest.Pytest(t, "lifecycle_kvm.py", h.sock)
	boxes, err := h.c.List(context.Background(), client.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(boxes) != 0 || len(h.vmmPIDs()) != 0 {
		t.Errorf("after the script: %d boxes, VMMs %v; want none", len(boxes), h.vmmPIDs())
	}
}
