package memory

import (
	"os"
	"testing"
)

// A restored VMM's smaps (testdata/smaps-restored-vmm): its binary
// (text shared with other VMMs), heap, guest RAM at 0x7f0000000000 as
// three mappings (anonymous, a checkpoint layer mapped over it,
// anonymous), a thread stack right after it, the main stack, vsyscall.
func TestParseSmapsSplitsAtGuestRAM(t *testing.T) {
	f, err := os.Open("testdata/smaps-restored-vmm")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := parseSmaps(f, 0x7f0000000000, 0x7f0008000000)
	if err != nil {
		t.Fatal(err)
	}
	want := ProcessUsage{
		Guest: Usage{Resident: (1000 + 30000 + 400) << 10, Private: (1000 + 500 + 400) << 10, Proportional: (1000 + 6000 + 400) << 10},
		Other: Usage{Resident: (4000 + 100 + 2048 + 64 + 132) << 10, Private: (20 + 80 + 2048 + 64 + 132) << 10, Proportional: (800 + 100 + 2048 + 64 + 132) << 10},
		// The binary's two mappings; the layer file is guest RAM's.
		OtherFiles: Usage{Resident: (4000 + 100) << 10, Private: (20 + 80) << 10, Proportional: (800 + 100) << 10},
	}
	if got != want {
		t.Errorf("parseSmaps =\n%+v, want\n%+v", got, want)
	}
}

func TestProcessUsageOfALiveMapping(t *testing.T) {
	m, err := New(4 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	buf := make([]byte, PageSize)
	for off := int64(0); off < 1<<20; off += PageSize {
		if _, err := m.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	u, err := m.ProcessUsage()
	if err != nil {
		t.Fatal(err)
	}
	if u.Guest.Resident < 1<<20 || u.Guest.Resident > m.Size() {
		t.Errorf("guest resident %d after writing 1 MiB of a 4 MiB mapping", u.Guest.Resident)
	}
	if u.Other.Resident == 0 || u.OtherFiles.Resident == 0 || u.OtherFiles.Resident > u.Other.Resident {
		t.Errorf("outside the guest mapping: %+v resident, of which files %+v: want the test binary's pages among them", u.Other, u.OtherFiles)
	}
	g, err := m.Usage()
	if err != nil {
		t.Fatal(err)
	}
	if g.Resident < 1<<20 {
		t.Errorf("Usage resident %d, want at least the 1 MiB written", g.Resident)
	}
}
