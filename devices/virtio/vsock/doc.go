// Package vsock implements a virtio-vsock device (virtio spec v1.2,
// §5.10) whose host side is Unix sockets: Firecracker's "hybrid vsock".
// The guest sees an ordinary AF_VSOCK transport; the host sees no vsock at
// all, only Unix stream sockets, so it needs neither vhost-vsock nor a
// CID of its own.
//
// # Hybrid vsock
//
// The device is configured with the guest's CID and a Unix socket path,
// say /run/vm.sock.
//
// Host-initiated connections: the device listens on /run/vm.sock. A host
// client connects and writes "CONNECT <port>\n" (port in decimal). The
// device allocates a host-side port L and sends the guest a REQUEST from
// (CID 2, L) to (guest CID, port). When the guest answers RESPONSE, the
// device writes "OK <L>\n" to the client and from then on the client's
// stream is the guest's. A malformed CONNECT line, a guest RST, or no
// answer within two seconds closes the client with nothing written.
//
// Guest-initiated connections: a guest connecting to (CID 2, port P) makes
// the device dial /run/vm.sock_P. If that succeeds the guest gets
// RESPONSE, otherwise RST.
//
// # Protocol
//
// Only stream sockets are offered (no VIRTIO_VSOCK_F_SEQPACKET). Every
// packet from the guest is validated: addresses (src_cid must be the
// guest's, dst_cid the host's), length against the descriptor chain and a
// 64 KiB bound, type, op, and connection state. A chain too short for a
// header, or misaddressed, is dropped; any other invalid packet is
// answered with RST and resets its connection. Nothing a guest sends can
// make the device panic or grow without bound.
//
// The connection table holds 1024 connections, of which at most 256 may be
// guest-initiated: the rest ([HostConnections], 768) is kept for the
// host's connections into the guest, so that a guest cannot lock the host
// out of its own services. A
// guest REQUEST past either bound is answered with RST; a host client the
// full table has no room for reads "ERR connection table full\n" before
// its socket is closed.
//
// Flow control (§5.10.6.3) runs both ways. The device never sends the
// guest more than its advertised buf_alloc allows, and answers
// CREDIT_REQUEST; it advertises 256 KiB per connection, sends
// CREDIT_UPDATE as the host socket takes data, and resets a guest that
// overruns the credit. The host → guest direction holds at most one 32 KiB
// read per connection: while the guest has no credit, or posts no rx
// buffers, the device stops reading the host socket, and back-pressure
// stays in the kernel.
//
// Half-close maps onto shutdown(2): a guest SHUTDOWN with SEND shuts the
// host socket's write side once buffered data is written, host EOF becomes
// SHUTDOWN(SEND) to the guest, and a guest that shuts down both ways gets
// RST and its connection closed (§5.10.6.5).
//
// ResetTransport, for after a snapshot restore, closes every connection
// and sends the driver VIRTIO_VSOCK_EVENT_TRANSPORT_RESET; the listening
// socket survives.
//
// # Concurrency
//
// One event loop goroutine owns the connection table, every connection's
// protocol state and, once the driver is active, the three virtqueues.
// Notify, called on vCPU goroutines, only wakes it; Activate, Reset and
// ResetTransport run their work on the loop and wait for it, which is safe
// under the transport's lock because the loop never takes that lock. Host sockets are
// served by goroutines of their own (a reader and a writer each, plus
// short-lived handshake and dial goroutines) that never touch protocol
// state: they hand the loop work over a channel. The muxer type documents
// the full list.
package vsock
