package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/client"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/kvmtest"
)

// The network tests. Every connection they make a box's network open on
// the host goes to the lab's loopback (192.168.127.254 is the host's
// 127.0.0.1): the lab has no other network, and none may be dialled.
// Names are looked up only with no internet, where the box's DNS refuses
// them without asking the host.

// hostIP is the host's loopback as boxes see it (netapi.HostIP).
const hostIP = "192.168.127.254"

// loopbackServer serves 1 MiB of pseudo-random bytes at /data on the
// host's 127.0.0.1 and returns its port and the data's SHA-256.
func loopbackServer(t *testing.T) (port int, sum string) {
	t.Helper()
	data := make([]byte, 1<<20)
	r := rand.NewChaCha8([32]byte{'s', 'a', 'i', 'l'})
	r.Read(data)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/data" {
			http.NotFound(w, r)
			return
		}
		w.Write(data)
	}))
	t.Cleanup(srv.Close)
	_, p, _ := net.SplitHostPort(srv.Listener.Addr().String())
	port, _ = strconv.Atoi(p)
	s := sha256.Sum256(data)
	return port, hex.EncodeToString(s[:])
}

// loopbackSink accepts connections on the host's 127.0.0.1 and sends on
// got how many bytes each carried before it ended.
func loopbackSink(t *testing.T) (port int, got <-chan int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan int64, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Minute))
				n, _ := io.Copy(io.Discard, c)
				ch <- n
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port, ch
}

// requireUploadInTSOPackets checks that box id sends size bytes to a
// sink on the host's loopback in frames that average more than a
// full-size one (14 + 1500 bytes): the guest hands the VMM's device TCP
// segments above the MTU (VIRTIO_NET_F_HOST_TSO4), which go to the box's
// network whole.
func requireUploadInTSOPackets(h *host, id string, size int) {
	h.t.Helper()
	port, got := loopbackSink(h.t)
	ctx := ctxFor(h.t, 3*time.Minute)
	before, err := h.c.Network(ctx, id)
	if err != nil {
		h.t.Fatal(err)
	}
	py := fmt.Sprintf("import socket; s = socket.create_connection((%q, %d), timeout=120); s.sendall(bytes(%d)); s.shutdown(socket.SHUT_WR); s.recv(1); s.close()", hostIP, port, size)
	h.run(id, "python3", "-c", py)
	select {
	case n := <-got:
		if n != int64(size) {
			h.t.Fatalf("box %s: the sink got %d bytes, want %d", id, n, size)
		}
	case <-ctx.Done():
		h.t.Fatalf("box %s: the sink got nothing", id)
	}
	after, err := h.c.Network(ctx, id)
	if err != nil {
		h.t.Fatal(err)
	}
	frames, bytes := after.FramesOut-before.FramesOut, after.BytesOut-before.BytesOut
	if frames == 0 || bytes < uint64(size) || bytes/frames <= 14+1500 {
		h.t.Errorf("box %s: the upload of %d bytes went out in %d frames of %d bytes: no TSO packet (want more than %d bytes a frame on average)", id, size, frames, bytes, 14+1500)
	}
	h.t.Logf("box %s: %d bytes up in %d frames, %d bytes a frame", id, size, frames, bytes/max(frames, 1))
}

// fetch runs curl in box id for url, and returns curl's exit code and
// what it printed on stderr.
func fetch(h *host, id, url string) (code int, stderr string) {
	h.t.Helper()
	script := `curl -sS --max-time 30 -o /tmp/fetched "$1" 2>/tmp/curl.err; echo $?; cat /tmp/curl.err`
	out := h.run(id, "sh", "-c", script, "fetch", url)
	first, rest, _ := strings.Cut(out, "\n")
	if _, err := fmt.Sscan(first, &code); err != nil {
		h.t.Fatalf("fetch in %s: %q", id, out)
	}
	return code, rest
}

// requireFetched checks that box id fetches the host's /data on port,
// with curl and with Python's urllib, byte for byte.
func requireFetched(h *host, id string, port int, sum string) {
	h.t.Helper()
	requireFetchedURL(h, id, fmt.Sprintf("http://%s:%d/data", hostIP, port), sum)
}

// requireFetchedURL checks that box id fetches url with curl and with
// Python's urllib, and that both got the bytes whose SHA-256 is sum.
func requireFetchedURL(h *host, id, url, sum string) {
	h.t.Helper()
	if code, stderr := fetch(h, id, url); code != 0 {
		h.t.Fatalf("box %s: curl %s: exit %d: %s", id, url, code, stderr)
	}
	if got := strings.Fields(h.run(id, "sha256sum", "/tmp/fetched")); len(got) == 0 || got[0] != sum {
		h.t.Errorf("box %s: curl fetched sha256 %v, want %s", id, got, sum)
	}
	py := fmt.Sprintf("import hashlib, urllib.request; print(hashlib.sha256(urllib.request.urlopen(%q, timeout=30).read()).hexdigest())", url)
	if got := strings.TrimSpace(h.run(id, "python3", "-c", py)); got != sum {
		h.t.Errorf("box %s: urllib fetched sha256 %s, want %s", id, got, sum)
	}
}

// requireRefused checks that box id's fetch of url is refused (a reset:
// curl's "couldn't connect", exit 7), not left to time out (exit 28).
func requireRefused(h *host, id, url string) {
	h.t.Helper()
	if code, stderr := fetch(h, id, url); code != 7 {
		h.t.Errorf("box %s: curl %s: exit %d (%s); want 7 (refused)", id, url, code, strings.TrimSpace(stderr))
	}
}

// netLog is what box id's network logged.
func (h *host) netLog(id string) string {
	b, _ := os.ReadFile(filepath.Join(h.stateDir, "run", id, "net.log"))
	return string(b)
}

// Egress: a box reaches a server on the host's loopback when its policy
// allows it, by curl and urllib, byte for byte; the default policy, a
// deny rule and no internet refuse at once, logged with the box's id;
// the policy, the network and its counters come back after sleep and
// wake, a daemon restart (the network taken back) and a host failure;
// the boxes of four policies share one template.
func TestKVMNetworkEgress(t *testing.T) {
	img := kvmtest.Artifact(t, "SAILBOX_DEFAULT_IMAGE")
	port, sum := loopbackServer(t)
	h := newHost(t, "-image", img)
	ctx := ctxFor(t, 20*time.Minute)
	create := func(req api.CreateRequest) api.Box {
		t.Helper()
		b, err := h.c.Create(ctx, req)
		if err != nil {
			t.Fatalf("create %+v: %v", req, err)
		}
		return b
	}
	url := fmt.Sprintf("http://%s:%d/data", hostIP, port)

	allowed := create(api.CreateRequest{Allow: []string{hostIP}})
	if allowed.Network == nil || !slices.Equal(allowed.Network.Allow, []string{hostIP + "/32"}) || allowed.Network.NoInternet {
		t.Errorf("allowed box's network: %+v", allowed.Network)
	}
	// The guest's side, configured by its agent at boot (the template's)
	// and kept by the restore that made the box.
	if got := h.run(allowed.ID, "cat", "/etc/resolv.conf"); !strings.Contains(got, "nameserver 192.168.127.1\n") {
		t.Errorf("resolv.conf:\n%s", got)
	}
	if got := h.run(allowed.ID, "cat", "/sys/class/net/eth0/mtu", "/sys/class/net/eth0/flags"); !strings.HasPrefix(got, "1500\n") || !strings.HasSuffix(got, "3\n") {
		t.Errorf("eth0's MTU and flags: %q, want 1500 and IFF_UP (0x...3)", got)
	}
	requireFetched(h, allowed.ID, port, sum)
	requireUploadInTSOPackets(h, allowed.ID, 4<<20)

	byDefault := create(api.CreateRequest{})
	denied := create(api.CreateRequest{Allow: []string{hostIP}, Deny: []string{"192.168.127.0/24"}})
	offline := create(api.CreateRequest{NoInternet: true})
	for _, b := range []api.Box{byDefault, denied, offline} {
		requireRefused(h, b.ID, url)
	}
	// With no internet, names are refused by the box's DNS (the host's
	// resolver is never asked) and addresses by its network, at once.
	requireRefused(h, offline.ID, "http://192.0.2.1/")
	if _, code, _ := h.exec(offline.ID, "python3", "-c", "import socket; socket.getaddrinfo('example.com', 80)"); code == 0 {
		t.Error("a name resolved in a box without internet")
	}
	for _, b := range []api.Box{byDefault, denied, offline} {
		if log := h.netLog(b.ID); !strings.Contains(log, "refused connection") || !strings.Contains(log, "box="+b.ID) {
			t.Errorf("box %s: its network's log names no refusal of the box:\n%s", b.ID, log)
		}
	}
	// Counters.
	st, err := h.c.Network(ctx, allowed.ID)
	if err != nil || !st.Running || !st.GuestAttached || st.ConnectionsOut < 2 || st.BytesIn < 2<<20 || st.Refused != 0 {
		t.Errorf("allowed box's counters: %+v, %v; want 2 connections out and 2 MiB in", st, err)
	}
	requireDeviceCounted(t, st)
	if st, err := h.c.Network(ctx, offline.ID); err != nil || st.Refused < 2 || st.RefusedLookups < 1 || st.ConnectionsOut != 0 {
		t.Errorf("offline box's counters: %+v, %v; want refusals", st, err)
	}
	// Four policies, one template.
	if n := strings.Count(h.logs.String(), "making a template"); n != 1 {
		t.Errorf("%d templates made for boxes differing only in their policies, want 1", n)
	}

	// Sleep and wake: a new network, the same policy.
	if _, err := h.c.Sleep(ctx, allowed.ID); err != nil {
		t.Fatal(err)
	}
	if n := len(h.netPIDsOf(allowed.ID)); n != 0 {
		t.Errorf("a sleeping box has %d networks running", n)
	}
	if st, err := h.c.Network(ctx, allowed.ID); err != nil || st.Running {
		t.Errorf("sleeping box's counters: %+v, %v; want not running", st, err)
	}
	requireFetched(h, allowed.ID, port, sum)
	requireRefused(h, byDefault.ID, url)

	// A daemon restart takes the running networks back.
	before := h.netPIDsOf(allowed.ID)
	h.stop()
	h.start()
	if after := h.netPIDsOf(allowed.ID); len(before) != 1 || !slices.Equal(before, after) {
		t.Errorf("the box's network was %v before the restart, %v after; want the same one", before, after)
	}
	requireFetched(h, allowed.ID, port, sum)
	if st, err := h.c.Network(ctx, allowed.ID); err != nil || st.ConnectionsOut < 4 {
		t.Errorf("counters after the restart: %+v, %v; want those from before it too", st, err)
	}

	// A host failure: every box comes back with a network under its
	// policy.
	h.kill()
	if n := h.killVMMs(); n != 4 {
		t.Errorf("killed %d VMMs, want 4", n)
	}
	h.start()
	requireFetched(h, allowed.ID, port, sum)
	requireRefused(h, denied.ID, url)
	for _, b := range []api.Box{allowed, byDefault, denied, offline} {
		if n := len(h.netPIDsOf(b.ID)); n != 1 {
			t.Errorf("box %s has %d networks after the host failure, want 1", b.ID, n)
		}
	}
	if got, err := h.c.Get(ctx, denied.ID); err != nil || got.Network == nil || !slices.Equal(got.Network.Deny, []string{"192.168.127.0/24"}) {
		t.Errorf("denied box after the host failure: %+v, %v", got.Network, err)
	}
	for _, b := range []api.Box{allowed, byDefault, denied, offline} {
		if _, err := h.c.Terminate(ctx, b.ID); err != nil {
			t.Fatal(err)
		}
	}
	if pids := h.netPIDs(); len(pids) != 0 {
		t.Errorf("networks left after every box was terminated: %v", pids)
	}
}

// requireDeviceCounted checks the counters of an idle box's network
// device, which its VMM reports beside its network's (st): the box
// fetched 2 MiB and uploaded 4 MiB, and the device counted the frames
// its network did, in the same directions, near enough (the box is idle,
// but the two are read one after the other). Frames to the guest that
// the device dropped reached the device, not the guest.
func requireDeviceCounted(t *testing.T, st api.NetworkStats) {
	t.Helper()
	d := st.Device
	if d == nil {
		t.Errorf("no device counters beside the network's %+v", st)
		return
	}
	t.Logf("device %+v; network: %d frames (%d bytes) out, %d (%d bytes) in", *d, st.FramesOut, st.BytesOut, st.FramesIn, st.BytesIn)
	near := func(a, b uint64) bool { return a*10 >= b*9 && b*10 >= a*9 }
	if d.BytesIn < 2<<20 || d.BytesOut < 4<<20 || d.PeerGone || d.InvalidOut != 0 ||
		!near(d.FramesOut, st.FramesOut) || !near(d.BytesOut, st.BytesOut) || !near(d.FramesIn+d.DroppedIn+d.InvalidIn, st.FramesIn) {
		t.Errorf("device counters %+v; want 2 MiB in and 4 MiB out, frames as its network counted them (%d out, %d in, %d bytes out)", *d, st.FramesOut, st.FramesIn, st.BytesOut)
	}
}

// netHost is the name TestKVMNetworkHosts gives the host's loopback
// (sailboxd -net-host).
const netHost = "files.lab"

// Static names: the daemon's -net-host names the host's loopback in
// every box's DNS; a box allowed that domain (and nothing else: no
// internet) fetches from the host by that name and by the address it
// resolved to, with curl and urllib, byte for byte; a box under the
// default policy resolves the name too but is refused the connection.
func TestKVMNetworkHosts(t *testing.T) {
	img := kvmtest.Artifact(t, "SAILBOX_DEFAULT_IMAGE")
	port, sum := loopbackServer(t)
	h := newHost(t, "-image", img, "-net-host", netHost+"="+hostIP)
	ctx := ctxFor(t, 20*time.Minute)
	allowed, err := h.c.Create(ctx, api.CreateRequest{NoInternet: true, Allow: []string{netHost}})
	if err != nil {
		t.Fatal(err)
	}
	byName := fmt.Sprintf("http://%s:%d/data", netHost, port)
	resolve := fmt.Sprintf("import socket; print(socket.gethostbyname(%q))", netHost)
	if got := strings.TrimSpace(h.run(allowed.ID, "python3", "-c", resolve)); got != hostIP {
		t.Errorf("%s resolves to %q in the box, want %s", netHost, got, hostIP)
	}
	requireFetchedURL(h, allowed.ID, byName, sum)
	// Its address is allowed too, now that the name resolved to it.
	requireFetched(h, allowed.ID, port, sum)
	if st, err := h.c.Network(ctx, allowed.ID); err != nil || st.Refused != 0 || st.RefusedLookups != 0 || st.ConnectionsOut < 4 {
		t.Errorf("allowed box's counters: %+v, %v; want 4 connections out, no refusal", st, err)
	}

	// The default policy: the name resolves (static names are answered
	// whatever the policy) but the host's loopback is refused.
	byDefault, err := h.c.Create(ctx, api.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(h.run(byDefault.ID, "python3", "-c", resolve)); got != hostIP {
		t.Errorf("%s resolves to %q in a box under the default policy, want %s", netHost, got, hostIP)
	}
	requireRefused(h, byDefault.ID, byName)
	if log := h.netLog(byDefault.ID); !strings.Contains(log, "refused connection") || !strings.Contains(log, "box="+byDefault.ID) {
		t.Errorf("box %s: its network's log names no refusal of the box:\n%s", byDefault.ID, log)
	}
	// An allow rule lets only its target through: a box allowed another
	// domain (never looked up here: it would ask the host's resolver)
	// resolves the static name but is refused its address, by name and
	// by address.
	other, err := h.c.Create(ctx, api.CreateRequest{NoInternet: true, Allow: []string{"other.lab"}})
	if err != nil {
		t.Fatal(err)
	}
	requireRefused(h, other.ID, byName)
	requireRefused(h, other.ID, fmt.Sprintf("http://%s:%d/data", hostIP, port))
}

// startGuestServer starts python3's HTTP server on guest port 8000 in box
// id, serving /srv (its file who holding who), logging its clients to
// /tmp/http.log, and waits until it listens.
func startGuestServer(h *host, id, who string) {
	h.t.Helper()
	h.run(id, "sh", "-c", `mkdir -p /srv && printf %s "$1" > /srv/who && cd /srv && (setsid python3 -m http.server 8000 </dev/null >/tmp/http.log 2>&1 &)`, "start", who)
	probe := "import socket; socket.create_connection(('127.0.0.1', 8000), 1)"
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		if _, code, err := h.exec(id, "python3", "-c", probe); err == nil && code == 0 {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("box %s: the guest's server does not listen: %s", id, h.run(id, "cat", "/tmp/http.log"))
		}
	}
}

// get fetches path from the exposed port p; the client waits as long as
// a wake may take.
func get(t *testing.T, p api.Port, path string) (string, error) {
	t.Helper()
	hc := &http.Client{Timeout: 3 * time.Minute}
	resp, err := hc.Get("http://" + p.HostAddr + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("status %s", resp.Status)
	}
	return string(b), err
}

// Ingress: an exposed port reaches a server in the guest through the
// box's network (the server sees its client at the gateway, not on
// loopback: no agent in the data path); asleep, the box is woken by the
// first connection, which is answered; a fork has a network of its own,
// both serving on the same guest port through their own exposed ports;
// a box without a network is reached through its agent.
func TestKVMNetworkIngress(t *testing.T) {
	img := kvmtest.Artifact(t, "SAILBOX_DEFAULT_IMAGE")
	h := newHost(t, "-image", img)
	ctx := ctxFor(t, 20*time.Minute)
	c := h.c
	a, err := c.Create(ctx, api.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	startGuestServer(h, a.ID, "parent")
	pa, err := c.Expose(ctx, a.ID, api.ExposeRequest{GuestPort: 8000})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := get(t, pa, "/who"); err != nil || got != "parent" {
		t.Fatalf("GET /who through %s: %q, %v", pa.HostAddr, got, err)
	}
	clients := func(id string) int {
		return strings.Count(h.run(id, "cat", "/tmp/http.log"), "192.168.127.1 - -")
	}
	if n := clients(a.ID); n != 1 {
		t.Errorf("the guest's server saw %d requests from the gateway, want 1:\n%s", n, h.run(a.ID, "cat", "/tmp/http.log"))
	}
	if st, err := c.Network(ctx, a.ID); err != nil || st.ConnectionsIn != 1 {
		t.Errorf("counters: %+v, %v; want one connection in", st, err)
	}

	// Asleep: the first connection wakes the box and is answered.
	if _, err := c.Sleep(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if got, err := get(t, pa, "/who"); err != nil || got != "parent" {
		t.Errorf("GET /who of the sleeping box: %q, %v", got, err)
	}
	if st := h.state(a.ID); st != string(lifecycle.Running) {
		t.Errorf("box is %s after a connection woke it", st)
	}
	if n := clients(a.ID); n != 2 {
		t.Errorf("the guest's server saw %d requests from the gateway after the wake, want 2", n)
	}

	// A fork serves on the same guest port, through its own network.
	fr, err := c.Fork(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	kid := fr.Box.ID
	if fr.Box.Network == nil || fr.Box.Network.NoInternet {
		t.Errorf("the fork's network: %+v, want its parent's", fr.Box.Network)
	}
	h.run(kid, "sh", "-c", "printf child > /srv/who")
	pk, err := c.Expose(ctx, kid, api.ExposeRequest{GuestPort: 8000})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if got, err := get(t, pk, "/who"); err != nil || got != "child" {
			t.Errorf("the child's port: %q, %v", got, err)
		}
		if got, err := get(t, pa, "/who"); err != nil || got != "parent" {
			t.Errorf("the parent's port: %q, %v", got, err)
		}
	}
	if n := len(h.netPIDsOf(kid)); n != 1 {
		t.Errorf("the fork has %d networks, want 1", n)
	}

	// Without a network: no eth0, and an exposed port reaches the
	// guest's loopback through the agent.
	none, err := c.Create(ctx, api.CreateRequest{NoNetwork: true})
	if err != nil {
		t.Fatal(err)
	}
	if none.Network != nil {
		t.Errorf("a box created without a network reports %+v", none.Network)
	}
	if _, code, _ := h.exec(none.ID, "test", "-e", "/sys/class/net/eth0"); code == 0 {
		t.Error("a box without a network has eth0")
	}
	h.run(none.ID, "sh", "-c", `mkdir -p /srv && printf none > /srv/who && cd /srv && (setsid python3 -m http.server 8000 --bind 127.0.0.1 </dev/null >/tmp/http.log 2>&1 &)`)
	pn, err := c.Expose(ctx, none.ID, api.ExposeRequest{GuestPort: 8000})
	if err != nil {
		t.Fatal(err)
	}
	var got string
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		if got, err = get(t, pn, "/who"); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if got != "none" || err != nil {
		t.Errorf("the port of a box without a network: %q, %v", got, err)
	}
	var ce *client.Error
	if _, err := c.Network(ctx, none.ID); !errors.As(err, &ce) || ce.Code != api.CodeConflict {
		t.Errorf("counters of a box without a network: %v, want a conflict", err)
	}
	if n := len(h.netPIDsOf(none.ID)); n != 0 {
		t.Errorf("a box without a network has %d networks running", n)
	}
}
