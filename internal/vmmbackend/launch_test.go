package vmmbackend

import (
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/sailbox-dev/sailbox/api/vmmapi"
	"github.com/sailbox-dev/sailbox/internal/catalog"
)

// A box with a disk size of its own boots on a layered disk of that size
// over its image, as its root; a reboot takes the size from the
// checkpoint's disks, which recorded it.
func TestLaunchDiskSize(t *testing.T) {
	b := newBackend(t)
	spec := catalog.Spec{MemoryMiB: 256, VCPUs: 1, Image: "/img/rootfs.ext4", Root: &catalog.RootImage{}, DiskSizeBytes: 2 << 30}
	l := b.bootLaunch("sb-1", spec)
	want := []vmmapi.LaunchDisk{{Path: "/img/rootfs.ext4", Layered: true, ID: "vda", Size: 2 << 30}}
	if !reflect.DeepEqual(l.Disks, want) || !strings.Contains(l.Cmdline, rootCmdline) {
		t.Errorf("boot launch: disks %+v, cmdline %q; want %+v as the root", l.Disks, l.Cmdline, want)
	}
	got, err := vmmapi.ParseLaunch(l.Args(), io.Discard)
	if err != nil || !reflect.DeepEqual(got.Disks, want) {
		t.Errorf("sailbox-vmm parses %q: disks %+v, %v", l.Args(), got.Disks, err)
	}
	if r := b.rebootLaunch("sb-1", spec, "sb-1-c2"); len(r.Disks) != 0 || r.DisksFrom != "sb-1-c2" {
		t.Errorf("reboot launch: disks %+v from %q", r.Disks, r.DisksFrom)
	}
}
