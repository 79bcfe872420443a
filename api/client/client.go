// Package client is the Go client of sailboxd's API (see package api and
// api/openapi.yaml).
//
//	c := client.New(api.DefaultSocket())
//	box, err := c.Create(ctx, api.CreateRequest{MemoryMiB: 512})
//	res, err := c.Exec(ctx, box.ID, api.ExecRequest{Argv: []string{"uname", "-a"}}, os.Stdout, os.Stderr)
//	_, err = c.Sleep(ctx, box.ID)
//
// Errors the daemon answers are *Error, with the HTTP status and the
// api.Code* kind:
//
//	var e *client.Error
//	if errors.As(err, &e) && e.Code == api.CodeInvalidTransition { ... }
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/sailbox-dev/sailbox/api"
)

// Client talks to one daemon. It is safe for concurrent use.
type Client struct {
	http *http.Client
	base string
}

// New returns a client of the daemon listening on the Unix socket at
// path.
func New(path string) *Client {
	return &Client{
		base: "http://sailboxd",
		http: api.UnixHTTPClient(path),
	}
}

// Error is an error answer from the daemon.
type Error struct {
	Status  int    // HTTP status
	Code    string // an api.Code* constant
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("sailboxd: %s (%d %s)", e.Message, e.Status, e.Code)
}

// IsNotFound reports whether err is the daemon's answer that the box (or
// port) does not exist.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == http.StatusNotFound
}

// IsInvalidTransition reports whether err is the daemon's refusal of a
// call the box's state does not allow.
func IsInvalidTransition(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == api.CodeInvalidTransition
}

func boxPath(id string, rest ...string) string {
	p := "/v1/boxes/" + url.PathEscape(id)
	for _, r := range rest {
		p += "/" + r
	}
	return p
}

// Create boots a new box.
func (c *Client) Create(ctx context.Context, req api.CreateRequest) (api.Box, error) {
	var b api.Box
	return b, c.doJSON(ctx, "POST", "/v1/boxes", req, http.StatusCreated, &b)
}

// ListOptions narrow List.
type ListOptions struct {
	// MaxGuestSchemaVersion, if not nil, lists only boxes whose agent
	// reports at most this version.
	MaxGuestSchemaVersion *int
	// Labels lists only boxes that carry every one of these labels.
	Labels map[string]string
}

// List returns the host's boxes.
func (c *Client) List(ctx context.Context, opts ListOptions) ([]api.Box, error) {
	q := url.Values{}
	if opts.MaxGuestSchemaVersion != nil {
		q.Set("max_guest_schema_version", strconv.Itoa(*opts.MaxGuestSchemaVersion))
	}
	for _, k := range slices.Sorted(maps.Keys(opts.Labels)) {
		q.Add("label", k+"="+opts.Labels[k])
	}
	p := "/v1/boxes"
	if len(q) > 0 {
		p += "?" + q.Encode()
	}
	var l api.BoxList
	return l.Boxes, c.doJSON(ctx, "GET", p, nil, http.StatusOK, &l)
}

// Get returns box id.
func (c *Client) Get(ctx context.Context, id string) (api.Box, error) {
	var b api.Box
	return b, c.doJSON(ctx, "GET", boxPath(id), nil, http.StatusOK, &b)
}

// Network returns the counters of box id's network (it does not wake a
// sleeping box: one that is down reports Running false).
func (c *Client) Network(ctx context.Context, id string) (api.NetworkStats, error) {
	var st api.NetworkStats
	return st, c.doJSON(ctx, "GET", boxPath(id)+"/network", nil, http.StatusOK, &st)
}

// Terminate destroys box id.
func (c *Client) Terminate(ctx context.Context, id string) (api.TerminateResponse, error) {
	var res api.TerminateResponse
	return res, c.doJSON(ctx, "DELETE", boxPath(id), nil, http.StatusOK, &res)
}

// Checkpoints returns box id's checkpoint chain, newest first.
func (c *Client) Checkpoints(ctx context.Context, id string) ([]api.Checkpoint, error) {
	var l api.CheckpointList
	return l.Checkpoints, c.doJSON(ctx, "GET", boxPath(id, "checkpoints"), nil, http.StatusOK, &l)
}

// Checkpoint takes a live checkpoint of running box id.
func (c *Client) Checkpoint(ctx context.Context, id string) (api.Checkpoint, error) {
	var ck api.Checkpoint
	return ck, c.doJSON(ctx, "POST", boxPath(id, "checkpoint"), api.Empty{}, http.StatusCreated, &ck)
}

// Fork starts a new box from box id.
func (c *Client) Fork(ctx context.Context, id string) (api.ForkResponse, error) {
	return c.ForkN(ctx, id, 1)
}

// ForkN starts count new boxes from one checkpoint of box id, all or
// none.
func (c *Client) ForkN(ctx context.Context, id string, count int) (api.ForkResponse, error) {
	var res api.ForkResponse
	return res, c.doJSON(ctx, "POST", boxPath(id, "fork"), api.ForkRequest{Count: count}, http.StatusCreated, &res)
}

// Extend sets box id's expiry to ttl (whole seconds) from now.
func (c *Client) Extend(ctx context.Context, id string, ttl time.Duration) (api.Box, error) {
	var b api.Box
	return b, c.doJSON(ctx, "POST", boxPath(id, "extend"), api.ExtendRequest{TTLSeconds: int64(ttl / time.Second)}, http.StatusOK, &b)
}

func (c *Client) boxCall(ctx context.Context, id, call string) (api.Box, error) {
	var b api.Box
	return b, c.doJSON(ctx, "POST", boxPath(id, call), api.Empty{}, http.StatusOK, &b)
}

// Pause checkpoints box id and powers it down until a resume.
func (c *Client) Pause(ctx context.Context, id string) (api.Box, error) {
	return c.boxCall(ctx, id, "pause")
}

// Sleep checkpoints box id and powers it down until it is used.
func (c *Client) Sleep(ctx context.Context, id string) (api.Box, error) {
	return c.boxCall(ctx, id, "sleep")
}

// Resume restores a paused or sleeping box.
func (c *Client) Resume(ctx context.Context, id string) (api.Box, error) {
	return c.boxCall(ctx, id, "resume")
}

// Connect checks box id's placement and resumes it if it is down.
func (c *Client) Connect(ctx context.Context, id string) (api.Box, error) {
	return c.boxCall(ctx, id, "connect")
}

// Upgrade moves box id onto the current guest agent (see
// api.UpgradeResponse).
func (c *Client) Upgrade(ctx context.Context, id string) (api.UpgradeResponse, error) {
	var res api.UpgradeResponse
	return res, c.doJSON(ctx, "POST", boxPath(id, "upgrade"), api.Empty{}, http.StatusOK, &res)
}

// Expose forwards a host TCP port to a guest port of box id.
func (c *Client) Expose(ctx context.Context, id string, req api.ExposeRequest) (api.Port, error) {
	var p api.Port
	return p, c.doJSON(ctx, "POST", boxPath(id, "ports"), req, http.StatusCreated, &p)
}

// Unexpose removes box id's forward of hostPort.
func (c *Client) Unexpose(ctx context.Context, id string, hostPort int) error {
	return c.doJSON(ctx, "DELETE", boxPath(id, "ports", strconv.Itoa(hostPort)), nil, http.StatusNoContent, nil)
}

// maxEventLine bounds one line of an exec stream.
const maxEventLine = 4 << 20

// Exec runs req in box id, writing the process's output to stdout and
// stderr (nil discards) as it arrives, and returns how the process ended.
// A sleeping box is woken first.
func (c *Client) Exec(ctx context.Context, id string, req api.ExecRequest, stdout, stderr io.Writer) (api.ExecResult, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return api.ExecResult{}, err
	}
	resp, err := c.send(ctx, "POST", boxPath(id, "exec"), bytes.NewReader(body), "application/json", http.StatusOK)
	if err != nil {
		return api.ExecResult{}, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), maxEventLine)
	for sc.Scan() {
		var ev api.ExecEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return api.ExecResult{}, fmt.Errorf("exec: bad event: %w", err)
		}
		switch {
		case ev.Exit != nil:
			return *ev.Exit, nil
		case ev.Error != nil:
			return api.ExecResult{}, &Error{Status: ev.Error.Status, Code: ev.Error.Code, Message: ev.Error.Error}
		}
		for _, o := range []struct {
			w io.Writer
			p []byte
		}{{stdout, ev.Stdout}, {stderr, ev.Stderr}} {
			if o.w != nil && len(o.p) > 0 {
				if _, err := o.w.Write(o.p); err != nil {
					return api.ExecResult{}, fmt.Errorf("exec: %w", err)
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return api.ExecResult{}, fmt.Errorf("exec: %w", err)
	}
	return api.ExecResult{}, fmt.Errorf("exec: %w: the stream ended without an exit", io.ErrUnexpectedEOF)
}

// ReadFile copies the guest file at path of box id to w.
func (c *Client) ReadFile(ctx context.Context, id, path string, w io.Writer) (int64, error) {
	resp, err := c.send(ctx, "GET", boxPath(id, "files")+"?path="+url.QueryEscape(path), nil, "", http.StatusOK)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("read %s: %w", path, err)
	}
	return n, nil
}

// WriteOptions tune WriteFile.
type WriteOptions struct {
	Mode       uint32 // permission bits of a created file; 0 means 0644
	Append     bool
	CreateDirs bool
}

// WriteFile writes r to the guest file at path of box id.
func (c *Client) WriteFile(ctx context.Context, id, path string, r io.Reader, opts WriteOptions) (int64, error) {
	q := url.Values{"path": {path}}
	if opts.Mode != 0 {
		q.Set("mode", strconv.FormatUint(uint64(opts.Mode), 8))
	}
	if opts.Append {
		q.Set("append", "true")
	}
	if opts.CreateDirs {
		q.Set("create_dirs", "true")
	}
	resp, err := c.send(ctx, "PUT", boxPath(id, "files")+"?"+q.Encode(), r, "application/octet-stream", http.StatusOK)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var res api.WriteFileResponse
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		return 0, fmt.Errorf("write %s: %w", path, err)
	}
	return res.Written, nil
}

// doJSON sends in (if not nil) as JSON and decodes the answer into out
// (if not nil).
func (c *Client) doJSON(ctx context.Context, method, path string, in any, want int, out any) error {
	var body io.Reader
	ctype := ""
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body, ctype = bytes.NewReader(data), "application/json"
	}
	resp, err := c.send(ctx, method, path, body, ctype, want)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// send makes a request and returns the answer if its status is want;
// otherwise an *Error (closing the body).
func (c *Client) send(ctx context.Context, method, path string, body io.Reader, ctype string, want int) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("sailboxd %s %s: %w", method, path, err)
	}
	if resp.StatusCode == want {
		return resp, nil
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var eb api.ErrorBody
	if json.Unmarshal(data, &eb) == nil && eb.Error != "" {
		return nil, &Error{Status: resp.StatusCode, Code: eb.Code, Message: eb.Error}
	}
	return nil, &Error{Status: resp.StatusCode, Code: api.CodeInternal, Message: fmt.Sprintf("%s %s: %s", method, path, bytes.TrimSpace(data))}
}
