//go:build !(cgo && linux && (amd64 || autostandby_shared || autostandby_system))

package autostandby

import (
	"errors"
	"testing"
)

func TestNewControllerUnsupportedWithoutLibrary(t *testing.T) {
	c, err := New(&nopStore{}, NewConntrackSource(), ControllerOptions{})
	if c == nil || !errors.Is(err, ErrUnsupported) {
		t.Fatalf("got %v, %v; want a degraded controller and ErrUnsupported", c, err)
	}
	if err.Error() != "conntrack-backed auto-standby is only supported on Linux" {
		t.Fatalf("message %q", err)
	}
	inst := Instance{ID: "a", State: StateRunning, NetworkEnabled: true, IP: "10.0.0.2",
		AutoStandby: &Policy{Enabled: true, IdleTimeout: "1m"}}
	if st := NewController(&nopStore{}, NewConntrackSource(), ControllerOptions{}).Describe(inst); st.Supported ||
		st.Status != StatusUnsupported || st.Reason != ReasonUnsupportedPlatform {
		t.Fatalf("Describe without the library: %+v", st)
	}
}
