// Package snapshot is Sailbox's on-disk checkpoint format: the manifest
// that describes a checkpoint, the store (Root) that makes checkpoints
// durable and atomic, and the restore side that checks compatibility and
// reopens memory and disks. Its sub-packages hold the pieces:
//
//   - memlayer: memory layers (pages dirtied since the previous layer,
//     mappable in place) and the chain planner a restore mmaps by;
//   - disklayer: layered virtual disks (base image, sealed layers, one
//     writable top per box) and the Disk the virtio-blk device uses;
//   - layerstore: where layer files rest (plain or zstd-compressed), and
//     storetest, the suite every store passes.
//
// FORMAT.md describes the files and the compatibility policy.
//
// # Taking a checkpoint (the VMM, with the vCPUs paused for the dirty log)
//
//	root, _ := snapshot.OpenRoot("/var/lib/sailbox", nil)
//	p, _ := root.Begin("box1-c7")
//	w, _ := memlayer.Create(p.StagingPath("memory"))
//	_ = w.WriteDirty(0, dirtyBitmap, readGuestPages) // pages dirtied since c6
//	info, _ := w.Finish()                            // info.DataBytes: what it cost
//	mem, _ := p.AddMemoryLayer("box1-c7-mem", info)
//	sealed, _ := disk.Seal(root.TopPath("box1-vda-8")) // no copy; I/O continues on the new top
//	vda, _ := p.AddDiskLayer("box1-c7-vda", sealed)
//	host, _ := snapshot.HostCPU()
//	m := &snapshot.Manifest{
//		ID: "box1-c7", Parent: "box1-c6", Created: time.Now(),
//		VMMVersion: version, GuestSchemaVersion: agentSchema,
//		HostCPU: host, CPUID: guestCPUID, MemorySize: memSize, VCPUs: 2,
//		Memory: append(prev.Memory, mem),
//		Disks:  map[string]snapshot.DiskChain{"vda": {Base: img, BaseSize: imgSize, Size: size, Layers: append(prev.Disks["vda"].Layers, vda)}},
//		State:  map[string][]byte{"machine": shape, "vcpu/0": vcpu0, "dev/mmio/0": blk},
//	}
//	err := p.Commit(m) // layers stored, then the manifest: now the checkpoint exists
//	// on any error: p.Abort()
//
// # Restoring or forking
//
//	m, _ := root.Load("box1-c7")
//	if err := m.Compatible(host); err != nil { ... }          // vendor/family/model
//	if err := m.CompatibleCPUID(kvmSupported); err != nil { ... }
//	chain, _ := root.OpenMemory(m)
//	maps, _ := memlayer.Plan(chain, m.MemorySize)
//	// mmap each run MAP_PRIVATE|MAP_FIXED over the anonymous guest memory
//	disk, _ := root.OpenDisk(m, "vda", root.TopPath("box2-vda-1"))
//	// decode m.State["vcpu/0"]... with each part's restore constructor
//
// # Maintenance
//
//	removed, _ := root.Clean()               // on daemon start: debris of crashed checkpoints
//	_, _ = root.Compact("box1-c7", "box1-c7z") // long chains into one layer each
//
// Errors: a file of an unsupported version matches ErrIncompatibleVersion
// (a *VersionError naming both versions), a damaged or truncated one
// ErrCorrupt (a *CorruptError naming the section), a host that cannot run
// the checkpoint ErrIncompatibleHost (a *HostError naming the reason).
package snapshot
