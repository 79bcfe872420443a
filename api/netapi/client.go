package netapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/sailbox-dev/sailbox/api"
)

// Sentinels that an *Error matches by its code.
var (
	// ErrRefused: the guest reset the connection (nothing listens on the
	// port).
	ErrRefused = errors.New("the guest refused the connection")
	// ErrUnreachable: no VMM is attached, or the guest did not answer.
	ErrUnreachable = errors.New("the guest is unreachable")
)

// Error is a refused control call, as the client returns it.
type Error struct {
	Op      string // "POST /v1/dial?port=80"
	Status  int    // the HTTP status
	Code    string // ErrorBody.Code
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("sailbox-net %s: %s (%d)", e.Op, e.Message, e.Status)
}

// Is matches ErrRefused and ErrUnreachable by code.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrRefused:
		return e.Code == CodeRefused
	case ErrUnreachable:
		return e.Code == CodeUnreachable
	}
	return false
}

// GetStats asks the sailbox-net whose control socket is at control for its
// counters.
func GetStats(ctx context.Context, control string) (Stats, error) {
	var st Stats
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://sailbox-net"+StatsPath, nil)
	if err != nil {
		return st, err
	}
	c := api.UnixHTTPClient(control)
	defer c.CloseIdleConnections()
	resp, err := c.Do(req)
	if err != nil {
		return st, fmt.Errorf("sailbox-net GET %s: %w", StatsPath, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, errorOf("GET "+StatsPath, resp)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("sailbox-net GET %s: %w", StatsPath, err)
	}
	return st, nil
}

// Dial opens a TCP connection to the guest's port through the box's
// network, by the sailbox-net whose control socket is at control. ctx
// bounds the set-up only. The connection's CloseWrite half-closes it
// (the guest reads EOF).
func Dial(ctx context.Context, control string, port uint16) (*Conn, error) {
	op := fmt.Sprintf("POST %s?port=%d", DialPath, port)
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", control)
	if err != nil {
		return nil, fmt.Errorf("sailbox-net %s: %w", op, err)
	}
	uc := c.(*net.UnixConn)
	ok := false
	defer func() {
		if !ok {
			uc.Close()
		}
	}()
	if dl, has := ctx.Deadline(); has {
		uc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { uc.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	req, err := http.NewRequest(http.MethodPost, "http://sailbox-net"+DialPath+"?port="+strconv.Itoa(int(port)), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", DialProtocol)
	if err := req.Write(uc); err != nil {
		return nil, fmt.Errorf("sailbox-net %s: %w", op, ctxErr(ctx, err))
	}
	br := bufio.NewReader(uc)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return nil, fmt.Errorf("sailbox-net %s: %w", op, ctxErr(ctx, err))
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer resp.Body.Close()
		return nil, errorOf(op, resp)
	}
	if !stop() {
		return nil, fmt.Errorf("sailbox-net %s: %w", op, ctx.Err())
	}
	uc.SetDeadline(time.Time{})
	ok = true
	return &Conn{UnixConn: uc, r: br}, nil
}

func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// Conn is a connection to a guest's port made by Dial.
type Conn struct {
	*net.UnixConn
	r *bufio.Reader // holds what the server sent right after its answer
}

func (c *Conn) Read(b []byte) (int, error) {
	if c.r != nil {
		if c.r.Buffered() > 0 {
			return c.r.Read(b)
		}
		c.r = nil
	}
	return c.UnixConn.Read(b)
}

// errorOf reads a refusal's ErrorBody.
func errorOf(op string, resp *http.Response) error {
	e := &Error{Op: op, Status: resp.StatusCode}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var body ErrorBody
	if json.Unmarshal(b, &body) == nil && body.Error != "" {
		e.Code, e.Message = body.Code, body.Error
	} else {
		e.Message = string(b)
	}
	return e
}
