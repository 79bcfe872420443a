package main

import (
	"net"
	"os"
)

// sdNotify sends state ("READY=1") to the service manager over the
// datagram socket $NOTIFY_SOCKET names (sd_notify(3); a leading @ is an
// abstract socket), as a unit of Type=notify expects. Without the
// variable it does nothing: the daemon was not started by systemd, or by
// a unit of another type.
func sdNotify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}
