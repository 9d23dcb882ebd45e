//! Zero-copy, bounds-checked walker over ctnetlink messages.
//!
//! The hot path of the observer: it reads a flow out of a message in place, never
//! allocates, never panics, skips attributes it does not know, and rejects a message
//! whose framing or known attributes are inconsistent (the caller counts and skips it).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::wire::{self, cta};
use crate::flow::{EventKind, Flow, TcpState, Tuple};

/// Why a message could not be read. Cheap to copy; the message is skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A length field points past the end of the data, or is too small to be valid.
    #[error("truncated or inconsistent length")]
    BadLength,
    /// A known attribute has a payload of the wrong size.
    #[error("attribute {0} has a bad payload")]
    BadAttribute(u16),
    /// The original or reply tuple, or a part of it, is missing.
    #[error("missing tuple")]
    MissingTuple,
    /// Not a ctnetlink conntrack message.
    #[error("not a ctnetlink message")]
    NotConntrack,
}

/// One netlink message inside a received datagram.
#[derive(Clone, Copy, Debug)]
pub struct RawMessage<'a> {
    /// `nlmsg_type`.
    pub msg_type: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// The whole message, header included.
    pub bytes: &'a [u8],
}

impl RawMessage<'_> {
    /// The ctnetlink message subtype (`IPCTNL_MSG_CT_*`), if this is a ctnetlink message.
    #[inline]
    pub fn conntrack_subtype(&self) -> Option<u8> {
        let [subtype, subsys] = self.msg_type.to_le_bytes();
        (subsys == wire::NFNL_SUBSYS_CTNETLINK).then_some(subtype)
    }

    /// For `NLMSG_ERROR`, the (negative) errno it carries; 0 is an acknowledgement.
    pub fn error_code(&self) -> Option<i32> {
        if self.msg_type != wire::NLMSG_ERROR {
            return None;
        }
        let b = self.bytes.get(wire::NLMSG_HDRLEN..wire::NLMSG_HDRLEN + 4)?;
        Some(i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// What kind of event this message reports, if it is a conntrack event.
    #[inline]
    pub fn event_kind(&self) -> Option<EventKind> {
        match self.conntrack_subtype()? {
            wire::IPCTNL_MSG_CT_NEW if self.flags & wire::NLM_F_CREATE != 0 => Some(EventKind::New),
            wire::IPCTNL_MSG_CT_NEW => Some(EventKind::Update),
            wire::IPCTNL_MSG_CT_DELETE => Some(EventKind::Destroy),
            _ => None,
        }
    }
}

/// Iterates over the netlink messages packed in one datagram.
///
/// Yields `Err(BadLength)` once and stops when a header is inconsistent: past a broken
/// length there is no way to find the next message.
#[derive(Clone, Debug)]
pub struct Messages<'a> {
    rest: &'a [u8],
}

/// The netlink messages in `datagram`.
#[inline]
pub fn messages(datagram: &[u8]) -> Messages<'_> {
    Messages { rest: datagram }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<RawMessage<'a>, ParseError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let Some(h) = self.rest.get(..wire::NLMSG_HDRLEN) else {
            self.rest = &[];
            return Some(Err(ParseError::BadLength));
        };
        let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len < wire::NLMSG_HDRLEN || len > self.rest.len() {
            self.rest = &[];
            return Some(Err(ParseError::BadLength));
        }
        let msg = RawMessage {
            msg_type: u16::from_ne_bytes([h[4], h[5]]),
            flags: u16::from_ne_bytes([h[6], h[7]]),
            seq: u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
            bytes: &self.rest[..len],
        };
        let next = wire::align4(len).min(self.rest.len());
        self.rest = &self.rest[next..];
        Some(Ok(msg))
    }
}

/// Iterates over the attributes of one level: `(type without flags, payload)`.
#[derive(Clone, Debug)]
pub struct Attrs<'a> {
    rest: &'a [u8],
}

/// The attributes in `buf`.
#[inline]
pub fn attrs(buf: &[u8]) -> Attrs<'_> {
    Attrs { rest: buf }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), ParseError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let (len, kind) = match self.rest {
            [a, b, c, d, ..] => (
                u16::from_ne_bytes([*a, *b]) as usize,
                u16::from_ne_bytes([*c, *d]),
            ),
            _ => {
                self.rest = &[];
                return Some(Err(ParseError::BadLength));
            }
        };
        if len < 4 || len > self.rest.len() {
            self.rest = &[];
            return Some(Err(ParseError::BadLength));
        }
        let payload = &self.rest[4..len];
        let next = wire::align4(len).min(self.rest.len());
        self.rest = &self.rest[next..];
        Some(Ok((kind & wire::NLA_TYPE_MASK, payload)))
    }
}

/// A conntrack message read in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtMessage {
    /// `IPCTNL_MSG_CT_*` subtype.
    pub subtype: u8,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nfgen_family`.
    pub family: u8,
    /// The flow the message describes.
    pub flow: Flow,
    /// `CTA_TIMESTAMP_EVENT` in nanoseconds, when present.
    pub timestamp_event: Option<u64>,
}

#[derive(Default, Clone, Copy)]
struct TupleParts {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    proto: Option<u8>,
    src_port: u16,
    dst_port: u16,
}

impl TupleParts {
    #[inline]
    fn finish(self) -> Result<(Tuple, u8), ParseError> {
        match (self.src, self.dst, self.proto) {
            (Some(src), Some(dst), Some(proto)) => {
                Ok((Tuple::new(src, self.src_port, dst, self.dst_port), proto))
            }
            _ => Err(ParseError::MissingTuple),
        }
    }
}

#[inline]
fn be_u16(kind: u16, p: &[u8]) -> Result<u16, ParseError> {
    match p {
        [a, b] => Ok(u16::from_be_bytes([*a, *b])),
        _ => Err(ParseError::BadAttribute(kind)),
    }
}

#[inline]
fn be_u32(kind: u16, p: &[u8]) -> Result<u32, ParseError> {
    match p {
        [a, b, c, d] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => Err(ParseError::BadAttribute(kind)),
    }
}

#[inline]
fn be_u64(kind: u16, p: &[u8]) -> Result<u64, ParseError> {
    let b: [u8; 8] = p.try_into().map_err(|_| ParseError::BadAttribute(kind))?;
    Ok(u64::from_be_bytes(b))
}

#[inline]
fn ip(kind: u16, p: &[u8]) -> Result<IpAddr, ParseError> {
    if let Ok(b) = <[u8; 4]>::try_from(p) {
        if matches!(kind, cta::IP_V4_SRC | cta::IP_V4_DST) {
            return Ok(IpAddr::V4(Ipv4Addr::from(b)));
        }
    } else if let Ok(b) = <[u8; 16]>::try_from(p)
        && matches!(kind, cta::IP_V6_SRC | cta::IP_V6_DST)
    {
        return Ok(IpAddr::V6(Ipv6Addr::from(b)));
    }
    Err(ParseError::BadAttribute(kind))
}

#[inline]
fn parse_tuple(nest: &[u8]) -> Result<TupleParts, ParseError> {
    let mut t = TupleParts::default();
    for a in attrs(nest) {
        let (kind, payload) = a?;
        match kind {
            cta::TUPLE_IP => {
                for a in attrs(payload) {
                    let (kind, p) = a?;
                    match kind {
                        cta::IP_V4_SRC | cta::IP_V6_SRC => t.src = Some(ip(kind, p)?),
                        cta::IP_V4_DST | cta::IP_V6_DST => t.dst = Some(ip(kind, p)?),
                        _ => {}
                    }
                }
            }
            cta::TUPLE_PROTO => {
                for a in attrs(payload) {
                    let (kind, p) = a?;
                    match kind {
                        cta::PROTO_NUM => match p {
                            [n] => t.proto = Some(*n),
                            _ => return Err(ParseError::BadAttribute(kind)),
                        },
                        cta::PROTO_SRC_PORT => t.src_port = be_u16(kind, p)?,
                        cta::PROTO_DST_PORT => t.dst_port = be_u16(kind, p)?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(t)
}

#[inline]
fn parse_tcp_state(nest: &[u8]) -> Result<Option<TcpState>, ParseError> {
    for a in attrs(nest) {
        let (kind, payload) = a?;
        if kind == cta::PROTOINFO_TCP {
            for a in attrs(payload) {
                let (kind, p) = a?;
                if kind == cta::PROTOINFO_TCP_STATE {
                    // The state comes first; window scales and flags are not needed.
                    return match p {
                        [s] => Ok(Some(TcpState(*s))),
                        _ => Err(ParseError::BadAttribute(kind)),
                    };
                }
            }
        }
    }
    Ok(None)
}

/// Reads the flow out of a ctnetlink conntrack message (event or dump entry).
pub fn parse_conntrack(msg: &RawMessage<'_>) -> Result<CtMessage, ParseError> {
    let subtype = msg.conntrack_subtype().ok_or(ParseError::NotConntrack)?;
    let family = *msg
        .bytes
        .get(wire::NLMSG_HDRLEN)
        .ok_or(ParseError::BadLength)?;
    let body = msg
        .bytes
        .get(wire::ATTRS_OFFSET..)
        .ok_or(ParseError::BadLength)?;
    let mut orig = None;
    let mut reply = None;
    let mut tcp_state = None;
    let (mut status, mut mark, mut id, mut zone) = (0, 0, 0, 0);
    let (mut timeout, mut timestamp_event) = (None, None);
    for a in attrs(body) {
        let (kind, p) = a?;
        match kind {
            cta::TUPLE_ORIG => orig = Some(parse_tuple(p)?),
            cta::TUPLE_REPLY => reply = Some(parse_tuple(p)?),
            cta::PROTOINFO => tcp_state = parse_tcp_state(p)?,
            cta::STATUS => status = be_u32(kind, p)?,
            cta::MARK => mark = be_u32(kind, p)?,
            cta::ID => id = be_u32(kind, p)?,
            cta::ZONE => zone = be_u16(kind, p)?,
            cta::TIMEOUT => timeout = Some(be_u32(kind, p)?),
            cta::TIMESTAMP_EVENT => timestamp_event = Some(be_u64(kind, p)?),
            _ => {}
        }
    }
    let (orig, protocol) = orig.ok_or(ParseError::MissingTuple)?.finish()?;
    let (reply, _) = reply.ok_or(ParseError::MissingTuple)?.finish()?;
    Ok(CtMessage {
        subtype,
        flags: msg.flags,
        family,
        flow: Flow {
            protocol,
            orig,
            reply,
            zone,
            id,
            tcp_state,
            status,
            mark,
            timeout_s: timeout,
        },
        timestamp_event,
    })
}

/// Reads an event: its kind and flow. `Ok(None)` for a message that is not an event.
#[inline]
pub fn parse_event(msg: &RawMessage<'_>) -> Result<Option<crate::flow::FlowEvent>, ParseError> {
    let Some(kind) = msg.event_kind() else {
        return Ok(None);
    };
    let ct = parse_conntrack(msg)?;
    Ok(Some(crate::flow::FlowEvent {
        kind,
        flow: ct.flow,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::request::testing::build_flow_message;

    fn flow_v4() -> Flow {
        Flow {
            protocol: 6,
            orig: Tuple::new(
                "10.0.0.1".parse().unwrap(),
                40000,
                "10.0.0.2".parse().unwrap(),
                80,
            ),
            reply: Tuple::new(
                "10.0.0.2".parse().unwrap(),
                80,
                "10.0.0.1".parse().unwrap(),
                40000,
            ),
            zone: 0,
            id: 0xdead_beef,
            tcp_state: Some(TcpState::ESTABLISHED),
            status: 0xe,
            mark: 7,
            timeout_s: None,
        }
    }

    #[test]
    fn reads_back_what_was_built() {
        let f = flow_v4();
        let bytes = build_flow_message(
            &f,
            wire::IPCTNL_MSG_CT_NEW,
            wire::NLM_F_CREATE | wire::NLM_F_EXCL,
        );
        let mut it = messages(&bytes);
        let raw = it.next().unwrap().unwrap();
        assert!(it.next().is_none());
        assert_eq!(raw.event_kind(), Some(EventKind::New));
        let ct = parse_conntrack(&raw).unwrap();
        assert_eq!(ct.flow, f);
        assert_eq!(ct.family, wire::AF_INET);
    }

    #[test]
    fn update_and_destroy_are_told_apart_from_new() {
        let f = flow_v4();
        let upd = build_flow_message(&f, wire::IPCTNL_MSG_CT_NEW, 0);
        let del = build_flow_message(&f, wire::IPCTNL_MSG_CT_DELETE, 0);
        let u = messages(&upd).next().unwrap().unwrap();
        let d = messages(&del).next().unwrap().unwrap();
        assert_eq!(u.event_kind(), Some(EventKind::Update));
        assert_eq!(d.event_kind(), Some(EventKind::Destroy));
    }

    #[test]
    fn missing_protoinfo_means_unchanged_not_none() {
        let mut f = flow_v4();
        f.tcp_state = None;
        let bytes = build_flow_message(&f, wire::IPCTNL_MSG_CT_NEW, 0);
        let raw = messages(&bytes).next().unwrap().unwrap();
        assert_eq!(parse_conntrack(&raw).unwrap().flow.tcp_state, None);
    }

    #[test]
    fn ipv6_and_udp_flows() {
        let mut f = flow_v4();
        f.protocol = 17;
        f.tcp_state = None;
        f.orig = Tuple::new(
            "fd00::1".parse().unwrap(),
            5000,
            "fd00::2".parse().unwrap(),
            53,
        );
        f.reply = Tuple::new(
            "fd00::2".parse().unwrap(),
            53,
            "fd00::1".parse().unwrap(),
            5000,
        );
        f.zone = 9;
        f.timeout_s = Some(30);
        let bytes = build_flow_message(&f, wire::IPCTNL_MSG_CT_NEW, wire::NLM_F_CREATE);
        let raw = messages(&bytes).next().unwrap().unwrap();
        let ct = parse_conntrack(&raw).unwrap();
        assert_eq!(ct.flow, f);
        assert_eq!(ct.family, wire::AF_INET6);
    }

    #[test]
    fn broken_lengths_are_errors_not_panics() {
        let bytes = build_flow_message(&flow_v4(), wire::IPCTNL_MSG_CT_NEW, 0);
        for cut in 0..bytes.len() {
            let part = &bytes[..cut];
            for m in messages(part).flatten() {
                let _ = parse_conntrack(&m);
            }
        }
        // A header claiming more than the datagram holds.
        let mut bad = bytes.clone();
        bad[0..4].copy_from_slice(&(bytes.len() as u32 + 4).to_ne_bytes());
        assert!(matches!(
            messages(&bad).next(),
            Some(Err(ParseError::BadLength))
        ));
    }

    #[test]
    fn unknown_attributes_are_skipped() {
        let f = flow_v4();
        let mut bytes = build_flow_message(&f, wire::IPCTNL_MSG_CT_NEW, 0);
        // Append an unknown attribute (type 200, 5-byte payload, padded).
        bytes.extend_from_slice(&[9, 0, 200, 0, 1, 2, 3, 4, 5, 0, 0, 0]);
        let len = bytes.len() as u32;
        bytes[0..4].copy_from_slice(&len.to_ne_bytes());
        let raw = messages(&bytes).next().unwrap().unwrap();
        assert_eq!(parse_conntrack(&raw).unwrap().flow, f);
    }

    #[test]
    fn a_wrong_size_known_attribute_is_rejected() {
        let f = flow_v4();
        let mut bytes = build_flow_message(&f, wire::IPCTNL_MSG_CT_NEW, 0);
        // CTA_MARK with a 2-byte payload.
        bytes.extend_from_slice(&[6, 0, cta::MARK as u8, 0, 1, 2, 0, 0]);
        let len = bytes.len() as u32;
        bytes[0..4].copy_from_slice(&len.to_ne_bytes());
        let raw = messages(&bytes).next().unwrap().unwrap();
        assert_eq!(
            parse_conntrack(&raw),
            Err(ParseError::BadAttribute(cta::MARK))
        );
    }
}
