package guestagent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"
)

// The seed corpora live in testdata/fuzz/<FuzzName>/. To run a fuzzer:
//
//	go test -run='^$' -fuzz=FuzzReadFrame -fuzztime=45s ./guestagent/

// FuzzReadFrame checks that any byte stream either decodes into frames that
// re-encode to exactly the bytes they came from, or fails with one of the
// documented errors, and that the reader never holds more than MaxPayload.
func FuzzReadFrame(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		fr := NewFrameReader(r)
		for i := 0; ; i++ {
			start := len(data) - r.Len()
			typ, p, err := fr.Next()
			end := len(data) - r.Len()
			if cap(fr.buf) > MaxPayload {
				t.Fatalf("frame %d: reader buffer grew to %d bytes", i, cap(fr.buf))
			}
			if err != nil {
				switch {
				case err == io.EOF:
					if start != len(data) {
						t.Fatalf("frame %d: io.EOF with %d bytes unread", i, len(data)-start)
					}
				case errors.Is(err, ErrFrameTooLarge):
					if end-start != headerLen {
						t.Fatalf("frame %d: oversize frame consumed %d bytes, want only the header", i, end-start)
					}
				case errors.Is(err, io.ErrUnexpectedEOF):
					if end != len(data) {
						t.Fatalf("frame %d: io.ErrUnexpectedEOF with %d bytes unread", i, len(data)-end)
					}
				default:
					t.Fatalf("frame %d: unexpected error %v", i, err)
				}
				// ReadFrame agrees with FrameReader on a stream's first frame.
				if i == 0 {
					if _, _, err2 := ReadFrame(bytes.NewReader(data)); err2 == nil || err2.Error() != err.Error() {
						t.Fatalf("ReadFrame = %v, FrameReader.Next = %v", err2, err)
					}
				}
				return
			}
			if len(p) > MaxPayload {
				t.Fatalf("frame %d: payload of %d bytes", i, len(p))
			}
			var buf bytes.Buffer
			if err := WriteFrame(&buf, typ, p); err != nil {
				t.Fatalf("frame %d: re-encode: %v", i, err)
			}
			if !bytes.Equal(buf.Bytes(), data[start:end]) {
				t.Fatalf("frame %d: re-encoded as % x, read from % x", i, head(buf.Bytes()), head(data[start:end]))
			}
			if i == 0 {
				typ2, p2, err := ReadFrame(bytes.NewReader(data))
				if err != nil || typ2 != typ || !bytes.Equal(p2, p) {
					t.Fatalf("ReadFrame = %v, %d bytes, %v; FrameReader.Next = %v, %d bytes", typ2, len(p2), err, typ, len(p))
				}
			}
		}
	})
}

// FuzzServeConn feeds arbitrary bytes to the server as one connection. The
// server must not panic, must close the connection, and must answer with
// nothing (only for an empty stream), or with output frames of the kinds
// the op may send followed by exactly one well-formed terminal frame.
//
// The fuzzed requests run for real, but fenced in by the server's vet hook
// (see fuzzVet): exec runs nothing but echo, file paths are moved into a
// scratch directory, and dial_tcp reaches only an echo server, so the
// fuzzer cannot run programs of its choosing, touch files outside that
// directory or connect anywhere else. The restored op changes a
// fakeGuest, never the machine running the fuzzer.
func FuzzServeConn(f *testing.F) {
	vet := fuzzVet(f.TempDir(), guestListen(f, echo))
	f.Fuzz(func(t *testing.T, data []byte) {
		s := &Server{vet: vet, sys: &fakeGuest{}}
		c := &fakeConn{r: bytes.NewReader(data)}
		s.serveConn(context.Background(), c)
		if !c.closed {
			t.Fatal("serveConn returned without closing the connection")
		}
		out := c.w.Bytes()
		if len(data) == 0 {
			if len(out) != 0 {
				t.Fatalf("answered an empty stream with % x", head(out))
			}
			return
		}
		var req Request
		if typ, p, err := ReadFrame(bytes.NewReader(data)); err == nil && typ == FrameRequest {
			json.Unmarshal(p, &req)
		}
		fr := NewFrameReader(bytes.NewReader(out))
		// For dial_tcp: the connected frame opens the stream frames, and
		// stdout-eof closes them.
		connected, outputEnded := false, false
		for {
			typ, p, err := fr.Next()
			if err != nil {
				t.Fatalf("answer: %v (% x)", err, head(out))
			}
			switch {
			case typ == FrameStdout && (req.Op == opExec || req.Op == opReadFile),
				typ == FrameStderr && req.Op == opExec,
				typ == FrameStdout && req.Op == opDialTCP && connected && !outputEnded:
				if len(p) > maxChunk {
					t.Fatalf("%v frame of %d bytes", typ, len(p))
				}
				continue
			case typ == FrameConnected && req.Op == opDialTCP && !connected:
				var msg dialTCPConnected
				if err := json.Unmarshal(p, &msg); err != nil || msg.RemoteAddr == "" {
					t.Fatalf("connected frame %q: %v", p, err)
				}
				connected = true
				continue
			case typ == FrameStdoutEOF && req.Op == opDialTCP && connected && !outputEnded:
				if len(p) != 0 {
					t.Fatalf("%v frame with %d bytes", typ, len(p))
				}
				outputEnded = true
				continue
			case typ == FrameResponse:
				switch {
				case req.Op == OpHealth:
					var h HealthResponse
					if err := json.Unmarshal(p, &h); err != nil || h.Status != HealthStatusOK {
						t.Fatalf("response %q: %v", p, err)
					}
				case req.Op == opRestored:
					// Only valid arguments are applied.
					var args restoredArgs
					json.Unmarshal(req.Args, &args)
					var r restoredResult
					if err := json.Unmarshal(p, &r); err != nil {
						t.Fatalf("restored response %q: %v", p, err)
					}
					if err := args.check(); err != nil {
						t.Fatalf("restored applied invalid arguments (%v): %q", err, p)
					}
					if r.EntropyBits != 8*len(args.Entropy) || r.ClockAfterUnixNano != args.TimeUnixNano ||
						r.Hostname != args.Hostname || r.MachineID != args.MachineID {
						t.Fatalf("restored %s answered %q", req.Args, p)
					}
				case req.Op == opDialTCP && (!connected || string(p) != "{}"):
					t.Fatalf("dial_tcp answered %q, connected %v", p, connected)
				case !json.Valid(p) || p[0] != '{':
					t.Fatalf("%s response %q is not a JSON object", req.Op, p)
				}
			case typ == FrameError:
				var e Error
				if err := json.Unmarshal(p, &e); err != nil || e.Code == "" || e.Message == "" {
					t.Fatalf("error frame %q: %v", p, err)
				}
			default:
				t.Fatalf("answered %q with a %v frame", req.Op, typ)
			}
			break
		}
		if _, _, err := fr.Next(); err != io.EOF {
			t.Fatalf("frames after the terminal frame: %v", err)
		}
	})
}

// fuzzVet returns a Server.vet hook for fuzzing: it refuses exec requests
// for anything but echo, which it runs in scratch with the default
// environment as the agent's user, moves absolute file paths into scratch, leaving relative
// ones for the server to reject, and points dial_tcp requests at
// echoPort on 127.0.0.1, leaving invalid ones for the server to reject.
// Nothing the fuzzer sends can create a symbolic link, so a path in
// scratch stays in scratch.
func fuzzVet(scratch string, echoPort int) func(any) error {
	inScratch := func(p *string) {
		if filepath.IsAbs(*p) {
			*p = filepath.Join(scratch, filepath.Clean(*p))
		}
	}
	return func(args any) error {
		switch a := args.(type) {
		case *execArgs:
			if len(a.Argv) > 0 && a.Argv[0] != "echo" {
				return &Error{Code: CodeExecFailed, Message: "fuzzing runs only echo"}
			}
			a.Env, a.Dir, a.User = nil, scratch, ""
		case *readFileArgs:
			inScratch(&a.Path)
		case *writeFileArgs:
			inScratch(&a.Path)
		case *statArgs:
			inScratch(&a.Path)
		case *restoredArgs:
			// The server's guestSystem is a fake.
		case *dialTCPArgs:
			if _, err := a.address(); err == nil {
				a.Host, a.Port = "127.0.0.1", echoPort
			}
		default:
			panic(fmt.Sprintf("fuzzVet: unexpected %T", args))
		}
		return nil
	}
}

// FuzzDialTCPConn feeds arbitrary bytes to the host's side of dial_tcp, as
// the agent's answer. DialTCP must succeed exactly when the answer begins
// with a valid connected frame, and then reading must yield the payloads
// of the stdout frames that follow, in order, and end with io.EOF exactly
// when they are followed by an empty stdout-eof frame. Nothing may panic,
// and a failed DialTCP must close the connection.
func FuzzDialTCPConn(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		fc := &fakeConn{r: bytes.NewReader(data)}
		c := &Client{Dial: func(context.Context) (net.Conn, error) { return fc, nil }}
		conn, err := c.DialTCP(context.Background(), "", 80)

		r := bytes.NewReader(data)
		fr := NewFrameReader(r)
		typ, p, ferr := fr.Next()
		var msg dialTCPConnected
		wantConnected := ferr == nil && typ == FrameConnected && json.Unmarshal(p, &msg) == nil
		if wantConnected {
			_, perr := netip.ParseAddrPort(msg.RemoteAddr)
			wantConnected = perr == nil
		}
		if (err == nil) != wantConnected {
			t.Fatalf("DialTCP = %v, want success %v (first frame %v %q, %v)", err, wantConnected, typ, head(p), ferr)
		}
		if err != nil {
			if !fc.closed {
				t.Fatal("DialTCP failed without closing the connection")
			}
			return
		}
		defer conn.Close()

		// What the stream should yield: the stdout payloads up to the
		// first other frame, and the part of a truncated one.
		var want []byte
		clean := false
		for {
			start := len(data) - r.Len()
			typ, p, err := fr.Next()
			if err != nil {
				if errors.Is(err, io.ErrUnexpectedEOF) && len(data)-start > headerLen && FrameType(data[start]) == FrameStdout {
					want = append(want, data[start+headerLen:]...)
				}
				break
			}
			if typ == FrameStdout {
				want = append(want, p...)
				continue
			}
			clean = typ == FrameStdoutEOF && len(p) == 0
			break
		}
		got, err := io.ReadAll(conn)
		switch {
		case clean && (err != nil || !bytes.Equal(got, want)):
			t.Fatalf("read %d bytes, %v; want %d bytes and EOF", len(got), err, len(want))
		case !clean && (err == nil || !bytes.HasPrefix(want, got)):
			t.Fatalf("read %d bytes, %v; want at most %d of them and an error", len(got), err, len(want))
		}
	})
}

// fakeConn is a net.Conn that reads from r and records what is written.
// Deadlines are accepted and ignored: reads never block. Reads and writes
// may come from different goroutines, but Close must come after both.
type fakeConn struct {
	r      *bytes.Reader
	w      bytes.Buffer
	closed bool
}

func (c *fakeConn) Read(p []byte) (int, error) {
	if c.closed {
		return 0, net.ErrClosed
	}
	return c.r.Read(p)
}

func (c *fakeConn) Write(p []byte) (int, error) {
	if c.closed {
		return 0, net.ErrClosed
	}
	return c.w.Write(p)
}

func (c *fakeConn) Close() error                     { c.closed = true; return nil }
func (c *fakeConn) LocalAddr() net.Addr              { return fakeAddr{} }
func (c *fakeConn) RemoteAddr() net.Addr             { return fakeAddr{} }
func (c *fakeConn) SetDeadline(time.Time) error      { return nil }
func (c *fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fakeConn) SetWriteDeadline(time.Time) error { return nil }

type fakeAddr struct{}

func (fakeAddr) Network() string { return "fake" }
func (fakeAddr) String() string  { return "fake" }
