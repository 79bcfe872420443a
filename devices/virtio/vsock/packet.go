package vsock

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Addresses (virtio spec v1.2 §5.10.4, §5.10.6.2). The host side of every
// connection is VMADDR_CID_HOST; guests get a CID of 3 or more.
const (
	hostCID     = 2 // VMADDR_CID_HOST
	minGuestCID = 3 // the first CID that is neither reserved nor the host's
)

// Queue indexes (spec §5.10.2).
const (
	rxQueue    = 0 // device → driver packets
	txQueue    = 1 // driver → device packets
	eventQueue = 2 // device → driver events
	numQueues  = 3
)

// Socket types (spec §5.10.6, enum virtio_vsock_type). Only STREAM is
// offered: the device does not offer VIRTIO_VSOCK_F_SEQPACKET.
const typeStream = 1 // VIRTIO_VSOCK_TYPE_STREAM

// Operations (spec §5.10.6, enum virtio_vsock_op).
const (
	opRequest       = 1 // VIRTIO_VSOCK_OP_REQUEST: connect
	opResponse      = 2 // VIRTIO_VSOCK_OP_RESPONSE: connection accepted
	opRST           = 3 // VIRTIO_VSOCK_OP_RST: connection refused or reset
	opShutdown      = 4 // VIRTIO_VSOCK_OP_SHUTDOWN: half or full close
	opRW            = 5 // VIRTIO_VSOCK_OP_RW: payload
	opCreditUpdate  = 6 // VIRTIO_VSOCK_OP_CREDIT_UPDATE: buf_alloc/fwd_cnt changed
	opCreditRequest = 7 // VIRTIO_VSOCK_OP_CREDIT_REQUEST: please send CREDIT_UPDATE
)

// SHUTDOWN flags (spec §5.10.6.5, enum virtio_vsock_shutdown).
const (
	shutdownRcv  = 1 // VIRTIO_VSOCK_SHUTDOWN_RCV: sender will receive no more
	shutdownSend = 2 // VIRTIO_VSOCK_SHUTDOWN_SEND: sender will send no more
	shutdownBoth = shutdownRcv | shutdownSend
)

// Events (spec §5.10.6.7, struct virtio_vsock_event).
const (
	eventTransportReset = 0 // VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
	eventSize           = 4 // le32 id
)

// configSize is the size of struct virtio_vsock_config (spec §5.10.4): one
// le64 guest_cid.
const configSize = 8

// headerSize is the size of struct virtio_vsock_hdr (spec §5.10.6).
const headerSize = 44

// maxPayload bounds the len field of a packet from the driver. It is the
// largest packet Linux sends (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE); a longer
// one is a protocol error, answered with RST.
const maxPayload = 64 << 10

// header is struct virtio_vsock_hdr (spec §5.10.6), every field little
// endian on the wire:
//
//	off  size  field
//	  0     8  src_cid
//	  8     8  dst_cid
//	 16     4  src_port
//	 20     4  dst_port
//	 24     4  len        payload bytes following the header
//	 28     2  type
//	 30     2  op
//	 32     4  flags
//	 36     4  buf_alloc  sender's receive buffer size (§5.10.6.3)
//	 40     4  fwd_cnt    bytes the sender has consumed (§5.10.6.3)
type header struct {
	srcCID, dstCID   uint64
	srcPort, dstPort uint32
	len              uint32
	typ, op          uint16
	flags            uint32
	bufAlloc, fwdCnt uint32
}

// encode writes h into b, which must hold headerSize bytes.
func (h *header) encode(b []byte) {
	_ = b[headerSize-1]
	le := binary.LittleEndian
	le.PutUint64(b[0:], h.srcCID)
	le.PutUint64(b[8:], h.dstCID)
	le.PutUint32(b[16:], h.srcPort)
	le.PutUint32(b[20:], h.dstPort)
	le.PutUint32(b[24:], h.len)
	le.PutUint16(b[28:], h.typ)
	le.PutUint16(b[30:], h.op)
	le.PutUint32(b[32:], h.flags)
	le.PutUint32(b[36:], h.bufAlloc)
	le.PutUint32(b[40:], h.fwdCnt)
}

// decodeHeader parses the first headerSize bytes of b.
func decodeHeader(b []byte) (header, error) {
	if len(b) < headerSize {
		return header{}, fmt.Errorf("packet header: %d bytes, want %d", len(b), headerSize)
	}
	le := binary.LittleEndian
	return header{
		srcCID:   le.Uint64(b[0:]),
		dstCID:   le.Uint64(b[8:]),
		srcPort:  le.Uint32(b[16:]),
		dstPort:  le.Uint32(b[20:]),
		len:      le.Uint32(b[24:]),
		typ:      le.Uint16(b[28:]),
		op:       le.Uint16(b[30:]),
		flags:    le.Uint32(b[32:]),
		bufAlloc: le.Uint32(b[36:]),
		fwdCnt:   le.Uint32(b[40:]),
	}, nil
}

// Errors decoding a tx packet. errShortChain drops the packet: without a
// header there is no connection to answer. errBadLen comes with a parsed
// header, so the packet is answered with RST.
var (
	errShortChain = errors.New("chain shorter than a packet header")
	errBadLen     = errors.New("bad payload length")
)

// decodeTx parses a packet the driver placed on the tx queue. b holds the
// first bytes of the chain's readable buffers (all of them, or at least
// headerSize+maxPayload) and chainLen is the chain's total readable
// length. Bytes past the header's len are ignored: a driver may post
// buffers larger than the packet. The payload aliases b.
func decodeTx(b []byte, chainLen uint64) (h header, payload []byte, err error) {
	if chainLen < headerSize || len(b) < headerSize {
		return header{}, nil, fmt.Errorf("tx chain of %d bytes: %w", chainLen, errShortChain)
	}
	h, _ = decodeHeader(b)
	if h.len > maxPayload || uint64(h.len) > chainLen-headerSize || int(h.len) > len(b)-headerSize {
		return h, nil, fmt.Errorf("%s: len %d, chain carries %d payload bytes, limit %d: %w",
			h, h.len, chainLen-headerSize, maxPayload, errBadLen)
	}
	return h, b[headerSize : headerSize+int(h.len)], nil
}

// String renders h for logs and errors.
func (h header) String() string {
	return fmt.Sprintf("%s %d:%d -> %d:%d", opName(h.op), h.srcCID, h.srcPort, h.dstCID, h.dstPort)
}

// opName names op as the spec does, for logs and errors.
func opName(op uint16) string {
	switch op {
	case opRequest:
		return "REQUEST"
	case opResponse:
		return "RESPONSE"
	case opRST:
		return "RST"
	case opShutdown:
		return "SHUTDOWN"
	case opRW:
		return "RW"
	case opCreditUpdate:
		return "CREDIT_UPDATE"
	case opCreditRequest:
		return "CREDIT_REQUEST"
	}
	return fmt.Sprintf("op(%d)", op)
}
