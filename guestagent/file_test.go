//go:build linux

package guestagent

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// wantAgentError checks that err is an *Error with the given code whose
// message contains want.
func wantAgentError(t *testing.T, what string, err error, code, want string) {
	t.Helper()
	var ae *Error
	if !errors.As(err, &ae) || ae.Code != code || !strings.Contains(ae.Message, want) {
		t.Errorf("%s = %v, want an *Error with code %s containing %q", what, err, code, want)
	}
}

// dirNames lists the names in dir.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestWriteThenReadFile(t *testing.T) {
	c := startClient(t)
	ctx := testContext(t)
	path := filepath.Join(t.TempDir(), "data")
	data := make([]byte, 1<<20+123)
	rand.Read(data)

	n, err := c.WriteFile(ctx, path, bytes.NewReader(data), WriteOptions{Mode: 0o600})
	if err != nil || n != int64(len(data)) {
		t.Fatalf("WriteFile = %d, %v; want %d, nil", n, err, len(data))
	}
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("file holds %d bytes (%v), not the %d written", len(got), err, len(data))
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode() != 0o600 {
		t.Fatalf("mode = %v, %v; want 0600", fi.Mode(), err)
	}

	var buf bytes.Buffer
	n, err = c.ReadFile(ctx, path, &buf)
	if err != nil || n != int64(len(data)) || !bytes.Equal(buf.Bytes(), data) {
		t.Fatalf("ReadFile = %d, %v, %d bytes; want the %d written", n, err, buf.Len(), len(data))
	}

	// Replacing keeps no temporary file, and applies the new mode exactly,
	// whatever the umask.
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	if _, err := c.WriteFile(ctx, path, strings.NewReader("short"), WriteOptions{Mode: 0o755}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); string(got) != "short" {
		t.Fatalf("after replace: %q", got)
	}
	if fi, _ := os.Stat(path); fi.Mode() != 0o755 {
		t.Fatalf("mode after replace = %v, want 0755", fi.Mode())
	}
	if names := dirNames(t, filepath.Dir(path)); len(names) != 1 {
		t.Fatalf("directory holds %q, want only the file", names)
	}

	// nil means empty, and mode 0 means 0644.
	empty := filepath.Join(filepath.Dir(path), "empty")
	if n, err := c.WriteFile(ctx, empty, nil, WriteOptions{}); err != nil || n != 0 {
		t.Fatalf("WriteFile(nil) = %d, %v", n, err)
	}
	if fi, err := os.Stat(empty); err != nil || fi.Size() != 0 || fi.Mode() != 0o644 {
		t.Fatalf("empty file: %v, %v", fi, err)
	}
}

func TestReadFileRange(t *testing.T) {
	c := startClient(t)
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, []byte("0123456789"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		offset, length int64
		want           string
	}{
		{0, 0, "0123456789"},
		{3, 0, "3456789"},
		{3, 4, "3456"},
		{8, 100, "89"},
		{10, 0, ""},
		{100, 5, ""},
	} {
		var buf bytes.Buffer
		n, err := c.ReadFileRange(testContext(t), path, tc.offset, tc.length, &buf)
		if err != nil || buf.String() != tc.want || n != int64(len(tc.want)) {
			t.Errorf("ReadFileRange(%d, %d) = %d, %v, %q; want %q", tc.offset, tc.length, n, err, buf.String(), tc.want)
		}
	}
	_, err := c.ReadFileRange(testContext(t), path, -1, 0, io.Discard)
	wantAgentError(t, "ReadFileRange(-1, 0)", err, CodeBadRequest, "negative offset")

	// Files in /proc report size 0 but have contents.
	var buf bytes.Buffer
	if _, err := c.ReadFile(testContext(t), "/proc/self/status", &buf); err != nil || !strings.Contains(buf.String(), "Pid:") {
		t.Errorf("ReadFile(/proc/self/status) = %v, %q", err, buf.String())
	}
}

func TestWriteFileAppendAndCreateDirs(t *testing.T) {
	c := startClient(t)
	ctx := testContext(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "a", "b", "log")

	_, err := c.WriteFile(ctx, path, strings.NewReader("x"), WriteOptions{})
	wantAgentError(t, "WriteFile without create_dirs", err, CodeNotFound, filepath.Join(dir, "a", "b"))
	_, err = c.WriteFile(ctx, path, strings.NewReader("x"), WriteOptions{Append: true})
	wantAgentError(t, "append without create_dirs", err, CodeNotFound, path)

	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	for _, line := range []string{"one\n", "two\n"} {
		if n, err := c.WriteFile(ctx, path, strings.NewReader(line), WriteOptions{Append: true, CreateDirs: true, Mode: 0o640}); err != nil || n != int64(len(line)) {
			t.Fatalf("append %q = %d, %v", line, n, err)
		}
	}
	if got, _ := os.ReadFile(path); string(got) != "one\ntwo\n" {
		t.Fatalf("after appends: %q", got)
	}
	if fi, _ := os.Stat(path); fi.Mode() != 0o640 {
		t.Fatalf("appended file's mode = %v, want 0640", fi.Mode())
	}
	if fi, _ := os.Stat(filepath.Join(dir, "a")); !fi.IsDir() || fi.Mode().Perm() != 0o755&^0o077 {
		t.Fatalf("created directory: %v", fi.Mode())
	}
}

func TestStat(t *testing.T) {
	c := startClient(t)
	ctx := testContext(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := os.WriteFile(path, []byte("hello"), 0o640); err != nil {
		t.Fatal(err)
	}
	mtime := time.Date(2024, 2, 29, 12, 34, 56, 789, time.UTC)
	if err := os.Chtimes(path, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	fi, err := c.Stat(ctx, path)
	want := FileInfo{Name: "f", Size: 5, Mode: 0o640, ModeString: "-rw-r-----", ModTime: mtime}
	if err != nil || fi != want {
		t.Fatalf("Stat = %+v, %v; want %+v", fi, err, want)
	}

	fi, err = c.Stat(ctx, dir)
	if err != nil || !fi.IsDir || !fi.Mode.IsDir() || fi.ModeString[0] != 'd' || fi.Name != filepath.Base(dir) {
		t.Fatalf("Stat(dir) = %+v, %v", fi, err)
	}

	// The wire format: numeric mode, RFC 3339 time with nanoseconds.
	b, _ := json.Marshal(&want)
	if w := `{"name":"f","size":5,"mode":416,"mode_string":"-rw-r-----","mod_time":"2024-02-29T12:34:56.000000789Z","is_dir":false}`; string(b) != w {
		t.Errorf("FileInfo JSON = %s, want %s", b, w)
	}
}

func TestFileErrors(t *testing.T) {
	c := startClient(t)
	ctx := testContext(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")

	_, err := c.ReadFile(ctx, missing, io.Discard)
	wantAgentError(t, "ReadFile(missing)", err, CodeNotFound, missing)
	if want := fmt.Sprintf("agent read_file %s: open %s: no such file or directory (not_found)", missing, missing); err == nil || err.Error() != want {
		t.Errorf("error = %v, want %s", err, want)
	}
	_, err = c.Stat(ctx, missing)
	wantAgentError(t, "Stat(missing)", err, CodeNotFound, missing)

	_, err = c.ReadFile(ctx, dir, io.Discard)
	wantAgentError(t, "ReadFile(dir)", err, CodeBadRequest, "is a directory")
	_, err = c.WriteFile(ctx, dir, strings.NewReader("x"), WriteOptions{})
	wantAgentError(t, "WriteFile(dir)", err, CodeBadRequest, "is a directory")
	_, err = c.WriteFile(ctx, dir, strings.NewReader("x"), WriteOptions{Append: true})
	wantAgentError(t, "WriteFile(dir, append)", err, CodeBadRequest, "is a directory")
	_, err = c.Stat(ctx, filepath.Join(file, "below"))
	wantAgentError(t, "Stat(file/below)", err, CodeBadRequest, "not a directory")
	_, err = c.WriteFile(ctx, filepath.Join(file, "below"), strings.NewReader("x"), WriteOptions{CreateDirs: true})
	wantAgentError(t, "WriteFile(file/below)", err, CodeBadRequest, "not a directory")

	for _, p := range []string{"", "relative/path"} {
		_, err = c.ReadFile(ctx, p, io.Discard)
		wantAgentError(t, fmt.Sprintf("ReadFile(%q)", p), err, CodeBadRequest, "is not absolute")
		_, err = c.WriteFile(ctx, p, nil, WriteOptions{})
		wantAgentError(t, fmt.Sprintf("WriteFile(%q)", p), err, CodeBadRequest, "is not absolute")
		_, err = c.Stat(ctx, p)
		wantAgentError(t, fmt.Sprintf("Stat(%q)", p), err, CodeBadRequest, "is not absolute")
	}
	_, err = c.WriteFile(ctx, file, nil, WriteOptions{Mode: fs.ModeSetuid | 0o755})
	wantAgentError(t, "WriteFile(setuid)", err, CodeBadRequest, "bits other than permissions")
	if names := dirNames(t, dir); len(names) != 1 {
		t.Errorf("failed writes left %q", names)
	}
}

func TestFilePermissionErrors(t *testing.T) {
	c := startClient(t)
	ctx := testContext(t)
	if os.Geteuid() != 0 {
		path := filepath.Join(t.TempDir(), "secret")
		if err := os.WriteFile(path, []byte("x"), 0); err != nil {
			t.Fatal(err)
		}
		_, err := c.ReadFile(ctx, path, io.Discard)
		wantAgentError(t, "ReadFile(mode 0)", err, CodePermission, path)
		return
	}
	// Root passes permission checks, but sysfs refuses to create files,
	// and to write attributes that are read-only, even to root.
	const attr = "/sys/kernel/address_bits"
	if _, err := os.Stat(attr); err != nil {
		t.Skipf("no %s to provoke a permission error as root: %v", attr, err)
	}
	_, err := c.WriteFile(ctx, attr, strings.NewReader("1"), WriteOptions{Append: true})
	wantAgentError(t, "append to a read-only sysfs attribute", err, CodePermission, attr)
	_, err = c.WriteFile(ctx, "/sys/kernel/sailbox-test", strings.NewReader("1"), WriteOptions{})
	wantAgentError(t, "create a file in sysfs", err, CodePermission, "/sys/kernel/")
}

func TestFileErrorCodes(t *testing.T) {
	for errno, code := range map[syscall.Errno]string{
		syscall.ENOENT:       CodeNotFound,
		syscall.EACCES:       CodePermission,
		syscall.EPERM:        CodePermission,
		syscall.EISDIR:       CodeBadRequest,
		syscall.ENOTDIR:      CodeBadRequest,
		syscall.ENAMETOOLONG: CodeBadRequest,
		syscall.ENOSPC:       CodeInternal,
		syscall.EIO:          CodeInternal,
	} {
		e := fileError(&fs.PathError{Op: "open", Path: "/x", Err: errno})
		if e.Code != code || e.Message != "open /x: "+errno.Error() {
			t.Errorf("fileError(%v) = %+v, want code %s", errno, e, code)
		}
	}
}

// startRawWrite sends a write_file request for path on a new connection to
// the agent at sock, followed by frames, and returns the connection.
func startRawWrite(t *testing.T, sock, path string, frames ...[]byte) net.Conn {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	args, _ := json.Marshal(&writeFileArgs{Path: path})
	req, _ := json.Marshal(&Request{Op: opWriteFile, Args: args})
	if err := WriteFrame(conn, FrameRequest, req); err != nil {
		t.Fatal(err)
	}
	for _, f := range frames {
		if _, err := conn.Write(f); err != nil {
			t.Fatal(err)
		}
	}
	return conn
}

// TestWriteFileFailureKeepsOldFile checks that a replace that fails midway
// leaves the old file and no temporary file behind.
func TestWriteFileFailureKeepsOldFile(t *testing.T) {
	// The directory first, so that its cleanup runs after the server has
	// stopped: a request may still be removing its temporary file when
	// the test ends.
	dir := t.TempDir()
	l, sock := listenUnix(t)
	serve(t, &Server{Logger: testLogger(t), RequestTimeout: 200 * time.Millisecond}, l)
	path := filepath.Join(dir, "f")
	check := func(what string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			names := dirNames(t, dir)
			got, _ := os.ReadFile(path)
			if len(names) == 1 && string(got) == "old" {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: directory holds %q, file %q; want only the old file", what, names, got)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}

	// The host hangs up before the end of its input.
	conn := startRawWrite(t, sock, path, frame(FrameStdin, "new data"))
	time.Sleep(50 * time.Millisecond)
	conn.Close()
	check("host hung up")

	// The host stalls.
	conn = startRawWrite(t, sock, path, frame(FrameStdin, "new data"))
	if _, typ, p := readRawAnswer(t, conn); typ != FrameError || !strings.Contains(string(p), "read input") {
		t.Fatalf("stalled input: answer %v %s", typ, p)
	}
	check("host stalled")

	// The host sends a frame that has no place in write_file.
	conn = startRawWrite(t, sock, path, frame(FrameStdin, "new"), frame(FrameSignal, `{"signal":9}`))
	if _, typ, p := readRawAnswer(t, conn); typ != FrameError || !strings.Contains(string(p), `"code":"protocol"`) {
		t.Fatalf("signal frame in write_file: answer %v %s", typ, p)
	}
	check("protocol error")

	// The client's reader fails: the client sends no stdin-eof.
	c := &Client{Dial: unixDialer(sock)}
	boom := errors.New("boom")
	_, err := c.WriteFile(testContext(t), path, io.MultiReader(strings.NewReader("new"), errReader{boom}), WriteOptions{})
	if !errors.Is(err, boom) {
		t.Fatalf("WriteFile with a failing reader = %v, want %v", err, boom)
	}
	check("reader failed")
}
