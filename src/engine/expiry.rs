//! Flows that end without an event: conntrack expires a UDP entry when no datagram has
//! refreshed it for its timeout, and reports the end only when its garbage collector
//! (whose pace depends on the whole host's table, up to about a minute apart) or a dump
//! reaches the entry. Refreshes report nothing either. So while an instance is active,
//! the engine notes the latest expiry its counted UDP flows reported and, once that has
//! passed, asks for a resync of the instance: the dump skips (and reaps) expired
//! entries, so the resync drops them, and live ones report their new expiry.
//!
//! Checks fall on a grid (a power of two of milliseconds, between an eighth and a quarter
//! of the timeout, at most 8 s), so instances whose flows expire around the same time
//! share one resync, and a host with many UDP-serving instances pays for a few dumps
//! rather than one per instance. One check time covers all of an instance's UDP flows:
//! the latest any of them reported, so a flow with a shorter timeout is checked then.

use super::instance::Phase;
use super::{Engine, UnixMillis};
use crate::flow::{Flow, proto};

/// `CTA_TIMEOUT` is rounded down to whole seconds.
const EXPIRY_MARGIN_MS: u64 = 1_000;
/// The coarsest check grid.
const MAX_GRID_MS: u64 = 8_192;

/// When to check a flow that reported `secs` left at `now`: a second after its expiry,
/// rounded up to the grid for its timeout.
fn check_time(now: UnixMillis, secs: u32) -> UnixMillis {
    let timeout = u64::from(secs) * 1_000;
    let grid = (timeout / 4).clamp(1, MAX_GRID_MS);
    let grid = 1 << grid.ilog2();
    now.saturating_add(timeout + EXPIRY_MARGIN_MS)
        .checked_next_multiple_of(grid)
        .unwrap_or(UnixMillis::MAX)
}

impl Engine {
    /// A counted flow of `slot` was reported at `now`, possibly with its timeout.
    #[inline]
    pub(super) fn note_expiry(&mut self, slot: u32, flow: &Flow, now: UnixMillis) {
        if flow.protocol == proto::UDP
            && let Some(secs) = flow.timeout_s
        {
            self.note_udp_check(slot, check_time(now, secs));
        }
    }

    #[cold]
    #[inline(never)]
    fn note_udp_check(&mut self, slot: u32, at: UnixMillis) {
        let inst = self.inst_mut(slot);
        if inst.udp_check_at.is_some_and(|e| e >= at) {
            return;
        }
        inst.udp_check_at = Some(at);
        self.rearm(slot);
    }

    /// When an active instance's expiry check is due. None for an instance that could
    /// not go into Standby anyway (stopped, in Standby, disabled).
    pub(super) fn expiry_check_at(&self, slot: u32) -> Option<UnixMillis> {
        let inst = self.inst(slot);
        (inst.live > 0 && inst.eligible()).then_some(inst.udp_check_at?)
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
        inst.udp_check_at = None;
        inst.expiry_asked = true;
        let key = inst.key;
        self.queue_resync(vec![key]);
    }

    /// A resync covering `slot` finished: it answered any check asked for.
    pub(super) fn expiry_answered(&mut self, slot: u32) {
        self.inst_mut(slot).expiry_asked = false;
    }

    /// A resync covering `slot` failed: if it was to answer a check, check again a
    /// little later (the caller re-arms).
    pub(super) fn expiry_unanswered(&mut self, slot: u32, now: UnixMillis) {
        let inst = self.inst_mut(slot);
        if std::mem::take(&mut inst.expiry_asked) && inst.udp_check_at.is_none() {
            inst.udp_check_at = Some(now.saturating_add(EXPIRY_MARGIN_MS));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_times_fall_on_a_grid_of_an_eighth_to_a_quarter_of_the_timeout() {
        // 30 s: a 4.096 s grid; 120 s: capped at 8.192 s; 2 s: 256 ms; 0 s: 1 ms.
        for (secs, grid) in [(30, 4_096), (120, 8_192), (2, 256), (0, 1)] {
            for now in [0, 1, 1_780_000_000_123] {
                let at = check_time(now, secs);
                let earliest = now + u64::from(secs) * 1_000 + EXPIRY_MARGIN_MS;
                assert_eq!(at % grid, 0, "{secs} s at {now}");
                assert!(
                    (earliest..earliest + grid).contains(&at),
                    "{secs} s at {now}"
                );
            }
        }
    }

    #[test]
    fn check_times_saturate_instead_of_wrapping() {
        assert_eq!(check_time(UnixMillis::MAX - 10, 30), UnixMillis::MAX);
        assert_eq!(check_time(UnixMillis::MAX, u32::MAX), UnixMillis::MAX);
    }
}
