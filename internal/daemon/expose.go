package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/catalog"
)

// Bounds on the connections of exposed ports.
const (
	// wakeTimeout bounds how long a connection to an exposed port waits
	// for its box to wake.
	wakeTimeout = 2 * time.Minute
	// defaultForwardIdle: a forwarded connection on which no byte has
	// moved either way for this long is closed, both ends, so that a
	// guest (or a client) that holds one open and silent does not hold
	// it forever.
	defaultForwardIdle = 10 * time.Minute
	// acceptRetryWait is the pause after an accept error such as EMFILE.
	acceptRetryWait = 50 * time.Millisecond
	// refusalWarnEvery spaces the warnings about connections refused over
	// the cap: clients can cause them at will.
	refusalWarnEvery = time.Minute
	// copyBufSize is the buffer of each direction of a forwarded
	// connection.
	copyBufSize = 32 << 10
)

// MaxForwardConns bounds the open connections of one box's exposed
// ports, those still waking it included. For a box without a network
// each is a connection to the agent through the VM's vsock device, one of
// the device's host-initiated connections (vsock.HostConnections, 768);
// what the cap leaves of those is kept for the daemon's own calls to the
// agent (exec, files, health), which a flood of forwarded connections
// must not lock out: the backend checks, when compiled, that it leaves
// enough (internal/vmmbackend's agentConnReserve). For a box with a
// network, each is a connection through the network instead.
const MaxForwardConns = 512

// Expose forwards a host TCP port to a guest port of box id: over the
// box's network if it has one, else through its agent (Backend.DialGuest
// picks). A connection to it wakes the box if it sleeps (a paused box
// refuses it: the connection is closed). The forward is recorded and reopened when the
// daemon restarts. A forwarded connection on which nothing moves for
// defaultForwardIdle is closed, and a box's exposed ports hold at most
// MaxForwardConns connections at once: past that, clients are
// closed at once.
func (m *Manager) Expose(ctx context.Context, id string, req api.ExposeRequest) (api.Port, error) {
	if req.GuestPort < 1 || req.GuestPort > 65535 {
		return api.Port{}, fmt.Errorf("expose: %w: guest_port %d is outside [1, 65535]", ErrInvalidArgument, req.GuestPort)
	}
	if req.HostPort < 0 || req.HostPort > 65535 {
		return api.Port{}, fmt.Errorf("expose: %w: host_port %d is outside [0, 65535]", ErrInvalidArgument, req.HostPort)
	}
	addr := req.HostAddr
	if addr == "" {
		addr = "127.0.0.1"
	}
	if net.ParseIP(addr) == nil {
		return api.Port{}, fmt.Errorf("expose: %w: host_addr %q is not an IP address", ErrInvalidArgument, addr)
	}
	unlock := m.lock(id)
	defer unlock()
	b, err := m.record(id)
	if err != nil {
		return api.Port{}, err
	}
	if _, err := lifecycle.Next(b.State, lifecycle.OpExpose); err != nil {
		return api.Port{}, fmt.Errorf("box %s: %w", id, err)
	}
	l, err := net.Listen("tcp", net.JoinHostPort(addr, strconv.Itoa(req.HostPort)))
	if err != nil {
		return api.Port{}, fmt.Errorf("box %s: expose: %w: %v", id, ErrConflict, err)
	}
	ta := l.Addr().(*net.TCPAddr)
	p := catalog.Port{HostAddr: ta.String(), HostPort: ta.Port, GuestPort: req.GuestPort}
	b.Ports = append(b.Ports, p)
	if err := m.save(b); err != nil {
		l.Close()
		return api.Port{}, fmt.Errorf("box %s: expose: %w", id, err)
	}
	m.fwd.serve(id, p, l)
	m.log.Info("port exposed", "box", id, "addr", p.HostAddr, "guest_port", p.GuestPort)
	return api.Port(p), nil
}

// Unexpose removes box id's forward of host port hostPort.
func (m *Manager) Unexpose(ctx context.Context, id string, hostPort int) error {
	unlock := m.lock(id)
	defer unlock()
	b, err := m.record(id)
	if err != nil {
		return err
	}
	if _, err := lifecycle.Next(b.State, lifecycle.OpExpose); err != nil {
		return fmt.Errorf("box %s: %w", id, err)
	}
	i := -1
	for j, p := range b.Ports {
		if p.HostPort == hostPort {
			i = j
		}
	}
	if i < 0 {
		return fmt.Errorf("box %s: port %d: %w", id, hostPort, ErrNotFound)
	}
	p := b.Ports[i]
	b.Ports = append(b.Ports[:i:i], b.Ports[i+1:]...)
	if err := m.save(b); err != nil {
		return fmt.Errorf("box %s: unexpose: %w", id, err)
	}
	m.fwd.close(p.HostAddr)
	m.log.Info("port unexposed", "box", id, "addr", p.HostAddr)
	return nil
}

// forwards are the listeners of exposed ports and their connections.
type forwards struct {
	// Set by setup, then read-only (tests shrink the limits before serving).
	log            *slog.Logger
	dial           dialGuestFunc
	idleTimeout    time.Duration // defaultForwardIdle
	maxConnsPerBox int           // MaxForwardConns
	// beginUse, if not nil, records a connection as a use of its box,
	// from its arrival to its end (see idle.go).
	beginUse func(box string) (end func())

	mu     sync.Mutex
	byAddr map[string]*forward  // guarded by mu
	boxes  map[string]*boxConns // guarded by mu; entries for boxes with connections open
	wg     sync.WaitGroup       // accept loops and connections
}

// dialGuestFunc makes box ready for a connection to an exposed port,
// waking it if it sleeps, and connects to guestPort in its guest.
type dialGuestFunc func(ctx context.Context, box string, guestPort int) (net.Conn, error)

// forward is one exposed port.
type forward struct {
	box     string
	port    catalog.Port
	l       net.Listener
	ctx     context.Context // cancelled by stop: ends the wakes and dials of its connections
	cancel  context.CancelFunc
	splices map[*splice]struct{} // guarded by forwards.mu
}

// boxConns counts the forwarded connections of one box.
type boxConns struct {
	open    int
	refused int       // connections refused over the cap and not yet logged
	warned  time.Time // when refusals were last logged
}

func (f *forwards) init(m *Manager) {
	f.setup(m.log, m.dialForward)
	f.beginUse = m.beginUse
}

func (f *forwards) setup(log *slog.Logger, dial dialGuestFunc) {
	f.log, f.dial = log, dial
	f.idleTimeout, f.maxConnsPerBox = defaultForwardIdle, MaxForwardConns
	f.byAddr = map[string]*forward{}
	f.boxes = map[string]*boxConns{}
}

// dialForward is the forwards' dialGuestFunc.
func (m *Manager) dialForward(ctx context.Context, box string, guestPort int) (net.Conn, error) {
	if err := m.use(ctx, box, lifecycle.OpIngress); err != nil {
		return nil, err
	}
	return m.be.DialGuest(ctx, box, guestPort)
}

// open listens on p's address again (after a daemon restart).
func (f *forwards) open(box string, p catalog.Port) error {
	l, err := net.Listen("tcp", p.HostAddr)
	if err != nil {
		return err
	}
	f.serve(box, p, l)
	return nil
}

// serve accepts connections on l for box's port p.
func (f *forwards) serve(box string, p catalog.Port, l net.Listener) {
	ctx, cancel := context.WithCancel(context.Background())
	fw := &forward{box: box, port: p, l: l, ctx: ctx, cancel: cancel, splices: map[*splice]struct{}{}}
	f.mu.Lock()
	f.byAddr[p.HostAddr] = fw
	f.mu.Unlock()
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		f.acceptLoop(fw)
	}()
}

// acceptLoop accepts fw's connections until fw is stopped.
func (f *forwards) acceptLoop(fw *forward) {
	for {
		c, err := fw.l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || fw.ctx.Err() != nil {
				return
			}
			f.log.Warn("exposed port: accept", "box", fw.box, "addr", fw.port.HostAddr, "err", err)
			select {
			case <-time.After(acceptRetryWait):
				continue
			case <-fw.ctx.Done():
				return
			}
		}
		s, stopped := f.admit(fw, c)
		if stopped {
			c.Close()
			return
		}
		if s == nil {
			c.Close()
			continue
		}
		go func() {
			defer f.wg.Done()
			f.handle(fw, s)
			f.release(fw, s)
		}()
	}
}

// admit registers client c of fw as a new splice, counted against its
// box's cap, and adds it to wg. It returns nil for a client over the cap,
// and stopped once fw is no longer served.
func (f *forwards) admit(fw *forward, c net.Conn) (s *splice, stopped bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.byAddr[fw.port.HostAddr] != fw {
		return nil, true
	}
	bc := f.boxes[fw.box]
	if bc == nil {
		bc = &boxConns{}
		f.boxes[fw.box] = bc
	}
	if bc.open >= f.maxConnsPerBox {
		bc.refused++
		if now := time.Now(); now.Sub(bc.warned) >= refusalWarnEvery {
			f.log.Warn("exposed port: connections refused: the box has the most forwarded connections allowed open",
				"box", fw.box, "addr", fw.port.HostAddr, "open", bc.open, "refused", bc.refused)
			bc.refused, bc.warned = 0, now
		}
		return nil, false
	}
	bc.open++
	s = newSplice(c, f.idleTimeout)
	fw.splices[s] = struct{}{}
	f.wg.Add(1)
	return s, false
}

// release forgets s, which has ended.
func (f *forwards) release(fw *forward, s *splice) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(fw.splices, s)
	bc := f.boxes[fw.box]
	bc.open--
	if bc.open == 0 {
		delete(f.boxes, fw.box)
	}
}

// openConns is how many forwarded connections box has open. f.mu must be
// held.
func (f *forwards) openConns(box string) int {
	if bc := f.boxes[box]; bc != nil {
		return bc.open
	}
	return 0
}

// handle wakes the box if need be and splices s's client to the guest
// port, until both directions end, the connection idles out or fw is
// stopped.
func (f *forwards) handle(fw *forward, s *splice) {
	defer s.close()
	if f.beginUse != nil {
		defer f.beginUse(fw.box)()
	}
	ctx, cancel := context.WithTimeout(fw.ctx, wakeTimeout)
	g, err := f.dial(ctx, fw.box, fw.port.GuestPort)
	cancel()
	if err != nil {
		if fw.ctx.Err() == nil {
			f.log.Warn("exposed port: connection refused", "box", fw.box, "addr", fw.port.HostAddr, "err", err)
		}
		return
	}
	if !s.attach(g) {
		return // stopped while dialling
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.pump(g, s.client)
	}()
	s.pump(s.client, g)
	<-done
	if s.idledOut() {
		f.log.Info("exposed port: idle connection closed", "box", fw.box, "addr", fw.port.HostAddr, "idle", s.idle)
	}
}

// close stops the forward listening on addr and cuts its connections.
func (f *forwards) close(addr string) {
	f.mu.Lock()
	fw := f.byAddr[addr]
	delete(f.byAddr, addr)
	f.mu.Unlock()
	if fw != nil {
		f.stop(fw)
	}
}

// stop closes fw's listener, ends its wakes and dials, and closes both
// ends of its connections, whatever their peers do.
func (f *forwards) stop(fw *forward) {
	fw.l.Close()
	fw.cancel()
	f.mu.Lock()
	for s := range fw.splices {
		s.close()
	}
	f.mu.Unlock()
}

// closeBox closes every forward of box.
func (f *forwards) closeBox(box string) {
	f.mu.Lock()
	var fws []*forward
	for addr, fw := range f.byAddr {
		if fw.box == box {
			fws = append(fws, fw)
			delete(f.byAddr, addr)
		}
	}
	f.mu.Unlock()
	for _, fw := range fws {
		f.stop(fw)
	}
}

// closeAll closes every forward and waits for their goroutines. It does
// not wait on guests: every connection is closed, both ends.
func (f *forwards) closeAll() {
	f.mu.Lock()
	fws := f.byAddr
	f.byAddr = map[string]*forward{}
	f.mu.Unlock()
	for _, fw := range fws {
		f.stop(fw)
	}
	f.wg.Wait()
}

// splice is one forwarded connection: a host client and, once dialled,
// the guest's end. Closing it closes both ends, which ends both copies
// whatever either peer does; it closes itself once no byte has moved
// either way for idle.
type splice struct {
	client net.Conn
	idle   time.Duration
	start  time.Time    // origin of moved, on the monotonic clock
	moved  atomic.Int64 // when a byte last moved, as nanoseconds since start

	mu     sync.Mutex
	guest  net.Conn    // guarded by mu; nil until attached
	timer  *time.Timer // guarded by mu; the idle check, nil until attached
	closed bool        // guarded by mu
	idled  bool        // guarded by mu; closed for idling
}

func newSplice(client net.Conn, idle time.Duration) *splice {
	return &splice{client: client, idle: idle, start: time.Now()}
}

// attach sets the guest's end and starts the idle check. It reports
// false, with g closed, if s is already closed.
func (s *splice) attach(g net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		g.Close()
		return false
	}
	s.guest = g
	s.touch()
	s.timer = time.AfterFunc(s.idle, s.checkIdle)
	return true
}

// touch records that bytes moved.
func (s *splice) touch() { s.moved.Store(int64(time.Since(s.start))) }

// checkIdle, the idle timer's function, closes s if no byte has moved for
// s.idle, and otherwise looks again when that would be the case.
func (s *splice) checkIdle() {
	quiet := time.Since(s.start) - time.Duration(s.moved.Load())
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	if quiet < s.idle {
		s.timer.Reset(s.idle - quiet)
		return
	}
	s.idled = true
	s.closeLocked()
}

// pump moves src's bytes to dst until src ends. A clean end shuts dst's
// write side, so that the other direction goes on (half-close), bounded
// by the idle check; any error, or a dst that cannot half-close, closes
// both ends.
func (s *splice) pump(dst, src net.Conn) {
	buf := make([]byte, copyBufSize)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			s.touch()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				s.close()
				return
			}
			s.touch()
		}
		if err != nil {
			if err == io.EOF {
				if cw, ok := dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
					return
				}
			}
			s.close()
			return
		}
	}
}

// close closes both ends. It may be called more than once, from any
// goroutine.
func (s *splice) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closeLocked()
}

func (s *splice) closeLocked() {
	if s.closed {
		return
	}
	s.closed = true
	if s.timer != nil {
		s.timer.Stop()
	}
	s.client.Close()
	if s.guest != nil {
		s.guest.Close()
	}
}

// idledOut reports whether s was closed for idling.
func (s *splice) idledOut() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.idled
}
