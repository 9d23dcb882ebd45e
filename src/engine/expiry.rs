//! Flows that end without an event: conntrack expires a UDP entry when no datagram has
//! refreshed it for its timeout, and reports the end only when its garbage collector
//! (whose pace depends on the whole host's table, up to about a minute apart) or a dump
//! reaches the entry. Refreshes report nothing either. So while an instance is active,
//! the engine notes the latest expiry its counted UDP flows reported and, once that has
//! passed, asks for a resync of the instance: the dump skips (and reaps) expired
//! entries, so the resync drops them, and live ones report their new expiry.

use super::instance::Phase;
use super::{Engine, UnixMillis};
use crate::flow::{Flow, proto};

/// `CTA_TIMEOUT` is rounded down to whole seconds.
const EXPIRY_MARGIN_MS: u64 = 1_000;

impl Engine {
    /// A counted flow of `slot` was reported at `now`, possibly with its timeout.
    #[inline]
    pub(super) fn note_expiry(&mut self, slot: u32, flow: &Flow, now: UnixMillis) {
        if flow.protocol == proto::UDP
            && let Some(secs) = flow.timeout_s
        {
            self.note_udp_expiry(slot, now.saturating_add(u64::from(secs) * 1_000));
        }
    }

    #[cold]
    #[inline(never)]
    fn note_udp_expiry(&mut self, slot: u32, at: UnixMillis) {
        let inst = self.inst_mut(slot);
        if inst.udp_expiry.is_some_and(|e| e >= at) {
            return;
        }
        inst.udp_expiry = Some(at);
        self.rearm(slot);
    }

    /// When an active instance's expiry check is due.
    pub(super) fn expiry_check_at(&self, slot: u32) -> Option<UnixMillis> {
        let inst = self.inst(slot);
        (inst.live > 0)
            .then_some(inst.udp_expiry?)
            .map(|e| e.saturating_add(EXPIRY_MARGIN_MS))
    }

    /// The deadline of an active instance fired: check its flows if they may have
    /// expired. The resync's entries note the expiry of those still there.
    pub(super) fn check_expiry(&mut self, slot: u32, now: UnixMillis) {
        let Some(at) = self.expiry_check_at(slot) else {
            return;
        };
        if at > now {
            self.deadlines.set(slot, at);
            return;
        }
        let inst = self.inst_mut(slot);
        debug_assert_eq!(inst.phase, Phase::None);
        inst.udp_expiry = None;
        let key = inst.key;
        self.queue_resync(vec![key]);
    }
}
