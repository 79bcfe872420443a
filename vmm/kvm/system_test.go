package kvm

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// A user refused /dev/kvm is told what access it needs and which group
// has it; other failures are passed on as they are.
func TestOpenErrorNamesTheAccessNeeded(t *testing.T) {
	dev := filepath.Join(t.TempDir(), "kvm")
	if err := os.WriteFile(dev, nil, 0o660); err != nil {
		t.Fatal(err)
	}
	err := openError(dev, unix.EACCES)
	if !errors.Is(err, ErrUnusable) || !errors.Is(err, unix.EACCES) {
		t.Errorf("%v: want ErrUnusable wrapping EACCES", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "read and write access") || !strings.Contains(msg, "its group ") {
		t.Errorf("refusal %q names neither the access nor the group", msg)
	}
	err = openError(dev, unix.ENOENT)
	if !errors.Is(err, ErrUnusable) || !errors.Is(err, unix.ENOENT) || strings.Contains(err.Error(), "group") {
		t.Errorf("a missing device: %v", err)
	}
}
