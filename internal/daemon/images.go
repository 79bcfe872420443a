package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/internal/catalog"
	"github.com/sailbox-dev/sailbox/internal/images"
	"github.com/sailbox-dev/sailbox/internal/imagestore"
)

// How a create request's image becomes a box's disk.
//
// A REF that resolves inside the image directories (images.Dirs.Find) is
// a local image: a directory is an OCI image layout and a regular file
// named *.tar a `docker save` tarball, both imported into the image
// store; any other regular file is a raw disk, the box's root file system
// when an image record (<stem>.json, imagestore's format) lies beside it,
// a data disk otherwise. A REF that resolves nowhere there and parses as
// a registry reference is imported from its registry. Nothing else of
// the host is looked at for a client's REF; the operator's default
// (OperatorImage) is trusted and resolved without the image directories.

// ImageStore converts images into the base disks boxes boot on;
// *imagestore.Store is one. ImportPath takes a path already resolved,
// ImportRemote a registry reference only (it never looks at files).
type ImageStore interface {
	ImportPath(ctx context.Context, path, selector string) (imagestore.Image, error)
	ImportRemote(ctx context.Context, ref string) (imagestore.Image, error)
}

// rootOf is the RootImage of an imported image.
func rootOf(img imagestore.Image) *catalog.RootImage {
	c := img.Config
	return &catalog.RootImage{Digest: img.Digest, Env: c.Env, WorkingDir: c.WorkingDir, User: c.User, Entrypoint: c.Entrypoint, Cmd: c.Cmd}
}

// imageError maps an image's refusal to the daemon's errors: a full disk
// is the host's capacity, anything else the request's fault.
func imageError(err error) error {
	switch {
	case errors.Is(err, imagestore.ErrNoSpace):
		return fmt.Errorf("%w: %w", ErrCapacity, err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	return fmt.Errorf("%w: %w", ErrInvalidArgument, err)
}

// clientImage resolves a create request's image REF to the box's disk.
func (m *Manager) clientImage(ctx context.Context, ref string) (string, *catalog.RootImage, error) {
	if m.images != nil {
		if f, err := m.images.Find(ref); err == nil {
			return m.localImage(ctx, f, m.images.Resolve)
		}
	}
	if m.store != nil && isRegistryRef(ref) {
		img, err := m.store.ImportRemote(ctx, ref)
		if err != nil {
			return "", nil, imageError(err)
		}
		return img.Path, rootOf(img), nil
	}
	if m.images == nil && m.store == nil {
		return "", nil, fmt.Errorf("%w: image %q: the daemon has no image directories (sailboxd -image-dir)", ErrInvalidArgument, ref)
	}
	return "", nil, fmt.Errorf("%w: image %q: %w", ErrInvalidArgument, ref, images.ErrNotImage)
}

// isRegistryRef reports whether ref reads as a registry reference rather
// than a path.
func isRegistryRef(ref string) bool {
	if ref == "" || strings.HasPrefix(ref, "/") || strings.HasPrefix(ref, ".") || strings.ContainsRune(ref, 0) {
		return false
	}
	_, err := name.ParseReference(ref)
	return err == nil
}

// localImage makes f the box's disk. record resolves the path of a raw
// disk's image record (confined for a client's image).
func (m *Manager) localImage(ctx context.Context, f images.Found, record func(string) (string, error)) (string, *catalog.RootImage, error) {
	if f.Dir || strings.HasSuffix(f.Path, ".tar") {
		if m.store == nil {
			return "", nil, fmt.Errorf("%w: image %s: the daemon has no image store", ErrInvalidArgument, f.Path)
		}
		img, err := m.store.ImportPath(ctx, f.Path, f.Selector)
		if err != nil {
			return "", nil, imageError(err)
		}
		return img.Path, rootOf(img), nil
	}
	if f.Selector != "" {
		return "", nil, fmt.Errorf("%w: image %q: %w", ErrInvalidArgument, f.Path+f.Selector, images.ErrNotImage)
	}
	stem := strings.TrimSuffix(f.Path, filepath.Ext(f.Path))
	rec, err := record(stem + ".json")
	if err != nil {
		return f.Path, nil, nil // a data disk
	}
	img, err := imagestore.ReadRecord(rec)
	if err != nil {
		return "", nil, imageError(err)
	}
	return f.Path, rootOf(img), nil
}

// OperatorImage resolves the operator's default image REF (sailboxd
// -image), trusted: an absolute path anywhere (a layout directory, a
// tarball, a raw disk with or without its record), or a registry
// reference, imported into store (which may be nil for raw disks).
func OperatorImage(ctx context.Context, store ImageStore, ref string) (string, *catalog.RootImage, error) {
	m := &Manager{store: store}
	if filepath.IsAbs(ref) {
		f, err := operatorFind(ref)
		if err != nil {
			return "", nil, err
		}
		return m.localImage(ctx, f, func(p string) (string, error) {
			st, err := os.Stat(p)
			if err != nil || !st.Mode().IsRegular() {
				return "", images.ErrNotImage
			}
			return p, nil
		})
	}
	if store == nil {
		return "", nil, fmt.Errorf("image %q: not an absolute path, and no image store to import it", ref)
	}
	img, err := store.ImportRemote(ctx, ref)
	if err != nil {
		return "", nil, err
	}
	return img.Path, rootOf(img), nil
}

// operatorFind splits an absolute operator REF into its path and selector.
func operatorFind(ref string) (images.Found, error) {
	try := func(p string) (images.Found, bool) {
		st, err := os.Stat(p)
		if err != nil {
			return images.Found{}, false
		}
		if st.IsDir() {
			return images.Found{Path: p, Dir: true}, true
		}
		return images.Found{Path: p}, st.Mode().IsRegular()
	}
	if f, ok := try(ref); ok {
		return f, nil
	}
	for i := len(ref) - 1; i > 0; i-- {
		if ref[i] == ':' || ref[i] == '@' {
			if f, ok := try(ref[:i]); ok {
				f.Selector = ref[i:]
				return f, nil
			}
		}
	}
	return images.Found{}, fmt.Errorf("image %s: no such directory or regular file", ref)
}

// withImageConfig gives an exec in a box whose disk is a root image the
// image's config: its Env under the request's (a request variable wins),
// its WorkingDir and User unless the request names its own, and, for a
// request without argv, its Entrypoint followed by its Cmd (what `docker
// run IMAGE` runs).
func withImageConfig(req api.ExecRequest, root *catalog.RootImage) api.ExecRequest {
	if root == nil {
		return req
	}
	if len(req.Argv) == 0 {
		req.Argv = append(slices.Clone(root.Entrypoint), root.Cmd...)
	}
	req.Env = mergeEnv(root.Env, req.Env)
	if req.Dir == "" {
		req.Dir = root.WorkingDir
	}
	if req.User == "" {
		req.User = root.User
	}
	return req
}

// mergeEnv is base with over on top: a KEY in over replaces base's.
func mergeEnv(base, over []string) []string {
	if len(base) == 0 {
		return over
	}
	key := func(kv string) string { k, _, _ := strings.Cut(kv, "="); return k }
	set := map[string]bool{}
	for _, kv := range over {
		set[key(kv)] = true
	}
	out := make([]string, 0, len(base)+len(over))
	for _, kv := range base {
		if !set[key(kv)] {
			out = append(out, kv)
		}
	}
	return append(out, over...)
}
