package imagetest

import (
	"os"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// HostBusybox is the static busybox the Busybox image is built from
// (Debian's busybox-static).
const HostBusybox = "/bin/busybox"

// Node is what one path of a flattened image is: its type and metadata
// as stat(2) gives them, and its content.
type Node struct {
	Mode     uint32 // st_mode: one of the Type* bits and the permissions, setuid, setgid and sticky included
	UID, GID int
	Body     string // a regular file's content
	Target   string // a symbolic link's target, verbatim
}

// The file types of st_mode (S_IFDIR, S_IFREG, S_IFLNK).
const (
	TypeDir     = 0o040000
	TypeReg     = 0o100000
	TypeSymlink = 0o120000
	TypeMask    = 0o170000
)

// The users of the Busybox image: sailor is its User; 1001 is a uid and
// gid of files that /etc/passwd does not name.
const (
	SailorUID = 1000
	OtherUID  = 1001
)

// BusyboxConfig is the Busybox image's config: a box runs its commands as
// sailor in /work with this environment.
var BusyboxConfig = v1.Config{
	Env:        []string{"PATH=/usr/local/bin:/bin", "FOO=bar", "GREETING=hello world"},
	WorkingDir: "/work",
	User:       "sailor",
	Cmd:        []string{"/bin/sh"},
}

// busyboxApplets are linked to busybox in /bin.
var busyboxApplets = []string{"sh", "cat", "echo", "env", "id", "ls", "pwd", "stat"}

// Busybox is a bootable image of three layers, built around the host's
// static busybox, with what flattening must get right:
//
//   - base: the directories a distribution has (/proc, /sys, /dev, /run
//     and /tmp for the guest's mounts; /root 0700; /tmp 1777), busybox
//     and links to it in /bin, /etc/passwd and /etc/group naming sailor
//     (1000), /etc/hello, sailor's home (0750, 1000:1000) with notes.txt
//     (0640); /opt/app with old.conf and lib/old.so, /srv/www/index.html,
//     /var/cache with gone.txt and kept.txt.
//   - middle: /opt/app made opaque, holding new.conf and tmp.log; a
//     whiteout of /var/cache/gone.txt and of the whole /srv; /etc/hello
//     replaced; symlinks /etc/motd -> hello (relative, same directory),
//     /usr/local/bin/greet -> ../../../bin/busybox (relative, up) and
//     /usr/local/bin/sh2 -> /bin/sh (absolute); /work (1000:1000).
//   - top: a whiteout of the middle's /opt/app/tmp.log; sailor's .profile,
//     a symlink notes-link -> notes.txt and a setgid directory shared
//     (02775, 1000:1001) holding report.txt of 1001:1001, ids no name
//     has; /work/data.txt (1000:1000).
//
// Its config is BusyboxConfig; BusyboxTree is its flattened tree.
func Busybox(t testing.TB) v1.Image {
	t.Helper()
	bb := hostBusybox(t)
	base := []Entry{
		Dir("bin", 0o755, 0, 0),
		File("bin/busybox", bb, 0o755, 0, 0),
	}
	for _, a := range busyboxApplets {
		base = append(base, Symlink("bin/"+a, "busybox"))
	}
	for _, d := range []string{"dev", "etc", "home", "opt", "opt/app", "opt/app/lib", "proc", "run", "srv", "srv/www", "sys", "usr", "usr/local", "usr/local/bin", "var", "var/cache"} {
		base = append(base, Dir(d, 0o755, 0, 0))
	}
	base = append(base,
		Dir("root", 0o700, 0, 0),
		Dir("tmp", 0o1777, 0, 0),
		File("etc/passwd", busyboxPasswd, 0o644, 0, 0),
		File("etc/group", busyboxGroup, 0o644, 0, 0),
		File("etc/hello", "from the base layer\n", 0o644, 0, 0),
		Dir("home/sailor", 0o750, SailorUID, SailorUID),
		File("home/sailor/notes.txt", "sailor's notes\n", 0o640, SailorUID, SailorUID),
		File("opt/app/old.conf", "hidden by the opaque directory\n", 0o644, 0, 0),
		File("opt/app/lib/old.so", "hidden too\n", 0o755, 0, 0),
		File("srv/www/index.html", "whited out with its directory\n", 0o644, 0, 0),
		File("var/cache/gone.txt", "whited out above\n", 0o644, 0, 0),
		File("var/cache/kept.txt", "kept\n", 0o644, 0, 0),
	)
	middle := []Entry{
		Dir("etc", 0o755, 0, 0),
		File("etc/hello", "from the image\n", 0o644, 0, 0),
		Symlink("etc/motd", "hello"),
		Dir("opt/app", 0o755, 0, 0),
		Opaque("opt/app"),
		File("opt/app/new.conf", "the opaque directory's own\n", 0o644, 0, 0),
		File("opt/app/tmp.log", "whited out by the top layer\n", 0o644, 0, 0),
		Whiteout("", "srv"),
		Whiteout("var/cache", "gone.txt"),
		Symlink("usr/local/bin/greet", "../../../bin/busybox"),
		Symlink("usr/local/bin/sh2", "/bin/sh"),
		Dir("work", 0o755, SailorUID, SailorUID),
	}
	top := []Entry{
		Whiteout("opt/app", "tmp.log"),
		Dir("home/sailor", 0o750, SailorUID, SailorUID),
		File("home/sailor/.profile", "export EDITOR=vi\n", 0o644, SailorUID, SailorUID),
		Symlink("home/sailor/notes-link", "notes.txt"),
		Dir("home/sailor/shared", 0o2775, SailorUID, OtherUID),
		File("home/sailor/shared/report.txt", "by a uid without a name\n", 0o664, OtherUID, OtherUID),
		File("work/data.txt", "in the working directory\n", 0o644, SailorUID, SailorUID),
	}
	return Image(t, BusyboxConfig, Layer(t, base...), Layer(t, middle...), Layer(t, top...))
}

const (
	busyboxPasswd = "root:x:0:0:root:/root:/bin/sh\nsailor:x:1000:1000:sailor:/home/sailor:/bin/sh\n"
	busyboxGroup  = "root:x:0:\nsailor:x:1000:\n"
)

// BusyboxTree is Busybox flattened: every path, relative to the root
// (which is not listed), and nothing else.
func BusyboxTree(t testing.TB) map[string]Node {
	t.Helper()
	dir := Node{Mode: TypeDir | 0o755}
	link := func(target string) Node { return Node{Mode: TypeSymlink | 0o777, Target: target} }
	file := func(mode uint32, uid int, body string) Node {
		return Node{Mode: TypeReg | mode, UID: uid, GID: uid, Body: body}
	}
	tree := map[string]Node{
		"bin":                           dir,
		"bin/busybox":                   file(0o755, 0, hostBusybox(t)),
		"dev":                           dir,
		"etc":                           dir,
		"etc/passwd":                    file(0o644, 0, busyboxPasswd),
		"etc/group":                     file(0o644, 0, busyboxGroup),
		"etc/hello":                     file(0o644, 0, "from the image\n"),
		"etc/motd":                      link("hello"),
		"home":                          dir,
		"home/sailor":                   {Mode: TypeDir | 0o750, UID: SailorUID, GID: SailorUID},
		"home/sailor/.profile":          file(0o644, SailorUID, "export EDITOR=vi\n"),
		"home/sailor/notes.txt":         file(0o640, SailorUID, "sailor's notes\n"),
		"home/sailor/notes-link":        link("notes.txt"),
		"home/sailor/shared":            {Mode: TypeDir | 0o2775, UID: SailorUID, GID: OtherUID},
		"home/sailor/shared/report.txt": file(0o664, OtherUID, "by a uid without a name\n"),
		"opt":                           dir,
		"opt/app":                       dir,
		"opt/app/new.conf":              file(0o644, 0, "the opaque directory's own\n"),
		"proc":                          dir,
		"root":                          {Mode: TypeDir | 0o700},
		"run":                           dir,
		"sys":                           dir,
		"tmp":                           {Mode: TypeDir | 0o1777},
		"usr":                           dir,
		"usr/local":                     dir,
		"usr/local/bin":                 dir,
		"usr/local/bin/greet":           link("../../../bin/busybox"),
		"usr/local/bin/sh2":             link("/bin/sh"),
		"var":                           dir,
		"var/cache":                     dir,
		"var/cache/kept.txt":            file(0o644, 0, "kept\n"),
		"work":                          {Mode: TypeDir | 0o755, UID: SailorUID, GID: SailorUID},
		"work/data.txt":                 file(0o644, SailorUID, "in the working directory\n"),
	}
	for _, a := range busyboxApplets {
		tree["bin/"+a] = link("busybox")
	}
	return tree
}

func hostBusybox(t testing.TB) string {
	t.Helper()
	bb, err := os.ReadFile(HostBusybox)
	if err != nil {
		t.Fatalf("the Busybox image needs the host's static busybox (apt install busybox-static): %v", err)
	}
	return string(bb)
}
