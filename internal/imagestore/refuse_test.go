package imagestore

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/sailbox-dev/sailbox/internal/imagestore/imagetest"
)

// Bad input is refused by name, and leaves no file in the store.

// assertEmptyStore fails if the store holds any file: only its
// directory and the empty work directory may remain.
func assertEmptyStore(t *testing.T, s *Store) {
	t.Helper()
	filepath.WalkDir(s.Dir(), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Error(err)
			return nil
		}
		if rel, _ := filepath.Rel(s.Dir(), p); rel != "." && rel != tmpDir {
			t.Errorf("left in the store: %s", rel)
		}
		return nil
	})
}

// hostFile is what the tests check an escape never touched.
type hostFile struct {
	path  string
	sum   [32]byte
	nlink uint64
}

func snapshotHostFile(t *testing.T, path string) hostFile {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return hostFile{path, sha256.Sum256(data), uint64(st.Nlink)}
}

func (h hostFile) check(t *testing.T) {
	t.Helper()
	if now := snapshotHostFile(t, h.path); now != h {
		t.Errorf("host %s changed: %+v, was %+v", h.path, now, h)
	}
}

func TestRefuseUnsafeEntries(t *testing.T) {
	passwd := snapshotHostFile(t, "/etc/passwd")
	sh := fileE("bin/sh", "sh", 0o755, 0, 0)
	for _, c := range []struct {
		name    string
		entries []entry
		mention string // the entry the error must name
	}{
		{"dot-dot name", []entry{sh, fileE("../evil", "x", 0o644, 0, 0)}, "../evil"},
		{"deeper dot-dot name", []entry{sh, dirE("a", 0o755, 0, 0), fileE("a/../../evil", "x", 0o644, 0, 0)}, "a/../../evil"},
		// Unpacked naively, passwd would be written to the host's /etc.
		// Refused rather than kept inside: a layer never holds a path
		// beneath its own symlink unless it was crafted to.
		{"file through an absolute symlink", []entry{sh, symlinkE("etc", "/etc"), fileE("etc/passwd", "pwned\n", 0o644, 0, 0)}, "etc/passwd"},
		{"file through a relative symlink", []entry{sh, symlinkE("up", "../../.."), fileE("up/evil", "x", 0o644, 0, 0)}, "up"},
		{"symlink climbing out", []entry{sh, dirE("usr", 0o755, 0, 0), symlinkE("usr/up", "../../..")}, "usr/up"},
		// A hard link to a host file would copy it into the image.
		{"hard link through an absolute symlink", []entry{sh, symlinkE("hostetc", "/etc"), hardlinkE("stolen", "hostetc/passwd")}, "stolen"},
		{"hard link through a symlink chain", []entry{sh, dirE("a", 0o755, 0, 0), symlinkE("a/b", ".."), symlinkE("a/c", "b/../.."), hardlinkE("stolen", "a/c/etc/passwd")}, "stolen"},
		{"hard link climbing out", []entry{sh, hardlinkE("x", "../../etc/passwd")}, "x"},
		{"hard link to an absolute path through a link", []entry{sh, symlinkE("e", "/etc"), hardlinkE("y", "/e/passwd")}, "y"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newStore(t, Options{})
			ref := layoutOf(t, map[string]v1.Image{testTag: imageOf(t, v1.Config{}, layerOf(t, dirE("bin", 0o755, 0, 0)), layerOf(t, c.entries...))})
			_, err := s.Import(context.Background(), ref)
			if !errors.Is(err, ErrUnsafeEntry) || !strings.Contains(err.Error(), `"`+c.mention+`"`) {
				t.Errorf("%v, want ErrUnsafeEntry naming %q", err, c.mention)
			}
			assertEmptyStore(t, s)
			passwd.check(t)
		})
	}
}

// Links that stay inside are kept, resolved as the guest will. A path
// of an upper layer beneath a symlink of a lower one is a directory of
// its own, as in overlayfs (the upper directory hides the lower link):
// nothing is written where the link points.
func TestKeepInsideLinks(t *testing.T) {
	passwd := snapshotHostFile(t, "/etc/passwd")
	s := newStore(t, Options{})
	img := imageOf(t, v1.Config{},
		layerOf(t,
			dirE("bin", 0o755, 0, 0),
			fileE("bin/busybox", "bb", 0o755, 0, 0),
			symlinkE("bin/sh", "/bin/busybox"), // absolute, as Alpine's
			dirE("usr", 0o755, 0, 0),
			symlinkE("usr/sbin", "../bin"),
			hardlinkE("usr/bb", "/bin/busybox"), // leading "/" in a hard link
			symlinkE("etc", "/etc"),
		),
		layerOf(t,
			dirE("usr", 0o755, 0, 0),
			hardlinkE("usr/again", "usr/sbin/busybox"), // to a lower layer's file, through a relative link
			fileE("etc/passwd", "inside\n", 0o644, 0, 0),
		),
	)
	got, err := s.Import(context.Background(), tarballOf(t, img))
	if err != nil {
		t.Fatal(err)
	}
	tree := readBase(t, got.Path)
	if tree["bin/sh"].target != "/bin/busybox" || tree["usr/sbin"].target != "../bin" {
		t.Errorf("link targets changed: %+v %+v", tree["bin/sh"], tree["usr/sbin"])
	}
	if bb := tree["bin/busybox"].ino; bb == 0 || tree["usr/bb"].ino != bb || tree["usr/again"].ino != bb {
		t.Errorf("hard links: %d %d %d, want one inode", bb, tree["usr/bb"].ino, tree["usr/again"].ino)
	}
	if tree["etc"].mode != sIFDIR|0o755 || tree["etc/passwd"].body != "inside\n" {
		t.Errorf("etc %+v, etc/passwd %+v: want a directory holding the upper file", tree["etc"], tree["etc/passwd"])
	}
	passwd.check(t)
}

func TestRefuseNoShell(t *testing.T) {
	for _, c := range []struct {
		name    string
		entries []entry
		mention string
	}{
		{"missing", []entry{dirE("etc", 0o755, 0, 0), fileE("etc/passwd", "x", 0o644, 0, 0)}, "missing"},
		{"dangling", []entry{dirE("bin", 0o755, 0, 0), symlinkE("bin/sh", "busybox")}, "dangling"},
		{"dangling absolute", []entry{dirE("bin", 0o755, 0, 0), symlinkE("bin/sh", "/usr/bin/dash")}, "dangling"},
		{"not executable", []entry{dirE("bin", 0o755, 0, 0), fileE("bin/sh", "x", 0o644, 0, 0)}, "not an executable"},
		{"a directory", []entry{dirE("bin/sh", 0o755, 0, 0)}, "not an executable"},
		{"a link loop", []entry{dirE("bin", 0o755, 0, 0), symlinkE("bin/sh", "/bin/sh")}, "too many levels"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newStore(t, Options{})
			_, err := s.Import(context.Background(), tarballOf(t, imageOf(t, v1.Config{}, layerOf(t, c.entries...))))
			if !errors.Is(err, ErrNoShell) || !strings.Contains(err.Error(), c.mention) {
				t.Errorf("%v, want ErrNoShell saying %q", err, c.mention)
			}
			assertEmptyStore(t, s)
		})
	}
}

func TestRefuseBadRef(t *testing.T) {
	s := newStore(t, Options{})
	notLayout := t.TempDir()
	for _, ref := range []string{"", "/no/such/Path/image.tar", "not a reference!", "UPPER/case", notLayout, "./relative/missing"} {
		_, err := s.Import(context.Background(), ref)
		if !errors.Is(err, ErrBadRef) || !strings.Contains(err.Error(), ref) {
			t.Errorf("%q: %v, want ErrBadRef naming it", ref, err)
		}
	}
	assertEmptyStore(t, s)
}

func TestRefuseCorruptImages(t *testing.T) {
	img := imageOf(t, v1.Config{}, shellLayer(t), layerOf(t, fileE("data", strings.Repeat("d", 10000), 0o644, 0, 0)))
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	blobOf := func(dir string, l v1.Layer) string {
		h, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return filepath.Join(dir, "blobs", h.Algorithm, h.Hex)
	}
	for _, c := range []struct {
		name    string
		corrupt func(t *testing.T) string // returns the REF
		mention string                    // what the error must name, if set
	}{
		{name: "layer replaced by another valid one", mention: "layer 2 of 2", corrupt: func(t *testing.T) string {
			dir := layoutOf(t, map[string]v1.Image{testTag: img})
			var buf bytes.Buffer
			zw := gzip.NewWriter(&buf)
			zw.Write(tarBytes(t, fileE("data", "other content", 0o644, 0, 0)))
			zw.Close()
			if err := os.WriteFile(blobOf(dir, layers[1]), buf.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			return dir
		}},
		// Extract's own tar reader fails on it, and does not say where.
		{name: "layer that is no tar", mention: "layer 2 of 2", corrupt: func(t *testing.T) string {
			dir := layoutOf(t, map[string]v1.Image{testTag: img})
			var buf bytes.Buffer
			zw := gzip.NewWriter(&buf)
			zw.Write([]byte(strings.Repeat("not a tar archive\n", 100)))
			zw.Close()
			if err := os.WriteFile(blobOf(dir, layers[1]), buf.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			return dir
		}},
		{name: "layer with flipped bytes", mention: "layer 2 of 2", corrupt: func(t *testing.T) string {
			dir := layoutOf(t, map[string]v1.Image{testTag: img})
			blob := blobOf(dir, layers[1])
			data, err := os.ReadFile(blob)
			if err != nil {
				t.Fatal(err)
			}
			for i := len(data) / 3; i < len(data)/3+8; i++ {
				data[i] ^= 0xff
			}
			if err := os.WriteFile(blob, data, 0o644); err != nil {
				t.Fatal(err)
			}
			return dir
		}},
		{name: "layer missing", mention: "layer 1 of 2", corrupt: func(t *testing.T) string {
			dir := layoutOf(t, map[string]v1.Image{testTag: img})
			if err := os.Remove(blobOf(dir, layers[0])); err != nil {
				t.Fatal(err)
			}
			return dir
		}},
		// Damage that leaves valid JSON: nothing fails to parse, and a
		// layout's blobs are read by name, so only their digests tell.
		// A changed config would otherwise give the box another Env.
		{name: "config changed, still valid JSON", mention: "config", corrupt: func(t *testing.T) string {
			dir := layoutOf(t, map[string]v1.Image{testTag: img})
			cd, err := img.ConfigName()
			if err != nil {
				t.Fatal(err)
			}
			rewriteJSON(t, filepath.Join(dir, "blobs", cd.Algorithm, cd.Hex), func(m map[string]any) {
				m["config"] = map[string]any{"Env": []string{"PATH=/evil"}}
			})
			return dir
		}},
		{name: "manifest changed, still valid JSON", mention: "manifest", corrupt: func(t *testing.T) string {
			dir := layoutOf(t, map[string]v1.Image{testTag: img})
			md, err := img.Digest()
			if err != nil {
				t.Fatal(err)
			}
			rewriteJSON(t, filepath.Join(dir, "blobs", md.Algorithm, md.Hex), func(m map[string]any) {
				m["annotations"] = map[string]string{"damaged": "yes"}
			})
			return dir
		}},
		{name: "docker-save config changed, still valid JSON", mention: "config", corrupt: func(t *testing.T) string {
			file := tarballOf(t, img)
			cd, err := img.ConfigName()
			if err != nil {
				t.Fatal(err)
			}
			rewriteTarMember(t, file, cd.String(), func(data []byte) []byte {
				return bytes.Replace(data, []byte(`"architecture":"amd64"`), []byte(`"architecture":"amd64","config":{"Env":["PATH=/evil"]}`), 1)
			})
			return file
		}},
		{name: "truncated docker-save tarball", corrupt: func(t *testing.T) string {
			file := tarballOf(t, img)
			st, err := os.Stat(file)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(file, st.Size()/2); err != nil {
				t.Fatal(err)
			}
			return file
		}},
		{name: "not a tarball", corrupt: func(t *testing.T) string {
			file := filepath.Join(t.TempDir(), "junk.tar")
			if err := os.WriteFile(file, []byte("junk"), 0o644); err != nil {
				t.Fatal(err)
			}
			return file
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newStore(t, Options{})
			_, err := s.Import(context.Background(), c.corrupt(t))
			if !errors.Is(err, ErrBadImage) || !strings.Contains(fmt.Sprint(err), c.mention) {
				t.Errorf("%v, want ErrBadImage naming %q", err, c.mention)
			}
			t.Log(err)
			assertEmptyStore(t, s)
		})
	}
}

func TestRefuseTooLarge(t *testing.T) {
	big := imageOf(t, v1.Config{}, shellLayer(t), layerOf(t, fileE("big", strings.Repeat("0", 2<<20), 0o644, 0, 0)))
	for kind, ref := range map[string]string{
		"oci-layout (compressed small, refused while unpacking)": layoutOf(t, map[string]v1.Image{testTag: big}),
		"docker-archive (refused by its stored size)":            tarballOf(t, big),
	} {
		t.Run(kind, func(t *testing.T) {
			s := newStore(t, Options{MaxImageBytes: 1 << 20})
			_, err := s.Import(context.Background(), ref)
			if !errors.Is(err, ErrTooLarge) {
				t.Errorf("%v, want ErrTooLarge", err)
			}
			assertEmptyStore(t, s)
		})
	}
}

// The store on a small tmpfs: a layer that would fill it, and a tree
// that fits but leaves no room for its base.
func TestRefuseFullDisk(t *testing.T) {
	for _, c := range []struct {
		name  string
		bytes int
	}{
		{"layer fills the disk", 20 << 20},
		{"no room for the base", 5 << 20},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=8m,mode=0700"); err != nil {
				t.Skipf("cannot mount a tmpfs to fill (%v); run as root where mounting is allowed", err)
			}
			t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
			s := newStore(t, Options{ReserveBytes: 1})
			s2, err := Open(dir, s.opts)
			if err != nil {
				t.Fatal(err)
			}
			img := imageOf(t, v1.Config{}, shellLayer(t), imagetest.ZeroLayer(t, "big", int64(c.bytes)))
			_, err = s2.Import(context.Background(), layoutOf(t, map[string]v1.Image{testTag: img}))
			if !errors.Is(err, ErrNoSpace) {
				t.Errorf("%v, want ErrNoSpace", err)
			}
			t.Log(err)
			assertEmptyStore(t, s2)
		})
	}
}

// A context cancelled while a layer downloads stops the import, which
// leaves nothing behind.
func TestCancelMidImport(t *testing.T) {
	s := newStore(t, Options{})
	img := imageOf(t, v1.Config{}, shellLayer(t), layerOf(t, fileE("data", strings.Repeat("z", 1<<20), 0o644, 0, 0)))
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	blob, err := layers[1].Digest()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	host := serveRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+blob.String()) {
				cancel()
			}
			h.ServeHTTP(w, r)
		})
	})
	ref := push(t, host, "test/cancel", img)
	_, err = s.Import(ctx, ref)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("%v, want context.Canceled", err)
	}
	assertEmptyStore(t, s)
}

// rewriteJSON rewrites the JSON object in file through change.
func rewriteJSON(t *testing.T, file string, change func(map[string]any)) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	change(m)
	if data, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// rewriteTarMember rewrites member name of the tar file through change,
// failing unless change altered it.
func rewriteTarMember(t *testing.T, file, name string, change func([]byte) []byte) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out bytes.Buffer
	tr, tw := tar.NewReader(f), tar.NewWriter(&out)
	found := false
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Name == name {
			changed := change(data)
			if bytes.Equal(changed, data) {
				t.Fatalf("%s in %s: unchanged", name, file)
			}
			data, found = changed, true
			hdr.Size = int64(len(data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Fatalf("no %s in %s", name, file)
	}
	if err := os.WriteFile(file, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// A digest is checked in its own algorithm: OCI allows sha512, and a
// layout that uses it is not damaged.
func TestCheckDigestAlgorithms(t *testing.T) {
	content := []byte(`{"schemaVersion":2}`)
	read := func() ([]byte, error) { return content, nil }
	s256, s512 := sha256.Sum256(content), sha512.Sum512(content)
	for _, h := range []string{"sha256:" + hex.EncodeToString(s256[:]), "sha512:" + hex.EncodeToString(s512[:])} {
		want, err := v1.NewHash(h)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkDigest("manifest", want, read); err != nil {
			t.Errorf("%s: %v", h, err)
		}
		want.Hex = strings.Repeat("0", len(want.Hex))
		if err := checkDigest("manifest", want, read); err == nil || !strings.Contains(err.Error(), "content is "+h) {
			t.Errorf("%s under another digest: %v, want a refusal naming the content's digest", h, err)
		}
	}
}
