//! Classic BPF socket filter for the event socket, and a small userspace interpreter that
//! runs it in unit tests.
//!
//! The program passes a ctnetlink event only when its reply source or original
//! destination is one of the registered addresses; the kernel then never queues, wakes
//! or copies for foreign flows. Anything it cannot judge (another subsystem, an unknown
//! family, a missing attribute) is passed, so the filter can only save work, never lose
//! an event the observer needs.

use std::net::IpAddr;

use super::wire::{self, cta};

pub use libc::sock_filter as Insn;

/// The kernel's limit on classic BPF program length (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

const LD_B_ABS: u16 = 0x30;
const LD_W_IND: u16 = 0x40;
const LD_IMM: u16 = 0x00;
const LDX_IMM: u16 = 0x01;
const TAX: u16 = 0x07;
const JEQ_K: u16 = 0x15;
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

#[inline]
fn stmt(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

#[inline]
fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
    Insn { code, jt, jf, k }
}

/// Appends the lookup of address attribute `ip_kind` inside tuple nest `tuple_kind`,
/// leaving X at the attribute's offset; passes the message when any part is missing.
fn emit_lookup(p: &mut Vec<Insn>, tuple_kind: u16, ip_kind: u16) {
    p.push(stmt(LD_IMM, wire::ATTRS_OFFSET as u32));
    p.push(stmt(LDX_IMM, tuple_kind as u32));
    p.push(stmt(LD_B_ABS, AD_NLATTR));
    p.push(jump(JEQ_K, 0, 0, 1));
    p.push(stmt(RET_K, ACCEPT));
    p.push(stmt(LDX_IMM, cta::TUPLE_IP as u32));
    p.push(stmt(LD_B_ABS, AD_NLATTR_NEST));
    p.push(jump(JEQ_K, 0, 0, 1));
    p.push(stmt(RET_K, ACCEPT));
    p.push(stmt(LDX_IMM, ip_kind as u32));
    p.push(stmt(LD_B_ABS, AD_NLATTR_NEST));
    p.push(jump(JEQ_K, 0, 0, 1));
    p.push(stmt(RET_K, ACCEPT));
    p.push(stmt(TAX, 0));
}

/// Appends compares of the address at X against every IPv4 address in `addrs`.
fn emit_match_v4(p: &mut Vec<Insn>, addrs: &[[u8; 4]]) {
    p.push(stmt(LD_W_IND, 4));
    for a in addrs {
        // Loads are big-endian, as the address is on the wire.
        p.push(jump(JEQ_K, u32::from_be_bytes(*a), 0, 1));
        p.push(stmt(RET_K, ACCEPT));
    }
}

/// Appends compares of the address at X against every IPv6 address in `addrs`.
fn emit_match_v6(p: &mut Vec<Insn>, addrs: &[[u8; 16]]) {
    for a in addrs {
        for w in 0..4 {
            let word = u32::from_be_bytes([a[4 * w], a[4 * w + 1], a[4 * w + 2], a[4 * w + 3]]);
            p.push(stmt(LD_W_IND, 4 + 4 * w as u32));
            // On a mismatch, skip to the next address: past the remaining word pairs and
            // the accept.
            p.push(jump(JEQ_K, word, 0, (7 - 2 * w) as u8));
        }
        p.push(stmt(RET_K, ACCEPT));
    }
}

fn family_block(v4: &[[u8; 4]], v6: &[[u8; 16]], is_v6: bool) -> Vec<Insn> {
    let mut p = Vec::new();
    for (tuple, ip_kind) in if is_v6 {
        [
            (cta::TUPLE_REPLY, cta::IP_V6_SRC),
            (cta::TUPLE_ORIG, cta::IP_V6_DST),
        ]
    } else {
        [
            (cta::TUPLE_REPLY, cta::IP_V4_SRC),
            (cta::TUPLE_ORIG, cta::IP_V4_DST),
        ]
    } {
        emit_lookup(&mut p, tuple, ip_kind);
        if is_v6 {
            emit_match_v6(&mut p, v6);
        } else {
            emit_match_v4(&mut p, v4);
        }
    }
    p.push(stmt(RET_K, DROP));
    p
}

/// Builds the event filter for `addrs` (IPv4-mapped IPv6 addresses count as IPv4).
///
/// An empty set drops every ctnetlink event. Fails when the program would exceed the
/// kernel's limit (about 1,000 IPv4 or 250 IPv6 addresses).
pub fn address_filter(addrs: &[IpAddr]) -> Result<Vec<Insn>, super::ConntrackError> {
    let mut v4: Vec<[u8; 4]> = Vec::new();
    let mut v6: Vec<[u8; 16]> = Vec::new();
    for a in addrs {
        match a.to_canonical() {
            IpAddr::V4(a) => v4.push(a.octets()),
            IpAddr::V6(a) => v6.push(a.octets()),
        }
    }
    v4.sort_unstable();
    v4.dedup();
    v6.sort_unstable();
    v6.dedup();

    let v4_block = family_block(&v4, &v6, false);
    let v6_block = family_block(&v4, &v6, true);
    let mut p = vec![
        // Subsystem: the high byte of the host-endian nlmsg_type.
        stmt(LD_B_ABS, if cfg!(target_endian = "little") { 5 } else { 4 }),
        jump(JEQ_K, wire::NFNL_SUBSYS_CTNETLINK as u32, 1, 0),
        stmt(RET_K, ACCEPT),
        stmt(LD_B_ABS, wire::NLMSG_HDRLEN as u32),
        jump(JEQ_K, wire::AF_INET as u32, 2, 0),
        jump(JEQ_K, wire::AF_INET6 as u32, 2, 0),
        stmt(RET_K, ACCEPT),
        // AF_INET lands here and steps onto the v4 block.
        stmt(JA, 1),
        // AF_INET6 lands here and jumps over the v4 block.
        stmt(JA, v4_block.len() as u32),
    ];
    p.extend_from_slice(&v4_block);
    p.extend_from_slice(&v6_block);
    if p.len() > MAX_INSNS {
        return Err(super::ConntrackError::Invalid(format!(
            "{} IPv4 and {} IPv6 addresses need {} BPF instructions; the kernel allows {}",
            v4.len(),
            v6.len(),
            p.len(),
            MAX_INSNS
        )));
    }
    Ok(p)
}

/// Runs a classic BPF program over `pkt` the way the kernel runs a socket filter on a
/// netlink skb, for the instructions [`address_filter`] emits (and a few more). Returns
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
    use crate::conntrack::request::testing::build_flow_message;
    use crate::flow::{Flow, TcpState, Tuple};

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

    fn verdict(addrs: &[&str], f: &Flow) -> u32 {
        let addrs: Vec<IpAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
        let prog = address_filter(&addrs).unwrap();
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
        let prog = address_filter(&["10.0.0.2".parse().unwrap()]).unwrap();
        let mut done = vec![0u8; 20];
        done[0..4].copy_from_slice(&20u32.to_ne_bytes());
        done[4..6].copy_from_slice(&wire::NLMSG_DONE.to_ne_bytes());
        assert_eq!(interpret(&prog, &done), Some(ACCEPT));
        // A ctnetlink message with no attributes: the reply tuple is missing.
        let mut bare = build_flow_message(&flow("10.0.0.1", "10.0.0.9", None), 0, 0);
        bare.truncate(wire::ATTRS_OFFSET);
        bare[0..4].copy_from_slice(&(wire::ATTRS_OFFSET as u32).to_ne_bytes());
        assert_eq!(interpret(&prog, &bare), Some(ACCEPT));
        // An unknown family passes.
        let mut other = build_flow_message(&flow("10.0.0.1", "10.0.0.9", None), 0, 0);
        other[wire::NLMSG_HDRLEN] = 7;
        assert_eq!(interpret(&prog, &other), Some(ACCEPT));
    }

    #[test]
    fn scales_to_many_addresses_and_refuses_too_many() {
        for n in [1u32, 100, 1000] {
            let addrs: Vec<IpAddr> = (0..n)
                .map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a64_0000 + i)))
                .collect();
            let prog = address_filter(&addrs).unwrap();
            assert!(prog.len() <= MAX_INSNS);
            let last = addrs.last().unwrap().to_string();
            let hit = flow("10.0.0.1", &last, None);
            let miss = flow("10.0.0.1", "172.16.0.1", None);
            let msg = build_flow_message(&hit, 0, 0);
            assert_eq!(interpret(&prog, &msg), Some(ACCEPT), "n={n}");
            let msg = build_flow_message(&miss, 0, 0);
            assert_eq!(interpret(&prog, &msg), Some(DROP), "n={n}");
        }
        let too_many: Vec<IpAddr> = (0..3000u32)
            .map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a64_0000 + i)))
            .collect();
        assert!(address_filter(&too_many).is_err());
    }
}
