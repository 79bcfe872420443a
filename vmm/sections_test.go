package vmm

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/sailbox-dev/sailbox/devices"
	"github.com/sailbox-dev/sailbox/snapshot"
)

var update = flag.Bool("update", false, "rewrite the current version's golden files in testdata")

// ownSections are the VMM's own sections: how each decodes, and how
// today's writer encodes a decoded value.
var ownSections = []struct {
	name    string // testdata/<name>-v<N>.golden
	id      string
	current uint32
	decode  func(*snapshot.Manifest) (any, error)
	encode  func(any) any // the section Checkpoint writes for a decoded value
}{
	{"machine", sectionMachine, machineStateVersion,
		func(m *snapshot.Manifest) (any, error) { return decodeMachine(m) },
		func(v any) any { s := v.(machineState); s.Version = machineStateVersion; return s }},
	{"vm", sectionVM, vmStateVersion,
		func(m *snapshot.Manifest) (any, error) { return decodeVM(m) },
		func(v any) any { return vmSection{Version: vmStateVersion, VMState: v.(VMState)} }},
	{"vcpu", sectionVCPU(0), vcpuStateVersion,
		func(m *snapshot.Manifest) (any, error) { return decodeVCPU(m, 0) },
		func(v any) any { return vcpuSection{Version: vcpuStateVersion, VCPUState: v.(VCPUState)} }},
}

func withSection(id string, b []byte) *snapshot.Manifest {
	return &snapshot.Manifest{State: map[string][]byte{id: b}}
}

// Every version of the VMM's own sections still decodes, to the same
// value, and today's writer reproduces the current version's golden
// file byte for byte: a change to VCPUState, VMState or machineState
// that would break old checkpoints, or change the bytes without a
// version bump, fails here.
func TestOwnSectionsGolden(t *testing.T) {
	for _, s := range ownSections {
		t.Run(s.name, func(t *testing.T) {
			read := func(v int) []byte {
				t.Helper()
				b, err := os.ReadFile(filepath.Join("testdata", s.name+"-v"+string(rune('0'+v))+".golden"))
				if err != nil {
					t.Fatal(err)
				}
				return b
			}
			old, err := s.decode(withSection(s.id, read(0)))
			if err != nil {
				t.Fatalf("version 0 (before sections had versions): %v", err)
			}
			if reflect.ValueOf(old).IsZero() {
				t.Fatal("version 0 decodes to a zero value")
			}
			fresh, err := encodeSection(s.id, s.encode(old))
			if err != nil {
				t.Fatal(err)
			}
			current := filepath.Join("testdata", s.name+"-v"+string(rune('0'+s.current))+".golden")
			if *update {
				if err := os.WriteFile(current, fresh, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if golden := read(int(s.current)); !bytes.Equal(fresh, golden) {
				t.Errorf("the writer's output differs from %s: the section changed; bump its version and keep the old golden file", current)
			}
			cur, err := s.decode(withSection(s.id, read(int(s.current))))
			if err != nil {
				t.Fatalf("version %d: %v", s.current, err)
			}
			if !reflect.DeepEqual(s.encode(cur), s.encode(old)) {
				t.Errorf("version %d decodes to %+v, version 0 to %+v", s.current, cur, old)
			}
		})
	}
}

// A section from a newer VMM (a higher version, or a field this one does
// not know), a damaged one and a missing one are refused by name, never
// half-read.
func TestOwnSectionsRefuse(t *testing.T) {
	for _, s := range ownSections {
		golden, err := os.ReadFile(filepath.Join("testdata", s.name+"-v1.golden"))
		if err != nil {
			t.Fatal(err)
		}
		newer := bytes.Replace(golden, []byte(`{"Version":1`), []byte(`{"Version":2`), 1)
		if bytes.Equal(newer, golden) {
			t.Fatalf("%s: the golden file does not start with its version", s.name)
		}
		for what, b := range map[string][]byte{
			"a newer version":  newer,
			"an unknown field": bytes.Replace(golden, []byte(`{"Version":1`), []byte(`{"Version":1,"Novel":true`), 1),
			"truncated":        golden[:len(golden)/2],
			"trailing data":    append(bytes.Clone(golden), []byte(` {}`)...),
		} {
			_, err := s.decode(withSection(s.id, b))
			if !errors.Is(err, devices.ErrInvalidState) || !strings.Contains(err.Error(), s.id) {
				t.Errorf("%s, %s: %v; want ErrInvalidState naming %q", s.name, what, err, s.id)
			}
		}
		if _, err := s.decode(&snapshot.Manifest{}); !errors.Is(err, devices.ErrInvalidState) || !strings.Contains(err.Error(), s.id) {
			t.Errorf("%s missing: %v", s.name, err)
		}
	}
}

// The device table names each kind once, and a restore refuses a kind it
// does not know instead of skipping the slot.
func TestDeviceTable(t *testing.T) {
	seen := map[deviceKind]bool{kindExtra: true}
	for _, k := range mmioKinds {
		if seen[k.kind] {
			t.Errorf("kind %q twice (or the extra devices' kind)", k.kind)
		}
		seen[k.kind] = true
		if got, ok := lookupMMIOKind(k.kind); !ok || got.kind != k.kind {
			t.Errorf("lookup %q: %v", k.kind, ok)
		}
	}
	if _, ok := lookupMMIOKind(kindExtra); ok {
		t.Error("the extra devices' kind has a restore")
	}
	sections := map[string]bool{}
	for _, p := range platformDevices {
		if sections[p.section] || !strings.HasPrefix(p.section, "dev/") {
			t.Errorf("platform section %q repeated or outside dev/", p.section)
		}
		sections[p.section] = true
	}
	m := &Machine{}
	err := m.restoreSlot(RestoreConfig{}, &snapshot.Manifest{}, 0, slotState{Kind: "virtio-gpu", Base: mmioBase(0), GSI: deviceIRQs[0]})
	if !errors.Is(err, devices.ErrInvalidState) || !strings.Contains(err.Error(), "virtio-gpu") {
		t.Errorf("unknown kind: %v", err)
	}
}
