package kvmlab

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// A second run on the same work directory waits for the first to unlock.
func TestLockWorkDir(t *testing.T) {
	dir := t.TempDir()
	unlock, err := LockWorkDir(dir, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	got := make(chan error, 1)
	go func() {
		u, err := LockWorkDir(dir, &log)
		if err == nil {
			u()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("second lock taken while the first is held: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	unlock()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "waiting") {
		t.Errorf("the waiting run said %q", log.String())
	}
}
