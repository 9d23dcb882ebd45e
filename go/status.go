package autostandby

import (
	"encoding/json"
	"net/netip"
	"time"
)

// Status is an instance's auto-standby status. The strings are hypeman's.
type Status string

// Status values.
const (
	StatusUnsupported      Status = "unsupported"
	StatusDisabled         Status = "disabled"
	StatusIneligible       Status = "ineligible"
	StatusActive           Status = "active"
	StatusIdleCountdown    Status = "idle_countdown"
	StatusReadyForStandby  Status = "ready_for_standby"
	StatusStandbyRequested Status = "standby_requested"
	StatusError            Status = "error"
)

// Reason says why an instance has its status: hypeman's strings, then three of ours.
type Reason string

// Reason values.
const (
	ReasonUnsupportedPlatform      Reason = "unsupported_platform"
	ReasonPolicyMissing            Reason = "policy_missing"
	ReasonPolicyDisabled           Reason = "policy_disabled"
	ReasonInstanceNotRunning       Reason = "instance_not_running"
	ReasonNetworkDisabled          Reason = "network_disabled"
	ReasonMissingIP                Reason = "missing_ip"
	ReasonHasVGPU                  Reason = "has_vgpu"
	ReasonActiveInboundConnections Reason = "active_inbound_connections"
	ReasonIdleTimeoutNotElapsed    Reason = "idle_timeout_not_elapsed"
	ReasonObserverError            Reason = "observer_error"
	ReasonReadyForStandby          Reason = "ready_for_standby"
	// ReasonStandbyHeld: a hold keeps the instance awake until HoldUntil.
	ReasonStandbyHeld Reason = "standby_held"
	// ReasonMinUptimeNotElapsed: started or restored too recently for standby.
	ReasonMinUptimeNotElapsed Reason = "min_uptime_not_elapsed"
	// ReasonResyncPending: the instance's conntrack flows are not known; no standby until
	// a resync ran. With status active, right after registration (or a new address) in
	// kernel mode, before the library's first dump of its addresses; with status
	// idle_countdown, after lost events.
	ReasonResyncPending Reason = "resync_pending"
	// ReasonConfirmFailed: the confirmation before a standby failed; the countdown
	// restarted.
	ReasonConfirmFailed Reason = "confirm_failed"
	// ReasonConfirmPending: the countdown ran out and the confirmation that the
	// instance is idle has not answered yet (or its flows were never confirmed since it
	// was registered with a persisted countdown); no standby until it does.
	ReasonConfirmPending Reason = "confirm_pending"
	// ReasonConntrackEventsOff: net.netfilter.nf_conntrack_events is 0 in the observed
	// namespace, so new connections go unseen; no standby until events flow again.
	ReasonConntrackEventsOff Reason = "conntrack_events_off"
	// ReasonRestoreFailed: the instance is in Standby and restoring it on inbound
	// traffic failed; the next connection after a backoff tries again.
	ReasonRestoreFailed Reason = "restore_failed"
	// ReasonInvalidConfig: the policy or an address is invalid (an unparsable IP, a
	// loopback, multicast, broadcast or unspecified address, a negative idle_timeout);
	// the instance is not registered with the library. Go's own: never in the library's
	// numbering, so not in KnownReasons.
	ReasonInvalidConfig Reason = "invalid_config"
)

// KnownStatuses lists every Status value, indexed by the library's number for it.
var KnownStatuses = []Status{StatusUnsupported, StatusDisabled, StatusIneligible,
	StatusActive, StatusIdleCountdown, StatusReadyForStandby, StatusStandbyRequested,
	StatusError}

// KnownReasons lists every Reason value, indexed by the library's number for it.
var KnownReasons = []Reason{ReasonUnsupportedPlatform, ReasonPolicyMissing,
	ReasonPolicyDisabled, ReasonInstanceNotRunning, ReasonNetworkDisabled, ReasonMissingIP,
	ReasonHasVGPU, ReasonActiveInboundConnections, ReasonIdleTimeoutNotElapsed,
	ReasonObserverError, ReasonReadyForStandby, ReasonStandbyHeld,
	ReasonMinUptimeNotElapsed, ReasonResyncPending, ReasonConfirmFailed,
	ReasonConfirmPending, ReasonConntrackEventsOff, ReasonRestoreFailed}

// upstreamReason maps the reasons hypeman's API enum lacks to its nearest one
// (ControllerOptions.UpstreamReasons).
func upstreamReason(r Reason) Reason {
	switch r {
	case ReasonStandbyHeld, ReasonMinUptimeNotElapsed, ReasonConfirmPending:
		return ReasonIdleTimeoutNotElapsed
	case ReasonResyncPending, ReasonConfirmFailed, ReasonConntrackEventsOff, ReasonRestoreFailed, ReasonInvalidConfig:
		return ReasonObserverError
	}
	return r
}

// Tracking modes reported in StatusSnapshot.TrackingMode.
const (
	// TrackingModeConntrack: conntrack events (hypeman's string, which dashboards key
	// on; the library observes IPv6 and UDP too).
	TrackingModeConntrack = "conntrack_events_v4_tcp"
	// TrackingModeManual: flow events are supplied by the host (tests, simulations).
	TrackingModeManual = "manual"
)

// StatusSnapshot is a point-in-time view of one instance's auto-standby state, with
// the fields (and JSON names) of hypeman's API, plus the flows keeping it awake.
type StatusSnapshot struct {
	// Supported is false where the library is not built in (nil controller).
	Supported bool `json:"supported"`
	// Configured: the instance has a policy.
	Configured bool `json:"configured"`
	// Enabled: the policy is enabled.
	Enabled bool `json:"enabled"`
	// Eligible: the instance passes every eligibility check.
	Eligible bool `json:"eligible"`
	// Status and Reason: the first matching rule of hypeman's decision order.
	Status Status `json:"status"`
	Reason Reason `json:"reason"`
	// ActiveInboundCount is the number of qualifying inbound flows now live.
	ActiveInboundCount int `json:"active_inbound_connections"`
	// IdleTimeout is the policy's timeout in canonical form ("5m0s").
	IdleTimeout string `json:"idle_timeout,omitempty"`
	// IdleSince is when the current idle period began.
	IdleSince *time.Time `json:"idle_since,omitempty"`
	// LastInboundActivityAt is when inbound activity was last seen.
	LastInboundActivityAt *time.Time `json:"last_inbound_activity_at,omitempty"`
	// NextStandbyAt is when standby is due (the later of the countdown and a hold).
	NextStandbyAt *time.Time `json:"next_standby_at,omitempty"`
	// HoldUntil is the hold's deadline, only while it is in the future.
	HoldUntil *time.Time `json:"hold_until,omitempty"`
	// CountdownRemaining is max(0, NextStandbyAt - now); JSON renders it as "4m0s".
	CountdownRemaining *time.Duration `json:"-"`
	// TrackingMode says how flows are observed.
	TrackingMode string `json:"tracking_mode"`
	// KeptAwakeBy lists the flows that keep the instance active (empty otherwise).
	KeptAwakeBy []FlowInfo `json:"kept_awake_by,omitempty"`
	// WakeRequestedBy lists, for an instance in Standby, the connections still tracked
	// that asked for its restore (counted under its policy, from a client allowed by
	// wake_source_cidrs).
	WakeRequestedBy []FlowInfo `json:"wake_requested_by,omitempty"`
}

// MarshalJSON renders CountdownRemaining as a Go duration string ("4m0s"), as hypeman's
// API does.
func (s StatusSnapshot) MarshalJSON() ([]byte, error) {
	type plain StatusSnapshot
	out := struct {
		plain
		CountdownRemaining *string `json:"countdown_remaining,omitempty"`
	}{plain: plain(s)}
	if s.CountdownRemaining != nil {
		text := s.CountdownRemaining.String()
		out.CountdownRemaining = &text
	}
	return json.Marshal(out)
}

// FlowInfo describes one conntrack flow keeping an instance awake.
type FlowInfo struct {
	// Protocol is "tcp", "udp" or the IP protocol number.
	Protocol string `json:"protocol"`
	// Client is the original source (the peer that opened the flow).
	Client netip.AddrPort `json:"client"`
	// Destination is the original destination (the guest, or a host address under DNAT).
	Destination netip.AddrPort `json:"destination"`
	// ReplySource is the reply tuple's source (the guest under DNAT).
	ReplySource netip.AddrPort `json:"reply_source"`
	// TCPState is conntrack's name of the TCP state, empty when unknown or not TCP.
	TCPState string `json:"tcp_state,omitempty"`
	// FirstSeen is when the library first saw the flow.
	FirstSeen time.Time `json:"first_seen"`
	// Age is how long the flow has been seen.
	Age time.Duration `json:"age"`
}
