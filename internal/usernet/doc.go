// Package usernet is the user-space network of one box, which
// cmd/sailbox-net runs: gvisor-tap-vsock's switch, DHCP and DNS servers on
// gVisor's netstack, with forwarders of our own that turn the guest's
// outbound connections into host sockets under an egress policy.
//
// The guest's link is a Unix SOCK_SEQPACKET connection from its VMM, one
// Ethernet frame a message (the library's "bess" framing):
//
//	n, err := usernet.New(usernet.Config{Box: "sb-1", NoInternet: true, Allow: []string{"pypi.org"}})
//	l, err := net.Listen("unixpacket", path) // the VMM connects here
//	go n.Serve(ctx, l)                        // a new connection replaces the last
//	c, err := n.DialGuest(ctx, 8080)          // ingress: a connection into the guest
//	st := n.Stats()                           // counters
//	http.Serve(controlListener, n.ControlHandler())
//	n.Close()
//
// Where the library has no hook, this package wires the pieces itself
// (build, in network.go): the TCP and UDP forwarders are ours
// (forward.go), so that the policy (policy.go) decides at a connection's
// first packet, before anything is dialled, and a refused TCP SYN is
// answered with a reset; the DNS server is the library's, but its
// upstream resolver and its sockets are wrapped (dns.go), so that names
// can be refused and every answer is read for the domain rules before
// the guest gets it. The addresses, the rules' syntax and the control
// API are api/netapi's.
package usernet
