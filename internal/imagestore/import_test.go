package imagestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/sailbox-dev/sailbox/internal/imagestore/imagetest"
)

// Each way to name an image gives a base whose tree is the flattened
// image, exactly, and keeps its config.
func TestImportSources(t *testing.T) {
	img := richImage(t)
	digest, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	sources := map[string]func(t *testing.T) string{
		"oci-layout": func(t *testing.T) string {
			return layoutOf(t, map[string]v1.Image{testTag: img})
		},
		"docker-archive": func(t *testing.T) string { return tarballOf(t, img) },
		"registry": func(t *testing.T) string {
			return push(t, serveRegistry(t, nil), "test/rich", img)
		},
	}
	for kind, serve := range sources {
		t.Run(kind, func(t *testing.T) {
			s := newStore(t, Options{})
			ref := serve(t)
			got, err := s.Import(context.Background(), ref)
			if err != nil {
				t.Fatal(err)
			}
			if got.Digest != digest.String() || got.Ref != ref {
				t.Errorf("digest %s ref %s, want %s %s", got.Digest, got.Ref, digest, ref)
			}
			if want := filepath.Join(s.Dir(), "sha256-"+digest.Hex+".ext4"); got.Path != want {
				t.Errorf("path %s, want %s", got.Path, want)
			}
			st, err := os.Stat(got.Path)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o444 {
				t.Errorf("base mode %v, want 0444", st.Mode())
			}
			fsck(t, got.Path)
			tree := checkTree(t, got.Path, richTree())
			if a, b := tree["usr/bin/tool"], tree["usr/bin/tool-link"]; a.ino == 0 || a.ino != b.ino {
				t.Errorf("hard link lost: inodes %d and %d", a.ino, b.ino)
			}
			for _, p := range []string{"etc/passwd", "usr/bin/tool", "home/user/notes.txt"} {
				if !tree[p].mtime.Equal(testTime) {
					t.Errorf("%s: mtime %v, want %v", p, tree[p].mtime, testTime)
				}
			}
			checkConfig(t, got, s)
			assertNoWork(t, s)
		})
	}
}

func checkConfig(t *testing.T, img Image, s *Store) {
	t.Helper()
	want := Config{Env: richConfig.Env, WorkingDir: richConfig.WorkingDir, User: richConfig.User, Entrypoint: richConfig.Entrypoint, Cmd: richConfig.Cmd}
	if !reflect.DeepEqual(img.Config, want) {
		t.Errorf("config %+v, want %+v", img.Config, want)
	}
	data, err := os.ReadFile(strings.TrimSuffix(img.Path, ".ext4") + ".json")
	if err != nil {
		t.Fatal(err)
	}
	var rec record
	if err := json.Unmarshal(data, &rec); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(rec.Config, want) || rec.Digest != img.Digest {
		t.Errorf("record %s, want config %+v digest %s", data, want, img.Digest)
	}
}

// assertNoWork fails unless the store's work directory is empty.
func assertNoWork(t *testing.T, s *Store) {
	t.Helper()
	left, err := os.ReadDir(filepath.Join(s.Dir(), tmpDir))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range left {
		t.Errorf("left in the store's work directory: %s", e.Name())
	}
}

// The same image from any source is one base, converted once: the
// config digest does not depend on how a transport compressed layers.
func TestImportOnceAcrossSources(t *testing.T) {
	img := richImage(t)
	s := newStore(t, Options{})
	refs := []string{
		layoutOf(t, map[string]v1.Image{testTag: img}),
		tarballOf(t, img),
		push(t, serveRegistry(t, nil), "test/rich", img),
	}
	var first Image
	for i, ref := range refs {
		got, err := s.Import(context.Background(), ref)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = got
			continue
		}
		if got.Digest != first.Digest || got.Path != first.Path || got.Ref != first.Ref {
			t.Errorf("import %d: %+v, want the first base %+v", i, got, first)
		}
	}
	if n := s.conversions.Load(); n != 1 {
		t.Errorf("%d conversions, want 1", n)
	}
	list, err := s.List()
	if err != nil || len(list) != 1 {
		t.Fatalf("list: %v %v, want one image", list, err)
	}
}

func TestConcurrentImportsConvertOnce(t *testing.T) {
	s := newStore(t, Options{})
	ref := layoutOf(t, map[string]v1.Image{testTag: richImage(t)})
	var wg sync.WaitGroup
	results := make([]Image, 6)
	errs := make([]error, len(results))
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = s.Import(context.Background(), ref)
		}()
	}
	wg.Wait()
	for i := range results {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if results[i].Path != results[0].Path {
			t.Errorf("import %d: %s, want %s", i, results[i].Path, results[0].Path)
		}
	}
	if n := s.conversions.Load(); n != 1 {
		t.Errorf("%d conversions, want 1", n)
	}
}

func TestGetListRemove(t *testing.T) {
	s := newStore(t, Options{})
	a, err := s.Import(context.Background(), layoutOf(t, map[string]v1.Image{testTag: imageOf(t, v1.Config{Cmd: []string{"a"}}, shellLayer(t))}))
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Import(context.Background(), tarballOf(t, imageOf(t, v1.Config{Cmd: []string{"b"}}, shellLayer(t))))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(a.Digest); err != nil || !reflect.DeepEqual(got, a) {
		t.Errorf("get: %+v %v, want %+v", got, err, a)
	}
	list, err := s.List()
	if err != nil || len(list) != 2 || list[0].Digest != a.Digest || list[1].Digest != b.Digest {
		t.Errorf("list: %+v %v, want a then b", list, err)
	}
	if err := s.Remove(a.Digest); err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{s.Remove(a.Digest), errOf(s.Get(a.Digest)), errOf(s.Get("sha256:nothex")), errOf(s.Get("md5:00"))} {
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("after remove: %v, want ErrNotFound", err)
		}
	}
	if _, err := os.Stat(a.Path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("removed base still there: %v", err)
	}
	if list, _ := s.List(); len(list) != 1 || list[0].Digest != b.Digest {
		t.Errorf("list after remove: %+v", list)
	}
	// Once removed, an import converts again.
	if _, err := s.Import(context.Background(), tarballOf(t, imageOf(t, v1.Config{Cmd: []string{"a"}}, shellLayer(t)))); err != nil {
		t.Fatal(err)
	}
	if n := s.conversions.Load(); n != 3 {
		t.Errorf("%d conversions, want 3", n)
	}
}

func errOf(_ Image, err error) error { return err }

// Open removes what a crashed import left: its work directory and a
// record renamed into place without its base.
func TestOpenRemovesDebris(t *testing.T) {
	s := newStore(t, Options{})
	img, err := s.Import(context.Background(), tarballOf(t, imageOf(t, v1.Config{}, shellLayer(t))))
	if err != nil {
		t.Fatal(err)
	}
	work := filepath.Join(s.Dir(), tmpDir, "sha256-ab-123")
	if err := os.MkdirAll(filepath.Join(work, "root", "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	orphan := filepath.Join(s.Dir(), "sha256-"+strings.Repeat("0", 64)+".json")
	if err := os.WriteFile(orphan, []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(s.Dir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	assertNoWork(t, s2)
	if _, err := os.Stat(orphan); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("orphan record kept: %v", err)
	}
	if _, err := s2.Get(img.Digest); err != nil {
		t.Errorf("complete base lost: %v", err)
	}
}

func TestLayoutAndTarballSelectors(t *testing.T) {
	s := newStore(t, Options{})
	a := imageOf(t, v1.Config{Cmd: []string{"a"}}, shellLayer(t))
	b := imageOf(t, v1.Config{Cmd: []string{"b"}}, shellLayer(t))
	dir := layoutOf(t, map[string]v1.Image{"a": a, "b": b})
	digestOf := func(img v1.Image) string {
		h, err := img.ConfigName()
		if err != nil {
			t.Fatal(err)
		}
		return h.String()
	}
	manifestB, err := b.Digest()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		ref  string
		want string // config digest; "" for ErrBadRef
	}{
		{dir, ""},
		{dir + ":a", digestOf(a)},
		{dir + "@" + manifestB.String(), digestOf(b)},
		{dir + ":c", ""},
		{dir + "@sha256:" + strings.Repeat("0", 64), ""},
	} {
		got, err := s.Import(context.Background(), c.ref)
		switch {
		case c.want == "" && !errors.Is(err, ErrBadRef):
			t.Errorf("%s: %v, want ErrBadRef", c.ref, err)
		case c.want != "" && (err != nil || got.Digest != c.want):
			t.Errorf("%s: %s %v, want %s", c.ref, got.Digest, err, c.want)
		}
	}
	file := tarballOf(t, a)
	if got, err := s.Import(context.Background(), file+":example.test/img:"+testTag); err != nil || got.Digest != digestOf(a) {
		t.Errorf("tarball with its tag: %v", err)
	}
	if _, err := s.Import(context.Background(), file+":example.test/other:v9"); err == nil {
		t.Errorf("tarball with a tag it lacks: imported")
	}
}

// From a multi-platform index the linux/amd64 image is taken; an image
// for another platform alone is refused.
func TestPlatform(t *testing.T) {
	s := newStore(t, Options{})
	host := serveRegistry(t, nil)
	amd64 := imageOf(t, v1.Config{Cmd: []string{"amd64"}}, shellLayer(t))
	arm64 := imageOf(t, v1.Config{Cmd: []string{"arm64"}}, shellLayer(t))
	cf, _ := arm64.ConfigFile()
	cf = cf.DeepCopy()
	cf.Architecture = "arm64"
	arm64, err := mutate.ConfigFile(arm64, cf)
	if err != nil {
		t.Fatal(err)
	}
	noise, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: arm64, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		mutate.IndexAddendum{Add: noise, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "windows", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: amd64, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
	)
	ref := host + "/test/multi:" + testTag
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(r, idx); err != nil {
		t.Fatal(err)
	}
	got, err := s.Import(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := amd64.ConfigName(); got.Digest != want.String() {
		t.Errorf("picked %s, want the amd64 image %s", got.Digest, want)
	}
	// The same index nested in an OCI layout.
	dir := t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendIndex(idx); err != nil {
		t.Fatal(err)
	}
	if again, err := s.Import(context.Background(), dir); err != nil || again.Digest != got.Digest {
		t.Errorf("layout with a nested index: %+v %v, want %s", again, err, got.Digest)
	}
	_, err = s.Import(context.Background(), push(t, host, "test/arm", arm64))
	if !errors.Is(err, ErrBadImage) || !strings.Contains(err.Error(), "arm64") {
		t.Errorf("arm64 image: %v, want ErrBadImage naming arm64", err)
	}
}

// A tree of many small files and no spare room still fits the size the
// formula gives.
func TestSizeFormulaFitsTightTree(t *testing.T) {
	s := newStore(t, Options{SpareBytes: -1})
	entries := []entry{dirE("bin", 0o755, 0, 0), fileE("bin/sh", "sh", 0o755, 0, 0)}
	for d := range 40 {
		dir := fmt.Sprintf("d%02d", d)
		entries = append(entries, dirE(dir, 0o755, 0, 0))
		for f := range 100 {
			entries = append(entries, fileE(fmt.Sprintf("%s/a-rather-long-file-name-to-fill-directory-blocks-%03d", dir, f), strings.Repeat("x", 5000), 0o644, 0, 0))
		}
	}
	entries = append(entries, fileE("big", strings.Repeat("y", 3<<20), 0o644, 0, 0))
	got, err := s.Import(context.Background(), tarballOf(t, imageOf(t, v1.Config{}, layerOf(t, entries...))))
	if err != nil {
		t.Fatal(err)
	}
	fsck(t, got.Path)
	if got.Bytes < minFSBytes {
		t.Errorf("file system of %d bytes, want at least %d", got.Bytes, minFSBytes)
	}
}

// imagetest's Busybox image, which the kvm tier boots, converts to
// exactly the tree imagetest says it flattens to.
func TestImportBusyboxImage(t *testing.T) {
	if _, err := os.Stat(imagetest.HostBusybox); err != nil {
		t.Skipf("the Busybox image needs the host's static busybox (apt install busybox-static): %v", err)
	}
	s := newStore(t, Options{})
	got, err := s.Import(context.Background(), layoutOf(t, map[string]v1.Image{testTag: imagetest.Busybox(t)}))
	if err != nil {
		t.Fatal(err)
	}
	wantTree := map[string]want{}
	for p, n := range imagetest.BusyboxTree(t) {
		wantTree[p] = want{mode: n.Mode, uid: n.UID, gid: n.GID, body: n.Body, target: n.Target}
	}
	checkTree(t, got.Path, wantTree)
	c := imagetest.BusyboxConfig
	if want := (Config{Env: c.Env, WorkingDir: c.WorkingDir, User: c.User, Cmd: c.Cmd}); !reflect.DeepEqual(got.Config, want) {
		t.Errorf("config %+v, want %+v", got.Config, want)
	}
}
