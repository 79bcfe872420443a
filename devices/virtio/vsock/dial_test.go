package vsock

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/internal/nettest"
)

// fakeHost is a device's host socket that reads a client's CONNECT line,
// checks it names port 1024, and hands the connection to reply.
func fakeHost(t *testing.T, reply func(net.Conn)) string {
	t.Helper()
	path := nettest.SocketPath(t)
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	nettest.Serve(t, l, func(c net.Conn) {
		c.SetReadDeadline(time.Now().Add(testTimeout))
		if line, err := readLine(c); err != nil || line != "CONNECT 1024\n" {
			t.Errorf("fake host: CONNECT line %q, %v", line, err)
			return
		}
		c.SetReadDeadline(time.Time{})
		reply(c)
	})
	return path
}

// stall holds the connection open without answering.
func stall(c net.Conn) {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.Copy(io.Discard, c)
}

func dialContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// Bytes the guest sends right after the OK line stay for the caller.
func TestDialKeepsBytesAfterOK(t *testing.T) {
	path := fakeHost(t, func(c net.Conn) {
		c.Write([]byte("OK 7\nhello")) // in one segment
		stall(c)
	})
	conn, err := Dial(dialContext(t), path, 1024)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, 5)
	conn.SetReadDeadline(time.Now().Add(testTimeout))
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("read after the handshake = %q, %v", buf, err)
	}
}

// Every reply but "OK <u32>\n" is refused, naming the socket, the port
// and the reply.
func TestDialRejections(t *testing.T) {
	for _, tc := range []struct {
		name, reply, want string
		is                error
	}{
		{"ERR", "ERR\n", `refused the connection: reply "ERR\n"`, nil},
		{"ERR with reason", "ERR no listener\n", `reply "ERR no listener\n"`, nil},
		{"lowercase", "ok 5\n", `reply "ok 5\n"`, nil},
		{"no port", "OK\n", `reply "OK\n"`, nil},
		{"bad port", "OK abc\n", `malformed reply "OK abc\n"`, nil},
		{"port too big", "OK 4294967296\n", `malformed reply "OK 4294967296\n"`, nil},
		{"extra field", "OK 5 6\n", `malformed reply "OK 5 6\n"`, nil},
		{"CRLF", "OK 5\r\n", `malformed reply "OK 5\r\n"`, nil},
		{"too long", strings.Repeat("A", 1000), "reply longer than 64 bytes", nil},
		{"too long line", "OK " + strings.Repeat("1", 70) + "\n", "reply longer than 64 bytes", nil},
		{"closed early", "", "closed the connection without a reply", io.ErrUnexpectedEOF},
		{"closed mid-reply", "OK 12", `closed the connection inside reply "OK 12"`, io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := fakeHost(t, func(c net.Conn) { c.Write([]byte(tc.reply)) })
			conn, err := Dial(dialContext(t), path, 1024)
			if err == nil {
				conn.Close()
				t.Fatalf("Dial succeeded on reply %q", tc.reply)
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "hybrid vsock "+path+" port 1024: ") {
				t.Fatalf("Dial = %v, want an error naming the socket and port and containing %q", err, tc.want)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("Dial = %v, want it to wrap %v", err, tc.is)
			}
		})
	}
}

// The context bounds the handshake: its deadline and its cancellation
// both end a dial to a host that never answers, with the context's error.
func TestDialContext(t *testing.T) {
	path := fakeHost(t, stall)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := Dial(ctx, path, 1024); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Dial past its deadline = %v, want context.DeadlineExceeded", err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, err := Dial(ctx, path, 1024); !errors.Is(err, context.Canceled) {
		t.Errorf("Dial cancelled = %v, want context.Canceled", err)
	}
}

// The handshake's deadline and the context's end do not leak into the
// connection the caller gets.
func TestDialClearsDeadline(t *testing.T) {
	path := fakeHost(t, func(c net.Conn) {
		c.Write([]byte("OK 1\n"))
		time.Sleep(300 * time.Millisecond)
		c.Write([]byte("late"))
	})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	conn, err := Dial(ctx, path, 1024)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, 4)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "late" {
		t.Fatalf("read after the handshake = %q, %v; want \"late\"", buf, err)
	}
}

func TestDialNoSocket(t *testing.T) {
	_, err := Dial(dialContext(t), filepath.Join(t.TempDir(), "none"), 1024)
	if err == nil || !strings.HasPrefix(err.Error(), "hybrid vsock port 1024: dial unix ") {
		t.Fatalf("Dial to a missing socket = %v, want a dial error", err)
	}
}

// Every line Dial writes is one the device's parser reads back; every
// line the parser accepts names the port its canonical form does.
func FuzzParseConnect(f *testing.F) {
	for _, s := range []string{"CONNECT 1024", "CONNECT 0", "CONNECT 4294967295", "CONNECT 4294967296", "CONNECT -1", "CONNECT  1", "CONNECT +1", "CONNECT 01", "connect 1", "CONNECT", ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		port, err := parseConnect(line)
		if err != nil {
			if len(line) < 200 && !strings.Contains(err.Error(), "CONNECT line") {
				t.Errorf("error %q does not name the CONNECT line", err)
			}
			return
		}
		canonical := []byte(connectPrefix + strings.TrimLeft(string(line[len(connectPrefix):]), "+0"))
		if len(canonical) == len(connectPrefix) {
			canonical = append(canonical, '0')
		}
		if again, err := parseConnect(canonical); err != nil || again != port {
			t.Errorf("%q → %d, its canonical form %q → %d, %v", line, port, canonical, again, err)
		}
	})
}
