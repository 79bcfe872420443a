package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/internal/apiserver/servertest"
)

type sailer struct {
	t    *testing.T
	env  *servertest.Env
	sock string
}

// sail runs the CLI and returns stdout, stderr and the error.
func (s *sailer) sail(args ...string) (string, string, error) {
	var out, errOut bytes.Buffer
	err := run(context.Background(), append([]string{"-socket", s.sock}, args...), &out, &errOut)
	return out.String(), errOut.String(), err
}

// ok runs the CLI and fails the test on an error.
func (s *sailer) ok(args ...string) string {
	s.t.Helper()
	out, errOut, err := s.sail(args...)
	if err != nil {
		s.t.Fatalf("sail %s: %v\n%s", strings.Join(args, " "), err, errOut)
	}
	return out
}

func TestCLI(t *testing.T) {
	env := servertest.Start(t, nil)
	s := &sailer{t: t, env: env, sock: env.Socket}

	var b api.Box
	if err := json.Unmarshal([]byte(s.ok("--json", "create", "-mem", "512", "-cpus", "2")), &b); err != nil {
		t.Fatal(err)
	}
	if b.MemoryMiB != 512 || b.VCPUs != 2 || b.State != "running" {
		t.Errorf("created %+v", b)
	}
	id := strings.TrimSpace(s.ok("create"))
	if !strings.HasPrefix(id, "sb-") {
		t.Errorf("create printed %q", id)
	}

	ls := s.ok("ls")
	if !strings.HasPrefix(ls, "ID") || !strings.Contains(ls, b.ID) || !strings.Contains(ls, id) || !strings.Contains(ls, "test-host") {
		t.Errorf("ls:\n%s", ls)
	}
	var list api.BoxList
	json.Unmarshal([]byte(s.ok("ls", "--json", "-max-schema", "1")), &list)
	if len(list.Boxes) != 0 {
		t.Errorf("ls -max-schema 1: %+v", list)
	}
	if get := s.ok("get", b.ID); !strings.Contains(get, "state            running") || !strings.Contains(get, "512 MiB, 2 vCPU") {
		t.Errorf("get:\n%s", get)
	}

	// exec streams output and exits with the command's code.
	if out := s.ok("exec", b.ID, "echo", "hello", "-n"); out != "hello -n\n" {
		t.Errorf("exec echo: %q", out)
	}
	if out := s.ok("exec", b.ID, "--", "echo", "x"); out != "x\n" {
		t.Errorf("exec -- echo: %q", out)
	}
	_, errOut, err := s.sail("exec", b.ID, "stderr", "bad")
	if err != nil || errOut != "bad\n" {
		t.Errorf("exec stderr: %q, %v", errOut, err)
	}
	var code exitCode
	if _, _, err := s.sail("exec", b.ID, "exit", "7"); !errors.As(err, &code) || code != 7 {
		t.Errorf("exec exit 7: %v", err)
	}
	in := filepath.Join(t.TempDir(), "in")
	os.WriteFile(in, []byte("from a file"), 0o644)
	if out := s.ok("exec", "-stdin", in, b.ID, "stdin"); out != "from a file" {
		t.Errorf("exec -stdin: %q", out)
	}

	// Files.
	if out := s.ok("put", "-mode", "600", b.ID, "/etc/greeting", in); out != "11 bytes written\n" {
		t.Errorf("put: %q", out)
	}
	if out := s.ok("cat", b.ID, "/etc/greeting"); out != "from a file" {
		t.Errorf("cat: %q", out)
	}

	// Checkpoints and forks.
	ck := strings.TrimSpace(s.ok("checkpoint", b.ID))
	if ck != b.ID+"-c1" {
		t.Errorf("checkpoint printed %q", ck)
	}
	if out := s.ok("checkpoints", b.ID); !strings.Contains(out, ck) {
		t.Errorf("checkpoints:\n%s", out)
	}
	child := strings.TrimSpace(s.ok("fork", b.ID))
	if out := s.ok("get", child); !strings.Contains(out, "parent           "+b.ID) {
		t.Errorf("child:\n%s", out)
	}

	// Lifecycle.
	if out := s.ok("sleep", b.ID); !strings.Contains(out, "sleeping") {
		t.Errorf("sleep:\n%s", out)
	}
	env.Fake.SetSchema(3)
	if out := s.ok("upgrade", b.ID); !strings.Contains(out, "upgrade recorded") {
		t.Errorf("upgrade of a sleeping box: %q", out)
	}
	if out := s.ok("ls"); !strings.Contains(out, "2*") {
		t.Errorf("ls does not mark the pending upgrade:\n%s", out)
	}
	if out := s.ok("resume", b.ID); !strings.Contains(out, "running") || !strings.Contains(out, "guest schema     3") {
		t.Errorf("resume:\n%s", out)
	}
	s.ok("pause", b.ID)
	_, _, err = s.sail("pause", b.ID)
	if err == nil || !strings.Contains(err.Error(), "cannot pause a paused box") || !strings.Contains(err.Error(), "409") {
		t.Errorf("second pause: %v", err)
	}
	if out := s.ok("connect", b.ID); !strings.Contains(out, "running") {
		t.Errorf("connect:\n%s", out)
	}

	// Ports.
	out := s.ok("expose", b.ID, "8080")
	if !strings.HasPrefix(out, "127.0.0.1:") || !strings.HasSuffix(out, "→ guest port 8080\n") {
		t.Errorf("expose: %q", out)
	}
	var p api.Port
	json.Unmarshal([]byte(s.ok("--json", "get", b.ID)), &b)
	if len(b.Ports) == 1 {
		p = b.Ports[0]
	}
	s.ok("unexpose", b.ID, strconv.Itoa(p.HostPort))
	if _, _, err := s.sail("expose", b.ID, "x:y"); err == nil {
		t.Error("expose x:y succeeded")
	}

	// Terminate.
	if out := s.ok("rm", child); !strings.Contains(out, "terminated") {
		t.Errorf("rm: %q", out)
	}
	if _, _, err := s.sail("get", child); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("get of a removed box: %v", err)
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{{}, {"nope"}, {"get"}, {"get", "a", "b"}, {"exec"}, {"-bogus"}, {"create", "-mem", "x"}} {
		_, errOut, err := (&sailer{t: t, sock: "/nonexistent"}).sail(args...)
		if !errors.Is(err, errUsage) || !strings.Contains(errOut, "usage") {
			t.Errorf("sail %q: %v, %q", args, err, errOut)
		}
	}
	if _, _, err := (&sailer{t: t, sock: "/nonexistent"}).sail("-h"); err != nil {
		t.Errorf("sail -h: %v", err)
	}
	// No daemon: a clear error.
	_, _, err := (&sailer{t: t, sock: filepath.Join(t.TempDir(), "none.sock")}).sail("ls")
	if err == nil || !strings.Contains(err.Error(), "none.sock") {
		t.Errorf("ls without a daemon: %v", err)
	}
	testNoDaemon(t)
}

// create takes the box's egress policy (repeatable rules, with one dash
// or two), get shows it, net shows its network's counters and its
// network device's; a bad rule is refused by name.
func TestCLINetwork(t *testing.T) {
	env := servertest.Start(t, nil)
	s := &sailer{t: t, env: env, sock: env.Socket}
	var b api.Box
	out := s.ok("--json", "create", "--no-internet", "--allow", "192.168.127.254", "-allow", "Example.COM.", "--deny", "10.1.2.3/8")
	if err := json.Unmarshal([]byte(out), &b); err != nil {
		t.Fatal(err)
	}
	want := api.NetworkPolicy{NoInternet: true, Allow: []string{"192.168.127.254/32", "example.com"}, Deny: []string{"10.0.0.0/8"}}
	if b.Network == nil || b.Network.NoInternet != want.NoInternet || strings.Join(b.Network.Allow, " ") != strings.Join(want.Allow, " ") || strings.Join(b.Network.Deny, " ") != strings.Join(want.Deny, " ") {
		t.Errorf("network %+v, want %+v", b.Network, want)
	}
	if get := s.ok("get", b.ID); !strings.Contains(get, "no internet, allow 192.168.127.254/32 example.com, deny 10.0.0.0/8") {
		t.Errorf("get:\n%s", get)
	}
	if net := s.ok("net", b.ID); !strings.Contains(net, "connections out") || !strings.Contains(net, "attached") ||
		!strings.Contains(net, "device out") || !strings.Contains(net, "device in") || !strings.Contains(net, "0 frames (0 invalid, 0 dropped)") {
		t.Errorf("net:\n%s", net)
	}
	var st api.NetworkStats
	if err := json.Unmarshal([]byte(s.ok("--json", "net", b.ID)), &st); err != nil || !st.Running || st.BoxID != b.ID || st.Device == nil {
		t.Errorf("net --json: %+v, %v", st, err)
	}
	none := strings.TrimSpace(s.ok("create", "-no-network"))
	if get := s.ok("get", none); !strings.Contains(get, "network          none") {
		t.Errorf("get of a box without a network:\n%s", get)
	}
	if _, _, err := s.sail("create", "-allow", "bad_domain!"); err == nil || !strings.Contains(err.Error(), "bad_domain!") {
		t.Errorf("create with a bad rule: %v", err)
	}
}

func TestCLIPolicies(t *testing.T) {
	env := servertest.Start(t, nil)
	s := &sailer{t: t, env: env, sock: env.Socket}

	var b api.Box
	if err := json.Unmarshal([]byte(s.ok("--json", "create", "--label", "team=ml", "-label", "app=eval", "--idle-timeout", "5m", "--ttl", "1h")), &b); err != nil {
		t.Fatal(err)
	}
	if b.Labels["team"] != "ml" || b.Labels["app"] != "eval" || b.IdleTimeoutSeconds != 300 || b.TTLSeconds != 3600 || b.ExpiresAt == nil {
		t.Fatalf("created %+v", b)
	}
	other := strings.TrimSpace(s.ok("create", "-label", "team=web"))
	if get := s.ok("get", b.ID); !strings.Contains(get, "app=eval team=ml") || !strings.Contains(get, "idle timeout     5m0s") || !strings.Contains(get, "(ttl 1h0m0s)") {
		t.Errorf("get:\n%s", get)
	}
	if ls := s.ok("list", "--label", "team=ml"); !strings.Contains(ls, b.ID) || strings.Contains(ls, other) {
		t.Errorf("list --label team=ml:\n%s", ls)
	}
	if ls := s.ok("ls", "-label", "team=ml", "-label", "app=none"); strings.Contains(ls, b.ID) {
		t.Errorf("ls with a label no box has:\n%s", ls)
	}
	if out := s.ok("extend", b.ID, "2h"); !strings.HasPrefix(out, b.ID+" expires at ") {
		t.Errorf("extend: %q", out)
	}
	var x api.Box
	json.Unmarshal([]byte(s.ok("--json", "get", b.ID)), &x)
	if x.TTLSeconds != 7200 || !x.ExpiresAt.After(*b.ExpiresAt) {
		t.Errorf("after extend 2h: ttl %d, expires %v (was %v)", x.TTLSeconds, x.ExpiresAt, b.ExpiresAt)
	}
	kids := strings.Fields(s.ok("fork", "--count", "3", b.ID))
	if len(kids) != 3 {
		t.Fatalf("fork --count 3 printed %q", kids)
	}
	if ls := s.ok("ls", "-label", "app=eval"); strings.Count(ls, "\n") != 5 { // a header, the parent and 3 children
		t.Errorf("the children inherit the labels:\n%s", ls)
	}
	if one := strings.Fields(s.ok("fork", b.ID)); len(one) != 1 {
		t.Errorf("fork printed %q", one)
	}
	for _, args := range [][]string{
		{"create", "-label", "novalue"}, {"create", "-ttl", "10ms"}, {"extend", b.ID, "soon"}, {"extend", b.ID, "0s"},
	} {
		if _, _, err := s.sail(args...); err == nil {
			t.Errorf("sail %s succeeded", strings.Join(args, " "))
		}
	}
	if _, _, err := s.sail("fork", "-count", "65", b.ID); err == nil {
		t.Error("fork -count 65 succeeded")
	}
}
