package guestagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// The call engine: one connection per call, its frames both ways, and
// the context watched throughout.

// A call describes one exchange for Client.do.
type call struct {
	op      string
	subject string // what the op acts on, for errors: a path, a quoted program name, or ""
	args    any    // marshalled to JSON as the request's Args, unless nil

	// stdin, if not nil, is sent as FrameStdin frames ended by a
	// FrameStdinEOF, while the answer is read.
	stdin io.Reader
	// output receives the payload of every FrameStdout and FrameStderr;
	// if it is nil, those frames are a protocol error. An error from
	// output ends the exchange.
	output func(typ FrameType, p []byte) error
	// kill says that ending the exchange early must kill the process that
	// the op started.
	kill bool
	// signals, if not nil, are sent as FrameSignal frames while the answer
	// is read.
	signals <-chan int
}

// killFrameTimeout bounds how long do waits to send the SIGKILL frame that
// ends an exec early.
const killFrameTimeout = 250 * time.Millisecond

// do runs one exchange on a new connection: it sends the request, then
// cl.stdin if any, and reads frames until the terminal one, decoding a
// FrameResponse into result. An answer in a FrameError is returned as an
// *Error. Every error is prefixed with the op and the call's subject.
//
// Goroutines: the calling goroutine owns the connection: it writes the
// request, reads every frame the agent sends, and closes the connection
// before it returns. A goroutine started by context.AfterFunc sets the
// connection's deadline to the past when ctx is cancelled, which makes
// blocked I/O return. If cl.stdin is set, a goroutine copies it to the
// connection; it ends when stdin ends or fails, or when it next tries to
// write after do has closed the connection. do does not wait for it, since
// it may be blocked in a Read of stdin that nothing can interrupt.
func (c *Client) do(ctx context.Context, cl *call, result any) (err error) {
	defer func() {
		if err != nil {
			name := cl.op
			if cl.subject != "" {
				name += " " + cl.subject
			}
			err = fmt.Errorf("agent %s: %w", name, err)
		}
	}()
	if c.Dial == nil {
		return errors.New("client has no Dial function")
	}
	req := Request{Op: cl.op}
	if cl.args != nil {
		b, err := json.Marshal(cl.args)
		if err != nil {
			return fmt.Errorf("encode arguments: %w", err)
		}
		req.Args = b
	}
	reqBytes, err := json.Marshal(&req)
	if err != nil {
		return fmt.Errorf("encode request: %w", err)
	}

	conn, err := c.Dial(ctx)
	if err != nil {
		return fmt.Errorf("dial: %w", contextError(ctx, err))
	}
	defer conn.Close()
	stop, err := watchContext(ctx, conn)
	if err != nil {
		return err
	}
	defer stop()

	w := &frameWriter{conn: conn}
	if err := w.write(FrameRequest, reqBytes); err != nil {
		return fmt.Errorf("write request: %w", contextError(ctx, err))
	}
	var stdinErr chan error // receives a failure to read stdin
	if cl.stdin != nil {
		stdinErr = make(chan error, 1)
		go func() {
			if err := sendInput(w, cl.stdin); err != nil {
				stdinErr <- err
				conn.SetReadDeadline(aLongTimeAgo) // interrupt do's read
			}
		}()
	}

	if cl.signals != nil {
		answered := make(chan struct{})
		defer close(answered)
		go forwardSignals(w, cl.signals, answered)
	}

	terminal, err := readAnswer(ctx, NewFrameReader(conn), cl, result)
	if err != nil && !terminal {
		select {
		case serr := <-stdinErr:
			err = serr
		default:
		}
		if cl.kill {
			// Best effort: if the frame cannot go out promptly, or an
			// interrupted write has left part of a frame behind, closing
			// the connection kills the process all the same.
			stop()
			conn.SetWriteDeadline(time.Now().Add(killFrameTimeout))
			payload, _ := json.Marshal(signalArgs{Signal: sigkill})
			w.write(FrameSignal, payload)
		}
	}
	return err
}

// forwardSignals sends each signal from signals as a FrameSignal until the
// exchange is answered. A failed write is left for the reader of the
// connection to report.
func forwardSignals(w *frameWriter, signals <-chan int, answered <-chan struct{}) {
	for {
		select {
		case <-answered:
			return
		case sig, ok := <-signals:
			if !ok {
				return
			}
			payload, _ := json.Marshal(signalArgs{Signal: sig})
			if w.write(FrameSignal, payload) != nil {
				return
			}
		}
	}
}

// sendInput copies r to w as FrameStdin frames and ends them with a
// FrameStdinEOF. It returns an error only if reading r fails, in which case
// it sends no FrameStdinEOF: the input is incomplete. A failure to write
// is left for the reader of the connection to report.
func sendInput(w *frameWriter, r io.Reader) error {
	buf := make([]byte, maxChunk)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if w.write(FrameStdin, buf[:n]) != nil {
				return nil
			}
		}
		if err == io.EOF {
			w.write(FrameStdinEOF, nil)
			return nil
		}
		if err != nil {
			return fmt.Errorf("read stdin: %w", err)
		}
	}
}

// readAnswer reads frames from fr, handing output frames to cl.output,
// until the terminal frame, and decodes a FrameResponse into result. It
// reports whether it read the terminal frame: if not, the exchange ended
// early.
func readAnswer(ctx context.Context, fr *FrameReader, cl *call, result any) (terminal bool, err error) {
	for {
		typ, payload, err := fr.Next()
		if err != nil {
			if err == io.EOF {
				err = errors.New("connection closed without a response")
			}
			return false, fmt.Errorf("read response: %w", contextError(ctx, err))
		}
		switch typ {
		case FrameResponse:
			if err := json.Unmarshal(payload, result); err != nil {
				return true, fmt.Errorf("decode response: %w", err)
			}
			return true, nil
		case FrameError:
			ae := new(Error)
			if err := json.Unmarshal(payload, ae); err != nil {
				return true, fmt.Errorf("decode error response: %w", err)
			}
			return true, ae
		case FrameStdout, FrameStderr:
			if cl.output != nil {
				if err := cl.output(typ, payload); err != nil {
					return false, err
				}
				continue
			}
		}
		return false, fmt.Errorf("read response: unexpected %v frame", typ)
	}
}

// watchContext makes I/O on conn honour ctx: it applies ctx's deadline, if
// any, and arranges for blocked I/O to return when ctx is cancelled, by
// setting conn's deadline to the past. The returned stop function ends the
// watch: once it has returned, ctx no longer touches conn's deadline. It
// reports false if cancellation has interrupted conn. Calling it again
// returns the same answer.
func watchContext(ctx context.Context, conn net.Conn) (stop func() bool, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(dl); err != nil {
			return nil, fmt.Errorf("set deadline: %w", err)
		}
	}
	interrupted := make(chan struct{})
	stopWatch := context.AfterFunc(ctx, func() {
		conn.SetDeadline(aLongTimeAgo)
		close(interrupted)
	})
	return sync.OnceValue(func() bool {
		if stopWatch() {
			return true
		}
		<-interrupted // the AfterFunc has started: let it finish
		return false
	}), nil
}

// contextError returns ctx's error in place of err if err was caused by
// ctx: cancellation, or a connection deadline that ctx's deadline set.
func contextError(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) && isTimeout(err) {
		// The connection's deadline fired a hair before ctx's timer.
		return context.DeadlineExceeded
	}
	return err
}
