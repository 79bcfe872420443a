package snapshot

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// CPU identifies a host processor model: what a checkpoint records of the
// host it was taken on, and what Compatible compares.
type CPU struct {
	Vendor    string `json:"vendor"`     // CPUID vendor string, e.g. "GenuineIntel", "AuthenticAMD"
	Family    int    `json:"family"`     // display family (base + extended)
	Model     int    `json:"model"`      // display model (with the extended model where it applies)
	Stepping  int    `json:"stepping"`   // informational: not compared
	ModelName string `json:"model_name"` // informational: the brand string
}

func (c CPU) String() string {
	return fmt.Sprintf("%s family %#x model %#x (%s)", c.Vendor, c.Family, c.Model, c.ModelName)
}

// CPUIDEntry is one CPUID leaf given to the guest, as KVM_SET_CPUID2 takes
// it (struct kvm_cpuid_entry2 without its padding).
type CPUIDEntry struct {
	Function uint32 `json:"function"`
	Index    uint32 `json:"index"`
	Flags    uint32 `json:"flags"` // KVM_CPUID_FLAG_*
	EAX      uint32 `json:"eax"`
	EBX      uint32 `json:"ebx"`
	ECX      uint32 `json:"ecx"`
	EDX      uint32 `json:"edx"`
}

// ErrIncompatibleHost is matched (errors.Is) by every *HostError.
var ErrIncompatibleHost = errors.New("incompatible host")

// HostError says why a checkpoint cannot be restored on this host.
type HostError struct {
	What        string // "CPU vendor", "CPU family", "CPU model", "CPUID 0x7.0 EBX"...
	Saved, Host string
}

func (e *HostError) Error() string {
	return fmt.Sprintf("checkpoint taken on a host with %s %s, this host has %s", e.What, e.Saved, e.Host)
}

// Is makes errors.Is(err, ErrIncompatibleHost) true.
func (e *HostError) Is(target error) bool { return target == ErrIncompatibleHost }

// HostCPU identifies this host's processor from /proc/cpuinfo (x86 only:
// other architectures have no vendor_id line and get an error).
func HostCPU() (CPU, error) {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return CPU{}, fmt.Errorf("host CPU: %w", err)
	}
	defer f.Close()
	return ParseCPUInfo(f)
}

// ParseCPUInfo reads the first processor of a /proc/cpuinfo listing.
func ParseCPUInfo(r io.Reader) (CPU, error) {
	var c CPU
	seen := map[string]bool{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) == "" && len(seen) > 0 {
			break // the end of the first processor
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		var err error
		switch k {
		case "vendor_id":
			c.Vendor = v
		case "cpu family":
			c.Family, err = strconv.Atoi(v)
		case "model":
			c.Model, err = strconv.Atoi(v)
		case "stepping":
			c.Stepping, _ = strconv.Atoi(v) // "unknown" on some hosts
		case "model name":
			c.ModelName = v
		default:
			continue
		}
		if err != nil {
			return CPU{}, fmt.Errorf("host CPU: /proc/cpuinfo %s %q: %w", k, v, err)
		}
		seen[k] = true
	}
	if err := sc.Err(); err != nil {
		return CPU{}, fmt.Errorf("host CPU: %w", err)
	}
	for _, k := range []string{"vendor_id", "cpu family", "model"} {
		if !seen[k] {
			return CPU{}, fmt.Errorf("host CPU: no %q in /proc/cpuinfo (not an x86 host?)", k)
		}
	}
	return c, nil
}

// CPUFromCPUID identifies a processor from its CPUID leaves 0 and 1 (as
// KVM_GET_SUPPORTED_CPUID reports them, for example).
func CPUFromCPUID(entries []CPUIDEntry) (CPU, error) {
	leaf0, ok0 := findLeaf(entries, 0, 0)
	leaf1, ok1 := findLeaf(entries, 1, 0)
	if !ok0 || !ok1 {
		return CPU{}, errors.New("CPU from CPUID: leaves 0 and 1 are needed")
	}
	v := make([]byte, 0, 12)
	v = binary.LittleEndian.AppendUint32(v, leaf0.EBX)
	v = binary.LittleEndian.AppendUint32(v, leaf0.EDX)
	v = binary.LittleEndian.AppendUint32(v, leaf0.ECX)
	eax := leaf1.EAX
	family := int(eax>>8) & 0xf
	model := int(eax>>4) & 0xf
	if family == 0xf {
		family += int(eax>>20) & 0xff
	}
	if family == 0x6 || family >= 0xf {
		model += (int(eax>>16) & 0xf) << 4
	}
	return CPU{Vendor: string(v), Family: family, Model: model, Stepping: int(eax) & 0xf}, nil
}

func findLeaf(entries []CPUIDEntry, function, index uint32) (CPUIDEntry, bool) {
	for _, e := range entries {
		if e.Function == function && e.Index == index {
			return e, true
		}
	}
	return CPUIDEntry{}, false
}

// Compatible reports whether the checkpoint may be restored on a host
// with the given CPU: same vendor, family and model. (The guest's saved
// vCPU state and CPUID assume them; stepping and brand may differ.) The
// error is a *HostError naming what differs.
func (m *Manifest) Compatible(host CPU) error {
	saved := m.HostCPU
	switch {
	case saved.Vendor != host.Vendor:
		return &HostError{What: "CPU vendor", Saved: strconv.Quote(saved.Vendor), Host: strconv.Quote(host.Vendor)}
	case saved.Family != host.Family:
		return &HostError{What: "CPU family", Saved: fmt.Sprintf("%#x", saved.Family), Host: fmt.Sprintf("%#x", host.Family)}
	case saved.Model != host.Model:
		return &HostError{What: "CPU model", Saved: fmt.Sprintf("%#x", saved.Model), Host: fmt.Sprintf("%#x", host.Model)}
	}
	return nil
}

// featureRegs are the CPUID feature registers CompatibleCPUID compares,
// with the bits that are state rather than features masked out.
var featureRegs = []struct {
	function, index uint32
	reg             string
	ignore          uint32
}{
	{1, 0, "ECX", 1 << 27}, // OSXSAVE follows the guest's CR4
	{1, 0, "EDX", 0},
	{7, 0, "EBX", 0},
	{7, 0, "ECX", 1 << 4}, // OSPKE follows the guest's CR4
	{7, 0, "EDX", 0},
	{0xd, 1, "EAX", 0},
	{0x80000001, 0, "ECX", 0},
	{0x80000001, 0, "EDX", 0},
}

func reg(e CPUIDEntry, name string) uint32 {
	switch name {
	case "EAX":
		return e.EAX
	case "EBX":
		return e.EBX
	case "ECX":
		return e.ECX
	}
	return e.EDX
}

// CompatibleCPUID reports whether every CPU feature the checkpoint's guest
// was given is among those this host's KVM supports (supported as from
// KVM_GET_SUPPORTED_CPUID). A guest that saw a feature the host lacks
// would fault, or worse, after restore. The error is a *HostError naming
// the leaf, register and missing bits.
func (m *Manifest) CompatibleCPUID(supported []CPUIDEntry) error {
	for _, fr := range featureRegs {
		g, ok := findLeaf(m.CPUID, fr.function, fr.index)
		if !ok {
			continue
		}
		var have uint32
		if s, ok := findLeaf(supported, fr.function, fr.index); ok {
			have = reg(s, fr.reg)
		}
		if missing := reg(g, fr.reg) &^ have &^ fr.ignore; missing != 0 {
			return &HostError{
				What:  fmt.Sprintf("CPUID %#x.%d %s", fr.function, fr.index, fr.reg),
				Saved: fmt.Sprintf("bits %#x", reg(g, fr.reg)),
				Host:  fmt.Sprintf("%#x (missing %#x)", have, missing),
			}
		}
	}
	return nil
}
