// Package vmmapi is the control API of one sailbox-vmm process: JSON over
// HTTP on a per-VM Unix socket. The daemon (and operators with curl
// --unix-socket) use it to watch and stop the VM.
//
//	GET  /status      → Status
//	POST /shutdown    → 202; the VM stops and the process exits 0
//	POST /pause       → 204; every vCPU and device stops
//	POST /resume      → 204
//	POST /checkpoint  CheckpointRequest → CheckpointResult (the VM keeps running)
//	GET  /vcpus       → VCPUs: where each vCPU is, for a guest that stopped
//	                  answering (the VM pauses for a moment)
//	POST /working-set → WorkingSetResult: a restored VM records the pages its
//	                  guest used since the restore, for later restores of its
//	                  checkpoint to map ahead (409 for a booted VM)
//
// Errors are JSON {"error": "..."} with a 4xx/5xx status: 400 for a
// malformed request, 409 for a call the VM's state does not allow (pause
// of a paused VM, checkpoint without a store, an existing checkpoint ID).
// The server maps errors to statuses in one place (statusOf); the client
// returns every refusal as an *Error, which matches ErrConflict or
// ErrBadRequest by its status.
//
// How a sailbox-vmm process is started is part of the contract too: a
// Launch, whose Args are the flags the VMM parses back (ParseLaunch).
package vmmapi

import (
	"time"

	"github.com/sailbox-dev/sailbox/api"
)

// Status describes the VM.
type Status struct {
	State     string    `json:"state"` // "running" or "stopping"
	VCPUs     int       `json:"vcpus"`
	MemoryMiB int       `json:"memory_mib"`
	StartedAt time.Time `json:"started_at"`
	PID       int       `json:"pid"`
	// Memory is the VMM process's resident memory split at guest RAM;
	// nil if the VMM could not read it (or is older than the field).
	Memory *MemoryUsage `json:"memory,omitempty"`
	// WorkingSet is what the VM's restore mapped of a recorded working
	// set before its guest ran; nil for a booted VM, a restore that found
	// none, or a VMM older than the field.
	WorkingSet *MappedAhead `json:"working_set,omitempty"`
	// Network is the counters of the VM's network device; nil for a VM
	// without one (or from a VMM older than the field).
	Network *NetworkStats `json:"network,omitempty"`
}

// MappedAhead is what a restore mapped of a working set before its guest
// ran, in guest pages (vmm.MappedAhead).
type MappedAhead struct {
	// From is the checkpoint the working set was recorded for: the one
	// restored or an ancestor.
	From    string `json:"from"`
	Pages   uint64 `json:"pages"`   // pages the working set names
	Copied  uint64 `json:"copied"`  // written pages copied for this VM
	Entered uint64 `json:"entered"` // pages entered in KVM's page tables (0 without KVM_PRE_FAULT_MEMORY)
}

// NetworkStats are the counters of a VM's network device (virtio-net)
// since the VMM built it: a restored or forked VM's start from zero. They
// are the public API's type (api.NetworkDeviceStats, which sailboxd passes
// on as its VMM reports it), so the two cannot drift apart.
type NetworkStats = api.NetworkDeviceStats

// MemoryUsage is a VMM process's resident memory in bytes, from the
// kernel's accounting of its mappings (/proc/self/smaps).
type MemoryUsage struct {
	// GuestResident is guest RAM in host memory; page-cache pages of a
	// restored checkpoint's layers, which forks share, count whole.
	GuestResident uint64 `json:"guest_resident"`
	// GuestPrivate is guest RAM only this VMM holds: pages the guest
	// wrote since its restore, or all it touched since its boot.
	GuestPrivate uint64 `json:"guest_private"`
	// VMMResident is the Rss of every other mapping: the VMM's own memory
	// (binary, heap, stacks, device buffers), counted as Firecracker's
	// memory cop counts its overhead (RSS outside guest memory).
	VMMResident uint64 `json:"vmm_resident"`
	// VMMPrivate is the part of VMMResident no other process shares: it
	// leaves out the binary's text, which every VMM maps.
	VMMPrivate uint64 `json:"vmm_private"`
	// VMMFiles is the part of VMMResident mapped from files: the
	// binary's pages, which every VMM on a host shares from one
	// page-cache copy.
	VMMFiles uint64 `json:"vmm_files"`
	// Proportional is the whole process's Pss: shared pages divided among
	// the processes mapping them, so that summed over VMMs each page
	// counts once.
	Proportional uint64 `json:"proportional"`
	// Go is the Go runtime's account of the memory it mapped; nil from
	// a VMM older than the field.
	Go *GoMemory `json:"go,omitempty"`
}

// GoMemory is where a VMM's Go runtime says its memory goes, in bytes
// (runtime/metrics' /memory/classes): what it mapped, which is resident
// unless released.
type GoMemory struct {
	HeapObjects uint64 `json:"heap_objects"` // live objects, and dead ones not yet swept
	// HeapFree is heap the runtime holds free and has not returned to
	// the OS (heap/free and heap/unused): resident if it was ever used.
	HeapFree     uint64 `json:"heap_free"`
	HeapReleased uint64 `json:"heap_released"` // returned to the OS: not resident
	Stacks       uint64 `json:"stacks"`        // goroutine and OS thread stacks
	Other        uint64 `json:"other"`         // the runtime's metadata, profiling buckets and the rest
	// HeapGoal is the heap size at which the next collection ends
	// (/gc/heap/goal): how far the heap may grow, and its pages become
	// resident, before garbage is collected. Not part of the sum above.
	HeapGoal uint64 `json:"heap_goal,omitempty"`
}

// CheckpointRequest names the checkpoint to write in the VMM's store.
type CheckpointRequest struct {
	ID string `json:"id"`
}

// CheckpointResult describes a completed checkpoint and what it cost.
type CheckpointResult struct {
	ID          string    `json:"id"`
	Parent      string    `json:"parent,omitempty"`
	Created     time.Time `json:"created"`
	Pages       uint64    `json:"pages"`        // guest pages in its memory layer
	PageBytes   int64     `json:"page_bytes"`   // their bytes
	LayerBytes  int64     `json:"layer_bytes"`  // the memory layer file
	PausedPages uint64    `json:"paused_pages"` // pages copied while the guest was stopped
	DiskBytes   int64     `json:"disk_bytes"`   // disk blocks sealed
	PauseNanos  int64     `json:"pause_ns"`     // how long the guest was stopped
	TotalNanos  int64     `json:"total_ns"`
	// PauseParts is where the pause went; nil from a VMM that does not
	// report it.
	PauseParts *PauseParts `json:"pause_parts,omitempty"`
}

// PauseParts is where a checkpoint's pause went, in nanoseconds: the
// parts of the step the guest was stopped for, one after the other, so
// that they sum to at most CheckpointResult.PauseNanos.
type PauseParts struct {
	StopNanos       int64 `json:"stop_ns"`        // stopping every vCPU and device
	DirtyLogNanos   int64 `json:"dirty_log_ns"`   // fetching and clearing the dirty log
	CopyNanos       int64 `json:"copy_ns"`        // copying the pages dirtied since the first copy
	VMStateNanos    int64 `json:"vm_state_ns"`    // saving the irqchip, PIT and clock
	VCPUStateNanos  int64 `json:"vcpu_state_ns"`  // saving every vCPU
	DevicesNanos    int64 `json:"devices_ns"`     // saving every device
	DiskSwitchNanos int64 `json:"disk_switch_ns"` // switching each layered disk to a new top
	ResumeNanos     int64 `json:"resume_ns"`      // letting the guest run again
}

// VCPUs describes where each vCPU is: registers, pending interrupts and
// events, in words for a person (no stable format).
type VCPUs struct {
	Description string `json:"description"`
}

// WorkingSetResult says whether the VM's working set was recorded: false
// when its checkpoint had one already (the first recorded stays).
type WorkingSetResult struct {
	Saved bool `json:"saved"`
}
