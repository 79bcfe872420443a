package kvmlab

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
)

// An image a step's environment names is copied once into the lab's RAM,
// holes kept, with its configuration beside it; the steps' variables and
// the arguments naming it point at the copy; a registry reference, a
// directory and another variable are left alone.
func TestStageImages(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "cache/img"), 0o755); err != nil {
		t.Fatal(err)
	}
	image := make([]byte, 5<<20+123) // holes between data, an odd tail
	copy(image[1<<20:], "superblock")
	copy(image[3<<20+7:], "inode table")
	image[len(image)-1] = 1
	for name, b := range map[string][]byte{"rootfs.ext4": image, "rootfs.json": []byte(`{"env":[]}`), "build.log": []byte("log")} {
		if err := os.WriteFile(filepath.Join(root, "cache/img", name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const path = "/cache/img/rootfs.ext4"
	plan := &Plan{Steps: []Step{
		{Name: "a", Path: "/a.test", Env: []string{"SAILBOX_REQUIRE_KVM=1", "SAILBOX_DEFAULT_IMAGE=" + path, "SAILBOX_VMM=" + path}},
		{Name: "b", Path: "/b", Args: []string{"-image", path}, Env: []string{"SAILBOX_DEFAULT_IMAGE=" + path}},
		{Name: "c", Path: "/c", Env: []string{"SAILBOX_DEFAULT_IMAGE=docker.io/library/debian:bookworm"}},
		{Name: "d", Path: "/d", Env: []string{"SAILBOX_DEFAULT_IMAGE=/cache/img"}},
	}}
	var out bytes.Buffer
	if err := stageImages(plan, root, "/run/kvmlab/images", &out); err != nil {
		t.Fatal(err)
	}
	const to = "/run/kvmlab/images/0/rootfs.ext4"
	want := []Step{
		{Name: "a", Path: "/a.test", Env: []string{"SAILBOX_REQUIRE_KVM=1", "SAILBOX_DEFAULT_IMAGE=" + to, "SAILBOX_VMM=" + path}},
		{Name: "b", Path: "/b", Args: []string{"-image", to}, Env: []string{"SAILBOX_DEFAULT_IMAGE=" + to}},
		{Name: "c", Path: "/c", Env: []string{"SAILBOX_DEFAULT_IMAGE=docker.io/library/debian:bookworm"}},
		{Name: "d", Path: "/d", Env: []string{"SAILBOX_DEFAULT_IMAGE=/cache/img"}},
	}
	for i, s := range plan.Steps {
		if s.Name != want[i].Name || !slices.Equal(s.Env, want[i].Env) || !slices.Equal(s.Args, want[i].Args) {
			t.Errorf("step %d: %+v, want %+v", i, s, want[i])
		}
	}
	got, err := os.ReadFile(filepath.Join(root, to))
	if err != nil || !bytes.Equal(got, image) {
		t.Fatalf("the copy differs from the image (%d bytes, %v)", len(got), err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(root, to), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 >= int64(len(image)) {
		t.Errorf("the copy holds %d bytes of %d: its holes were filled", st.Blocks*512, len(image))
	}
	entries, _ := os.ReadDir(filepath.Join(root, "/run/kvmlab/images"))
	if len(entries) != 1 {
		t.Errorf("%d copies, want one for both steps", len(entries))
	}
	files, _ := filepath.Glob(filepath.Join(root, "/run/kvmlab/images/0/*"))
	for i := range files {
		files[i] = filepath.Base(files[i])
	}
	if !slices.Equal(files, []string{"rootfs.ext4", "rootfs.json"}) {
		t.Errorf("copied %v, want the image and its configuration", files)
	}
	if !bytes.Contains(out.Bytes(), []byte("served from the lab's RAM")) {
		t.Errorf("nothing said about the copy: %q", out.String())
	}
}
