package layerstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/klauspost/compress/zstd"

	"github.com/sailbox-dev/sailbox/snapshot/internal/format"
)

// Zstd is a Store keeping each layer zstd-compressed as <dir>/<id>.zst.
// A compressed file cannot be mapped, so Open decompresses it once into
// <cache>/<id> and returns that path. The cache may be on a faster or
// throw-away file system; a missing cache entry is rebuilt on Open.
type Zstd struct {
	dir, cache string
	level      zstd.EncoderLevel
}

var (
	_ Store   = (*Zstd)(nil)
	_ Cleaner = (*Zstd)(nil)
)

const zstdSuffix = ".zst"

// NewZstd opens (creating if needed) a compressed store in dir with its
// decompression cache in cache.
func NewZstd(dir, cache string) (*Zstd, error) {
	for _, d := range []string{dir, cache} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("zstd layer store: %w", err)
		}
	}
	return &Zstd{dir: dir, cache: cache, level: zstd.SpeedDefault}, nil
}

func (s *Zstd) stored(id string) string { return filepath.Join(s.dir, id+zstdSuffix) }

// Put implements Store: the file is compressed into the store, then
// removed.
func (s *Zstd) Put(id, path string) error {
	if err := ValidID(id); err != nil {
		return fmt.Errorf("put layer: %w", err)
	}
	dst := s.stored(id)
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("put layer %s: %w", id, ErrExists)
	}
	err := s.compress(path, dst)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("put layer %s: %w", id, ErrExists)
	}
	if err == nil {
		err = os.Remove(path)
	}
	if err != nil {
		return fmt.Errorf("put layer %s: %w", id, err)
	}
	return nil
}

func (s *Zstd) compress(src, dst string) error {
	return writeLayer(s.dir, src, dst, func(tmp *os.File, in io.Reader, size int64) error {
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(s.level), zstd.WithEncoderConcurrency(1))
		if err != nil {
			return err
		}
		// A skippable frame first records the uncompressed size for
		// Stat (zstd omits small sizes from its own frame header); zstd
		// decoders skip it, so the file stays a standard .zst.
		if _, err := tmp.Write(sizeFrame(size)); err != nil {
			return err
		}
		enc.ResetContentSize(tmp, size)
		if _, err := io.Copy(enc, in); err != nil {
			enc.Close()
			return err
		}
		return enc.Close()
	})
}

// Open implements Store: the cached uncompressed copy, made first if
// missing.
func (s *Zstd) Open(id string) (string, error) {
	info, err := s.Stat(id)
	if err != nil {
		return "", fmt.Errorf("open %w", err)
	}
	cached := filepath.Join(s.cache, id)
	if st, err := os.Stat(cached); err == nil && st.Size() == info.Size {
		return cached, nil
	}
	err = s.decompress(s.stored(id), cached, info.Size)
	if errors.Is(err, os.ErrExist) {
		err = nil // another Open made it meanwhile
	}
	if err != nil {
		return "", fmt.Errorf("open layer %s: decompress: %w", id, err)
	}
	return cached, nil
}

func (s *Zstd) decompress(src, dst string, size int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	dec, err := zstd.NewReader(in, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
	if err != nil {
		return err
	}
	defer dec.Close()
	tmp, err := createTemp(s.cache)
	if err != nil {
		return err
	}
	err = copySparse(tmp, dec, size)
	if err == nil {
		// Nothing may follow the layer's bytes in the stream.
		if n, _ := io.CopyN(io.Discard, dec, 1); n != 0 {
			err = fmt.Errorf("%s holds more than the %d bytes its frame header declares", src, size)
		}
	}
	if err == nil {
		err = finishTemp(tmp, dst)
	}
	if err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
	}
	return err
}

// Stat implements Store. Size is the uncompressed size, read from the
// zstd frame header.
func (s *Zstd) Stat(id string) (Info, error) {
	if err := ValidID(id); err != nil {
		return Info{}, fmt.Errorf("layer: %w", err)
	}
	f, err := os.Open(s.stored(id))
	if errors.Is(err, os.ErrNotExist) {
		return Info{}, fmt.Errorf("layer %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Info{}, fmt.Errorf("layer %s: %w", id, err)
	}
	defer f.Close()
	b := make([]byte, sizeFrameLen)
	if _, err := io.ReadFull(f, b); err != nil {
		return Info{}, fmt.Errorf("layer %s: %w", id, format.Corrupt("compressed layer", "size frame", "%v", err))
	}
	size, ok := parseSizeFrame(b)
	if !ok {
		return Info{}, fmt.Errorf("layer %s: %w", id, format.Corrupt("compressed layer", "size frame", "bad magic or size"))
	}
	return Info{ID: id, Size: size}, nil
}

// The size frame is a zstd skippable frame (RFC 8878 §3.1.2) holding the
// layer's uncompressed size: le32 magic 0x184D2A5E, le32 length 8, le64
// size.
const (
	sizeFrameMagic = 0x184D2A5E
	sizeFrameLen   = 16
)

func sizeFrame(size int64) []byte {
	b := binary.LittleEndian.AppendUint32(nil, sizeFrameMagic)
	b = binary.LittleEndian.AppendUint32(b, 8)
	return binary.LittleEndian.AppendUint64(b, uint64(size))
}

func parseSizeFrame(b []byte) (int64, bool) {
	le := binary.LittleEndian
	size := le.Uint64(b[8:])
	if le.Uint32(b) != sizeFrameMagic || le.Uint32(b[4:]) != 8 || size > 1<<62 {
		return 0, false
	}
	return int64(size), true
}

// List implements Store.
func (s *Zstd) List() ([]Info, error) { return listDir(s.dir, zstdSuffix, s.Stat) }

// Delete implements Store: the compressed layer and its cached copy.
func (s *Zstd) Delete(id string) error {
	if err := ValidID(id); err != nil {
		return fmt.Errorf("delete layer: %w", err)
	}
	if err := removeLayer(s.dir, id, s.stored(id)); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(s.cache, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete layer %s: cached copy: %w", id, err)
	}
	return nil
}

// Clean implements Cleaner, in the store and in its cache.
func (s *Zstd) Clean() ([]string, error) {
	a, err := cleanTemps(s.dir)
	if err != nil {
		return a, err
	}
	b, err := cleanTemps(s.cache)
	return append(a, b...), err
}
