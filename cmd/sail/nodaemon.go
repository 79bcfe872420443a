package main

import (
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/sailbox-dev/sailbox/api"
)

// errNoDaemon reports that no sailboxd listens on the socket.
var errNoDaemon = errors.New("no sailboxd listens")

// explainDial turns err, when it is a failure to reach the daemon at
// socket at all, into one line that says so and what to do; other errors
// pass unchanged.
func explainDial(socket string, err error) error {
	var op *net.OpError
	if err == nil || !errors.As(err, &op) || op.Op != "dial" {
		return err
	}
	switch {
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w on %s: start one (sailboxd, or systemctl start sailboxd), or point -socket or $%s at the socket of the one that runs", errNoDaemon, socket, api.SocketEnv)
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return fmt.Errorf("sailboxd's socket %s: permission denied: join the group the daemon's -socket-group names, or run as its user", socket)
	}
	return err
}
