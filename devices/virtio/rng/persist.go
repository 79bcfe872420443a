package rng

import (
	"encoding/json"

	"github.com/sailbox-dev/sailbox/devices"
	"github.com/sailbox-dev/sailbox/devices/virtio"
)

// StateVersion is the version of State that Save writes and Restore
// accepts.
const StateVersion = 1

// State is an entropy device's state. The device has no configuration and
// keeps nothing between requests: what there is to save is the request
// queue's, saved by the transport (virtio.MMIOState). No random bytes are
// saved: a restored device, and every fork of it, draws fresh ones from
// the host.
type State struct {
	Version uint32 // StateVersion
}

var _ virtio.Persistent = (*Entropy)(nil)

// Save returns the device's state. The device serves requests on the
// kicking vCPU, under the transport's lock, so with the vCPUs paused it
// is quiescent: it needs no Pause.
func (e *Entropy) Save() State { return State{Version: StateVersion} }

// SaveState implements virtio.Persistent.
func (e *Entropy) SaveState() (json.RawMessage, error) { return json.Marshal(e.Save()) }

// Restore returns an entropy device in state st.
func Restore(st State) (*Entropy, error) {
	if err := devices.CheckStateVersion("virtio-rng", st.Version, StateVersion); err != nil {
		return nil, err
	}
	return New(), nil
}
