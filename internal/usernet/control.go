package usernet

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sailbox-dev/sailbox/api/netapi"
)

// dialTimeoutGuest bounds a control dial's wait for the guest's answer.
const dialTimeoutGuest = 10 * time.Second

// ControlHandler serves the control API of netapi on n: GET /v1/stats,
// POST /v1/dial?port=N.
func (n *Network) ControlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+netapi.StatsPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(n.Stats())
	})
	mux.HandleFunc("POST "+netapi.DialPath, n.serveDial)
	return mux
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(netapi.ErrorBody{Error: msg, Code: code})
}

// serveDial connects to the guest's port, answers 101 and splices the
// control connection to the guest's: no byte is read from the client
// before the guest's connection exists.
func (n *Network) serveDial(w http.ResponseWriter, r *http.Request) {
	port, err := strconv.ParseUint(r.URL.Query().Get("port"), 10, 16)
	if err != nil || port == 0 {
		writeError(w, http.StatusBadRequest, netapi.CodeBadRequest, "port: want 1 to 65535")
		return
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), netapi.DialProtocol) {
		writeError(w, http.StatusBadRequest, netapi.CodeBadRequest, `a dial needs "Connection: Upgrade" and "Upgrade: tcp"`)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		writeError(w, http.StatusInternalServerError, netapi.CodeBadRequest, "the connection cannot be taken over")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), dialTimeoutGuest)
	defer cancel()
	guest, err := n.DialGuest(ctx, uint16(port))
	if err != nil {
		switch {
		case errors.Is(err, netapi.ErrRefused):
			writeError(w, http.StatusBadGateway, netapi.CodeRefused, err.Error())
		case errors.Is(err, netapi.ErrUnreachable), errors.Is(err, context.DeadlineExceeded):
			writeError(w, http.StatusGatewayTimeout, netapi.CodeUnreachable, err.Error())
		default:
			writeError(w, http.StatusBadGateway, netapi.CodeUnreachable, err.Error())
		}
		return
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		guest.Close()
		return
	}
	client, ok := conn.(halfCloser)
	if !ok {
		guest.Close()
		conn.Close()
		return
	}
	conn.SetDeadline(time.Time{})
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + netapi.DialProtocol + "\r\n\r\n")
	if err := brw.Flush(); err != nil {
		guest.Close()
		conn.Close()
		return
	}
	splice(&bufferedConn{halfCloser: client, r: brw.Reader}, guest)
}

// bufferedConn reads what the HTTP server had buffered before the
// hijack, then the connection.
type bufferedConn struct {
	halfCloser
	r *bufio.Reader
}

func (c *bufferedConn) Read(b []byte) (int, error) {
	if c.r != nil {
		if c.r.Buffered() > 0 {
			return c.r.Read(b)
		}
		c.r = nil
	}
	return c.halfCloser.Read(b)
}

var _ halfCloser = (*net.UnixConn)(nil)
