package guestagent

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// The files exec looks user and group names up in, in the agent's root:
// the image's when the box has one (see MountRoot).
const (
	passwdFile = "/etc/passwd"
	groupFile  = "/etc/group"
)

// maxID is the largest user or group ID exec accepts: (uid_t)-1 is
// reserved to mean "unchanged" in the set*id system calls.
const maxID = 1<<32 - 2

// maxUserSpec bounds ExecRequest.User, in bytes.
const maxUserSpec = 256

// execUser is who an exec's process runs as, resolved from an
// ExecRequest.User.
type execUser struct {
	UID, GID uint32
	// Groups are the supplementary group IDs; empty drops the agent's.
	Groups []uint32
	// Home is the user's home directory from /etc/passwd, or "/" for a
	// uid that has no entry there (as OCI runtimes do).
	Home string
}

// passwdEntry is the part of an /etc/passwd line exec needs.
type passwdEntry struct {
	name     string
	uid, gid uint32
	home     string
}

// groupEntry is the part of an /etc/group line exec needs.
type groupEntry struct {
	name    string
	gid     uint32
	members []string
}

// errNoUser and errNoGroup report a name that the guest's files do not
// list. They are returned wrapped.
var (
	errNoUser  = errors.New("no such user")
	errNoGroup = errors.New("no such group")
)

// splitUserSpec splits spec, an OCI image User ("user", "user:group",
// "uid:gid" and so on), into its user and group parts. It fails for an
// empty user part, more than one colon, or parts with characters no user
// or group name has.
func splitUserSpec(spec string) (user, group string, err error) {
	if len(spec) > maxUserSpec {
		return "", "", fmt.Errorf("user %.32q...: longer than %d bytes", spec, maxUserSpec)
	}
	user, group, _ = strings.Cut(spec, ":")
	if user == "" || strings.Contains(group, ":") {
		return "", "", fmt.Errorf("user %q: want user[:group], each a name or a number", spec)
	}
	for _, part := range []string{user, group} {
		for _, r := range part {
			if r <= ' ' || r == 0x7f {
				return "", "", fmt.Errorf("user %q: a name with a space or a control character", spec)
			}
		}
	}
	return user, group, nil
}

// parseID parses a user or group ID, reporting ok false for anything that
// is not a decimal number in range.
func parseID(s string) (id uint32, ok bool) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n > maxID {
		return 0, false
	}
	return uint32(n), true
}

// resolveUser resolves spec, an OCI image User, against passwd and group,
// the contents of /etc/passwd and /etc/group (nil for a file the guest
// lacks), as OCI runtimes do:
//
//   - The user part is a name, looked up in passwd, or a number, which is
//     the uid whether passwd lists it or not. The first matching line wins.
//   - Without a group part, the process gets the gid of the user's passwd
//     entry (0 if it has none) and, as supplementary groups, every group
//     whose member list names the user.
//   - With one, the group part is a name, looked up in group, or a number,
//     which is the gid; the process has no supplementary groups.
//
// It fails for a malformed spec, a name the files do not list (wrapping
// errNoUser or errNoGroup), or files it cannot read.
func resolveUser(spec string, passwd, group io.Reader) (*execUser, error) {
	userPart, groupPart, err := splitUserSpec(spec)
	if err != nil {
		return nil, err
	}
	u := &execUser{Home: "/"}
	uid, numeric := parseID(userPart)
	var name string
	entry, err := findPasswd(passwd, func(e *passwdEntry) bool {
		if numeric {
			return e.uid == uid
		}
		return e.name == userPart
	})
	switch {
	case err != nil:
		return nil, fmt.Errorf("user %q: %s: %w", spec, passwdFile, err)
	case entry != nil:
		name, u.UID, u.GID, u.Home = entry.name, entry.uid, entry.gid, entry.home
		if u.Home == "" {
			u.Home = "/"
		}
	case numeric:
		u.UID = uid
	default:
		return nil, fmt.Errorf("user %q: %w %q in %s", spec, errNoUser, userPart, passwdFile)
	}

	if groupPart != "" {
		gid, numeric := parseID(groupPart)
		g, err := findGroup(group, func(g *groupEntry) bool {
			if numeric {
				return g.gid == gid
			}
			return g.name == groupPart
		})
		switch {
		case err != nil:
			return nil, fmt.Errorf("user %q: %s: %w", spec, groupFile, err)
		case g != nil:
			u.GID = g.gid
		case numeric:
			u.GID = gid
		default:
			return nil, fmt.Errorf("user %q: %w %q in %s", spec, errNoGroup, groupPart, groupFile)
		}
		return u, nil
	}
	if name == "" {
		return u, nil // a bare uid: no name to find memberships by
	}
	_, err = findGroup(group, func(g *groupEntry) bool {
		for _, m := range g.members {
			if m == name {
				u.Groups = append(u.Groups, g.gid)
				break
			}
		}
		return false // visit every line
	})
	if err != nil {
		return nil, fmt.Errorf("user %q: %s: %w", spec, groupFile, err)
	}
	return u, nil
}

// maxDatabaseLine bounds a line of /etc/passwd or /etc/group.
const maxDatabaseLine = 64 << 10

// eachLine calls f with the colon-separated fields of each line of r
// (none if r is nil), skipping blank lines and comments, until f returns
// true. A line longer than maxDatabaseLine is an error.
func eachLine(r io.Reader, f func(fields []string) bool) error {
	if r == nil {
		return nil
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxDatabaseLine)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		if f(strings.Split(line, ":")) {
			return nil
		}
	}
	return sc.Err()
}

// findPasswd returns the first entry of passwd, the contents of
// /etc/passwd, that match accepts, or nil. Lines that are not
// name:password:uid:gid:gecos:home:shell with numeric IDs are skipped, as
// the C library skips them.
func findPasswd(passwd io.Reader, match func(*passwdEntry) bool) (*passwdEntry, error) {
	var found *passwdEntry
	err := eachLine(passwd, func(f []string) bool {
		if len(f) < 7 || f[0] == "" {
			return false
		}
		uid, ok1 := parseID(f[2])
		gid, ok2 := parseID(f[3])
		if !ok1 || !ok2 {
			return false
		}
		e := &passwdEntry{name: f[0], uid: uid, gid: gid, home: f[5]}
		if match(e) {
			found = e
			return true
		}
		return false
	})
	return found, err
}

// findGroup returns the first entry of group, the contents of /etc/group,
// that match accepts, or nil. Lines that are not
// name:password:gid:member,member... with a numeric ID are skipped.
func findGroup(group io.Reader, match func(*groupEntry) bool) (*groupEntry, error) {
	var found *groupEntry
	err := eachLine(group, func(f []string) bool {
		if len(f) < 4 || f[0] == "" {
			return false
		}
		gid, ok := parseID(f[2])
		if !ok {
			return false
		}
		e := &groupEntry{name: f[0], gid: gid}
		if f[3] != "" {
			e.members = strings.Split(f[3], ",")
		}
		if match(e) {
			found = e
			return true
		}
		return false
	})
	return found, err
}
