package layerstore

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/sailbox-dev/sailbox/snapshot/internal/format"
)

// Dir is a Store keeping each layer as a plain file <dir>/<id>.
type Dir struct {
	dir string
}

var (
	_ Store   = (*Dir)(nil)
	_ Cleaner = (*Dir)(nil)
)

// NewDir opens (creating if needed) a directory store.
func NewDir(dir string) (*Dir, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("layer store: %w", err)
	}
	return &Dir{dir: dir}, nil
}

// Put implements Store: a rename when path is on the store's file system,
// else a (sparse) copy to a temporary file, fsynced, then renamed.
func (s *Dir) Put(id, path string) error {
	if err := ValidID(id); err != nil {
		return fmt.Errorf("put layer: %w", err)
	}
	dst := filepath.Join(s.dir, id)
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("put layer %s: %w", id, ErrExists)
	}
	if err := syncFile(path); err != nil {
		return fmt.Errorf("put layer %s: %w", id, err)
	}
	err := format.MoveNoReplace(path, dst)
	if errors.Is(err, unix.EXDEV) {
		err = s.copyIn(path, dst)
	}
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("put layer %s: %w", id, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("put layer %s: %w", id, err)
	}
	return nil
}

// copyIn copies src to dst through a locked temporary file, then removes
// src.
func (s *Dir) copyIn(src, dst string) error {
	if err := writeLayer(s.dir, src, dst, copySparse); err != nil {
		return err
	}
	return os.Remove(src)
}

// writeLayer makes dst from the file src: fill writes src's size bytes,
// read from src, into a locked temporary file in dir, which then takes
// dst's name (never replacing it). On error the temporary file is gone.
func writeLayer(dir, src, dst string, fill func(tmp *os.File, in io.Reader, size int64) error) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	tmp, err := createTemp(dir)
	if err != nil {
		return err
	}
	err = fill(tmp, in, st.Size())
	if err == nil {
		err = finishTemp(tmp, dst)
	}
	if err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
	}
	return err
}

// Open implements Store: the stored file itself.
func (s *Dir) Open(id string) (string, error) {
	if _, err := s.Stat(id); err != nil {
		return "", fmt.Errorf("open %w", err)
	}
	return filepath.Join(s.dir, id), nil
}

// Stat implements Store.
func (s *Dir) Stat(id string) (Info, error) {
	if err := ValidID(id); err != nil {
		return Info{}, fmt.Errorf("layer: %w", err)
	}
	st, err := os.Stat(filepath.Join(s.dir, id))
	if errors.Is(err, os.ErrNotExist) {
		return Info{}, fmt.Errorf("layer %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Info{}, fmt.Errorf("layer %s: %w", id, err)
	}
	return Info{ID: id, Size: st.Size()}, nil
}

// List implements Store.
func (s *Dir) List() ([]Info, error) {
	return listDir(s.dir, "", func(name string) (Info, error) { return s.Stat(name) })
}

// Delete implements Store.
func (s *Dir) Delete(id string) error {
	if err := ValidID(id); err != nil {
		return fmt.Errorf("delete layer: %w", err)
	}
	return removeLayer(s.dir, id, filepath.Join(s.dir, id))
}

// Clean implements Cleaner.
func (s *Dir) Clean() ([]string, error) { return cleanTemps(s.dir) }

// Helpers shared by the stores.

// tempPrefix starts the name of every temporary file; layer IDs cannot.
const tempPrefix = ".tmp-"

// createTemp creates a locked temporary file in dir.
func createTemp(dir string) (*os.File, error) {
	f, err := os.CreateTemp(dir, tempPrefix+"*")
	if err != nil {
		return nil, err
	}
	if err := format.Lock(f); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, err
	}
	return f, nil
}

// finishTemp makes a complete temporary file read-only and durable, moves
// it to dst without replacing an existing dst, and closes it. It holds
// the file's lock until the move: a temporary file no one holds is
// debris to cleanTemps.
func finishTemp(tmp *os.File, dst string) error {
	if err := tmp.Chmod(0o444); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := format.MoveNoReplace(tmp.Name(), dst); err != nil {
		return err
	}
	return tmp.Close()
}

// syncFile fsyncs the file at path.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// holeBlock is the granularity at which copySparse leaves zeros as holes.
const holeBlock = 4096

// copySparse copies size bytes from r to the start of f, seeking over
// all-zero 4 KiB blocks so that sparse files (disk layers) stay sparse.
func copySparse(f *os.File, r io.Reader, size int64) error {
	buf := make([]byte, 1<<20)
	var off int64
	for off < size {
		n, err := io.ReadFull(r, buf[:min(int64(len(buf)), size-off)])
		if err != nil {
			return fmt.Errorf("copy at %d of %d bytes: %w", off, size, err)
		}
		for i := 0; i < n; i += holeBlock {
			blk := buf[i:min(i+holeBlock, n)]
			if allZero(blk) {
				continue
			}
			if _, err := f.WriteAt(blk, off+int64(i)); err != nil {
				return err
			}
		}
		off += int64(n)
	}
	return f.Truncate(size)
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// listDir lists the layers in dir whose file names end in suffix.
func listDir(dir, suffix string, stat func(id string) (Info, error)) ([]Info, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list layers: %w", err)
	}
	var out []Info
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), suffix)
		if !ok || ValidID(id) != nil || !e.Type().IsRegular() {
			continue
		}
		info, err := stat(id)
		if errors.Is(err, ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// removeLayer removes a layer's stored file and fsyncs its directory.
func removeLayer(dir, id, path string) error {
	err := os.Remove(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete layer %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("delete layer %s: %w", id, err)
	}
	return format.SyncDir(dir)
}

// cleanTemps removes the temporary files in dir that no process holds
// locked (format.RemoveDebris: not the empty ones).
func cleanTemps(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("clean layer store %s: %w", dir, err)
	}
	var removed []string
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), tempPrefix) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		gone, err := format.RemoveDebris(p)
		if err != nil {
			return removed, fmt.Errorf("clean layer store: %w", err)
		}
		if gone {
			removed = append(removed, p)
		}
	}
	return removed, nil
}
