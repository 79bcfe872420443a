package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/internal/kvmtest"
)

// df returns the size and free space of / in box id, in bytes.
func df(h *host, id string) (size, avail int64) {
	h.t.Helper()
	out := h.run(id, "sh", "-c", "df -B1 --output=size,avail / | tail -n 1")
	f := strings.Fields(out)
	if len(f) != 2 {
		h.t.Fatalf("df in %s printed %q", id, out)
	}
	size, err1 := strconv.ParseInt(f[0], 10, 64)
	avail, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil {
		h.t.Fatalf("df in %s printed %q", id, out)
	}
	return size, avail
}

// runLong is host.run with a timeout of its own, for slow commands.
func runLong(h *host, id string, timeout time.Duration, argv ...string) string {
	h.t.Helper()
	var stdout, stderr bytes.Buffer
	res, err := h.c.Exec(ctxFor(h.t, timeout), id, api.ExecRequest{Argv: argv}, &stdout, &stderr)
	if err != nil || res.ExitCode != 0 {
		h.t.Fatalf("exec %q in %s: exit %d, %v; stdout %q, stderr %q", argv, id, res.ExitCode, err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// allocated is how many bytes the files under dir take on the host.
func allocated(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if fi, err := os.Lstat(p); err == nil && !fi.IsDir() {
			n += fi.Sys().(*syscall.Stat_t).Blocks * 512
		}
		return nil
	})
	return n
}

// sail create -disk-size 2G on the default image: the box's root fills a
// 2 GiB disk over the image, which stays as it was, and holds more than
// the image has room for; a fork of its checkpoint, and the box asleep
// and woken, see the same disk and files.
func TestKVMDiskSize(t *testing.T) {
	img := kvmtest.Artifact(t, "SAILBOX_DEFAULT_IMAGE")
	before, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	h := newHost(t, "-image", img)
	ctx := ctxFor(t, 45*time.Minute)
	const diskSize = 2 << 30
	const bigFile, dataFile = 600 << 20, 64 << 20

	// A box on the image as it is cannot hold the file.
	plain, err := h.c.Create(ctx, api.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	plainSize, plainAvail := df(h, plain.ID)
	t.Logf("without a disk size: / is %d bytes, %d free (the image file is %d bytes)", plainSize, plainAvail, before.Size())
	if plainAvail >= bigFile {
		t.Fatalf("the image has %d bytes free: this test needs one that cannot hold %d", plainAvail, bigFile)
	}
	if _, err := h.c.Terminate(ctx, plain.ID); err != nil {
		t.Fatal(err)
	}

	b, err := h.c.Create(ctx, api.CreateRequest{DiskSizeBytes: diskSize})
	if err != nil {
		t.Fatal(err)
	}
	if b.DiskSizeBytes != diskSize {
		t.Errorf("created %+v, want disk_size_bytes %d", b, diskSize)
	}
	checkRootMount(h, b.ID)
	// What the guest sees of its disk and its root, in a box and in each
	// box made from it.
	checkDisk := func(id, what string) (avail int64) {
		t.Helper()
		if out := h.run(id, "cat", "/sys/block/vda/size"); out != strconv.Itoa(diskSize/512)+"\n" {
			t.Errorf("%s: /dev/vda is %q sectors, want %d", what, out, diskSize/512)
		}
		size, avail := df(h, id)
		// ext4 keeps a little for itself (its journal, inode tables).
		if size < diskSize*95/100 || size > diskSize {
			t.Errorf("%s: / is %d bytes, want about %d", what, size, diskSize)
		}
		t.Logf("%s: / is %d bytes, %d free", what, size, avail)
		return avail
	}
	avail := checkDisk(b.ID, "created with 2 GiB")
	if avail < bigFile+dataFile {
		t.Fatalf("%d bytes free, want room for the test's files", avail)
	}
	// Zeros (which the host need not store past the image's end), then
	// data where the image has no room left: past its end. Writing is
	// slow in the lab (its guests run under TCG): timed, with time to
	// spare.
	for _, w := range []string{"head -c 600M /dev/zero > /root/big && sync", "yes sailbox | head -c 64M > /root/data && sync"} {
		start := time.Now()
		runLong(h, b.ID, 15*time.Minute, "sh", "-c", w)
		t.Logf("%s: %v", w, time.Since(start).Round(time.Second))
	}
	sum := h.run(b.ID, "sh", "-c", "stat -c %s /root/big /root/data; sha256sum < /root/data")
	if !strings.HasPrefix(sum, strconv.Itoa(bigFile)+"\n"+strconv.Itoa(dataFile)+"\n") {
		t.Errorf("file sizes and checksum: %q", sum)
	}
	if after := checkDisk(b.ID, "after writing 664 MiB"); after > avail-(bigFile+dataFile) {
		t.Errorf("%d bytes free after writing %d of %d", after, bigFile+dataFile, avail)
	}

	if _, err := h.c.Checkpoint(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	fr, err := h.c.Fork(ctx, b.ID)
	if err != nil {
		t.Fatal(err)
	}
	kid := fr.Box.ID
	if fr.Box.DiskSizeBytes != diskSize {
		t.Errorf("fork %+v, want its parent's disk_size_bytes", fr.Box)
	}
	checkRootMount(h, kid)
	checkDisk(kid, "fork")
	if got := h.run(kid, "sh", "-c", "stat -c %s /root/big /root/data; sha256sum < /root/data"); got != sum {
		t.Errorf("fork's files: %q, the parent had %q", got, sum)
	}
	// The fork's disk is its own, as large: it writes more.
	_, kidAvail := df(h, kid)
	runLong(h, kid, 15*time.Minute, "sh", "-c", "yes fork | head -c 64M > /root/more && sync")
	if _, now := df(h, kid); now > kidAvail-dataFile {
		t.Errorf("fork: %d bytes free after writing %d more, %d before", now, dataFile, kidAvail)
	}

	// Asleep and woken (a restore of its checkpoint), the box has the
	// same disk.
	if _, err := h.c.Sleep(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	checkDisk(b.ID, "woken")
	if got := h.run(b.ID, "sh", "-c", "stat -c %s /root/big /root/data; sha256sum < /root/data"); got != sum {
		t.Errorf("woken box's files: %q, want %q", got, sum)
	}

	after, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if after.Size() != before.Size() || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("the image changed: %d bytes modified %v, was %d bytes modified %v", after.Size(), after.ModTime(), before.Size(), before.ModTime())
	}
	t.Logf("the checkpoint store takes %d MiB on the host (664 MiB written by the box, 600 of them zeros, 64 MiB by its fork)", allocated(filepath.Join(h.stateDir, "store"))>>20)
}
