//! Flow reports, from events and from dumps: which instance a flow is inbound for,
//! whether it counts under the policy, and storing, updating and removing it.

use super::flows::{
    FlowRec, FlowTable, Found, NIL, Probe, STATE_UNKNOWN, ShapeKey, Vacant, addr_bits, bits_addr,
};
use super::instance::{Inst, Q_COUNT_TCP, Q_COUNT_UDP, Q_FILTERS, Q_MAY_WAKE};
use super::{Engine, UnixMillis};
use crate::flow::{EventKind, Flow, TcpState, Tuple, proto};

/// A flow event with its addresses converted, identity hashed and instance found.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Prepared {
    /// Original source (the client), as [`addr_bits`].
    pub remote: u128,
    /// Original destination, as [`addr_bits`].
    pub orig_dst: u128,
    /// The identity's [`Probe::hash32`], when `slot` is set.
    pub hash: u32,
    /// The instance the flow is inbound for, or [`NIL`].
    pub slot: u32,
    /// The guest is the original destination (else it is the reply source).
    pub guest_is_orig_dst: bool,
}

impl Prepared {
    /// Not inbound for any instance.
    pub const NONE: Self = Self {
        remote: 0,
        orig_dst: 0,
        hash: 0,
        slot: NIL,
        guest_is_orig_dst: false,
    };

    /// Whether the flow is inbound for an instance.
    #[inline]
    pub(crate) fn classified(&self) -> bool {
        self.slot != NIL
    }

    /// The flow's identity.
    #[inline(always)]
    pub(crate) fn probe(&self, flow: &Flow) -> Probe {
        Probe {
            remote: self.remote,
            orig_dst: self.orig_dst,
            sport: flow.orig.src_port,
            dport: flow.orig.dst_port,
            proto: flow.protocol,
            zone: flow.zone,
            id: flow.id,
        }
    }
}

/// How a flow report reached the engine.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Event(EventKind),
    /// An entry of the dump (or an answer of the lookup) with this sequence number.
    Dump(u32),
}

impl Engine {
    /// Converts a flow's addresses once, computes its identity and hash, and finds the
    /// instance it is inbound for: the reply source (the responder, also under DNAT) or
    /// the original destination. Flows whose client is the instance itself are its own
    /// outbound traffic.
    #[inline(always)]
    pub(super) fn prepare(&self, flow: &Flow) -> Prepared {
        let mut p = self.prepare_unchecked(flow);
        self.drop_outbound(&mut p);
        p
    }

    /// [`Engine::prepare`] without the outbound check, which reads the instance's line:
    /// the batch path does it in a later stage, with many such loads in flight at once.
    #[inline(always)]
    pub(super) fn prepare_unchecked(&self, flow: &Flow) -> Prepared {
        if flow.protocol != proto::TCP && flow.protocol != proto::UDP {
            return Prepared::NONE;
        }
        let reply_src = addr_bits(flow.reply.src);
        let orig_dst = addr_bits(flow.orig.dst);
        let (slot, guest_is_orig_dst) = match self.by_addr.get(reply_src) {
            Some(s) => (s, reply_src == orig_dst),
            None => match self.by_addr.get(orig_dst) {
                Some(s) => (s, true),
                None => return Prepared::NONE,
            },
        };
        let mut p = Prepared {
            remote: addr_bits(flow.orig.src),
            orig_dst,
            hash: 0,
            slot,
            guest_is_orig_dst,
        };
        p.hash = p.probe(flow).hash32();
        p
    }

    /// Unclassifies a flow whose client is its instance itself (outbound traffic).
    #[inline(always)]
    pub(super) fn drop_outbound(&self, p: &mut Prepared) {
        if p.classified() && self.inst(p.slot).owns(p.remote) {
            *p = Prepared::NONE;
        }
    }

    /// Whether a stored flow counts under the instance's policy (stored flows are
    /// always in a live state). Without a policy, hypeman's rule: TCP only.
    #[inline(always)]
    fn counts(inst: &Inst, rec: &FlowRec, shape: &ShapeKey) -> bool {
        let bit = match rec.proto {
            proto::TCP => Q_COUNT_TCP,
            proto::UDP => Q_COUNT_UDP,
            _ => return false,
        };
        if inst.quick & bit == 0 {
            return false;
        }
        if inst.quick & Q_FILTERS == 0 {
            return true;
        }
        Self::counts_filtered(inst, rec, shape)
    }

    /// [`Engine::counts`] under a policy that ignores some ports or sources.
    #[cold]
    fn counts_filtered(inst: &Inst, rec: &FlowRec, shape: &ShapeKey) -> bool {
        let Some(p) = inst.spec.policy.as_ref() else {
            return true;
        };
        let guest_port = if shape.guest_is_orig_dst {
            rec.dport
        } else {
            rec.rsport
        };
        !p.ignores_port(guest_port)
            && (p.ignore_source_cidrs.is_empty() || !p.ignores_source(bits_addr(rec.remote_bits())))
    }

    pub(super) fn apply_flow(&mut self, flow: &Flow, source: Source, now: UnixMillis) -> bool {
        let prepared = self.prepare(flow);
        self.apply_prepared(flow, &prepared, source, now)
    }

    /// [`Engine::apply_flow`] with the preparation already done.
    #[inline(always)]
    pub(super) fn apply_prepared(
        &mut self,
        flow: &Flow,
        prepared: &Prepared,
        source: Source,
        now: UnixMillis,
    ) -> bool {
        if !prepared.classified() {
            return false;
        }
        let probe = prepared.probe(flow);
        match self.flows.lookup_at(&probe, prepared.hash) {
            Ok(found) => self.apply_known(flow, prepared, found, source, now),
            Err(vacant) => self.apply_unknown(flow, prepared, vacant, source, now),
        }
        true
    }

    /// A report of a flow already stored.
    #[inline(always)]
    fn apply_known(
        &mut self,
        flow: &Flow,
        prepared: &Prepared,
        found: Found,
        source: Source,
        now: UnixMillis,
    ) {
        let tcp = flow.protocol == proto::TCP;
        let finished = tcp && flow.tcp_state.is_some_and(TcpState::is_finished);
        if source == Source::Event(EventKind::Destroy) || finished {
            // An event saying the flow ended outranks any dump entry read before it.
            if !matches!(source, Source::Dump(_)) {
                self.tombstone(prepared.probe(flow), now);
            }
            let rec = self.flows.rec(found.rec);
            // The DESTROY's own state when it has one, else the last one seen.
            let last = flow.tcp_state.map_or(rec.state, |s| s.0);
            let suspect = tcp && !finished && rec.counted() && live_tcp_state(last);
            self.remove_found(found, now);
            if suspect {
                self.suspect_end(prepared.slot, now);
            }
            return;
        }
        let seq = self.touch_seq;
        let rec = self.flows.rec_mut(found.rec);
        // Written only when changed: most events leave the record as it is, and a clean
        // line costs no write-back.
        if rec.touch != seq {
            rec.touch = seq;
        }
        if tcp
            && let Some(st) = flow.tcp_state
            && rec.state != st.0
        {
            rec.state = st.0;
        }
        if !rec.counted() {
            if source == Source::Event(EventKind::New)
                && self.inst(prepared.slot).quick & Q_MAY_WAKE != 0
            {
                let rec = *self.flows.rec(found.rec);
                let shape = *self.flows.shape(rec.shape);
                self.wake_not_counted(prepared.slot, &rec, &shape);
            }
            return;
        }
        if let Source::Event(kind) = source {
            self.activity(prepared.slot, now, false);
            if kind == EventKind::New && self.maybe_wake(prepared.slot, flow) {
                self.flows.rec_mut(found.rec).set_asked_wake();
            }
        }
        if !tcp {
            self.note_expiry(prepared.slot, flow, now);
        }
    }

    /// A report of a flow not stored yet.
    #[inline(never)]
    fn apply_unknown(
        &mut self,
        flow: &Flow,
        prepared: &Prepared,
        vacant: Vacant,
        source: Source,
        now: UnixMillis,
    ) {
        let probe = prepared.probe(flow);
        match source {
            Source::Event(EventKind::Destroy) => {
                self.tombstone(probe, now);
                return;
            }
            // Destroyed after the dump began: the entry is older than the DESTROY. (One
            // destroyed before is a new entry that got the same id.)
            Source::Dump(seq)
                if self
                    .tombstones
                    .get(&probe)
                    .is_some_and(|&(_, at_seq)| (at_seq.wrapping_sub(seq) as i32) >= 0) =>
            {
                return;
            }
            _ => {}
        }
        let tcp = flow.protocol == proto::TCP;
        let state = if tcp {
            match flow.tcp_state {
                Some(st) if st.is_finished() => {
                    // An event saying the flow ended outranks any dump entry read
                    // before it.
                    if !matches!(source, Source::Dump(_)) {
                        self.tombstone(probe, now);
                    }
                    return;
                }
                Some(st) => st.0,
                // Missing protoinfo on an unknown flow: assume live (safe side).
                None => STATE_UNKNOWN,
            }
        } else {
            0
        };
        let slot = prepared.slot;
        let rdst = addr_bits(flow.reply.dst);
        let reply_src = addr_bits(flow.reply.src);
        let shape_key = ShapeKey {
            inst: slot,
            orig_dst: probe.orig_dst,
            reply_src,
            reply_dst: (rdst != probe.remote).then_some(rdst),
            guest_is_orig_dst: prepared.guest_is_orig_dst,
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
            hash: prepared.hash,
            sport: probe.sport,
            dport: probe.dport,
            rsport: flow.reply.src_port,
            rdport: flow.reply.dst_port,
            zone: probe.zone,
            proto: probe.proto,
            state,
            flags: 0,
            odst32: 0,
        };
        let counted = Self::counts(self.inst(slot), &rec, &shape_key);
        rec.set_counted(counted);
        if source == Source::Event(EventKind::New) && self.inst(slot).quick & Q_MAY_WAKE != 0 {
            if !counted {
                self.wake_not_counted(slot, &rec, &shape_key);
            } else if self.wake(slot, flow) {
                rec.set_asked_wake();
            }
        }
        self.flows
            .insert_shaped(rec, &shape_key, prepared.hash, Some(vacant));
        if counted {
            let inst = self.inst_mut(slot);
            inst.live += 1;
            let became = inst.live == 1;
            if became {
                self.history_busy(slot, now);
            }
            self.activity(slot, now, became);
            if !tcp {
                self.note_expiry(slot, flow, now);
            }
        }
    }

    /// A counted TCP flow's entry was destroyed while the connection looked alive.
    ///
    /// Conntrack ends an entry without any packet of the connection when someone runs
    /// `conntrack -D`/`-F`, when an ESTABLISHED entry's timeout expires (5 days by
    /// default), or under table pressure: the connection itself may still be open and
    /// idle, and conntrack cannot tell. So no countdown started by such an end may reach
    /// standby without a resync of the instance after a grace (a packet of a live
    /// connection re-creates the entry, loose pickup being the default); and many of
    /// them at once are a flush, answered like lost events.
    #[cold]
    #[inline(never)]
    fn suspect_end(&mut self, slot: u32, now: UnixMillis) {
        self.stats.suspect_ends += 1;
        let grace = self.config.suspect_end_grace_ms;
        if grace == 0 {
            // Off: the flow reports come from a host that decides what an end means.
            return;
        }
        let (start, count) = &mut self.suspect_window;
        if now.saturating_sub(*start) > grace {
            (*start, *count) = (now, 0);
        }
        *count += 1;
        if *count == self.config.suspect_end_burst.max(1) {
            self.do_events_lost(super::ResyncScope::All, now);
        }
        let inst = self.inst_mut(slot);
        if !inst.eligible() {
            return;
        }
        inst.suspect_until = Some(now.saturating_add(grace));
        inst.confirmed_idle = false;
        self.rearm(slot);
    }

    #[inline]
    fn tombstone(&mut self, probe: Probe, now: UnixMillis) {
        if !self.resyncs.is_empty() || !self.lookups.is_empty() {
            self.tombstones.insert(
                probe,
                (
                    now.saturating_add(self.config.tombstone_ttl_ms),
                    self.touch_seq,
                ),
            );
        }
    }

    pub(super) fn remove_probe(&mut self, p: &Probe, at: UnixMillis) {
        if let Some(idx) = self.flows.find(p, p.hash32()) {
            self.remove_flow(idx, at);
        }
    }

    fn remove_flow(&mut self, idx: u32, at: UnixMillis) {
        let (slot, counted) = self.flows.remove(idx);
        self.removed(slot, counted, at);
    }

    /// [`Engine::remove_flow`] for a record just found.
    #[inline]
    fn remove_found(&mut self, found: Found, at: UnixMillis) {
        let (slot, counted) = self.flows.remove_found(found);
        self.removed(slot, counted, at);
    }

    /// Accounts for record `rec` of instance `slot` having been removed.
    #[inline]
    fn removed(&mut self, slot: u32, counted: bool, at: UnixMillis) {
        if counted {
            let inst = self.inst_mut(slot);
            inst.live -= 1;
            if inst.live == 0 {
                self.history_idle(slot, at);
                self.drained(slot, at);
            }
        }
    }

    /// Probes of the instance's flows matching `pred`.
    pub(super) fn collect(
        &self,
        slot: u32,
        pred: impl Fn(&FlowTable, &FlowRec) -> bool,
    ) -> Vec<Probe> {
        self.flows
            .list(slot)
            .filter(|&i| pred(&self.flows, self.flows.rec(i)))
            .map(|i| self.flows.probe_of(i))
            .collect()
    }

    /// Recomputes which flows count (after a policy change).
    pub(super) fn recount(&mut self, slot: u32) {
        let mut live = 0;
        let mut i = self.flows.head(slot);
        while i != NIL {
            let r = *self.flows.rec(i);
            if !r.is_spare() {
                let c = Self::counts(self.inst(slot), &r, self.flows.shape(r.shape));
                self.flows.rec_mut(i).set_counted(c);
                live += u32::from(c);
            }
            i = r.next;
        }
        let inst = self.inst_mut(slot);
        let was = inst.live;
        inst.live = live;
        let now = self.last_now;
        match (was, live) {
            (0, 1..) => self.history_busy(slot, now),
            (1.., 0) => self.history_idle(slot, now),
            _ => {}
        }
        let inst = self.inst_mut(slot);
        if live == 0 {
            // As when the last flow ends (`drained`): a later flow brings its own check.
            inst.udp_check_at = None;
        }
    }

    /// Rebuilds the flow view of record `i` (for explanations and wake-ups).
    pub(super) fn flow_view(&self, i: u32) -> Flow {
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
                .then_some(TcpState(r.state)),
            status: 0,
            mark: 0,
            timeout_s: None,
        }
    }

    /// A counted flow's NEW event: asks for a restore when the instance is in Standby
    /// with wake-on-traffic (see [`Engine::wake`]); returns whether the flow asked.
    #[inline]
    pub(super) fn maybe_wake(&mut self, slot: u32, flow: &Flow) -> bool {
        // Q_MAY_WAKE: in Standby with wake-on-traffic enabled.
        if self.inst(slot).quick & Q_MAY_WAKE == 0 {
            return false;
        }
        self.wake(slot, flow)
    }
}

/// Whether a TCP state (uapi number, or [`STATE_UNKNOWN`]) is one of a connection still
/// open in both directions: SYN_SENT, SYN_RECV, ESTABLISHED, SYN_SENT2, and the
/// states conntrack does not know (IGNORE, RETRANS, unknown). The closing states
/// (FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE) and NONE end normally.
fn live_tcp_state(state: u8) -> bool {
    matches!(
        TcpState(state),
        TcpState::SYN_SENT
            | TcpState::SYN_RECV
            | TcpState::ESTABLISHED
            | TcpState::SYN_SENT2
            | TcpState::IGNORE
            | TcpState::RETRANS
    ) || state == STATE_UNKNOWN
}
