package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/sailbox-dev/sailbox/internal/catalog"
)

// Templates: create is a restore. The first create of a spec boots a
// guest for it once, waits for its agent, checkpoints it and stops it;
// that template checkpoint is kept, and every create of the same spec
// restores a new box from it as a fork (its own hostname, machine-id,
// entropy and clock). A created box therefore has a completed checkpoint
// from its first second, the template's: after a host failure it comes
// back from it, never lost for want of one.
//
// A template's ID is a digest of all a boot depends on: the spec (image,
// root image config, memory, vCPUs, disk size, whether it has a network
// device), the image file's size and modification time, and the
// backend's BootIdentity (kernel, initramfs, command line, VMM). A box of
// another shape gets a template of its own; a template made for a kernel
// or agent no longer configured is forgotten at the next start, and its
// checkpoint freed once no box builds on it. A box's egress policy is not
// part of it (catalog.Spec.TemplateSpec): the template's guest boots with
// its network device on a network that refuses every connection, and
// each box restored from it gets a network of its own under its own
// policy.

// templateID returns the ID of spec's template under the backend's
// current boot identity: the same for every spec with the same
// TemplateSpec, and for the TemplateSpec itself.
func (m *Manager) templateID(spec catalog.Spec) (string, error) {
	ident, err := m.be.BootIdentity()
	if err != nil {
		return "", fmt.Errorf("template: %w", err)
	}
	spec = spec.TemplateSpec()
	h := sha256.New()
	enc := json.NewEncoder(h)
	if err := enc.Encode(spec); err != nil {
		return "", fmt.Errorf("template: %w", err)
	}
	fmt.Fprintf(h, "boot %s\n", ident)
	if spec.Image != "" {
		fi, err := os.Stat(spec.Image)
		if err != nil {
			return "", fmt.Errorf("template: image: %w", err)
		}
		fmt.Fprintf(h, "image %d %d\n", fi.Size(), fi.ModTime().UnixNano())
	}
	return "tpl-" + hex.EncodeToString(h.Sum(nil))[:16], nil
}

// template returns spec's template, making it when there is none yet.
// Concurrent creates of one spec wait for one boot.
func (m *Manager) template(ctx context.Context, spec catalog.Spec) (catalog.Template, error) {
	id, err := m.templateID(spec)
	if err != nil {
		return catalog.Template{}, err
	}
	unlock := m.lock(id)
	defer unlock()
	var tp catalog.Template
	err = m.cat.View(func(tx *catalog.Tx) error {
		tp, err = tx.Template(id)
		return err
	})
	switch {
	case err == nil && tp.Checkpoint != "":
		return tp, nil
	case err != nil && !errors.Is(err, catalog.ErrNotFound):
		return tp, fmt.Errorf("template %s: %w", id, err)
	}
	return m.makeTemplate(ctx, id, spec.TemplateSpec())
}

// makeTemplate boots template id for spec, checkpoints it and stops its
// VM. Like a box's create, it is recorded first (without a checkpoint)
// and undone if it fails; Start undoes what a crash left.
func (m *Manager) makeTemplate(ctx context.Context, id string, spec catalog.Spec) (catalog.Template, error) {
	start := time.Now()
	tp := catalog.Template{ID: id, Spec: spec, Created: start.UTC()}
	// The checkpoint's ID is new each time: a template remade after the
	// store lost it must not take the old checkpoint's name, which boxes
	// may still hold.
	ck := catalog.Checkpoint{ID: id + "-" + strconv.FormatInt(start.UnixMilli(), 36), BoxID: id, Created: tp.Created}
	release, err := m.admit("template "+id, spec.MemoryMiB)
	if err != nil {
		return tp, err
	}
	defer release()
	err = m.cat.Update(func(tx *catalog.Tx) error {
		if err := tx.PutTemplate(tp); err != nil {
			return err
		}
		return tx.PutCheckpoint(ck)
	})
	if err != nil {
		return tp, fmt.Errorf("template %s: %w", id, err)
	}
	m.log.Info("making a template: booting its guest once", "template", id, "memory_mib", spec.MemoryMiB, "vcpus", spec.VCPUs, "image", spec.Image)
	inst, err := m.be.Boot(ctx, id, spec)
	var info CheckpointInfo
	if err == nil {
		info, err = m.be.Checkpoint(ctx, id, ck.ID)
	}
	if serr := m.be.Stop(ctx, id); err == nil && serr != nil {
		err = serr
	}
	if err == nil {
		tp.Checkpoint, tp.GuestSchemaVersion = ck.ID, inst.GuestSchemaVersion
		ck.Completed = true
		if !info.Created.IsZero() {
			ck.Created = info.Created.UTC()
		}
		err = m.cat.Update(func(tx *catalog.Tx) error {
			if err := tx.PutCheckpoint(ck); err != nil {
				return err
			}
			return tx.PutTemplate(tp)
		})
	}
	if err != nil {
		m.dropTemplate(ctx, id)
		return tp, fmt.Errorf("template %s: %w", id, err)
	}
	m.log.Info("template made", "template", id, "checkpoint", ck.ID, "took", time.Since(start).Round(time.Millisecond))
	return tp, nil
}

// dropTemplate forgets template id: its VM, if one runs, is stopped, its
// record deleted, and its checkpoints freed unless a box builds on them.
// What fails is logged; the next start retries.
func (m *Manager) dropTemplate(ctx context.Context, id string) {
	ctx = context.WithoutCancel(ctx)
	if err := m.be.Stop(ctx, id); err != nil {
		m.log.Warn("cannot stop a template's VM", "template", id, "err", err)
	}
	err := m.cat.Update(func(tx *catalog.Tx) error {
		all, err := tx.Checkpoints()
		if err != nil {
			return err
		}
		for _, c := range all {
			// A checkpoint that never completed is debris; a completed
			// one is freed by collect once unreferenced.
			if c.BoxID == id && !c.Completed {
				if err := tx.DeleteCheckpoint(c.ID); err != nil {
					return err
				}
			}
		}
		if err := tx.DeleteTemplate(id); err != nil && !errors.Is(err, catalog.ErrNotFound) {
			return err
		}
		return nil
	})
	if err != nil {
		m.log.Warn("cannot delete a template's record; the next start does", "template", id, "err", err)
	}
	if _, err := m.collect(ctx); err != nil {
		m.log.Warn("freeing a template's checkpoints failed", "template", id, "err", err)
	}
}

// settleTemplates, at start, forgets the templates a crash left unmade
// and those made for a boot the backend no longer does (another kernel,
// initramfs or VMM), stopping any VM one left.
func (m *Manager) settleTemplates(ctx context.Context) error {
	var tps []catalog.Template
	if err := m.cat.View(func(tx *catalog.Tx) error {
		var err error
		tps, err = tx.Templates()
		return err
	}); err != nil {
		return fmt.Errorf("templates: %w", err)
	}
	for _, tp := range tps {
		cur, err := m.templateID(tp.Spec)
		switch {
		case tp.Checkpoint == "":
			m.log.Warn("removing a template whose making did not finish", "template", tp.ID)
		case err != nil || cur != tp.ID:
			m.log.Info("forgetting a template made for another boot (kernel, agent, VMM or image changed)", "template", tp.ID, "err", err)
		default:
			continue
		}
		m.dropTemplate(ctx, tp.ID)
	}
	return nil
}
