package apiserver_test

import (
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/sailbox-dev/sailbox/api"
	"github.com/sailbox-dev/sailbox/api/lifecycle"
	"github.com/sailbox-dev/sailbox/internal/apiserver"
)

type openAPIDoc struct {
	Paths      map[string]map[string]any `yaml:"paths"`
	Components struct {
		Schemas map[string]struct {
			Properties map[string]any `yaml:"properties"`
			Required   []string       `yaml:"required"`
			Enum       []string       `yaml:"enum"`
		} `yaml:"schemas"`
		Parameters    map[string]any `yaml:"parameters"`
		Responses     map[string]any `yaml:"responses"`
		RequestBodies map[string]any `yaml:"requestBodies"`
	} `yaml:"components"`
}

func loadOpenAPI(t *testing.T) (openAPIDoc, any) {
	t.Helper()
	var doc openAPIDoc
	if err := yaml.Unmarshal(api.OpenAPI, &doc); err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	var tree any
	yaml.Unmarshal(api.OpenAPI, &tree)
	return doc, tree
}

// documented returns "METHOD /path" for every operation in doc, with
// ServeMux's {name...} wildcards written as OpenAPI's {name}.
func documented(doc openAPIDoc) []string {
	methods := []string{"get", "put", "post", "delete", "patch", "head", "options"}
	var out []string
	for p, item := range doc.Paths {
		for m := range item {
			if slices.Contains(methods, m) {
				out = append(out, strings.ToUpper(m)+" "+p)
			}
		}
	}
	sort.Strings(out)
	return out
}

func served(routes []apiserver.Route) []string {
	var out []string
	for _, r := range routes {
		out = append(out, r.Method+" "+strings.ReplaceAll(r.Pattern, "...}", "}"))
	}
	sort.Strings(out)
	return out
}

// The document and the server list the same endpoints.
func TestOpenAPIRoutes(t *testing.T) {
	doc, _ := loadOpenAPI(t)
	srv := apiserver.New(apiserver.Config{})
	if diff := symmetricDiff(documented(doc), served(srv.Routes())); diff != "" {
		t.Errorf("openapi.yaml and the server's routes differ:\n%s", diff)
	}
	// The comparison catches a route on one side only.
	extra := append(srv.Routes(), apiserver.Route{Method: "POST", Pattern: "/v1/boxes/{id}/explode"})
	if symmetricDiff(documented(doc), served(extra)) == "" {
		t.Error("an undocumented route went unnoticed")
	}
}

func symmetricDiff(doc, srv []string) string {
	var b strings.Builder
	for _, r := range srv {
		if !slices.Contains(doc, r) {
			fmt.Fprintf(&b, "  served, not documented: %s\n", r)
		}
	}
	for _, r := range doc {
		if !slices.Contains(srv, r) {
			fmt.Fprintf(&b, "  documented, not served: %s\n", r)
		}
	}
	return b.String()
}

// Every $ref points at something the document defines.
func TestOpenAPIRefs(t *testing.T) {
	doc, tree := loadOpenAPI(t)
	var refs []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok && k == "$ref" {
					refs = append(refs, s)
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(tree)
	if len(refs) == 0 {
		t.Fatal("no $ref found")
	}
	for _, ref := range refs {
		kind, name, ok := strings.Cut(strings.TrimPrefix(ref, "#/components/"), "/")
		var found bool
		switch kind {
		case "schemas":
			_, found = doc.Components.Schemas[name]
		case "parameters":
			_, found = doc.Components.Parameters[name]
		case "responses":
			_, found = doc.Components.Responses[name]
		case "requestBodies":
			_, found = doc.Components.RequestBodies[name]
		}
		if !ok || !found {
			t.Errorf("dangling $ref %q", ref)
		}
	}
}

// The schemas name the fields the Go types encode, and the state and
// error-code enums match the code.
func TestOpenAPISchemas(t *testing.T) {
	doc, _ := loadOpenAPI(t)
	types := map[string]any{
		"Box": api.Box{}, "Port": api.Port{}, "Checkpoint": api.Checkpoint{},
		"CreateRequest": api.CreateRequest{}, "Empty": api.Empty{}, "BoxList": api.BoxList{},
		"CheckpointList": api.CheckpointList{}, "ForkResponse": api.ForkResponse{},
		"UpgradeResponse": api.UpgradeResponse{}, "TerminateResponse": api.TerminateResponse{},
		"ExposeRequest": api.ExposeRequest{}, "ExecRequest": api.ExecRequest{}, "ExecEvent": api.ExecEvent{},
		"ExecResult": api.ExecResult{}, "WriteFileResponse": api.WriteFileResponse{}, "ErrorBody": api.ErrorBody{},
		"NetworkPolicy": api.NetworkPolicy{}, "NetworkStats": api.NetworkStats{},
		"NetworkDeviceStats": api.NetworkDeviceStats{},
		"ForkRequest":        api.ForkRequest{}, "ExtendRequest": api.ExtendRequest{},
	}
	for name, v := range types {
		s, ok := doc.Components.Schemas[name]
		if !ok {
			t.Errorf("schema %s missing", name)
			continue
		}
		var fields, props []string
		rt := reflect.TypeOf(v)
		for i := range rt.NumField() {
			tag, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
			if tag != "" && tag != "-" {
				fields = append(fields, tag)
			}
		}
		for p := range s.Properties {
			props = append(props, p)
		}
		sort.Strings(fields)
		sort.Strings(props)
		if !slices.Equal(fields, props) {
			t.Errorf("schema %s has properties %v; the Go type encodes %v", name, props, fields)
		}
		for _, r := range s.Required {
			if !slices.Contains(fields, r) {
				t.Errorf("schema %s requires unknown %q", name, r)
			}
		}
	}
	for name := range doc.Components.Schemas {
		if _, ok := types[name]; !ok && name != "State" {
			t.Errorf("schema %s has no Go type in this test", name)
		}
	}
	var states []string
	for _, s := range lifecycle.States {
		states = append(states, string(s))
	}
	if got := doc.Components.Schemas["State"].Enum; !slices.Equal(got, states) {
		t.Errorf("State enum %v, lifecycle has %v", got, states)
	}
	codes := []string{api.CodeBadRequest, api.CodeNotFound, api.CodeInvalidTransition, api.CodeConflict, api.CodeWrongHost,
		api.CodeCapacity, api.CodeTooLarge, api.CodeUnsupported, api.CodeUnavailable, api.CodeInternal}
	var got []string
	if p, ok := doc.Components.Schemas["ErrorBody"].Properties["code"].(map[string]any); ok {
		for _, c := range p["enum"].([]any) {
			got = append(got, c.(string))
		}
	}
	if !slices.Equal(got, codes) {
		t.Errorf("ErrorBody code enum %v, want %v", got, codes)
	}
}
