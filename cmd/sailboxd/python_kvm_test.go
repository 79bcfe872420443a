package main

import (
	"context"
	"testing"

	"github.com/sailbox-dev/sailbox/api/client"
	"github.com/sailbox-dev/sailbox/internal/kvmtest"
	"github.com/sailbox-dev/sailbox/internal/pyclienttest"
)

// TestKVMPythonClient drives a real sailboxd with the Python client only
// (clients/python/tests/e2e/lifecycle_kvm.py): a box on the Debian image
// runs Python, is checkpointed, forked three times at once, put to sleep
// and woken by an exec, upgraded, found by its label and terminated.
func TestKVMPythonClient(t *testing.T) {
	img := kvmtest.Artifact(t, "SAILBOX_DEFAULT_IMAGE")
	pyclienttest.Python(t) // before the daemon: a missing interpreter says so first
	h := newHost(t, "-image", img)
	pyclienttest.Run(t, "lifecycle_kvm.py", h.sock)
	boxes, err := h.c.List(context.Background(), client.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(boxes) != 0 || len(h.vmmPIDs()) != 0 {
		t.Errorf("after the script: %d boxes, VMMs %v; want none", len(boxes), h.vmmPIDs())
	}
}
