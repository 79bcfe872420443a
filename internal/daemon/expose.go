package daemon

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/catalog"
)

// wakeTimeout bounds how long a connection to an exposed port waits for
// its box to wake.
const wakeTimeout = 2 * time.Minute

// Expose forwards a host TCP port to a guest port of box id. A connection
// to it wakes the box if it sleeps (a paused box refuses it: the
// connection is closed). The forward is recorded and reopened when the
// daemon restarts.
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
	m      *Manager
	mu     sync.Mutex
	byAddr map[string]*forward // guarded by mu
	wg     sync.WaitGroup      // accept loops and connections
}

// forward is one exposed port.
type forward struct {
	box   string
	port  catalog.Port
	l     net.Listener
	conns map[net.Conn]struct{} // guarded by forwards.mu
}

func (f *forwards) init(m *Manager) {
	f.m = m
	f.byAddr = map[string]*forward{}
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
	fw := &forward{box: box, port: p, l: l, conns: map[net.Conn]struct{}{}}
	f.mu.Lock()
	f.byAddr[p.HostAddr] = fw
	f.mu.Unlock()
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			f.mu.Lock()
			if f.byAddr[p.HostAddr] != fw {
				f.mu.Unlock()
				c.Close()
				return
			}
			fw.conns[c] = struct{}{}
			f.wg.Add(1)
			f.mu.Unlock()
			go func() {
				defer f.wg.Done()
				f.handle(fw, c)
				f.mu.Lock()
				delete(fw.conns, c)
				f.mu.Unlock()
			}()
		}
	}()
}

// handle wakes the box if need be and splices c to the guest port.
func (f *forwards) handle(fw *forward, c net.Conn) {
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wakeTimeout)
	err := f.m.use(ctx, fw.box, lifecycle.OpIngress)
	var g net.Conn
	if err == nil {
		g, err = f.m.be.DialGuest(ctx, fw.box, fw.port.GuestPort)
	}
	cancel()
	if err != nil {
		f.m.log.Warn("exposed port: connection refused", "box", fw.box, "addr", fw.port.HostAddr, "err", err)
		return
	}
	defer g.Close()
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		} else {
			dst.Close()
		}
		done <- struct{}{}
	}
	go cp(g, c)
	go cp(c, g)
	<-done
	<-done
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

func (f *forwards) stop(fw *forward) {
	fw.l.Close()
	f.mu.Lock()
	for c := range fw.conns {
		c.Close()
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

// closeAll closes every forward and waits for their goroutines.
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
