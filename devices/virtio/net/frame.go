package net

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Frame sizes.
const (
	// MTU is the largest IP packet the link carries, offered to the
	// driver in the configuration space (VIRTIO_NET_F_MTU).
	MTU = 1500
	// ethHeaderLen is an Ethernet header: destination, source, type.
	ethHeaderLen = 14
	// vlanTagLen is one 802.1Q tag.
	vlanTagLen = 4
	// MaxFrame is the largest frame the device carries either way: the
	// MTU, the Ethernet header and one 802.1Q tag, as Linux sizes its
	// receive buffers (GOOD_PACKET_LEN) when mergeable buffers are off.
	MaxFrame = MTU + ethHeaderLen + vlanTagLen
	// MinFrame is the smallest: an Ethernet header.
	MinFrame = ethHeaderLen
)

// hdrSize is struct virtio_net_hdr_v1 (spec §5.1.6): with
// VIRTIO_F_VERSION_1 the header always has num_buffers, with or without
// VIRTIO_NET_F_MRG_RXBUF.
//
//	u8   flags
//	u8   gso_type
//	le16 hdr_len
//	le16 gso_size
//	le16 csum_start
//	le16 csum_offset
//	le16 num_buffers
const hdrSize = 12

// Offsets in the header.
const (
	hdrFlags      = 0
	hdrGSOType    = 1
	hdrNumBuffers = 10
)

// Errors of a transmitted chain; each makes it invalid (Stats.TxInvalid).
var (
	errShortHeader = errors.New("shorter than the 12-byte virtio-net header")
	errOffload     = errors.New("header asks for an offload that was not negotiated")
	errRunt        = fmt.Errorf("frame shorter than an Ethernet header (%d bytes)", MinFrame)
	errOversize    = fmt.Errorf("frame longer than %d bytes", MaxFrame)
)

// parseTx checks one transmitted packet, the readable bytes of a tx chain
// (a header, then the frame), and returns its frame, which aliases p.
//
// No offload is offered, so a header may ask for none (spec §5.1.6.2):
// flags (VIRTIO_NET_HDR_F_NEEDS_CSUM, which would leave the checksum to
// the device; DATA_VALID and RSC_INFO, which a driver must not set on
// transmit) and gso_type (VIRTIO_NET_HDR_GSO_NONE, without ECN) must be
// zero. hdr_len, gso_size, csum_start and csum_offset mean nothing then,
// and num_buffers is unused on transmit: they are not looked at.
func parseTx(p []byte) ([]byte, error) {
	if len(p) < hdrSize {
		return nil, errShortHeader
	}
	if flags, gso := p[hdrFlags], p[hdrGSOType]; flags != 0 || gso != 0 {
		return nil, fmt.Errorf("%w (flags %#x, gso_type %#x)", errOffload, flags, gso)
	}
	frame := p[hdrSize:]
	switch {
	case len(frame) < MinFrame:
		return nil, errRunt
	case len(frame) > MaxFrame:
		return nil, errOversize
	}
	return frame, nil
}

// rxHeader is the header the device puts before every received frame:
// no flags, VIRTIO_NET_HDR_GSO_NONE, and num_buffers 1, which the device
// must set when VIRTIO_NET_F_MRG_RXBUF is not negotiated (spec
// §5.1.6.4).
var rxHeader = func() (h [hdrSize]byte) {
	binary.LittleEndian.PutUint16(h[hdrNumBuffers:], 1)
	return h
}()
