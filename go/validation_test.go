package autostandby

import (
	"context"
	"strings"
	"testing"
)

// One validation, the same answer everywhere: what the library refuses, instanceSpec
// refuses, Describe reports as an error (not a countdown) and HoldStandby fails on.
func TestInvalidInstancesAreRefusedEverywhere(t *testing.T) {
	cases := []struct {
		name, ip, timeout, want string
	}{
		{"unparsable IP", "not-an-ip", "1m", "parse instance IP"},
		{"loopback", "127.0.0.1", "1m", "cannot be an instance address"},
		{"IPv6 loopback", "::1", "1m", "cannot be an instance address"},
		{"mapped loopback", "::ffff:127.0.0.1", "1m", "cannot be an instance address"},
		{"broadcast", "255.255.255.255", "1m", "cannot be an instance address"},
		{"multicast", "224.0.0.1", "1m", "cannot be an instance address"},
		{"IPv6 multicast", "ff02::1", "1m", "cannot be an instance address"},
		{"unspecified", "0.0.0.0", "1m", "cannot be an instance address"},
		{"negative timeout", "10.0.0.2", "-5m", "idle_timeout"},
		{"invalid timeout", "10.0.0.2", "soon", "idle_timeout"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			inst := running("a", tc.ip)
			inst.AutoStandby.IdleTimeout = tc.timeout
			if _, _, err := instanceSpec(&inst); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("instanceSpec: %v, want an error containing %q", err, tc.want)
			}
			for _, upstream := range []bool{false, true} {
				c := newController(newFakeStore(), newFakeEngine(), TrackingModeConntrack,
					ControllerOptions{UpstreamReasons: upstream})
				snap := c.Describe(inst)
				want := ReasonInvalidConfig
				if upstream {
					want = ReasonObserverError
				}
				if snap.Status != StatusError || snap.Reason != want || snap.Eligible || snap.CountdownRemaining != nil {
					t.Fatalf("Describe (upstream %v): %s/%s eligible=%v countdown=%v, want error/%s",
						upstream, snap.Status, snap.Reason, snap.Eligible, snap.CountdownRemaining, want)
				}
				if _, err := c.HoldStandby(context.Background(), inst); err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("HoldStandby: %v, want an error containing %q", err, tc.want)
				}
			}
		})
	}
	// A disabled policy or a stopped instance is reported as such first, as before.
	off := running("a", "127.0.0.1")
	off.AutoStandby.Enabled = false
	c := newController(newFakeStore(), newFakeEngine(), TrackingModeConntrack, ControllerOptions{})
	if snap := c.Describe(off); snap.Status != StatusDisabled {
		t.Fatalf("disabled: %s/%s", snap.Status, snap.Reason)
	}
	// Ordinary guest addresses stay valid.
	for _, ip := range []string{"10.0.0.2", "192.168.100.10", "203.0.113.7", "fd00::2", "10.255.255.255"} {
		inst := running("a", ip)
		if _, _, err := instanceSpec(&inst); err != nil {
			t.Fatalf("%s: %v", ip, err)
		}
		if snap := c.Describe(inst); snap.Status != StatusIdleCountdown {
			t.Fatalf("%s: %s/%s", ip, snap.Status, snap.Reason)
		}
	}
}
