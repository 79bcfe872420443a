// Package debtest builds what tests install in a box the way its users
// would: Debian binary packages (a program that prints one line, a
// copyright file and a postinst), and a flat apt repository that serves
// them over HTTP on the host's loopback and counts what it is asked for.
package debtest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Package is a test package, Architecture all: a program /usr/bin/<Name>
// that prints Hello, a copyright file (the one file under
// /usr/share/doc the default image's dpkg excludes keep), and a postinst
// that leaves its first argument in /var/lib/<Name>/postinst.
type Package struct {
	Name, Version string
}

// Hello is what the package's program prints.
func (p Package) Hello() string {
	return "hello from " + p.Name + " " + p.Version + "\n"
}

// Control is the package's control file, as dpkg reads it from the .deb
// and an apt repository's Packages index repeats it.
func (p Package) Control() string {
	return fmt.Sprintf("Package: %s\nVersion: %s\nArchitecture: all\nMaintainer: Sailbox tests <tests@sailbox.invalid>\n"+
		"Installed-Size: 1\nSection: misc\nPriority: optional\nDescription: Sailbox test package %s\n"+
		" Installed by Sailbox's kvm-tier tests.\n", p.Name, p.Version, p.Name)
}

// Deb builds the package's .deb.
func (p Package) Deb(t testing.TB) []byte {
	t.Helper()
	postinst := fmt.Sprintf("#!/bin/sh\nset -e\nmkdir -p /var/lib/%s\necho \"$1\" > /var/lib/%s/postinst\n", p.Name, p.Name)
	controlTar := tarGz(t, []tarEntry{
		{name: "./", mode: 0o755},
		{name: "./control", mode: 0o644, body: p.Control()},
		{name: "./postinst", mode: 0o755, body: postinst},
	})
	dataTar := tarGz(t, []tarEntry{
		{name: "./", mode: 0o755},
		{name: "./usr/", mode: 0o755},
		{name: "./usr/bin/", mode: 0o755},
		{name: "./usr/bin/" + p.Name, mode: 0o755, body: "#!/bin/sh\necho '" + strings.TrimSuffix(p.Hello(), "\n") + "'\n"},
		{name: "./usr/share/", mode: 0o755},
		{name: "./usr/share/doc/", mode: 0o755},
		{name: "./usr/share/doc/" + p.Name + "/", mode: 0o755},
		{name: "./usr/share/doc/" + p.Name + "/copyright", mode: 0o644, body: "Written for Sailbox's tests; public domain.\n"},
	})
	var ar bytes.Buffer
	ar.WriteString("!<arch>\n")
	for _, m := range []struct {
		name string
		data []byte
	}{
		{"debian-binary", []byte("2.0\n")},
		{"control.tar.gz", controlTar},
		{"data.tar.gz", dataTar},
	} {
		writeArMember(t, &ar, m.name, m.data)
	}
	return ar.Bytes()
}

// epoch is the packages' file times: 2026-01-01 00:00:00 UTC.
const epoch = 1767225600

// writeArMember appends one member to a common ar archive: a 60-byte
// header (name, mtime, owner, group, octal mode, size, "`\n"), the data,
// and a newline pad to an even offset.
func writeArMember(t testing.TB, w *bytes.Buffer, name string, data []byte) {
	t.Helper()
	hdr := fmt.Sprintf("%-16s%-12d%-6d%-6d%-8o%-10d`\n", name, epoch, 0, 0, 0o100644, len(data))
	if len(hdr) != 60 {
		t.Fatalf("ar header for %s is %d bytes, want 60", name, len(hdr))
	}
	w.WriteString(hdr)
	w.Write(data)
	if len(data)%2 == 1 {
		w.WriteByte('\n')
	}
}

// tarEntry is a directory (a name ending in /) or a regular file.
type tarEntry struct {
	name string
	mode int64
	body string
}

// tarGz is a gzipped tar of entries, owned by root.
func tarGz(t testing.TB, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: e.mode, Uname: "root", Gname: "root", ModTime: time.Unix(epoch, 0), Format: tar.FormatGNU}
		if strings.HasSuffix(e.name, "/") {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("tar header %s: %v", e.name, err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatalf("tar %s: %v", e.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatalf("close tar: %v", err)
	}
	if err := zw.Close(); err != nil {
		t.Fatalf("close gzip: %v", err)
	}
	return buf.Bytes()
}
