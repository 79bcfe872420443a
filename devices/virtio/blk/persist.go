package blk

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/sailbox-dev/sailbox/devices"
	"github.com/sailbox-dev/sailbox/devices/virtio"
)

// StateVersion is the version of State that Save writes and Restore
// accepts.
const StateVersion = 1

// State is a block device's state: its configuration. The request loop's
// position is the request queue's, saved by the transport
// (virtio.MMIOState); the image's contents are the caller's to snapshot,
// while the device is paused.
type State struct {
	Version  uint32 // StateVersion
	ReadOnly bool
	// Capacity is the image's size in sectors, as the guest read it:
	// the backend given to Restore must have this size.
	Capacity uint64
	// ID is the device ID string (Config.ID).
	ID string
}

var (
	_ virtio.Persistent = (*Block)(nil)
	_ virtio.Pauser     = (*Block)(nil)
)

// Save returns the device's state. It only reads configuration fixed by
// New, so it may be called at any time; the state is consistent with the
// queue's and the image's once the device is paused.
func (b *Block) Save() State {
	return State{
		Version:  StateVersion,
		ReadOnly: b.readOnly,
		Capacity: b.capacity,
		ID:       string(bytes.TrimRight(b.id[:], "\x00")),
	}
}

// SaveState implements virtio.Persistent.
func (b *Block) SaveState() (json.RawMessage, error) { return json.Marshal(b.Save()) }

// Restore returns a block device in state st on be, the image as it was
// when st was saved. Like New, it owns be from then on.
func Restore(st State, be Backend) (*Block, error) {
	if err := devices.CheckStateVersion("virtio-blk", st.Version, StateVersion); err != nil {
		return nil, err
	}
	if err := checkID(st.ID); err != nil {
		return nil, fmt.Errorf("virtio-blk: restore: %w: %w", devices.ErrInvalidState, err)
	}
	if size := be.Size(); size < 0 || size%SectorSize != 0 || uint64(size)/SectorSize != st.Capacity {
		return nil, fmt.Errorf("virtio-blk: restore: image of %d bytes for a saved capacity of %d sectors: %w", size, st.Capacity, devices.ErrInvalidState)
	}
	return New(be, Config{ReadOnly: st.ReadOnly, ID: st.ID})
}

// pauseRequest asks the request loop to park (Pause).
type pauseRequest struct {
	parked chan<- struct{} // closed once the loop is parked
	resume <-chan struct{} // closed to let it go on
}

// Pause implements virtio.Pauser: it waits for the request loop to finish
// the request it is running and every other request the driver made
// available, and parks it until Resume. A parked loop touches neither
// guest memory nor the image, so both can be snapshotted. Pausing a
// paused device does nothing. A Reset or Close while paused ends the
// pause; an Activate while paused starts an unpaused loop.
func (b *Block) Pause() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.resume != nil {
		return nil
	}
	resume := make(chan struct{})
	if b.worker != nil {
		parked := make(chan struct{})
		b.worker.pause <- pauseRequest{parked: parked, resume: resume}
		<-parked
	}
	b.resume = resume
	return nil
}

// Resume implements virtio.Pauser.
func (b *Block) Resume() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.resume != nil {
		close(b.resume)
		b.resume = nil
	}
}

// park drains the queue, reports the loop parked and waits for p.resume.
// It reports false if the loop was stopped meanwhile.
func (w *worker) park(p pauseRequest) bool {
	ok := w.drain()
	close(p.parked)
	if !ok {
		return false
	}
	select {
	case <-p.resume:
		return true
	case <-w.stop:
		return false
	}
}
