package autostandby

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestStatusSnapshotJSONMatchesHypemansAPI(t *testing.T) {
	next := time.Date(2026, 4, 5, 11, 5, 0, 0, time.UTC)
	remaining := 4 * time.Minute
	out, err := json.Marshal(StatusSnapshot{
		Supported: true, Configured: true, Enabled: true, Eligible: true,
		Status: StatusIdleCountdown, Reason: ReasonIdleTimeoutNotElapsed,
		IdleTimeout: "5m0s", NextStandbyAt: &next, CountdownRemaining: &remaining,
		TrackingMode: TrackingModeConntrack,
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"supported":true,"configured":true,"enabled":true,"eligible":true,` +
		`"status":"idle_countdown","reason":"idle_timeout_not_elapsed","active_inbound_connections":0,` +
		`"idle_timeout":"5m0s","next_standby_at":"2026-04-05T11:05:00Z","tracking_mode":"conntrack_events_v4_tcp",` +
		`"countdown_remaining":"4m0s"}`
	if string(out) != want {
		t.Fatalf("got  %s\nwant %s", out, want)
	}
	// Required fields stay present at their zero values.
	out, _ = json.Marshal(StatusSnapshot{Status: StatusUnsupported, Reason: ReasonUnsupportedPlatform})
	want = `{"supported":false,"configured":false,"enabled":false,"eligible":false,"status":"unsupported",` +
		`"reason":"unsupported_platform","active_inbound_connections":0,"tracking_mode":""}`
	if string(out) != want {
		t.Fatalf("got  %s\nwant %s", out, want)
	}
}

func TestDescribeFollowsHypemansEligibilityOrder(t *testing.T) {
	c := newController(newFakeStore(), newFakeEngine(), TrackingModeConntrack, ControllerOptions{})
	base := running("a", "10.0.0.2")
	cases := []struct {
		name   string
		mutate func(*Instance)
		status Status
		reason Reason
	}{
		{"no policy", func(i *Instance) { i.AutoStandby = nil; i.State = "Stopped" }, StatusDisabled, ReasonPolicyMissing},
		{"disabled", func(i *Instance) { i.AutoStandby.Enabled = false; i.NetworkEnabled = false }, StatusDisabled, ReasonPolicyDisabled},
		{"not running", func(i *Instance) { i.State = "Initializing"; i.IP = "" }, StatusIneligible, ReasonInstanceNotRunning},
		{"no network", func(i *Instance) { i.NetworkEnabled = false; i.HasVGPU = true }, StatusIneligible, ReasonNetworkDisabled},
		{"no ip", func(i *Instance) { i.IP = ""; i.HasVGPU = true }, StatusIneligible, ReasonMissingIP},
		{"vgpu", func(i *Instance) { i.HasVGPU = true }, StatusIneligible, ReasonHasVGPU},
		{"untracked eligible", func(*Instance) {}, StatusIdleCountdown, ReasonIdleTimeoutNotElapsed},
	}
	for _, tc := range cases {
		inst := base
		p := *base.AutoStandby
		inst.AutoStandby = &p
		tc.mutate(&inst)
		snap := c.Describe(inst)
		if snap.Status != tc.status || snap.Reason != tc.reason || !snap.Supported {
			t.Errorf("%s: %s/%s, want %s/%s", tc.name, snap.Status, snap.Reason, tc.status, tc.reason)
		}
		if snap.Eligible != (tc.status == StatusIdleCountdown) {
			t.Errorf("%s: eligible=%v", tc.name, snap.Eligible)
		}
	}
}

// The OpenAPI patch in README.md turns hypeman's reason enum into exactly the reasons
// this package reports: the library's, in its order, then Go's own invalid_config.
func TestReadmeOpenAPIPatchListsEveryReason(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	enums := map[byte][]string{}
	for _, line := range strings.Split(string(readme), "\n") {
		trimmed := strings.TrimSpace(line)
		if len(trimmed) == 0 || (trimmed[0] != '-' && trimmed[0] != '+') {
			continue
		}
		rest := strings.TrimSpace(trimmed[1:])
		if !strings.HasPrefix(rest, "enum: [unsupported_platform") {
			continue
		}
		list := strings.TrimSuffix(strings.TrimPrefix(rest, "enum: ["), "]")
		enums[trimmed[0]] = strings.Split(list, ", ")
	}
	upstream := []string{"unsupported_platform", "policy_missing", "policy_disabled",
		"instance_not_running", "network_disabled", "missing_ip", "has_vgpu",
		"active_inbound_connections", "idle_timeout_not_elapsed", "observer_error", "ready_for_standby"}
	if !slices.Equal(enums['-'], upstream) {
		t.Fatalf("the patch's removed line is not hypeman's enum: %v", enums['-'])
	}
	var ours []string
	for _, r := range append(slices.Clone(KnownReasons), ReasonInvalidConfig) {
		ours = append(ours, string(r))
	}
	if !slices.Equal(enums['+'], ours) {
		t.Fatalf("the patch's added line %v is not this package's reasons %v", enums['+'], ours)
	}
	for _, r := range append(slices.Clone(KnownReasons), ReasonInvalidConfig) {
		if mapped := upstreamReason(r); !slices.Contains(upstream, string(mapped)) {
			t.Errorf("UpstreamReasons maps %s to %s, not one of hypeman's", r, mapped)
		}
	}
}
