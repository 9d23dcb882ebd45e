//! The idle countdown: activity and idleness, holds, the standby deadline it arms, and
//! persisting it for the host.

use super::instance::Phase;
use super::{Decision, Engine, EngineError, InstanceKey, Reason, UnixMillis};

impl Engine {
    /// Re-evaluates an instance after its spec or flows changed wholesale (hypeman's
    /// refresh): clears state when ineligible, seeds or resumes the countdown otherwise.
    pub(super) fn refresh(&mut self, slot: u32, now: UnixMillis) {
        let inst = self.inst_mut(slot);
        inst.confirmed_idle = false;
        if !inst.eligible() {
            let had = inst.idle_since.is_some()
                || inst.last_inbound.is_some()
                || inst.persisted.is_some();
            inst.clear_countdown();
            let reason = inst
                .ineligible_reason()
                .unwrap_or(Reason::InstanceNotRunning);
            self.cancel_standby(slot, reason);
            if had {
                self.persist(slot);
            }
            self.rearm(slot);
            return;
        }
        if inst.live > 0 {
            inst.idle_since = None;
            inst.last_inbound = Some(now);
            inst.retry_at = None;
        } else if inst.unsynced_seq.is_some() {
            // Flows not looked at yet: no countdown starts or resumes, and the host's
            // persisted one is left as it is, until the resync (see `synced`).
            self.rearm(slot);
            return;
        } else if inst.idle_since.is_none() {
            match inst.persisted.and_then(|p| p.idle_since) {
                // Restart without live flows: resume the persisted countdown.
                Some(t) => {
                    inst.idle_since = Some(t);
                    inst.last_inbound = inst.persisted.and_then(|p| p.last_inbound_activity_at);
                }
                None => inst.idle_since = Some(now.max(inst.last_inbound.unwrap_or(0))),
            }
        }
        self.persist(slot);
        self.rearm(slot);
    }

    /// A qualifying flow was created or changed.
    #[inline]
    pub(super) fn activity(&mut self, slot: u32, now: UnixMillis, became_live: bool) {
        let inst = self.inst_mut(slot);
        if !inst.eligible() {
            return;
        }
        inst.confirmed_idle = false;
        inst.last_inbound = Some(now.max(inst.last_inbound.unwrap_or(0)));
        // Most events change nothing else: the rest is out of line.
        if became_live || (inst.phase != Phase::None && inst.phase != Phase::Executing) {
            self.activity_transition(slot, became_live);
        }
    }

    /// [`Engine::activity`] cancelling a standby under way or ending an idle period.
    #[cold]
    #[inline(never)]
    fn activity_transition(&mut self, slot: u32, became_live: bool) {
        let phase = self.inst(slot).phase;
        if phase != Phase::None && phase != Phase::Executing {
            self.cancel_standby(slot, Reason::ActiveInboundConnections);
        }
        if became_live {
            self.inst_mut(slot).end_idle_period();
            self.deadlines.remove(slot);
            self.persist(slot);
        }
    }

    /// The last qualifying flow ended at `at`.
    pub(super) fn drained(&mut self, slot: u32, at: UnixMillis) {
        let inst = self.inst_mut(slot);
        inst.udp_check_at = None;
        if !inst.eligible() {
            return;
        }
        inst.idle_since = Some(at.max(inst.last_inbound.unwrap_or(0)));
        self.persist(slot);
        self.rearm(slot);
    }

    pub(super) fn do_hold(&mut self, key: InstanceKey, now: UnixMillis) -> Result<(), EngineError> {
        self.see(now);
        let slot = self.slot(key)?;
        let inst = self.inst_mut(slot);
        if inst.phase == Phase::Executing {
            return Err(EngineError::StandbyInProgress);
        }
        if !inst.eligible() {
            return Ok(());
        }
        inst.hold_until = Some(now.saturating_add(inst.idle_timeout()));
        self.cancel_standby(slot, Reason::StandbyHeld);
        self.rearm(slot);
        Ok(())
    }

    /// Queues the instance's runtime for persistence when it differs from what the
    /// host has; at most one pending entry per instance, holding the newest value.
    pub(super) fn persist(&mut self, slot: u32) {
        let epoch = self.drain_epoch;
        let len = self.decisions.len();
        let inst = self.inst_mut(slot);
        let rt = inst.runtime();
        if rt == inst.persisted {
            return;
        }
        inst.persisted = rt;
        let d = Decision::PersistRuntime {
            key: inst.key,
            runtime: rt,
        };
        if inst.persist_epoch == epoch {
            let i = inst.persist_idx as usize;
            self.decisions[i] = d;
        } else {
            inst.persist_epoch = epoch;
            inst.persist_idx = len as u32;
            self.decisions.push(d);
        }
    }

    /// Arms (or disarms) the instance's deadline from its current state (see
    /// [`Engine::arm_at`]).
    pub(super) fn rearm(&mut self, slot: u32) {
        let inst = self.inst(slot);
        match inst.phase {
            Phase::None => match self.arm_at(slot) {
                Some(at) => self.deadlines.set(slot, at),
                None => self.deadlines.remove(slot),
            },
            // A pending confirmation keeps its own watchdog deadline.
            Phase::Confirming => {}
            _ => self.deadlines.remove(slot),
        }
    }
}
