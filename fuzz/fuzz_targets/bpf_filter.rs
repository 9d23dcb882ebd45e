//! The event socket's classic BPF filter against the rule it implements. For arbitrary
//! events (kind, protocol, TCP state or none, status) and address sets (or none) in
//! either form (exact addresses; arbitrary prefixes; the set aggregated into prefixes
//! under an arbitrary instruction budget, which must still cover every address), run
//! the program (bpf::interpret, which runs it as the kernel runs a socket filter on a
//! netlink skb) on the message the kernel would send:
//! - unchanged message: the filter passes it exactly when `bpf::plan_passes` says so for
//!   the event the parser reads;
//! - message with arbitrary bytes changed or appended: the filter may pass more, but
//!   never drops an event that `bpf::plan_passes` keeps, as long as the message is one the
//!   kernel could send (one length, each attribute the filter reads at most once: the
//!   filter reads the first of two, the parser the last).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::Arbitrary;
use autostandby::conntrack::request::testing::build_flow_message;
use autostandby::conntrack::wire::{self, cta};
use autostandby::conntrack::{bpf, parse};
use autostandby::flow::{Flow, TcpState, Tuple};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    v6: bool,
    /// 6 (TCP), 17 (UDP) or another protocol.
    protocol: u8,
    client: [u8; 16],
    guest: [u8; 16],
    /// The address the client dialled, when DNAT rewrote it to the guest.
    dialled: Option<[u8; 16]>,
    ports: (u16, u16, u16),
    id: u32,
    zone: u16,
    mark: u32,
    status: u32,
    /// The TCP state, absent when the event carries none.
    tcp_state: Option<u8>,
    /// 0 NEW, 1 UPDATE, 2 DESTROY.
    kind: u8,
    /// No address part: the state part alone.
    any_address: bool,
    /// Other watched addresses (either family).
    others: Vec<(bool, [u8; 16])>,
    watch_guest: bool,
    watch_dialled: bool,
    watch_client: bool,
    /// 0: exact addresses; 1: each watched address as a prefix of the length given with
    /// it; 2: the set aggregated under `budget` instructions.
    form: u8,
    /// Prefix lengths of others, guest, dialled, client in form 1.
    lens: (Vec<u8>, u8, u8, u8),
    budget: u16,
    /// Byte changes at (offset modulo length).
    changes: Vec<(u16, u8)>,
    /// Bytes appended inside the message (its length is fixed up).
    tail: Vec<u8>,
}

fn addr(v6: bool, b: [u8; 16]) -> IpAddr {
    if v6 {
        let a = Ipv6Addr::from(b);
        // The filter compares the message's bytes, the engine canonical addresses: an
        // IPv4-mapped address inside an IPv6 flow is the one case where they differ. The
        // kernel's IPv6 input drops such packets (no conntrack entry carries them), so
        // the generator does not produce them.
        if a.to_ipv4_mapped().is_some() {
            let mut b = b;
            b[0] = 0xfd;
            return IpAddr::V6(Ipv6Addr::from(b));
        }
        IpAddr::V6(a)
    } else {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    }
}

/// Each attribute of `kinds` at most once at this level, and each nest of `nested` in
/// turn (recursively) likewise.
fn single(buf: &[u8], kinds: &[u16], nested: &[(u16, &dyn Fn(&[u8]) -> bool)]) -> bool {
    let mut seen = Vec::new();
    for a in parse::attrs(buf) {
        let Ok((kind, payload)) = a else {
            return true; // the walk stops here for both readers
        };
        if kinds.contains(&kind) {
            if seen.contains(&kind) {
                return false;
            }
            seen.push(kind);
        }
        if let Some((_, check)) = nested.iter().find(|(k, _)| *k == kind)
            && !check(payload)
        {
            return false;
        }
    }
    true
}

/// The message is one the filter and the parser read alike.
fn unambiguous(msg: &[u8]) -> bool {
    if msg.len() < wire::ATTRS_OFFSET {
        return false;
    }
    let len = u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize;
    if len != msg.len() {
        return false;
    }
    let ip = |b: &[u8]| single(b, &[1, 2, 3, 4], &[]);
    let proto = |b: &[u8]| single(b, &[cta::PROTO_NUM], &[]);
    let tuple = |b: &[u8]| {
        single(
            b,
            &[cta::TUPLE_IP, cta::TUPLE_PROTO],
            &[(1, &ip), (2, &proto)],
        )
    };
    let tcp = |b: &[u8]| single(b, &[cta::PROTOINFO_TCP_STATE], &[]);
    let protoinfo = |b: &[u8]| single(b, &[cta::PROTOINFO_TCP], &[(1, &tcp)]);
    single(
        &msg[wire::ATTRS_OFFSET..],
        &[
            cta::TUPLE_ORIG,
            cta::TUPLE_REPLY,
            cta::STATUS,
            cta::PROTOINFO,
        ],
        &[
            (cta::TUPLE_ORIG, &tuple),
            (cta::TUPLE_REPLY, &tuple),
            (cta::PROTOINFO, &protoinfo),
        ],
    )
}

fuzz_target!(|input: Input| {
    let client = addr(input.v6, input.client);
    let guest = addr(input.v6, input.guest);
    let dialled = input.dialled.map_or(guest, |d| addr(input.v6, d));
    let (cport, dport, gport) = input.ports;
    let tcp = input.protocol == 6;
    let flow = Flow {
        protocol: input.protocol,
        orig: Tuple::new(client, cport, dialled, dport),
        reply: Tuple::new(guest, gport, client, cport),
        zone: input.zone,
        id: input.id,
        tcp_state: input.tcp_state.filter(|_| tcp).map(TcpState),
        status: input.status,
        mark: input.mark,
        timeout_s: None,
    };
    let mut set: Vec<IpAddr> = input
        .others
        .iter()
        .take(64)
        .map(|(v6, b)| addr(*v6, *b))
        .collect();
    if input.watch_guest {
        set.push(guest);
    }
    if input.watch_dialled {
        set.push(dialled);
    }
    if input.watch_client {
        set.push(client);
    }
    let set = (!input.any_address).then_some(set);
    let plan = set.as_deref().map(|set| match input.form % 3 {
        0 => bpf::AddressPlan::new(set, true),
        1 => {
            let (others, g, d, c) = &input.lens;
            let mut lens = others.iter().copied().chain([*g, *d, *c]).cycle();
            let with: Vec<(IpAddr, u8)> = set
                .iter()
                .map(|a| (*a, lens.next().unwrap_or(128)))
                .collect();
            bpf::AddressPlan::from_prefixes(&with, true)
        }
        _ => {
            let plan = bpf::AddressPlan::with_budget(set, true, usize::from(input.budget));
            for a in set {
                assert!(plan.covers(*a), "{a} not covered by {:?}", plan.form());
            }
            plan
        }
    });
    let prog = match &plan {
        Some(p) => bpf::plan_filter(p),
        None => bpf::state_filter(),
    };
    if input.form % 3 == 0 {
        let same =
            |x: &bpf::Insn, y: &bpf::Insn| (x.code, x.jt, x.jf, x.k) == (y.code, y.jt, y.jf, y.k);
        let direct = bpf::event_filter(set.as_deref());
        assert!(prog.len() == direct.len() && prog.iter().zip(&direct).all(|(x, y)| same(x, y)));
        assert!(
            !plan.as_ref().is_some_and(|p| p.form().is_prefixes()),
            "64 addresses fit exactly"
        );
    }

    let (subtype, flags) = match input.kind % 3 {
        0 => (
            wire::IPCTNL_MSG_CT_NEW,
            wire::NLM_F_CREATE | wire::NLM_F_EXCL,
        ),
        1 => (wire::IPCTNL_MSG_CT_NEW, 0),
        _ => (wire::IPCTNL_MSG_CT_DELETE, 0),
    };
    let mut msg = build_flow_message(&flow, subtype, flags);
    let pristine = input.changes.is_empty() && input.tail.is_empty();
    msg.extend_from_slice(&input.tail);
    if !input.tail.is_empty() {
        let len = msg.len() as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
    }
    let n = msg.len();
    for (off, v) in &input.changes {
        msg[*off as usize % n] = *v;
    }

    let verdict = bpf::interpret(&prog, &msg).expect("event_filter emits a valid program");
    assert!(
        verdict == bpf::ACCEPT || verdict == bpf::DROP,
        "verdict {verdict}"
    );
    let event = match parse::messages(&msg).next() {
        Some(Ok(m)) => parse::parse_event(&m).ok().flatten(),
        _ => None,
    };
    let kept = event
        .as_ref()
        .is_some_and(|e| bpf::plan_passes(e.kind, &e.flow, plan.as_ref()));
    if input.form % 3 == 0
        && let Some(e) = &event
    {
        // Exact: the plan's rule is the rule over the addresses themselves.
        assert_eq!(kept, bpf::passes(e.kind, &e.flow, set.as_deref()));
    }
    if kept && (pristine || unambiguous(&msg)) {
        assert_eq!(
            verdict,
            bpf::ACCEPT,
            "the filter dropped an event the rule keeps: {event:?} plan {plan:?}"
        );
    }
    if pristine {
        let e = event.expect("the parser reads the kernel's message");
        assert_eq!(e.flow.reply.src, flow.reply.src);
        assert_eq!(e.flow.orig.dst, flow.orig.dst);
        assert_eq!(e.flow.tcp_state, flow.tcp_state);
        let want = if kept { bpf::ACCEPT } else { bpf::DROP };
        assert_eq!(
            verdict, want,
            "filter and rule disagree on {:?} {flow:?} plan {plan:?}",
            e.kind
        );
    }
});
