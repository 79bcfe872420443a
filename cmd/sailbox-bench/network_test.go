package main

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
)

// The sink reports a stream's bytes once the sender half-closes, and
// closes its end, which is what the guest's client waits for.
func TestSinkCountsAStream(t *testing.T) {
	s, err := newSink()
	if err != nil {
		t.Fatal(err)
	}
	defer s.l.Close()
	c, err := net.Dial("tcp", s.l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 3<<20 + 17
	if _, err := io.CopyN(c, zeros{}, n); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("after the stream the sink sent %d bytes, %v; want its close", len(b), err)
	}
	if got := <-s.got; got.n != n || got.err != nil {
		t.Fatalf("sink got %d bytes, %v; want %d", got.n, got.err, n)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// -rows is checked before anything runs: an unknown group, and the
// snapshots rows without the boots their ratios divide by.
func TestRowsFlag(t *testing.T) {
	for _, tc := range []struct{ rows, want string }{
		{"net,bogus", `unknown group "bogus"`},
		{"snapshots", "snapshots needs boot"},
	} {
		err := run(context.Background(), []string{"-kernel", "k", "-initrd", "i", "-image", "", "-rows", tc.rows}, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("-rows %s: got %v, want an error containing %q", tc.rows, err, tc.want)
		}
	}
}
