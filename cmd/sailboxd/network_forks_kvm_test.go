package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/internal/kvmtest"
)

// Networks across forks and restores: connections in flight when a box's
// checkpoint is taken are reset in the box restored from it (its network
// is a new stack that never knew them), while the box that kept running
// keeps them; many forks use their networks at once.

// heldServer serves, on the host's 127.0.0.1, 1 MiB of pseudo-random
// bytes at /data, and at /held/NAME the same bytes held half way: the
// first half at once, the rest when gate NAME opens. A gate counts its
// requesters: each box that names itself (?box=ID) once, however often
// it asks, and every other request as one.
type heldServer struct {
	port int
	sum  string // SHA-256 of the data

	mu    sync.Mutex
	gates map[string]*gate // guarded by mu
}

// gate holds the requests of one name.
type gate struct {
	open   chan struct{}
	opened bool
	from   map[string]bool // the requesters that came
	openAt int             // open when this many have come (0: when told)
}

func newHeldServer(t *testing.T) *heldServer {
	t.Helper()
	data := make([]byte, 1<<20)
	r := rand.NewChaCha8([32]byte{'h', 'e', 'l', 'd'})
	r.Read(data)
	s := &heldServer{gates: map[string]*gate{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/data" {
			w.Write(data)
			return
		}
		name, ok := strings.CutPrefix(r.URL.Path, "/held/")
		if !ok {
			http.NotFound(w, r)
			return
		}
		who := r.URL.Query().Get("box")
		if who == "" {
			who = r.RemoteAddr
		}
		g := s.arrive(name, who)
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		w.Write(data[:len(data)/2])
		w.(http.Flusher).Flush()
		select {
		case <-g.open:
			w.Write(data[len(data)/2:])
		case <-r.Context().Done(): // the box's network is gone
		}
	}))
	t.Cleanup(func() {
		s.mu.Lock()
		for name := range s.gates {
			s.openLocked(name)
		}
		s.mu.Unlock()
		srv.Close()
	})
	_, p, _ := net.SplitHostPort(srv.Listener.Addr().String())
	s.port, _ = strconv.Atoi(p)
	sum := sha256.Sum256(data)
	s.sum = hex.EncodeToString(sum[:])
	return s
}

func (s *heldServer) gateLocked(name string) *gate {
	g := s.gates[name]
	if g == nil {
		g = &gate{open: make(chan struct{}), from: map[string]bool{}}
		s.gates[name] = g
	}
	return g
}

func (s *heldServer) openLocked(name string) {
	if g := s.gateLocked(name); !g.opened {
		g.opened = true
		close(g.open)
	}
}

// arrive counts requester who of /held/name and returns its gate.
func (s *heldServer) arrive(name, who string) *gate {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.gateLocked(name)
	g.from[who] = true
	if g.openAt > 0 && len(g.from) >= g.openAt {
		s.openLocked(name)
	}
	return g
}

// openWhen has gate name open by itself once n requesters have come.
func (s *heldServer) openWhen(name string, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gateLocked(name).openAt = n
}

// release opens gate name.
func (s *heldServer) release(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.openLocked(name)
}

// came reports whether requester who has asked for /held/name.
func (s *heldServer) came(name, who string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gateLocked(name).from[who]
}

// isOpen reports whether gate name is open.
func (s *heldServer) isOpen(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gateLocked(name).opened
}

// arrived is how many requesters gate name has had.
func (s *heldServer) arrived(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.gateLocked(name).from)
}

// url is the URL of path on the server, as boxes reach it.
func (s *heldServer) url(path string) string {
	return fmt.Sprintf("http://%s:%d%s", hostIP, s.port, path)
}

// startDownloads starts, in the background in box id, two downloads of
// url: curl (without TCP keepalives, which would probe a dead connection
// after a minute, and without output buffering: stdio would keep the last
// 4 KiB of the held first half from the file, and waitHalfway waiting
// for it, as two CI runs saw, stuck at 520192 bytes) into /tmp/NAME.curl, and Python's urllib (no timeout),
// which prints its data's SHA-256 or the exception it got. Each writes
// its outcome to /tmp/NAME.curl.rc and /tmp/NAME.py.out when it ends.
func startDownloads(h *host, id, name, url string) {
	h.t.Helper()
	curl := fmt.Sprintf(`curl -sS -N --no-keepalive --max-time 900 -o /tmp/%[1]s.curl %[2]s 2>/tmp/%[1]s.curl.err; echo $? > /tmp/%[1]s.curl.rc`, name, shellQuote(url))
	py := fmt.Sprintf(`import hashlib, urllib.request
try:
    print(hashlib.sha256(urllib.request.urlopen(%q).read()).hexdigest())
except Exception as e:
    print(type(e).__name__, e)`, url)
	pysh := fmt.Sprintf(`python3 -c %[2]s > /tmp/%[1]s.py.part 2>&1; mv /tmp/%[1]s.py.part /tmp/%[1]s.py.out`, name, shellQuote(py))
	h.run(id, "sh", "-c", fmt.Sprintf(`(setsid sh -c %s </dev/null >/dev/null 2>&1 &); (setsid sh -c %s </dev/null >/dev/null 2>&1 &)`, shellQuote(curl), shellQuote(pysh)))
}

// shellQuote quotes s for sh: one word, nothing expanded.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// downloadOutcome waits for box id's downloads NAME to end and returns
// curl's exit code and message and urllib's line. A download that never
// ends (the guest's connection hangs instead of being reset) fails the
// test after a few minutes.
func downloadOutcome(h *host, id, name string) (curlCode int, curlErr, py string) {
	h.t.Helper()
	script := fmt.Sprintf(`test -e /tmp/%[1]s.curl.rc && test -e /tmp/%[1]s.py.out && cat /tmp/%[1]s.curl.rc /tmp/%[1]s.py.out /tmp/%[1]s.curl.err`, name)
	for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(time.Second) {
		out, code, err := h.exec(id, "sh", "-c", script)
		if err == nil && code == 0 {
			lines := strings.SplitN(out, "\n", 3)
			if len(lines) < 3 {
				h.t.Fatalf("box %s: downloads %s: %q", id, name, out)
			}
			if _, err := fmt.Sscan(lines[0], &curlCode); err != nil {
				h.t.Fatalf("box %s: curl's exit code %q", id, lines[0])
			}
			return curlCode, strings.TrimSpace(lines[2]), strings.TrimSpace(lines[1])
		}
		if time.Now().After(deadline) {
			ps, _, _ := h.exec(id, "sh", "-c", "ps -o pid,stat,args 2>/dev/null || ps; cat /proc/net/tcp")
			h.t.Fatalf("box %s: downloads %s still running after 5 minutes: their connections hang (%v)\n%s", id, name, err, ps)
		}
	}
}

// requireReset checks that box id's downloads NAME ended in a reset.
func requireReset(h *host, id, name string) {
	h.t.Helper()
	code, msg, py := downloadOutcome(h, id, name)
	if code != 56 || !strings.Contains(msg, "reset") {
		h.t.Errorf("box %s: curl's download in flight: exit %d (%s); want 56, a reset", id, code, msg)
	}
	if !strings.HasPrefix(py, "ConnectionResetError") {
		h.t.Errorf("box %s: urllib's download in flight: %q; want a ConnectionResetError", id, py)
	}
}

// requireWhole checks that box id's downloads NAME got every byte.
func requireWhole(h *host, id, name, sum string) {
	h.t.Helper()
	code, msg, py := downloadOutcome(h, id, name)
	if code != 0 {
		h.t.Errorf("box %s: curl's download %s: exit %d (%s)", id, name, code, msg)
	} else if got := strings.Fields(h.run(id, "sha256sum", "/tmp/"+name+".curl")); len(got) == 0 || got[0] != sum {
		h.t.Errorf("box %s: curl's download %s: sha256 %v, want %s", id, name, got, sum)
	}
	if py != sum {
		h.t.Errorf("box %s: urllib's download %s: %q, want sha256 %s", id, name, py, sum)
	}
}

// waitHalfway waits until box id's curl download NAME has its first half,
// and the server has seen both downloads.
func waitHalfway(h *host, s *heldServer, id, name string) {
	h.t.Helper()
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		out, _, _ := h.exec(id, "sh", "-c", fmt.Sprintf("stat -c %%s /tmp/%s.curl 2>/dev/null || echo 0", name))
		size, _ := strconv.Atoi(strings.TrimSpace(out))
		if size >= 1<<19 && s.arrived(name) == 2 {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("box %s: downloads %s: %d bytes, %d requests: not half way", id, name, size, s.arrived(name))
		}
	}
}

// Downloads in flight at a checkpoint: a live fork's child sees them
// reset (curl exits 56, urllib raises ConnectionResetError: no hang) and
// fetches again; its parent's go on through the fork and end whole; both
// fetch independently afterwards. The same holds for a box restored
// after a host failure (kill -9 of the daemon and every VMM and network)
// from a checkpoint taken mid-download.
func TestKVMNetworkInFlightReset(t *testing.T) {
	img := kvmtest.Artifact(t, "SAILBOX_DEFAULT_IMAGE")
	s := newHeldServer(t)
	h := newHost(t, "-image", img)
	ctx := ctxFor(t, 30*time.Minute)
	parent, err := h.c.Create(ctx, api.CreateRequest{Allow: []string{hostIP}})
	if err != nil {
		t.Fatal(err)
	}
	startDownloads(h, parent.ID, "fork", s.url("/held/fork"))
	waitHalfway(h, s, parent.ID, "fork")
	fr, err := h.c.Fork(ctx, parent.ID)
	if err != nil {
		t.Fatal(err)
	}
	child := fr.Box.ID
	// The gate stays shut until the child's downloads ended: whatever
	// they got, they got before the fork.
	requireReset(h, child, "fork")
	if st, err := h.c.Network(ctx, child); err != nil || st.ConnectionsOut != 0 {
		t.Errorf("the child's network: %+v, %v; want no connection out yet", st, err)
	}
	s.release("fork")
	requireWhole(h, parent.ID, "fork", s.sum)
	for _, id := range []string{child, parent.ID} {
		requireFetchedURL(h, id, s.url("/data"), s.sum)
	}

	// A host failure, from a checkpoint taken mid-download.
	startDownloads(h, parent.ID, "crash", s.url("/held/crash"))
	waitHalfway(h, s, parent.ID, "crash")
	if _, err := h.c.Checkpoint(ctx, parent.ID); err != nil {
		t.Fatal(err)
	}
	h.kill()
	if n := h.killVMMs(); n != 2 {
		t.Errorf("killed %d VMMs, want 2", n)
	}
	h.start()
	requireReset(h, parent.ID, "crash")
	requireFetchedURL(h, parent.ID, s.url("/data"), s.sum)
	s.release("crash")
}

// watchedExec runs req in box id, watching it: an exec not answered for
// two minutes (and not held, as held says) is looked at every minute, and
// a box whose vCPU is stuck in the lab's kernel has its VMM ended
// (labFaults.stuck), which fails the exec for the caller to tell apart;
// after eight minutes the box's vCPUs are described and the exec given
// up.
func watchedExec(h *host, faults *labFaults, id string, req api.ExecRequest, stdout, stderr io.Writer, held func() bool) (api.ExecResult, error) {
	ctx, cancel := context.WithCancel(faults.ctx)
	defer cancel()
	type result struct {
		res api.ExecResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := h.c.Exec(ctx, id, req, stdout, stderr)
		done <- result{res, err}
	}()
	start := time.Now()
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	for {
		select {
		case r := <-done:
			return r.res, r.err
		case <-tick.C:
		}
		switch {
		case time.Since(start) > 8*time.Minute:
			h.describeVCPUs(ctx, id)
			cancel()
			r := <-done
			return r.res, fmt.Errorf("not answered in 8 minutes: %w", r.err)
		case time.Since(start) > 2*time.Minute && !held():
			faults.stuck(id)
		}
	}
}

// forks is how many forks TestKVMNetworkConcurrentForks runs at once.
const forks = 20

// Twenty forks of a box fetch from the host at the same time, each byte
// for byte: the server holds every request half way until all twenty
// boxes have asked, so their connections are open together, each through
// its own box's network. In the lab, a fork whose new guest the lab's
// emulated SVM broke is made again, and a fetch whose guest it broke is
// made again once the daemon has restored the box from its fork's
// checkpoint, the others' still held (labFaults): the twenty are still
// open together. (Forks of count 20 crashed the lab as often, and one
// broken guest of twenty undoes them all.)
func TestKVMNetworkConcurrentForks(t *testing.T) {
	img := kvmtest.Artifact(t, "SAILBOX_DEFAULT_IMAGE")
	s := newHeldServer(t)
	h := newHost(t, "-image", img)
	ctx := ctxFor(t, 40*time.Minute)
	faults := h.labFaults(ctx)
	parent, err := h.c.Create(ctx, api.CreateRequest{MemoryMiB: 128, Allow: []string{hostIP}})
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, forks)
	for i := range ids {
		fr, err := h.c.Fork(ctx, parent.ID)
		if err != nil && faults.brokeNew(fmt.Sprintf("fork %d", i), err) {
			fr, err = h.c.Fork(ctx, parent.ID)
		}
		if err != nil {
			t.Fatalf("fork %d: %v", i, err)
		}
		ids[i] = fr.Box.ID
	}
	s.openWhen("all", forks)
	req := func(id string) api.ExecRequest {
		return api.ExecRequest{Argv: []string{"sh", "-c", `curl -sS --max-time 600 -o /tmp/all "$1" && sha256sum /tmp/all`, "fetch", s.url("/held/all?box=" + id)}}
	}
	errs := make([]error, forks)
	retried := make([]bool, forks)
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() {
			var stdout, stderr strings.Builder
			held := func() bool { return s.came("all", id) && !s.isOpen("all") }
			fetch := func() (api.ExecResult, error) {
				stdout.Reset()
				stderr.Reset()
				return watchedExec(h, faults, id, req(id), &stdout, &stderr, held)
			}
			res, err := fetch()
			if err != nil && faults.broke(id, "the fetch", err) {
				retried[i] = true
				res, err = fetch()
			}
			switch got := strings.Fields(stdout.String()); {
			case err != nil || res.ExitCode != 0:
				errs[i] = fmt.Errorf("box %s: curl: %+v, %v: %q", id, res, err, stderr.String())
				// A fork whose request never comes must not hold the
				// others until curl gives up.
				s.release("all")
			case len(got) == 0 || got[0] != s.sum:
				errs[i] = fmt.Errorf("box %s: sha256 %v, want %s", id, got, s.sum)
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if n := s.arrived("all"); n != forks {
		t.Errorf("the server had requests from %d boxes, want %d", n, forks)
	}
	t.Logf("%d forks fetched at once (the lab broke %d of their guests, made again)", forks, faults.count())
	for i, id := range ids {
		// A box whose fetch was made again kept its network, which may
		// have seen the first try's connection.
		st, err := h.c.Network(ctx, id)
		if err != nil || st.ConnectionsOut < 1 || (st.ConnectionsOut > 1 && !retried[i]) || st.BytesIn < 1<<20 {
			t.Errorf("box %s's network: %+v, %v; want its one connection and 1 MiB in", id, st, err)
		}
		if n := len(h.netPIDsOf(id)); n != 1 {
			t.Errorf("box %s has %d networks, want 1", id, n)
		}
	}
	for _, id := range append(ids, parent.ID) {
		if _, err := h.c.Terminate(ctx, id); err != nil {
			t.Error(err)
		}
	}
	if pids := h.netPIDs(); len(pids) != 0 {
		t.Errorf("networks left after every box was terminated: %v", pids)
	}
}
