package snapshot

import (
	"errors"
	"runtime"
	"strings"
	"testing"
)

const cpuinfoAMD = `processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 23
model		: 49
model name	: AMD EPYC 7B12
stepping	: 0
flags		: fpu vme de pse

processor	: 1
vendor_id	: GenuineIntel
cpu family	: 6
model		: 85
`

func TestParseCPUInfo(t *testing.T) {
	c, err := ParseCPUInfo(strings.NewReader(cpuinfoAMD))
	if err != nil {
		t.Fatal(err)
	}
	want := CPU{Vendor: "AuthenticAMD", Family: 23, Model: 49, ModelName: "AMD EPYC 7B12"}
	if c != want {
		t.Errorf("ParseCPUInfo = %+v, want %+v (the first processor only)", c, want)
	}
	if _, err := ParseCPUInfo(strings.NewReader("processor : 0\nBogoMIPS : 50.00\nCPU implementer : 0x41\n")); err == nil {
		t.Error("an arm64 cpuinfo parsed as x86")
	}
	if _, err := ParseCPUInfo(strings.NewReader("vendor_id : X\ncpu family : six\nmodel : 1\n")); err == nil {
		t.Error("a non-numeric family parsed")
	}
}

func TestHostCPU(t *testing.T) {
	c, err := HostCPU()
	if runtime.GOARCH != "amd64" && runtime.GOARCH != "386" {
		t.Skipf("HostCPU on %s: %v (x86 only)", runtime.GOARCH, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if c.Vendor == "" || c.Family == 0 {
		t.Errorf("HostCPU = %+v", c)
	}
	m := &Manifest{HostCPU: c}
	if err := m.Compatible(c); err != nil {
		t.Errorf("the host is incompatible with itself: %v", err)
	}
}

func TestCPUFromCPUID(t *testing.T) {
	for _, tc := range []struct {
		leaf0 CPUIDEntry
		eax1  uint32
		want  CPU
	}{
		// Skylake client: family 6, extended model 5, model 0xe.
		{CPUIDEntry{EBX: 0x756e6547, EDX: 0x49656e69, ECX: 0x6c65746e}, 0x000506e3, CPU{Vendor: "GenuineIntel", Family: 6, Model: 0x5e, Stepping: 3}},
		// Zen 2 EPYC: base family 0xf + extended 8 = 0x17, model 0x31.
		{CPUIDEntry{EBX: 0x68747541, EDX: 0x69746e65, ECX: 0x444d4163}, 0x00830f10, CPU{Vendor: "AuthenticAMD", Family: 0x17, Model: 0x31}},
		// Family 5 (Pentium): the extended model is not applied.
		{CPUIDEntry{EBX: 0x756e6547, EDX: 0x49656e69, ECX: 0x6c65746e}, 0x00010543, CPU{Vendor: "GenuineIntel", Family: 5, Model: 4, Stepping: 3}},
	} {
		got, err := CPUFromCPUID([]CPUIDEntry{tc.leaf0, {Function: 1, EAX: tc.eax1}})
		if err != nil || got != tc.want {
			t.Errorf("CPUFromCPUID(eax1 %#x) = %+v, %v; want %+v", tc.eax1, got, err, tc.want)
		}
	}
	if _, err := CPUFromCPUID(nil); err == nil {
		t.Error("CPUFromCPUID without leaves succeeded")
	}
}

func TestCompatible(t *testing.T) {
	m := sampleManifest()
	host := m.HostCPU
	host.Stepping, host.ModelName = 9, "another brand string"
	if err := m.Compatible(host); err != nil {
		t.Errorf("stepping and brand should not matter: %v", err)
	}
	for what, h := range map[string]CPU{
		"CPU vendor": {Vendor: "GenuineIntel", Family: 0x17, Model: 0x31},
		"CPU family": {Vendor: "AuthenticAMD", Family: 0x19, Model: 0x31},
		"CPU model":  {Vendor: "AuthenticAMD", Family: 0x17, Model: 0x01},
	} {
		err := m.Compatible(h)
		var he *HostError
		if !errors.Is(err, ErrIncompatibleHost) || !errors.As(err, &he) || he.What != what || !strings.Contains(err.Error(), what) {
			t.Errorf("host %+v: %v, want a HostError naming %s", h, err, what)
		}
	}
	if err := m.Compatible(CPU{Vendor: "GenuineIntel"}); err == nil || !strings.Contains(err.Error(), `"AuthenticAMD"`) || !strings.Contains(err.Error(), `"GenuineIntel"`) {
		t.Errorf("vendor error %q does not name both vendors", err)
	}
}

func TestCompatibleCPUID(t *testing.T) {
	m := sampleManifest() // leaf 7 EBX 0x219c91a9, leaf 1 ECX 0xfef83203
	supported := []CPUIDEntry{
		{Function: 1, ECX: 0xfef83203 &^ (1 << 27), EDX: 0x178bfbff}, // OSXSAVE is state, not a feature
		{Function: 7, EBX: 0xffffffff},
	}
	if err := m.CompatibleCPUID(supported); err != nil {
		t.Fatal(err)
	}
	supported[1].EBX = 0x219c91a9 &^ (1 << 5) // no AVX2
	err := m.CompatibleCPUID(supported)
	if !errors.Is(err, ErrIncompatibleHost) || !strings.Contains(err.Error(), "0x7.0 EBX") || !strings.Contains(err.Error(), "missing 0x20") {
		t.Errorf("CompatibleCPUID = %v, want a HostError naming leaf 7 EBX bit 5", err)
	}
}
