package vmm

import (
	"errors"
	"fmt"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/sailbox-dev/sailbox/vmm/memory"
)

// run is a call of mapAhead's populate or enter: pages [first, first+n).
type run struct{ first, n uint64 }

// What mapAhead reports is what it did: the working set's pages within
// guest memory, the written runs it copied and the runs it entered, up to
// the first error; a host without KVM_PRE_FAULT_MEMORY (enter nil) or
// nested paging (EOPNOTSUPP) enters none, and that is no error.
func TestMapAheadReportsWhatItDid(t *testing.T) {
	// A guest of 130 pages: touched 0-3 and 64-65, written 2-5 (4 and 5
	// only written) and 129; bits from 130 on are past guest memory.
	const limit = 130
	ws := memory.WorkingSet{
		Touched: []uint64{0b1111, 0b11, 1<<1 /* 129 */ | 1<<5 /* 133: beyond */},
		Written: []uint64{0b111100, 0, 1 << 1},
	}
	var populated, entered []run
	populate := func(first, n uint64) error { populated = append(populated, run{first, n}); return nil }
	enter := func(first, n uint64) error { entered = append(entered, run{first, n}); return nil }

	got, err := mapAhead(ws, limit, populate, enter)
	if err != nil {
		t.Fatal(err)
	}
	if want := (MappedAhead{Pages: 9, Copied: 5, Entered: 9}); got != want {
		t.Errorf("mapped %+v, want %+v", got, want)
	}
	if want := []run{{2, 4}, {129, 1}}; !reflect.DeepEqual(populated, want) {
		t.Errorf("populated %v, want %v", populated, want)
	}
	if want := []run{{0, 6}, {64, 2}, {129, 1}}; !reflect.DeepEqual(entered, want) {
		t.Errorf("entered %v, want %v", entered, want)
	}

	for _, c := range []struct {
		name  string
		enter func(first, n uint64) error
	}{
		{"no KVM_PRE_FAULT_MEMORY", nil},
		{"no nested paging", func(uint64, uint64) error { return fmt.Errorf("pre-fault: %w", unix.EOPNOTSUPP) }},
	} {
		got, err := mapAhead(ws, limit, populate, c.enter)
		if want := (MappedAhead{Pages: 9, Copied: 5}); err != nil || got != want {
			t.Errorf("%s: mapped %+v, %v; want %+v, no error", c.name, got, err, want)
		}
	}

	// An error stops it; what went before is reported.
	boom := errors.New("boom")
	failAt := func(page uint64) func(first, n uint64) error {
		return func(first, n uint64) error {
			if first == page {
				return boom
			}
			return nil
		}
	}
	if got, err := mapAhead(ws, limit, failAt(129), enter); !errors.Is(err, boom) || got != (MappedAhead{Pages: 9, Copied: 4}) {
		t.Errorf("populate failing at page 129: mapped %+v, %v", got, err)
	}
	if got, err := mapAhead(ws, limit, populate, failAt(64)); !errors.Is(err, boom) || got != (MappedAhead{Pages: 9, Copied: 5, Entered: 6}) {
		t.Errorf("enter failing at page 64: mapped %+v, %v", got, err)
	}

	// No working set at all maps nothing.
	if got, err := mapAhead(memory.WorkingSet{}, limit, populate, enter); err != nil || got != (MappedAhead{}) {
		t.Errorf("empty working set: mapped %+v, %v", got, err)
	}
}
