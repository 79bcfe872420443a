package vmmapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/sailbox-dev/sailbox/api"
)

// Client talks to one VMM's control socket.
type Client struct {
	http *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	return &Client{http: api.UnixHTTPClient(path)}
}

// Status returns the VM's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	err := c.do(ctx, http.MethodGet, "/status", http.StatusOK, &s)
	return s, err
}

// Shutdown asks the VMM to stop the VM and exit.
func (c *Client) Shutdown(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/shutdown", http.StatusAccepted, nil)
}

// Pause stops the VM's vCPUs and devices.
func (c *Client) Pause(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/pause", http.StatusNoContent, nil)
}

// Resume lets a paused VM run.
func (c *Client) Resume(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/resume", http.StatusNoContent, nil)
}

// Checkpoint writes checkpoint id of the running VM.
func (c *Client) Checkpoint(ctx context.Context, id string) (CheckpointResult, error) {
	var res CheckpointResult
	err := c.doJSON(ctx, "/checkpoint", CheckpointRequest{ID: id}, &res)
	return res, err
}

// SaveWorkingSet asks a restored VM to record its working set.
func (c *Client) SaveWorkingSet(ctx context.Context) (WorkingSetResult, error) {
	var res WorkingSetResult
	err := c.send(ctx, http.MethodPost, "/working-set", nil, http.StatusOK, &res)
	return res, err
}

// DescribeVCPUs returns where each of the VM's vCPUs is.
func (c *Client) DescribeVCPUs(ctx context.Context) (string, error) {
	var v VCPUs
	err := c.do(ctx, http.MethodGet, "/vcpus", http.StatusOK, &v)
	return v.Description, err
}

func (c *Client) doJSON(ctx context.Context, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	return c.send(ctx, http.MethodPost, path, bytes.NewReader(body), http.StatusOK, out)
}

func (c *Client) do(ctx context.Context, method, path string, want int, out any) error {
	return c.send(ctx, method, path, nil, want, out)
}

func (c *Client) send(ctx context.Context, method, path string, in io.Reader, want int, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://vmm"+path, in)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("vmm api %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("vmm api %s %s: %w", method, path, err)
	}
	if resp.StatusCode != want {
		e := &Error{Op: method + " " + path, Status: resp.StatusCode}
		var eb errorBody
		if json.Unmarshal(body, &eb) == nil && eb.Error != "" {
			e.Message = eb.Error
		} else {
			e.Message = http.StatusText(resp.StatusCode)
		}
		return e
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return fmt.Errorf("vmm api %s %s: decode: %w", method, path, err)
		}
	}
	return nil
}
