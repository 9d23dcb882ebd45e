//! Per-instance state: spec, countdown, standby phase, and the rules derived from them.

use super::{InstanceKey, InstanceSpec, Lifecycle, Reason, Runtime, UnixMillis};
use crate::policy::Policy;

/// Where an instance is in the standby pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// No standby under way.
    None,
    /// Due; waiting for the observer's confirmation dump.
    Confirming,
    /// Due and confirmed; waiting for a free slot (FIFO).
    Queued,
    /// `Standby` emitted; waiting for `begin_standby`.
    Emitted,
    /// `Standby` emitted, then cancelled; `begin_standby` will answer `Cancelled`.
    EmittedCancelled,
    /// `begin_standby` answered `Proceed`; waiting for `report_standby`.
    Executing,
}

impl Phase {
    /// Holds one of the `max_concurrent_standbys` slots.
    pub(crate) fn holds_slot(self) -> bool {
        matches!(
            self,
            Self::Emitted | Self::EmittedCancelled | Self::Executing
        )
    }
}

/// Where an instance in Standby is in being restored on traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WakePhase {
    /// No flow has asked for a restore in this Standby period (or the last restore
    /// failed): the next admitted flow does.
    None,
    /// A flow asked; waiting for one of the `max_concurrent_restores` slots (FIFO, in
    /// the order of the flows that asked).
    Queued,
    /// `Wake` emitted: holds a restore slot until the host reports the restore or the
    /// instance leaves Standby.
    Restoring,
    /// The host reported the restore done, or that it will not restore: no other `Wake`
    /// until the instance leaves Standby.
    Done,
}

/// [`Inst::quick`]: TCP flows count under the policy (before port and source filters).
pub(crate) const Q_COUNT_TCP: u8 = 1;
/// [`Inst::quick`]: UDP flows count under the policy (before port and source filters).
pub(crate) const Q_COUNT_UDP: u8 = 2;
/// [`Inst::quick`]: the policy ignores some ports or sources; check each flow.
pub(crate) const Q_FILTERS: u8 = 4;
/// [`Inst::quick`]: in Standby with wake-on-traffic enabled.
pub(crate) const Q_MAY_WAKE: u8 = 8;
/// [`Inst::quick`]: more addresses than `addr_bits` holds; `owns` must read the spec.
pub(crate) const Q_MORE_ADDRS: u8 = 16;

/// One registered instance: the fields a flow event reads or writes, in one 64-byte
/// line, and the rest (spec and rarely used bookkeeping) behind a pointer.
///
/// The engine keeps one of these per instance slot in a dense array, so the lines the
/// event path touches for 10,000 instances fit in 640 KiB (160 pages) instead of being
/// spread over a few megabytes. The cold part's fields read as the instance's own
/// (`Deref`).
#[derive(Debug)]
#[repr(C, align(64))]
pub(crate) struct Inst {
    /// The first two addresses as [`super::flows::addr_bits`] (0 when absent), for the
    /// per-event "is the client the guest itself?" check without touching `spec`.
    pub addr_bits: [u128; 2],
    pub last_inbound: Option<UnixMillis>,
    pub cold: Box<InstCold>,
    /// Live qualifying flows.
    pub live: u32,
    pub phase: Phase,
    /// [`Inst::ineligible_reason`] is `None`; kept in step with `spec`.
    pub is_eligible: bool,
    /// `Q_*` bits: the per-event rules derived from `spec`, so a flow event does not
    /// read the spec's cache lines. Kept in step with `spec`.
    pub quick: u8,
    /// A confirmation finished with the instance idle and nothing has happened since
    /// that could make it stale (activity, a loss, a hold, an update, an observer
    /// failure): standby may follow at the deadline without another dump.
    pub confirmed_idle: bool,
}

/// The part of an [`Inst`] flow events do not touch.
#[derive(Debug)]
pub(crate) struct InstCold {
    pub key: InstanceKey,
    pub spec: InstanceSpec,
    /// When the engine saw the instance become Running.
    pub running_since: Option<UnixMillis>,
    pub idle_since: Option<UnixMillis>,
    /// What the host has (or will have once it drains the queue) persisted.
    pub persisted: Option<Runtime>,
    pub hold_until: Option<UnixMillis>,
    /// Earliest retry after a failed standby.
    pub retry_at: Option<UnixMillis>,
    pub failures: u32,
    /// Why an emitted standby was cancelled.
    pub cancel_reason: Reason,
    /// Ticket of the current queue entry (older entries are stale).
    pub ticket: u64,
    /// A confirmation is satisfied by a resync with at least this id.
    pub confirm_seq: u64,
    /// Events were lost: pending until a resync with at least this id finishes.
    pub lost_seq: Option<u64>,
    /// Flows not looked at since registration or an address gain (see
    /// `EngineConfig::pending_until_first_resync`): pending, with no countdown, until a
    /// resync with at least this id that covers the instance finishes.
    pub unsynced_seq: Option<u64>,
    /// A `Resync` covering the loss has been requested and not yet answered.
    pub resync_requested: bool,
    /// The last confirmation dump failed.
    pub confirm_failed: bool,
    /// A counted TCP flow's entry was destroyed while the connection looked alive (see
    /// `EngineStats::suspect_ends`): until then no standby, and at that time a resync
    /// scoped to the instance is asked for.
    pub suspect_until: Option<UnixMillis>,
    /// Where the current Standby period's restore is (read only when [`Q_MAY_WAKE`] is
    /// set, or to release what it holds).
    pub wake: WakePhase,
    /// Ticket of the current restore queue entry (older entries are stale).
    pub wake_ticket: u64,
    /// Consecutive restores the host reported failed in the current Standby period; while
    /// non-zero the status is `error` / `restore_failed`.
    pub wake_failures: u32,
    /// After a failed restore, no new `Wake` before this time.
    pub wake_retry_at: UnixMillis,
    /// While the instance is active: when to check whether its counted UDP flows have
    /// expired, from the latest expiry they reported (see `expiry.rs`).
    pub udp_check_at: Option<UnixMillis>,
    /// An expiry check asked for a resync that has not finished yet.
    pub expiry_asked: bool,
    /// Index of this instance's pending `PersistRuntime` in the decision queue, valid
    /// while `persist_epoch` equals the engine's drain epoch.
    pub persist_idx: u32,
    pub persist_epoch: u64,
    /// Idle gaps since observation began (`None` before: flows not known yet).
    pub history: Option<Box<super::history::GapHistory>>,
}

impl std::ops::Deref for Inst {
    type Target = InstCold;
    #[inline]
    fn deref(&self) -> &InstCold {
        &self.cold
    }
}

impl std::ops::DerefMut for Inst {
    #[inline]
    fn deref_mut(&mut self) -> &mut InstCold {
        &mut self.cold
    }
}

impl Inst {
    pub(crate) fn new(key: InstanceKey, spec: InstanceSpec, now: UnixMillis) -> Self {
        let running_since = (spec.lifecycle == Lifecycle::Running).then_some(now);
        let persisted = normalise_runtime(spec.runtime);
        let last_inbound = spec.runtime.last_inbound_activity_at;
        let mut inst = Self {
            addr_bits: [0; 2],
            last_inbound,
            cold: Box::new(InstCold {
                key,
                spec,
                running_since,
                idle_since: None,
                persisted,
                hold_until: None,
                retry_at: None,
                failures: 0,
                cancel_reason: Reason::IdleTimeoutNotElapsed,
                ticket: 0,
                confirm_seq: 0,
                lost_seq: None,
                unsynced_seq: None,
                resync_requested: false,
                confirm_failed: false,
                suspect_until: None,
                wake: WakePhase::None,
                wake_ticket: 0,
                wake_failures: 0,
                wake_retry_at: 0,
                udp_check_at: None,
                expiry_asked: false,
                persist_idx: u32::MAX,
                persist_epoch: u64::MAX,
                history: None,
            }),
            live: 0,
            phase: Phase::None,
            is_eligible: false,
            quick: 0,
            confirmed_idle: false,
        };
        inst.spec_changed();
        inst
    }

    /// Re-derives what is cached from `spec`; call after every change to it.
    pub(crate) fn spec_changed(&mut self) {
        self.addr_bits = [0; 2];
        for (b, a) in self.addr_bits.iter_mut().zip(&self.cold.spec.addresses) {
            *b = super::flows::addr_bits(*a);
        }
        self.is_eligible = self.ineligible_reason().is_none();
        self.quick = self.derive_quick();
    }

    fn derive_quick(&self) -> u8 {
        let mut q = 0;
        match &self.spec.policy {
            // Without a policy, hypeman's rule: TCP only, nothing filtered.
            None => q |= Q_COUNT_TCP,
            Some(p) => {
                if p.counts_protocol(crate::flow::proto::TCP) {
                    q |= Q_COUNT_TCP;
                }
                if p.counts_protocol(crate::flow::proto::UDP) {
                    q |= Q_COUNT_UDP;
                }
                if !p.ignore_destination_ports.is_empty() || !p.ignore_source_cidrs.is_empty() {
                    q |= Q_FILTERS;
                }
            }
        }
        if self.spec.addresses.len() > 2 {
            q |= Q_MORE_ADDRS;
        }
        if self.spec.lifecycle == Lifecycle::Standby
            && self.enabled_policy().is_some_and(|p| p.wake_on_traffic)
        {
            q |= Q_MAY_WAKE;
        }
        q
    }

    /// Whether `bits` is one of the instance's addresses.
    #[inline]
    pub(crate) fn owns(&self, bits: u128) -> bool {
        self.addr_bits[0] == bits
            || self.addr_bits[1] == bits
            || (self.quick & Q_MORE_ADDRS != 0
                && self
                    .spec
                    .addresses
                    .iter()
                    .any(|a| super::flows::addr_bits(*a) == bits))
    }

    /// The enabled policy, if any.
    #[inline]
    pub(crate) fn enabled_policy(&self) -> Option<&Policy> {
        self.spec.policy.as_ref().filter(|p| p.enabled)
    }

    /// hypeman's eligibility checks, in its order; `None` when eligible.
    pub(crate) fn ineligible_reason(&self) -> Option<Reason> {
        match &self.spec.policy {
            None => return Some(Reason::PolicyMissing),
            Some(p) if !p.enabled => return Some(Reason::PolicyDisabled),
            Some(_) => {}
        }
        if self.spec.lifecycle != Lifecycle::Running {
            Some(Reason::InstanceNotRunning)
        } else if !self.spec.network_enabled {
            Some(Reason::NetworkDisabled)
        } else if self.spec.addresses.is_empty() {
            Some(Reason::MissingIp)
        } else if self.spec.has_vgpu {
            Some(Reason::HasVgpu)
        } else {
            None
        }
    }

    #[inline]
    pub(crate) fn eligible(&self) -> bool {
        debug_assert_eq!(self.is_eligible, self.ineligible_reason().is_none());
        self.is_eligible
    }

    /// The idle timeout of the enabled policy (0 when none).
    pub(crate) fn idle_timeout(&self) -> u64 {
        self.enabled_policy().map_or(0, |p| p.idle_timeout_ms)
    }

    /// End of the min-uptime window, when the policy has one.
    pub(crate) fn min_uptime_end(&self) -> Option<UnixMillis> {
        let p = self.enabled_policy()?;
        if p.min_uptime_ms == 0 {
            return None;
        }
        Some(self.running_since?.saturating_add(p.min_uptime_ms))
    }

    /// When standby is due: the latest of the idle deadline, the hold, the end of the
    /// min-uptime window and the retry time. `None` unless counting down.
    pub(crate) fn due_at(&self) -> Option<UnixMillis> {
        if self.live > 0 || !self.eligible() {
            return None;
        }
        let idle = self.idle_since?.saturating_add(self.idle_timeout());
        Some(
            idle.max(self.hold_until.unwrap_or(0))
                .max(self.min_uptime_end().unwrap_or(0))
                .max(self.retry_at.unwrap_or(0)),
        )
    }

    /// Which constraint sets [`Inst::due_at`], for the status reason.
    pub(crate) fn binding_reason(&self) -> Reason {
        let idle = self
            .idle_since
            .map_or(0, |s| s.saturating_add(self.idle_timeout()));
        let hold = self.hold_until.unwrap_or(0);
        let uptime = self.min_uptime_end().unwrap_or(0);
        let retry = self.retry_at.unwrap_or(0);
        if self.confirm_failed {
            Reason::ConfirmFailed
        } else if hold > idle && hold >= uptime && hold >= retry {
            Reason::StandbyHeld
        } else if uptime > idle && uptime >= retry {
            Reason::MinUptimeNotElapsed
        } else {
            Reason::IdleTimeoutNotElapsed
        }
    }

    /// Ends the idle period and any failed-standby retry state (a flow became live).
    pub(crate) fn end_idle_period(&mut self) {
        self.idle_since = None;
        self.retry_at = None;
        self.failures = 0;
        self.confirm_failed = false;
        self.confirmed_idle = false;
        // The flow is back, or a new one is live: no resync is owed.
        self.suspect_until = None;
    }

    /// Forgets the whole countdown, hold included (ineligible, or now in Standby).
    pub(crate) fn clear_countdown(&mut self) {
        self.end_idle_period();
        self.last_inbound = None;
        self.hold_until = None;
    }

    /// Ends a run of failed restores (restored, left Standby, or put into it afresh).
    pub(crate) fn clear_wake_failures(&mut self) {
        self.wake_failures = 0;
        self.wake_retry_at = 0;
    }

    /// The current countdown as it should be persisted.
    pub(crate) fn runtime(&self) -> Option<Runtime> {
        normalise_runtime(Runtime {
            idle_since: self.idle_since,
            last_inbound_activity_at: self.last_inbound,
        })
    }
}

/// An empty runtime is the same as none.
pub(crate) fn normalise_runtime(rt: Runtime) -> Option<Runtime> {
    (rt != Runtime::default()).then_some(rt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_event_fields_fill_one_cache_line() {
        assert_eq!(align_of::<Inst>(), 64);
        assert_eq!(size_of::<Inst>(), 64);
        // The slot array holds `Option<Inst>`: the box's niche keeps it one line too.
        assert_eq!(size_of::<Option<Inst>>(), 64);
    }
}
