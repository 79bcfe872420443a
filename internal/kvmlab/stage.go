package kvmlab

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The disk images the steps' guests read for their whole life are served
// from the lab's RAM (the steps' scratch tmpfs), not through the 9p share
// of the host's root: a real host reads its images from its own file
// system, not through an emulated device. The lab also crashed less so:
// twenty forks on the Debian image (TestKVMNetworkConcurrentForks)
// crashed the lab kernel in 17 of 28 fresh labs reading it through the
// share, nearly always with a sailbox-vmm thread's "corrupted stack end
// detected inside scheduler" (labCrashSigns), and in 2 of 8 with the
// image copied into the lab's RAM first. Fewer, not none.

// stagedEnv names the variables whose value is such an image.
var stagedEnv = []string{"SAILBOX_DEFAULT_IMAGE"}

// stageImages copies into the lab's RAM each image file a step's
// environment names in stagedEnv (a directory or a registry reference is
// left as it is), and points the variable, and every argument equal
// to its path, at the copy. Paths are host paths; root is where the lab
// mounts the host's root, and dir the (host path of the) directory in
// the lab's tmpfs the copies go to. Each image is copied once, holes
// kept, with the files beside it that share its stem (rootfs.json beside
// rootfs.ext4: the image's configuration).
func stageImages(plan *Plan, root, dir string, out io.Writer) error {
	staged := map[string]string{} // host path → its copy's
	for i := range plan.Steps {
		s := &plan.Steps[i]
		for j, kv := range s.Env {
			name, path, ok := strings.Cut(kv, "=")
			if !ok || !isStaged(name) || !filepath.IsAbs(path) {
				continue
			}
			if fi, err := os.Stat(filepath.Join(root, path)); err != nil || !fi.Mode().IsRegular() {
				continue
			}
			to, done := staged[path]
			if !done {
				var err error
				if to, err = stageImage(root, path, filepath.Join(dir, fmt.Sprint(len(staged))), out); err != nil {
					return fmt.Errorf("stage %s: %w", name, err)
				}
				staged[path] = to
			}
			s.Env[j] = name + "=" + to
			for k, a := range s.Args {
				if a == path {
					s.Args[k] = to
				}
			}
		}
	}
	return nil
}

func isStaged(name string) bool {
	for _, n := range stagedEnv {
		if n == name {
			return true
		}
	}
	return false
}

// stageImage copies image, and the files beside it that share its stem,
// into dir and returns the copy's path.
func stageImage(root, image, dir string, out io.Writer) (string, error) {
	start := time.Now()
	if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
		return "", err
	}
	stem := strings.TrimSuffix(filepath.Base(image), filepath.Ext(image))
	siblings, err := filepath.Glob(filepath.Join(root, filepath.Dir(image), stem+".*"))
	if err != nil {
		return "", err
	}
	var size, data int64
	for _, from := range siblings {
		n, d, err := copySparse(filepath.Join(root, dir, filepath.Base(from)), from)
		if err != nil {
			return "", err
		}
		size, data = size+n, data+d
	}
	to := filepath.Join(dir, filepath.Base(image))
	if _, err := os.Stat(filepath.Join(root, to)); err != nil {
		return "", fmt.Errorf("%s: %w", image, err)
	}
	fmt.Fprintf(out, "kvmlab: %s served from the lab's RAM as %s (%d MiB, %d MiB of data, copied in %v)\n",
		image, to, size>>20, data>>20, time.Since(start).Round(100*time.Millisecond))
	return to, nil
}

// copySparse copies regular file from to a new file to, leaving every
// all-zero block of it a hole, and returns its size and the bytes written.
func copySparse(to, from string) (size, written int64, err error) {
	src, err := os.Open(from)
	if err != nil {
		return 0, 0, err
	}
	defer src.Close()
	fi, err := src.Stat()
	if err != nil {
		return 0, 0, err
	}
	dst, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fi.Mode().Perm())
	if err != nil {
		return 0, 0, err
	}
	defer func() {
		if cerr := dst.Close(); err == nil {
			err = cerr
		}
	}()
	const block = 64 << 10
	buf := make([]byte, 1<<20)
	zero := make([]byte, block)
	for {
		n, rerr := io.ReadFull(src, buf)
		for off := 0; off < n; off += block {
			b := buf[off:min(off+block, n)]
			if bytes.Equal(b, zero[:len(b)]) {
				continue
			}
			if _, err := dst.WriteAt(b, size+int64(off)); err != nil {
				return 0, 0, err
			}
			written += int64(len(b))
		}
		size += int64(n)
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return 0, 0, rerr
		}
	}
	return size, written, dst.Truncate(size)
}
