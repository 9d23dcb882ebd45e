//! ctnetlink requests, built with `netlink-packet-netfilter`.

use std::net::IpAddr;

use netlink_packet_core::{DefaultNla, Emitable, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterProtoFamily,
    conntrack::{
        ConntrackAttribute, ConntrackMessage, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple,
        Protocol, Status, Tuple as CtTuple,
    },
};

use super::wire::{self, cta};
use crate::flow::{Family, Flow, Tuple};

/// Which side of a flow an address filter looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum AddressMatch {
    /// The reply tuple's source: the guest, with or without DNAT in front of it.
    ReplySource,
    /// The original tuple's destination: the address the client dialled.
    OrigDestination,
}

fn proto_family(family: Family) -> NetfilterProtoFamily {
    match family {
        Family::V4 => NetfilterProtoFamily::IPv4,
        Family::V6 => NetfilterProtoFamily::IPv6,
    }
}

fn family_of(addr: IpAddr) -> Family {
    match addr {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

fn serialize(
    flags: u16,
    seq: u32,
    family: NetfilterProtoFamily,
    message: ConntrackMessage,
) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            message,
        )),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

/// A full dump of one address family's conntrack table.
pub fn dump(family: Family, seq: u32) -> Vec<u8> {
    serialize(
        wire::NLM_F_REQUEST | wire::NLM_F_DUMP,
        seq,
        proto_family(family),
        ConntrackMessage::Get(vec![]),
    )
}

/// A dump that the kernel filters (`CTA_FILTER`, Linux 5.8+) down to the flows where
/// `addr` is on the side `side` names.
pub(crate) fn filtered_dump(addr: IpAddr, side: AddressMatch, seq: u32) -> Vec<u8> {
    let (tuple, filter_kind, flag) = match side {
        AddressMatch::ReplySource => (
            ConntrackAttribute::CtaTupleReply(vec![CtTuple::Ip(vec![IPTuple::SourceAddress(
                addr,
            )])]),
            cta::FILTER_REPLY_FLAGS,
            cta::FILTER_F_IP_SRC,
        ),
        AddressMatch::OrigDestination => (
            ConntrackAttribute::CtaTupleOrig(vec![CtTuple::Ip(vec![IPTuple::DestinationAddress(
                addr,
            )])]),
            cta::FILTER_ORIG_FLAGS,
            cta::FILTER_F_IP_DST,
        ),
    };
    // CTA_FILTER is a nest of host-order u32 flag words; the crate has no type for it.
    let flags_nla = DefaultNla::new(filter_kind, flag.to_ne_bytes().to_vec());
    let mut nest = vec![0; flags_nla.buffer_len()];
    flags_nla.emit(&mut nest);
    let filter = DefaultNla::new(cta::FILTER | wire::NLA_F_NESTED, nest);
    let mut buf = serialize(
        wire::NLM_F_REQUEST | wire::NLM_F_DUMP,
        seq,
        proto_family(family_of(addr)),
        ConntrackMessage::Get(vec![tuple, ConntrackAttribute::Other(filter)]),
    );
    // The crate drops NLA_F_NESTED from `Other` attributes, and the kernel parses
    // CTA_FILTER strictly (EINVAL without the flag): set it on the emitted bytes.
    set_nested_flag(&mut buf, cta::FILTER);
    buf
}

/// An exact-tuple lookup (`CT_GET` without `NLM_F_DUMP`) of the entry whose original
/// tuple, protocol and zone are `flow`'s, appended to `out` (padded to the netlink
/// alignment, so several can share one datagram). The kernel answers with the entry (a
/// hash lookup, no table walk) or with `ENOENT`. `CTA_ID` is left out on purpose: a new
/// entry reusing the tuple is then reported with its own id instead of `ENOENT`.
pub(crate) fn lookup_into(out: &mut Vec<u8>, flow: &Flow, seq: u32) {
    let mut attrs = vec![ConntrackAttribute::CtaTupleOrig(tuple_attrs(
        &flow.orig,
        flow.protocol,
    ))];
    if flow.zone != 0 {
        attrs.push(ConntrackAttribute::Other(DefaultNla::new(
            cta::ZONE,
            flow.zone.to_be_bytes().to_vec(),
        )));
    }
    let msg = serialize(
        wire::NLM_F_REQUEST,
        seq,
        proto_family(flow.family()),
        ConntrackMessage::Get(attrs),
    );
    out.extend_from_slice(&msg);
    out.resize(wire::align4(out.len()), 0);
}

/// Sets `NLA_F_NESTED` on the top-level attribute `kind` of a serialized message.
fn set_nested_flag(buf: &mut [u8], kind: u16) {
    let mut off = wire::ATTRS_OFFSET;
    while off + 4 <= buf.len() {
        let len = u16::from_ne_bytes([buf[off], buf[off + 1]]) as usize;
        let k = u16::from_ne_bytes([buf[off + 2], buf[off + 3]]);
        if len < 4 {
            return;
        }
        if k & wire::NLA_TYPE_MASK == kind {
            buf[off + 2..off + 4].copy_from_slice(&(k | wire::NLA_F_NESTED).to_ne_bytes());
            return;
        }
        off += wire::align4(len);
    }
}

fn tuple_attrs(t: &Tuple, protocol: u8) -> Vec<CtTuple> {
    let mut proto = vec![ProtoTuple::Protocol(Protocol::from(protocol))];
    if t.src_port != 0 || t.dst_port != 0 {
        proto.push(ProtoTuple::SourcePort(t.src_port));
        proto.push(ProtoTuple::DestinationPort(t.dst_port));
    }
    vec![
        CtTuple::Ip(vec![
            IPTuple::SourceAddress(t.src),
            IPTuple::DestinationAddress(t.dst),
        ]),
        CtTuple::Proto(proto),
    ]
}

fn protoinfo(state: crate::flow::TcpState) -> ConntrackAttribute {
    ConntrackAttribute::CtaProtoInfo(vec![ProtoInfo::TCP(vec![ProtoInfoTCP::State(state.0)])])
}

/// Creates a conntrack entry (`CT_NEW` with `NLM_F_CREATE | NLM_F_EXCL`), as tests and
/// benchmarks use to fill a table (in `flow.zone` when it is not 0). With `ack`, the
/// kernel answers with an error message.
pub fn create(flow: &Flow, timeout_secs: u32, ack: bool, seq: u32) -> Vec<u8> {
    let mut attrs = vec![
        ConntrackAttribute::CtaTupleOrig(tuple_attrs(&flow.orig, flow.protocol)),
        ConntrackAttribute::CtaTupleReply(tuple_attrs(&flow.reply, flow.protocol)),
        ConntrackAttribute::CtaTimeout(timeout_secs),
    ];
    if let Some(state) = flow.tcp_state {
        attrs.push(protoinfo(state));
    }
    if flow.mark != 0 {
        attrs.push(ConntrackAttribute::CtaMark(flow.mark));
    }
    if flow.zone != 0 {
        attrs.push(ConntrackAttribute::Other(DefaultNla::new(
            cta::ZONE,
            flow.zone.to_be_bytes().to_vec(),
        )));
    }
    let mut flags = wire::NLM_F_REQUEST | wire::NLM_F_CREATE | wire::NLM_F_EXCL;
    if ack {
        flags |= wire::NLM_F_ACK;
    }
    serialize(
        flags,
        seq,
        proto_family(flow.family()),
        ConntrackMessage::New(attrs),
    )
}

/// Changes the mark of an existing entry (`CT_NEW` without `NLM_F_CREATE`): the kernel
/// then sends an UPDATE event that carries no TCP state.
pub fn set_mark(orig: &Tuple, protocol: u8, mark: u32, seq: u32) -> Vec<u8> {
    let attrs = vec![
        ConntrackAttribute::CtaTupleOrig(tuple_attrs(orig, protocol)),
        ConntrackAttribute::CtaMark(mark),
    ];
    serialize(
        wire::NLM_F_REQUEST | wire::NLM_F_ACK,
        seq,
        proto_family(orig.family()),
        ConntrackMessage::New(attrs),
    )
}

/// Builders of messages the kernel would send, for tests, fuzzing and benchmarks.
#[doc(hidden)]
pub mod testing {
    use super::*;

    /// A ctnetlink message (event or dump entry) describing `flow` with every attribute
    /// the parser reads, as the kernel lays it out.
    pub fn build_flow_message(flow: &Flow, subtype: u8, nlmsg_flags: u16) -> Vec<u8> {
        let mut attrs = vec![
            ConntrackAttribute::CtaTupleOrig(tuple_attrs(&flow.orig, flow.protocol)),
            ConntrackAttribute::CtaTupleReply(tuple_attrs(&flow.reply, flow.protocol)),
            ConntrackAttribute::CtaStatus(Status::from_bits_retain(flow.status)),
        ];
        if let Some(secs) = flow.timeout_s {
            attrs.push(ConntrackAttribute::CtaTimeout(secs));
        }
        if let Some(state) = flow.tcp_state {
            attrs.push(protoinfo(state));
        }
        if flow.mark != 0 {
            attrs.push(ConntrackAttribute::CtaMark(flow.mark));
        }
        attrs.push(ConntrackAttribute::Other(DefaultNla::new(
            cta::ID,
            flow.id.to_be_bytes().to_vec(),
        )));
        if flow.zone != 0 {
            attrs.push(ConntrackAttribute::Other(DefaultNla::new(
                cta::ZONE,
                flow.zone.to_be_bytes().to_vec(),
            )));
        }
        let mut header = NetlinkHeader::default();
        header.flags = nlmsg_flags;
        let message = match subtype {
            wire::IPCTNL_MSG_CT_DELETE => ConntrackMessage::Delete(attrs),
            _ => ConntrackMessage::New(attrs),
        };
        let mut packet = NetlinkMessage::new(
            header,
            NetlinkPayload::from(NetfilterMessage::new(
                NetfilterHeader::new(proto_family(flow.family()), 0, 0),
                message,
            )),
        );
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::parse::{attrs, messages};

    #[test]
    fn dump_request_is_a_ctnetlink_get_dump() {
        let b = dump(Family::V6, 7);
        let m = messages(&b).next().unwrap().unwrap();
        assert_eq!(m.conntrack_subtype(), Some(wire::IPCTNL_MSG_CT_GET));
        assert_eq!(m.flags, wire::NLM_F_REQUEST | wire::NLM_F_DUMP);
        assert_eq!(m.seq, 7);
        assert_eq!(b[wire::NLMSG_HDRLEN], wire::AF_INET6);
    }

    #[test]
    fn lookups_share_a_datagram_and_carry_the_tuple_and_zone() {
        let mut f = Flow {
            protocol: 17,
            orig: Tuple::new(
                "10.0.0.1".parse().unwrap(),
                5000,
                "10.0.0.2".parse().unwrap(),
                53,
            ),
            reply: Tuple::new(
                "10.0.0.2".parse().unwrap(),
                53,
                "10.0.0.1".parse().unwrap(),
                5000,
            ),
            zone: 0,
            id: 9,
            tcp_state: None,
            status: 0,
            mark: 0,
            timeout_s: None,
        };
        let mut b = Vec::new();
        lookup_into(&mut b, &f, 11);
        f.zone = 7;
        lookup_into(&mut b, &f, 12);
        let msgs: Vec<_> = messages(&b).map(|m| m.unwrap()).collect();
        assert_eq!(msgs.len(), 2);
        for (m, seq) in msgs.iter().zip([11, 12]) {
            assert_eq!(m.conntrack_subtype(), Some(wire::IPCTNL_MSG_CT_GET));
            assert_eq!(m.flags, wire::NLM_F_REQUEST);
            assert_eq!(m.seq, seq);
            assert_eq!(m.bytes[wire::NLMSG_HDRLEN], wire::AF_INET);
        }
        let kinds = |m: &crate::conntrack::parse::RawMessage<'_>| -> Vec<(u16, Vec<u8>)> {
            attrs(&m.bytes[wire::ATTRS_OFFSET..])
                .map(|a| a.map(|(k, p)| (k, p.to_vec())).unwrap())
                .collect()
        };
        let first = kinds(&msgs[0]);
        assert_eq!(first.len(), 1, "no zone, and never CTA_ID");
        assert_eq!(first[0].0, cta::TUPLE_ORIG);
        let second = kinds(&msgs[1]);
        assert_eq!(second[1], (cta::ZONE, 7u16.to_be_bytes().to_vec()));
        // The tuple reads back as the flow's original tuple.
        let mut dst = None;
        for a in attrs(&first[0].1) {
            let (k, p) = a.unwrap();
            if k == cta::TUPLE_IP {
                for a in attrs(p) {
                    let (k, p) = a.unwrap();
                    if k == cta::IP_V4_DST {
                        dst = Some(p.to_vec());
                    }
                }
            }
        }
        assert_eq!(dst, Some(vec![10, 0, 0, 2]));
    }

    #[test]
    fn filtered_dump_carries_the_tuple_and_a_nested_filter() {
        let b = filtered_dump("10.1.2.3".parse().unwrap(), AddressMatch::ReplySource, 1);
        let m = messages(&b).next().unwrap().unwrap();
        let top: Vec<(u16, Vec<u8>)> = attrs(&m.bytes[wire::ATTRS_OFFSET..])
            .map(|a| a.map(|(k, p)| (k, p.to_vec())).unwrap())
            .collect();
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].0, cta::TUPLE_REPLY);
        assert_eq!(top[1].0, cta::FILTER);
        // The kernel wants NLA_F_NESTED on the filter nest.
        let at = wire::ATTRS_OFFSET + wire::align4(top[0].1.len() + 4);
        let raw_kind = u16::from_ne_bytes([b[at + 2], b[at + 3]]);
        assert_eq!(raw_kind, cta::FILTER | wire::NLA_F_NESTED);
        let inner: Vec<(u16, Vec<u8>)> = attrs(&top[1].1)
            .map(|a| a.map(|(k, p)| (k, p.to_vec())).unwrap())
            .collect();
        assert_eq!(
            inner,
            vec![(
                cta::FILTER_REPLY_FLAGS,
                cta::FILTER_F_IP_SRC.to_ne_bytes().to_vec()
            )]
        );
    }
}
