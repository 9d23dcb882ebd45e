//! Wake admission: which NEW flows may ask for the restore of an instance in Standby,
//! one `Wake` per Standby period, and the restore slots (`max_concurrent_restores`)
//! with their FIFO queue.

use super::flows::{FlowRec, ShapeKey, bits_addr};
use super::instance::{Inst, Q_COUNT_TCP, Q_COUNT_UDP, Q_MAY_WAKE, WakePhase};
use super::{Decision, Engine, Lifecycle, WakeSuppressed};
use crate::flow::{Flow, Tuple, proto};

/// A restore waiting for a slot.
#[derive(Clone, Copy, Debug)]
pub(super) struct QueuedWake {
    slot: u32,
    ticket: u64,
    protocol: u8,
    flow: Tuple,
}

impl Engine {
    /// A NEW flow that does not count for an instance in Standby: counted as a
    /// suppressed wake, with why it does not count.
    #[cold]
    #[inline(never)]
    pub(super) fn wake_not_counted(&mut self, slot: u32, rec: &FlowRec, shape: &ShapeKey) {
        let reason = not_counted_reason(self.inst(slot), rec, shape);
        self.stats.wakes_suppressed.bump(reason);
    }

    /// A counted NEW flow for an instance in Standby with wake-on-traffic: admits it
    /// (its client may wake the instance, no restore backoff) and asks for the restore
    /// unless one is already asked for this Standby period. Returns whether the flow
    /// asked (also when another flow already had).
    #[cold]
    #[inline(never)]
    pub(super) fn wake(&mut self, slot: u32, flow: &Flow) -> bool {
        let inst = self.inst(slot);
        debug_assert!(inst.quick & Q_MAY_WAKE != 0);
        if !inst
            .enabled_policy()
            .is_none_or(|p| p.allows_wake_from(flow.orig.src))
        {
            self.stats
                .wakes_suppressed
                .bump(WakeSuppressed::SourceNotAllowed);
            return false;
        }
        if inst.wake != WakePhase::None {
            // One restore per Standby period: this flow is served by the one asked.
            return true;
        }
        // After a failed restore, new traffic retries it only once the backoff is over,
        // so a host whose restores keep failing is not asked again on every connection.
        if inst.wake_retry_at > self.last_now {
            self.stats
                .wakes_suppressed
                .bump(WakeSuppressed::RestoreBackoff);
            return false;
        }
        let tuple = Tuple::new(
            flow.orig.src,
            flow.orig.src_port,
            flow.orig.dst,
            flow.orig.dst_port,
        );
        if self.restores_in_flight < self.config.max_concurrent_restores.max(1) {
            self.emit_wake(slot, flow.protocol, tuple);
        } else {
            let inst = self.inst_mut(slot);
            inst.wake = WakePhase::Queued;
            inst.wake_ticket += 1;
            let ticket = inst.wake_ticket;
            self.restores_queued += 1;
            if self.restore_queue.len() > 2 * self.restores_queued as usize + 64 {
                // Drop stale entries so leave-and-requeue churn cannot grow the queue.
                let insts = &self.insts;
                self.restore_queue
                    .retain(|q| is_current(insts, q.slot, q.ticket));
            }
            self.restore_queue.push_back(QueuedWake {
                slot,
                ticket,
                protocol: flow.protocol,
                flow: tuple,
            });
        }
        true
    }

    fn emit_wake(&mut self, slot: u32, protocol: u8, flow: Tuple) {
        let inst = self.inst_mut(slot);
        inst.wake = WakePhase::Restoring;
        let key = inst.key;
        self.restores_in_flight += 1;
        self.stats.wake_decisions += 1;
        self.decisions.push(Decision::Wake {
            key,
            protocol,
            flow,
        });
    }

    /// Frees the restore slot (or queue place) the instance holds and forgets its phase:
    /// it left Standby, was unregistered, or starts a new Standby period.
    pub(super) fn end_wake(&mut self, slot: u32) {
        let inst = self.inst_mut(slot);
        let phase = std::mem::replace(&mut inst.wake, WakePhase::None);
        match phase {
            WakePhase::Restoring => self.free_restore_slot(),
            // Its queue entry goes stale (the phase no longer says Queued).
            WakePhase::Queued => self.restores_queued -= 1,
            WakePhase::None | WakePhase::Done => {}
        }
    }

    /// A queued restore whose instance may no longer wake (its policy changed) leaves
    /// the queue.
    pub(super) fn dequeue_wake_if_barred(&mut self, slot: u32) {
        let inst = self.inst(slot);
        if inst.wake == WakePhase::Queued && inst.quick & Q_MAY_WAKE == 0 {
            self.end_wake(slot);
        }
    }

    /// A restore slot was freed: the oldest queued restores still wanted take the free
    /// slots.
    pub(super) fn free_restore_slot(&mut self) {
        self.restores_in_flight -= 1;
        while self.restores_in_flight < self.config.max_concurrent_restores.max(1) {
            let Some(q) = self.restore_queue.pop_front() else {
                break;
            };
            if !is_current(&self.insts, q.slot, q.ticket) {
                continue;
            }
            self.restores_queued -= 1;
            self.emit_wake(q.slot, q.protocol, q.flow);
        }
    }

    /// Whether a Standby instance's current flow `flow` may wake it now (used when a
    /// standby lands with a counted flow already live).
    pub(super) fn wake_allowed(&self, slot: u32, flow: &Flow) -> bool {
        let inst = self.inst(slot);
        inst.spec.lifecycle == Lifecycle::Standby
            && inst
                .enabled_policy()
                .is_some_and(|p| p.allows_wake_from(flow.orig.src))
    }
}

/// Why a stored flow does not count (it is known not to).
fn not_counted_reason(inst: &Inst, rec: &FlowRec, shape: &ShapeKey) -> WakeSuppressed {
    let bit = match rec.proto {
        proto::TCP => Q_COUNT_TCP,
        proto::UDP => Q_COUNT_UDP,
        _ => 0,
    };
    if inst.quick & bit == 0 {
        return WakeSuppressed::NotCountedProtocol;
    }
    let guest_port = if shape.guest_is_orig_dst {
        rec.dport
    } else {
        rec.rsport
    };
    match inst.spec.policy.as_ref() {
        Some(p) if p.ignores_port(guest_port) => WakeSuppressed::NotCountedPort,
        Some(p) if p.ignores_source(bits_addr(rec.remote_bits())) => WakeSuppressed::IgnoredSource,
        // Unreachable for a flow that does not count; the closest name.
        _ => WakeSuppressed::NotCountedProtocol,
    }
}

/// Whether a restore queue entry still stands for the instance: the slot may have been
/// freed, reused, or the instance queued again under a newer ticket.
fn is_current(insts: &super::slots::Slots<Inst>, slot: u32, ticket: u64) -> bool {
    insts[slot as usize]
        .as_ref()
        .is_some_and(|i| i.wake == WakePhase::Queued && i.wake_ticket == ticket)
}
