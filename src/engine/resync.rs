//! Observer health, lost events and resyncs (dumps), with the DESTROY tombstones that keep
//! a dump from resurrecting a flow.

use super::flow_events::Source;
use super::flows::{FlowRec, Probe};
use super::instance::Phase;
use super::{
    Engine, EngineError, InstanceKey, ObserverRequest, Reason, ResyncId, ResyncScope, UnixMillis,
};
use crate::flow::Flow;

/// A resync in progress.
#[derive(Debug)]
pub(super) struct OpenResync {
    pub(super) id: u64,
    /// `None` for every instance; else the slots (and keys, to detect reuse) covered.
    pub(super) scope: Option<Vec<(u32, InstanceKey)>>,
    pub(super) began_at: UnixMillis,
}

/// A resync being finished in steps: the instances it covered, how far the steps have
/// gone, and the instances to resync again.
#[derive(Debug)]
pub(super) struct Finishing {
    id: u64,
    members: Vec<(u32, InstanceKey)>,
    next: usize,
    again: Vec<InstanceKey>,
}

impl Engine {
    pub(super) fn do_set_observer_health(&mut self, error: Option<String>, now: UnixMillis) {
        self.see(now);
        let was_failed = self.observer_error.is_some();
        self.observer_error = error;
        match (was_failed, self.observer_error.is_some()) {
            (false, true) => {
                let reason = if self.events_off {
                    Reason::ConntrackEventsOff
                } else {
                    Reason::ObserverError
                };
                for slot in self.live_slots() {
                    self.cancel_standby(slot, reason);
                    self.rearm(slot);
                }
            }
            (true, false) => {
                for slot in self.live_slots() {
                    self.rearm(slot);
                }
            }
            _ => {}
        }
    }

    fn scope_slots(&self, scope: &ResyncScope) -> Vec<(u32, InstanceKey)> {
        match scope {
            ResyncScope::All => self
                .live_slots()
                .into_iter()
                .map(|s| (s, self.inst(s).key))
                .collect(),
            ResyncScope::Instances(keys) => {
                let mut v: Vec<(u32, InstanceKey)> = keys
                    .iter()
                    .filter_map(|k| self.by_key.get(*k).map(|s| (s, *k)))
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            }
        }
    }

    pub(super) fn do_events_lost(&mut self, scope: ResyncScope, now: UnixMillis) {
        self.see(now);
        // Only a resync that begins from now on covers this loss: keep the latest.
        let seq = self.next_resync;
        // A resync still open began before the loss; when it ends, `finish_resync` asks
        // for one more, so nothing is asked for now.
        let all_open = self.resyncs.iter().any(|r| r.scope.is_none());
        if scope == ResyncScope::All {
            self.all_lost_seq = Some(seq);
        }
        let mut fresh = Vec::new();
        for (slot, key) in self.scope_slots(&scope) {
            let all_req = self.all_resync_requested;
            let open = all_open || self.open_resync_covers(slot, key, 0);
            let inst = self.inst_mut(slot);
            inst.lost_seq = Some(seq);
            if !inst.resync_requested && !all_req && !open {
                inst.resync_requested = true;
                fresh.push(key);
            }
            self.cancel_standby(slot, Reason::ResyncPending);
            self.rearm(slot);
        }
        if scope == ResyncScope::All {
            if !self.all_resync_requested && !all_open {
                self.all_resync_requested = true;
                self.requests
                    .push(ObserverRequest::Resync(ResyncScope::All));
            }
        } else {
            self.queue_resync(fresh);
        }
    }

    /// Whether a resync with an id of at least `min_id` is open and covers `slot`.
    fn open_resync_covers(&self, slot: u32, key: InstanceKey, min_id: u64) -> bool {
        self.resyncs.iter().any(|r| {
            r.id >= min_id
                && r.scope
                    .as_ref()
                    .is_none_or(|v| v.iter().any(|&(s, k)| s == slot && k == key))
        })
    }

    /// Queues `request` unless an identical one is still undrained.
    pub(super) fn request_once(&mut self, request: ObserverRequest) {
        if !self.requests.contains(&request) {
            self.requests.push(request);
        }
    }

    /// Adds instances to the one undrained `Resync` request, or queues one.
    pub(super) fn queue_resync(&mut self, keys: Vec<InstanceKey>) {
        if keys.is_empty() {
            return;
        }
        for r in &mut self.requests {
            match r {
                ObserverRequest::Resync(ResyncScope::All) => return,
                ObserverRequest::Resync(ResyncScope::Instances(v)) => {
                    for k in keys {
                        if !v.contains(&k) {
                            v.push(k);
                        }
                    }
                    return;
                }
                _ => {}
            }
        }
        self.requests
            .push(ObserverRequest::Resync(ResyncScope::Instances(keys)));
    }

    pub(super) fn do_begin_resync(&mut self, scope: ResyncScope, now: UnixMillis) -> ResyncId {
        self.see(now);
        let id = self.next_resync;
        self.next_resync += 1;
        self.touch_seq = id as u32;
        let scope = match scope {
            ResyncScope::All => None,
            s => Some(self.scope_slots(&s)),
        };
        self.resyncs.push(OpenResync {
            id,
            scope,
            began_at: now,
        });
        ResyncId(id)
    }

    /// Ends resync `id`, answering it and the slots of its scope still registered.
    fn close_resync(
        &mut self,
        id: ResyncId,
    ) -> Result<(OpenResync, Vec<(u32, InstanceKey)>), EngineError> {
        self.complete_finishing();
        let pos = self
            .resyncs
            .iter()
            .position(|r| r.id == id.0)
            .ok_or(EngineError::UnknownResync(id))?;
        let r = self.resyncs.remove(pos);
        // Tombstones only guard open dumps and lookups.
        if self.resyncs.is_empty() && self.lookups.is_empty() {
            self.tombstones.clear();
        }
        let members = match &r.scope {
            None => self
                .live_slots()
                .into_iter()
                .map(|s| (s, self.inst(s).key))
                .collect(),
            // A slot freed and reused since the resync began belongs to another instance.
            Some(v) => v
                .iter()
                .filter(|(s, k)| self.by_key.get(*k) == Some(*s))
                .copied()
                .collect(),
        };
        Ok((r, members))
    }

    pub(super) fn do_resync_flow(&mut self, id: ResyncId, flow: &Flow) -> Result<(), EngineError> {
        if !self.resyncs.iter().any(|r| r.id == id.0) {
            return Err(EngineError::UnknownResync(id));
        }
        // An entry for a flow an event reported since this resync began is older than
        // that event: the event's view stands.
        let prepared = self.prepare(flow);
        if prepared.classified()
            && let Some(idx) = self.flows.find(&prepared.probe(flow), prepared.hash)
            && (self.flows.rec(idx).touch.wrapping_sub(id.0 as u32) as i32) >= 0
        {
            return Ok(());
        }
        let now = self.last_now;
        self.apply_prepared(flow, &prepared, Source::Dump(id.0 as u32), now);
        Ok(())
    }

    /// Completes a resync left half finished by [`Engine::finish_resync_bounded`].
    fn complete_finishing(&mut self) {
        if let Some(id) = self.finishing.as_ref().map(|f| f.id) {
            let now = self.last_now;
            while !self.finish_step(id, now, usize::MAX) {}
        }
    }

    pub(super) fn do_finish_resync(
        &mut self,
        id: ResyncId,
        now: UnixMillis,
        max_instances: usize,
    ) -> Result<bool, EngineError> {
        self.see(now);
        if self.finishing.as_ref().is_some_and(|f| f.id == id.0) {
            return Ok(self.finish_step(id.0, now, max_instances));
        }
        let (r, members) = self.close_resync(id)?;
        let seq = r.id as u32;
        // Flows neither dumped nor mentioned by an event since the resync began are gone;
        // they ended no later than the dump, so count idleness from its start.
        let stale = |rec: &FlowRec| (seq.wrapping_sub(rec.touch) as i32) > 0;
        let gone: Vec<Probe> = if r.scope.is_none() {
            // Every live instance: one pass over the storage.
            self.flows
                .all()
                .filter(|&i| stale(self.flows.rec(i)))
                .map(|i| self.flows.probe_of(i))
                .collect()
        } else {
            members
                .iter()
                .flat_map(|&(slot, _)| self.collect(slot, |_, rec| stale(rec)))
                .collect()
        };
        for p in gone {
            self.remove_probe(&p, r.began_at);
        }
        if r.scope.is_none() {
            match self.all_lost_seq {
                Some(l) if l <= r.id => {
                    self.all_lost_seq = None;
                    self.all_resync_requested = false;
                }
                Some(l) if !self.resyncs.iter().any(|o| o.scope.is_none() && o.id >= l) => {
                    self.all_resync_requested = true;
                    self.request_once(ObserverRequest::Resync(ResyncScope::All));
                }
                _ => {}
            }
        }
        self.finishing = Some(Finishing {
            id: r.id,
            members,
            next: 0,
            again: Vec::new(),
        });
        Ok(self.finish_step(r.id, now, max_instances))
    }

    /// Applies the end of resync `id` to up to `max` more of its instances; true once
    /// all of them have it.
    fn finish_step(&mut self, id: u64, now: UnixMillis, max: usize) -> bool {
        let Some(mut f) = self.finishing.take() else {
            return true;
        };
        debug_assert_eq!(f.id, id);
        let end = f.members.len().min(f.next.saturating_add(max));
        // Instances unregistered since (their slot maybe reused) are skipped.
        let members: Vec<u32> = f.members[f.next..end]
            .iter()
            .filter(|(s, k)| self.by_key.get(*k) == Some(*s))
            .map(|&(s, _)| s)
            .collect();
        f.next = end;
        // The instances whose flows this dump was the first to read: their countdown
        // (or a persisted one) starts now, under the restart rules.
        for &slot in &members {
            if self.inst(slot).unsynced_seq.is_some_and(|s| s <= id) {
                self.inst_mut(slot).unsynced_seq = None;
                self.refresh(slot, now);
                self.history_start(slot, now);
            }
        }
        for &slot in &members {
            self.expiry_answered(slot);
            let key = self.inst(slot).key;
            match self.inst(slot).lost_seq {
                Some(l) if l <= id => {
                    let inst = self.inst_mut(slot);
                    inst.lost_seq = None;
                    inst.resync_requested = false;
                }
                // Lost while this resync ran: it may have walked past the lost flows.
                // One more, unless a resync begun after the loss is already open.
                Some(l) if !self.open_resync_covers(slot, key, l) => {
                    self.inst_mut(slot).resync_requested = true;
                    f.again.push(key);
                }
                _ => {}
            }
        }
        for &slot in &members {
            let inst = self.inst(slot);
            if inst.phase == Phase::Confirming && inst.confirm_seq <= id {
                self.inst_mut(slot).phase = Phase::None;
                self.deadlines.remove(slot);
                if self.ready_for_standby(slot, now) {
                    self.request_standby(slot, now, true);
                    continue;
                }
                // Confirmed ahead of the deadline: standby at the deadline, unless
                // something invalidates this first.
                if self.inst(slot).due_at().is_some() && self.blocked(slot).is_none() {
                    self.inst_mut(slot).confirmed_idle = true;
                }
            }
            self.rearm(slot);
        }
        if f.next < f.members.len() {
            self.finishing = Some(f);
            return false;
        }
        self.queue_resync(f.again);
        self.stats.resyncs += 1;
        true
    }

    pub(super) fn do_fail_resync(
        &mut self,
        id: ResyncId,
        now: UnixMillis,
    ) -> Result<(), EngineError> {
        self.see(now);
        let (r, members) = self.close_resync(id)?;
        let mut again = Vec::new();
        for &(slot, _) in &members {
            let inst = self.inst_mut(slot);
            if inst.phase == Phase::Confirming && inst.confirm_seq <= r.id {
                // Could not confirm: stay awake and restart the countdown.
                inst.phase = Phase::None;
                inst.confirm_failed = true;
                if inst.live == 0 && inst.eligible() {
                    inst.idle_since = Some(now.max(inst.idle_since.unwrap_or(0)));
                }
                self.deadlines.remove(slot);
                self.persist(slot);
            }
            self.expiry_unanswered(slot, now);
            // The failed dump answered any request covering the loss (or the first read
            // of the instance's flows): ask again.
            let inst = self.inst_mut(slot);
            if inst.lost_seq.is_some() {
                inst.resync_requested = true;
                again.push(inst.key);
            } else if inst.unsynced_seq.is_some_and(|s| s <= r.id) {
                again.push(inst.key);
            }
            self.rearm(slot);
        }
        if r.scope.is_none() && self.all_lost_seq.is_some() {
            self.all_resync_requested = true;
            self.request_once(ObserverRequest::Resync(ResyncScope::All));
        } else {
            self.queue_resync(again);
        }
        Ok(())
    }
}
