package vmm

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sailbox-dev/sailbox/devices/virtio"
	virtionet "github.com/sailbox-dev/sailbox/devices/virtio/net"
)

// A checkpoint with a network device is restored only with a network
// socket, and one that can be connected; each refusal says why.
func TestRestoreNetNeedsSocket(t *testing.T) {
	dev, err := json.Marshal(virtionet.State{Version: virtionet.StateVersion, MAC: "5a:94:ef:e4:0c:ee"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(virtio.MMIOState{Version: virtio.MMIOStateVersion, DeviceType: virtio.TypeNet, Device: dev})
	if err != nil {
		t.Fatal(err)
	}
	man := withSection(sectionMMIO(0), b)
	ss := slotState{Kind: kindNet, Base: mmioBase(0), GSI: deviceIRQs[0]}

	m := &Machine{}
	err = m.restoreSlot(RestoreConfig{}, man, 0, ss)
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "network socket") || !strings.Contains(err.Error(), "-net") {
		t.Errorf("restore without a network socket: %v", err)
	}

	dir, err := os.MkdirTemp("", "vmmnet")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	missing := filepath.Join(dir, "net.sock")
	m = &Machine{}
	err = m.restoreSlot(RestoreConfig{NetSocketPath: missing}, man, 0, ss)
	if err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("restore with a socket nobody listens on: %v", err)
	}
	if len(m.closers) != 0 || m.cfg.Net != nil {
		t.Errorf("a failed restore kept %d closers, network %+v", len(m.closers), m.cfg.Net)
	}
}

// The network device is the last of the VMM's own kinds: a boot places
// it after the disks, entropy and vsock, so eth0's slot never moves the
// others' (a checkpoint records each slot's kind and place).
func TestNetIsPlacedLast(t *testing.T) {
	if k := mmioKinds[len(mmioKinds)-1].kind; k != kindNet {
		t.Errorf("last kind %q, want %q", k, kindNet)
	}
	if _, ok := (&Machine{}).NetStats(); ok {
		t.Error("a machine without a network device has its counters")
	}
}
