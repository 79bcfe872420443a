package devices

import (
	"errors"
	"testing"
)

func TestDecodeState(t *testing.T) {
	type state struct {
		Version uint32
		N       int
	}
	var s state
	if err := DecodeState("test", []byte(` {"Version":1,"N":2} `), &s); err != nil || s != (state{1, 2}) {
		t.Fatalf("decode: %+v, %v", s, err)
	}
	for _, bad := range []string{``, `null x`, `{"Version":1} {}`, `{"Version":1,"M":3}`, `{"Version":-1}`, `[1]`} {
		if err := DecodeState("test", []byte(bad), &s); !errors.Is(err, ErrInvalidState) {
			t.Errorf("decode %q: %v, want ErrInvalidState", bad, err)
		}
	}
	if err := CheckStateVersion("test", 2, 1); !errors.Is(err, ErrInvalidState) {
		t.Errorf("version 2 of 1: %v", err)
	}
}
