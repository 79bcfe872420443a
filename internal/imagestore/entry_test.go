package imagestore

import (
	"errors"
	"net/http"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// ImportPath reads the path it is given; ImportRemote never looks at the
// file system, even for a REF that names an existing layout.
func TestImportPathAndRemote(t *testing.T) {
	calls := 0
	s := newStore(t, Options{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		calls++
		return nil, errors.New("no network in this test")
	})})
	dir := layoutOf(t, map[string]v1.Image{testTag: richImage(t)})
	img, err := s.ImportPath(t.Context(), dir, ":"+testTag)
	if err != nil {
		t.Fatal(err)
	}
	if img.Config.WorkingDir == "" && len(img.Config.Env) == 0 {
		t.Errorf("image config not kept: %+v", img.Config)
	}
	t.Chdir(filepath.Dir(dir))
	for _, ref := range []string{filepath.Base(dir), dir, "./" + filepath.Base(dir), "../" + filepath.Base(filepath.Dir(dir)) + "/" + filepath.Base(dir)} {
		if _, err := s.ImportRemote(t.Context(), ref); err == nil {
			t.Errorf("ImportRemote(%q) imported a path", ref)
		}
	}
	if calls == 0 {
		t.Errorf("no registry request for %q, which reads as a registry reference", filepath.Base(dir))
	}
}
