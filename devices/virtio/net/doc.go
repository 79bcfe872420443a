// Package net implements a virtio network device (virtio spec v1.2,
// §5.1) whose host side is one Unix SOCK_SEQPACKET socket: every message
// on it is exactly one Ethernet frame, with no length prefix and no virtio
// header. That is gvisor-tap-vsock's "bess" framing; the host's network
// stack (sailbox-net, a process of its own) listens, the VMM connects.
//
// # The device
//
// One receive queue (index 0) and one transmit queue (index 1), no
// control queue, no multiqueue. Offered features: VIRTIO_NET_F_MAC (the
// MAC in the configuration space, Config.MAC, by default DefaultMAC),
// VIRTIO_NET_F_STATUS (the link is always up), VIRTIO_NET_F_MTU (1500, so
// that the guest cannot raise its MTU past what the device carries), and
// VIRTIO_F_VERSION_1 from the transport. No offloads: no checksum, TSO or
// UFO, no mergeable receive buffers. Every frame carries the 12-byte
// struct virtio_net_hdr_v1: the device strips it from transmitted frames
// (it must be all zeros but num_buffers, which the driver leaves
// unset) and prepends one to received frames (all zeros, num_buffers 1).
//
// Frames are at most MaxFrame bytes: the MTU, the Ethernet header and one
// 802.1Q tag, which is what Linux's receive buffers hold without
// mergeable buffers (GOOD_PACKET_LEN). Frames are at least an Ethernet
// header (14 bytes); the device pads nothing.
//
// # What it never does
//
// A guest that sends frames above MaxFrame, malformed headers or chains,
// or floods the transmit queue cannot crash the VMM, block a vCPU or grow
// its memory: an invalid chain is returned to the driver unused and
// counted (Stats.TxInvalid); a valid frame is copied into one of
// txBuffers preallocated buffers, and while all of them wait for the
// socket the device stops taking chains, so the driver's ring fills and
// its queue stops (back-pressure, as a real link gives). A host peer that
// floods the device, or a guest that posts no receive buffers, costs at
// most maxPending frames held for the guest: past them frames are
// dropped and counted (Stats.RxDropped), as they are while the driver is
// not active. A message above MaxFrame from the peer is dropped and
// counted (Stats.RxInvalid).
//
// # The link
//
// The VMM connects at start-up (Dial; New and Restore do it): a socket
// that cannot be connected is an error, and the VMM does not start. If
// the peer goes away while the guest runs, the device keeps working as a
// link that drops every frame (Stats.TxDropped, Stats.PeerGone), logged
// once; it never reconnects (the VMM's seccomp filter would allow it,
// Landlock from ABI 9 would not, and a restarted peer has lost the
// guest's connections anyway).
//
// # Checkpoints
//
// The state is the MAC; the queues' state is the transport's
// (virtio.MMIOState). The link is not state: a restored device connects
// to the socket given to Restore, a new peer, which knows nothing of the
// guest's connections. Frames in flight when the checkpoint was taken
// (held for the guest, or on their way to the old peer) are lost, as on
// a link that was reset; the guest's TCP retransmits, and the new peer
// answers segments of connections it does not know with resets.
//
// # Concurrency
//
// One event loop goroutine owns both queues once the driver is active,
// and the frames held for the guest. Notify, called on vCPU goroutines,
// only wakes it; Activate, Reset, Pause and Save run their work on the
// loop and wait for it (the loop never takes the transport's lock). A
// reader goroutine receives messages from the socket and hands them to
// the loop; a writer goroutine sends the frames the loop copied out of
// the transmit queue. Neither touches guest memory or the queues.
package net
