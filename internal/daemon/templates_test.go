package daemon_test

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/catalog"
	"github.com/sailbox-dev/sailbox/internal/daemon/fakebackend"
)

func newTemplateEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, path: filepath.Join(t.TempDir(), "catalog.db"), fake: fakebackend.New(2), ctx: t.Context(), templates: true}
	e.open()
	t.Cleanup(e.close)
	return e
}

// templateRecords returns the template records.
func (e *env) templateRecords() []catalog.Template {
	e.t.Helper()
	var tps []catalog.Template
	if err := e.cat.View(func(tx *catalog.Tx) error {
		var err error
		tps, err = tx.Templates()
		return err
	}); err != nil {
		e.t.Fatal(err)
	}
	return tps
}

// calls returns the fake's calls whose method is one of methods.
func (e *env) calls(methods ...string) []string {
	var out []string
	for _, c := range e.fake.Calls() {
		if slices.Contains(methods, strings.Fields(c)[0]) {
			out = append(out, c)
		}
	}
	return out
}

// The first create of a spec boots its template once and checkpoints
// it; every create restores from that checkpoint as a new machine, with
// a completed checkpoint on its chain from its first instant.
func TestCreateRestoresFromTemplate(t *testing.T) {
	e := newTemplateEnv(t)
	a, b := e.create(), e.create()
	tps := e.templateRecords()
	if len(tps) != 1 || tps[0].Checkpoint == "" || !strings.HasPrefix(tps[0].ID, "tpl-") {
		t.Fatalf("templates %+v, want one made", tps)
	}
	tp := tps[0]
	want := []string{
		"Boot " + tp.ID, "Checkpoint " + tp.ID + " " + tp.Checkpoint, "Stop " + tp.ID,
		"Restore " + a.ID + " " + tp.Checkpoint, "Restore " + b.ID + " " + tp.Checkpoint,
	}
	if got := e.calls("Boot", "Checkpoint", "Stop", "Restore"); !slices.Equal(got, want) {
		t.Errorf("calls %q, want %q", got, want)
	}
	for _, box := range []api.Box{a, b} {
		if box.State != lifecycle.Running || box.ParentID != "" || box.GuestSchemaVersion != 2 {
			t.Errorf("created box %+v", box)
		}
		if out, _ := e.exec(box.ID, "hostname"); out != box.ID+"\n" {
			t.Errorf("box %s's hostname %q, want its own", box.ID, out)
		}
		cks, err := e.m.Checkpoints(e.ctx, box.ID)
		if err != nil || len(cks) != 1 || cks[0].ID != tp.Checkpoint || !cks[0].Completed {
			t.Errorf("box %s's chain %+v, %v: want the template's completed checkpoint", box.ID, cks, err)
		}
	}
	// The boxes are separate machines.
	e.exec(a.ID, "write", "/f", "a's")
	if out, _ := e.exec(b.ID, "cat", "/f"); out != "" {
		t.Errorf("b sees a's file: %q", out)
	}
	// A box's own checkpoint builds on the template's.
	ck, err := e.m.Checkpoint(e.ctx, a.ID)
	if err != nil || ck.ParentID != tp.Checkpoint {
		t.Errorf("checkpoint %+v, %v: want its parent the template's", ck, err)
	}
	// The template outlives its boxes, for the next create.
	for _, box := range []api.Box{a, b} {
		if _, err := e.m.Terminate(e.ctx, box.ID); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Contains(e.fake.Checkpoints(), tp.Checkpoint) || len(e.templateRecords()) != 1 {
		t.Errorf("template freed with its boxes: store %v", e.fake.Checkpoints())
	}
	if _, err := e.m.Get(e.ctx, tp.ID); err == nil {
		t.Errorf("a template answers as a box")
	}
}

// A box killed with the host right after its create comes back from its
// template's checkpoint, as itself.
func TestCreatedBoxSurvivesHostFailure(t *testing.T) {
	e := newTemplateEnv(t)
	b := e.create()
	e.close()
	e.fake.Kill(b.ID)
	e.open()
	if got := e.get(b.ID); got.State != lifecycle.Running {
		t.Fatalf("box after a host failure: %+v, want running", got)
	}
	if out, _ := e.exec(b.ID, "hostname"); out != b.ID+"\n" {
		t.Errorf("restored box's hostname %q", out)
	}
}

// Another memory size, vCPU count or image gets another template; the
// same spec shares one.
func TestTemplatePerSpec(t *testing.T) {
	e := newTemplateEnv(t)
	for _, req := range []api.CreateRequest{{}, {MemoryMiB: 512}, {}, {VCPUs: 2}, {MemoryMiB: 512}} {
		if _, err := e.m.Create(e.ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(e.templateRecords()); n != 3 {
		t.Errorf("%d templates, want 3", n)
	}
	if n := len(e.calls("Boot")); n != 3 {
		t.Errorf("%d boots, want 3", n)
	}
}

// A template that fails to be made leaves nothing: no template, no
// checkpoint, no VM, no box; the next create makes it.
func TestTemplateFailureLeavesNothing(t *testing.T) {
	e := newTemplateEnv(t)
	for _, method := range []string{"Boot", "Checkpoint"} {
		e.fake.FailNext(method, errors.New("lab on fire"))
		if _, err := e.m.Create(e.ctx, api.CreateRequest{}); err == nil || !strings.Contains(err.Error(), "lab on fire") {
			t.Errorf("create with a failing %s: %v", method, err)
		}
		boxes, cks := e.records()
		if len(boxes) != 0 || len(cks) != 0 || len(e.templateRecords()) != 0 || e.fake.RunningCount() != 0 || len(e.fake.Checkpoints()) != 0 {
			t.Errorf("after a failed %s: boxes %v, checkpoints %v, templates %v, %d VMs, store %v",
				method, boxes, cks, e.templateRecords(), e.fake.RunningCount(), e.fake.Checkpoints())
		}
	}
	e.create()
	if n := len(e.templateRecords()); n != 1 {
		t.Errorf("%d templates after a good create", n)
	}
}

// A restore from the template that fails leaves the template, and no box.
func TestRestoreFromTemplateFails(t *testing.T) {
	e := newTemplateEnv(t)
	e.fake.FailNext("Restore", errors.New("bad restore"))
	if _, err := e.m.Create(e.ctx, api.CreateRequest{}); err == nil || !strings.Contains(err.Error(), "bad restore") {
		t.Errorf("create: %v", err)
	}
	if boxes, _ := e.records(); len(boxes) != 0 || e.fake.RunningCount() != 0 {
		t.Errorf("boxes %v, %d VMs after a failed restore", boxes, e.fake.RunningCount())
	}
	if len(e.templateRecords()) != 1 {
		t.Errorf("template lost with the failed create")
	}
}

// A template whose checkpoint the store lost is forgotten when a
// restore from it fails, and made again by the next create.
func TestTemplateLostFromStore(t *testing.T) {
	e := newTemplateEnv(t)
	e.create()
	tp := e.templateRecords()[0]
	if err := e.fake.RemoveCheckpoints(e.ctx, []string{tp.Checkpoint}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Create(e.ctx, api.CreateRequest{}); err == nil {
		t.Fatal("create from a lost template succeeded")
	}
	if n := len(e.templateRecords()); n != 0 {
		t.Errorf("%d templates after the store lost one", n)
	}
	b := e.create()
	if tps := e.templateRecords(); len(tps) != 1 || e.get(b.ID).State != lifecycle.Running {
		t.Errorf("templates %+v after a new create", tps)
	}
}

// A new kernel, agent or VMM makes the templates made before it stale:
// the next start forgets them and frees their checkpoints once no box
// builds on them; a box that does keeps working.
func TestStaleTemplateForgotten(t *testing.T) {
	e := newTemplateEnv(t)
	old := e.create()
	stale := e.templateRecords()[0]
	e.close()
	e.fake.SetBootIdentity("new kernel")
	e.open()
	if n := len(e.templateRecords()); n != 0 {
		t.Errorf("%d templates after the boot changed, want 0", n)
	}
	if !slices.Contains(e.fake.Checkpoints(), stale.Checkpoint) {
		t.Fatalf("stale template's checkpoint freed while box %s builds on it", old.ID)
	}
	if out, _ := e.exec(old.ID, "hostname"); out != old.ID+"\n" {
		t.Errorf("old box: %q", out)
	}
	e.create()
	if tps := e.templateRecords(); len(tps) != 1 || tps[0].ID == stale.ID {
		t.Errorf("templates %+v, want one new", tps)
	}
	if _, err := e.m.Terminate(e.ctx, old.ID); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(e.fake.Checkpoints(), stale.Checkpoint) {
		t.Errorf("stale template's checkpoint kept after its last box went")
	}
}

// A template whose making a crash cut short is removed at the next
// start, with its VM and its checkpoint's debris.
func TestRestartRemovesUnmadeTemplate(t *testing.T) {
	e := newTemplateEnv(t)
	e.close()
	c, err := catalog.Open(e.path, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = c.Update(func(tx *catalog.Tx) error {
		if err := tx.PutTemplate(catalog.Template{ID: "tpl-cut", Created: time.Now()}); err != nil {
			return err
		}
		return tx.PutCheckpoint(catalog.Checkpoint{ID: "tpl-cut-c1", BoxID: "tpl-cut"})
	})
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	e.open()
	if tps := e.templateRecords(); len(tps) != 0 {
		t.Errorf("templates %+v after the restart", tps)
	}
	if _, cks := e.records(); len(cks) != 0 {
		t.Errorf("checkpoints %v after the restart", cks)
	}
	if !slices.Contains(e.calls("Stop"), "Stop tpl-cut") {
		t.Errorf("the unmade template's VM was not stopped: %v", e.fake.Calls())
	}
}
