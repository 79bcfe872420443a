// Package imagetest builds OCI images for tests and serves them the three
// ways the image store reads them: an OCI image layout, a `docker save`
// tarball and a registry on loopback.
//
// Layers are written here entry by entry (Dir, File, Symlink, Whiteout,
// ...), so that a test states exactly what each holds, and Busybox is a
// bootable image of several layers (the host's static busybox) whose
// flattened tree BusyboxTree lists, for a test to compare a box or a base
// with. Every helper fails the test on an error; none of this is used
// outside tests.
package imagetest

import (
	"archive/tar"
	"bytes"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"path"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Time is every entry's modification time.
var Time = time.Unix(1_700_000_000, 0)

// Entry is one entry of a layer's tar stream.
type Entry struct {
	Header tar.Header
	Body   []byte
}

// Dir is a directory entry.
func Dir(name string, mode int64, uid, gid int) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, Uid: uid, Gid: gid, ModTime: Time}}
}

// File is a regular file entry.
func File(name, body string, mode int64, uid, gid int) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Uid: uid, Gid: gid, Size: int64(len(body)), ModTime: Time}, Body: []byte(body)}
}

// Symlink is a symbolic link entry, owned by root.
func Symlink(name, target string) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: Time}}
}

// Hardlink is a hard link entry to target, a path in the image.
func Hardlink(name, target string) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o644, ModTime: Time}}
}

// Whiteout deletes dir/name (a file or a whole directory) of the layers
// below. dir "" is the image's root.
func Whiteout(dir, name string) Entry {
	return File(path.Join(dir, ".wh."+name), "", 0o644, 0, 0)
}

// Opaque hides everything the layers below hold in dir: it keeps only
// what its own layer puts there.
func Opaque(dir string) Entry {
	return File(dir+"/.wh..wh..opq", "", 0o644, 0, 0)
}

// WithXattrs gives e extended attributes (PAX SCHILY.xattr records).
func WithXattrs(e Entry, attrs map[string]string) Entry {
	e.Header.PAXRecords = map[string]string{}
	for k, v := range attrs {
		e.Header.PAXRecords["SCHILY.xattr."+k] = v
	}
	e.Header.Format = tar.FormatPAX
	return e
}

// TarBytes is entries as an uncompressed tar stream.
func TarBytes(t testing.TB, entries ...Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.Header
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %s: %v", h.Name, err)
		}
		if _, err := tw.Write(e.Body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Layer is a layer holding entries, in this order.
func Layer(t testing.TB, entries ...Entry) v1.Layer {
	t.Helper()
	data := TarBytes(t, entries...)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Image stacks layers (the first is the lowest) under a linux/amd64
// config whose Config is cfg.
func Image(t testing.TB, cfg v1.Config, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config = cfg
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// Serving an image.

// Tag is the tag images get in layouts, tarballs and registries.
const Tag = "v1"

// TarballName is the repository of an image in a tarball
// (WriteTarball): it is tagged TarballName:Tag.
const TarballName = "example.test/img"

// WriteLayout writes an OCI image layout at dir (created, or empty)
// holding images, each annotated with its tag (org.opencontainers.image.ref.name).
func WriteLayout(t testing.TB, dir string, images map[string]v1.Image) {
	t.Helper()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	for tag, img := range images {
		if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag})); err != nil {
			t.Fatal(err)
		}
	}
}

// WriteTarball writes img as `docker save` does, to file, tagged
// TarballName:Tag.
func WriteTarball(t testing.TB, file string, img v1.Image) {
	t.Helper()
	tag, err := name.NewTag(TarballName + ":" + Tag)
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(file, tag, img); err != nil {
		t.Fatal(err)
	}
}

// ServeRegistry runs a registry (go-containerregistry's, in memory) on
// loopback until the test ends, and returns its host:port. wrap, if set,
// sees every request first.
func ServeRegistry(t testing.TB, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// Push writes img to the registry at host as repo:Tag over plain HTTP,
// and returns that reference.
func Push(t testing.TB, host, repo string, img v1.Image) string {
	t.Helper()
	ref := host + "/" + repo + ":" + Tag
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	return ref
}

// ZeroLayer is a layer holding one file, name, of size zero bytes,
// streamed rather than held in memory: a huge layer that compresses to
// little.
func ZeroLayer(t testing.TB, name string, size int64) v1.Layer {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		pr, pw := io.Pipe()
		go func() {
			tw := tar.NewWriter(pw)
			err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: size, ModTime: Time})
			if err == nil {
				_, err = io.Copy(tw, io.LimitReader(zeros{}, size))
			}
			if err == nil {
				err = tw.Close()
			}
			pw.CloseWithError(err)
		}()
		return pr, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
