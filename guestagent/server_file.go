package guestagent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// errStopping fails an op that the server's shutdown interrupted.
var errStopping = &Error{Code: CodeInternal, Message: "agent is stopping"}

// checkPath rejects a path that is empty or relative: the agent's working
// directory is no business of the host's.
func checkPath(op, path string) error {
	if !filepath.IsAbs(path) {
		return &Error{Code: CodeBadRequest, Message: fmt.Sprintf("%s: path %q is not absolute", op, path)}
	}
	return nil
}

// fileError turns an error from the os package, which names the path, into
// an *Error with the code that fits it.
func fileError(err error) *Error {
	code := CodeInternal
	switch {
	case errors.Is(err, fs.ErrNotExist):
		code = CodeNotFound
	case errors.Is(err, fs.ErrPermission):
		code = CodePermission
	case errors.Is(err, syscall.EISDIR), errors.Is(err, syscall.ENOTDIR),
		errors.Is(err, syscall.EINVAL), errors.Is(err, syscall.ENAMETOOLONG),
		errors.Is(err, syscall.ELOOP), errors.Is(err, syscall.ESPIPE):
		code = CodeBadRequest
	}
	return &Error{Code: code, Message: err.Error()}
}

// readFile sends the bytes of a file, from args.Offset on and at most
// args.Length of them if that is positive, in FrameStdout frames. It reads
// until the end of the file, not to the size that stat reports, which is
// wrong for files in /proc and /sys. It stops if ctx is cancelled.
func readFile(ctx context.Context, x *exchange, args *readFileArgs) (*readFileResult, error) {
	if err := checkPath(opReadFile, args.Path); err != nil {
		return nil, err
	}
	if args.Offset < 0 || args.Length < 0 {
		return nil, &Error{Code: CodeBadRequest, Message: fmt.Sprintf("read_file %s: negative offset %d or length %d", args.Path, args.Offset, args.Length)}
	}
	f, err := os.Open(args.Path)
	if err != nil {
		return nil, fileError(err)
	}
	defer f.Close()
	if args.Offset > 0 {
		if _, err := f.Seek(args.Offset, io.SeekStart); err != nil {
			return nil, fileError(err)
		}
	}
	var r io.Reader = f
	if args.Length > 0 {
		r = io.LimitReader(f, args.Length)
	}
	buf := make([]byte, maxChunk)
	var sent int64
	for ctx.Err() == nil {
		n, err := r.Read(buf)
		if n > 0 {
			if err := x.out.write(FrameStdout, buf[:n]); err != nil {
				return nil, fmt.Errorf("read_file %s: send: %w", args.Path, err)
			}
			sent += int64(n)
		}
		if err == io.EOF {
			return &readFileResult{Size: sent}, nil
		}
		if err != nil {
			return nil, fileError(err)
		}
	}
	return nil, errStopping
}

// writeFile writes the host's input to a file. Unless it appends, it writes
// to a temporary file in the file's directory and renames that over the
// file once all the input is in and synced, so that the file is replaced
// whole or not at all; the temporary file is removed if anything fails.
// An append that fails may have appended part of the input.
func writeFile(ctx context.Context, x *exchange, args *writeFileArgs) (_ *writeFileResult, err error) {
	if err := checkPath(opWriteFile, args.Path); err != nil {
		return nil, err
	}
	if args.Mode&^fs.ModePerm != 0 {
		return nil, &Error{Code: CodeBadRequest, Message: fmt.Sprintf("write_file %s: mode %#o has bits other than permissions", args.Path, uint32(args.Mode))}
	}
	perm := args.Mode
	if perm == 0 {
		perm = 0o644
	}
	dir := filepath.Dir(args.Path)
	if args.CreateDirs {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fileError(err)
		}
	}
	// Fail before the host sends the data, rather than at the rename.
	if fi, err := os.Stat(args.Path); err == nil && fi.IsDir() {
		return nil, &Error{Code: CodeBadRequest, Message: fmt.Sprintf("write_file %s: is a directory", args.Path)}
	}

	if args.Append {
		f, err := openAppend(args.Path, perm)
		if err != nil {
			return nil, fileError(err)
		}
		n, err := x.receive(ctx, f, args.Path)
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fileError(cerr)
		}
		if err != nil {
			return nil, err
		}
		return &writeFileResult{Written: n}, nil
	}

	f, err := os.CreateTemp(dir, ".sailbox-write-*")
	if err != nil {
		return nil, fileError(err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return nil, fileError(err)
	}
	n, err := x.receive(ctx, f, args.Path)
	if err != nil {
		return nil, err
	}
	if err := f.Sync(); err != nil {
		return nil, fileError(err)
	}
	if err := f.Close(); err != nil {
		return nil, fileError(err)
	}
	if err := os.Rename(f.Name(), args.Path); err != nil {
		return nil, fileError(err)
	}
	return &writeFileResult{Written: n}, nil
}

// openAppend opens path for appending, creating it with exactly perm if it
// does not exist.
func openAppend(path string, perm fs.FileMode) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if !errors.Is(err, fs.ErrNotExist) {
		return f, err
	}
	f, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return nil, err
	}
	if err := f.Chmod(perm); err != nil { // OpenFile's mode is subject to the umask
		f.Close()
		return nil, err
	}
	return f, nil
}

// receive writes the payloads of the host's FrameStdin frames to w, the
// file at path or a temporary file standing in for it, until a
// FrameStdinEOF, and returns how many bytes it wrote. Each frame must
// arrive within the server's RequestTimeout; cancelling ctx interrupts the
// wait.
func (x *exchange) receive(ctx context.Context, w io.Writer, path string) (int64, error) {
	stop := context.AfterFunc(ctx, func() { x.conn.SetReadDeadline(aLongTimeAgo) })
	defer stop()
	var n int64
	for {
		if err := x.conn.SetReadDeadline(time.Now().Add(x.timeout)); err != nil {
			return n, fmt.Errorf("write_file %s: set read deadline: %w", path, err)
		}
		// Checked after the deadline is set, which would otherwise undo
		// the AfterFunc's if ctx was cancelled just before.
		if ctx.Err() != nil {
			return n, errStopping
		}
		typ, p, err := x.in.Next()
		switch {
		case err != nil && ctx.Err() != nil:
			return n, errStopping
		case err != nil:
			return n, fmt.Errorf("write_file %s: read input: %w", path, err)
		case typ == FrameStdin:
			m, err := w.Write(p)
			n += int64(m)
			if err != nil {
				return n, fileError(err)
			}
		case typ == FrameStdinEOF:
			return n, nil
		default:
			return n, &Error{Code: CodeProtocol, Message: fmt.Sprintf("write_file %s: expected a %v or %v frame, got %v", path, FrameStdin, FrameStdinEOF, typ)}
		}
	}
}

// stat describes the file at args.Path, following symbolic links.
func stat(args *statArgs) (*FileInfo, error) {
	if err := checkPath(opStat, args.Path); err != nil {
		return nil, err
	}
	fi, err := os.Stat(args.Path)
	if err != nil {
		return nil, fileError(err)
	}
	return &FileInfo{
		Name:       fi.Name(),
		Size:       fi.Size(),
		Mode:       fi.Mode(),
		ModeString: fi.Mode().String(),
		ModTime:    fi.ModTime().UTC(),
		IsDir:      fi.IsDir(),
	}, nil
}
