package vmmapi

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/sailbox-dev/sailbox/api/netapi"
	virtionet "github.com/sailbox-dev/sailbox/devices/virtio/net"
)

// The VMM's default MAC is the one sailbox-net leases the guest's address
// to, and the device carries what sailbox-net's link does.
func TestNetContract(t *testing.T) {
	if got := virtionet.DefaultMAC.String(); got != netapi.DefaultGuestMAC {
		t.Errorf("virtio-net's default MAC %s, sailbox-net's %s", got, netapi.DefaultGuestMAC)
	}
	if virtionet.MTU != netapi.MTU {
		t.Errorf("virtio-net's MTU %d, sailbox-net's %d", virtionet.MTU, netapi.MTU)
	}
}

// A network socket (and a MAC) survive Args and -config, for a boot and
// a restore; what makes no sense is refused by name.
func TestLaunchNet(t *testing.T) {
	for name, l := range map[string]Launch{
		"boot": {Kernel: "/k", MemoryMiB: DefaultMemoryMiB, VCPUs: DefaultVCPUs, VsockCID: 3, VsockUDS: "/run/sb-1/vsock.sock",
			NetSocket: "/run/sb-1/net.sock"},
		"boot with a MAC": {Kernel: "/k", MemoryMiB: DefaultMemoryMiB, VCPUs: DefaultVCPUs, NetSocket: "/n", NetMAC: "02:00:00:00:00:01"},
		"restore":         {MemoryMiB: DefaultMemoryMiB, VCPUs: DefaultVCPUs, Store: "/store", Restore: "c1", VsockUDS: "/v", NetSocket: "/run/sb-2/net.sock"},
		"fork":            {MemoryMiB: DefaultMemoryMiB, VCPUs: DefaultVCPUs, Store: "/store", Restore: "c1", ForkName: "sb-2", NetSocket: "/n"},
	} {
		if err := l.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		args := l.Args()
		if !slicesContainPair(args, "-net", l.NetSocket) {
			t.Errorf("%s: Args %q lack -net %s", name, args, l.NetSocket)
		}
		got, err := ParseLaunch(args, &bytes.Buffer{})
		if err != nil || !reflect.DeepEqual(got, l) {
			t.Errorf("%s: Args %q parse back to %+v, %v; want %+v", name, args, got, err, l)
		}
		b, _ := json.Marshal(l)
		if !strings.Contains(string(b), `"net_socket":`) {
			t.Errorf("%s: JSON %s has no net_socket", name, b)
		}
		cfg := filepath.Join(t.TempDir(), "vm.json")
		os.WriteFile(cfg, b, 0o644)
		if fromFile, err := ParseLaunch([]string{"-config", cfg}, &bytes.Buffer{}); err != nil || !reflect.DeepEqual(fromFile, l) {
			t.Errorf("%s: -config gives %+v, %v; want %+v", name, fromFile, err, l)
		}
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-kernel", "/k", "-net-mac", "02:00:00:00:00:01"}, "-net-mac needs -net"},
		{[]string{"-kernel", "/k", "-net", "/n", "-net-mac", "01:00:5e:00:00:01"}, "multicast"},
		{[]string{"-kernel", "/k", "-net", "/n", "-net-mac", "nonsense"}, "-net-mac"},
		{[]string{"-store", "/s", "-restore", "c1", "-net", "/n", "-net-mac", "02:00:00:00:00:01"}, "-net-mac"},
	} {
		if _, err := ParseLaunch(c.args, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseLaunch(%q) = %v, want an error naming %q", c.args, err, c.want)
		}
	}
}

func slicesContainPair(args []string, flag, value string) bool {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag && args[i+1] == value {
			return true
		}
	}
	return false
}
