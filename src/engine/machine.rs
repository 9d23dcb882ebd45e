//! The state machine's transitions: registration, flow events, countdowns, standby
//! pipeline, resyncs. The public entry points in `mod.rs` call into these.

use std::net::IpAddr;

use super::flows::{F_COUNTED, FlowRec, NIL, Probe, STATE_UNKNOWN, ShapeKey, addr_bits, bits_addr};
use super::instance::{Inst, Phase};
use super::{
    BeginStandby, Decision, Engine, EngineError, InstanceKey, InstanceSpec, Lifecycle,
    ObserverRequest, OpenResync, Reason, ResyncId, ResyncScope, StandbyOutcome, UnixMillis,
};
use crate::flow::{EventKind, Flow, Tuple, proto};
use crate::policy::Policy;

/// A flow event with its addresses converted, identity hashed and instance found.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Prepared {
    pub probe: Probe,
    /// `probe.hash32()`, when `class` is set.
    pub hash: u32,
    pub reply_src: u128,
    /// Instance slot and whether the guest is the original destination.
    pub class: Option<(u32, bool)>,
}

/// How a flow report reached the engine.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Event(EventKind),
    Dump,
}

impl Engine {
    #[inline]
    pub(crate) fn inst(&self, slot: u32) -> &Inst {
        self.insts[slot as usize].as_ref().expect("live slot")
    }

    #[inline]
    pub(crate) fn inst_mut(&mut self, slot: u32) -> &mut Inst {
        self.insts[slot as usize].as_mut().expect("live slot")
    }

    pub(crate) fn slot(&self, key: InstanceKey) -> Result<u32, EngineError> {
        self.by_key
            .get(&key)
            .copied()
            .ok_or(EngineError::NotFound(key))
    }

    fn live_slots(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.by_key.values().copied().collect();
        v.sort_unstable();
        v
    }

    // ----- registration -------------------------------------------------------------

    fn normalise_spec(&self, mut spec: InstanceSpec) -> Result<InstanceSpec, EngineError> {
        spec.policy = spec.policy.map(Policy::normalized).transpose()?;
        let mut addrs: Vec<IpAddr> = Vec::with_capacity(spec.addresses.len());
        for a in spec.addresses.iter().map(|a| a.to_canonical()) {
            if a.is_unspecified() || a.is_multicast() {
                return Err(EngineError::InvalidAddress(a));
            }
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        spec.addresses = addrs;
        Ok(spec)
    }

    fn check_addresses(&self, slot: Option<u32>, addrs: &[IpAddr]) -> Result<(), EngineError> {
        for a in addrs {
            if let Some(owner) = self.by_addr.get(addr_bits(*a))
                && Some(owner) != slot
            {
                return Err(EngineError::AddressInUse {
                    addr: *a,
                    owner: self.inst(owner).key,
                });
            }
        }
        Ok(())
    }

    pub(crate) fn do_register(
        &mut self,
        key: InstanceKey,
        spec: InstanceSpec,
        now: UnixMillis,
    ) -> Result<(), EngineError> {
        self.see(now);
        if self.by_key.contains_key(&key) {
            return Err(EngineError::AlreadyRegistered(key));
        }
        let spec = self.normalise_spec(spec)?;
        self.check_addresses(None, &spec.addresses)?;
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.insts.push(None);
                (self.insts.len() - 1) as u32
            }
        };
        let mut inst = Inst::new(key, spec, now);
        // Flows of an instance registered while events are known lost, or while a full
        // resync runs, are unknown until that resync finishes.
        if let Some(seq) = self.all_lost_seq {
            inst.lost_seq = Some(seq);
            inst.resync_requested = self.all_resync_requested;
        } else if let Some(r) = self.resyncs.iter().find(|r| r.scope.is_none()) {
            inst.lost_seq = Some(r.id);
            inst.resync_requested = true;
        }
        for a in &inst.spec.addresses {
            self.by_addr.insert(addr_bits(*a), slot);
        }
        if !inst.spec.addresses.is_empty() {
            self.addr_gen += 1;
        }
        self.insts[slot as usize] = Some(inst);
        self.by_key.insert(key, slot);
        self.refresh(slot, now);
        Ok(())
    }

    pub(crate) fn do_update(
        &mut self,
        key: InstanceKey,
        spec: InstanceSpec,
        now: UnixMillis,
    ) -> Result<(), EngineError> {
        self.see(now);
        let slot = self.slot(key)?;
        let spec = self.normalise_spec(spec)?;
        self.check_addresses(Some(slot), &spec.addresses)?;

        let old_addrs = std::mem::take(&mut self.inst_mut(slot).spec.addresses);
        let removed: Vec<u128> = old_addrs
            .iter()
            .filter(|a| !spec.addresses.contains(a))
            .map(|a| addr_bits(*a))
            .collect();
        let changed = !removed.is_empty() || spec.addresses.iter().any(|a| !old_addrs.contains(a));
        for b in &removed {
            self.by_addr.remove(*b);
        }
        for a in &spec.addresses {
            self.by_addr.insert(addr_bits(*a), slot);
        }
        if changed {
            self.addr_gen += 1;
        }

        {
            let inst = self.inst_mut(slot);
            let was_running = inst.spec.lifecycle == Lifecycle::Running;
            match spec.lifecycle {
                Lifecycle::Running if !was_running => inst.running_since = Some(now),
                Lifecycle::Running => {}
                _ => inst.running_since = None,
            }
            if spec.lifecycle != Lifecycle::Standby {
                inst.wake_sent = false;
            }
            // The persisted runtime in an update is the host's copy of what we told it;
            // our own record of it is newer, so only the rest of the spec is taken.
            let runtime = inst.spec.runtime;
            inst.spec = spec;
            inst.spec.runtime = runtime;
            inst.spec_changed();
        }

        if !removed.is_empty() {
            let stale = self.collect(slot, |t, r| removed.contains(&t.shape(r.shape).guest()));
            for p in stale {
                self.remove_probe(&p, now);
            }
        }
        self.recount(slot);
        self.cancel_standby(slot, Reason::IdleTimeoutNotElapsed);
        self.refresh(slot, now);
        // Give the cancelled standby a reason that matches the new state.
        let reason = self.status_of(slot, now).reason;
        let inst = self.inst_mut(slot);
        if inst.phase == Phase::EmittedCancelled {
            inst.cancel_reason = reason;
        }
        Ok(())
    }

    pub(crate) fn do_unregister(
        &mut self,
        key: InstanceKey,
        now: UnixMillis,
    ) -> Result<(), EngineError> {
        self.see(now);
        let slot = self.slot(key)?;
        self.remove_instance(slot, now);
        Ok(())
    }

    fn remove_instance(&mut self, slot: u32, now: UnixMillis) {
        loop {
            let head = self.flows.head(slot);
            if head == NIL {
                break;
            }
            self.flows.remove(head);
        }
        let inst = self.insts[slot as usize].take().expect("live slot");
        self.by_key.remove(&inst.key);
        for a in &inst.spec.addresses {
            self.by_addr.remove(addr_bits(*a));
        }
        if !inst.spec.addresses.is_empty() {
            self.addr_gen += 1;
        }
        self.deadlines.remove(slot);
        self.free_slots.push(slot);
        let key = inst.key;
        // Undrained decisions about it are void; keep the coalescing index right.
        self.decisions.retain(|d| match d {
            Decision::Standby { key: k } | Decision::PersistRuntime { key: k, .. } => *k != key,
            Decision::Wake { key: k, .. } => *k != key,
        });
        for i in 0..self.decisions.len() {
            if let Decision::PersistRuntime { key: k, .. } = self.decisions[i]
                && let Some(&s) = self.by_key.get(&k)
            {
                let epoch = self.drain_epoch;
                let other = self.inst_mut(s);
                other.persist_idx = i as u32;
                other.persist_epoch = epoch;
            }
        }
        self.requests
            .retain(|r| *r != ObserverRequest::Confirm(key));
        if inst.phase == Phase::Queued {
            self.queued -= 1;
        }
        if inst.phase.holds_slot() {
            self.free_slot(now);
        }
    }

    /// Re-evaluates an instance after its spec or flows changed wholesale (hypeman's
    /// refresh): clears state when ineligible, seeds or resumes the countdown otherwise.
    fn refresh(&mut self, slot: u32, now: UnixMillis) {
        let inst = self.inst_mut(slot);
        if !inst.eligible() {
            let had = inst.idle_since.is_some()
                || inst.last_inbound.is_some()
                || inst.persisted.is_some();
            inst.idle_since = None;
            inst.last_inbound = None;
            inst.hold_until = None;
            inst.retry_at = None;
            inst.failures = 0;
            inst.confirm_failed = false;
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

    // ----- flows --------------------------------------------------------------------

    /// Converts a flow's addresses once, computes its identity and hash, and finds the
    /// instance it is inbound for: the reply source (the responder, also under DNAT) or
    /// the original destination. Flows whose client is the instance itself are its own
    /// outbound traffic.
    #[inline]
    pub(crate) fn prepare(&self, flow: &Flow) -> Prepared {
        let probe = Probe {
            remote: addr_bits(flow.orig.src),
            orig_dst: addr_bits(flow.orig.dst),
            sport: flow.orig.src_port,
            dport: flow.orig.dst_port,
            proto: flow.protocol,
            zone: flow.zone,
            id: flow.id,
        };
        let mut p = Prepared {
            probe,
            hash: 0,
            reply_src: 0,
            class: None,
        };
        if flow.protocol != proto::TCP && flow.protocol != proto::UDP {
            return p;
        }
        p.reply_src = addr_bits(flow.reply.src);
        let odst = probe.orig_dst;
        let found = match self.by_addr.get(p.reply_src) {
            Some(s) => Some((s, p.reply_src == odst)),
            None => self.by_addr.get(odst).map(|s| (s, true)),
        };
        if let Some((slot, _)) = found
            && !self.inst(slot).owns(probe.remote)
        {
            p.class = found;
            p.hash = probe.hash32();
        }
        p
    }

    /// Whether a stored flow counts under the instance's policy (stored flows are
    /// always in a live state). Without a policy, hypeman's rule: TCP only.
    #[inline]
    fn counts(policy: Option<&Policy>, rec: &FlowRec, shape: &ShapeKey) -> bool {
        let Some(p) = policy else {
            return rec.proto == proto::TCP;
        };
        let guest_port = if shape.guest_is_orig_dst {
            rec.dport
        } else {
            rec.rsport
        };
        p.counts_protocol(rec.proto)
            && !p.ignores_port(guest_port)
            && (p.ignore_source_cidrs.is_empty() || !p.ignores_source(bits_addr(rec.remote_bits())))
    }

    pub(crate) fn apply_flow(&mut self, flow: &Flow, source: Source, now: UnixMillis) -> bool {
        let prepared = self.prepare(flow);
        self.apply_prepared(flow, &prepared, source, now)
    }

    /// Loads the instance and flow-table lines a classified event will touch.
    #[inline]
    pub(crate) fn warm_instance(&self, slot: u32) {
        std::hint::black_box(self.inst(slot).live);
        let head = self.flows.head(slot);
        self.flows.warm_rec(head, false);
    }

    /// [`Engine::apply_flow`] with the preparation already done.
    pub(crate) fn apply_prepared(
        &mut self,
        flow: &Flow,
        prepared: &Prepared,
        source: Source,
        now: UnixMillis,
    ) -> bool {
        let Some((slot, guest_is_orig_dst)) = prepared.class else {
            return false;
        };
        let probe = prepared.probe;
        let h = prepared.hash;
        let tcp = flow.protocol == proto::TCP;
        match self.flows.find(&probe, h) {
            Some(idx) => {
                if source == Source::Event(EventKind::Destroy) {
                    self.tombstone(probe, now);
                    self.remove_flow(idx, now);
                    return true;
                }
                self.flows.rec_mut(idx).touch = self.touch_seq;
                if tcp && let Some(st) = flow.tcp_state {
                    if st.is_finished() {
                        self.remove_flow(idx, now);
                        return true;
                    }
                    self.flows.rec_mut(idx).state = st.0;
                }
                let counted = self.flows.rec(idx).flags & F_COUNTED != 0;
                if counted && let Source::Event(kind) = source {
                    self.activity(slot, now, false);
                    if kind == EventKind::New {
                        self.maybe_wake(slot, flow);
                    }
                }
            }
            None => {
                match source {
                    Source::Event(EventKind::Destroy) => {
                        self.tombstone(probe, now);
                        return true;
                    }
                    Source::Dump if self.tombstones.contains_key(&probe) => return true,
                    _ => {}
                }
                let state = if tcp {
                    match flow.tcp_state {
                        Some(st) if st.is_finished() => return true,
                        Some(st) => st.0,
                        // Missing protoinfo on an unknown flow: assume live (safe side).
                        None => STATE_UNKNOWN,
                    }
                } else {
                    0
                };
                let rdst = addr_bits(flow.reply.dst);
                let shape_key = ShapeKey {
                    inst: slot,
                    orig_dst: probe.orig_dst,
                    reply_src: prepared.reply_src,
                    reply_dst: (rdst != probe.remote).then_some(rdst),
                    guest_is_orig_dst,
                };
                let shape = self.flows.intern_shape(shape_key);
                let mut rec = FlowRec {
                    remote: probe.remote.to_ne_bytes(),
                    id: probe.id,
                    shape,
                    prev: NIL,
                    next: NIL,
                    first_seen_s: u32::try_from(now / 1000).unwrap_or(u32::MAX),
                    touch: self.touch_seq,
                    hash: h,
                    sport: probe.sport,
                    dport: probe.dport,
                    rsport: flow.reply.src_port,
                    rdport: flow.reply.dst_port,
                    zone: probe.zone,
                    proto: probe.proto,
                    state,
                    flags: 0,
                };
                let counted = Self::counts(self.inst(slot).spec.policy.as_ref(), &rec, &shape_key);
                if counted {
                    rec.flags |= F_COUNTED;
                }
                self.flows.insert(rec, h);
                let inst = self.inst_mut(slot);
                inst.flows += 1;
                if counted {
                    inst.live += 1;
                    let became = inst.live == 1;
                    self.activity(slot, now, became);
                    if source == Source::Event(EventKind::New) {
                        self.maybe_wake(slot, flow);
                    }
                }
            }
        }
        true
    }

    fn tombstone(&mut self, probe: Probe, now: UnixMillis) {
        if !self.resyncs.is_empty() {
            self.tombstones
                .insert(probe, now.saturating_add(self.config.tombstone_ttl_ms));
        }
    }

    fn remove_probe(&mut self, p: &Probe, at: UnixMillis) {
        if let Some(idx) = self.flows.find(p, p.hash32()) {
            self.remove_flow(idx, at);
        }
    }

    fn remove_flow(&mut self, idx: u32, at: UnixMillis) {
        let slot = self.flows.shape(self.flows.rec(idx).shape).inst;
        let rec = self.flows.remove(idx);
        let inst = self.inst_mut(slot);
        inst.flows -= 1;
        if rec.flags & F_COUNTED != 0 {
            inst.live -= 1;
            if inst.live == 0 {
                self.drained(slot, at);
            }
        }
    }

    /// Probes of the instance's flows matching `pred`.
    fn collect(
        &self,
        slot: u32,
        pred: impl Fn(&super::flows::FlowTable, &FlowRec) -> bool,
    ) -> Vec<Probe> {
        let mut out = Vec::new();
        let mut i = self.flows.head(slot);
        while i != NIL {
            let r = self.flows.rec(i);
            if pred(&self.flows, r) {
                out.push(self.flows.probe_of(i));
            }
            i = r.next;
        }
        out
    }

    /// Recomputes which flows count (after a policy change).
    fn recount(&mut self, slot: u32) {
        let mut live = 0;
        let mut i = self.flows.head(slot);
        while i != NIL {
            let r = *self.flows.rec(i);
            let c = Self::counts(
                self.inst(slot).spec.policy.as_ref(),
                &r,
                self.flows.shape(r.shape),
            );
            let rm = self.flows.rec_mut(i);
            if c {
                rm.flags |= F_COUNTED;
                live += 1;
            } else {
                rm.flags &= !F_COUNTED;
            }
            i = r.next;
        }
        self.inst_mut(slot).live = live;
    }

    /// A qualifying flow was created or changed.
    fn activity(&mut self, slot: u32, now: UnixMillis, became_live: bool) {
        let inst = self.inst_mut(slot);
        if !inst.eligible() {
            return;
        }
        inst.last_inbound = Some(now.max(inst.last_inbound.unwrap_or(0)));
        if inst.phase != Phase::None && inst.phase != Phase::Executing {
            self.cancel_standby(slot, Reason::ActiveInboundConnections);
        }
        if became_live {
            let inst = self.inst_mut(slot);
            inst.idle_since = None;
            inst.retry_at = None;
            inst.failures = 0;
            inst.confirm_failed = false;
            self.deadlines.remove(slot);
            self.persist(slot);
        }
    }

    /// The last qualifying flow ended at `at`.
    fn drained(&mut self, slot: u32, at: UnixMillis) {
        let inst = self.inst_mut(slot);
        if !inst.eligible() {
            return;
        }
        inst.idle_since = Some(at.max(inst.last_inbound.unwrap_or(0)));
        self.persist(slot);
        self.rearm(slot);
    }

    fn maybe_wake(&mut self, slot: u32, flow: &Flow) {
        let inst = self.inst(slot);
        if inst.spec.lifecycle != Lifecycle::Standby || inst.wake_sent {
            return;
        }
        if !inst.enabled_policy().is_some_and(|p| p.wake_on_traffic) {
            return;
        }
        let key = inst.key;
        self.inst_mut(slot).wake_sent = true;
        self.stats.wake_decisions += 1;
        self.decisions.push(Decision::Wake {
            key,
            protocol: flow.protocol,
            flow: Tuple::new(
                flow.orig.src,
                flow.orig.src_port,
                flow.orig.dst,
                flow.orig.dst_port,
            ),
        });
    }

    // ----- persistence --------------------------------------------------------------

    /// Queues the instance's runtime for persistence when it differs from what the
    /// host has; at most one pending entry per instance, holding the newest value.
    fn persist(&mut self, slot: u32) {
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

    // ----- deadlines and the standby pipeline ---------------------------------------

    /// Arms (or disarms) the instance's standby deadline from its current state.
    pub(crate) fn rearm(&mut self, slot: u32) {
        let inst = self.inst(slot);
        match inst.phase {
            Phase::None => match inst.due_at() {
                Some(at) => self.deadlines.set(slot, at),
                None => self.deadlines.remove(slot),
            },
            // A pending confirmation keeps its own watchdog deadline.
            Phase::Confirming => {}
            _ => self.deadlines.remove(slot),
        }
    }

    /// Why standby is blocked engine-wide or by lost events.
    pub(crate) fn blocked(&self, slot: u32) -> Option<Reason> {
        if self.observer_error.is_some() {
            Some(Reason::ObserverError)
        } else if self.inst(slot).lost_seq.is_some() {
            Some(Reason::ResyncPending)
        } else {
            None
        }
    }

    pub(crate) fn do_tick(&mut self, now: UnixMillis) {
        self.see(now);
        if !self.tombstones.is_empty() {
            self.tombstones.retain(|_, exp| *exp > now);
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
            let key = inst.key;
            let wait = inst.idle_timeout().max(1_000);
            if !self.requests.contains(&ObserverRequest::Confirm(key)) {
                self.requests.push(ObserverRequest::Confirm(key));
            }
            self.deadlines.set(slot, now.saturating_add(wait));
            return;
        }
        if inst.phase != Phase::None {
            return;
        }
        let Some(due) = inst.due_at() else { return };
        if due > now {
            // Early or stale delivery (a hold, a re-arm, a clock step): wait again.
            self.deadlines.set(slot, due);
            return;
        }
        if self.blocked(slot).is_some() {
            // Re-armed when the block lifts.
            return;
        }
        self.request_standby(slot, now, false);
    }

    fn request_standby(&mut self, slot: u32, now: UnixMillis, confirmed: bool) {
        if self.config.confirm_before_standby && !confirmed {
            let seq = self.next_resync;
            let inst = self.inst_mut(slot);
            inst.phase = Phase::Confirming;
            inst.confirm_seq = seq;
            let key = inst.key;
            let wait = inst.idle_timeout().max(1_000);
            if !self.requests.contains(&ObserverRequest::Confirm(key)) {
                self.requests.push(ObserverRequest::Confirm(key));
            }
            self.deadlines.set(slot, now.saturating_add(wait));
            return;
        }
        self.inst_mut(slot).confirm_failed = false;
        if self.in_flight < self.config.max_concurrent_standbys.max(1) {
            self.emit_standby(slot);
        } else {
            let inst = self.inst_mut(slot);
            inst.phase = Phase::Queued;
            inst.ticket += 1;
            let ticket = inst.ticket;
            self.queued += 1;
            if self.queue.len() > 2 * self.queued as usize + 64 {
                let insts = &self.insts;
                self.queue.retain(|&(s, t)| {
                    insts[s as usize]
                        .as_ref()
                        .is_some_and(|i| i.phase == Phase::Queued && i.ticket == t)
                });
            }
            self.queue.push_back((slot, ticket));
            self.deadlines.remove(slot);
        }
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
    pub(crate) fn cancel_standby(&mut self, slot: u32, reason: Reason) {
        let inst = self.inst_mut(slot);
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

    fn free_slot(&mut self, now: UnixMillis) {
        self.in_flight -= 1;
        while self.in_flight < self.config.max_concurrent_standbys.max(1) {
            let Some((slot, ticket)) = self.queue.pop_front() else {
                break;
            };
            let valid = self.insts[slot as usize]
                .as_ref()
                .is_some_and(|i| i.phase == Phase::Queued && i.ticket == ticket);
            if !valid {
                continue;
            }
            self.queued -= 1;
            self.inst_mut(slot).phase = Phase::None;
            let due = self.inst(slot).due_at();
            if due.is_some_and(|d| d <= now) && self.blocked(slot).is_none() {
                self.emit_standby(slot);
            } else {
                self.rearm(slot);
            }
        }
    }

    pub(crate) fn do_begin_standby(
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

    pub(crate) fn do_report_standby(
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
                inst.idle_since = None;
                inst.last_inbound = None;
                inst.hold_until = None;
                inst.retry_at = None;
                inst.failures = 0;
                inst.confirm_failed = false;
                inst.spec.lifecycle = Lifecycle::Standby;
                inst.spec_changed();
                inst.running_since = None;
                inst.wake_sent = false;
                self.persist(slot);
                self.deadlines.remove(slot);
                // A client that connected while the snapshot was written would be
                // stranded: wake the instance right back when its policy allows.
                if self.inst(slot).live > 0 {
                    let mut i = self.flows.head(slot);
                    while i != NIL && self.flows.rec(i).flags & F_COUNTED == 0 {
                        i = self.flows.rec(i).next;
                    }
                    if i != NIL {
                        let flow = self.flow_view(i);
                        self.maybe_wake(slot, &flow);
                    }
                }
                self.free_slot(now);
            }
            StandbyOutcome::NotFound => {
                self.free_slot(now);
                self.remove_instance(slot, now);
            }
            StandbyOutcome::Failed => {
                let initial = self.config.standby_retry_initial_ms.max(1);
                let inst = self.inst_mut(slot);
                inst.failures = inst.failures.saturating_add(1);
                // Never re-arm while flows are live: activity already restarted things.
                if inst.live == 0 && inst.eligible() {
                    let shift = (inst.failures - 1).min(40);
                    let backoff = initial
                        .saturating_mul(1u64 << shift)
                        .min(inst.idle_timeout().max(1));
                    inst.retry_at = Some(now.saturating_add(backoff));
                    if inst.idle_since.is_none() {
                        inst.idle_since = Some(now);
                    }
                }
                self.persist(slot);
                self.free_slot(now);
                self.rearm(slot);
            }
        }
        Ok(())
    }

    /// Rebuilds the flow view of record `i` (for explanations and wake-ups).
    pub(crate) fn flow_view(&self, i: u32) -> Flow {
        let r = self.flows.rec(i);
        let s = self.flows.shape(r.shape);
        let remote = bits_addr(r.remote_bits());
        Flow {
            protocol: r.proto,
            orig: Tuple::new(remote, r.sport, bits_addr(s.orig_dst), r.dport),
            reply: Tuple::new(
                bits_addr(s.reply_src),
                r.rsport,
                s.reply_dst.map_or(remote, bits_addr),
                r.rdport,
            ),
            zone: r.zone,
            id: r.id,
            tcp_state: (r.proto == proto::TCP && r.state != STATE_UNKNOWN)
                .then_some(crate::flow::TcpState(r.state)),
            status: 0,
            mark: 0,
        }
    }

    pub(crate) fn do_hold(&mut self, key: InstanceKey, now: UnixMillis) -> Result<(), EngineError> {
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

    // ----- observer health and resyncs ----------------------------------------------

    pub(crate) fn do_set_observer_health(&mut self, error: Option<String>, now: UnixMillis) {
        self.see(now);
        let was_failed = self.observer_error.is_some();
        self.observer_error = error;
        match (was_failed, self.observer_error.is_some()) {
            (false, true) => {
                for slot in self.live_slots() {
                    self.cancel_standby(slot, Reason::ObserverError);
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
                    .filter_map(|k| self.by_key.get(k).map(|&s| (s, *k)))
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            }
        }
    }

    pub(crate) fn do_events_lost(&mut self, scope: ResyncScope, now: UnixMillis) {
        self.see(now);
        let seq = self.next_resync;
        if scope == ResyncScope::All {
            self.all_lost_seq.get_or_insert(seq);
        }
        let mut fresh = Vec::new();
        for (slot, key) in self.scope_slots(&scope) {
            let all_req = self.all_resync_requested;
            let inst = self.inst_mut(slot);
            inst.lost_seq.get_or_insert(seq);
            if !inst.resync_requested && !all_req {
                inst.resync_requested = true;
                fresh.push(key);
            }
            self.cancel_standby(slot, Reason::ResyncPending);
            self.rearm(slot);
        }
        if scope == ResyncScope::All {
            if !self.all_resync_requested {
                self.all_resync_requested = true;
                self.requests
                    .push(ObserverRequest::Resync(ResyncScope::All));
            }
        } else {
            self.queue_resync(fresh);
        }
    }

    /// Adds instances to the one undrained `Resync` request, or queues one.
    fn queue_resync(&mut self, keys: Vec<InstanceKey>) {
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

    pub(crate) fn do_begin_resync(&mut self, scope: ResyncScope, now: UnixMillis) -> ResyncId {
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

    fn take_resync(&mut self, id: ResyncId) -> Result<OpenResync, EngineError> {
        let pos = self
            .resyncs
            .iter()
            .position(|r| r.id == id.0)
            .ok_or(EngineError::UnknownResync(id))?;
        Ok(self.resyncs.remove(pos))
    }

    fn resync_members(&self, r: &OpenResync) -> Vec<u32> {
        match &r.scope {
            None => self.live_slots(),
            Some(v) => v
                .iter()
                .filter(|(s, k)| self.by_key.get(k) == Some(s))
                .map(|(s, _)| *s)
                .collect(),
        }
    }

    pub(crate) fn do_resync_flow(&mut self, id: ResyncId, flow: &Flow) -> Result<(), EngineError> {
        if !self.resyncs.iter().any(|r| r.id == id.0) {
            return Err(EngineError::UnknownResync(id));
        }
        let now = self.last_now;
        self.apply_flow(flow, Source::Dump, now);
        Ok(())
    }

    pub(crate) fn do_finish_resync(
        &mut self,
        id: ResyncId,
        now: UnixMillis,
    ) -> Result<(), EngineError> {
        self.see(now);
        let r = self.take_resync(id)?;
        let members = self.resync_members(&r);
        let seq = r.id as u32;
        for &slot in &members {
            // Flows neither dumped nor mentioned by an event since the resync began are
            // gone; they ended no later than the dump, so count idleness from its start.
            let stale = self.collect(slot, |_, rec| (seq.wrapping_sub(rec.touch) as i32) > 0);
            for p in stale {
                self.remove_probe(&p, r.began_at);
            }
            let inst = self.inst_mut(slot);
            if inst.lost_seq.is_some_and(|l| l <= r.id) {
                inst.lost_seq = None;
                inst.resync_requested = false;
            }
        }
        if r.scope.is_none() && self.all_lost_seq.is_some_and(|l| l <= r.id) {
            self.all_lost_seq = None;
            self.all_resync_requested = false;
        }
        for &slot in &members {
            let inst = self.inst(slot);
            if inst.phase == Phase::Confirming && inst.confirm_seq <= r.id {
                self.inst_mut(slot).phase = Phase::None;
                self.deadlines.remove(slot);
                let inst = self.inst(slot);
                let due = inst.due_at();
                if due.is_some_and(|d| d <= now) && self.blocked(slot).is_none() {
                    self.request_standby(slot, now, true);
                    continue;
                }
            }
            self.rearm(slot);
        }
        if self.resyncs.is_empty() {
            self.tombstones.clear();
        }
        self.stats.resyncs += 1;
        Ok(())
    }

    pub(crate) fn do_fail_resync(
        &mut self,
        id: ResyncId,
        now: UnixMillis,
    ) -> Result<(), EngineError> {
        self.see(now);
        let r = self.take_resync(id)?;
        let members = self.resync_members(&r);
        let mut again = Vec::new();
        for &slot in &members {
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
            let inst = self.inst_mut(slot);
            if inst.lost_seq.is_some() && inst.resync_requested {
                inst.resync_requested = false;
            }
            if inst.lost_seq.is_some() && !inst.resync_requested {
                inst.resync_requested = true;
                again.push(inst.key);
            }
            self.rearm(slot);
        }
        if r.scope.is_none() && self.all_lost_seq.is_some() {
            self.all_resync_requested = true;
            if !self
                .requests
                .contains(&ObserverRequest::Resync(ResyncScope::All))
            {
                self.requests
                    .push(ObserverRequest::Resync(ResyncScope::All));
            }
        } else {
            self.queue_resync(again);
        }
        if self.resyncs.is_empty() {
            self.tombstones.clear();
        }
        Ok(())
    }

    #[inline]
    pub(crate) fn see(&mut self, now: UnixMillis) {
        self.last_now = self.last_now.max(now);
    }
}
