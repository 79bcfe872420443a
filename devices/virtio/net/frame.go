package net

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
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
	// MaxFrame is the largest frame the device carries either way but a
	// TCP segmentation (TSO) packet from the guest: the MTU, the
	// Ethernet header and one 802.1Q tag, as Linux sizes its receive
	// buffers (GOOD_PACKET_LEN) when mergeable buffers are off.
	MaxFrame = MTU + ethHeaderLen + vlanTagLen
	// MaxTSOFrame is the largest TSO packet the driver may transmit
	// (VIRTIO_NET_HDR_GSO_TCPV4): an untagged Ethernet header and the
	// largest IPv4 packet. The device hands it to the peer whole.
	MaxTSOFrame = ethHeaderLen + maxIPv4Len
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
	hdrGSOSize    = 4
	hdrCsumStart  = 6
	hdrCsumOffset = 8
	hdrNumBuffers = 10
)

// Header flags and GSO types (spec §5.1.6).
const (
	flagNeedsCsum = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM: the device completes the checksum
	flagDataValid = 2 // VIRTIO_NET_HDR_F_DATA_VALID: receive only
	flagRSCInfo   = 4 // VIRTIO_NET_HDR_F_RSC_INFO: receive only

	gsoNone  = 0    // VIRTIO_NET_HDR_GSO_NONE
	gsoTCPv4 = 1    // VIRTIO_NET_HDR_GSO_TCPV4
	gsoECN   = 0x80 // VIRTIO_NET_HDR_GSO_ECN, with VIRTIO_NET_F_HOST_ECN only
)

// IPv4 and TCP, as far as a TSO packet is checked.
const (
	etherTypeIPv4   = 0x0800
	ipv4MinHdr      = 20
	maxIPv4Len      = 65535
	ipProtoTCP      = 6
	tcpMinHdr       = 20
	tcpCsumOffset   = 16 // the checksum field in the TCP header
	ipv4FlagMF      = 0x2000
	ipv4FragOffMask = 0x1fff
)

// Errors of a transmitted chain; each makes it invalid (Stats.TxInvalid).
var (
	errShortHeader = errors.New("shorter than the 12-byte virtio-net header")
	errOffload     = errors.New("header asks for an offload that was not negotiated")
	errRunt        = fmt.Errorf("frame shorter than an Ethernet header (%d bytes)", MinFrame)
	errOversize    = fmt.Errorf("frame longer than %d bytes (%d with TSO)", MaxFrame, MaxTSOFrame)
	errCsum        = errors.New("checksum field outside the frame, or at an odd csum_offset")
	errTSO         = errors.New("TSO packet is not one IPv4 TCP packet")
)

// txOffloads are the transmit offloads the driver negotiated: a subset
// of featureCsum | featureHostTSO4.
type txOffloads uint64

// maxFrame is the largest frame a packet may carry under o with gso_type
// gso.
func (o txOffloads) maxFrame(gso byte) int {
	if gso == gsoTCPv4 && o&featureHostTSO4 != 0 {
		return MaxTSOFrame
	}
	return MaxFrame
}

// parseTx checks one transmitted packet, the readable bytes of a tx chain
// (a header, then the frame), completes the frame's checksum if the
// header asks for it, and returns the frame, which aliases p.
//
// The header must ask only for offloads o has (spec §5.1.6.2):
//   - flags: VIRTIO_NET_HDR_F_NEEDS_CSUM with VIRTIO_NET_F_CSUM only;
//     DATA_VALID and RSC_INFO never (a driver must not set them on
//     transmit); other bits are ignored, as the spec tells devices.
//   - gso_type: VIRTIO_NET_HDR_GSO_NONE, or GSO_TCPV4 with
//     VIRTIO_NET_F_HOST_TSO4; never the ECN bit (VIRTIO_NET_F_HOST_ECN
//     is not offered), UDP or TCPv6.
//
// NEEDS_CSUM: csum_start and csum_offset place a 16-bit checksum field
// inside the frame, past the Ethernet header, at an even offset (as every
// ones' complement checksum is: else the sum could not verify); the
// device sums the frame
// from csum_start to its end (the field holds the pseudo-header's sum)
// and stores the ones' complement there, as a NIC would.
//
// GSO_TCPV4: the frame is one untagged IPv4 packet of at most
// maxIPv4Len bytes whose total length is the frame's rest, not a
// fragment, carrying a TCP header; NEEDS_CSUM is set, csum_start is the
// TCP header and csum_offset its checksum, and gso_size is not zero. The
// device does not segment it: the peer takes IP packets larger than the
// MTU (see the package documentation). hdr_len is a hint the device
// must not rely on, and is not looked at; num_buffers is unused on
// transmit.
func parseTx(p []byte, o txOffloads) ([]byte, error) {
	if len(p) < hdrSize {
		return nil, errShortHeader
	}
	flags, gso := p[hdrFlags], p[hdrGSOType]
	needsCsum := flags&flagNeedsCsum != 0
	switch {
	case flags&(flagDataValid|flagRSCInfo) != 0,
		needsCsum && o&featureCsum == 0,
		gso != gsoNone && (gso != gsoTCPv4 || o&featureHostTSO4 == 0):
		return nil, fmt.Errorf("%w (flags %#x, gso_type %#x)", errOffload, flags, gso)
	}
	frame := p[hdrSize:]
	switch {
	case len(frame) < MinFrame:
		return nil, errRunt
	case len(frame) > o.maxFrame(gso):
		return nil, errOversize
	}
	if !needsCsum {
		if gso != gsoNone {
			return nil, fmt.Errorf("%w: without VIRTIO_NET_HDR_F_NEEDS_CSUM", errTSO)
		}
		return frame, nil
	}
	start := int(binary.LittleEndian.Uint16(p[hdrCsumStart:]))
	offset := int(binary.LittleEndian.Uint16(p[hdrCsumOffset:]))
	if start < ethHeaderLen || offset%2 != 0 || start+offset+2 > len(frame) {
		return nil, fmt.Errorf("%w (csum_start %d, csum_offset %d, frame %d bytes)", errCsum, start, offset, len(frame))
	}
	if gso == gsoTCPv4 {
		if err := checkTSOv4(frame, start, offset, binary.LittleEndian.Uint16(p[hdrGSOSize:])); err != nil {
			return nil, err
		}
	}
	completeChecksum(frame, start, offset)
	return frame, nil
}

// checkTSOv4 checks that frame is one IPv4 TCP packet whose checksum
// field is at csum_start + csum_offset.
func checkTSOv4(frame []byte, start, offset int, gsoSize uint16) error {
	if gsoSize == 0 {
		return fmt.Errorf("%w: gso_size 0", errTSO)
	}
	if binary.BigEndian.Uint16(frame[12:]) != etherTypeIPv4 {
		return fmt.Errorf("%w: EtherType %#04x", errTSO, binary.BigEndian.Uint16(frame[12:]))
	}
	ip := frame[ethHeaderLen:]
	if len(ip) < ipv4MinHdr {
		return fmt.Errorf("%w: %d bytes after the Ethernet header", errTSO, len(ip))
	}
	ihl := int(ip[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	frag := binary.BigEndian.Uint16(ip[6:])
	switch {
	case ip[0]>>4 != 4 || ihl < ipv4MinHdr:
		return fmt.Errorf("%w: version/IHL %#02x", errTSO, ip[0])
	case total != len(ip):
		return fmt.Errorf("%w: total length %d, %d bytes in the frame", errTSO, total, len(ip))
	case frag&(ipv4FlagMF|ipv4FragOffMask) != 0:
		return fmt.Errorf("%w: a fragment", errTSO)
	case ip[9] != ipProtoTCP:
		return fmt.Errorf("%w: protocol %d", errTSO, ip[9])
	case len(ip) < ihl+tcpMinHdr:
		return fmt.Errorf("%w: no room for a TCP header", errTSO)
	case int(ip[ihl+12]>>4)*4 < tcpMinHdr || ihl+int(ip[ihl+12]>>4)*4 > len(ip):
		return fmt.Errorf("%w: TCP data offset %d", errTSO, ip[ihl+12]>>4)
	case start != ethHeaderLen+ihl || offset != tcpCsumOffset:
		return fmt.Errorf("%w: csum_start %d, csum_offset %d, not the TCP checksum", errTSO, start, offset)
	}
	return nil
}

// completeChecksum stores at frame[start+offset:] the ones' complement
// of the ones' complement sum of frame[start:], as a device does for
// VIRTIO_NET_HDR_F_NEEDS_CSUM. A result of zero is stored as 0xffff (the
// same number in ones' complement), as Linux does, since a zero UDP
// checksum would mean none.
func completeChecksum(frame []byte, start, offset int) {
	c := ^fold(onesSum(frame[start:]))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(frame[start+offset:], c)
}

// onesSum is the ones' complement sum of b as big-endian 16-bit words (an
// odd last byte padded with zero), kept in 64 bits: 2^16 ≡ 1 modulo
// 2^16-1, which divides 2^64-1, so adding 64-bit words with end-around
// carry and folding gives the same sum.
func onesSum(b []byte) uint64 {
	var s, carry uint64
	for len(b) >= 8 {
		s, carry = bits.Add64(s, binary.BigEndian.Uint64(b), 0)
		s += carry
		b = b[8:]
	}
	var tail [8]byte
	copy(tail[:], b)
	s, carry = bits.Add64(s, binary.BigEndian.Uint64(tail[:]), 0)
	return s + carry
}

// fold folds a 64-bit ones' complement sum into 16 bits.
func fold(s uint64) uint16 {
	s = s>>32 + s&0xffffffff
	s = s>>32 + s&0xffffffff
	s = s>>16 + s&0xffff
	s = s>>16 + s&0xffff
	return uint16(s)
}

// rxHeader is the header the device puts before every received frame:
// no flags, VIRTIO_NET_HDR_GSO_NONE, and num_buffers 1, which the device
// must set when VIRTIO_NET_F_MRG_RXBUF is not negotiated (spec
// §5.1.6.4).
var rxHeader = func() (h [hdrSize]byte) {
	binary.LittleEndian.PutUint16(h[hdrNumBuffers:], 1)
	return h
}()
