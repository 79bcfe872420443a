package imagestore

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// The one platform a box runs.
var platform = v1.Platform{OS: "linux", Architecture: "amd64"}

// Annotations of an OCI index that name an image: the OCI tag, and the
// full name containerd writes.
const (
	annotationRefName       = "org.opencontainers.image.ref.name"
	annotationContainerName = "io.containerd.image.name"
)

// source is an image found for a REF, before anything is converted.
type source struct {
	img  v1.Image
	kind string // "oci-layout", "docker-archive" or "registry"
	// storedBytes is what the image's layers take where they are stored
	// (compressed, as listed in its manifest, or the tarball's size): a
	// lower bound of what unpacking needs, known before any is read.
	storedBytes int64
}

// findImage resolves REF:
//
//   - an existing directory holding an oci-layout file: an OCI image
//     layout; "DIR:TAG" picks the image whose ref.name annotation (or
//     containerd's image name) is TAG, "DIR@sha256:…" the one with that
//     manifest or index digest; a bare DIR must hold exactly one. An
//     index entry that is itself an index (multi-platform) gives its
//     linux/amd64 image.
//   - an existing regular file: a `docker save` tarball; "FILE:NAME:TAG"
//     picks the image tagged NAME:TAG, a bare FILE must hold exactly one.
//   - otherwise a registry reference (name.ParseReference), linux/amd64
//     picked from an index; plain HTTP only to loopback registries.
//
// A path is the longest prefix of REF, ending before a ':' or '@', that
// exists; the rest selects.
func findImage(ctx context.Context, ref string, opts Options) (source, error) {
	if ref == "" || strings.ContainsRune(ref, 0) {
		return source{}, fmt.Errorf("%w: %q", ErrBadRef, ref)
	}
	if path, selector, fi, ok := splitRef(ref); ok {
		return fromPath(path, selector, fi)
	}
	if strings.HasPrefix(ref, "/") || strings.HasPrefix(ref, ".") {
		// A path that does not exist; name.ParseReference would take
		// "./x" for a registry named ".".
		return source{}, fmt.Errorf("%w: %q does not exist", ErrBadRef, ref)
	}
	return fromRegistry(ctx, ref, opts)
}

// findPath reads the image at path (a layout directory or a tarball).
func findPath(path, selector string) (source, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return source{}, fmt.Errorf("%w: %w", ErrBadRef, err)
	}
	return fromPath(path, selector, fi)
}

func fromPath(path, selector string, fi fs.FileInfo) (source, error) {
	switch {
	case fi.IsDir():
		return fromLayout(path, selector)
	case fi.Mode().IsRegular():
		return fromTarball(path, selector, fi.Size())
	default:
		return source{}, fmt.Errorf("%w: %s is neither a directory nor a regular file", ErrBadRef, path)
	}
}

// splitRef finds the path in REF; ok is false when no prefix exists.
func splitRef(ref string) (path, selector string, fi fs.FileInfo, ok bool) {
	if fi, err := os.Stat(ref); err == nil {
		return ref, "", fi, true
	}
	for i := len(ref) - 1; i > 0; i-- {
		if ref[i] != ':' && ref[i] != '@' {
			continue
		}
		if fi, err := os.Stat(ref[:i]); err == nil {
			return ref[:i], ref[i:], fi, true
		}
	}
	return "", "", nil, false
}

func fromLayout(dir, selector string) (source, error) {
	if _, err := os.Stat(filepath.Join(dir, "oci-layout")); err != nil {
		return source{}, fmt.Errorf("%w: directory %s is not an OCI image layout (no oci-layout file)", ErrBadRef, dir)
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return source{}, fmt.Errorf("%w: OCI layout %s: %w", ErrBadImage, dir, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return source{}, fmt.Errorf("%w: OCI layout %s: %w", ErrBadImage, dir, err)
	}
	var found []v1.Descriptor
	for _, d := range im.Manifests {
		if matchSelector(d, selector) {
			found = append(found, d)
		}
	}
	switch {
	case len(found) == 0 && selector == "":
		return source{}, fmt.Errorf("%w: OCI layout %s holds no image", ErrBadImage, dir)
	case len(found) == 0:
		return source{}, fmt.Errorf("%w: OCI layout %s holds no image %s", ErrBadRef, dir, selector)
	case len(found) > 1:
		return source{}, fmt.Errorf("%w: OCI layout %s holds %d images; name one as DIR:TAG or DIR@sha256:…", ErrBadRef, dir, len(found))
	}
	img, err := layoutImage(idx, found[0])
	if err != nil {
		return source{}, fmt.Errorf("%w: OCI layout %s: %w", ErrBadImage, dir, err)
	}
	return withStoredBytes(source{img: img, kind: "oci-layout"})
}

// checkDigest refuses a file whose content is not the digest it was
// found by (in the digest's own algorithm: OCI allows sha512 too). A
// layout's manifests and indexes, and any source's config, are read by
// name, and go-containerregistry computes their digests from what it read
// without comparing (a registry's are checked as they arrive): damage
// that left valid JSON would go unnoticed.
func checkDigest(what string, want v1.Hash, content func() ([]byte, error)) error {
	b, err := content()
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, want, err)
	}
	h, err := v1.Hasher(want.Algorithm)
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, want, err)
	}
	h.Write(b)
	if got := hex.EncodeToString(h.Sum(nil)); got != want.Hex {
		return fmt.Errorf("%s %s: content is %s:%s", what, want, want.Algorithm, got)
	}
	return nil
}

func matchSelector(d v1.Descriptor, selector string) bool {
	switch {
	case selector == "":
		return true
	case strings.HasPrefix(selector, "@"):
		return d.Digest.String() == selector[1:]
	default:
		tag := selector[1:]
		return tag != "" && (d.Annotations[annotationRefName] == tag || d.Annotations[annotationContainerName] == tag)
	}
}

// layoutImage opens the image d names; for a nested index, its
// linux/amd64 image.
func layoutImage(idx v1.ImageIndex, d v1.Descriptor) (v1.Image, error) {
	if !d.MediaType.IsIndex() {
		return layoutManifest(idx, d.Digest)
	}
	child, err := idx.ImageIndex(d.Digest)
	if err != nil {
		return nil, err
	}
	if err := checkDigest("index", d.Digest, child.RawManifest); err != nil {
		return nil, err
	}
	im, err := child.IndexManifest()
	if err != nil {
		return nil, err
	}
	for _, m := range im.Manifests {
		if m.Platform != nil && m.Platform.OS == platform.OS && m.Platform.Architecture == platform.Architecture && m.MediaType.IsImage() {
			return layoutManifest(child, m.Digest)
		}
	}
	return nil, fmt.Errorf("index %s has no %s/%s image", d.Digest, platform.OS, platform.Architecture)
}

// layoutManifest opens the image of manifest h in idx, checking the
// manifest is h.
func layoutManifest(idx v1.ImageIndex, h v1.Hash) (v1.Image, error) {
	img, err := idx.Image(h)
	if err != nil {
		return nil, err
	}
	if err := checkDigest("manifest", h, img.RawManifest); err != nil {
		return nil, err
	}
	return img, nil
}

func fromTarball(file, selector string, size int64) (source, error) {
	var tag *name.Tag
	if selector != "" {
		t, err := name.NewTag(selector[1:])
		if err != nil || selector[0] != ':' {
			return source{}, fmt.Errorf("%w: %q does not name a tag in the tarball %s", ErrBadRef, selector, file)
		}
		tag = &t
	}
	img, err := tarball.ImageFromPath(file, tag)
	if err == nil {
		err = checkTarballConfig(file, tag, img)
	}
	if err != nil {
		return source{}, fmt.Errorf("%w: docker-save tarball %s: %w", ErrBadImage, file, err)
	}
	return source{img: img, kind: "docker-archive", storedBytes: size}, nil
}

// checkTarballConfig refuses a tarball whose image config is not the one
// its manifest.json names. go-containerregistry takes the config file's
// digest from its content; the name the manifest gives it carries the
// digest it was written with: "<hex>.json" (docker before 25),
// "blobs/sha256/<hex>" (docker 25 and later, an OCI layout inside) or
// "sha256:<hex>" (go-containerregistry). A name of another form is not
// checked.
func checkTarballConfig(file string, tag *name.Tag, img v1.Image) error {
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(file) })
	if err != nil {
		return err
	}
	d := tarballEntry(m, tag)
	if d == nil {
		return nil // ImageFromPath found it; nothing to compare with
	}
	named := strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(d.Config, "blobs/sha256/"), "sha256:"), ".json")
	want, err := v1.NewHash("sha256:" + named)
	if err != nil {
		return nil
	}
	return checkDigest("manifest.json's config", want, img.RawConfigFile)
}

// tarballEntry is the entry of m that tarball.ImageFromPath reads for tag
// (its findDescriptor): the only one without a tag, else the first whose
// RepoTags name tag.
func tarballEntry(m tarball.Manifest, tag *name.Tag) *tarball.Descriptor {
	if tag == nil {
		if len(m) != 1 {
			return nil
		}
		return &m[0]
	}
	for i := range m {
		for _, s := range m[i].RepoTags {
			if t, err := name.NewTag(s); err == nil && t.Name() == tag.Name() {
				return &m[i]
			}
		}
	}
	return nil
}

func fromRegistry(ctx context.Context, ref string, opts Options) (source, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return source{}, fmt.Errorf("%w: %q: %w", ErrBadRef, ref, err)
	}
	if isLoopback(r.Context().RegistryStr()) {
		if r, err = name.ParseReference(ref, name.Insecure); err != nil {
			return source{}, fmt.Errorf("%w: %q: %w", ErrBadRef, ref, err)
		}
	}
	base := opts.Transport
	if base == nil {
		base = remote.DefaultTransport
	}
	img, err := remote.Image(r,
		remote.WithContext(ctx),
		remote.WithPlatform(platform),
		remote.WithAuthFromKeychain(opts.Keychain),
		remote.WithTransport(loopbackHTTPOnly{base}),
	)
	if err != nil {
		if ctx.Err() != nil {
			return source{}, ctx.Err()
		}
		return source{}, fmt.Errorf("registry image %s: %w", r, err)
	}
	return withStoredBytes(source{img: img, kind: "registry"})
}

// withStoredBytes adds the layers' compressed sizes from the manifest
// (free for layouts and registries, whose manifest is already read).
func withStoredBytes(src source) (source, error) {
	m, err := src.img.Manifest()
	if err != nil {
		return source{}, fmt.Errorf("%w: manifest: %w", ErrBadImage, err)
	}
	for _, l := range m.Layers {
		src.storedBytes += l.Size
	}
	return src, nil
}

// checkPlatform refuses an image a box cannot run.
func checkPlatform(cf *v1.ConfigFile) error {
	if cf.OS != platform.OS || cf.Architecture != platform.Architecture {
		return fmt.Errorf("%w: image is for %q/%q; boxes run %s/%s images only", ErrBadImage, cf.OS, cf.Architecture, platform.OS, platform.Architecture)
	}
	return nil
}

// isLoopback reports whether a registry host[:port] is this machine.
func isLoopback(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// loopbackHTTPOnly refuses plain-HTTP requests to hosts other than
// loopback ones: go-containerregistry falls back to HTTP on its own for
// private-range addresses and *.local names, where a network attacker
// could serve any image.
type loopbackHTTPOnly struct{ base http.RoundTripper }

var errPlainHTTP = errors.New("plain HTTP is allowed to loopback registries only")

func (t loopbackHTTPOnly) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" && !isLoopback(req.URL.Host) {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, fmt.Errorf("%s: %w", req.URL.Host, errPlainHTTP)
	}
	return t.base.RoundTrip(req)
}
