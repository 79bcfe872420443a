package devices

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// ErrInvalidState reports a saved device state that Restore refuses: of an
// unknown version, inconsistent, or not fitting the restored device's
// dependencies.
var ErrInvalidState = errors.New("invalid device state")

// CheckStateVersion returns an error wrapping ErrInvalidState unless a
// state of device (for the message) has version want.
func CheckStateVersion(device string, got, want uint32) error {
	if got != want {
		return fmt.Errorf("%s: state version %d, want %d: %w", device, got, want, ErrInvalidState)
	}
	return nil
}

// DecodeState decodes the JSON encoding of one device's state into v,
// refusing fields v does not have (a state written by a newer version)
// and anything after the value. Errors wrap ErrInvalidState.
func DecodeState(device string, data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: decode state: %w: %w", device, ErrInvalidState, err)
	}
	if dec.More() {
		return fmt.Errorf("%s: decode state: data after the state: %w", device, ErrInvalidState)
	}
	return nil
}
