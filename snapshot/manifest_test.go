package snapshot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/snapshot/internal/format"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// sampleManifest is the manifest of testdata/manifest-v1.golden.
func sampleManifest() *Manifest {
	return &Manifest{
		ID:                 "box1-c2",
		Parent:             "box1-c1",
		Created:            time.Date(2025, 11, 28, 10, 13, 0, 123456789, time.UTC),
		VMMVersion:         "sailbox-vmm v0.1.0",
		GuestSchemaVersion: 3,
		HostCPU:            CPU{Vendor: "AuthenticAMD", Family: 0x17, Model: 0x31, Stepping: 0, ModelName: "AMD EPYC 7B12"},
		CPUID: []CPUIDEntry{
			{Function: 0, EAX: 0x10, EBX: 0x68747541, ECX: 0x444d4163, EDX: 0x69746e65},
			{Function: 1, EAX: 0x830f10, ECX: 0xfef83203, EDX: 0x178bfbff},
			{Function: 7, Index: 0, Flags: 1, EBX: 0x219c91a9},
		},
		MemorySize: 256 << 20,
		VCPUs:      2,
		Memory: []LayerRef{
			{ID: "box1-c1-mem", Size: 1 << 20, Checksum: 0xdeadbeef},
			{ID: "box1-c2-mem", Size: 12288, Checksum: 0x01020304},
		},
		Disks: map[string]DiskChain{
			"vda": {Base: "/images/rootfs.img", BaseSize: 1 << 30, Size: 1 << 30, Layers: []LayerRef{{ID: "box1-c1-vda", Size: 1<<30 + 8192, Checksum: 7}}},
			"vdb": {Size: 64 << 20},
		},
		State: map[string][]byte{
			"vcpu/0":           []byte(`{"rip":4096}`),
			"vcpu/1":           []byte(`{"rip":8192}`),
			"vm/irqchip":       {0, 1, 2, 3, 255},
			"dev/virtio-blk/0": {},
		},
	}
}

func TestManifestRoundTrip(t *testing.T) {
	m := sampleManifest()
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, m)
	}
	again, err := got.Encode()
	if err != nil || !bytes.Equal(again, b) {
		t.Errorf("re-encoding differs (%v)", err)
	}
	// A minimal manifest: no parent, layers, disks or state.
	min := &Manifest{ID: "x", MemorySize: 4096, VCPUs: 1}
	b, err = min.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err = Decode(b)
	if err != nil || got.ID != "x" || len(got.State) != 0 || len(got.Memory) != 0 {
		t.Errorf("minimal manifest: %+v, %v", got, err)
	}
}

// TestGolden decodes the committed version-1 manifest and checks that
// encoding the same manifest today gives the same bytes: an accidental
// format change fails here.
func TestGolden(t *testing.T) {
	golden := filepath.Join("testdata", "manifest-v1.golden")
	fresh, err := sampleManifest().Encode()
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(golden, fresh, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(m, sampleManifest()) {
		t.Errorf("golden manifest decodes to %+v", m)
	}
	if !bytes.Equal(b, fresh) {
		t.Error("Encode's output differs from testdata/manifest-v1.golden: the format changed; bump FormatVersion and keep the old golden file (see FORMAT.md)")
	}
}

// sectionOffsets returns where each section's payload starts, by name.
func sectionOffsets(t *testing.T, b []byte) map[string]int {
	offs := map[string]int{}
	rest := manifestHeaderLen
	n := binary.LittleEndian.Uint32(b[12:])
	for range n {
		idLen := int(b[rest+1])
		id := string(b[rest+2 : rest+2+idLen])
		plen := int(binary.LittleEndian.Uint32(b[rest+2+idLen:]))
		offs[id] = rest + 2 + idLen + 4
		rest += 2 + idLen + 4 + plen + 4
	}
	if rest != len(b) {
		t.Fatalf("sections end at %d of %d bytes", rest, len(b))
	}
	return offs
}

// TestCorruptSection damages each section in turn: the error must match
// ErrCorrupt and name the section.
func TestCorruptSection(t *testing.T) {
	good, err := sampleManifest().Encode()
	if err != nil {
		t.Fatal(err)
	}
	offs := sectionOffsets(t, good)
	cases := map[string]int{
		"header":                   9, // inside the version: caught as a bad version, see below
		`section 0 "meta"`:         offs["meta"] + 5,
		`state "vcpu/0"`:           offs["vcpu/0"] + 1,
		`state "vcpu/1"`:           offs["vcpu/1"],
		`state "vm/irqchip"`:       offs["vm/irqchip"] + 4,
		`state "dev/virtio-blk/0"`: offs["dev/virtio-blk/0"], // empty payload: hit its checksum
		"header section count":     13,
	}
	for name, off := range cases {
		t.Run(name, func(t *testing.T) {
			bad := bytes.Clone(good)
			bad[off] ^= 0x10
			_, err := Decode(bad)
			if name == "header" {
				if !errors.Is(err, ErrIncompatibleVersion) {
					t.Fatalf("Decode = %v, want ErrIncompatibleVersion", err)
				}
				return
			}
			want := strings.TrimSuffix(name, " section count")
			var ce *CorruptError
			if !errors.Is(err, ErrCorrupt) || !errors.As(err, &ce) || !strings.Contains(err.Error(), want) {
				t.Fatalf("Decode = %v, want ErrCorrupt naming %s", err, want)
			}
		})
	}
}

// TestTruncated cuts the manifest at every length: always ErrCorrupt, never
// a panic; and appending garbage is caught too.
func TestTruncated(t *testing.T) {
	good, err := sampleManifest().Encode()
	if err != nil {
		t.Fatal(err)
	}
	for n := 0; n < len(good); n++ {
		if _, err := Decode(good[:n]); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("truncated to %d of %d bytes: %v, want ErrCorrupt", n, len(good), err)
		}
	}
	if _, err := Decode(append(bytes.Clone(good), 0)); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "trailer") {
		t.Fatalf("trailing byte: %v", err)
	}
}

func TestWrongVersion(t *testing.T) {
	good, err := sampleManifest().Encode()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []uint32{0, FormatVersion + 1, 1000} {
		b := bytes.Clone(good)
		binary.LittleEndian.PutUint32(b[8:], v)
		_, err := Decode(b)
		var ve *VersionError
		if !errors.Is(err, ErrIncompatibleVersion) || !errors.As(err, &ve) || ve.Got != v || ve.Max != FormatVersion {
			t.Fatalf("version %d: %v, want a VersionError", v, err)
		}
		if !strings.Contains(err.Error(), fmt.Sprintf("version %d", v)) {
			t.Errorf("error %q does not name version %d", err, v)
		}
	}
	if _, err := Decode([]byte("not a manifest at all")); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "magic") {
		t.Errorf("not a manifest: %v", err)
	}
}

func TestValidate(t *testing.T) {
	for name, mutate := range map[string]func(m *Manifest){
		"empty ID":          func(m *Manifest) { m.ID = "" },
		"ID with slash":     func(m *Manifest) { m.ID = "a/b" },
		"parent":            func(m *Manifest) { m.Parent = "../x" },
		"memory size":       func(m *Manifest) { m.MemorySize = 4097 },
		"no memory":         func(m *Manifest) { m.MemorySize = 0 },
		"memory too large":  func(m *Manifest) { m.MemorySize = 4 << 50 }, // would size 128 GiB working-set bitmaps
		"vcpus":             func(m *Manifest) { m.VCPUs = 0 },
		"schema":            func(m *Manifest) { m.GuestSchemaVersion = -1 },
		"layer ID":          func(m *Manifest) { m.Memory[0].ID = "" },
		"layer size":        func(m *Manifest) { m.Memory[1].Size = 0 },
		"disk ID":           func(m *Manifest) { m.Disks["Bad ID"] = DiskChain{Size: 1} },
		"disk size":         func(m *Manifest) { m.Disks["vdc"] = DiskChain{} },
		"disk base size":    func(m *Manifest) { m.Disks["vdc"] = DiskChain{Base: "/x", Size: 1} },
		"state ID":          func(m *Manifest) { m.State["vcpu//0"] = nil },
		"state ID upper":    func(m *Manifest) { m.State["VCPU"] = nil },
		"state ID too long": func(m *Manifest) { m.State[strings.Repeat("a", MaxIDLen+1)] = nil },
	} {
		m := sampleManifest()
		mutate(m)
		if _, err := m.Encode(); err == nil {
			t.Errorf("%s: Encode accepted an invalid manifest", name)
		}
	}
}

// FuzzDecode: no input panics or allocates beyond its size, and whatever
// decodes re-encodes to a manifest that decodes equal. With fix set, the
// checksums are made to match first, so that the fuzzer explores the
// section and metadata decoding behind them.
func FuzzDecode(f *testing.F) {
	if b, err := os.ReadFile(filepath.Join("testdata", "manifest-v1.golden")); err == nil {
		f.Add(b, false)
		f.Add(b, true)
	}
	if b, err := (&Manifest{ID: "x", MemorySize: 4096, VCPUs: 1, State: map[string][]byte{"a": {1}}}).Encode(); err == nil {
		f.Add(b, true)
	}
	f.Add([]byte("SBXCKPT\n"), false)
	f.Fuzz(func(t *testing.T, b []byte, fix bool) {
		if fix {
			b = fixChecksums(b)
		}
		m, err := Decode(b)
		if err != nil {
			return
		}
		enc, err := m.Encode()
		if err != nil {
			t.Fatalf("a decoded manifest does not encode: %v", err)
		}
		m2, err := Decode(enc)
		if err != nil {
			t.Fatalf("re-encoded manifest does not decode: %v", err)
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("round trip changed the manifest:\n%+v\n%+v", m, m2)
		}
	})
}

// fixChecksums rewrites the header's and every complete section's CRC to
// match.
func fixChecksums(b []byte) []byte {
	b = bytes.Clone(b)
	le := binary.LittleEndian
	if len(b) < manifestHeaderLen {
		return b
	}
	le.PutUint32(b[16:], crc(b[:16]))
	for rest := manifestHeaderLen; rest+2 <= len(b); {
		idLen := int(b[rest+1])
		if rest+2+idLen+4 > len(b) {
			break
		}
		end := rest + 2 + idLen + 4 + int(le.Uint32(b[rest+2+idLen:]))
		if end < 0 || end+4 > len(b) {
			break
		}
		le.PutUint32(b[end:], crc(b[rest:end]))
		rest = end + 4
	}
	return b
}

func crc(b []byte) uint32 { return format.Checksum(b) }
