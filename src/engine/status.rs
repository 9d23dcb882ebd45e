//! Status snapshots (hypeman's `Describe` order) and explanations.

use super::instance::Phase;
use super::{Engine, KeptAwakeBy, Reason, Status, StatusSnapshot, UnixMillis};

impl Engine {
    /// The status of the instance in `slot`, judged in hypeman's order: eligibility,
    /// standby requested, observer error, flows not read yet, active flows, then the
    /// countdown.
    pub(crate) fn status_of(&self, slot: u32, now: UnixMillis) -> StatusSnapshot {
        let inst = self.inst(slot);
        let policy = inst.spec.policy.as_ref();
        let mut s = StatusSnapshot {
            configured: policy.is_some(),
            enabled: policy.is_some_and(|p| p.enabled),
            eligible: false,
            status: Status::Disabled,
            reason: Reason::PolicyMissing,
            active_inbound: 0,
            idle_timeout_ms: policy.map_or(0, |p| p.idle_timeout_ms),
            idle_since: None,
            last_inbound_activity_at: None,
            next_standby_at: None,
            hold_until: None,
            countdown_remaining_ms: None,
        };
        // A Standby instance whose restore failed is stranded until a retry succeeds:
        // that is an error to show, not the usual `instance_not_running`.
        if inst.wake_failures > 0 && inst.spec.lifecycle == super::Lifecycle::Standby {
            s.status = Status::Error;
            s.reason = Reason::RestoreFailed;
            return s;
        }
        if let Some(r) = inst.ineligible_reason() {
            s.reason = r;
            s.status = match r {
                Reason::PolicyMissing | Reason::PolicyDisabled => Status::Disabled,
                _ => Status::Ineligible,
            };
            return s;
        }
        s.eligible = true;
        s.active_inbound = inst.live;
        s.last_inbound_activity_at = inst.last_inbound;
        // Before its flows were first read, an instance may be serving: it is kept awake
        // and shows no countdown, whatever was persisted.
        let unsynced = inst.unsynced_seq.is_some();
        let confirming = inst.phase == Phase::Confirming;
        if !unsynced {
            s.idle_since = inst.idle_since;
            if matches!(inst.phase, Phase::None | Phase::EmittedCancelled) || confirming {
                s.next_standby_at = inst.due_at();
            }
        }
        s.hold_until = inst.hold_until.filter(|h| *h > now);
        s.countdown_remaining_ms = s.next_standby_at.map(|n| n.saturating_sub(now));
        // Never standby-ish while a counted flow is live, nor before the flows were
        // confirmed: a host acting on `ready_for_standby` or `standby_requested` (or a
        // dashboard reading it) must not see it for an instance that may be serving.
        // A confirmation not yet answered is still a countdown, whether asked ahead of
        // the deadline or not, and so is a due instance whose idleness was never
        // confirmed (registered with a persisted countdown, confirmation on).
        let unconfirmed =
            confirming || (self.config.confirm_before_standby && !inst.confirmed_idle);
        (s.status, s.reason) = if inst.live == 0
            && matches!(
                inst.phase,
                Phase::Queued | Phase::Emitted | Phase::Executing
            ) {
            (Status::StandbyRequested, Reason::ReadyForStandby)
        } else if self.observer_error.is_some() {
            let reason = if self.events_off {
                Reason::ConntrackEventsOff
            } else {
                Reason::ObserverError
            };
            (Status::Error, reason)
        } else if unsynced {
            (Status::Active, Reason::ResyncPending)
        } else if inst.live > 0 {
            (Status::Active, Reason::ActiveInboundConnections)
        } else if inst.lost_seq.is_some() || inst.suspect_until.is_some() {
            (Status::IdleCountdown, Reason::ResyncPending)
        } else {
            match s.next_standby_at {
                Some(n) if n > now => (Status::IdleCountdown, inst.binding_reason()),
                Some(_) if unconfirmed => (Status::IdleCountdown, Reason::ConfirmPending),
                Some(_) => (Status::ReadyForStandby, Reason::ReadyForStandby),
                None => (Status::IdleCountdown, Reason::IdleTimeoutNotElapsed),
            }
        };
        s
    }

    /// Appends the live qualifying flows of `slot`; in Standby, the flows that asked
    /// for its restore.
    pub(crate) fn explain_of(&self, slot: u32, now: UnixMillis, out: &mut Vec<KeptAwakeBy>) {
        let standby = self.inst(slot).spec.lifecycle == super::Lifecycle::Standby;
        for i in self.flows.list(slot) {
            let r = self.flows.rec(i);
            if r.counted() && (!standby || r.asked_wake()) {
                let f = self.flow_view(i);
                let first_seen = u64::from(r.first_seen_s) * 1000;
                out.push(KeptAwakeBy {
                    protocol: f.protocol,
                    orig: f.orig,
                    reply: f.reply,
                    tcp_state: f.tcp_state,
                    first_seen,
                    age_ms: now.saturating_sub(first_seen),
                });
            }
        }
        out.sort_by_key(|k| (k.first_seen, k.orig.src, k.orig.src_port));
    }
}
