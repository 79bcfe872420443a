package guestlog

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// stream is the byte at offset i of a test's output: it differs between
// nearby offsets and between offsets a cap apart, so a misplaced or
// reordered chunk shows.
func stream(i int64) byte { return byte(i) ^ byte(i>>8) ^ byte(i>>16) }

func streamBytes(off int64, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = stream(off + int64(i))
	}
	return p
}

// diskUse returns the total size of the files in dir, failing on any file
// but the log and its backup.
func diskUse(t *testing.T, dir string) int64 {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, e := range entries {
		if e.Name() != "console.log" && e.Name() != "console.log.1" {
			t.Errorf("unexpected file %s", e.Name())
		}
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		total += fi.Size()
	}
	return total
}

// logLines returns the lines logged into buf.
func logLines(buf *bytes.Buffer) []string {
	return strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
}

// TestCappedFileBoundsDisk writes 100 MiB, in writes of many sizes (some
// larger than the cap), through a file capped at 1 MiB: the disk holds at
// most two caps' worth, and what it holds is the end of the output.
func TestCappedFileBoundsDisk(t *testing.T) {
	const capBytes = 1 << 20
	const total = 100 << 20
	dir := t.TempDir()
	path := filepath.Join(dir, "console.log")
	c, err := OpenCapped(path, capBytes, nil)
	if err != nil {
		t.Fatal(err)
	}
	sizes := []int{1, 4096, 100, capBytes + 3, 65536, 3*capBytes + 1, 7}
	var off int64
	for i := 0; off < total; i++ {
		n := min(sizes[i%len(sizes)], int(total-off))
		if got, err := c.Write(streamBytes(off, n)); got != n || err != nil {
			t.Fatalf("Write(%d bytes) = %d, %v", n, got, err)
		}
		off += int64(n)
		if i%16 != 0 {
			continue
		}
		if use := diskUse(t, dir); use > 2*capBytes {
			t.Fatalf("after %d bytes the log uses %d bytes, more than twice the cap of %d", off, use, capBytes)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if use := diskUse(t, dir); use > 2*capBytes {
		t.Fatalf("the log uses %d bytes, more than twice the cap of %d", use, capBytes)
	}
	backup, err := os.ReadFile(path + ".1")
	if err != nil {
		t.Fatal(err)
	}
	current, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(backup) != capBytes || len(current) > capBytes {
		t.Errorf("backup %d bytes, current %d bytes; want %d and at most %d", len(backup), len(current), capBytes, capBytes)
	}
	kept := append(backup, current...)
	if want := streamBytes(total-int64(len(kept)), len(kept)); !bytes.Equal(kept, want) {
		t.Error("the backup and the current file are not the end of the output")
	}
	if c.Lost() != 0 {
		t.Errorf("%d bytes lost", c.Lost())
	}
}

func TestCappedFileAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	if err := os.WriteFile(path, []byte("earlier run\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := OpenCapped(path, 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("this run\n"))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "earlier run\nthis run\n" {
		t.Errorf("log %q", b)
	}
	if _, err := os.Stat(path + ".1"); err == nil {
		t.Error("rotated under the cap")
	}
	c.Write([]byte("after close")) // discarded, not a panic
}

// TestCappedFileRotatesOversizedLog opens a log an uncapped run left past
// the cap: it is rotated away at the first write.
func TestCappedFileRotatesOversizedLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	if err := os.WriteFile(path, bytes.Repeat([]byte{'x'}, 500), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := OpenCapped(path, 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("new"))
	if b, _ := os.ReadFile(path); string(b) != "new" {
		t.Errorf("log %q, want %q", b, "new")
	}
	if fi, err := os.Stat(path + ".1"); err != nil || fi.Size() != 500 {
		t.Errorf("backup: %v, %v", fi, err)
	}
}

// TestCappedFileWriteFailures makes every write fail: Write still
// succeeds, the failure is logged once however many bytes are lost, and
// the next rotation recovers.
func TestCappedFileWriteFailures(t *testing.T) {
	const capBytes = 1000
	path := filepath.Join(t.TempDir(), "console.log")
	var logs bytes.Buffer
	c, err := OpenCapped(path, capBytes, slogTo(&logs))
	if err != nil {
		t.Fatal(err)
	}
	c.f.Close() // every write into it fails from now on
	for range capBytes {
		if n, err := c.Write([]byte{'a'}); n != 1 || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if lines := logLines(&logs); len(lines) != 1 || !strings.Contains(lines[0], "op=write") {
		t.Fatalf("logged %q; want one line about the write", lines)
	}
	if c.Lost() != capBytes {
		t.Errorf("lost %d bytes, want %d", c.Lost(), capBytes)
	}
	c.Write([]byte("back")) // past the cap: rotates into a new file
	if b, _ := os.ReadFile(path); string(b) != "back" {
		t.Errorf("log after recovery %q", b)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if lines := logLines(&logs); len(lines) != 2 || !strings.Contains(lines[1], "bytes=1000") {
		t.Errorf("logged %q; want a count of lost bytes at close", lines)
	}
}

// TestCappedFileOpenFailures removes the log's directory: output is lost
// without an open per write, and the file comes back once it can.
func TestCappedFileOpenFailures(t *testing.T) {
	const capBytes = 100
	dir := filepath.Join(t.TempDir(), "box")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "console.log")
	var logs bytes.Buffer
	c, err := OpenCapped(path, capBytes, slogTo(&logs))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	c.Write(make([]byte, capBytes)) // into the removed file
	for range 5 * capBytes {
		c.Write([]byte{'a'}) // the reopens fail
	}
	if lines := logLines(&logs); len(lines) != 1 || !strings.Contains(lines[0], "op=reopen") {
		t.Fatalf("logged %q; want one line about the reopen", lines)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("back"))
	if b, _ := os.ReadFile(path); string(b) != "back" {
		t.Errorf("log after recovery %q", b)
	}
}
