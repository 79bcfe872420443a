package main

import (
	"os"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"
)

// After forbidCoreDumps no core file may be written: the soft and hard
// limits are 0.
func TestForbidCoreDumps(t *testing.T) {
	if os.Getenv("SAILBOX_TEST_COREDUMP_CHILD") == "1" {
		if err := forbidCoreDumps(); err != nil {
			t.Fatal(err)
		}
		var l unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_CORE, &l); err != nil || l.Cur != 0 || l.Max != 0 {
			t.Fatalf("RLIMIT_CORE = %+v, %v; want 0/0", l, err)
		}
		return
	}
	// In a child: the limit is for the process's life.
	cmd := exec.Command(os.Args[0], "-test.run=^TestForbidCoreDumps$", "-test.v")
	cmd.Env = append(os.Environ(), "SAILBOX_TEST_COREDUMP_CHILD=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
}
