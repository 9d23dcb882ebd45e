//! Classic BPF socket filter for the event socket, and a small userspace interpreter that
//! runs it in unit tests.
//!
//! The program drops, in the kernel, every ctnetlink event that cannot change a decision;
//! the kernel then never queues, wakes or copies for it. It has two parts.
//!
//! **State part** (always installed, see [`event_filter`]). A TCP UPDATE is dropped when
//! its new state is one of ESTABLISHED, FIN_WAIT, CLOSE_WAIT, LAST_ACK and SYN_SENT2, or
//! SYN_RECV on an entry that was never ASSURED. Everything else passes:
//! - NEW (`IPCTNL_MSG_CT_NEW` with `NLM_F_CREATE`; the kernel sets `NLM_F_CREATE |
//!   NLM_F_EXCL` on it and no flag on an UPDATE): it makes a flow count and may wake;
//! - DESTROY (`IPCTNL_MSG_CT_DELETE`): it removes the flow, and its own `CTA_PROTOINFO`
//!   tells a normal end from a suspect one (`conntrack -D`, an expired ESTABLISHED);
//! - every non-TCP event: UDP expiry is judged from the timeouts in UPDATEs;
//! - a TCP UPDATE without `CTA_PROTOINFO` (mark, label, helper changes): the engine
//!   stores an unknown flow on it as live, so it can change a decision;
//! - a TCP UPDATE into NONE, TIME_WAIT or CLOSE: the flow stops counting;
//! - a TCP UPDATE out of them. In `nf_conntrack_proto_tcp.c` a SYN on a TIME_WAIT or
//!   CLOSE entry either kills it (a DESTROY, then a NEW for the new connection) or is
//!   ignored and, when the peer's SYN/ACK answers it, moves the entry straight to
//!   SYN_RECV. No other live state is reachable from a finished one. A SYN_RECV UPDATE
//!   is therefore kept when the entry is ASSURED (it was ESTABLISHED before, so this is
//!   a reopen), and dropped otherwise (the common case: the reply of a fresh
//!   handshake, whose NEW already made the flow count). SYN_SENT is kept too, for
//!   kernels that would reopen through it.
//!
//! The one reopen this cannot see is that of a CLOSE entry that never reached
//! ESTABLISHED (a reset handshake) through the ignored-SYN path; such a flow is found by
//! the next dump, at the latest the confirmation before every standby (the periodic
//! check looks up only the flows the engine tracks).
//!
//! What the engine loses with the dropped UPDATEs is no decision: a stored flow's state
//! stays that of its last passed event (SYN_SENT for an established connection, in
//! explanations), and `last_inbound_activity_at` advances on passed events only. The
//! reply tuple, which carries the guest's address under DNAT, is in every event, NEW
//! included. An UPDATE of a flow the engine does not know (its NEW was lost, or came
//! before its address was registered) is the one case where a dropped event would have
//! made a flow count sooner; both cases are followed by a dump of the addresses.
//!
//! **Address part** (when addresses are registered, see [`event_filter`]): an event
//! passes only when its reply source or original destination is a registered address,
//! or, for a family whose addresses do not fit the program exactly, lies inside one of
//! the prefixes covering them ([`AddressPlan`]). Each family (IPv4, IPv4-mapped IPv6
//! included; IPv6) is held in one of two forms:
//! - **exact** whenever both families fit the kernel's 4,096 instructions so (the usual
//!   case: up to 1,991 IPv4 addresses, about 250 IPv6 ones);
//! - **prefixes** otherwise. Addresses are aggregated bottom-up: a step replaces the
//!   smallest prefix covering two neighbouring entries (and everything inside it) with
//!   that prefix. Steps that cover nothing new (sibling merges) are always taken; then
//!   the steps adding the fewest uncovered addresses (ties: the lower network) are
//!   taken until the program fits. A family whose exact (or else lossless) form takes
//!   at most half the room keeps it and leaves the rest to the other; otherwise each
//!   gets half. The result is deterministic: it depends on the set only, not its order.
//!   IPv4 prefixes are compared by length group (one load and mask, then a compare per
//!   prefix), IPv6 ones word by word with the last partial word masked.
//!
//! An event passed for an address inside a prefix but not registered reaches the
//! engine, whose address index finds no instance for it: it is counted as unmatched
//! (`flow_events_unmatched`) and changes nothing. [`plan_passes`] states the rule for
//! either form; [`EventSocket::address_filter_form`](super::EventSocket::address_filter_form)
//! reports the form in place.
//!
//! Anything the program cannot judge (another subsystem, an unknown family, a missing
//! attribute) is passed, so the filter can only save work, never lose an event the
//! observer needs. [`passes`] states the same rule over a parsed event; the unit tests,
//! the fuzz target and the recorded-stream test check that the two agree.
//!
//! Program size: the state part takes 47 instructions, IPv4 addresses
//! about 2 instructions each (both tuples), IPv6 addresses about 16, a prefix as much as
//! an address plus 2 per IPv4 length group (an IPv6 prefix 2 per 32-bit word it spans,
//! plus a mask). A set of a few subnets, like 10,000 IPv4 and 2,000 IPv6 addresses in
//! two ranges (10.40.0.0 up, fd40:: up), takes 5 + 6 prefixes and 268 instructions.

use std::net::IpAddr;

use super::wire::{self, cta};
use crate::flow::{EventKind, Flow, TcpState, proto};

pub use libc::sock_filter as Insn;

/// The kernel's limit on classic BPF program length (`BPF_MAXINSNS`).
pub(crate) const MAX_INSNS: usize = 4096;

/// Length of the program with the state part and no address part ([`state_filter`]).
pub(crate) const STATE_PART_INSNS: usize = 47;

/// The most IPv4 addresses (with no IPv6 address) one program holds.
#[cfg(test)]
const MAX_V4_ADDRESSES: usize = 1_991;

/// `IPS_ASSURED` in `CTA_STATUS`.
pub(crate) const IPS_ASSURED: u32 = 1 << 2;

const LD_B_ABS: u16 = 0x30;
const LD_W_IND: u16 = 0x40;
const LD_B_IND: u16 = 0x50;
const LD_IMM: u16 = 0x00;
const LDX_IMM: u16 = 0x01;
const TAX: u16 = 0x07;
const JEQ_K: u16 = 0x15;
const AND_K: u16 = 0x54;
const JSET_K: u16 = 0x45;
const JA: u16 = 0x05;
const RET_K: u16 = 0x06;

const SKF_AD_OFF: i32 = -0x1000;
const SKF_AD_NLATTR: i32 = 12;
const SKF_AD_NLATTR_NEST: i32 = 16;
const AD_NLATTR: u32 = (SKF_AD_OFF + SKF_AD_NLATTR) as u32;
const AD_NLATTR_NEST: u32 = (SKF_AD_OFF + SKF_AD_NLATTR_NEST) as u32;

/// Return value that passes the whole message.
pub const ACCEPT: u32 = u32::MAX;
/// Return value that drops the message.
pub const DROP: u32 = 0;

/// Byte offsets in `struct nlmsghdr` of the host-endian `nlmsg_type` halves and of the
/// `nlmsg_flags` byte holding `NLM_F_CREATE`.
const SUBSYS_OFF: u32 = if cfg!(target_endian = "little") { 5 } else { 4 };
const SUBTYPE_OFF: u32 = if cfg!(target_endian = "little") { 4 } else { 5 };
const CREATE_OFF: u32 = if cfg!(target_endian = "little") { 7 } else { 6 };
const CREATE_BIT: u32 = (wire::NLM_F_CREATE >> 8) as u32;

/// TCP states an UPDATE cannot move a finished entry into (see the module docs).
const DROPPED_STATES: [TcpState; 5] = [
    TcpState::ESTABLISHED,
    TcpState::FIN_WAIT,
    TcpState::CLOSE_WAIT,
    TcpState::LAST_ACK,
    TcpState::SYN_SENT2,
];

/// The state part of the rule over a parsed event: false for a TCP UPDATE that cannot
/// change a decision (see the module docs).
pub(crate) fn state_passes(kind: EventKind, flow: &Flow) -> bool {
    if kind != EventKind::Update || flow.protocol != proto::TCP {
        return true;
    }
    match flow.tcp_state {
        None => true,
        Some(TcpState::SYN_RECV) => flow.status & IPS_ASSURED != 0,
        Some(s) => !DROPPED_STATES.contains(&s),
    }
}

/// The address part of the rule over a parsed flow: its reply source or original
/// destination is in `addrs` (IPv4-mapped IPv6 addresses count as IPv4).
pub(crate) fn address_passes(flow: &Flow, addrs: &[IpAddr]) -> bool {
    let (src, dst) = (flow.reply.src.to_canonical(), flow.orig.dst.to_canonical());
    addrs
        .iter()
        .any(|a| a.to_canonical() == src || a.to_canonical() == dst)
}

/// The whole rule over a parsed event with exact addresses, as [`event_filter`] with
/// `addrs` applies it when they fit exactly (see [`plan_passes`] for any set).
pub fn passes(kind: EventKind, flow: &Flow, addrs: Option<&[IpAddr]>) -> bool {
    state_passes(kind, flow) && addrs.is_none_or(|a| address_passes(flow, a))
}

/// The whole rule over a parsed event as the program of `plan` ([`plan_filter`])
/// applies it: its reply source or original destination is covered by the plan.
pub fn plan_passes(kind: EventKind, flow: &Flow, plan: Option<&AddressPlan>) -> bool {
    state_passes(kind, flow)
        && plan.is_none_or(|p| p.covers(flow.reply.src) || p.covers(flow.orig.dst))
}

#[inline]
fn stmt(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// Where a conditional jump goes.
#[derive(Clone, Copy)]
enum To {
    Next,
    L(usize),
}

/// A tiny assembler with forward labels, so offsets are computed rather than counted.
#[derive(Default)]
struct Asm {
    p: Vec<Insn>,
    labels: Vec<Option<usize>>,
    /// (instruction, label, field: 0 = jt, 1 = jf, 2 = k of a JA).
    fixups: Vec<(usize, usize, u8)>,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }

    fn bind(&mut self, l: usize) {
        self.labels[l] = Some(self.p.len());
    }

    fn stmt(&mut self, code: u16, k: u32) {
        self.p.push(stmt(code, k));
    }

    fn jump(&mut self, code: u16, k: u32, jt: To, jf: To) {
        let at = self.p.len();
        for (field, to) in [(0, jt), (1, jf)] {
            if let To::L(l) = to {
                self.fixups.push((at, l, field));
            }
        }
        self.p.push(Insn {
            code,
            jt: 0,
            jf: 0,
            k,
        });
    }

    fn ja(&mut self, l: usize) {
        self.fixups.push((self.p.len(), l, 2));
        self.stmt(JA, 0);
    }

    /// Resolves the labels. Every jump is forward by construction; a conditional one
    /// out of its 8-bit range is a bug in the layout, caught by the tests.
    fn finish(mut self) -> Vec<Insn> {
        for (at, l, field) in self.fixups {
            let target = self.labels[l].expect("every label is bound");
            let off = target
                .checked_sub(at + 1)
                .expect("classic BPF jumps forward only");
            let i = &mut self.p[at];
            match field {
                0 => i.jt = u8::try_from(off).expect("conditional jump within 255"),
                1 => i.jf = u8::try_from(off).expect("conditional jump within 255"),
                _ => i.k = off as u32,
            }
        }
        self.p
    }

    /// A = the offset of attribute `kind` at the top level, then inside each nest of
    /// `path`; jumps to `missing` when any is absent. Leaves X at the offset.
    fn lookup(&mut self, kind: u16, path: &[u16], missing: To) {
        self.stmt(LD_IMM, wire::ATTRS_OFFSET as u32);
        self.stmt(LDX_IMM, kind as u32);
        self.stmt(LD_B_ABS, AD_NLATTR);
        self.jump(JEQ_K, 0, missing, To::Next);
        for k in path {
            self.stmt(LDX_IMM, *k as u32);
            self.stmt(LD_B_ABS, AD_NLATTR_NEST);
            self.jump(JEQ_K, 0, missing, To::Next);
        }
        self.stmt(TAX, 0);
    }
}

/// The state part: drops the TCP UPDATEs that cannot change a decision and goes on to
/// `next` with every other ctnetlink event.
fn emit_state_part(a: &mut Asm, next: usize) {
    let drop = a.label();
    let next = To::L(next);
    a.stmt(LD_B_ABS, SUBTYPE_OFF);
    a.jump(JEQ_K, wire::IPCTNL_MSG_CT_NEW as u32, To::Next, next);
    a.stmt(LD_B_ABS, CREATE_OFF);
    a.jump(JSET_K, CREATE_BIT, next, To::Next);
    // An UPDATE: of a TCP flow?
    a.lookup(cta::TUPLE_ORIG, &[cta::TUPLE_PROTO, cta::PROTO_NUM], next);
    a.stmt(LD_B_IND, 4);
    a.jump(JEQ_K, proto::TCP as u32, To::Next, next);
    // Its new state, when it has one.
    a.lookup(
        cta::PROTOINFO,
        &[cta::PROTOINFO_TCP, cta::PROTOINFO_TCP_STATE],
        next,
    );
    a.stmt(LD_B_IND, 4);
    for s in DROPPED_STATES {
        a.jump(JEQ_K, s.0 as u32, To::L(drop), To::Next);
    }
    a.jump(JEQ_K, TcpState::SYN_RECV.0 as u32, To::Next, next);
    // SYN_RECV: a reopen only on an entry that was ASSURED.
    a.lookup(cta::STATUS, &[], next);
    a.stmt(LD_W_IND, 4);
    a.jump(JSET_K, IPS_ASSURED, next, To::L(drop));
    a.bind(drop);
    a.stmt(RET_K, DROP);
}

/// IPv4 compares sharing one accept per chain (a conditional jump reaches 255 ahead).
const V4_CHAIN: usize = 255;
/// IPv6 prefixes (9 instructions each at most) sharing one accept per chain.
const V6_CHAIN: usize = 28;

/// Instructions of everything but the two address compares of each family: the
/// subsystem check, the state part when on, the family dispatch, and per family with
/// addresses the two attribute lookups (13 each) and the final drop.
fn fixed_insns(states: bool, has_v4: bool, has_v6: bool) -> usize {
    let family = |has: bool| if has { 2 * 13 + 1 } else { 1 };
    3 + if states { STATE_PART_INSNS - 4 } else { 0 } + 6 + family(has_v4) + family(has_v6)
}

/// Instructions of one IPv4 compare ([`emit_match_v4`]) given the prefixes per length.
fn v4_match_insns(per_len: &[usize], _count: usize) -> usize {
    per_len
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(len, n)| 1 + usize::from(len < 32) + n + 2 * n.div_ceil(V4_CHAIN))
        .sum()
}

/// Instructions of one IPv6 prefix compare: a load and a compare per word the prefix
/// reaches, a mask on a partial word; `::/0` is one jump.
fn v6_prefix_insns(len: u8) -> usize {
    if len == 0 {
        return 1;
    }
    2 * usize::from(len).div_ceil(32) + usize::from(!len.is_multiple_of(32))
}

/// Instructions of one IPv6 compare ([`emit_match_v6`]) given the prefixes per length.
fn v6_match_insns(per_len: &[usize], count: usize) -> usize {
    let body: usize = per_len
        .iter()
        .enumerate()
        .map(|(len, n)| n * v6_prefix_insns(len as u8))
        .sum();
    body + 2 * count.div_ceil(V6_CHAIN)
}

fn match_insns(prefixes: &[(u128, u8)], width: u8) -> usize {
    let mut per_len = vec![0usize; usize::from(width) + 1];
    for (_, len) in prefixes {
        per_len[usize::from(*len)] += 1;
    }
    if width == 32 {
        v4_match_insns(&per_len, prefixes.len())
    } else {
        v6_match_insns(&per_len, prefixes.len())
    }
}

/// How the address part holds one family's addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FamilyForm {
    /// Each address is compared exactly (also when the family has none).
    Exact {
        /// Distinct addresses.
        addresses: usize,
    },
    /// The addresses are covered by prefixes; events of other addresses inside them
    /// pass and are ignored in userspace.
    Prefixes {
        /// Distinct addresses.
        addresses: usize,
        /// Prefixes compared.
        prefixes: usize,
    },
}

impl FamilyForm {
    /// Entries compared per address field: addresses or prefixes.
    #[cfg(test)]
    fn compared(&self) -> usize {
        match *self {
            Self::Exact { addresses } => addresses,
            Self::Prefixes { prefixes, .. } => prefixes,
        }
    }
}

/// The form of an address filter: per family exact addresses or covering prefixes, and
/// the program's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressFilterForm {
    /// IPv4 (IPv4-mapped IPv6 addresses included).
    pub v4: FamilyForm,
    /// IPv6.
    pub v6: FamilyForm,
    /// Instructions of the whole program.
    pub insns: usize,
}

impl AddressFilterForm {
    /// True when some family is held as prefixes.
    pub fn is_prefixes(&self) -> bool {
        matches!(self.v4, FamilyForm::Prefixes { .. })
            || matches!(self.v6, FamilyForm::Prefixes { .. })
    }
}

impl std::fmt::Display for AddressFilterForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (name, form) in [("IPv4", self.v4), ("IPv6", self.v6)] {
            match form {
                FamilyForm::Exact { addresses } => write!(f, "{name}: {addresses} exact, ")?,
                FamilyForm::Prefixes {
                    addresses,
                    prefixes,
                } => write!(f, "{name}: {addresses} in {prefixes} prefixes, ")?,
            }
        }
        write!(f, "{} instructions", self.insns)
    }
}

/// What the address part of a program compares: per family, sorted disjoint prefixes
/// (full-length ones for exact addresses). See the module docs for how it is chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressPlan {
    v4: Prefixes,
    v6: Prefixes,
    v4_addresses: usize,
    v6_addresses: usize,
    states: bool,
}

impl AddressPlan {
    /// The plan for `addrs` in a program with the state part on (`states`) or off:
    /// exact addresses when they fit in the kernel's 4,096 instructions, covering
    /// prefixes otherwise.
    pub fn new(addrs: &[IpAddr], states: bool) -> Self {
        Self::with_budget(addrs, states, MAX_INSNS)
    }

    /// [`AddressPlan::new`] for a program of at most `max_insns` instructions (at least
    /// enough for one prefix per family).
    pub fn with_budget(addrs: &[IpAddr], states: bool, max_insns: usize) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for ip in addrs {
            match ip.to_canonical() {
                IpAddr::V4(ip) => v4.push(u128::from(u32::from(ip))),
                IpAddr::V6(ip) => v6.push(u128::from(ip)),
            }
        }
        for v in [&mut v4, &mut v6] {
            v.sort_unstable();
            v.dedup();
        }
        let fixed = fixed_insns(states, !v4.is_empty(), !v6.is_empty());
        // Each family's compare is emitted twice (reply source, original destination).
        let avail = max_insns.saturating_sub(fixed) / 2;
        let exact = |v: &[u128], w: u8| v.iter().map(|&a| (a, w)).collect::<Prefixes>();
        let (e4, e6) = (exact(&v4, 32), exact(&v6, 128));
        let (c4, c6) = (match_insns(&e4, 32), match_insns(&e6, 128));
        let agg4 = |budget| aggregate(&v4, 32, budget, v4_match_insns);
        let agg6 = |budget| aggregate(&v6, 128, budget, v6_match_insns);
        let half = avail / 2;
        let (p4, p6) = if c4 + c6 <= avail {
            (e4, e6)
        } else if c4 <= half {
            (e4, agg6(avail - c4))
        } else if c6 <= half {
            (agg4(avail - c6), e6)
        } else {
            // Both are too large for half: the one whose lossless aggregate fits in
            // half keeps it and leaves the rest to the other.
            let (z4, z6) = (agg4(usize::MAX), agg6(usize::MAX));
            let (m4, m6) = (match_insns(&z4, 32), match_insns(&z6, 128));
            if m4 + m6 <= avail {
                (z4, z6)
            } else if m4 <= half {
                (z4, agg6(avail - m4))
            } else if m6 <= half {
                (agg4(avail - m6), z6)
            } else {
                (agg4(half), agg6(half))
            }
        };
        Self {
            v4: p4,
            v6: p6,
            v4_addresses: v4.len(),
            v6_addresses: v6.len(),
            states,
        }
    }

    /// A plan comparing the given prefixes as they are (host bits are cleared; a
    /// prefix inside another is dropped), for tests of the prefix form.
    pub fn from_prefixes(prefixes: &[(IpAddr, u8)], states: bool) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for (ip, len) in prefixes {
            match ip.to_canonical() {
                IpAddr::V4(ip) => {
                    let len = (*len).min(32);
                    v4.push((u128::from(u32::from(ip)) & prefix_mask(32, len), len));
                }
                IpAddr::V6(ip) => {
                    let len = (*len).min(128);
                    v6.push((u128::from(ip) & prefix_mask(128, len), len));
                }
            }
        }
        let disjoint = |mut v: Prefixes, width: u8| {
            // Sorted by network then shortest first, a prefix inside the previous kept
            // one is redundant.
            v.sort_unstable_by_key(|&(net, len)| (net, len));
            let mut out: Prefixes = Vec::with_capacity(v.len());
            for (net, len) in v {
                if let Some(&(pn, pl)) = out.last()
                    && net & prefix_mask(width, pl) == pn
                {
                    continue;
                }
                out.push((net, len));
            }
            out
        };
        let (v4, v6) = (disjoint(v4, 32), disjoint(v6, 128));
        Self {
            v4_addresses: v4.len(),
            v6_addresses: v6.len(),
            v4,
            v6,
            states,
        }
    }

    /// True when the program passes events of `ip` (IPv4-mapped IPv6 addresses count as
    /// IPv4).
    pub fn covers(&self, ip: IpAddr) -> bool {
        let (list, value, width) = match ip.to_canonical() {
            IpAddr::V4(ip) => (&self.v4, u128::from(u32::from(ip)), 32),
            IpAddr::V6(ip) => (&self.v6, u128::from(ip), 128),
        };
        // The prefixes are sorted and disjoint: only the last one starting at or
        // before `value` can hold it.
        let i = list.partition_point(|&(net, _)| net <= value);
        i > 0 && {
            let (net, len) = list[i - 1];
            value & prefix_mask(width, len) == net
        }
    }

    /// The prefixes compared, IPv4 first, each sorted by network.
    #[cfg(test)]
    fn prefixes(&self) -> impl Iterator<Item = (IpAddr, u8)> + '_ {
        let v4 = self
            .v4
            .iter()
            .map(|&(n, l)| (IpAddr::from(std::net::Ipv4Addr::from(n as u32)), l));
        let v6 = self
            .v6
            .iter()
            .map(|&(n, l)| (IpAddr::from(std::net::Ipv6Addr::from(n)), l));
        v4.chain(v6)
    }

    /// The form of the plan and the length of its program.
    pub fn form(&self) -> AddressFilterForm {
        let family = |list: &Prefixes, addresses: usize, width: u8| {
            if list.iter().all(|&(_, l)| l == width) {
                FamilyForm::Exact { addresses }
            } else {
                FamilyForm::Prefixes {
                    addresses,
                    prefixes: list.len(),
                }
            }
        };
        AddressFilterForm {
            v4: family(&self.v4, self.v4_addresses, 32),
            v6: family(&self.v6, self.v6_addresses, 128),
            insns: self.insns(),
        }
    }

    /// Length of the program [`plan_filter`] builds from this plan.
    pub(crate) fn insns(&self) -> usize {
        fixed_insns(self.states, !self.v4.is_empty(), !self.v6.is_empty())
            + 2 * (match_insns(&self.v4, 32) + match_insns(&self.v6, 128))
    }
}

/// Compares the IPv4 address at X + 4 against `prefixes`; accepts on a match, falls
/// through otherwise. One load and mask per prefix length, then one compare per prefix.
fn emit_match_v4(a: &mut Asm, prefixes: &[(u128, u8)]) {
    let mut lens: Vec<u8> = prefixes.iter().map(|p| p.1).collect();
    // Longest first: exact addresses, then ever wider prefixes.
    lens.sort_unstable_by(|x, y| y.cmp(x));
    lens.dedup();
    for len in lens {
        a.stmt(LD_W_IND, 4);
        if len < 32 {
            a.stmt(AND_K, prefix_mask(32, len) as u32);
        }
        let group: Vec<u32> = prefixes
            .iter()
            .filter(|p| p.1 == len)
            .map(|p| p.0 as u32)
            .collect();
        for chain in group.chunks(V4_CHAIN) {
            let (hit, miss) = (a.label(), a.label());
            for net in chain {
                // Loads are big-endian, as the address is on the wire.
                a.jump(JEQ_K, *net, To::L(hit), To::Next);
            }
            a.ja(miss);
            a.bind(hit);
            a.stmt(RET_K, ACCEPT);
            a.bind(miss);
        }
    }
}

/// Compares the IPv6 address at X + 4 against `prefixes`, as [`emit_match_v4`]: word by
/// word up to the prefix length, the last partial word masked.
fn emit_match_v6(a: &mut Asm, prefixes: &[(u128, u8)]) {
    for chain in prefixes.chunks(V6_CHAIN) {
        let (hit, miss) = (a.label(), a.label());
        for &(net, len) in chain {
            if len == 0 {
                a.ja(hit);
                continue;
            }
            let next = a.label();
            let words = usize::from(len).div_ceil(32);
            for w in 0..words {
                let shift = 96 - 32 * w as u32;
                let word = (net >> shift) as u32;
                a.stmt(LD_W_IND, 4 + 4 * w as u32);
                let bits = usize::from(len) - 32 * w;
                if bits < 32 {
                    a.stmt(AND_K, prefix_mask(32, bits as u8) as u32);
                }
                if w + 1 < words {
                    a.jump(JEQ_K, word, To::Next, To::L(next));
                } else {
                    a.jump(JEQ_K, word, To::L(hit), To::Next);
                }
            }
            a.bind(next);
        }
        a.ja(miss);
        a.bind(hit);
        a.stmt(RET_K, ACCEPT);
        a.bind(miss);
    }
}

/// The address part for one family: accepts when the reply source or the original
/// destination is in one of the family's prefixes. A family with none drops at once:
/// none of its events can be one the parser reads for a registered address.
fn emit_family(a: &mut Asm, prefixes: &[(u128, u8)], is_v6: bool) {
    if prefixes.is_empty() {
        a.stmt(RET_K, DROP);
        return;
    }
    let (src, dst) = if is_v6 {
        (cta::IP_V6_SRC, cta::IP_V6_DST)
    } else {
        (cta::IP_V4_SRC, cta::IP_V4_DST)
    };
    for (tuple, ip_kind) in [(cta::TUPLE_REPLY, src), (cta::TUPLE_ORIG, dst)] {
        let (missing, found) = (a.label(), a.label());
        a.lookup(tuple, &[cta::TUPLE_IP, ip_kind], To::L(missing));
        a.ja(found);
        a.bind(missing);
        a.stmt(RET_K, ACCEPT);
        a.bind(found);
        if is_v6 {
            emit_match_v6(a, prefixes);
        } else {
            emit_match_v4(a, prefixes);
        }
    }
    a.stmt(RET_K, DROP);
}

/// Builds the event filter: the state part, then, when `addrs` is given, the address
/// part for it (IPv4-mapped IPv6 addresses count as IPv4): exact addresses when they
/// fit, covering prefixes otherwise ([`AddressPlan::new`]). `None` passes every
/// address; an empty set drops every ctnetlink event. Always fits the kernel's limit.
pub fn event_filter(addrs: Option<&[IpAddr]>) -> Vec<Insn> {
    match addrs {
        Some(a) => plan_filter(&AddressPlan::new(a, true)),
        None => state_filter(),
    }
}

/// The address part alone, with every TCP UPDATE passed (for a socket that wants every
/// state change of the registered addresses).
pub fn address_filter(addrs: &[IpAddr]) -> Vec<Insn> {
    plan_filter(&AddressPlan::new(addrs, false))
}

/// [`event_filter`] with no address part: only the state part.
pub fn state_filter() -> Vec<Insn> {
    build(None, true)
}

/// The program for `plan`, with the state part when the plan was made for it.
pub fn plan_filter(plan: &AddressPlan) -> Vec<Insn> {
    build(Some(plan), plan.states)
}

fn build(plan: Option<&AddressPlan>, states: bool) -> Vec<Insn> {
    let mut a = Asm::default();
    let ctnetlink = a.label();
    // Subsystem: the high byte of the host-endian nlmsg_type.
    a.stmt(LD_B_ABS, SUBSYS_OFF);
    a.jump(
        JEQ_K,
        wire::NFNL_SUBSYS_CTNETLINK as u32,
        To::L(ctnetlink),
        To::Next,
    );
    a.stmt(RET_K, ACCEPT);
    a.bind(ctnetlink);
    let address_part = a.label();
    if states {
        emit_state_part(&mut a, address_part);
    }
    a.bind(address_part);
    let Some(plan) = plan else {
        a.stmt(RET_K, ACCEPT);
        return a.finish();
    };
    let (inet, inet6) = (a.label(), a.label());
    let (to_inet, to_inet6) = (a.label(), a.label());
    a.stmt(LD_B_ABS, wire::NLMSG_HDRLEN as u32);
    a.jump(JEQ_K, wire::AF_INET as u32, To::L(to_inet), To::Next);
    a.jump(JEQ_K, wire::AF_INET6 as u32, To::L(to_inet6), To::Next);
    a.stmt(RET_K, ACCEPT);
    // The family blocks can be longer than a conditional jump reaches.
    a.bind(to_inet);
    a.ja(inet);
    a.bind(to_inet6);
    a.ja(inet6);
    a.bind(inet);
    emit_family(&mut a, &plan.v4, false);
    a.bind(inet6);
    emit_family(&mut a, &plan.v6, true);
    let p = a.finish();
    debug_assert_eq!(p.len(), plan.insns(), "the size model matches the program");
    p
}

/// A set of addresses of one family as the filter compares them: `(network, length)`
/// pairs over `width`-bit values (32 for IPv4, 128 for IPv6), sorted and disjoint.
type Prefixes = Vec<(u128, u8)>;

/// The mask of a `len`-bit prefix over `width`-bit values.
fn prefix_mask(width: u8, len: u8) -> u128 {
    let full = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    if len == 0 {
        0
    } else {
        (u128::MAX << (width - len)) & full
    }
}

/// Addresses a `len`-bit prefix covers (saturating at `u128::MAX` for `::/0`).
fn prefix_size(width: u8, len: u8) -> u128 {
    let bits = u32::from(width - len);
    if bits >= 128 {
        u128::MAX
    } else {
        1u128 << bits
    }
}

/// Greedy prefix aggregation over a sorted, deduplicated set of full-length addresses.
/// Each step replaces the smallest prefix covering two neighbouring entries (and every
/// entry inside it) by that prefix, choosing the step that adds the fewest addresses
/// not in the set (ties: the lower network). Steps that add nothing (sibling merges)
/// are always taken; others only while `cost` of the set exceeds `budget`.
fn aggregate(
    values: &[u128],
    width: u8,
    budget: usize,
    cost: impl Fn(&[usize], usize) -> usize,
) -> Prefixes {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    const NIL: usize = usize::MAX;
    struct Node {
        net: u128,
        len: u8,
        prev: usize,
        next: usize,
        alive: bool,
    }
    let mut nodes: Vec<Node> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| Node {
            net: v,
            len: width,
            prev: if i == 0 { NIL } else { i - 1 },
            next: if i + 1 == values.len() { NIL } else { i + 1 },
            alive: true,
        })
        .collect();
    // Entries per prefix length, from which `cost` is computed.
    let mut per_len = vec![0usize; usize::from(width) + 1];
    per_len[usize::from(width)] = values.len();
    let mut count = values.len();

    let within =
        |n: &Node, net: u128, len: u8| n.len >= len && n.net & prefix_mask(width, len) == net;
    // The prefix covering nodes i and j, and the addresses it adds.
    let candidate = |nodes: &[Node], i: usize, j: usize| -> (u128, u128, u8) {
        let (a, b) = (&nodes[i], &nodes[j]);
        let common = ((a.net ^ b.net).leading_zeros() - (128 - u32::from(width))) as u8;
        let len = common.min(a.len).min(b.len);
        let net = a.net & prefix_mask(width, len);
        let mut covered: u128 = 0;
        let mut k = i;
        while k != NIL && within(&nodes[k], net, len) {
            covered = covered.saturating_add(prefix_size(width, nodes[k].len));
            k = nodes[k].prev;
        }
        k = j;
        while k != NIL && within(&nodes[k], net, len) {
            covered = covered.saturating_add(prefix_size(width, nodes[k].len));
            k = nodes[k].next;
        }
        (prefix_size(width, len).saturating_sub(covered), net, len)
    };
    // (added addresses, network, length, left node, right node), smallest first.
    let mut heap = BinaryHeap::new();
    for i in 1..nodes.len() {
        let (extra, net, len) = candidate(&nodes, i - 1, i);
        heap.push(Reverse((extra, net, Reverse(len), i - 1, i)));
    }
    while let Some(Reverse((extra, _, _, i, j))) = heap.pop() {
        if !nodes[i].alive || !nodes[j].alive || nodes[i].next != j {
            continue;
        }
        // Neighbouring steps may have changed what this one adds: re-queue if so.
        let (now, net, len) = candidate(&nodes, i, j);
        if now != extra {
            heap.push(Reverse((now, net, Reverse(len), i, j)));
            continue;
        }
        if extra > 0 && cost(&per_len, count) <= budget {
            break;
        }
        // Replace the run inside the covering prefix with one node.
        let (mut first, mut last) = (i, j);
        while nodes[first].prev != NIL && within(&nodes[nodes[first].prev], net, len) {
            first = nodes[first].prev;
        }
        while nodes[last].next != NIL && within(&nodes[nodes[last].next], net, len) {
            last = nodes[last].next;
        }
        let (before, after) = (nodes[first].prev, nodes[last].next);
        let mut k = first;
        loop {
            nodes[k].alive = false;
            per_len[usize::from(nodes[k].len)] -= 1;
            count -= 1;
            if k == last {
                break;
            }
            k = nodes[k].next;
        }
        let id = nodes.len();
        nodes.push(Node {
            net,
            len,
            prev: before,
            next: after,
            alive: true,
        });
        per_len[usize::from(len)] += 1;
        count += 1;
        if before != NIL {
            nodes[before].next = id;
            let (e, n, l) = candidate(&nodes, before, id);
            heap.push(Reverse((e, n, Reverse(l), before, id)));
        }
        if after != NIL {
            nodes[after].prev = id;
            let (e, n, l) = candidate(&nodes, id, after);
            heap.push(Reverse((e, n, Reverse(l), id, after)));
        }
    }
    let mut out = Vec::with_capacity(count);
    let mut k = nodes
        .iter()
        .position(|n| n.alive && n.prev == NIL)
        .unwrap_or(NIL);
    while k != NIL {
        out.push((nodes[k].net, nodes[k].len));
        k = nodes[k].next;
    }
    out
}

/// Runs a classic BPF program over `pkt` the way the kernel runs a socket filter on a
/// netlink skb, for the instructions [`event_filter`] emits (and a few more). Returns
/// the program's verdict, or `None` for an invalid program.
pub fn interpret(prog: &[Insn], pkt: &[u8]) -> Option<u32> {
    let (mut a, mut x): (u32, u32) = (0, 0);
    let mut pc = 0usize;
    let load = |off: usize, size: usize| -> Option<u32> {
        let b = pkt.get(off..off.checked_add(size)?)?;
        Some(b.iter().fold(0u32, |acc, byte| (acc << 8) | *byte as u32))
    };
    loop {
        let i = prog.get(pc)?;
        pc += 1;
        match i.code {
            LD_IMM => a = i.k,
            LDX_IMM => x = i.k,
            TAX => x = a,
            0x87 => a = x, // txa
            AND_K => a &= i.k,
            0x20 | 0x28 | LD_B_ABS => {
                let size = match i.code {
                    0x20 => 4,
                    0x28 => 2,
                    _ => 1,
                };
                if i.k == AD_NLATTR {
                    a = nlattr_find(
                        pkt,
                        a as usize,
                        pkt.len().saturating_sub(a as usize),
                        x as u16,
                    );
                } else if i.k == AD_NLATTR_NEST {
                    a = nlattr_nest_find(pkt, a as usize, x as u16);
                } else {
                    match load(i.k as usize, size) {
                        Some(v) => a = v,
                        None => return Some(0),
                    }
                }
            }
            LD_W_IND | 0x48 | 0x50 => {
                let size = match i.code {
                    LD_W_IND => 4,
                    0x48 => 2,
                    _ => 1,
                };
                match load((x as usize).wrapping_add(i.k as usize), size) {
                    Some(v) => a = v,
                    None => return Some(0),
                }
            }
            JA => pc = pc.checked_add(i.k as usize)?,
            JEQ_K | 0x25 | 0x35 | 0x45 => {
                let taken = match i.code {
                    JEQ_K => a == i.k,
                    0x25 => a > i.k,
                    0x35 => a >= i.k,
                    _ => a & i.k != 0,
                };
                pc += if taken { i.jt } else { i.jf } as usize;
            }
            RET_K => return Some(i.k),
            0x16 => return Some(a),
            _ => return None,
        }
    }
}

/// Like the kernel's `nla_find` over `pkt[start..start+len]`: the offset of the first
/// attribute of type `kind`, or 0.
fn nlattr_find(pkt: &[u8], start: usize, len: usize, kind: u16) -> u32 {
    if pkt.len() < 4 || start > pkt.len() - 4 {
        return 0;
    }
    let end = start.saturating_add(len).min(pkt.len());
    let mut off = start;
    while off + 4 <= end {
        let nla_len = u16::from_ne_bytes([pkt[off], pkt[off + 1]]) as usize;
        let nla_kind = u16::from_ne_bytes([pkt[off + 2], pkt[off + 3]]) & wire::NLA_TYPE_MASK;
        if nla_len < 4 || off + nla_len > end {
            return 0;
        }
        if nla_kind == kind {
            return off as u32;
        }
        off += wire::align4(nla_len);
    }
    0
}

/// Like the kernel's nested lookup: searches inside the attribute at `nest`.
fn nlattr_nest_find(pkt: &[u8], nest: usize, kind: u16) -> u32 {
    if pkt.len() < 4 || nest > pkt.len() - 4 {
        return 0;
    }
    let nla_len = u16::from_ne_bytes([pkt[nest], pkt[nest + 1]]) as usize;
    if nla_len < 4 || nest + nla_len > pkt.len() {
        return 0;
    }
    nlattr_find(pkt, nest + 4, nla_len - 4, kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::parse;
    use crate::conntrack::request::testing::build_flow_message;
    use crate::flow::Tuple;

    fn flow(client: &str, vm: &str, dnat_host: Option<&str>) -> Flow {
        let c: IpAddr = client.parse().unwrap();
        let v: IpAddr = vm.parse().unwrap();
        let dialled = dnat_host.map(|h| h.parse().unwrap()).unwrap_or(v);
        Flow {
            protocol: 6,
            orig: Tuple::new(c, 40000, dialled, 8080),
            reply: Tuple::new(v, 80, c, 40000),
            zone: 0,
            id: 1,
            tcp_state: Some(TcpState::ESTABLISHED),
            status: 0,
            mark: 0,
            timeout_s: None,
        }
    }

    fn ips(addrs: &[&str]) -> Vec<IpAddr> {
        addrs.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn message(kind: EventKind, f: &Flow) -> Vec<u8> {
        let (subtype, flags) = match kind {
            EventKind::New => (
                wire::IPCTNL_MSG_CT_NEW,
                wire::NLM_F_CREATE | wire::NLM_F_EXCL,
            ),
            EventKind::Update => (wire::IPCTNL_MSG_CT_NEW, 0),
            EventKind::Destroy => (wire::IPCTNL_MSG_CT_DELETE, 0),
        };
        build_flow_message(f, subtype, flags)
    }

    fn verdict(addrs: &[&str], f: &Flow) -> u32 {
        let prog = address_filter(&ips(addrs));
        let msg = build_flow_message(f, wire::IPCTNL_MSG_CT_NEW, wire::NLM_F_CREATE);
        interpret(&prog, &msg).expect("valid program")
    }

    #[test]
    fn v4_match_and_miss() {
        let f = flow("10.0.0.1", "10.0.0.2", None);
        assert_eq!(verdict(&["10.0.0.2"], &f), ACCEPT);
        assert_eq!(verdict(&["10.0.0.9", "10.0.0.2"], &f), ACCEPT);
        assert_eq!(verdict(&["10.0.0.9"], &f), DROP);
        assert_eq!(verdict(&[], &f), DROP);
        // Client address is neither reply source nor original destination.
        assert_eq!(verdict(&["10.0.0.1"], &f), DROP);
    }

    #[test]
    fn dnat_is_matched_on_the_reply_source_and_the_dialled_address() {
        let f = flow("10.0.0.1", "192.168.100.5", Some("10.0.0.254"));
        assert_eq!(verdict(&["192.168.100.5"], &f), ACCEPT);
        assert_eq!(verdict(&["10.0.0.254"], &f), ACCEPT);
        assert_eq!(verdict(&["10.0.0.7"], &f), DROP);
    }

    #[test]
    fn v6_match_and_miss_per_word() {
        let f = flow("fd00::1", "fd00::2", None);
        assert_eq!(verdict(&["fd00::2"], &f), ACCEPT);
        assert_eq!(verdict(&["10.0.0.2", "fd00::3", "fd00::2"], &f), ACCEPT);
        // Differs only in the first, second, third or last word.
        for miss in ["fd01::2", "fd00:0:1::2", "fd00::1:0:0:2", "fd00::3"] {
            assert_eq!(verdict(&[miss], &f), DROP, "{miss}");
        }
        // A v4 address never matches a v6 flow.
        assert_eq!(verdict(&["10.0.0.2"], &f), DROP);
    }

    #[test]
    fn non_ctnetlink_and_incomplete_messages_pass() {
        for prog in [
            address_filter(&ips(&["10.0.0.2"])),
            event_filter(Some(&ips(&["10.0.0.2"]))),
            state_filter(),
        ] {
            let mut done = vec![0u8; 20];
            done[0..4].copy_from_slice(&20u32.to_ne_bytes());
            done[4..6].copy_from_slice(&wire::NLMSG_DONE.to_ne_bytes());
            assert_eq!(interpret(&prog, &done), Some(ACCEPT));
            // A ctnetlink UPDATE with no attributes: the tuples are missing.
            let mut bare = build_flow_message(&flow("10.0.0.1", "10.0.0.9", None), 0, 0);
            bare.truncate(wire::ATTRS_OFFSET);
            bare[0..4].copy_from_slice(&(wire::ATTRS_OFFSET as u32).to_ne_bytes());
            assert_eq!(interpret(&prog, &bare), Some(ACCEPT));
            // An unknown family passes.
            let mut f = flow("10.0.0.1", "10.0.0.9", None);
            f.tcp_state = Some(TcpState::SYN_SENT);
            let mut other2 = build_flow_message(&f, 0, 0);
            other2[wire::NLMSG_HDRLEN] = 7;
            assert_eq!(interpret(&prog, &other2), Some(ACCEPT));
        }
    }

    /// Every kind, protocol, TCP state (known or not, present or not), status and
    /// address set: the program's verdict is the rule's.
    #[test]
    fn the_program_agrees_with_the_rule() {
        let sets: [Option<Vec<IpAddr>>; 4] = [
            None,
            Some(vec![]),
            Some(ips(&["10.0.0.2", "fd00::2"])),
            Some(ips(&["10.0.0.9", "fd00::9"])),
        ];
        let progs: Vec<_> = sets.iter().map(|s| event_filter(s.as_deref())).collect();
        let mut dropped_by_state = 0;
        for (client, vm) in [("10.0.0.1", "10.0.0.2"), ("fd00::1", "fd00::2")] {
            for kind in [EventKind::New, EventKind::Update, EventKind::Destroy] {
                for protocol in [proto::TCP, proto::UDP, 132] {
                    for state in (0..=14u8).map(|s| Some(TcpState(s))).chain([None]) {
                        for status in [0x8, 0xa, 0xe, 0x20e] {
                            let mut f = flow(client, vm, None);
                            f.protocol = protocol;
                            f.tcp_state = state;
                            f.status = status;
                            let msg = message(kind, &f);
                            let parsed =
                                parse::parse_event(&parse::messages(&msg).next().unwrap().unwrap())
                                    .unwrap()
                                    .unwrap();
                            assert_eq!(parsed.kind, kind);
                            for (set, prog) in sets.iter().zip(&progs) {
                                let want = passes(kind, &parsed.flow, set.as_deref());
                                let got = interpret(prog, &msg).unwrap();
                                assert_eq!(got == ACCEPT, want, "{kind:?} {f:?} set {set:?}");
                                assert!(got == ACCEPT || got == DROP);
                            }
                            if !state_passes(kind, &f) {
                                dropped_by_state += 1;
                            }
                        }
                    }
                }
            }
        }
        // 2 families x (5 states x 4 statuses + SYN_RECV x 2 unassured statuses).
        assert_eq!(dropped_by_state, 2 * (5 * 4 + 2));
    }

    #[test]
    fn the_state_rule_keeps_what_can_change_a_decision() {
        let mut f = flow("10.0.0.1", "10.0.0.2", None);
        let upd = |f: &Flow| state_passes(EventKind::Update, f);
        for (state, status, kept) in [
            (TcpState::SYN_SENT, 0x8, true),
            (TcpState::SYN_RECV, 0xa, false),
            // A reopened entry that had been ESTABLISHED.
            (TcpState::SYN_RECV, 0xe, true),
            (TcpState::ESTABLISHED, 0xe, false),
            (TcpState::FIN_WAIT, 0xe, false),
            (TcpState::CLOSE_WAIT, 0xe, false),
            (TcpState::LAST_ACK, 0xe, false),
            (TcpState::TIME_WAIT, 0xe, true),
            (TcpState::CLOSE, 0xe, true),
            (TcpState::NONE, 0xe, true),
            (TcpState::SYN_SENT2, 0x8, false),
            (TcpState::IGNORE, 0x8, true),
            (TcpState(200), 0x8, true),
        ] {
            f.tcp_state = Some(state);
            f.status = status;
            assert_eq!(upd(&f), kept, "{state:?} {status:#x}");
            assert!(state_passes(EventKind::New, &f));
            assert!(state_passes(EventKind::Destroy, &f));
        }
        f.tcp_state = None;
        assert!(upd(&f), "an UPDATE without a state");
        f.tcp_state = Some(TcpState::ESTABLISHED);
        f.protocol = proto::UDP;
        assert!(upd(&f), "UDP");
    }

    #[test]
    fn scales_to_many_exact_addresses() {
        assert_eq!(state_filter().len(), STATE_PART_INSNS);
        let v4 = |n: u32| -> Vec<IpAddr> {
            (0..n)
                .map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a64_0000 + i)))
                .collect()
        };
        for n in [1u32, 100, 254, 255, 256, 1000, MAX_V4_ADDRESSES as u32] {
            let addrs = v4(n);
            let plan = AddressPlan::new(&addrs, true);
            assert_eq!(
                plan.form().v4,
                FamilyForm::Exact {
                    addresses: n as usize
                }
            );
            let prog = event_filter(Some(&addrs));
            assert!(prog.len() <= MAX_INSNS);
            // The first, last and a middle address of every chain match.
            for i in [0, n / 2, n - 1, n.saturating_sub(255)] {
                let hit = flow("172.16.0.1", &addrs[i as usize].to_string(), None);
                let msg = build_flow_message(&hit, 0, wire::NLM_F_CREATE);
                assert_eq!(interpret(&prog, &msg), Some(ACCEPT), "n={n} i={i}");
            }
            let miss = flow("10.0.0.1", "172.16.0.1", None);
            let msg = build_flow_message(&miss, 0, wire::NLM_F_CREATE);
            assert_eq!(interpret(&prog, &msg), Some(DROP), "n={n}");
        }
        assert_eq!(
            event_filter(Some(&v4(MAX_V4_ADDRESSES as u32))).len(),
            MAX_INSNS
        );
        // One more and the family goes to prefixes.
        let over = AddressPlan::new(&v4(MAX_V4_ADDRESSES as u32 + 1), true).form();
        assert!(over.is_prefixes(), "{over}");

        let v6 = |n: u32| -> Vec<IpAddr> {
            (0..n)
                .map(|i| IpAddr::from(std::net::Ipv6Addr::from(0xfd00_u128 << 112 | i as u128)))
                .collect()
        };
        let mut max_v6 = 0;
        while !AddressPlan::new(&v6(max_v6 + 1), true).form().is_prefixes() {
            max_v6 += 1;
        }
        assert!(max_v6 >= 240, "{max_v6} IPv6 addresses");
        let addrs = v6(max_v6);
        let prog = event_filter(Some(&addrs));
        assert!(prog.len() <= MAX_INSNS);
        for i in [0, 27, 28, 29, 31, 32, 33, max_v6 / 2, max_v6 - 1] {
            let hit = flow("fd01::1", &addrs[i as usize].to_string(), None);
            let msg = build_flow_message(&hit, 0, wire::NLM_F_CREATE);
            assert_eq!(interpret(&prog, &msg), Some(ACCEPT), "v6 i={i}");
        }
        let miss = flow("fd01::1", "fd02::1", None);
        let msg = build_flow_message(&miss, 0, wire::NLM_F_CREATE);
        assert_eq!(interpret(&prog, &msg), Some(DROP));
    }

    /// A small deterministic generator, so the tests need no seed handling.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn v4_of(x: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(x))
    }

    fn v6_of(x: u128) -> IpAddr {
        IpAddr::from(std::net::Ipv6Addr::from(x))
    }

    /// 10,000 IPv4 addresses from 10.40.0.0 and 2,000 IPv6 ones from fd40::.
    fn fleet() -> Vec<IpAddr> {
        let mut addrs: Vec<IpAddr> = (0..10_000u32).map(|i| v4_of(0x0a28_0000 + i)).collect();
        addrs.extend((0..2_000u128).map(|i| v6_of(0xfd40_u128 << 112 | i)));
        addrs
    }

    /// The program of `plan` and the rule over `plan` agree on a flow to `vm`.
    fn check(plan: &AddressPlan, prog: &[Insn], client: &str, vm: IpAddr) {
        let f = flow(client, &vm.to_string(), None);
        let msg = build_flow_message(&f, 0, wire::NLM_F_CREATE);
        let want = plan_passes(EventKind::New, &f, Some(plan));
        assert_eq!(want, plan.covers(vm));
        assert_eq!(
            interpret(prog, &msg) == Some(ACCEPT),
            want,
            "{vm} against {:?}",
            plan.form()
        );
    }

    #[test]
    fn a_fleet_beyond_the_exact_limit_is_covered_by_a_few_prefixes() {
        let addrs = fleet();
        let plan = AddressPlan::new(&addrs, true);
        let form = plan.form();
        assert!(form.insns <= MAX_INSNS, "{form}");
        // 10.40.0.0 + 10,000 is 10.40.0.0/19 less its last 2,288 addresses: the four
        // prefixes /19.../24 ... cover it exactly; fd40::/117 less 48 likewise.
        let FamilyForm::Prefixes {
            addresses: 10_000,
            prefixes: p4,
        } = form.v4
        else {
            panic!("{form}")
        };
        let FamilyForm::Prefixes {
            addresses: 2_000,
            prefixes: p6,
        } = form.v6
        else {
            panic!("{form}")
        };
        assert!(p4 <= 8 && p6 <= 8, "{form}");
        // With that room, the lossless aggregate is kept: no address outside the set.
        for a in &addrs {
            assert!(plan.covers(*a), "{a}");
        }
        assert!(!plan.covers(v4_of(0x0a28_0000 + 10_000)));
        assert!(!plan.covers(v4_of(0x0a28_0000 - 1)));
        assert!(!plan.covers(v6_of(0xfd40_u128 << 112 | 2_000)));
        let prog = plan_filter(&plan);
        assert_eq!(prog.len(), form.insns);
        for vm in [
            addrs[0],
            addrs[5_000],
            addrs[9_999],
            addrs[10_000],
            addrs[11_999],
        ] {
            check(&plan, &prog, "172.16.0.1", vm);
        }
        for miss in [
            v4_of(0x0a28_0000 + 10_000),
            v4_of(0x0a27_ffff),
            v4_of(0xc0a8_0001),
            v4_of(0x0a28_0000 ^ 0x8000_0000),
        ] {
            check(&plan, &prog, "172.16.0.1", miss);
        }
        for miss in [
            v6_of(0xfd40_u128 << 112 | 2_000),
            v6_of(0xfd41_u128 << 112 | 5),
            v6_of(0xfd40_u128 << 112 | 1 << 64),
        ] {
            check(&plan, &prog, "fd99::1", miss);
        }
    }

    /// Everything the aggregation promises, on spread and adversarial sets.
    #[test]
    fn aggregation_covers_fits_and_is_deterministic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut sets: Vec<(&str, Vec<IpAddr>)> = Vec::new();
        // 10,000 random addresses in 10.0.0.0/8 and a few far outliers.
        let mut spread: Vec<IpAddr> = (0..10_000)
            .map(|_| v4_of(0x0a00_0000 | (rng.next() as u32 & 0x00ff_ffff)))
            .collect();
        spread.extend(
            [
                "192.168.7.9",
                "172.31.255.254",
                "1.2.3.4",
                "255.255.255.255",
            ]
            .map(ip1),
        );
        sets.push(("spread v4", spread.clone()));
        // The same with 2,000 random IPv6 addresses in fd00::/16 and IPv4-mapped ones.
        let mut mixed = spread;
        mixed.extend((0..2_000).map(|_| {
            v6_of(0xfd00_u128 << 112 | (u128::from(rng.next()) << 48 | u128::from(rng.next())))
        }));
        mixed.extend(["::ffff:10.99.0.1", "::ffff:8.8.8.8", "2001:db8::1", "::1"].map(ip1));
        sets.push(("mixed", mixed));
        // Uniform over the whole space, both families.
        let uniform: Vec<IpAddr> = (0..6_000)
            .map(|i| {
                if i % 2 == 0 {
                    v4_of(rng.next() as u32)
                } else {
                    v6_of(u128::from(rng.next()) << 64 | u128::from(rng.next()))
                }
            })
            .collect();
        sets.push(("uniform", uniform));
        // Few IPv4 (kept exact) beside too many IPv6.
        let mut few_v4: Vec<IpAddr> = (0..100u32).map(|i| v4_of(0x0a00_0000 + 7 * i)).collect();
        few_v4.extend((0..1_000u128).map(|i| v6_of((0xfd00_u128 << 112) | (i * 977))));
        sets.push(("few v4", few_v4));
        for (name, addrs) in &sets {
            for states in [true, false] {
                let plan = AddressPlan::new(addrs, states);
                let form = plan.form();
                assert!(form.insns <= MAX_INSNS, "{name}: {form}");
                let prog = plan_filter(&plan);
                assert_eq!(prog.len(), form.insns, "{name}: the size model");
                for a in addrs {
                    assert!(plan.covers(*a), "{name}: {a} not covered");
                }
                assert_eq!(plan, AddressPlan::new(addrs, states), "{name}");
                // Order and duplicates do not matter.
                let mut shuffled = addrs.clone();
                shuffled.reverse();
                shuffled.extend_from_slice(&addrs[..10]);
                assert_eq!(plan, AddressPlan::new(&shuffled, states), "{name}");
                // Prefixes are disjoint and sorted.
                let list: Vec<_> = plan.prefixes().collect();
                for w in list.windows(2) {
                    let (a, b) = (w[0], w[1]);
                    if a.0.is_ipv4() == b.0.is_ipv4() {
                        assert!(
                            a.0 < b.0 && !plan_of(&[a]).covers(b.0),
                            "{name}: {a:?} {b:?}"
                        );
                    }
                }
                // The program agrees with the plan on members, neighbours and strangers.
                let family_client = |a: &IpAddr| {
                    if a.to_canonical().is_ipv4() {
                        "203.0.113.1"
                    } else {
                        "2001:db8:ffff::1"
                    }
                };
                for a in addrs.iter().step_by(97) {
                    check(&plan, &prog, family_client(a), *a);
                }
                for _ in 0..300 {
                    let r = rng.next();
                    let a = if r.is_multiple_of(2) {
                        v4_of(0x0a00_0000 | (r >> 8) as u32 & 0x00ff_ffff)
                    } else {
                        v6_of(0xfd00_u128 << 112 | u128::from(r) << 40)
                    };
                    check(&plan, &prog, family_client(&a), a);
                }
            }
        }
        // The spread set has outliers far from 10/8: they stay apart from it.
        let plan = AddressPlan::new(&sets[0].1, true);
        assert!(!plan.covers(ip1("192.168.8.9")));
        assert!(!plan.covers(ip1("11.0.0.1")));
        assert!(plan.form().v4.compared() > 100, "{}", plan.form());
    }

    fn ip1(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn plan_of(prefixes: &[(IpAddr, u8)]) -> AddressPlan {
        AddressPlan::from_prefixes(prefixes, true)
    }

    #[test]
    fn sibling_merges_lose_nothing_and_widening_adds_least() {
        let v4 = |from: &[u32]| -> Vec<IpAddr> {
            from.iter()
                .flat_map(|&a| (0..4).map(move |i| v4_of(a + i)))
                .collect()
        };
        let (a, b, c, d) = (0x0a00_0000, 0x0a00_0008, 0x0ac8_0000, 0x0ac8_0008);
        // Three runs of four: exact takes 1 + 12 + 2 per compare, three /30s 1 + 1 + 3
        // + 2; a budget of 7 keeps the /30s and covers nothing more.
        let budget = |m: usize| fixed_insns(true, true, false) + 2 * m;
        let plan = AddressPlan::with_budget(&v4(&[a, b, c]), true, budget(7));
        let list: Vec<_> = plan.prefixes().collect();
        assert_eq!(
            list,
            [(v4_of(a), 30), (v4_of(b), 30), (v4_of(c), 30)],
            "{}",
            plan.form()
        );
        // Four runs, two by two close: the near pairs are joined (8 more addresses
        // each), never the far ones.
        let plan = AddressPlan::with_budget(&v4(&[a, b, c, d]), true, budget(7));
        let list: Vec<_> = plan.prefixes().collect();
        assert_eq!(list, [(v4_of(a), 28), (v4_of(c), 28)], "{}", plan.form());
        assert!(plan.insns() <= budget(7));
        assert!(!plan.covers(v4_of(0x0a64_0000)));
        // Down to one prefix per family at the smallest budget.
        let plan = AddressPlan::with_budget(&fleet(), true, 0);
        let form = plan.form();
        assert_eq!(form.v4.compared() + form.v6.compared(), 2, "{form}");
        for a in fleet() {
            assert!(plan.covers(a));
        }
    }

    /// Arbitrary prefix plans: the program and the rule agree on addresses at, inside,
    /// just outside and far from each prefix.
    #[test]
    fn prefix_programs_agree_with_the_rule() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for round in 0..200 {
            let n = 1 + (rng.next() % 40) as usize;
            let mut prefixes = Vec::new();
            for _ in 0..n {
                let r = rng.next();
                if r.is_multiple_of(2) {
                    prefixes.push((v4_of((r >> 16) as u32), (rng.next() % 33) as u8));
                } else {
                    let a = u128::from(rng.next()) << 64 | u128::from(rng.next());
                    // Lengths cluster around the word edges, where masks change.
                    let len = [0u8, 1, 31, 32, 33, 63, 64, 65, 96, 116, 127, 128]
                        [(rng.next() % 12) as usize];
                    prefixes.push((v6_of(a), len));
                }
            }
            let plan = plan_of(&prefixes);
            let prog = plan_filter(&plan);
            assert_eq!(prog.len(), plan.insns(), "round {round}");
            for &(net, len) in &prefixes {
                let probes: Vec<IpAddr> = match net {
                    IpAddr::V4(a) => {
                        let a = u32::from(a);
                        let host = if len == 32 { 0 } else { u32::MAX >> len };
                        vec![
                            a,
                            a & !host,
                            a | host,
                            (a | host).wrapping_add(1),
                            (a & !host).wrapping_sub(1),
                            rng.next() as u32,
                        ]
                        .into_iter()
                        .map(v4_of)
                        .collect()
                    }
                    IpAddr::V6(a) => {
                        let a = u128::from(a);
                        let host = if len == 128 { 0 } else { u128::MAX >> len };
                        vec![
                            a,
                            a & !host,
                            a | host,
                            (a | host).wrapping_add(1),
                            (a & !host).wrapping_sub(1),
                            u128::from(rng.next()) << 64,
                        ]
                        .into_iter()
                        .map(v6_of)
                        .filter(|a| a.to_canonical().is_ipv6())
                        .collect()
                    }
                };
                for p in probes {
                    let client = if p.is_ipv4() {
                        "203.0.113.1"
                    } else {
                        "2001:db8:ffff::1"
                    };
                    check(&plan, &prog, client, p);
                }
            }
        }
    }
}
