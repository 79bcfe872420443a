// Package devicetest is the conformance suite every device's saved state
// passes, after crosvm's snapshot suite: save a device, mutate the
// original, restore a new device from the saved state, save that and
// compare. Then the restored device must work, the state must survive
// JSON, and a damaged state must make Restore fail, never panic.
//
// A device package runs it from one test:
//
//	func TestPersist(t *testing.T) {
//		devicetest.Conformance(t, devicetest.Harness[serial.State]{
//			Start:   startSerial,    // a device in a state worth saving
//			Invalid: invalidStates,  // damaged states Restore must refuse
//		})
//	}
package devicetest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// Instance is one device under test, with the world it lives in: the
// interrupt line, guest memory, a fake driver, a disk.
type Instance[S any] interface {
	// Save saves the device as the VMM does (vCPUs stopped, the device
	// paused, then resumed) and captures what a restore needs besides
	// the state: a copy of guest memory, of the disk, the fake driver's
	// bookkeeping. It fails the test if the device cannot be saved.
	Save(t *testing.T) (S, Restorer[S])
	// Mutate drives the device on, so that its state changes: more
	// traffic, other register values.
	Mutate(t *testing.T)
	// Check checks that a restored device works, and that it is the
	// device saved, not the original as mutated since.
	Check(t *testing.T)
}

// Restorer restores a device from st, in a copy of the world captured by
// the Save that returned it; it may be called any number of times. It
// returns Restore's error. The device it builds is released when t ends.
type Restorer[S any] func(t *testing.T, st S) (Instance[S], error)

// Harness adapts one device type to the suite.
type Harness[S any] struct {
	// Start builds a device and drives it into a state worth saving:
	// registers set, buffers in flight, whatever the device can hold.
	Start func(t *testing.T) Instance[S]
	// Invalid names damaged states, each made from a valid saved state
	// (a deep copy, safe to modify), that Restore must refuse.
	Invalid map[string]func(st *S)
}

// Conformance runs the suite on the device h builds:
//
//   - save; mutate the original, whose state must change and whose saved
//     state must not (Save returns a copy);
//   - restore from the JSON encoding of the saved state, save the
//     restored device and compare with the first save;
//   - check that the restored device works;
//   - restore each of h.Invalid: an error, not a panic;
//   - restore states with each field of the saved state's JSON set to
//     edge values (zero, all ones, an empty list...): an error or a
//     device, not a panic.
func Conformance[S any](t *testing.T, h Harness[S]) {
	t.Helper()
	orig := h.Start(t)
	saved, restore := orig.Save(t)
	encoded, err := json.Marshal(saved)
	if err != nil {
		t.Fatalf("state %T does not encode as JSON: %v", saved, err)
	}
	decoded := decode[S](t, encoded)
	if !reflect.DeepEqual(decoded, saved) {
		t.Fatalf("state changes in a JSON round trip:\n saved   %s\n decoded %s", encoded, mustJSON(t, decoded))
	}

	t.Run("SaveMutateRestore", func(t *testing.T) {
		orig.Mutate(t)
		if !reflect.DeepEqual(saved, decoded) {
			t.Fatalf("the saved state changed with the device (Save must return a copy):\n at save %s\n now     %s", encoded, mustJSON(t, saved))
		}
		if mutated, _ := orig.Save(t); reflect.DeepEqual(mutated, saved) {
			t.Fatalf("Mutate left the state unchanged (%s): the suite cannot tell a restore from a no-op", encoded)
		}
		restored, err := restore(t, decode[S](t, encoded))
		if err != nil {
			t.Fatalf("restore: %v", err)
		}
		again, _ := restored.Save(t)
		if !reflect.DeepEqual(again, saved) {
			t.Fatalf("the restored device saves a different state:\n saved    %s\n restored %s", encoded, mustJSON(t, again))
		}
		restored.Check(t)
	})

	t.Run("Invalid", func(t *testing.T) {
		names := make([]string, 0, len(h.Invalid))
		for name := range h.Invalid {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			t.Run(name, func(t *testing.T) {
				st := decode[S](t, encoded)
				h.Invalid[name](&st)
				_, err := safeRestore(t, restore, st)
				if err == nil {
					t.Fatalf("restore of %s succeeded", mustJSON(t, st))
				}
				t.Logf("refused: %v", err)
			})
		}
	})

	t.Run("EdgeValues", func(t *testing.T) {
		var tree any
		dec := json.NewDecoder(bytes.NewReader(encoded))
		dec.UseNumber()
		if err := dec.Decode(&tree); err != nil {
			t.Fatal(err)
		}
		for _, e := range edits(tree, "") {
			e.name = strings.TrimPrefix(e.name, ".")
			var st S
			if json.Unmarshal(mustJSON(t, e.tree), &st) != nil {
				continue // a value the field cannot hold: the decoder's business
			}
			t.Run(e.name, func(t *testing.T) {
				safeRestore(t, restore, st) // any result but a panic
			})
		}
	})
}

// safeRestore restores st, turning a panic into a test failure.
func safeRestore[S any](t *testing.T, restore Restorer[S], st S) (inst Instance[S], err error) {
	t.Helper()
	defer func() {
		if p := recover(); p != nil {
			t.Fatalf("restore of %s panicked: %v", mustJSON(t, st), p)
		}
	}()
	return restore(t, st)
}

func decode[S any](t *testing.T, b []byte) S {
	t.Helper()
	var s S
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("state does not decode from its JSON %s: %v", b, err)
	}
	return s
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// edit is the saved state's JSON with one value changed.
type edit struct {
	name string // the value's path and its new value
	tree any
}

// Edge values a field is set to. Numbers beyond what a field holds fail
// to decode and are skipped.
var (
	edgeNumbers = []string{"0", "1", "3", "255", "65535", "4294967295", "18446744073709551615"}
	edgeStrings = []string{"", "AAAA", strings.Repeat("x", 100)}
)

// edits returns a copy of tree for each edge value of each leaf under it,
// and for each list shortened, emptied, or with its first element twice.
func edits(tree any, path string) []edit {
	var out []edit
	replace := func(name string, v any) { out = append(out, edit{name, v}) }
	switch v := tree.(type) {
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			for _, e := range edits(v[k], path+"."+k) {
				c := make(map[string]any, len(v))
				for kk, vv := range v {
					c[kk] = vv
				}
				c[k] = e.tree
				replace(e.name, c)
			}
		}
	case []any:
		if len(v) > 0 {
			replace(path+"=empty", []any{})
			replace(path+"=short", v[:len(v)-1])
			replace(path+"=long", append([]any{v[0]}, v...))
		}
		for i := range v {
			for _, e := range edits(v[i], fmt.Sprintf("%s[%d]", path, i)) {
				c := append([]any(nil), v...)
				c[i] = e.tree
				replace(e.name, c)
			}
		}
	case json.Number:
		for _, n := range edgeNumbers {
			if n != v.String() {
				replace(path+"="+n, json.Number(n))
			}
		}
	case bool:
		replace(fmt.Sprintf("%s=%v", path, !v), !v)
	case string:
		for i, s := range edgeStrings {
			if s != v {
				replace(fmt.Sprintf("%s=string%d", path, i), s)
			}
		}
	}
	return out
}
