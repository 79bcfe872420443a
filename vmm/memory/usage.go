package memory

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Usage is how much host memory guest RAM takes, from the kernel's
// accounting of the mapping (/proc/self/smaps), in bytes.
type Usage struct {
	// Resident is every page of the mapping in host RAM, shared or not:
	// page-cache pages of a restored checkpoint's layers count here.
	Resident uint64
	// Private is what only this VM holds: pages it wrote (anonymous or
	// copied on write from a layer) and pages of its own not shared.
	// After a fork or restore, it grows with what the guest writes.
	Private uint64
}

// Usage reads the host memory the mapping takes now.
func (m *Memory) Usage() (Usage, error) {
	start, end := m.span()
	data, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return Usage{}, fmt.Errorf("guest memory usage: %w", err)
	}
	var u Usage
	in := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if lo, hi, ok := parseRange(fields[0]); ok {
			in = lo >= start && hi <= end
			continue
		}
		if !in || len(fields) < 2 {
			continue
		}
		kb, err := strconv.ParseUint(fields[1], 10, 64)
		if err != nil {
			continue
		}
		switch fields[0] {
		case "Rss:":
			u.Resident += kb << 10
		case "Private_Clean:", "Private_Dirty:":
			u.Private += kb << 10
		}
	}
	return u, sc.Err()
}

// parseRange parses the "start-end" of a smaps mapping header line.
func parseRange(s string) (lo, hi uintptr, ok bool) {
	a, b, found := strings.Cut(s, "-")
	if !found {
		return 0, 0, false
	}
	l, err1 := strconv.ParseUint(a, 16, 64)
	h, err2 := strconv.ParseUint(b, 16, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return uintptr(l), uintptr(h), true
}
