package apiserver_test

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/client"
	"github.com/sailbox-dev/sailbox/internal/apiserver/servertest"
)

// The lifecycle policies over the wire: the JSON names other clients
// (the Python one) are written against, the label filter, extend and a
// fork's count.
func TestPoliciesAPI(t *testing.T) {
	env := servertest.Start(t, nil)
	c := client.New(env.Socket)
	ctx := context.Background()

	code, body := raw(t, env, "POST", "/v1/boxes", `{"labels":{"team":"ml","app":"eval"},"idle_timeout_seconds":300,"ttl_seconds":3600}`)
	if code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, body)
	}
	var wire map[string]any
	if err := json.Unmarshal([]byte(body), &wire); err != nil {
		t.Fatal(err)
	}
	if l, _ := wire["labels"].(map[string]any); l["team"] != "ml" || l["app"] != "eval" ||
		wire["idle_timeout_seconds"] != 300.0 || wire["ttl_seconds"] != 3600.0 {
		t.Errorf("create answered %s", body)
	}
	var a api.Box
	json.Unmarshal([]byte(body), &a)
	exp, err := time.Parse(time.RFC3339, wire["expires_at"].(string))
	if err != nil || !exp.Equal(a.Created.Add(time.Hour)) {
		t.Errorf("expires_at %v (%v), created %v", wire["expires_at"], err, a.Created)
	}
	b, err := c.Create(ctx, api.CreateRequest{Labels: map[string]string{"team": "ml"}})
	if err != nil {
		t.Fatal(err)
	}
	code, body = raw(t, env, "GET", "/v1/boxes/"+b.ID, "")
	if code != http.StatusOK || strings.Contains(body, "expires_at") || strings.Contains(body, "ttl_seconds") || strings.Contains(body, "idle_timeout_seconds") {
		t.Errorf("a box without a TTL or idle timeout: %d %s", code, body)
	}
	if _, err := c.Create(ctx, api.CreateRequest{}); err != nil {
		t.Fatal(err)
	}

	list := func(query string) []string {
		t.Helper()
		code, body := raw(t, env, "GET", "/v1/boxes"+query, "")
		if code != http.StatusOK {
			t.Fatalf("list%s: %d %s", query, code, body)
		}
		var l api.BoxList
		json.Unmarshal([]byte(body), &l)
		var out []string
		for _, b := range l.Boxes {
			out = append(out, b.ID)
		}
		slices.Sort(out)
		return out
	}
	both := []string{a.ID, b.ID}
	slices.Sort(both)
	if got := list("?label=team=ml"); !slices.Equal(got, both) {
		t.Errorf("label=team=ml: %v, want %v", got, both)
	}
	if got := list("?label=team=ml&label=app=eval"); !slices.Equal(got, []string{a.ID}) {
		t.Errorf("label=team=ml&label=app=eval: %v", got)
	}
	if got := list("?label=team=ml&max_guest_schema_version=1"); len(got) != 0 {
		t.Errorf("labels with max_guest_schema_version=1: %v", got)
	}
	if got := list(""); len(got) != 3 {
		t.Errorf("no filter: %v", got)
	}
	if got, err := c.List(ctx, client.ListOptions{Labels: map[string]string{"app": "eval", "team": "ml"}}); err != nil || len(got) != 1 || got[0].ID != a.ID {
		t.Errorf("client list by labels: %v, %v", got, err)
	}
	for _, q := range []string{"?label=team", "?label=bad%20key=x", "?label=team=ml&label=team=web"} {
		if code, body := raw(t, env, "GET", "/v1/boxes"+q, ""); code != http.StatusBadRequest {
			t.Errorf("list%s: %d %s", q, code, body)
		}
	}
	for _, req := range []string{`{"labels":{"bad key":"x"}}`, `{"ttl_seconds":-1}`, `{"idle_timeout_seconds":-1}`, `{"labels":{"k":7}}`} {
		if code, body := raw(t, env, "POST", "/v1/boxes", req); code != http.StatusBadRequest {
			t.Errorf("create %s: %d %s", req, code, body)
		}
	}

	code, body = raw(t, env, "POST", "/v1/boxes/"+b.ID+"/extend", `{"ttl_seconds":60}`)
	var x api.Box
	json.Unmarshal([]byte(body), &x)
	if code != http.StatusOK || x.TTLSeconds != 60 || x.ExpiresAt == nil || time.Until(*x.ExpiresAt) > time.Minute {
		t.Errorf("extend: %d %s", code, body)
	}
	if x, err := c.Extend(ctx, b.ID, 2*time.Hour); err != nil || x.TTLSeconds != 7200 {
		t.Errorf("client extend: %+v, %v", x, err)
	}
	for _, req := range []string{``, `{}`, `{"ttl_seconds":0}`, `{"ttl_seconds":"1h"}`, `{"ttl":60}`} {
		if code, body := raw(t, env, "POST", "/v1/boxes/"+b.ID+"/extend", req); code != http.StatusBadRequest {
			t.Errorf("extend %q: %d %s", req, code, body)
		}
	}
	if code, _ := raw(t, env, "POST", "/v1/boxes/sb-none/extend", `{"ttl_seconds":60}`); code != http.StatusNotFound {
		t.Errorf("extend an unknown box: %d", code)
	}

	code, body = raw(t, env, "POST", "/v1/boxes/"+a.ID+"/fork", `{"count":3}`)
	var f api.ForkResponse
	json.Unmarshal([]byte(body), &f)
	if code != http.StatusCreated || len(f.Boxes) != 3 || f.Box.ID != f.Boxes[0].ID || f.Boxes[2].Labels["app"] != "eval" {
		t.Fatalf("fork count 3: %d %s", code, body)
	}
	if !strings.Contains(body, `"boxes":[`) {
		t.Errorf("fork answer without boxes: %s", body)
	}
	for _, req := range []string{`{}`, ``} {
		code, body := raw(t, env, "POST", "/v1/boxes/"+a.ID+"/fork", req)
		var f api.ForkResponse
		json.Unmarshal([]byte(body), &f)
		if code != http.StatusCreated || len(f.Boxes) != 1 || f.Box.ID != f.Boxes[0].ID {
			t.Errorf("fork %q: %d %s", req, code, body)
		}
	}
	if fr, err := c.ForkN(ctx, a.ID, 2); err != nil || len(fr.Boxes) != 2 {
		t.Errorf("client fork of 2: %+v, %v", fr, err)
	}
	for _, req := range []string{`{"count":-1}`, `{"count":65}`, `{"count":"3"}`} {
		if code, body := raw(t, env, "POST", "/v1/boxes/"+a.ID+"/fork", req); code != http.StatusBadRequest {
			t.Errorf("fork %s: %d %s", req, code, body)
		}
	}
}
