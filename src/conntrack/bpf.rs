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
//! the next dump: the confirmation before every standby, the periodic reconcile.
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
//! passes only when its reply source or original destination is a registered address.
//!
//! Anything the program cannot judge (another subsystem, an unknown family, a missing
//! attribute) is passed, so the filter can only save work, never lose an event the
//! observer needs. [`passes`] states the same rule over a parsed event; the unit tests,
//! the fuzz target and the recorded-stream test check that the two agree.
//!
//! Program size: the state part takes [`STATE_PART_INSNS`] instructions, IPv4 addresses
//! about 2 instructions each (both tuples), IPv6 addresses about 16:
//! [`MAX_V4_ADDRESSES`] IPv4 addresses at most (1,006 before the compare chains shared
//! their accepts).

use std::net::IpAddr;

use super::wire::{self, cta};
use crate::flow::{EventKind, Flow, TcpState, proto};

pub use libc::sock_filter as Insn;

/// The kernel's limit on classic BPF program length (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

/// Length of the program with the state part and no address part ([`state_filter`]).
pub const STATE_PART_INSNS: usize = 47;

/// The most IPv4 addresses (with no IPv6 address) one program holds.
pub const MAX_V4_ADDRESSES: usize = 1_991;

/// `IPS_ASSURED` in `CTA_STATUS`.
pub const IPS_ASSURED: u32 = 1 << 2;

const LD_B_ABS: u16 = 0x30;
const LD_W_IND: u16 = 0x40;
const LD_B_IND: u16 = 0x50;
const LD_IMM: u16 = 0x00;
const LDX_IMM: u16 = 0x01;
const TAX: u16 = 0x07;
const JEQ_K: u16 = 0x15;
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
pub fn state_passes(kind: EventKind, flow: &Flow) -> bool {
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
pub fn address_passes(flow: &Flow, addrs: &[IpAddr]) -> bool {
    let (src, dst) = (flow.reply.src.to_canonical(), flow.orig.dst.to_canonical());
    addrs
        .iter()
        .any(|a| a.to_canonical() == src || a.to_canonical() == dst)
}

/// The whole rule over a parsed event, as [`event_filter`] with `addrs` applies it.
pub fn passes(kind: EventKind, flow: &Flow, addrs: Option<&[IpAddr]>) -> bool {
    state_passes(kind, flow) && addrs.is_none_or(|a| address_passes(flow, a))
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
/// IPv6 compares (8 instructions each) sharing one accept per chain.
const V6_CHAIN: usize = 32;

/// Compares the IPv4 address at X + 4 against `addrs`; accepts on a match, falls
/// through otherwise.
fn emit_match_v4(a: &mut Asm, addrs: &[[u8; 4]]) {
    if addrs.is_empty() {
        return;
    }
    a.stmt(LD_W_IND, 4);
    for chain in addrs.chunks(V4_CHAIN) {
        let (hit, miss) = (a.label(), a.label());
        for addr in chain {
            // Loads are big-endian, as the address is on the wire.
            a.jump(JEQ_K, u32::from_be_bytes(*addr), To::L(hit), To::Next);
        }
        a.ja(miss);
        a.bind(hit);
        a.stmt(RET_K, ACCEPT);
        a.bind(miss);
    }
}

/// Compares the IPv6 address at X + 4 against `addrs`, as [`emit_match_v4`].
fn emit_match_v6(a: &mut Asm, addrs: &[[u8; 16]]) {
    for chain in addrs.chunks(V6_CHAIN) {
        let (hit, miss) = (a.label(), a.label());
        for addr in chain {
            let next = a.label();
            for w in 0..4 {
                let word = u32::from_be_bytes([
                    addr[4 * w],
                    addr[4 * w + 1],
                    addr[4 * w + 2],
                    addr[4 * w + 3],
                ]);
                a.stmt(LD_W_IND, 4 + 4 * w as u32);
                if w < 3 {
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
/// destination is one of the family's addresses. A family with no address drops at once:
/// none of its events can be one the parser reads for a registered address.
fn emit_family(a: &mut Asm, v4: &[[u8; 4]], v6: &[[u8; 16]], is_v6: bool) {
    if (is_v6 && v6.is_empty()) || (!is_v6 && v4.is_empty()) {
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
            emit_match_v6(a, v6);
        } else {
            emit_match_v4(a, v4);
        }
    }
    a.stmt(RET_K, DROP);
}

/// Builds the event filter: the state part, then, when `addrs` is given, the address
/// part for it (IPv4-mapped IPv6 addresses count as IPv4). `None` passes every address;
/// an empty set drops every ctnetlink event. Fails when the program would exceed the
/// kernel's limit ([`MAX_V4_ADDRESSES`] IPv4, or about 250 IPv6 addresses).
pub fn event_filter(addrs: Option<&[IpAddr]>) -> Result<Vec<Insn>, super::ConntrackError> {
    build(addrs, true)
}

/// The address part alone, with every TCP UPDATE passed (for a socket that wants every
/// state change of the registered addresses).
pub fn address_filter(addrs: &[IpAddr]) -> Result<Vec<Insn>, super::ConntrackError> {
    build(Some(addrs), false)
}

/// [`event_filter`] with no address part: only the state part.
pub fn state_filter() -> Vec<Insn> {
    build(None, true).expect("the state part alone fits")
}

fn build(addrs: Option<&[IpAddr]>, states: bool) -> Result<Vec<Insn>, super::ConntrackError> {
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
    let Some(addrs) = addrs else {
        a.stmt(RET_K, ACCEPT);
        return Ok(a.finish());
    };
    let mut v4: Vec<[u8; 4]> = Vec::new();
    let mut v6: Vec<[u8; 16]> = Vec::new();
    for ip in addrs {
        match ip.to_canonical() {
            IpAddr::V4(ip) => v4.push(ip.octets()),
            IpAddr::V6(ip) => v6.push(ip.octets()),
        }
    }
    v4.sort_unstable();
    v4.dedup();
    v6.sort_unstable();
    v6.dedup();
    // Bound the work before laying out: each address costs at least one instruction.
    if v4.len() + 8 * v6.len() > MAX_INSNS {
        return Err(too_many(v4.len(), v6.len(), v4.len() + 8 * v6.len()));
    }
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
    emit_family(&mut a, &v4, &v6, false);
    a.bind(inet6);
    emit_family(&mut a, &v4, &v6, true);
    let p = a.finish();
    if p.len() > MAX_INSNS {
        return Err(too_many(v4.len(), v6.len(), p.len()));
    }
    Ok(p)
}

fn too_many(v4: usize, v6: usize, insns: usize) -> super::ConntrackError {
    super::ConntrackError::Invalid(format!(
        "{v4} IPv4 and {v6} IPv6 addresses need {insns} BPF instructions; the kernel allows {MAX_INSNS}"
    ))
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
        let prog = address_filter(&ips(addrs)).unwrap();
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
            address_filter(&ips(&["10.0.0.2"])).unwrap(),
            event_filter(Some(&ips(&["10.0.0.2"]))).unwrap(),
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
        let progs: Vec<_> = sets
            .iter()
            .map(|s| event_filter(s.as_deref()).unwrap())
            .collect();
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
    fn scales_to_many_addresses_and_refuses_too_many() {
        assert_eq!(state_filter().len(), STATE_PART_INSNS);
        let v4 = |n: u32| -> Vec<IpAddr> {
            (0..n)
                .map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a64_0000 + i)))
                .collect()
        };
        for n in [1u32, 100, 254, 255, 256, 1000, MAX_V4_ADDRESSES as u32] {
            let addrs = v4(n);
            let prog = event_filter(Some(&addrs)).unwrap();
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
        assert!(event_filter(Some(&v4(MAX_V4_ADDRESSES as u32 + 1))).is_err());
        assert!(event_filter(Some(&v4(5000))).is_err());

        let v6 = |n: u32| -> Vec<IpAddr> {
            (0..n)
                .map(|i| IpAddr::from(std::net::Ipv6Addr::from(0xfd00_u128 << 112 | i as u128)))
                .collect()
        };
        let mut max_v6 = 0;
        while event_filter(Some(&v6(max_v6 + 1))).is_ok() {
            max_v6 += 1;
        }
        assert!(max_v6 >= 240, "{max_v6} IPv6 addresses");
        let addrs = v6(max_v6);
        let prog = event_filter(Some(&addrs)).unwrap();
        for i in [0, 31, 32, 33, max_v6 / 2, max_v6 - 1] {
            let hit = flow("fd01::1", &addrs[i as usize].to_string(), None);
            let msg = build_flow_message(&hit, 0, wire::NLM_F_CREATE);
            assert_eq!(interpret(&prog, &msg), Some(ACCEPT), "v6 i={i}");
        }
        let miss = flow("fd01::1", "fd02::1", None);
        let msg = build_flow_message(&miss, 0, wire::NLM_F_CREATE);
        assert_eq!(interpret(&prog, &msg), Some(DROP));
    }
}
