package guestlog

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// A process's stderr pointed at a log file (as sailboxd starts
// sailbox-vmm and sailbox-net) is capped in place: the log and its one
// backup never hold more than twice the cap however much is written, they
// hold the end of the output in order, and the descriptor stays the log,
// so that what the Go runtime writes to it directly (a crash's trace)
// lands in the log a reader looks at. Whether its starter opened it for
// appending (sailboxd) or not (a shell's 2>), the file does not grow
// holes.
func TestCapOutputRotatesInPlace(t *testing.T) {
	for _, tc := range []struct {
		name string
		flag int
	}{{"append", os.O_APPEND}, {"truncate", os.O_TRUNC}} {
		t.Run(tc.name, func(t *testing.T) {
			const capBytes = 64 << 10
			dir := t.TempDir()
			path := filepath.Join(dir, "vmm.log")
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|tc.flag, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			w := CapOutput(f, capBytes)
			if w == f {
				t.Fatal("a regular file was not capped")
			}
			const lines = 100_000 // ~1.2 MiB, ~19 caps
			for i := range lines {
				fmt.Fprintf(w, "line %d\n", i)
				if i%1000 != 0 {
					continue
				}
				if use := fileSize(t, path) + fileSize(t, path+".1"); use > 2*capBytes {
					t.Fatalf("after %d lines the log and its backup hold %d bytes, more than twice the cap of %d", i, use, capBytes)
				}
			}
			if size := fileSize(t, path); size > capBytes {
				t.Errorf("the log holds %d bytes, more than the cap of %d", size, capBytes)
			}
			// The runtime's crash trace goes to the descriptor itself.
			f.Write([]byte("fatal error: crash\n"))

			log, _ := os.ReadFile(path)
			backup, _ := os.ReadFile(path + ".1")
			if !bytes.HasSuffix(log, []byte("line 99999\nfatal error: crash\n")) {
				t.Errorf("the log does not end with the last line and the crash trace: ...%q", log[max(0, len(log)-64):])
			}
			if bytes.IndexByte(log, 0) >= 0 {
				t.Error("the log has a hole of zeros: a write landed past its end after it was truncated")
			}
			// The backup then the log are one run of consecutive lines.
			kept := strings.TrimSuffix(string(backup)+strings.TrimSuffix(string(log), "fatal error: crash\n"), "\n")
			all := strings.Split(kept, "\n")
			first, last := lineNumber(all[1]), lineNumber(all[len(all)-1]) // all[0] may be a line's tail
			if last != lines-1 || last-first+1 != len(all)-1 || len(kept) < capBytes {
				t.Errorf("the backup and the log hold lines %d to %d in %d lines (%d bytes), want the last at least a cap's worth, consecutive", first, last, len(all)-1, len(kept))
			}
			for i := 2; i < len(all); i++ {
				if lineNumber(all[i]) != lineNumber(all[i-1])+1 {
					t.Fatalf("line %q follows %q", all[i], all[i-1])
				}
			}
		})
	}
}

// Output that is not a regular file is left as it is.
func TestCapOutputLeavesOthers(t *testing.T) {
	var buf bytes.Buffer
	if w := CapOutput(&buf, 1); w != &buf {
		t.Error("a buffer was wrapped")
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if got := CapOutput(w, 1); got != w {
		t.Error("a pipe was wrapped")
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func lineNumber(line string) int {
	n, err := strconv.Atoi(strings.TrimPrefix(line, "line "))
	if err != nil {
		return -1
	}
	return n
}
