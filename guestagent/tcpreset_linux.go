package guestagent

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"

	"golang.org/x/sys/unix"
)

// resetConnections makes the guest reset its TCP connections that a
// restore left dead (tcpreset.go). It returns how many it probed.
func (*linuxGuest) resetConnections() (int, error) {
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return 0, fmt.Errorf("reset connections: %w", err)
	}
	socks, err := parseProcNetTCP(f)
	f.Close()
	if err != nil {
		return 0, fmt.Errorf("reset connections: %w", err)
	}
	var stale []tcpSocket
	for _, s := range socks {
		if s.stale() {
			stale = append(stale, s)
		}
	}
	return probeConnections(stale)
}

// probeConnections loops a probe back to each of conns through a raw
// socket (CAP_NET_RAW), and returns how many it probed.
func probeConnections(conns []tcpSocket) (int, error) {
	if len(conns) == 0 {
		return 0, nil
	}
	// IPPROTO_RAW: the packets carry their own IPv4 header.
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return 0, fmt.Errorf("reset connections: raw socket: %w", err)
	}
	defer unix.Close(fd)
	var errs []error
	probed := 0
	for _, c := range conns {
		to := &unix.SockaddrInet4{Addr: c.Local.Addr().As4()}
		if err := unix.Sendto(fd, resetProbe(c, rand.Uint32()), 0, to); err != nil {
			errs = append(errs, fmt.Errorf("reset connection %s-%s: send probe: %w", c.Local, c.Remote, err))
			continue
		}
		probed++
	}
	return probed, errors.Join(errs...)
}
