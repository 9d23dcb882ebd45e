package autostandby

import (
	"context"
	"errors"
	"testing"
)

func TestNilControllerReportsUnsupported(t *testing.T) {
	var c *Controller
	inst := Instance{ID: "a", State: StateRunning, NetworkEnabled: true, IP: "10.0.0.2",
		AutoStandby: &Policy{Enabled: true, IdleTimeout: "5m"}}
	snap := c.Describe(inst)
	if snap.Supported || snap.Status != StatusUnsupported || snap.Reason != ReasonUnsupportedPlatform ||
		!snap.Configured || !snap.Enabled || snap.TrackingMode == "" {
		t.Fatalf("nil controller: %+v", snap)
	}
	held, err := c.HoldStandby(context.Background(), inst)
	if err != nil || held.Status != StatusUnsupported {
		t.Fatalf("hold on nil controller: %+v, %v", held, err)
	}
	if err := c.Run(context.Background()); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("Run on nil controller: %v", err)
	}
	if c.Manual() != nil {
		t.Fatal("nil controller has a manual input")
	}
	c.Close()
}
