//! Flows that end without an event: conntrack expires a UDP entry when no datagram has
//! refreshed it for its timeout, and reports the end only when its garbage collector
//! (whose pace depends on the whole host's table, up to about a minute apart) or a dump
//! or lookup reaches the entry. Refreshes report nothing either. So while an instance is
//! active, the engine notes the latest expiry its counted UDP flows reported and, once
//! that has passed, asks the observer to look those flows up by their exact tuple
//! (`CT_GET`: a hash lookup of about 10 µs each, where a dump walks the whole kernel
//! hash, 86 ms on a 200k-entry table). A live flow reports its new expiry; a gone one is
//! removed (the lookup reaps an expired entry, so the kernel also sends its DESTROY,
//! which then changes nothing). An instance with more counted UDP flows than
//! [`MAX_LOOKUP_FLOWS`], or whose lookup failed, is resynced instead.
//!
//! Checks fall on a grid (a power of two of milliseconds, between an eighth and a quarter
//! of the timeout, at most 8 s), so instances whose flows expire around the same time
//! share one request. One check time covers all of an instance's UDP flows: the latest
//! any of them reported, so a flow with a shorter timeout is checked then.
//!
//! The periodic safety check ([`Engine::check_tracked_flows`]) uses the same lookups for
//! every flow stored: a DESTROY that was lost, or never sent (an entry created before
//! any listener existed, with `nf_conntrack_events=2`), shows as a gone entry.
//!
//! A lookup races with events as a dump does, and is guarded the same way: an event
//! applied after [`Engine::begin_lookup`] is newer than the answer (the answer neither
//! changes nor removes that flow), and DESTROYs leave tombstones while a lookup is open.

use super::flow_events::Source;
use super::instance::Phase;
use super::{
    Engine, EngineError, InstanceKey, LookupAnswer, LookupId, ObserverRequest, UnixMillis,
};
use crate::flow::{Flow, proto};

/// Above this many counted UDP flows, an instance's check is a resync (one filtered walk
/// of the kernel hash) rather than lookups: at about 10 µs a lookup against some 86 ms a
/// walk on a large table, the lookups stay far cheaper up to here.
pub const MAX_LOOKUP_FLOWS: usize = 2_048;

/// Above this many flows in all, the periodic check (see [`Engine::check_tracked_flows`])
/// resyncs everything instead: about 0.3 s of lookups, where one full dump of a
/// 200k-entry table costs about 0.7 s and filtered walks some 86 ms each.
pub const MAX_CHECK_LOOKUPS: usize = 32_768;

/// A lookup in progress.
#[derive(Debug)]
pub(super) struct OpenLookup {
    id: u64,
    began_at: UnixMillis,
    /// The instances whose flows were asked about, and whether an answer for one of
    /// them failed.
    scope: Vec<(u32, InstanceKey, bool)>,
}

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
    /// expired, by looking its counted UDP flows up (or, with very many, by a resync).
    /// The answers note the expiry of those still there.
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
        let flows: Vec<Flow> = self
            .flows
            .list(slot)
            .filter(|&i| {
                let r = self.flows.rec(i);
                r.counted() && r.proto == proto::UDP
            })
            .take(MAX_LOOKUP_FLOWS + 1)
            .map(|i| self.flow_view(i))
            .collect();
        if flows.len() > MAX_LOOKUP_FLOWS {
            self.queue_resync(vec![key]);
        } else {
            self.queue_lookup(flows);
        }
    }

    /// The periodic check of everything tracked: queues a lookup of every flow stored
    /// for every instance whose flows are known (one pending its first resync, or a
    /// resync after lost events, is left to that resync). An instance with more than
    /// [`MAX_LOOKUP_FLOWS`] flows is resynced instead, and when all of them together
    /// exceed [`MAX_CHECK_LOOKUPS`], everything is. Returns how many flows it queued.
    pub(super) fn do_check_tracked_flows(&mut self, now: UnixMillis) -> usize {
        self.see(now);
        let mut flows = Vec::new();
        let mut resync = Vec::new();
        for slot in self.live_slots() {
            let inst = self.inst(slot);
            if inst.unsynced_seq.is_some() || inst.lost_seq.is_some() {
                continue;
            }
            let key = inst.key;
            let before = flows.len();
            flows.extend(
                self.flows
                    .list(slot)
                    .filter(|&i| !self.flows.rec(i).is_spare())
                    .take(MAX_LOOKUP_FLOWS + 1)
                    .map(|i| self.flow_view(i)),
            );
            if flows.len() - before > MAX_LOOKUP_FLOWS {
                flows.truncate(before);
                resync.push(key);
            }
        }
        if flows.len() > MAX_CHECK_LOOKUPS {
            self.request_once(ObserverRequest::Resync(super::ResyncScope::All));
            return 0;
        }
        self.queue_resync(resync);
        let queued = flows.len();
        if queued > 0 {
            // A request of its own: merging into an undrained one would compare every
            // pair, and a flow asked about twice is answered twice, harmlessly.
            self.requests.push(ObserverRequest::Lookup(flows));
        }
        queued
    }

    /// Adds flows to the one undrained `Lookup` request, or queues one.
    fn queue_lookup(&mut self, flows: Vec<Flow>) {
        if flows.is_empty() {
            return;
        }
        for r in &mut self.requests {
            if let ObserverRequest::Lookup(v) = r {
                for f in flows {
                    if !v.contains(&f) {
                        v.push(f);
                    }
                }
                return;
            }
        }
        self.requests.push(ObserverRequest::Lookup(flows));
    }

    pub(super) fn do_begin_lookup(&mut self, flows: &[Flow], now: UnixMillis) -> LookupId {
        self.see(now);
        // Numbered with the resyncs: events from here on mark the flows they touch as
        // newer than this lookup (and than every resync begun before it).
        let id = self.next_resync;
        self.next_resync += 1;
        self.touch_seq = id as u32;
        let mut scope: Vec<(u32, InstanceKey, bool)> = flows
            .iter()
            .filter_map(|f| {
                let p = self.prepare(f);
                p.classified()
                    .then(|| (p.slot, self.inst(p.slot).key, false))
            })
            .collect();
        scope.sort_unstable();
        scope.dedup();
        self.lookups.push(OpenLookup {
            id,
            began_at: now,
            scope,
        });
        LookupId(id)
    }

    pub(super) fn do_lookup_answer(
        &mut self,
        id: LookupId,
        asked: &Flow,
        answer: LookupAnswer<'_>,
    ) -> Result<(), EngineError> {
        let pos = self
            .lookups
            .iter()
            .position(|l| l.id == id.0)
            .ok_or(EngineError::UnknownLookup(id))?;
        let (seq, began_at) = (id.0 as u32, self.lookups[pos].began_at);
        let prepared = self.prepare(asked);
        if !prepared.classified() {
            // Unregistered, or its address moved, since: nothing of it is stored.
            return Ok(());
        }
        let asked_probe = prepared.probe(asked);
        // Stored and not reported by an event (or a newer dump) since the lookup began.
        let untouched = |e: &Engine| {
            e.flows
                .find(&asked_probe, prepared.hash)
                .is_some_and(|i| (e.flows.rec(i).touch.wrapping_sub(seq) as i32) < 0)
        };
        let answer = match answer {
            LookupAnswer::Found(f)
                if f.orig != asked.orig || f.protocol != asked.protocol || f.zone != asked.zone =>
            {
                // Not the entry asked about: no answer for this flow.
                LookupAnswer::Failed
            }
            a => a,
        };
        match answer {
            LookupAnswer::Found(f) if f.id == asked.id => {
                if untouched(self) {
                    let now = self.last_now;
                    self.apply_prepared(f, &prepared, Source::Dump(seq), now);
                } else if self.flows.find(&asked_probe, prepared.hash).is_some() {
                    // An event said more since; the entry's expiry still holds.
                    let now = self.last_now;
                    self.note_expiry(prepared.slot, f, now);
                }
                // Not stored: an event or a dump ended it meanwhile, and a later event
                // brings it back if it is live again.
            }
            LookupAnswer::Found(f) => {
                // A new entry reuses the tuple: taken first, so the instance never looks
                // drained in between; tombstones keep out one destroyed meanwhile.
                let fresh = self.prepare(f);
                let fresh_untouched = self
                    .flows
                    .find(&fresh.probe(f), fresh.hash)
                    .is_none_or(|i| (self.flows.rec(i).touch.wrapping_sub(seq) as i32) < 0);
                if fresh_untouched {
                    let now = self.last_now;
                    self.apply_prepared(f, &fresh, Source::Dump(seq), now);
                }
                if untouched(self) {
                    self.stats.lookup_gone += 1;
                    self.remove_probe(&asked_probe, began_at);
                }
            }
            LookupAnswer::Gone => {
                if untouched(self) {
                    self.stats.lookup_gone += 1;
                    self.remove_probe(&asked_probe, began_at);
                }
            }
            LookupAnswer::Failed => {
                let key = self.inst(prepared.slot).key;
                let scope = &mut self.lookups[pos].scope;
                match scope
                    .iter_mut()
                    .find(|(s, k, _)| *s == prepared.slot && *k == key)
                {
                    Some(entry) => entry.2 = true,
                    None => scope.push((prepared.slot, key, true)),
                }
            }
        }
        Ok(())
    }

    pub(super) fn do_finish_lookup(
        &mut self,
        id: LookupId,
        now: UnixMillis,
        failed: bool,
    ) -> Result<(), EngineError> {
        self.see(now);
        let pos = self
            .lookups
            .iter()
            .position(|l| l.id == id.0)
            .ok_or(EngineError::UnknownLookup(id))?;
        let l = self.lookups.remove(pos);
        if self.resyncs.is_empty() && self.lookups.is_empty() {
            self.tombstones.clear();
        }
        let mut fallback = Vec::new();
        for (slot, key, slot_failed) in l.scope {
            // A slot freed and reused since the lookup began belongs to another instance.
            if self.by_key.get(key) != Some(slot) {
                continue;
            }
            if failed || slot_failed {
                // The resync answers the check (`expiry_asked` stays set until it has).
                fallback.push(key);
            } else {
                self.expiry_answered(slot);
            }
            self.rearm(slot);
        }
        self.queue_resync(fallback);
        if !failed {
            self.stats.lookups += 1;
        }
        Ok(())
    }

    /// A resync or lookup covering `slot` finished: it answered any check asked for.
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
