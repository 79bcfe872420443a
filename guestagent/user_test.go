package guestagent

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

const testPasswd = `root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# a comment, and a blank line

broken line
badid:x:notanumber:1::/nowhere:/bin/sh
app:x:1000:1000:App,,,:/home/app:/bin/sh
app:x:1001:1001:a second app, ignored:/elsewhere:/bin/sh
nohome:x:1002:100:::/bin/sh
`

const testGroup = `root:x:0:
daemon:x:1:
users:x:100:app,nohome
app:x:1000:
docker:x:998:someone,app
audio:x:29:nohome
`

// writeUserFiles makes a root with testPasswd and testGroup in /etc.
func writeUserFiles(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	if err := os.WriteFile(filepath.Join(root, passwdFile), []byte(testPasswd), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, groupFile), []byte(testGroup), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

// Users resolve as OCI runtimes resolve an image's User.
func TestLookupUser(t *testing.T) {
	root := writeUserFiles(t)
	for _, tc := range []struct {
		spec string
		want execUser
	}{
		{"root", execUser{UID: 0, GID: 0, Home: "/root"}},
		{"0", execUser{UID: 0, GID: 0, Home: "/root"}},
		// A name: the gid of its entry, and the groups that list it.
		{"app", execUser{UID: 1000, GID: 1000, Groups: []uint32{100, 998}, Home: "/home/app"}},
		// A uid in the file is the same user; the first line wins.
		{"1000", execUser{UID: 1000, GID: 1000, Groups: []uint32{100, 998}, Home: "/home/app"}},
		// A uid the file does not list: gid 0, home /.
		{"4242", execUser{UID: 4242, GID: 0, Home: "/"}},
		{"nohome", execUser{UID: 1002, GID: 100, Groups: []uint32{100, 29}, Home: "/"}},
		// An explicit group replaces the entry's, and drops the others.
		{"app:audio", execUser{UID: 1000, GID: 29, Home: "/home/app"}},
		{"app:5000", execUser{UID: 1000, GID: 5000, Home: "/home/app"}},
		{"1000:998", execUser{UID: 1000, GID: 998, Home: "/home/app"}},
		{"4242:users", execUser{UID: 4242, GID: 100, Home: "/"}},
		{"4242:4243", execUser{UID: 4242, GID: 4243, Home: "/"}},
		{"app:", execUser{UID: 1000, GID: 1000, Groups: []uint32{100, 998}, Home: "/home/app"}},
		{"4294967294", execUser{UID: 4294967294, Home: "/"}},
	} {
		got, err := lookupUser(root, tc.spec)
		if err != nil {
			t.Errorf("lookupUser(%q): %v", tc.spec, err)
			continue
		}
		if !reflect.DeepEqual(*got, tc.want) {
			t.Errorf("lookupUser(%q) = %+v, want %+v", tc.spec, *got, tc.want)
		}
	}

	for _, tc := range []struct {
		spec string
		want error // nil: a malformed spec
	}{
		{"nobody", errNoUser},
		{"badid", errNoUser},
		{"app:nogroup", errNoGroup},
		{"4294967295", errNoUser}, // (uid_t)-1 is no uid, so it is a name
		{"-1", errNoUser},
		{"", nil},
		{":app", nil},
		{"app:app:app", nil},
		{"app user", nil},
		{"app\n", nil},
		{strings.Repeat("a", maxUserSpec+1), nil},
	} {
		_, err := lookupUser(root, tc.spec)
		_, _, syntaxErr := splitUserSpec(tc.spec)
		switch {
		case err == nil:
			t.Errorf("lookupUser(%q) succeeded", tc.spec)
		case tc.want != nil && !errors.Is(err, tc.want):
			t.Errorf("lookupUser(%q) = %v, want %v", tc.spec, err, tc.want)
		case tc.want == nil && syntaxErr == nil:
			t.Errorf("splitUserSpec(%q) accepted it", tc.spec)
		case !strings.Contains(err.Error(), "user "):
			t.Errorf("lookupUser(%q) = %v: does not name the user", tc.spec, err)
		}
	}
}

// An image without /etc/passwd or /etc/group still runs numeric users.
func TestLookupUserWithoutFiles(t *testing.T) {
	root := t.TempDir()
	u, err := lookupUser(root, "1000:1000")
	if err != nil || !reflect.DeepEqual(*u, execUser{UID: 1000, GID: 1000, Home: "/"}) {
		t.Errorf("lookupUser(1000:1000) = %+v, %v", u, err)
	}
	if _, err := lookupUser(root, "app"); !errors.Is(err, errNoUser) {
		t.Errorf("lookupUser(app) = %v, want errNoUser", err)
	}
	// A line too long to be a user's is an error, not a silent miss.
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, passwdFile), []byte(strings.Repeat("x", maxDatabaseLine+1)+"\n"), 0o644)
	if _, err := lookupUser(root, "app"); err == nil || errors.Is(err, errNoUser) || !strings.Contains(err.Error(), passwdFile) {
		t.Errorf("lookupUser with a huge line = %v", err)
	}
}

func TestExecEnv(t *testing.T) {
	got := execEnv("/home/app", []string{"PATH=/opt/bin", "LANG=C.UTF-8", "HOME=/srv"})
	want := []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/home/app", "TERM=dumb",
		"PATH=/opt/bin", "LANG=C.UTF-8", "HOME=/srv",
	}
	if !slices.Equal(got, want) {
		t.Errorf("execEnv = %q, want %q", got, want)
	}
	// The request's entries win, as os/exec keeps the last of a key.
	if v := lastValue(got, "PATH"); v != "/opt/bin" {
		t.Errorf("PATH = %q", v)
	}
	if v := lastValue(execEnv("/root", nil), "PATH"); v != defaultPath {
		t.Errorf("default PATH = %q", v)
	}
}
