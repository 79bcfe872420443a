package vmm

import (
	"encoding/json"
	"fmt"

	"github.com/sailbox-dev/sailbox/devices"
	"github.com/sailbox-dev/sailbox/snapshot"
)

// A checkpoint's state sections (snapshot.Manifest.State) and their
// encodings. The VMM owns the machine, VM and vCPU sections; each device's
// section holds its package's State (see the device table). Every section
// carries a version and is decoded strictly: a field this VMM does not
// know (a section written by a newer one) is refused, never dropped.
//
// Version 0 is an encoding from before the VMM's own sections carried a
// version: the same fields as version 1 with no "Version" field. It stays
// readable (snapshot/FORMAT.md, policy 4); testdata/*-v0.golden hold it.

// Section IDs. Device sections are keyed by what the device is and where
// it sits, which a restore rebuilds identically.
const (
	sectionMachine = "machine"
	sectionVM      = "vm"
)

func sectionVCPU(id int) string { return fmt.Sprintf("vcpu/%d", id) }
func sectionMMIO(i int) string  { return fmt.Sprintf("dev/mmio/%d", i) }

// Versions of the VMM's own sections that Checkpoint writes; a restore
// reads 0 to these.
const (
	machineStateVersion = 1
	vmStateVersion      = 1
	vcpuStateVersion    = 1
)

// machineState is the shape of the machine: what a restore must build
// before it can load the other sections into it.
type machineState struct {
	Version     uint32 // machineStateVersion
	MemoryBytes uint64
	VCPUs       int
	Slots       []slotState // the MMIO window, in order
}

// slotState is one device of the MMIO window.
type slotState struct {
	Kind deviceKind
	Base uint64
	GSI  uint32
	Disk string `json:",omitempty"` // kindBlock: the disk's ID in the manifest
}

// vmSection and vcpuSection are the VM and vCPU states as sections: a
// version, then the state's own fields.
type vmSection struct {
	Version uint32 // vmStateVersion
	VMState
}

type vcpuSection struct {
	Version uint32 // vcpuStateVersion
	VCPUState
}

// encodeSection is the payload of a section.
func encodeSection(id string, v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode state section %s: %w", id, err)
	}
	return b, nil
}

// decodeSection decodes section id of man, which must exist, strictly
// (devices.DecodeState): errors wrap devices.ErrInvalidState.
func decodeSection(man *snapshot.Manifest, id string, v any) error {
	b, ok := man.State[id]
	if !ok {
		return fmt.Errorf("no state section %q: %w", id, devices.ErrInvalidState)
	}
	return devices.DecodeState(id, b, v)
}

// decodeOwnSection decodes one of the VMM's own sections and checks its
// version is at most current.
func decodeOwnSection(man *snapshot.Manifest, id string, v any, version *uint32, current uint32) error {
	if err := decodeSection(man, id, v); err != nil {
		return err
	}
	if *version > current {
		return fmt.Errorf("%s: state version %d, this VMM reads 0 to %d: %w", id, *version, current, devices.ErrInvalidState)
	}
	return nil
}

func decodeMachine(man *snapshot.Manifest) (machineState, error) {
	var s machineState
	err := decodeOwnSection(man, sectionMachine, &s, &s.Version, machineStateVersion)
	return s, err
}

func decodeVM(man *snapshot.Manifest) (VMState, error) {
	var s vmSection
	err := decodeOwnSection(man, sectionVM, &s, &s.Version, vmStateVersion)
	return s.VMState, err
}

func decodeVCPU(man *snapshot.Manifest, id int) (VCPUState, error) {
	var s vcpuSection
	err := decodeOwnSection(man, sectionVCPU(id), &s, &s.Version, vcpuStateVersion)
	return s.VCPUState, err
}
