//! The zero-copy parser against captured kernel messages: it agrees with
//! `netlink-packet-netfilter` on every field, and never panics on mutated input.
//! No root needed.

use std::net::IpAddr;

use autostandby::conntrack::parse::{self, RawMessage};
use autostandby::conntrack::request::testing::build_flow_message;
use autostandby::conntrack::{bpf, wire};
use autostandby::flow::{EventKind, Flow, TcpState, Tuple};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple,
    Tuple as CtTuple,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner};
use proptest::prelude::*;

/// Captured with `conntrack_probe capture` in a test namespace: events (TCP v4/v6 with
/// full lifecycles, DNAT, UDP, mark-only updates) and dump entries.
const CORPUS: &[u8] = include_bytes!("data/ctnetlink-corpus.bin");

fn corpus() -> Vec<&'static [u8]> {
    let mut out = Vec::new();
    let mut rest = CORPUS;
    while rest.len() >= 4 {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        out.push(&rest[4..4 + len]);
        rest = &rest[4 + len..];
    }
    assert!(rest.is_empty(), "corpus framing");
    out
}

fn one(bytes: &[u8]) -> RawMessage<'_> {
    let mut it = parse::messages(bytes);
    let m = it.next().expect("a message").expect("valid framing");
    assert!(it.next().is_none());
    m
}

/// The same fields, read by the crate.
fn oracle(bytes: &[u8]) -> Flow {
    let msg = NetlinkMessage::<NetfilterMessage>::deserialize(bytes).expect("crate parses it");
    let NetlinkPayload::InnerMessage(nf) = msg.payload else {
        panic!("not an inner message")
    };
    let NetfilterMessageInner::Conntrack(ct) = nf.inner else {
        panic!("not conntrack")
    };
    let attrs = match ct {
        ConntrackMessage::New(a) | ConntrackMessage::Delete(a) => a,
        other => panic!("unexpected {other:?}"),
    };
    let tuple = |parts: &[CtTuple]| -> (Tuple, u8) {
        let (mut src, mut dst, mut proto, mut sp, mut dp) = (None, None, 0, 0, 0);
        for p in parts {
            match p {
                CtTuple::Ip(ips) => {
                    for i in ips {
                        match i {
                            IPTuple::SourceAddress(a) => src = Some(*a),
                            IPTuple::DestinationAddress(a) => dst = Some(*a),
                            _ => {}
                        }
                    }
                }
                CtTuple::Proto(ps) => {
                    for x in ps {
                        match x {
                            ProtoTuple::Protocol(p) => proto = u8::from(*p),
                            ProtoTuple::SourcePort(p) => sp = *p,
                            ProtoTuple::DestinationPort(p) => dp = *p,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        (Tuple::new(src.unwrap(), sp, dst.unwrap(), dp), proto)
    };
    let mut f = Flow {
        protocol: 0,
        orig: Tuple::new(IpAddr::from([0, 0, 0, 0]), 0, IpAddr::from([0, 0, 0, 0]), 0),
        reply: Tuple::new(IpAddr::from([0, 0, 0, 0]), 0, IpAddr::from([0, 0, 0, 0]), 0),
        zone: 0,
        id: 0,
        tcp_state: None,
        status: 0,
        mark: 0,
        timeout_s: None,
    };
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => (f.orig, f.protocol) = tuple(&t),
            ConntrackAttribute::CtaTupleReply(t) => f.reply = tuple(&t).0,
            ConntrackAttribute::CtaStatus(s) => f.status = s.bits(),
            ConntrackAttribute::CtaMark(m) => f.mark = m,
            ConntrackAttribute::CtaTimeout(t) => f.timeout_s = Some(t),
            ConntrackAttribute::CtaProtoInfo(infos) => {
                for i in infos {
                    if let ProtoInfo::TCP(tcp) = i {
                        for t in tcp {
                            if let ProtoInfoTCP::State(s) = t {
                                f.tcp_state = Some(TcpState(s));
                            }
                        }
                    }
                }
            }
            ConntrackAttribute::Other(nla) => {
                use netlink_packet_core::{Emitable, Nla};
                let mut raw = vec![0; nla.buffer_len()];
                nla.emit(&mut raw);
                let value = &raw[4..4 + nla.value_len()];
                match nla.kind() & wire::NLA_TYPE_MASK {
                    k if k == wire::cta::ID => f.id = u32::from_be_bytes(value.try_into().unwrap()),
                    k if k == wire::cta::ZONE => {
                        f.zone = u16::from_be_bytes(value.try_into().unwrap())
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    f
}

#[test]
fn the_corpus_covers_what_the_observer_meets() {
    let msgs = corpus();
    let mut kinds = std::collections::HashSet::new();
    let (mut v6, mut udp, mut dnat, mut no_state_update, mut dump_entries) = (0, 0, 0, 0, 0);
    for bytes in &msgs {
        let m = one(bytes);
        let ct = parse::parse_conntrack(&m).expect("every captured message parses");
        match m.event_kind() {
            Some(k) if m.flags & wire::NLM_F_MULTI == 0 => {
                kinds.insert(k);
                if k == EventKind::Update && ct.flow.tcp_state.is_none() && ct.flow.protocol == 6 {
                    no_state_update += 1;
                }
            }
            _ => dump_entries += 1,
        }
        v6 += usize::from(ct.flow.orig.src.is_ipv6());
        udp += usize::from(ct.flow.protocol == 17);
        dnat += usize::from(ct.flow.orig.dst != ct.flow.reply.src);
    }
    assert_eq!(kinds.len(), 3, "NEW, UPDATE and DESTROY: {kinds:?}");
    assert!(
        v6 > 0 && udp > 0 && dnat > 0 && dump_entries > 0,
        "{v6} {udp} {dnat} {dump_entries}"
    );
    assert!(
        no_state_update > 0,
        "a mark-only UPDATE without CTA_PROTOINFO"
    );
}

#[test]
fn the_parser_agrees_with_netlink_packet_netfilter_on_captured_messages() {
    for bytes in corpus() {
        let ours = parse::parse_conntrack(&one(bytes)).unwrap().flow;
        assert_eq!(ours, oracle(bytes));
    }
}

fn arb_ip() -> impl Strategy<Value = (IpAddr, IpAddr)> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<[u8; 4]>()).prop_map(|(a, b)| (IpAddr::from(a), IpAddr::from(b))),
        (any::<[u8; 16]>(), any::<[u8; 16]>())
            // Keep IPv6 genuinely IPv6: mapped addresses are canonicalised to IPv4.
            .prop_filter("not v4-mapped", |(a, b)| a[..12]
                != [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]
                && b[..12] != [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff])
            .prop_map(|(a, b)| (IpAddr::from(a), IpAddr::from(b))),
    ]
}

fn arb_flow() -> impl Strategy<Value = Flow> {
    (
        arb_ip(),
        any::<(u16, u16, u32, u32, u16)>(),
        prop::option::of(0u8..13),
        prop_oneof![Just(6u8), Just(17u8)],
        any::<u32>(),
    )
        .prop_map(
            |((a, b), (sp, dp, id, mark, zone), state, protocol, status)| Flow {
                protocol,
                orig: Tuple::new(a, sp, b, dp),
                reply: Tuple::new(b, dp, a, sp),
                zone,
                id,
                tcp_state: state.map(TcpState),
                status,
                mark,
                timeout_s: None,
            },
        )
        // Port 0 on both sides is how port-less protocols look; the builder omits them.
        .prop_filter("ports", |f| f.orig.src_port != 0 || f.orig.dst_port != 0)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Mutated captured messages: flipped bytes, truncations, bogus lengths. The parser,
    /// the message iterator and the BPF interpreter never panic.
    #[test]
    fn mutated_messages_never_panic(
        pick in 0usize..1000,
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..12),
        cut in any::<prop::sample::Index>(),
        tail in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let msgs = corpus();
        let mut bytes = msgs[pick % msgs.len()].to_vec();
        for (at, v) in flips {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        bytes.extend_from_slice(&tail);
        let prog = bpf::address_filter(&["10.231.0.2".parse().unwrap(), "fd31::2".parse().unwrap()]);
        let _ = bpf::interpret(&prog, &bytes);
        let mut n = 0;
        for m in parse::messages(&bytes) {
            n += 1;
            if let Ok(m) = m {
                let _ = parse::parse_conntrack(&m);
                let _ = parse::parse_event(&m);
                let _ = m.error_code();
            }
        }
        prop_assert!(n <= bytes.len() / 4 + 1);
    }

    /// Arbitrary flows, built as the kernel lays them out, read back identically by us
    /// and by the crate.
    #[test]
    fn built_flows_round_trip_and_match_the_oracle(f in arb_flow(), destroy in any::<bool>()) {
        let subtype = if destroy { wire::IPCTNL_MSG_CT_DELETE } else { wire::IPCTNL_MSG_CT_NEW };
        let bytes = build_flow_message(&f, subtype, 0);
        let ours = parse::parse_conntrack(&one(&bytes)).unwrap().flow;
        prop_assert_eq!(ours, f);
        prop_assert_eq!(oracle(&bytes), f);
    }
}
