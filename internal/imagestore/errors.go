package imagestore

import "errors"

// The refusals of an import, so that the daemon's API maps each to one
// status (a bad REF or image is the client's fault, a full disk is the
// host's). Every error Import returns wraps at most one of them, together
// with the REF and, where there is one, the entry or layer at fault.
var (
	// ErrBadRef: REF is neither an existing path nor a valid registry
	// reference, or names an image the path or registry does not hold.
	ErrBadRef = errors.New("neither an existing path nor a valid image reference")
	// ErrBadImage: the image cannot be read as a linux/amd64 image: a
	// corrupt or truncated blob, a manifest, config or layer whose
	// content does not match its digest, a malformed tar, several
	// candidates and no selector.
	ErrBadImage = errors.New("unusable image")
	// ErrUnsafeEntry: a layer entry or link that would reach outside the
	// image's root (`../`, a symlink followed out of it during unpack).
	ErrUnsafeEntry = errors.New("entry escapes the image root")
	// ErrNoShell: the image has no /bin/sh that resolves, inside the
	// image, to an executable file. The guest agent runs commands with it.
	ErrNoShell = errors.New("image has no shell")
	// ErrTooLarge: a layer or the flattened tree exceeds
	// Options.MaxImageBytes.
	ErrTooLarge = errors.New("image larger than the limit")
	// ErrNoSpace: the store's file system has no room for the conversion.
	ErrNoSpace = errors.New("no space for the image")
	// ErrNotFound: no base with that digest in the store.
	ErrNotFound = errors.New("no such image")
)

// errorsIsAny reports whether err is one of targets.
func errorsIsAny(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}
