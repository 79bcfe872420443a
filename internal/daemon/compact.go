package daemon

import (
	"context"

	"github.com/sailbox-dev/sailbox/internal/catalog"
)

// Chain compaction. Every pause and sleep adds a checkpoint to a box's
// chain, with a memory layer and a layer of each disk, and every layer
// of the chain stays in the store while the box lives: a box that sleeps
// and wakes all day would build a chain hundreds of layers deep (each
// wake maps every one of them, and the store holds the pages each wake
// wrote, again and again). So once the box's own part of its chain (the
// checkpoints above the template or fork base it started from, which
// other boxes share) is longer than Config.CompactAfter, the pause or
// sleep that made it so merges that part into one checkpoint on the
// same base (Backend.Compact), the box's last from then on, and the old
// ones go unless another box's chain holds them (a fork's does).
//
// It runs while the box runs no VM, which is why only pauses and sleeps
// compact: a running VMM builds its next checkpoint on the chain it has.
// A compaction that fails leaves the box on its old chain, and a crash
// in the middle leaves a completed checkpoint that recovery promotes but
// does not make the box's (its parent is not the box's head): collection
// frees it.

// DefaultCompactAfter is how many of its own checkpoints a box's chain
// holds before a pause or sleep compacts them when sailboxd is not told
// otherwise (-compact-after; 0 turns compaction off): a wake then maps at
// most that many layers above the base, and the store holds at most that
// many copies of the pages each wake rewrites.
//
// Every compaction ends in a collection, whose store Clean runs beside
// other boxes' commits: it decides what is debris holding the writer's
// lock (snapshot.Root.cleanCheckpointDir), as a compacted checkpoint the
// KVM lab's load test lost taught.
const DefaultCompactAfter = 8

// compactChain compacts stopped box b's own checkpoints into one if there
// are more than m.compactAt of them, and frees what that leaves
// unreferenced. It only logs a failure: b is consistent either way.
func (m *Manager) compactChain(ctx context.Context, b *catalog.Box) {
	var chain []catalog.Checkpoint
	if err := m.cat.View(func(tx *catalog.Tx) error {
		var err error
		chain, err = tx.Chain(b.ID)
		return err
	}); err != nil {
		m.log.Warn("cannot read a box's chain to compact it", "box", b.ID, "err", err)
		return
	}
	own := 0
	for own < len(chain) && chain[own].BoxID == b.ID {
		own++
	}
	if m.compactAt <= 0 || own <= m.compactAt {
		return
	}
	from, base := chain[0].ID, ""
	if own < len(chain) {
		base = chain[own].ID
	}
	ck, err := m.beginCheckpointOn(b, base)
	if err != nil {
		m.log.Warn("cannot compact a box's chain", "box", b.ID, "err", err)
		return
	}
	info, err := m.be.Compact(ctx, from, ck.ID, base)
	if err != nil {
		m.abortCheckpoint(ck.ID)
		m.log.Warn("cannot compact a box's chain", "box", b.ID, "from", from, "base", base, "err", err)
		return
	}
	if _, err := m.completeCheckpoint(b, ck, info, nil); err != nil {
		m.log.Warn("cannot record a box's compacted chain; the next start frees it", "box", b.ID, "checkpoint", ck.ID, "err", err)
		return
	}
	freed, err := m.collect(ctx)
	if err != nil {
		m.log.Warn("freeing a compacted chain's checkpoints failed; the next collection does", "box", b.ID, "err", err)
	}
	m.log.Info("chain compacted", "box", b.ID, "checkpoints", own, "into", ck.ID, "base", base, "bytes", info.Bytes, "freed", len(freed))
}
