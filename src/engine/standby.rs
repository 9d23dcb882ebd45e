//! The standby pipeline: a due deadline, the optional confirmation, the FIFO of standbys
//! waiting for a free slot, and the host's `begin_standby`/`report_standby`.

use super::instance::{Inst, Phase, WakePhase};
use super::{
    BeginStandby, Decision, Engine, EngineError, InstanceKey, Lifecycle, ObserverRequest, Reason,
    StandbyOutcome, StandbyRetry, UnixMillis, WAKE_RETRY_INITIAL_MS, WAKE_RETRY_MAX_MS,
    WakeOutcome,
};

impl Engine {
    /// Why standby is blocked engine-wide or by lost events.
    pub(super) fn blocked(&self, slot: u32) -> Option<Reason> {
        if self.observer_error.is_some() {
            Some(Reason::ObserverError)
        } else if self.inst(slot).lost_seq.is_some()
            || self.inst(slot).suspect_until.is_some()
            || self.inst(slot).unsynced_seq.is_some()
        {
            Some(Reason::ResyncPending)
        } else {
            None
        }
    }

    /// Due, and nothing engine-wide holds standby back.
    pub(super) fn ready_for_standby(&self, slot: u32, now: UnixMillis) -> bool {
        self.inst(slot).due_at().is_some_and(|d| d <= now) && self.blocked(slot).is_none()
    }

    pub(super) fn do_tick(&mut self, now: UnixMillis) {
        self.see(now);
        if !self.tombstones.is_empty() {
            self.tombstones.retain(|_, (exp, _)| *exp > now);
        }
        while let Some((_, slot)) = self.deadlines.pop_due(now) {
            self.evaluate(slot, now);
        }
    }

    /// A deadline fired: re-check everything before acting on it.
    fn evaluate(&mut self, slot: u32, now: UnixMillis) {
        let inst = self.inst(slot);
        if inst.phase == Phase::Confirming {
            // The confirmation was never answered: ask again.
            self.ask_confirm(slot, now);
            return;
        }
        if inst.phase != Phase::None {
            return;
        }
        if inst.live > 0 {
            self.check_expiry(slot, now);
            return;
        }
        if let Some(t) = inst.suspect_until {
            if t > now {
                self.deadlines.set(slot, t);
                return;
            }
            // The grace is over: a dump of the instance's addresses decides whether the
            // connection re-created its entry.
            let key = inst.key;
            self.inst_mut(slot).suspect_until = None;
            self.do_events_lost(super::ResyncScope::Instances(vec![key]), now);
            return;
        }
        let Some(due) = inst.due_at() else { return };
        let confirmed = inst.confirmed_idle;
        let at = self.arm_at(slot).unwrap_or(due);
        if at > now {
            // Early or stale delivery (a hold, a re-arm, a clock step): wait again.
            self.deadlines.set(slot, at);
            return;
        }
        if self.blocked(slot).is_some() {
            // Re-armed when the block lifts.
            return;
        }
        if due > now {
            // Within the lead: confirm now so the dump is over by the deadline.
            self.start_confirm(slot, now);
            return;
        }
        self.request_standby(slot, now, confirmed);
    }

    /// How far ahead of the deadline the confirmation is asked for.
    fn confirm_lead(&self, slot: u32) -> u64 {
        let inst = self.inst(slot);
        if !self.config.confirm_before_standby || inst.confirmed_idle {
            return 0;
        }
        self.config.confirm_lead_ms.min(inst.idle_timeout() / 2)
    }

    /// When the instance's deadline should fire: for an active instance, at its expiry
    /// check (see `expiry.rs`); else at the due time, or the confirmation lead before it
    /// while a confirmation is still needed.
    pub(super) fn arm_at(&self, slot: u32) -> Option<UnixMillis> {
        if self.inst(slot).live > 0 {
            return self.expiry_check_at(slot);
        }
        if let Some(t) = self.inst(slot).suspect_until {
            return Some(t);
        }
        let due = self.inst(slot).due_at()?;
        Some(due.saturating_sub(self.confirm_lead(slot)))
    }

    fn start_confirm(&mut self, slot: u32, now: UnixMillis) {
        let seq = self.next_resync;
        let inst = self.inst_mut(slot);
        inst.phase = Phase::Confirming;
        inst.confirm_seq = seq;
        self.ask_confirm(slot, now);
    }

    pub(super) fn request_standby(&mut self, slot: u32, now: UnixMillis, confirmed: bool) {
        if self.config.confirm_before_standby && !confirmed {
            self.start_confirm(slot, now);
            return;
        }
        let inst = self.inst_mut(slot);
        inst.confirm_failed = false;
        inst.confirmed_idle = false;
        if self.in_flight < self.config.max_concurrent_standbys.max(1) {
            self.emit_standby(slot);
        } else {
            let inst = self.inst_mut(slot);
            inst.phase = Phase::Queued;
            inst.ticket += 1;
            let ticket = inst.ticket;
            self.queued += 1;
            if self.queue.len() > 2 * self.queued as usize + 64 {
                // Drop stale entries so cancel-and-requeue churn cannot grow the queue.
                let insts = &self.insts;
                self.queue.retain(|&(s, t)| is_current(insts, s, t));
            }
            self.queue.push_back((slot, ticket));
            self.deadlines.remove(slot);
        }
    }

    /// Asks the observer to confirm that the instance is idle, and arms a watchdog that
    /// asks again if no resync answers in time.
    fn ask_confirm(&mut self, slot: u32, now: UnixMillis) {
        let inst = self.inst(slot);
        let key = inst.key;
        let wait = inst.idle_timeout().max(1_000);
        self.request_once(ObserverRequest::Confirm(key));
        self.deadlines.set(slot, now.saturating_add(wait));
    }

    fn emit_standby(&mut self, slot: u32) {
        let inst = self.inst_mut(slot);
        inst.phase = Phase::Emitted;
        let key = inst.key;
        self.in_flight += 1;
        self.stats.standby_decisions += 1;
        self.deadlines.remove(slot);
        self.decisions.push(Decision::Standby { key });
    }

    /// Cancels a standby not yet executing.
    /// Every caller is also something that makes an earlier confirmation stale.
    pub(super) fn cancel_standby(&mut self, slot: u32, reason: Reason) {
        let inst = self.inst_mut(slot);
        inst.confirmed_idle = false;
        match inst.phase {
            Phase::Queued => {
                inst.phase = Phase::None;
                self.queued -= 1;
            }
            Phase::Emitted => {
                inst.phase = Phase::EmittedCancelled;
                inst.cancel_reason = reason;
            }
            Phase::Confirming => {
                inst.phase = Phase::None;
                self.deadlines.remove(slot);
            }
            _ => {}
        }
    }

    pub(super) fn free_slot(&mut self, now: UnixMillis) {
        self.in_flight -= 1;
        while self.in_flight < self.config.max_concurrent_standbys.max(1) {
            let Some((slot, ticket)) = self.queue.pop_front() else {
                break;
            };
            if !is_current(&self.insts, slot, ticket) {
                continue;
            }
            self.queued -= 1;
            self.inst_mut(slot).phase = Phase::None;
            if self.ready_for_standby(slot, now) {
                self.emit_standby(slot);
            } else {
                self.rearm(slot);
            }
        }
    }

    pub(super) fn do_begin_standby(
        &mut self,
        key: InstanceKey,
        now: UnixMillis,
    ) -> Result<BeginStandby, EngineError> {
        self.see(now);
        let slot = self.slot(key)?;
        let inst = self.inst(slot);
        let cancel = match inst.phase {
            Phase::Emitted => {
                if let Some(r) = inst.ineligible_reason() {
                    Some(r)
                } else if inst.live > 0 {
                    Some(Reason::ActiveInboundConnections)
                } else if let Some(r) = self.blocked(slot) {
                    Some(r)
                } else if inst.due_at().is_none_or(|d| d > now) {
                    Some(inst.binding_reason())
                } else {
                    None
                }
            }
            Phase::EmittedCancelled => Some(inst.cancel_reason),
            _ => return Err(EngineError::NoStandbyOutstanding(key)),
        };
        match cancel {
            None => {
                self.inst_mut(slot).phase = Phase::Executing;
                Ok(BeginStandby::Proceed)
            }
            Some(r) => {
                self.inst_mut(slot).phase = Phase::None;
                self.free_slot(now);
                self.rearm(slot);
                Ok(BeginStandby::Cancelled(r))
            }
        }
    }

    pub(super) fn do_decline_standby(
        &mut self,
        key: InstanceKey,
        now: UnixMillis,
    ) -> Result<(), EngineError> {
        self.see(now);
        let slot = self.slot(key)?;
        match self.inst(slot).phase {
            Phase::Emitted | Phase::EmittedCancelled => {}
            Phase::Executing => return Err(EngineError::StandbyInProgress),
            _ => return Err(EngineError::NoStandbyOutstanding(key)),
        }
        let inst = self.inst_mut(slot);
        inst.phase = Phase::None;
        // Whatever confirmed it is older than the host's next look.
        inst.confirmed_idle = false;
        self.free_slot(now);
        self.rearm(slot);
        Ok(())
    }

    pub(super) fn do_report_standby(
        &mut self,
        key: InstanceKey,
        outcome: StandbyOutcome,
        now: UnixMillis,
    ) -> Result<(), EngineError> {
        self.see(now);
        let slot = self.slot(key)?;
        if self.inst(slot).phase != Phase::Executing {
            return Err(EngineError::NoStandbyOutstanding(key));
        }
        self.inst_mut(slot).phase = Phase::None;
        match outcome {
            StandbyOutcome::Success => {
                let inst = self.inst_mut(slot);
                inst.clear_countdown();
                inst.spec.lifecycle = Lifecycle::Standby;
                inst.spec_changed();
                inst.running_since = None;
                inst.clear_wake_failures();
                self.end_wake(slot);
                self.persist(slot);
                self.deadlines.remove(slot);
                // A client that connected while the snapshot was written would be
                // stranded: wake the instance right back when its policy allows.
                let asking = self.flows.list(slot).find(|&i| {
                    self.flows.rec(i).counted() && self.wake_allowed(slot, &self.flow_view(i))
                });
                if let Some(i) = asking {
                    let flow = self.flow_view(i);
                    if self.maybe_wake(slot, &flow) {
                        self.flows.rec_mut(i).set_asked_wake();
                    }
                }
                self.free_slot(now);
            }
            StandbyOutcome::NotFound => {
                self.free_slot(now);
                self.remove_instance(slot, now);
            }
            StandbyOutcome::Failed => {
                let retry = self.config.standby_retry;
                let initial = self.config.standby_retry_initial_ms.max(1);
                let inst = self.inst_mut(slot);
                inst.failures = inst.failures.saturating_add(1);
                // Never re-arm while flows are live: activity already restarted things.
                if inst.live == 0 && inst.eligible() {
                    match retry {
                        StandbyRetry::Countdown => {
                            // A new idle period from the failure, persisted below so a
                            // restart resumes it; `idle_since` never moves backwards.
                            inst.idle_since = Some(now.max(inst.idle_since.unwrap_or(0)));
                            inst.retry_at = None;
                        }
                        StandbyRetry::Backoff => {
                            let shift = (inst.failures - 1).min(40);
                            let backoff = initial
                                .saturating_mul(1u64 << shift)
                                .min(inst.idle_timeout().max(1));
                            inst.retry_at = Some(now.saturating_add(backoff));
                            if inst.idle_since.is_none() {
                                inst.idle_since = Some(now);
                            }
                        }
                    }
                }
                self.persist(slot);
                self.free_slot(now);
                self.rearm(slot);
            }
        }
        Ok(())
    }

    pub(super) fn do_report_wake(
        &mut self,
        key: InstanceKey,
        outcome: WakeOutcome,
        now: UnixMillis,
    ) -> Result<(), EngineError> {
        self.see(now);
        let slot = self.slot(key)?;
        let inst = self.inst_mut(slot);
        // A report that arrives after the host moved the instance on (restored by other
        // means, stopped) is about a Standby period that is over (and its slot is free).
        if inst.spec.lifecycle != Lifecycle::Standby {
            return Ok(());
        }
        let phase = inst.wake;
        if phase == WakePhase::Queued {
            // No Wake is out for this period: the report is about an earlier one.
            return Ok(());
        }
        if phase == WakePhase::Restoring {
            inst.wake = WakePhase::Done;
            self.free_restore_slot();
        }
        let inst = self.inst_mut(slot);
        match outcome {
            WakeOutcome::Success => inst.clear_wake_failures(),
            WakeOutcome::Declined => {}
            WakeOutcome::Failed => {
                inst.wake_failures = inst.wake_failures.saturating_add(1);
                let shift = (inst.wake_failures - 1).min(40);
                let backoff = WAKE_RETRY_INITIAL_MS
                    .saturating_mul(1u64 << shift)
                    .min(WAKE_RETRY_MAX_MS);
                inst.wake_retry_at = now.saturating_add(backoff);
                // The instance is still in Standby and its clients are stranded: the
                // next one to connect (after the backoff) must be able to wake it.
                inst.wake = WakePhase::None;
                self.stats.wake_failures += 1;
            }
        }
        Ok(())
    }
}

/// Whether a queue entry still stands for the instance: the slot may have been freed,
/// reused, or cancelled and queued again under a newer ticket.
fn is_current(insts: &super::slots::Slots<Inst>, slot: u32, ticket: u64) -> bool {
    insts[slot as usize]
        .as_ref()
        .is_some_and(|i| i.phase == Phase::Queued && i.ticket == ticket)
}
