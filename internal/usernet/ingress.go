package usernet

import (
	"context"
	"errors"
	"strconv"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/sailbox-dev/sailbox/api/netapi"
)

// DialGuest opens a TCP connection to the guest's port, from the
// gateway, through the box's network: the guest's server sees a client
// at netapi.GatewayIP. It fails with netapi.ErrRefused if the guest
// resets it (nothing listens), netapi.ErrUnreachable if no VMM is
// attached, or ctx's error if the guest does not answer in time.
func (n *Network) DialGuest(ctx context.Context, port uint16) (*gonet.TCPConn, error) {
	if port == 0 {
		return nil, errors.New("usernet: dial guest port 0")
	}
	if !n.attached() {
		return nil, &DialError{Port: port, Err: netapi.ErrUnreachable}
	}
	var wq waiter.Queue
	ep, terr := n.stack.NewEndpoint(tcp.ProtocolNumber, header.IPv4ProtocolNumber, &wq)
	if terr != nil {
		return nil, &DialError{Port: port, Err: errors.New(terr.String())}
	}
	entry, ready := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	terr = ep.Connect(tcpip.FullAddress{NIC: nicID, Addr: addr(netapi.GuestIP), Port: port})
	if _, started := terr.(*tcpip.ErrConnectStarted); started {
		select {
		case <-ctx.Done():
			ep.Close()
			return nil, &DialError{Port: port, Err: ctx.Err()}
		case <-ready:
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		var err error = errors.New(terr.String())
		switch terr.(type) {
		case *tcpip.ErrConnectionRefused, *tcpip.ErrConnectionReset:
			err = netapi.ErrRefused
		case *tcpip.ErrHostUnreachable, *tcpip.ErrNetworkUnreachable, *tcpip.ErrTimeout:
			err = netapi.ErrUnreachable
		}
		return nil, &DialError{Port: port, Err: err}
	}
	n.c.connsIn.Add(1)
	return gonet.NewTCPConn(&wq, ep), nil
}

// DialError is a failed DialGuest.
type DialError struct {
	Port uint16
	Err  error
}

func (e *DialError) Error() string {
	return "usernet: dial guest port " + strconv.Itoa(int(e.Port)) + ": " + e.Err.Error()
}

func (e *DialError) Unwrap() error { return e.Err }
