package autostandby

import (
	"context"
	"errors"
	"time"

	"github.com/libautostandby/libautostandby/go/internal/binding"
)

// Describe reports the auto-standby status of inst. Eligibility is judged on inst as
// passed (callers read it fresh), then the library supplies the live state, and the
// flows keeping the instance awake.
func (c *Controller) Describe(inst Instance) StatusSnapshot {
	snap, eligible := c.describeBase(&inst)
	if !eligible {
		c.describeRestoreFailure(&snap, &inst)
		c.describeWakeRequests(&snap, &inst)
		if c != nil && c.opts.UpstreamReasons {
			snap.Reason = upstreamReason(snap.Reason)
		}
		return snap
	}
	// With a caller's ConnectionSource the library's clock follows Now.
	c.syncClock(c.now())
	t, ok := c.lookupID(inst.ID)
	if !ok {
		// Not registered yet: while observation fails, say so rather than "counting
		// down" (hypeman reports it for every eligible instance).
		if c.observerDown() {
			snap.Status, snap.Reason = StatusError, ReasonObserverError
		}
		return snap
	}
	st, err := c.eng.Status(t.key)
	if err != nil {
		// A library that cannot answer is not "counting down": report the error.
		snap.Status, snap.Reason = StatusError, ReasonObserverError
		return snap
	}
	c.applyLibraryStatus(&snap, st)
	if snap.ActiveInboundCount > 0 {
		if flows, err := c.eng.Explain(t.key); err == nil {
			snap.KeptAwakeBy = flowInfos(flows)
		}
	}
	if c.opts.UpstreamReasons {
		snap.Reason = upstreamReason(snap.Reason)
	}
	return snap
}

// describeRestoreFailure reports error/restore_failed for an instance in Standby whose
// restore on inbound traffic failed: it is stranded, which "instance_not_running" hides.
func (c *Controller) describeRestoreFailure(snap *StatusSnapshot, inst *Instance) {
	if snap.Reason != ReasonInstanceNotRunning || inst.State != StateStandby {
		return
	}
	t, ok := c.lookupID(inst.ID)
	if !ok {
		return
	}
	st, err := c.eng.Status(t.key)
	if err != nil || reasonFromCode(st.Reason) != ReasonRestoreFailed {
		return
	}
	snap.Status, snap.Reason = StatusError, ReasonRestoreFailed
}

// describeWakeRequests lists the flows that asked for the restore of an instance in
// Standby.
func (c *Controller) describeWakeRequests(snap *StatusSnapshot, inst *Instance) {
	if c == nil || inst.State != StateStandby || inst.AutoStandby == nil || !inst.AutoStandby.WakeOnTraffic {
		return
	}
	t, ok := c.lookupID(inst.ID)
	if !ok {
		return
	}
	if flows, err := c.eng.Explain(t.key); err == nil && len(flows) > 0 {
		snap.WakeRequestedBy = flowInfos(flows)
	}
}

// describeBase fills what the instance alone decides (hypeman's order: platform,
// policy, state, network, address, vGPU) and says whether the instance is eligible.
func (c *Controller) describeBase(inst *Instance) (StatusSnapshot, bool) {
	policy := inst.AutoStandby
	snap := StatusSnapshot{
		Supported:    c != nil,
		Configured:   policy != nil,
		Enabled:      policy != nil && policy.Enabled,
		TrackingMode: TrackingModeConntrack,
	}
	if c == nil || errors.Is(c.unavailable, ErrUnsupported) {
		snap.Supported = false
		snap.Status, snap.Reason = StatusUnsupported, ReasonUnsupportedPlatform
		return snap, false
	}
	snap.TrackingMode = c.trackingMode
	if policy != nil {
		snap.IdleTimeout = policy.IdleTimeout
		if norm, err := NormalizePolicy(policy); err == nil && norm != nil {
			snap.IdleTimeout = norm.IdleTimeout
		}
	}
	switch {
	case policy == nil:
		snap.Status, snap.Reason = StatusDisabled, ReasonPolicyMissing
	case !policy.Enabled:
		snap.Status, snap.Reason = StatusDisabled, ReasonPolicyDisabled
	case inst.State != StateRunning:
		snap.Status, snap.Reason = StatusIneligible, ReasonInstanceNotRunning
	case !inst.NetworkEnabled:
		snap.Status, snap.Reason = StatusIneligible, ReasonNetworkDisabled
	case inst.IP == "":
		snap.Status, snap.Reason = StatusIneligible, ReasonMissingIP
	case inst.HasVGPU:
		snap.Status, snap.Reason = StatusIneligible, ReasonHasVGPU
	case invalidSpec(inst) != nil:
		// HoldStandby and the sync refuse it: do not pretend to count down.
		snap.Status, snap.Reason = StatusError, ReasonInvalidConfig
	default:
		snap.Eligible = true
		// No live state yet: the countdown has not started in the library's view.
		snap.Status, snap.Reason = StatusIdleCountdown, ReasonIdleTimeoutNotElapsed
		return snap, true
	}
	return snap, false
}

// applyLibraryStatus copies the library's live state into snap. When the library's
// copy of the instance is older than the one passed in and calls it ineligible or
// disabled, the fallback status of describeBase stays.
func (c *Controller) applyLibraryStatus(snap *StatusSnapshot, st binding.Status) {
	snap.ActiveInboundCount = int(st.ActiveInbound)
	snap.IdleSince = timePtr(st.IdleSince)
	snap.LastInboundActivityAt = timePtr(st.LastInboundActivityAt)
	snap.NextStandbyAt = timePtr(st.NextStandbyAt)
	snap.HoldUntil = timePtr(st.HoldUntil)
	if st.HasCountdown {
		d := st.CountdownRemaining
		snap.CountdownRemaining = &d
	}
	status := statusFromCode(st.Status)
	switch status {
	case StatusDisabled, StatusIneligible, StatusUnsupported:
		return
	}
	snap.Status, snap.Reason = status, reasonFromCode(st.Reason)
}

// HoldStandby keeps inst out of Standby for one idle timeout from now, replacing any
// earlier hold (last write wins, in memory only). A disabled, unconfigured or
// ineligible instance gets its status back unchanged. While a standby executes it
// fails with ErrStandbyInProgress.
func (c *Controller) HoldStandby(ctx context.Context, inst Instance) (StatusSnapshot, error) {
	if snap, eligible := c.describeBase(&inst); !eligible {
		if snap.Reason == ReasonInvalidConfig {
			return snap, invalidSpec(&inst)
		}
		return c.Describe(inst), nil
	}
	c.syncClock(c.now())
	t, ok := c.lookupID(inst.ID)
	if !ok {
		// Not yet known (the startup resync has not reached it): register it now so
		// the hold is in place when the resync does.
		if err := c.upsert(&inst); err != nil {
			return StatusSnapshot{}, err
		}
		if t, ok = c.lookupID(inst.ID); !ok {
			return c.Describe(inst), nil
		}
	}
	st, err := c.eng.Hold(t.key)
	if err != nil {
		if binding.CodeOf(err) == binding.ErrStandbyInProgress {
			return StatusSnapshot{}, ErrStandbyInProgress
		}
		return StatusSnapshot{}, err
	}
	c.log.InfoContext(ctx, "auto-standby hold placed", "instance_id", inst.ID, "hold_until", timePtr(st.HoldUntil))
	return c.Describe(inst), nil
}

// invalidSpec says why the library would refuse inst (its policy or an address), or nil.
func invalidSpec(inst *Instance) error {
	_, _, err := instanceSpec(inst)
	return err
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	utc := t.UTC()
	return &utc
}

func flowInfos(flows []binding.FlowInfo) []FlowInfo {
	out := make([]FlowInfo, 0, len(flows))
	for _, f := range flows {
		info := FlowInfo{
			Protocol:    protocolName(f.Protocol),
			Client:      f.OrigSrc,
			Destination: f.OrigDst,
			ReplySource: f.ReplySrc,
			FirstSeen:   f.FirstSeen,
			Age:         f.Age,
		}
		if f.HasTCPState {
			info.TCPState = TCPState(f.TCPState).String()
		}
		out = append(out, info)
	}
	return out
}
