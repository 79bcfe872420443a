package guestagent

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

// allFrameTypes lists every assigned frame type.
var allFrameTypes = []FrameType{
	FrameRequest, FrameResponse, FrameStdin, FrameStdout, FrameStderr,
	FrameStdinEOF, FrameSignal, FrameError, FrameConnected, FrameStdoutEOF,
}

// frame encodes one frame by hand, independently of WriteFrame.
func frame(typ FrameType, payload string) []byte {
	b := []byte{byte(typ), 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(len(payload)))
	return append(b, payload...)
}

func TestFrameTypeNumbersAreFrozen(t *testing.T) {
	// These numbers are wire protocol; changing one breaks every deployed
	// agent or host.
	want := map[FrameType]uint8{
		FrameRequest: 1, FrameResponse: 2, FrameStdin: 3, FrameStdout: 4,
		FrameStderr: 5, FrameStdinEOF: 6, FrameSignal: 7, FrameError: 8,
		FrameConnected: 9, FrameStdoutEOF: 10,
	}
	for typ, n := range want {
		if uint8(typ) != n {
			t.Errorf("%v = %d, want %d", typ, uint8(typ), n)
		}
	}
	if len(want) != len(allFrameTypes) {
		t.Errorf("allFrameTypes has %d types, want %d", len(allFrameTypes), len(want))
	}
}

func TestFrameTypeString(t *testing.T) {
	seen := map[string]bool{}
	for _, typ := range allFrameTypes {
		s := typ.String()
		if s == "" || strings.HasPrefix(s, "FrameType(") || seen[s] {
			t.Errorf("FrameType(%d).String() = %q: want a unique name", uint8(typ), s)
		}
		seen[s] = true
	}
	for typ, want := range map[FrameType]string{0: "FrameType(0x00)", 11: "FrameType(0x0b)", 0xff: "FrameType(0xff)"} {
		if got := typ.String(); got != want {
			t.Errorf("FrameType(%d).String() = %q, want %q", uint8(typ), got, want)
		}
	}
}

func TestFrameRoundTrip(t *testing.T) {
	payloads := map[string][]byte{
		"empty": nil,
		"small": []byte(`{"op":"health"}`),
		"max":   bytes.Repeat([]byte{0xa5}, MaxPayload),
	}
	for _, typ := range allFrameTypes {
		for name, payload := range payloads {
			t.Run(typ.String()+"/"+name, func(t *testing.T) {
				var buf bytes.Buffer
				if err := WriteFrame(&buf, typ, payload); err != nil {
					t.Fatalf("WriteFrame: %v", err)
				}
				if want := frame(typ, string(payload)); !bytes.Equal(buf.Bytes(), want) {
					t.Fatalf("WriteFrame wrote % x..., want % x...", head(buf.Bytes()), head(want))
				}
				encoded := bytes.Clone(buf.Bytes())

				gotTyp, got, err := ReadFrame(&buf)
				if err != nil || gotTyp != typ || !bytes.Equal(got, payload) {
					t.Fatalf("ReadFrame = %v, %d bytes, %v; want %v, %d bytes, nil", gotTyp, len(got), err, typ, len(payload))
				}
				if _, _, err := ReadFrame(&buf); err != io.EOF {
					t.Fatalf("ReadFrame at end of stream: %v, want io.EOF", err)
				}

				// Through a reader that returns one byte per Read, which
				// exercises the incremental payload buffer.
				fr := NewFrameReader(iotest.OneByteReader(bytes.NewReader(encoded)))
				gotTyp, got, err = fr.Next()
				if err != nil || gotTyp != typ || !bytes.Equal(got, payload) {
					t.Fatalf("FrameReader.Next = %v, %d bytes, %v; want %v, %d bytes, nil", gotTyp, len(got), err, typ, len(payload))
				}
			})
		}
	}
}

func head(b []byte) []byte { return b[:min(len(b), 16)] }

func TestFrameReaderSequence(t *testing.T) {
	var stream bytes.Buffer
	want := []struct {
		typ     FrameType
		payload string
	}{
		{FrameRequest, `{"op":"exec"}`},
		{FrameStdin, strings.Repeat("x", 100<<10)},
		{FrameStdin, "short"},
		{FrameStdinEOF, ""},
		{FrameSignal, `{"signal":15}`},
	}
	for _, f := range want {
		stream.Write(frame(f.typ, f.payload))
	}
	fr := NewFrameReader(&stream)
	for i, f := range want {
		typ, p, err := fr.Next()
		if err != nil || typ != f.typ || string(p) != f.payload {
			t.Fatalf("frame %d: got %v, %d bytes, %v; want %v, %d bytes", i, typ, len(p), err, f.typ, len(f.payload))
		}
	}
	if _, _, err := fr.Next(); err != io.EOF {
		t.Fatalf("after last frame: %v, want io.EOF", err)
	}
}

func TestFrameReaderReusesBuffer(t *testing.T) {
	data := append(frame(FrameStdout, strings.Repeat("a", 4096)), frame(FrameStderr, "b")...)
	r := bytes.NewReader(data)
	fr := NewFrameReader(r)
	read := func() {
		r.Reset(data)
		for range 2 {
			if _, _, err := fr.Next(); err != nil {
				t.Fatal(err)
			}
		}
	}
	read() // size the buffer
	if allocs := testing.AllocsPerRun(100, read); allocs != 0 {
		t.Errorf("FrameReader.Next allocates %v times per frame pair once warm, want 0", allocs)
	}
}

func TestWriteFrameTooLarge(t *testing.T) {
	var buf bytes.Buffer
	err := WriteFrame(&buf, FrameStdout, make([]byte, MaxPayload+1))
	if !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("WriteFrame(MaxPayload+1) = %v, want ErrFrameTooLarge", err)
	}
	if buf.Len() != 0 {
		t.Errorf("WriteFrame wrote %d bytes of a rejected frame", buf.Len())
	}
}

func TestWriteFrameWriteError(t *testing.T) {
	boom := errors.New("boom")
	err := WriteFrame(errWriter{boom}, FrameResponse, []byte("x"))
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "write response frame") {
		t.Fatalf("WriteFrame = %v, want an error naming the frame and wrapping %v", err, boom)
	}
}

type errWriter struct{ err error }

func (w errWriter) Write([]byte) (int, error) { return 0, w.err }

// bytesAllocated returns the bytes allocated per call of f, on average.
func bytesAllocated(n int, f func()) uint64 {
	f()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range n {
		f()
	}
	runtime.ReadMemStats(&after)
	return (after.TotalAlloc - before.TotalAlloc) / uint64(n)
}

func TestReadFrameTooLarge(t *testing.T) {
	for _, n := range []uint32{MaxPayload + 1, 1 << 24, 0xffffffff} {
		hdr := []byte{byte(FrameRequest), 0, 0, 0, 0}
		binary.BigEndian.PutUint32(hdr[1:], n)
		// Plenty of payload behind the header: the reader must not read it.
		data := append(hdr, make([]byte, 64)...)
		_, _, err := ReadFrame(bytes.NewReader(data))
		if !errors.Is(err, ErrFrameTooLarge) {
			t.Fatalf("ReadFrame(length %d) = %v, want ErrFrameTooLarge", n, err)
		}
		per := bytesAllocated(100, func() { ReadFrame(bytes.NewReader(data)) })
		if per > 1024 {
			t.Errorf("ReadFrame(length %d) allocated %d bytes per call, want < 1 KiB", n, per)
		}
	}
}

func TestReadFrameTruncated(t *testing.T) {
	full := frame(FrameResponse, `{"status":"ok"}`)
	if _, _, err := ReadFrame(bytes.NewReader(nil)); err != io.EOF {
		t.Errorf("ReadFrame(empty) = %v, want io.EOF", err)
	}
	for n := 1; n < len(full); n++ {
		_, _, err := ReadFrame(bytes.NewReader(full[:n]))
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("ReadFrame(first %d of %d bytes) = %v, want io.ErrUnexpectedEOF", n, len(full), err)
		}
	}
	// A read error other than EOF is passed through, wrapped.
	boom := errors.New("boom")
	r := io.MultiReader(bytes.NewReader(full[:7]), iotest.ErrReader(boom))
	if _, _, err := ReadFrame(r); !errors.Is(err, boom) {
		t.Errorf("ReadFrame(failing reader) = %v, want %v", err, boom)
	}
}

func TestReadFrameTruncatedLargeFrameAllocatesLittle(t *testing.T) {
	// A peer declares a 1 MiB frame and hangs up after 10 bytes: the
	// reader's memory must follow what arrived, not what was declared.
	hdr := []byte{byte(FrameStdout), 0, 0, 0, 0}
	binary.BigEndian.PutUint32(hdr[1:], MaxPayload)
	data := append(hdr, "0123456789"...)
	_, _, err := ReadFrame(bytes.NewReader(data))
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("ReadFrame = %v, want io.ErrUnexpectedEOF", err)
	}
	if per := bytesAllocated(20, func() { ReadFrame(bytes.NewReader(data)) }); per > 2*initialPayloadBuf {
		t.Errorf("ReadFrame allocated %d bytes for a truncated 1 MiB frame, want <= %d", per, 2*initialPayloadBuf)
	}
}

// TestJSONWireFormat pins the JSON field names: they are wire protocol.
func TestJSONWireFormat(t *testing.T) {
	for _, tc := range []struct {
		v    any
		want string
	}{
		{Request{Op: OpHealth}, `{"op":"health"}`},
		{Request{Op: "exec", Args: json.RawMessage(`{"argv":["true"]}`)}, `{"op":"exec","args":{"argv":["true"]}}`},
		{HealthResponse{Status: HealthStatusOK, AgentVersion: "v1", GuestSchemaVersion: 1}, `{"status":"ok","agent_version":"v1","guest_schema_version":1}`},
		{Error{Code: CodeUnknownOp, Message: "unknown op"}, `{"code":"unknown_op","message":"unknown op"}`},
		{execArgs{ExecRequest: ExecRequest{Argv: []string{"sh"}, Env: []string{"A=b"}, Dir: "/d", Timeout: time.Hour}, Stdin: true, TimeoutMS: 5},
			`{"argv":["sh"],"env":["A=b"],"dir":"/d","stdin":true,"timeout_ms":5}`},
		{execArgs{ExecRequest: ExecRequest{Argv: []string{"true"}}}, `{"argv":["true"]}`},
		{ExecResult{ExitCode: -1, Signal: 9, TimedOut: true}, `{"exit_code":-1,"signal":9,"timed_out":true}`},
		{signalArgs{Signal: 15}, `{"signal":15}`},
		{readFileArgs{Path: "/f", Offset: 1, Length: 2}, `{"path":"/f","offset":1,"length":2}`},
		{readFileResult{Size: 3}, `{"size":3}`},
		{writeFileArgs{Path: "/f", WriteOptions: WriteOptions{Mode: 0o600, Append: true, CreateDirs: true}}, `{"path":"/f","mode":384,"append":true,"create_dirs":true}`},
		{writeFileResult{Written: 4}, `{"written":4}`},
		{statArgs{Path: "/f"}, `{"path":"/f"}`},
		{restoredArgs{RestoredArgs: RestoredArgs{Time: time.Now(), Entropy: []byte{1, 2, 3}, Hostname: "h", MachineID: "m"}, TimeUnixNano: 5},
			`{"entropy":"AQID","hostname":"h","machine_id":"m","time_unix_nano":5}`},
		{restoredArgs{RestoredArgs: RestoredArgs{Entropy: []byte{1, 2, 3}}, TimeUnixNano: 5}, `{"entropy":"AQID","time_unix_nano":5}`},
		{restoredResult{RestoredResult: RestoredResult{EntropyBits: 24, Reseeded: true, ClockBefore: time.Now(), Hostname: "h", MachineID: "m"}, ClockBeforeUnixNano: 6, ClockAfterUnixNano: 7},
			`{"entropy_bits":24,"reseeded":true,"hostname":"h","machine_id":"m","clock_before_unix_nano":6,"clock_after_unix_nano":7}`},
		{restoredResult{}, `{"entropy_bits":0,"reseeded":false,"clock_before_unix_nano":0,"clock_after_unix_nano":0}`},
		{dialTCPArgs{Host: "10.0.0.1", Port: 80}, `{"host":"10.0.0.1","port":80}`},
		{dialTCPArgs{Port: 8080}, `{"port":8080}`},
		{dialTCPConnected{RemoteAddr: "127.0.0.1:80"}, `{"remote_addr":"127.0.0.1:80"}`},
		{dialTCPResult{}, `{}`},
	} {
		b, err := json.Marshal(tc.v)
		if err != nil || string(b) != tc.want {
			t.Errorf("json.Marshal(%#v) = %s, %v; want %s", tc.v, b, err, tc.want)
		}
	}
}

func TestErrorString(t *testing.T) {
	if got, want := (&Error{Code: "unknown_op", Message: `unknown op "x"`}).Error(), `unknown op "x" (unknown_op)`; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if got, want := (&Error{Code: "internal"}).Error(), "agent error (internal)"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}
