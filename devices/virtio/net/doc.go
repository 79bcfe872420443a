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
// that the guest cannot raise its MTU past what the device carries),
// VIRTIO_F_VERSION_1 from the transport, and two transmit offloads:
// VIRTIO_NET_F_CSUM and VIRTIO_NET_F_HOST_TSO4. No TSO6 (the host's
// stack has no IPv6), ECN, UFO or USO, no receive offload (the guest
// verifies checksums and gets MTU-sized frames), no mergeable receive
// buffers. Every frame carries the 12-byte struct virtio_net_hdr_v1:
// the device strips it from transmitted frames and prepends one to
// received frames (all zeros, num_buffers 1).
//
// # Transmit offloads
//
// With VIRTIO_NET_F_CSUM the driver may leave a checksum to the device
// (VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start and csum_offset inside the
// frame, past the Ethernet header): the device completes it before the
// frame leaves, so the socket only ever carries fully checksummed
// frames (the host's stack does not verify them, but a frame on the
// socket is a frame as it would be on a wire). With HOST_TSO4, Linux's
// TCP hands over one large segment (GSO_TCPV4, up to 64 KiB) instead of
// up to 45 MSS-sized ones: the device checks that it is one untagged
// IPv4 TCP packet whose total length is the frame, with NEEDS_CSUM on
// the TCP checksum and a gso_size, and sends it to the peer whole, in
// one message, without segmenting it. The host's stack takes IP packets
// larger than its link's MTU (the MTU bounds what it sends: toward the
// guest everything stays within 1500 bytes and the guest's MSS), so one
// virtqueue chain, one sendmsg and one netstack packet carry what took
// 45. hdr_len is a hint the spec tells devices not to rely on, and is
// ignored; DATA_VALID and RSC_INFO, which a driver must not set on
// transmit, make a chain invalid; other flag bits are ignored, as the
// spec tells devices. A driver that did not accept the offloads (one
// restored from a checkpoint older than them) gets NEEDS_CSUM and GSO
// refused as before.
//
// Frames are at most MaxFrame bytes (the MTU, the Ethernet header and
// one 802.1Q tag: what Linux's receive buffers hold without mergeable
// buffers, GOOD_PACKET_LEN), but a TSO packet, which is at most
// MaxTSOFrame (an Ethernet header and 65535 bytes of IPv4). Frames are
// at least an Ethernet header (14 bytes); the device pads nothing.
//
// # What it never does
//
// A guest that sends frames above MaxFrame, malformed headers or chains,
// or floods the transmit queue cannot crash the VMM, block a vCPU or grow
// its memory: an invalid chain is returned to the driver unused and
// counted (Stats.TxInvalid); a valid frame is copied into one of
// txBuffers buffers of MaxFrame bytes, or, above that, one of tsoBuffers
// of MaxTSOFrame bytes, made as needed: at most 64 × 1530 + 8 × 65561
// bytes, about 608 KiB, whatever the guest sends. While every buffer
// the next chain needs waits for the socket, the device stops taking
// chains (it leaves that chain on the ring), so the driver's ring fills
// and its queue stops (back-pressure, as a real link gives). A host
// peer that floods the device, or a guest that posts no receive
// buffers, costs at most maxHeld frames held for the guest: past
// them frames are dropped and counted (Stats.RxDropped), as they are
// while the driver is not active. A message above MaxFrame from the peer
// is dropped and counted (Stats.RxInvalid).
//
// # The link
//
// The VMM connects at start-up (Dial; New and Restore do it): a socket
// that cannot be connected is an error, and the VMM does not start. If
// the peer goes away while the guest runs, the device keeps working as a
// link that drops every frame (Stats.TxDropped, Stats.PeerGone), logged
// once; it never reconnects (the VMM's seccomp filter would allow it,
// Landlock from ABI 9 would not, and a restarted peer has lost the
// guest's connections anyway). A TSO packet is one message of up to
// MaxTSOFrame bytes, which the socket's default send buffer (Linux's
// net.core.wmem_default, 208 KiB) holds; sailbox-net reads messages of
// up to 128 KiB (gvisor-tap-vsock's switch).
//
// # Checkpoints
//
// The state is the MAC and whether the device offered the transmit
// offloads (State version 2); the queues' state, with the features the
// driver negotiated, is the transport's (virtio.MMIOState), which checks
// that a restored device offers what the saved one did. A version 1
// state (from before the offloads) restores a device that offers none,
// so its guest keeps the features it negotiated; its next save is
// version 2 without offloads. A new box (New) offers them. The link is not state: a restored device connects
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
