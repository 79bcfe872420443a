package main

import (
	"bytes"
	"context"
	stdlog "log"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Errors that need no KVM: bad flags and configs are refused by name.
func TestRunRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"kernel": "k", "memory": 5}`), 0o644)
	disksBoth := filepath.Join(dir, "disks-both.json")
	os.WriteFile(disksBoth, []byte(`{"kernel": "k", "store": "/s", "disks_from": "c1", "disks": [{"path": "x", "layered": true}]}`), 0o644)
	disksNoStore := filepath.Join(dir, "disks-no-store.json")
	os.WriteFile(disksNoStore, []byte(`{"kernel": "k", "disks_from": "c1"}`), 0o644)
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "no kernel"},
		{[]string{"-kernel", "k", "extra"}, "unexpected arguments"},
		{[]string{"-kernel", "k", "-disk", "x,rw"}, "unknown disk option"},
		{[]string{"-kernel", "k", "-vsock-cid", "3"}, "go together"},
		{[]string{"-kernel", "k", "-vsock-cid", "2", "-vsock-uds", "/x"}, "reserved"},
		{[]string{"-config", bad}, `unknown field "memory"`},
		{[]string{"-config", bad, "-mem", "5"}, "cannot be combined"},
		{[]string{"-config", filepath.Join(dir, "none.json")}, "no such file"},
		{[]string{"-mem", "x"}, "invalid value"},
		{[]string{"-kernel", "k", "-disk", "x,ro,layered", "-store", dir}, "either ro or layered"},
		{[]string{"-kernel", "k", "-disk", ",layered"}, "empty path"},
		{[]string{"-kernel", "k", "-disk", "x,layered"}, "needs -store"},
		{[]string{"-restore", "c1"}, "-restore needs -store"},
		{[]string{"-restore", "c1", "-store", dir, "-kernel", "k"}, "takes the machine from the checkpoint"},
		{[]string{"-kernel", "k", "-fork-name", "kid"}, "-fork-name needs -restore"},
		{[]string{"-kernel", "k", "-disks-from", "c1"}, "-disks-from needs -store"},
		{[]string{"-store", dir, "-disks-from", "c1"}, "no kernel"},
		{[]string{"-kernel", "k", "-store", dir, "-disks-from", "c1", "-disk", "x,layered"}, "no -disk"},
		{[]string{"-store", dir, "-restore", "c1", "-disks-from", "c1"}, "-disks-from boots afresh, -restore resumes"},
		{[]string{"-kernel", "k", "-store", dir, "-disks-from", "c1", "-fork-name", "kid"}, "-fork-name needs -restore"},
		{[]string{"-config", disksBoth}, "no -disk"},
		{[]string{"-config", disksNoStore}, "-disks-from needs -store"},
		{[]string{"-kernel", "k", "-seccomp", "allow"}, `unknown seccomp mode "allow"`},
	} {
		var stderr bytes.Buffer
		err := run(context.Background(), c.args, &bytes.Buffer{}, &stderr)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("run(%q) = %v, want an error containing %q", c.args, err, c.want)
		}
	}
}

// A stderr that is a file (sailboxd's vmm.log) is capped: its backup,
// vmm.log.1, is opened beside it at start, before any sandbox.
func TestOwnLogCapped(t *testing.T) {
	t.Cleanup(func() { stdlog.SetOutput(os.Stderr) })
	path := filepath.Join(t.TempDir(), "vmm.log")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := run(context.Background(), []string{"-mem", "x"}, &bytes.Buffer{}, f); err == nil {
		t.Fatal("run with a bad flag succeeded")
	}
	if _, err := os.Stat(path + ".1"); err != nil {
		t.Errorf("no backup beside the log: %v", err)
	}
	if b, _ := os.ReadFile(path); !strings.Contains(string(b), "invalid value") {
		t.Errorf("the log holds %q, want the flag's refusal", b)
	}
}
