// Package kvmtest decides what a kvm-tier test does when /dev/kvm is not
// usable: skip with a hint on a developer's machine, fail under `make test`.
//
// Every kvm-tier test is named TestKVM... and starts with Require(t). The
// KVM lab (internal/kvmlab) runs exactly those tests, on real /dev/kvm, with
// SAILBOX_REQUIRE_KVM=1 so that a missing device is a failure, not a skip.
package kvmtest

import (
	"os"
	"os/exec"
	"testing"

	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// RequireEnv, when "1", turns a missing /dev/kvm into a test failure.
const RequireEnv = "SAILBOX_REQUIRE_KVM"

// LabEnv is "1" in the KVM lab's test steps: there, QEMU's emulated SVM
// now and then breaks a guest (a triple fault; see the README), which a
// test that runs many guests for long may count instead of failing on.
// On a host's real KVM the same sign is a bug.
const LabEnv = "SAILBOX_KVM_LAB"

// CrashedConsolesEnv is set in a step that the KVM lab runs again after
// it crashed: the host paths of the crashed labs' console logs, oldest
// first, separated by os.PathListSeparator (the host's files are shared,
// read-only, at the same paths in the lab). Each log holds everything the
// lab's steps printed before it crashed, the lab kernel's messages mixed
// in, so a step that hands back its results as it goes (sailbox-bench)
// can resume from the last it handed back.
const CrashedConsolesEnv = "KVMLAB_CRASHED_CONSOLES"

// InLab reports whether the test runs in the KVM lab.
func InLab() bool { return os.Getenv(LabEnv) == "1" }

// Require opens /dev/kvm, failing or skipping the test when it is unusable.
func Require(t testing.TB) *kvm.System {
	t.Helper()
	sys, err := kvm.OpenUsable()
	if err != nil {
		if os.Getenv(RequireEnv) == "1" {
			t.Fatalf("kvm tier: %v (%s=1: this run must have /dev/kvm)", err, RequireEnv)
		}
		t.Skipf("kvm tier: %v; run `make test` to run it in the KVM lab", err)
	}
	t.Cleanup(func() { sys.Close() })
	return sys
}

// Artifact returns the path in env var name (a built guest kernel or
// initramfs), failing under `make test` and skipping elsewhere when unset.
func Artifact(t testing.TB, name string) string {
	t.Helper()
	p := os.Getenv(name)
	if p == "" {
		if os.Getenv(RequireEnv) == "1" {
			t.Fatalf("%s is not set; make test sets it", name)
		}
		t.Skipf("%s is not set; run `make test`, which builds it", name)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return p
}

// Ext4Image makes an empty ext4 file system of size bytes at path (with
// mkfs.ext4, from e2fsprogs, which build/deps.sh installs).
func Ext4Image(t testing.TB, path string, size int64) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", path).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 (e2fsprogs, installed by build/deps.sh): %v: %s", err, out)
	}
}
