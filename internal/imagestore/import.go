package imagestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// Import returns the base of the image REF names, converting it unless
// the store has its digest already. Concurrent imports of one digest
// convert once: the others wait and find the base. A failed import
// leaves nothing in the store: its work directory is removed, and the
// base appears only complete (renamed into place last).
func (s *Store) Import(ctx context.Context, ref string) (Image, error) {
	img, err := s.importRef(ctx, ref)
	if err != nil {
		return Image{}, fmt.Errorf("import %s: %w", ref, err)
	}
	return img, nil
}

// ImportPath imports the image at path, which the caller has resolved
// (and confined) already: an OCI image layout directory, or a `docker
// save` tarball. selector is empty, or ":TAG" / "@sha256:…" for a layout,
// ":NAME:TAG" for a tarball, as in findImage.
func (s *Store) ImportPath(ctx context.Context, path, selector string) (Image, error) {
	img, err := s.importFrom(ctx, path+selector, func() (source, error) { return findPath(path, selector) })
	if err != nil {
		return Image{}, fmt.Errorf("import %s: %w", path+selector, err)
	}
	return img, nil
}

// ImportRemote imports the image registry reference ref names. It never
// looks at the file system for ref: a client's REF reaches the host's
// files only through the caller's resolution and ImportPath.
func (s *Store) ImportRemote(ctx context.Context, ref string) (Image, error) {
	img, err := s.importFrom(ctx, ref, func() (source, error) {
		if ref == "" || strings.ContainsRune(ref, 0) || strings.HasPrefix(ref, "/") || strings.HasPrefix(ref, ".") {
			return source{}, fmt.Errorf("%w: %q", ErrBadRef, ref)
		}
		return fromRegistry(ctx, ref, s.opts)
	})
	if err != nil {
		return Image{}, fmt.Errorf("import %s: %w", ref, err)
	}
	return img, nil
}

func (s *Store) importRef(ctx context.Context, ref string) (Image, error) {
	return s.importFrom(ctx, ref, func() (source, error) { return findImage(ctx, ref, s.opts) })
}

func (s *Store) importFrom(ctx context.Context, ref string, find func() (source, error)) (Image, error) {
	src, err := find()
	if err != nil {
		return Image{}, err
	}
	digest, err := src.img.ConfigName()
	if err != nil {
		return Image{}, fmt.Errorf("%w: config: %w", ErrBadImage, err)
	}
	// The config's digest keys the base, and its diff_ids check the
	// layers: it must be the config the manifest names.
	m, err := src.img.Manifest()
	if err != nil {
		return Image{}, fmt.Errorf("%w: manifest: %w", ErrBadImage, err)
	}
	if err := checkDigest("config", m.Config.Digest, src.img.RawConfigFile); err != nil {
		return Image{}, fmt.Errorf("%w: %w", ErrBadImage, err)
	}
	cf, err := src.img.ConfigFile()
	if err != nil {
		return Image{}, fmt.Errorf("%w: config: %w", ErrBadImage, err)
	}
	if err := checkPlatform(cf); err != nil {
		return Image{}, err
	}
	unlock, err := s.lock(ctx, digest)
	if err != nil {
		return Image{}, err
	}
	defer unlock()
	if img, err := s.get(digest); err == nil {
		return img, nil
	} else if !errors.Is(err, ErrNotFound) {
		return Image{}, err
	}
	if err := s.convert(ctx, ref, src, digest, cf); err != nil {
		if isNoSpace(err) && !errors.Is(err, ErrNoSpace) {
			err = fmt.Errorf("%w: %w", ErrNoSpace, err)
		}
		return Image{}, err
	}
	return s.get(digest)
}

// errNeedRoot: a base keeps its files' owners, which takes root to set.
var errNeedRoot = errors.New("converting an image needs root (its files keep their owners)")

// convert makes the base of src in a work directory under .tmp and
// renames it into place; the work directory goes in every case.
func (s *Store) convert(ctx context.Context, ref string, src source, digest v1.Hash, cf *v1.ConfigFile) error {
	s.conversions.Add(1)
	if os.Geteuid() != 0 {
		return errNeedRoot
	}
	if src.storedBytes > s.opts.MaxImageBytes {
		return fmt.Errorf("%w: its layers take %d bytes stored, the limit is %d", ErrTooLarge, src.storedBytes, s.opts.MaxImageBytes)
	}
	if err := needFree(s.dir, src.storedBytes, s.opts.ReserveBytes, "unpacking the image"); err != nil {
		return err
	}
	work, err := os.MkdirTemp(filepath.Join(s.dir, tmpDir), fileStem(digest)+"-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	staging := filepath.Join(work, "root")
	if err := os.Mkdir(staging, 0o755); err != nil {
		return err
	}
	tree, err := s.unpack(ctx, src, cf, staging)
	if err != nil {
		return err
	}
	l := tree.layout(s.opts.SpareBytes)
	if err := needFree(s.dir, l.host, s.opts.ReserveBytes, "the ext4 base"); err != nil {
		return err
	}
	image := filepath.Join(work, "base.ext4")
	if err := makeFS(ctx, staging, image, l); err != nil {
		return err
	}
	if err := os.RemoveAll(staging); err != nil {
		return err
	}
	if err := sealFile(image); err != nil {
		return err
	}

	rec := record{Digest: digest.String(), Ref: ref, Created: time.Now().UTC(), Config: configOf(cf)}
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	recPath := filepath.Join(work, "record.json")
	if err := writeSynced(recPath, data); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// The record first, the base last: a base exists once its .ext4
	// does, and Open removes a record left without one.
	stem := filepath.Join(s.dir, fileStem(digest))
	if err := os.Rename(recPath, stem+".json"); err != nil {
		return err
	}
	if err := os.Rename(image, stem+".ext4"); err != nil {
		os.Remove(stem + ".json")
		return err
	}
	return syncDir(s.dir)
}

// unpack flattens src's layers (mutate.Extract: whiteouts and opaque
// directories applied) into staging and checks the result has a shell.
func (s *Store) unpack(ctx context.Context, src source, cf *v1.ConfigFile, staging string) (treeSize, error) {
	var found firstError
	checked, err := checkLayers(src.img, cf, s.opts.MaxImageBytes, &found)
	if err != nil {
		return treeSize{}, err
	}
	root, err := os.OpenRoot(staging)
	if err != nil {
		return treeSize{}, err
	}
	defer root.Close()

	flat := mutate.Extract(checked)
	defer flat.Close()
	u := newUnpacker(ctx, root, s.opts.MaxImageBytes, newSpaceWatch(s.dir, s.opts.ReserveBytes))
	if err := u.unpack(flat); err != nil {
		// A layer's own failure is the cause of the stream's; it is
		// set before the stream ends (see checkedReader).
		if ctx.Err() != nil {
			return treeSize{}, ctx.Err()
		}
		if ferr := found.get(); ferr != nil {
			return treeSize{}, ferr
		}
		if errorsIsAny(err, ErrUnsafeEntry, ErrTooLarge, ErrNoSpace, ErrBadImage) || isNoSpace(err) {
			return treeSize{}, err
		}
		return treeSize{}, fmt.Errorf("%w: %w", ErrBadImage, err)
	}
	if err := found.get(); err != nil {
		return treeSize{}, err
	}
	if err := checkShell(root); err != nil {
		return treeSize{}, err
	}
	return u.tree, nil
}

func configOf(cf *v1.ConfigFile) Config {
	c := cf.Config
	return Config{Env: c.Env, WorkingDir: c.WorkingDir, User: c.User, Entrypoint: c.Entrypoint, Cmd: c.Cmd}
}

// sealFile makes the base read-only and durable.
func sealFile(name string) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Chmod(0o444); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", name, err)
	}
	return nil
}

func writeSynced(name string, data []byte) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
