package imagestore

import (
	"archive/tar"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/sailbox-dev/sailbox/internal/imagestore/imagetest"
)

// Images for the tests, built from tar layers (imagetest, under the
// short names the tests use), and served the three ways Import reads
// them.

var testTime = imagetest.Time

type entry = imagetest.Entry

var (
	dirE       = imagetest.Dir
	fileE      = imagetest.File
	symlinkE   = imagetest.Symlink
	hardlinkE  = imagetest.Hardlink
	whiteoutE  = imagetest.Whiteout
	opaqueE    = imagetest.Opaque
	withXattrs = imagetest.WithXattrs
	tarBytes   = imagetest.TarBytes
	layerOf    = imagetest.Layer
	// imageOf stacks layers (the first is the lowest) under a
	// linux/amd64 config.
	imageOf = imagetest.Image
)

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
	charDev := entry{Header: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: testTime}}
	fifo := entry{Header: tar.Header{Typeflag: tar.TypeFifo, Name: "run/fifo", Mode: 0o644, ModTime: testTime}}
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
	sIFDIR = imagetest.TypeDir
	sIFREG = imagetest.TypeReg
	sIFLNK = imagetest.TypeSymlink
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

const testTag = imagetest.Tag

func layoutOf(t testing.TB, images map[string]v1.Image) string {
	t.Helper()
	dir := t.TempDir()
	imagetest.WriteLayout(t, dir, images)
	return dir
}

// tarballOf writes img as a docker-save tarball, tagged
// example.test/img:v1 (imagetest.TarballName).
func tarballOf(t testing.TB, img v1.Image) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "image.tar")
	imagetest.WriteTarball(t, file, img)
	return file
}

// serveRegistry runs a registry on loopback; wrap, if set, sees every
// request first.
var serveRegistry = imagetest.ServeRegistry

var push = imagetest.Push

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
