package guestagent

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeGuest is a guestSystem that records the calls made to it, in order,
// and fails those named in fail. Its clock reads clockNow until setClock
// moves it.
type fakeGuest struct {
	mu       sync.Mutex
	calls    []string
	fail     map[string]error // by method name
	noReseed bool             // the kernel lacks RNDRESEEDCRNG

	seed      []byte
	clockNow  time.Time
	hostname  string
	machineID string
}

func (g *fakeGuest) record(call string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.calls = append(g.calls, call)
	return g.fail[call]
}

func (g *fakeGuest) addEntropy(seed []byte) (bool, error) {
	if err := g.record("addEntropy"); err != nil {
		return false, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.seed = bytes.Clone(seed)
	return !g.noReseed, nil
}

func (g *fakeGuest) clock() time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.clockNow
}

func (g *fakeGuest) setClock(t time.Time) error {
	if err := g.record("setClock"); err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.clockNow = t
	return nil
}

func (g *fakeGuest) setHostname(name string) error {
	if err := g.record("setHostname"); err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.hostname = name
	return nil
}

func (g *fakeGuest) setMachineID(id string) error {
	if err := g.record("setMachineID"); err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.machineID = id
	return nil
}

func (g *fakeGuest) resetConnections() (int, error) {
	if err := g.record("resetConnections"); err != nil {
		return 0, err
	}
	return 2, nil
}

func (g *fakeGuest) callList() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.calls)
}

// state returns what the restored op has set.
func (g *fakeGuest) state() (seed []byte, clock time.Time, hostname, machineID string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.seed, g.clockNow, g.hostname, g.machineID
}

// startGuestClient serves a Server whose restored op changes g instead of
// the machine, and returns a Client for it.
func startGuestClient(t *testing.T, g *fakeGuest) *Client {
	t.Helper()
	l, path := listenUnix(t)
	serve(t, &Server{Logger: testLogger(t), sys: g}, l)
	return &Client{Dial: unixDialer(path)}
}

var (
	staleClock = time.Date(2024, 1, 2, 3, 4, 5, 6, time.UTC)
	hostClock  = time.Date(2025, 6, 7, 8, 9, 10, 123456789, time.UTC)
	machineID  = "0123456789abcdef0123456789abcdef"
)

func TestRestoredFork(t *testing.T) {
	g := &fakeGuest{clockNow: staleClock}
	c := startGuestClient(t, g)
	seed := bytes.Repeat([]byte{0xa5}, 64)
	got, err := c.Restored(testContext(t), RestoredArgs{Time: hostClock, Entropy: seed, Hostname: "sbx-child", MachineID: machineID})
	if err != nil {
		t.Fatalf("Restored: %v", err)
	}
	want := RestoredResult{EntropyBits: 512, Reseeded: true, ClockBefore: staleClock, ClockAfter: hostClock, Hostname: "sbx-child", MachineID: machineID, ConnectionsReset: 2}
	if !got.ClockBefore.Equal(want.ClockBefore) || !got.ClockAfter.Equal(want.ClockAfter) {
		t.Errorf("clock before %v, after %v; want %v, %v", got.ClockBefore, got.ClockAfter, want.ClockBefore, want.ClockAfter)
	}
	got.ClockBefore, got.ClockAfter, want.ClockBefore, want.ClockAfter = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	if got != want {
		t.Errorf("Restored = %+v, want %+v", got, want)
	}
	// Entropy first: a fork must not run without it, whatever else fails.
	if calls, want := g.callList(), []string{"addEntropy", "setClock", "setHostname", "setMachineID", "resetConnections"}; !slices.Equal(calls, want) {
		t.Errorf("system calls %q, want %q", calls, want)
	}
	if gotSeed, clock, hostname, id := g.state(); !bytes.Equal(gotSeed, seed) || !clock.Equal(hostClock) || hostname != "sbx-child" || id != machineID {
		t.Errorf("guest has seed %x, clock %v, hostname %q, machine ID %q", gotSeed, clock, hostname, id)
	}
}

func TestRestoredInPlace(t *testing.T) {
	g := &fakeGuest{clockNow: staleClock, noReseed: true}
	c := startGuestClient(t, g)
	args := RestoreArgs()
	if len(args.Entropy) != restoredEntropy || !args.Time.IsZero() || args.Hostname != "" || args.MachineID != "" {
		t.Fatalf("RestoreArgs() = %+v, want %d bytes of entropy and nothing else", args, restoredEntropy)
	}
	start := time.Now()
	got, err := c.Restored(testContext(t), args)
	end := time.Now()
	if err != nil {
		t.Fatalf("Restored: %v", err)
	}
	// A zero Time is the host's clock when the request goes out.
	if _, clock, _, _ := g.state(); clock.Before(start.Round(0)) || clock.After(end) {
		t.Errorf("guest clock set to %v, want between %v and %v", clock, start, end)
	}
	if got.EntropyBits != 8*restoredEntropy || got.Reseeded || got.Hostname != "" || got.MachineID != "" || !got.ClockBefore.Equal(staleClock) {
		t.Errorf("Restored = %+v; want %d bits credited, no reseed, no new identity", got, 8*restoredEntropy)
	}
	if calls, want := g.callList(), []string{"addEntropy", "setClock", "resetConnections"}; !slices.Equal(calls, want) {
		t.Errorf("system calls %q, want %q", calls, want)
	}
}

func TestRestoredRejectsBadArgs(t *testing.T) {
	g := &fakeGuest{clockNow: staleClock}
	c := startGuestClient(t, g)
	ok := RestoredArgs{Time: hostClock, Entropy: make([]byte, 64), Hostname: "ok", MachineID: machineID}
	for _, tc := range []struct {
		name   string
		change func(a *RestoredArgs)
		want   string // in the message
	}{
		{"before 1970", func(a *RestoredArgs) { a.Time = time.Unix(-1, 0) }, "not after 1970"},
		{"the epoch", func(a *RestoredArgs) { a.Time = time.Unix(0, 0) }, "not after 1970"},
		{"no entropy", func(a *RestoredArgs) { a.Entropy = nil }, "0 bytes of entropy"},
		{"too little entropy", func(a *RestoredArgs) { a.Entropy = make([]byte, MinRestoredEntropy-1) }, "31 bytes of entropy"},
		{"too much entropy", func(a *RestoredArgs) { a.Entropy = make([]byte, MaxRestoredEntropy+1) }, "513 bytes of entropy"},
		{"hostname too long", func(a *RestoredArgs) { a.Hostname = strings.Repeat("a", 65) }, "invalid hostname"},
		{"hostname underscore", func(a *RestoredArgs) { a.Hostname = "bad_name" }, "invalid hostname"},
		{"hostname space", func(a *RestoredArgs) { a.Hostname = "bad name" }, "invalid hostname"},
		{"hostname slash", func(a *RestoredArgs) { a.Hostname = "../etc" }, "invalid hostname"},
		{"hostname leading hyphen", func(a *RestoredArgs) { a.Hostname = "-x" }, "invalid hostname"},
		{"hostname non-ASCII", func(a *RestoredArgs) { a.Hostname = "héllo" }, "invalid hostname"},
		{"machine ID short", func(a *RestoredArgs) { a.MachineID = machineID[1:] }, "invalid machine_id"},
		{"machine ID long", func(a *RestoredArgs) { a.MachineID = machineID + "0" }, "invalid machine_id"},
		{"machine ID uppercase", func(a *RestoredArgs) { a.MachineID = strings.ToUpper(machineID) }, "invalid machine_id"},
		{"machine ID not hex", func(a *RestoredArgs) { a.MachineID = "g" + machineID[1:] }, "invalid machine_id"},
		{"machine ID UUID", func(a *RestoredArgs) { a.MachineID = "01234567-89ab-cdef-0123-456789abcdef" }, "invalid machine_id"},
		{"machine ID zero", func(a *RestoredArgs) { a.MachineID = strings.Repeat("0", 32) }, "invalid machine_id"},
		{"machine ID newline", func(a *RestoredArgs) { a.MachineID = machineID[1:] + "\n" }, "invalid machine_id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := ok
			tc.change(&args)
			_, err := c.Restored(testContext(t), args)
			var ae *Error
			if !errors.As(err, &ae) || ae.Code != CodeBadRequest || !strings.Contains(ae.Message, tc.want) {
				t.Fatalf("Restored = %v, want an *Error with code %q containing %q", err, CodeBadRequest, tc.want)
			}
		})
	}
	if calls := g.callList(); len(calls) != 0 {
		t.Fatalf("invalid requests changed the system: %q", calls)
	}
	// The bounds themselves are fine.
	for _, n := range []int{MinRestoredEntropy, MaxRestoredEntropy} {
		args := ok
		args.Entropy = make([]byte, n)
		args.Hostname = strings.Repeat("h", 64)
		if _, err := c.Restored(testContext(t), args); err != nil {
			t.Errorf("Restored with %d bytes of entropy and a 64-byte hostname: %v", n, err)
		}
	}
}

func TestRestoredRejectsBadJSON(t *testing.T) {
	g := &fakeGuest{}
	c := startGuestClient(t, g)
	for _, args := range []string{
		`{"time_unix_nano":"soon","entropy":"AAAA"}`,
		`{"time_unix_nano":1,"entropy":"not base64!"}`,
		`{"time_unix_nano":1,"entropy":[1,2,3]}`,
		`[]`,
	} {
		var res restoredResult
		err := c.do(testContext(t), &call{op: opRestored, args: json.RawMessage(args)}, &res)
		var ae *Error
		if !errors.As(err, &ae) || ae.Code != CodeBadRequest {
			t.Errorf("restored %s = %v, want code %q", args, err, CodeBadRequest)
		}
	}
	if calls := g.callList(); len(calls) != 0 {
		t.Fatalf("invalid requests changed the system: %q", calls)
	}
}

func TestRestoredReportsFailedSteps(t *testing.T) {
	for _, tc := range []struct {
		fail     map[string]error
		code     string
		contains []string
	}{
		{
			fail:     map[string]error{"setHostname": fmt.Errorf("set hostname: %w", syscall.EPERM)},
			code:     CodePermission,
			contains: []string{"set hostname: operation not permitted", "(applied: entropy, clock, machine ID, connections reset)"},
		},
		{
			fail: map[string]error{
				"addEntropy": errors.New("add entropy: no /dev/urandom"),
				"setClock":   errors.New("set clock: broken"),
			},
			code:     CodeInternal,
			contains: []string{"add entropy: no /dev/urandom; set clock: broken", "(applied: hostname, machine ID, connections reset)"},
		},
		{
			fail: map[string]error{
				"addEntropy":       errors.New("a"),
				"setClock":         errors.New("b"),
				"setHostname":      errors.New("c"),
				"setMachineID":     errors.New("d"),
				"resetConnections": errors.New("e"),
			},
			code:     CodeInternal,
			contains: []string{"restored: a; b; c; d; e (applied: nothing)"},
		},
	} {
		g := &fakeGuest{fail: tc.fail}
		c := startGuestClient(t, g)
		_, err := c.Restored(testContext(t), RestoredArgs{Time: hostClock, Entropy: make([]byte, 64), Hostname: "h", MachineID: machineID})
		var ae *Error
		if !errors.As(err, &ae) || ae.Code != tc.code {
			t.Errorf("with %v failing: Restored = %v, want code %q", tc.fail, err, tc.code)
			continue
		}
		for _, s := range tc.contains {
			if !strings.Contains(ae.Message, s) {
				t.Errorf("with %v failing: message %q lacks %q", tc.fail, ae.Message, s)
			}
		}
		// Every step is attempted.
		if calls := g.callList(); len(calls) != 5 {
			t.Errorf("with %v failing: system calls %q, want all five", tc.fail, calls)
		}
	}
}

func TestRestoredOnlyInGuest(t *testing.T) {
	// startClient's Server is not a guest's: it must refuse, not set the
	// clock of the machine running the tests.
	c := startClient(t)
	_, err := c.Restored(testContext(t), RestoreArgs())
	var ae *Error
	if !errors.As(err, &ae) || ae.Code != CodeUnknownOp || !strings.Contains(ae.Message, "not enabled") {
		t.Fatalf("Restored on a Server without Guest = %v, want an *Error with code %q", err, CodeUnknownOp)
	}
	var old *AgentTooOldError
	if errors.As(err, &old) {
		t.Fatalf("Restored on a current agent = %v, want no AgentTooOldError", err)
	}
}

// oldAgent answers as an agent of schema version 1 does: health, and
// unknown_op for restored.
func oldAgent(t *testing.T) string {
	return fakePeer(t, func(c net.Conn) {
		_, p, err := ReadFrame(c)
		if err != nil {
			t.Errorf("old agent: read request: %v", err)
			return
		}
		var req Request
		json.Unmarshal(p, &req)
		switch req.Op {
		case OpHealth:
			WriteFrame(c, FrameResponse, []byte(`{"status":"ok","agent_version":"v0.1.0","guest_schema_version":1}`))
		default:
			WriteFrame(c, FrameError, encodeError(&Error{Code: CodeUnknownOp, Message: fmt.Sprintf("unknown op %q", req.Op)}))
		}
	})
}

func TestRestoredOnOldAgent(t *testing.T) {
	c := &Client{Dial: unixDialer(oldAgent(t))}
	_, err := c.Restored(testContext(t), RestoreArgs())
	var old *AgentTooOldError
	if !errors.As(err, &old) {
		t.Fatalf("Restored on a version 1 agent = %v, want an *AgentTooOldError", err)
	}
	want := AgentTooOldError{Op: "restored", AgentVersion: "v0.1.0", SchemaVersion: 1, MinSchemaVersion: RestoredSchemaVersion}
	if *old != want {
		t.Errorf("error = %+v, want %+v", *old, want)
	}
	if !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("errors.Is(%v, errors.ErrUnsupported) = false", err)
	}
	if msg := err.Error(); !strings.HasPrefix(msg, "agent restored: ") || !strings.Contains(msg, "version 1") || !strings.Contains(msg, "upgrade") {
		t.Errorf("error message %q", msg)
	}
}

func TestRestoredTimeOutOfRange(t *testing.T) {
	c := &Client{Dial: func(context.Context) (net.Conn, error) {
		t.Error("dialled with a time that cannot be sent")
		return nil, errors.New("no")
	}}
	for _, tm := range []time.Time{time.Date(1600, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC)} {
		if _, err := c.Restored(testContext(t), RestoredArgs{Time: tm, Entropy: make([]byte, 64)}); err == nil {
			t.Errorf("Restored at %v succeeded", tm)
		}
	}
}

func TestForkArgs(t *testing.T) {
	args, err := ForkArgs("b0x-42")
	if err != nil {
		t.Fatal(err)
	}
	if args.Hostname != "sbx-b0x-42" || !validMachineID(args.MachineID) || len(args.Entropy) != restoredEntropy || !args.Time.IsZero() {
		t.Fatalf("ForkArgs = %+v", args)
	}
	again, _ := ForkArgs("b0x-42")
	if again.MachineID == args.MachineID || bytes.Equal(again.Entropy, args.Entropy) {
		t.Fatalf("two forks share a machine ID or entropy: %+v, %+v", args, again)
	}
	if _, err := ForkArgs(""); err == nil {
		t.Fatal("ForkArgs(\"\") succeeded")
	}
}

func TestForkHostname(t *testing.T) {
	long := strings.Repeat("x", 100)
	for _, tc := range []struct {
		id, want string // want "" for an error
	}{
		{"1", "sbx-1"},
		{"AbC-09", "sbx-AbC-09"},
		{long, "sbx-" + long[:59]},
		{strings.Repeat("x", 58) + "-y", "sbx-" + strings.Repeat("x", 58)}, // cut at the hyphen
		{strings.Repeat("x", 57) + "---y", "sbx-" + strings.Repeat("x", 57)},
		{"", ""},
		{"a.b", ""},
		{"a_b", ""},
		{"a b", ""},
		{"a/b", ""},
		{"ünï", ""},
	} {
		got, err := ForkHostname(tc.id)
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("ForkHostname(%q) = %q, want an error", tc.id, got)
		case tc.want != "" && (err != nil || got != tc.want):
			t.Errorf("ForkHostname(%q) = %q, %v; want %q", tc.id, got, err, tc.want)
		case err == nil && (len(got) > 63 || !validHostname(got)):
			t.Errorf("ForkHostname(%q) = %q: not a valid hostname of at most 63 bytes", tc.id, got)
		}
	}
}

func TestNewMachineID(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		id := NewMachineID()
		if !validMachineID(id) {
			t.Fatalf("NewMachineID() = %q: not a valid machine ID", id)
		}
		// A version 4, variant 1 UUID: xxxxxxxxxxxx4xxx[89ab]xxxxxxxxxxxxxxx.
		if id[12] != '4' || !strings.ContainsRune("89ab", rune(id[16])) {
			t.Fatalf("NewMachineID() = %q: not a random UUID", id)
		}
		if seen[id] {
			t.Fatalf("NewMachineID() repeated %q", id)
		}
		seen[id] = true
	}
}

func TestValidMachineID(t *testing.T) {
	for id, want := range map[string]bool{
		machineID:                     true,
		NewMachineID():                true,
		"":                            false,
		strings.Repeat("0", 32):       false,
		strings.Repeat("0", 31) + "1": true,
		strings.ToUpper(machineID):    false,
		machineID[:31] + "g":          false,
		machineID + "\n":              false,
	} {
		if got := validMachineID(id); got != want {
			t.Errorf("validMachineID(%q) = %v, want %v", id, got, want)
		}
	}
}

func TestRandPoolInfo(t *testing.T) {
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[0]; }
	if randPoolInfoHeader != 2*4 {
		t.Fatalf("rand_pool_info header is %d bytes, want 8", randPoolInfoHeader)
	}
	seed := []byte("0123456789abcdefghijklmnopqrstuvwxyz!") // not a whole number of words
	b := randPoolInfo(seed)
	if len(b) != 8+len(seed) {
		t.Fatalf("randPoolInfo of %d bytes is %d bytes long", len(seed), len(b))
	}
	bits, size := int32(binary.NativeEndian.Uint32(b[0:])), int32(binary.NativeEndian.Uint32(b[4:]))
	if bits != int32(8*len(seed)) || size != int32(len(seed)) || !bytes.Equal(b[8:], seed) {
		t.Fatalf("randPoolInfo = entropy_count %d, buf_size %d, buf %q; want %d, %d, %q", bits, size, b[8:], 8*len(seed), len(seed), seed)
	}
}

func TestWriteMachineID(t *testing.T) {
	root := t.TempDir() // no etc: it is created
	if err := writeMachineID(root, machineID); err != nil {
		t.Fatal(err)
	}
	checkFile(t, filepath.Join(root, "etc", "machine-id"), machineID+"\n", 0o444)
	// A read-only machine-id is replaced all the same.
	other := NewMachineID()
	if err := writeMachineID(root, other); err != nil {
		t.Fatal(err)
	}
	checkFile(t, filepath.Join(root, "etc", "machine-id"), other+"\n", 0o444)
	checkNoDebris(t, filepath.Join(root, "etc"), "machine-id")
}

func TestUpdateHostnameFile(t *testing.T) {
	root := t.TempDir()
	// Without /etc/hostname, nothing is written.
	if updated, err := updateHostnameFile(root, "h1"); updated || err != nil {
		t.Fatalf("updateHostnameFile without /etc = %v, %v", updated, err)
	}
	if _, err := os.Stat(filepath.Join(root, "etc")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("updateHostnameFile created /etc: %v", err)
	}
	etc := filepath.Join(root, "etc")
	os.Mkdir(etc, 0o755)
	if updated, err := updateHostnameFile(root, "h1"); updated || err != nil {
		t.Fatalf("updateHostnameFile without /etc/hostname = %v, %v", updated, err)
	}
	path := filepath.Join(etc, "hostname")
	if err := os.WriteFile(path, []byte("old\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o640)
	if updated, err := updateHostnameFile(root, "sbx-new"); !updated || err != nil {
		t.Fatalf("updateHostnameFile = %v, %v; want true, nil", updated, err)
	}
	checkFile(t, path, "sbx-new\n", 0o640)
	checkNoDebris(t, etc, "hostname")
}

// checkFile checks the contents and permissions of the file at path.
func checkFile(t *testing.T, path, want string, perm fs.FileMode) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil || string(b) != want {
		t.Fatalf("%s holds %q, %v; want %q", path, b, err, want)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode() != perm {
		t.Fatalf("%s: mode %v, %v; want %v", path, fi.Mode(), err, perm)
	}
}

// checkNoDebris checks that dir holds nothing but the files named.
func checkNoDebris(t *testing.T, dir string, names ...string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, names) {
		t.Fatalf("%s holds %q, want only %q", dir, got, names)
	}
}
