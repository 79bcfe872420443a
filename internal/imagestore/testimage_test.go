package imagestore

import (
	"archive/tar"
	"bytes"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
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

// Images for the tests, built from tar layers written here, and served
// the three ways Import reads them.

var testTime = time.Unix(1_700_000_000, 0)

type entry struct {
	hdr  tar.Header
	body []byte
}

func dirE(name string, mode int64, uid, gid int) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, Uid: uid, Gid: gid, ModTime: testTime}}
}

func fileE(name, body string, mode int64, uid, gid int) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Uid: uid, Gid: gid, Size: int64(len(body)), ModTime: testTime}, body: []byte(body)}
}

func symlinkE(name, target string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: testTime}}
}

func hardlinkE(name, target string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o644, ModTime: testTime}}
}

func whiteoutE(dir, name string) entry {
	return fileE(filepath.Join(dir, ".wh."+name), "", 0o644, 0, 0)
}

func opaqueE(dir string) entry {
	return fileE(dir+"/.wh..wh..opq", "", 0o644, 0, 0)
}

func withXattrs(e entry, attrs map[string]string) entry {
	e.hdr.PAXRecords = map[string]string{}
	for k, v := range attrs {
		e.hdr.PAXRecords["SCHILY.xattr."+k] = v
	}
	e.hdr.Format = tar.FormatPAX
	return e
}

func tarBytes(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %s: %v", h.Name, err)
		}
		if _, err := tw.Write(e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func layerOf(t testing.TB, entries ...entry) v1.Layer {
	t.Helper()
	data := tarBytes(t, entries...)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// imageOf stacks layers (the first is the lowest) under a linux/amd64
// config.
func imageOf(t testing.TB, cfg v1.Config, layers ...v1.Layer) v1.Image {
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

// shellLayer is the least a base needs: /bin/sh.
func shellLayer(t testing.TB) v1.Layer {
	return layerOf(t, dirE("bin", 0o755, 0, 0), fileE("bin/sh", "#!fake shell\n", 0o755, 0, 0))
}

var richConfig = v1.Config{
	Env:        []string{"PATH=/usr/bin:/bin", "GREETING=hello world"},
	WorkingDir: "/home/user",
	User:       "1000:1000",
	Entrypoint: []string{"/bin/sh", "-c"},
	Cmd:        []string{"echo hi"},
}

// richImage has three layers with everything a conversion must keep or
// drop: a whiteout, an opaque directory, relative and absolute symlinks,
// a hard link, files of uid 1000, setuid, setgid and sticky modes,
// xattrs, device nodes and a fifo.
func richImage(t testing.TB) v1.Image {
	charDev := entry{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: testTime}}
	fifo := entry{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "run/fifo", Mode: 0o644, ModTime: testTime}}
	base := layerOf(t,
		dirE("bin", 0o755, 0, 0),
		fileE("bin/sh", "#!fake shell\n", 0o755, 0, 0),
		dirE("dev", 0o755, 0, 0),
		charDev,
		dirE("etc", 0o755, 0, 0),
		fileE("etc/passwd", "root:x:0:0::/root:/bin/sh\n", 0o644, 0, 0),
		dirE("home", 0o755, 0, 0),
		dirE("home/user", 0o750, 1000, 1000),
		fileE("home/user/notes.txt", "uid 1000's\n", 0o640, 1000, 1000),
		dirE("opt", 0o755, 0, 0),
		dirE("opt/old", 0o755, 0, 0),
		fileE("opt/old/a.txt", "hidden by the opaque dir\n", 0o644, 0, 0),
		fileE("opt/old/b.txt", "hidden too\n", 0o644, 0, 0),
		dirE("run", 0o755, 0, 0),
		fifo,
		dirE("tmp", 0o1777, 0, 0),
		dirE("usr", 0o755, 0, 0),
		dirE("usr/bin", 0o755, 0, 0),
		fileE("usr/bin/tool", "setuid tool\n", 0o4755, 0, 0),
		hardlinkE("usr/bin/tool-link", "usr/bin/tool"),
		fileE("usr/bin/sgid", "setgid tool\n", 0o2755, 0, 50),
		withXattrs(fileE("usr/bin/ping", "ping\n", 0o755, 0, 0), map[string]string{
			"security.capability": string([]byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}),
			"user.comment":        "kept",
			"trusted.overlay.x":   "dropped",
		}),
		dirE("var", 0o755, 0, 0),
		fileE("var/gone.txt", "whited out above\n", 0o644, 0, 0),
	)
	middle := layerOf(t,
		dirE("etc", 0o755, 0, 0),
		fileE("etc/passwd", "root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n", 0o644, 0, 0),
		dirE("opt/old", 0o755, 0, 0),
		opaqueE("opt/old"),
		fileE("opt/old/c.txt", "the only file left here\n", 0o644, 0, 0),
		dirE("var", 0o755, 0, 0),
		whiteoutE("var", "gone.txt"),
		dirE("usr/lib", 0o755, 0, 0),
		fileE("usr/lib/libc.so", "libc\n", 0o644, 0, 0),
		symlinkE("lib", "usr/lib"),
	)
	top := layerOf(t,
		dirE("home/user", 0o750, 1000, 1000),
		fileE("home/user/.profile", "export A=1\n", 0o644, 1000, 1000),
		symlinkE("home/user/shell", "/bin/sh"),
		symlinkE("etc/alt", "../usr/bin/tool"),
		symlinkE("usr/bin/long", "/"+strings.Repeat("x", 80)),
	)
	return imageOf(t, richConfig, base, middle, top)
}

// want is what the tests expect of one path of a base.
type want struct {
	mode     uint32 // st_mode, type included
	uid, gid int
	body     string // regular files
	target   string // symlinks
	xattrs   map[string]string
}

const (
	sIFDIR = 0o040000
	sIFREG = 0o100000
	sIFLNK = 0o120000
)

// richTree is richImage flattened, as the base must hold it.
func richTree() map[string]want {
	return map[string]want{
		"bin":                 {mode: sIFDIR | 0o755},
		"bin/sh":              {mode: sIFREG | 0o755, body: "#!fake shell\n"},
		"dev":                 {mode: sIFDIR | 0o755},
		"etc":                 {mode: sIFDIR | 0o755},
		"etc/passwd":          {mode: sIFREG | 0o644, body: "root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n"},
		"etc/alt":             {mode: sIFLNK | 0o777, target: "../usr/bin/tool"},
		"home":                {mode: sIFDIR | 0o755},
		"home/user":           {mode: sIFDIR | 0o750, uid: 1000, gid: 1000},
		"home/user/notes.txt": {mode: sIFREG | 0o640, uid: 1000, gid: 1000, body: "uid 1000's\n"},
		"home/user/.profile":  {mode: sIFREG | 0o644, uid: 1000, gid: 1000, body: "export A=1\n"},
		"home/user/shell":     {mode: sIFLNK | 0o777, target: "/bin/sh"},
		"lib":                 {mode: sIFLNK | 0o777, target: "usr/lib"},
		"opt":                 {mode: sIFDIR | 0o755},
		"opt/old":             {mode: sIFDIR | 0o755},
		"opt/old/c.txt":       {mode: sIFREG | 0o644, body: "the only file left here\n"},
		"run":                 {mode: sIFDIR | 0o755},
		"tmp":                 {mode: sIFDIR | 0o1777},
		"usr":                 {mode: sIFDIR | 0o755},
		"usr/bin":             {mode: sIFDIR | 0o755},
		"usr/bin/tool":        {mode: sIFREG | 0o4755, body: "setuid tool\n"},
		"usr/bin/tool-link":   {mode: sIFREG | 0o4755, body: "setuid tool\n"},
		"usr/bin/sgid":        {mode: sIFREG | 0o2755, gid: 50, body: "setgid tool\n"},
		"usr/bin/ping": {mode: sIFREG | 0o755, body: "ping\n", xattrs: map[string]string{
			"security.capability": "01 00 00 02 00 20 00 00 00 00 00 00 00 00 00 00 00 00 00 00",
			"user.comment":        `"kept"`,
		}},
		"usr/bin/long":    {mode: sIFLNK | 0o777, target: "/" + strings.Repeat("x", 80)},
		"usr/lib":         {mode: sIFDIR | 0o755},
		"usr/lib/libc.so": {mode: sIFREG | 0o644, body: "libc\n"},
		"var":             {mode: sIFDIR | 0o755},
	}
}

// Serving an image.

const testTag = "v1"

func layoutOf(t testing.TB, images map[string]v1.Image) string {
	t.Helper()
	dir := t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	for tag, img := range images {
		if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{annotationRefName: tag})); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func tarballOf(t testing.TB, img v1.Image) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "image.tar")
	tag, err := name.NewTag("example.test/img:" + testTag)
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(file, tag, img); err != nil {
		t.Fatal(err)
	}
	return file
}

// serveRegistry runs a registry on loopback; wrap, if set, sees every
// request first.
func serveRegistry(t testing.TB, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func push(t testing.TB, host, repo string, img v1.Image) string {
	t.Helper()
	ref := host + "/" + repo + ":" + testTag
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	return ref
}

func newStore(t testing.TB, opts Options) *Store {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("imagestore: converting images keeps file owners, which needs root; run the tests as root")
	}
	if _, err := toolPath("mke2fs"); err != nil {
		t.Skipf("imagestore: %v (build/deps.sh installs it)", err)
	}
	if opts.SpareBytes == 0 {
		opts.SpareBytes = 64 << 20
	}
	s, err := Open(filepath.Join(t.TempDir(), "images"), opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
