package memory

import (
	"errors"
	"os"
	"slices"
	"testing"
)

// The pages of the working-set test's guest (8192 pages, 32 MiB). Every
// page that must not count as written is at least 512 pages (2 MiB) from
// every page written after the tracking began, so that no kernel can back
// both with one allocation (a transparent huge page, or a large folio of
// multi-size THP); only the Written of SoftDirty depends on that.
var (
	wsFile       = [2]uint64{4000, 4008}                  // guest pages mapped from a file
	wsWritten    = []uint64{1000, 1001, 3000, 6000, 4007} // after the tracking began; 4007 copied on write from the file
	wsPopulated  = []uint64{2000, 2001, 4004}             // populated for writing after it began
	wsRead       = []uint64{5, 4001, 4500}                // only read
	wsBefore     = []uint64{6000, 7000}                   // written before the tracking began
	wsUntouched  = [2]uint64{7600, 8192}                  // nothing within 2 MiB
	wsGuestPages = uint64(8192)
)

// Each way of tracking writes that the host kernel offers names exactly
// the pages written, or populated for writing, since the tracking began:
// not the pages only read (whatever the kernel maps for a read: the
// shared zero page, a page of its own, a file page), nor those written
// before. A way the kernel lacks is refused as unsupported, and leaves
// Written empty. Touched holds every page used, and nothing far from them.
func TestWorkingSet(t *testing.T) {
	for _, way := range []WriteTracking{WriteProtect, SoftDirty, NoWriteTracking} {
		t.Run(way.String(), func(t *testing.T) {
			m := newWorkingSetGuest(t)
			b := make([]byte, 1)
			for _, p := range wsBefore {
				m.WriteAt([]byte{1}, int64(p*PageSize))
			}
			if way != NoWriteTracking {
				if err := m.StartTracking(way); err != nil {
					if !errors.Is(err, errors.ErrUnsupported) {
						t.Fatalf("StartTracking: %v, want a tracking or errors.ErrUnsupported", err)
					}
					if m.Tracking() != NoWriteTracking {
						t.Errorf("Tracking() = %v after a refused start", m.Tracking())
					}
					t.Logf("this host kernel lacks %v: %v", way, err)
					way = NoWriteTracking
				}
			}
			if got := m.Tracking(); got != way {
				t.Fatalf("Tracking() = %v, want %v", got, way)
			}
			for _, p := range wsRead {
				m.ReadAt(b, int64(p*PageSize))
			}
			for _, p := range wsWritten {
				m.WriteAt([]byte{2}, int64(p*PageSize))
			}
			for _, p := range wsPopulated {
				if err := m.PopulateWrite(p, 1); err != nil {
					t.Fatal(err)
				}
			}
			ws, err := m.WorkingSet()
			if err != nil {
				t.Fatal(err)
			}
			words := int((wsGuestPages + 63) / 64)
			if len(ws.Touched) != words || len(ws.Written) != words {
				t.Fatalf("bitmaps of %d and %d words, want %d", len(ws.Touched), len(ws.Written), words)
			}
			used := slices.Concat(wsRead, wsWritten, wsPopulated, wsBefore)
			for _, p := range used {
				if !bit(ws.Touched, p) {
					t.Errorf("page %d not touched", p)
				}
			}
			for p := wsUntouched[0]; p < wsUntouched[1]; p++ {
				if bit(ws.Touched, p) {
					t.Errorf("page %d touched, 2 MiB away from any page used", p)
				}
			}
			written := slices.Concat(wsWritten, wsPopulated)
			for p := range wsGuestPages {
				want := way != NoWriteTracking && slices.Contains(written, p)
				if got := bit(ws.Written, p); got != want {
					t.Errorf("page %d written = %v, want %v (%v)", p, got, want, way)
				}
			}
			// Populating kept the contents: the file's zeros.
			if _, err := m.ReadAt(b, int64(wsPopulated[2]*PageSize)); err != nil || b[0] != 0 {
				t.Errorf("page %d after populating reads %v, %v", wsPopulated[2], b, err)
			}

			if err := m.StopTracking(); err != nil {
				t.Fatal(err)
			}
			m.WriteAt([]byte{3}, int64(wsUntouched[0]*PageSize))
			if ws, err := m.WorkingSet(); err != nil || slices.ContainsFunc(ws.Written, func(w uint64) bool { return w != 0 }) {
				t.Errorf("after StopTracking: written %v, %v; want none", ws.Written, err)
			}
		})
	}
}

// TrackWrites picks the best way the kernel offers, or says that there
// is none; a memory tracks one way at a time.
func TestTrackWrites(t *testing.T) {
	supported := map[WriteTracking]bool{}
	for _, way := range []WriteTracking{WriteProtect, SoftDirty} {
		m := newWorkingSetGuest(t)
		err := m.StartTracking(way)
		if err != nil && !errors.Is(err, errors.ErrUnsupported) {
			t.Fatalf("StartTracking(%v): %v", way, err)
		}
		supported[way] = err == nil
	}
	t.Logf("this host kernel offers: %v", supported)

	m := newWorkingSetGuest(t)
	way, err := m.TrackWrites()
	switch {
	case supported[WriteProtect] && way != WriteProtect, !supported[WriteProtect] && supported[SoftDirty] && way != SoftDirty:
		t.Errorf("TrackWrites picked %v (%v), the kernel offers %v", way, err, supported)
	case way == NoWriteTracking && !errors.Is(err, ErrNoWriteTracking):
		t.Errorf("TrackWrites found none: %v, want ErrNoWriteTracking", err)
	case way != NoWriteTracking && err != nil:
		t.Errorf("TrackWrites: %v, %v", way, err)
	}
	if way != NoWriteTracking {
		if err := m.StartTracking(way); err == nil || errors.Is(err, errors.ErrUnsupported) {
			t.Errorf("a second StartTracking: %v, want refused as already tracking", err)
		}
	}
}

// Soft-dirty bits belong to the whole process: a second memory starting
// to track clears them, and the first still reports what it wrote before.
func TestSoftDirtyTwoMemories(t *testing.T) {
	a := newWorkingSetGuest(t)
	if err := a.StartTracking(SoftDirty); errors.Is(err, errors.ErrUnsupported) {
		t.Logf("this host kernel lacks soft-dirty tracking (%v): nothing to share", err)
		return
	} else if err != nil {
		t.Fatal(err)
	}
	a.WriteAt([]byte{1}, int64(wsWritten[0]*PageSize))
	b := newWorkingSetGuest(t)
	if err := b.StartTracking(SoftDirty); err != nil {
		t.Fatal(err)
	}
	a.WriteAt([]byte{1}, int64(wsWritten[2]*PageSize))
	ws, err := a.WorkingSet()
	if err != nil {
		t.Fatal(err)
	}
	if !bit(ws.Written, wsWritten[0]) || !bit(ws.Written, wsWritten[2]) {
		t.Errorf("the first memory lost a written page to the second's clear: %v %v", bit(ws.Written, wsWritten[0]), bit(ws.Written, wsWritten[2]))
	}
	if ws, err := b.WorkingSet(); err != nil || slices.ContainsFunc(ws.Written, func(w uint64) bool { return w != 0 }) {
		t.Errorf("the second memory, untouched, has written pages: %v", err)
	}
}

// newWorkingSetGuest maps the working-set test's guest: anonymous memory
// with an 8-page file over wsFile, closed at the end of the test.
func newWorkingSetGuest(t *testing.T) *Memory {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "layer")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := wsFile[1] - wsFile[0]
	if err := f.Truncate(int64(n * PageSize)); err != nil {
		t.Fatal(err)
	}
	m, err := NewFromFiles(wsGuestPages*PageSize, []FileRange{{GuestOffset: wsFile[0] * PageSize, Length: n * PageSize, File: f}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if err := m.PopulateWrite(wsGuestPages-1, 2); err == nil {
		t.Error("PopulateWrite beyond guest memory succeeded")
	}
	return m
}

func bit(bitmap []uint64, p uint64) bool { return bitmap[p/64]&(1<<(p%64)) != 0 }
