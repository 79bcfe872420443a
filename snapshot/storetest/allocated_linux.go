package storetest

import (
	"syscall"
	"testing"
)

// allocated returns the bytes of disk the file at path occupies.
func allocated(t *testing.T, path string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}
