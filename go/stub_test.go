//go:build !cgo || !linux

package autostandby

import (
	"errors"
	"testing"
)

func TestNewControllerUnsupportedWithoutLibrary(t *testing.T) {
	c, err := NewController(&nopStore{}, SourceOptions{Mode: SourceManual}, ControllerOptions{})
	if c != nil || !errors.Is(err, ErrUnsupported) {
		t.Fatalf("got %v, %v; want nil, ErrUnsupported", c, err)
	}
	if err.Error() != "conntrack-backed auto-standby is only supported on Linux" {
		t.Fatalf("message %q", err)
	}
}
