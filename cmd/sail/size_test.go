package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/sailbox-dev/sailbox/internal/apiserver/servertest"
)

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]int64{
		"0": 0, "4096": 4096, "1K": 1 << 10, "1k": 1 << 10, "512M": 512 << 20, "2G": 2 << 30, "2g": 2 << 30,
		"2GiB": 2 << 30, "3KiB": 3 << 10, "1T": 1 << 40, "007M": 7 << 20, "8589934591G": 8589934591 << 30,
	} {
		if got, err := parseByteSize(in); err != nil || got != want {
			t.Errorf("parseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "G", "2X", "2GB", "2 G", " 2G", "1.5G", "-1", "-1G", "+2G", "0x10", "2Gi", "2iB", "2GiBs", "2G2", "1P", "8589934592G", "99999999999999999999"} {
		if got, err := parseByteSize(in); err == nil {
			t.Errorf("parseByteSize(%q) = %d, want an error", in, got)
		}
	}
	if _, err := parseByteSize("2X"); err == nil || !strings.Contains(err.Error(), "suffix K, M, G or T") {
		t.Errorf("the error for junk does not say what a size is: %v", err)
	}
}

// sail create -disk-size: junk is a usage error that says what a size is;
// a size reaches the daemon, whose refusal the user reads.
func TestCreateDiskSizeFlag(t *testing.T) {
	s := &sailer{t: t, sock: "/nonexistent"}
	_, errOut, err := s.sail("create", "-disk-size", "2X")
	if !errors.Is(err, errUsage) || !strings.Contains(errOut, `invalid value "2X" for flag -disk-size`) || !strings.Contains(errOut, "suffix K, M, G or T") {
		t.Errorf("create -disk-size 2X: %v\n%s", err, errOut)
	}
	// The test daemon has no image: no disk to size.
	env := servertest.Start(t, nil)
	s.sock = env.Socket
	if _, _, err := s.sail("create", "-disk-size", "2G"); err == nil || !strings.Contains(err.Error(), "disk_size_bytes needs an image") {
		t.Errorf("create -disk-size 2G without an image: %v", err)
	}
	if n := env.Fake.RunningCount(); n != 0 {
		t.Errorf("%d boxes running after a refused create", n)
	}
}
