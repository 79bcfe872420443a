package vmmapi

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/sailbox-dev/sailbox/vmm/seccomp"
)

// sampleLaunches are one of each kind of launch the daemon makes.
var sampleLaunches = map[string]Launch{
	"boot": {
		Kernel: "/k", Initrd: "/i", Cmdline: "quiet loglevel=3", MemoryMiB: 512, VCPUs: 2,
		Disks:    []LaunchDisk{{Path: "/img/base.raw", Layered: true, ID: "vda", Size: 2 << 30}, {Path: "/img/data.raw", ReadOnly: true}, {Path: "/img/raw"}, {Path: "/img/b2", Layered: true}},
		VsockCID: 3, VsockUDS: "/run/sb-1/vsock.sock", APISocket: "/run/sb-1/api.sock", ConsoleLog: "/run/sb-1/console.log",
		Store: "/store",
	},
	"reboot": {
		Kernel: "/k", MemoryMiB: DefaultMemoryMiB, VCPUs: DefaultVCPUs, VsockCID: 3, VsockUDS: "/v", Store: "/store", DisksFrom: "sb-1-c4", Console: true,
	},
	"restore": {MemoryMiB: DefaultMemoryMiB, VCPUs: DefaultVCPUs, Store: "/store", Restore: "sb-1-c3", VsockUDS: "/v", APISocket: "/a"},
	"fork":    {MemoryMiB: DefaultMemoryMiB, VCPUs: DefaultVCPUs, Store: "/store", Restore: "sb-1-c3", ForkName: "sb-2", VsockUDS: "/v", APISocket: "/a"},
	// Each seccomp mode, spelled out (the daemon leaves it empty: kill).
	"diagnose":           {Kernel: "/k", MemoryMiB: DefaultMemoryMiB, VCPUs: DefaultVCPUs, Console: true, Seccomp: seccomp.Trap},
	"unfiltered":         {MemoryMiB: DefaultMemoryMiB, VCPUs: DefaultVCPUs, Store: "/store", Restore: "sb-1-c3", Seccomp: seccomp.Off},
	"explicitly-killing": {Kernel: "/k", MemoryMiB: DefaultMemoryMiB, VCPUs: DefaultVCPUs, Seccomp: seccomp.Kill},
	// Without Landlock (the daemon leaves it on).
	"unconfined": {MemoryMiB: DefaultMemoryMiB, VCPUs: DefaultVCPUs, Store: "/store", Restore: "sb-1-c3", VsockUDS: "/v", NoLandlock: true},
}

// What a starter builds is what sailbox-vmm parses: Args and ParseLaunch
// are inverses, for every kind of launch, and through -config too.
func TestLaunchRoundTrip(t *testing.T) {
	for name, l := range sampleLaunches {
		if err := l.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		got, err := ParseLaunch(l.Args(), &bytes.Buffer{})
		if err != nil {
			t.Errorf("%s: ParseLaunch(%q): %v", name, l.Args(), err)
			continue
		}
		if !reflect.DeepEqual(got, l) {
			t.Errorf("%s: Args %q parse back to\n%+v, want\n%+v", name, l.Args(), got, l)
		}
		cfg := filepath.Join(t.TempDir(), "vm.json")
		b, _ := json.Marshal(l)
		os.WriteFile(cfg, b, 0o644)
		if fromFile, err := ParseLaunch([]string{"-config", cfg}, &bytes.Buffer{}); err != nil || !reflect.DeepEqual(fromFile, l) {
			t.Errorf("%s: -config gives %+v, %v; want %+v", name, fromFile, err, l)
		}
	}
	// The log is the starter's: never a flag, refused in a config.
	withLog := sampleLaunches["restore"]
	withLog.Log = "/run/sb-1/vmm.log"
	if args := strings.Join(withLog.Args(), " "); strings.Contains(args, "vmm.log") {
		t.Errorf("Args carry the log: %s", args)
	}
	cfg := filepath.Join(t.TempDir(), "vm.json")
	b, _ := json.Marshal(withLog)
	os.WriteFile(cfg, b, 0o644)
	if _, err := ParseLaunch([]string{"-config", cfg}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), `"log"`) {
		t.Errorf("a config with a log: %v", err)
	}
}

// Launches that say two things at once, or not enough, are refused by
// the flags at fault, before any process starts.
func TestLaunchRefuses(t *testing.T) {
	for want, l := range map[string]Launch{
		"-restore needs -store":                 {Restore: "c1"},
		"-disks-from boots afresh":              {Kernel: "/k", Store: "/s", Restore: "c1", DisksFrom: "c1"},
		"-disks-from needs -store":              {Kernel: "/k", DisksFrom: "c1"},
		"no -disk":                              {Kernel: "/k", Store: "/s", DisksFrom: "c1", Disks: []LaunchDisk{{Path: "x", Layered: true}}},
		"takes the machine from the checkpoint": {Store: "/s", Restore: "c1", Kernel: "/k"},
		"-fork-name needs -restore":             {Kernel: "/k", ForkName: "kid"},
		"a layered disk needs -store":           {Kernel: "/k", Disks: []LaunchDisk{{Path: "x", Layered: true}}},
		"no kernel":                             {},
		"-vsock-cid and -vsock-uds go together": {Kernel: "/k", VsockCID: 3},
		"reserved":                              {Kernel: "/k", VsockCID: 2, VsockUDS: "/v"},
		"-seccomp: unknown seccomp mode":        {Kernel: "/k", Seccomp: "allow"},
		"only a layered disk has a size":        {Kernel: "/k", Disks: []LaunchDisk{{Path: "x", Size: 4096}}},
		"not a positive multiple of 512":        {Kernel: "/k", Store: "/s", Disks: []LaunchDisk{{Path: "x", Layered: true, Size: 4095}}},
		"a disk is either ro or layered":        {Kernel: "/k", Store: "/s", Disks: []LaunchDisk{{Path: "x", Layered: true, ReadOnly: true}}},
		`unknown seccomp mode "Kill"`:           {Store: "/s", Restore: "c1", Seccomp: "Kill"},
	} {
		if err := l.Validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate(%+v) = %v, want %q", l, err, want)
		}
		if _, err := l.Start("/bin/true"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Start(%+v) = %v, want %q", l, err, want)
		}
	}
	for _, bad := range []string{",layered", "x,rw", "x,ro,layered", "x,size=4096", "x,ro,size=4096", "x,layered,size=0", "x,layered,size=-512",
		"x,layered,size=1000", "x,layered,size=2G", "x,layered,size="} {
		if _, err := ParseLaunch([]string{"-kernel", "k", "-disk", bad}, &bytes.Buffer{}); err == nil {
			t.Errorf("-disk %q accepted", bad)
		}
	}
	for _, bad := range []string{"bogus", "KILL", "trap,kill"} {
		if _, err := ParseLaunch([]string{"-kernel", "k", "-seccomp", bad}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "want kill, trap or off") {
			t.Errorf("-seccomp %q: %v", bad, err)
		}
	}
	cfg := filepath.Join(t.TempDir(), "vm.json")
	os.WriteFile(cfg, []byte(`{"kernel": "/k", "seccomp": "log"}`), 0o644)
	if _, err := ParseLaunch([]string{"-config", cfg}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), `unknown seccomp mode "log"`) {
		t.Errorf(`a config with "seccomp": "log": %v`, err)
	}
}

// Start runs the binary with the launch's flags in a session of its own,
// its output appended to the log.
func TestLaunchStart(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "vmm")
	os.WriteFile(script, []byte("#!/bin/sh\necho \"$@\"\necho pgid=$(cut -d\" \" -f5 /proc/$$/stat) pid=$$ >&2\n"), 0o755)
	l := sampleLaunches["fork"]
	l.Log = filepath.Join(dir, "vmm.log")
	os.WriteFile(l.Log, []byte("earlier\n"), 0o600)
	cmd, err := l.Start(script)
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	log, _ := os.ReadFile(l.Log)
	lines := strings.Split(strings.TrimSpace(string(log)), "\n")
	if len(lines) != 3 || lines[0] != "earlier" || lines[1] != strings.Join(l.Args(), " ") {
		t.Fatalf("log %q: want the earlier line, then the flags", log)
	}
	var pgid, pid string
	for _, f := range strings.Fields(lines[2]) {
		k, v, _ := strings.Cut(f, "=")
		if k == "pgid" {
			pgid = v
		} else {
			pid = v
		}
	}
	if pgid == "" || pgid != pid {
		t.Errorf("the VMM runs in process group %s, not its own (%s)", pgid, pid)
	}
}
