//! Plain data describing one conntrack flow, as the engine and the observer share it.
//!
//! Addresses are stored canonically: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is
//! always turned into the IPv4 address it carries, on every side of a tuple, so that one
//! guest has one spelling whatever the socket family of its peer.

// Pure code: unsafe belongs only in the conntrack socket layer and the C ABI.
#![forbid(unsafe_code)]

use std::net::IpAddr;

/// IP protocol numbers the library gives meaning to.
pub mod proto {
    /// `IPPROTO_TCP`.
    pub const TCP: u8 = 6;
    /// `IPPROTO_UDP`.
    pub const UDP: u8 = 17;
}

/// Address family of a flow, derived from its addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 (`AF_INET`).
    V4,
    /// IPv6 (`AF_INET6`).
    V6,
}

/// Returns `addr` with an IPv4-mapped IPv6 address turned into plain IPv4.
#[inline]
pub fn canonical_ip(addr: IpAddr) -> IpAddr {
    addr.to_canonical()
}

/// One direction of a flow: addresses and ports (ports are 0 for port-less protocols).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

impl Tuple {
    /// Builds a tuple, normalising IPv4-mapped addresses.
    #[inline]
    pub fn new(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16) -> Self {
        Self {
            src: canonical_ip(src),
            dst: canonical_ip(dst),
            src_port,
            dst_port,
        }
    }

    /// Family of the tuple's source address.
    #[inline]
    pub fn family(&self) -> Family {
        match self.src {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// A conntrack TCP state, numbered as the kernel's uapi `enum tcp_conntrack`.
///
/// Kept as a raw number so values from newer kernels survive; unknown values count as
/// live, because judging a live flow finished would strand its client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcpState(pub u8);

impl TcpState {
    /// `TCP_CONNTRACK_NONE`.
    pub const NONE: Self = Self(0);
    /// `TCP_CONNTRACK_SYN_SENT`.
    pub const SYN_SENT: Self = Self(1);
    /// `TCP_CONNTRACK_SYN_RECV`.
    pub const SYN_RECV: Self = Self(2);
    /// `TCP_CONNTRACK_ESTABLISHED`.
    pub const ESTABLISHED: Self = Self(3);
    /// `TCP_CONNTRACK_FIN_WAIT`.
    pub const FIN_WAIT: Self = Self(4);
    /// `TCP_CONNTRACK_CLOSE_WAIT`.
    pub const CLOSE_WAIT: Self = Self(5);
    /// `TCP_CONNTRACK_LAST_ACK`.
    pub const LAST_ACK: Self = Self(6);
    /// `TCP_CONNTRACK_TIME_WAIT`.
    pub const TIME_WAIT: Self = Self(7);
    /// `TCP_CONNTRACK_CLOSE`.
    pub const CLOSE: Self = Self(8);
    /// `TCP_CONNTRACK_SYN_SENT2` (named `LISTEN` in older headers).
    pub const SYN_SENT2: Self = Self(9);
    /// `TCP_CONNTRACK_IGNORE`.
    pub const IGNORE: Self = Self(11);
    /// `TCP_CONNTRACK_RETRANS`.
    pub const RETRANS: Self = Self(12);

    /// True for the states in which a connection is over: NONE, TIME_WAIT and CLOSE.
    #[inline]
    pub fn is_finished(self) -> bool {
        matches!(self, Self::NONE | Self::TIME_WAIT | Self::CLOSE)
    }

    /// The conntrack-tools name of the state, or `"UNKNOWN"`.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "NONE",
            1 => "SYN_SENT",
            2 => "SYN_RECV",
            3 => "ESTABLISHED",
            4 => "FIN_WAIT",
            5 => "CLOSE_WAIT",
            6 => "LAST_ACK",
            7 => "TIME_WAIT",
            8 => "CLOSE",
            9 => "SYN_SENT2",
            11 => "IGNORE",
            12 => "RETRANS",
            _ => "UNKNOWN",
        }
    }
}

/// What a flow event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A flow was created (`IPCTNL_MSG_CT_NEW` with `NLM_F_CREATE`).
    New,
    /// A flow changed (`IPCTNL_MSG_CT_NEW` without `NLM_F_CREATE`).
    Update,
    /// A flow was destroyed (`IPCTNL_MSG_CT_DELETE`).
    Destroy,
}

/// Identity of a flow: the original tuple, protocol, zone and conntrack id.
///
/// The id alone is a 32-bit hash that can collide or be reused; with the tuple and zone
/// it names one kernel entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Original-direction tuple.
    pub orig: Tuple,
    /// IP protocol number.
    pub protocol: u8,
    /// Conntrack zone (0 when absent).
    pub zone: u16,
    /// `CTA_ID`.
    pub id: u32,
}

/// A view of one conntrack entry as an event or a dump reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// IP protocol number (see [`proto`]).
    pub protocol: u8,
    /// Original-direction tuple (the initiator's view).
    pub orig: Tuple,
    /// Reply-direction tuple (the responder's view; differs from `orig` under NAT).
    pub reply: Tuple,
    /// Conntrack zone (0 when absent).
    pub zone: u16,
    /// `CTA_ID`.
    pub id: u32,
    /// TCP state; `None` when the message carried none, which means "unchanged".
    pub tcp_state: Option<TcpState>,
    /// `CTA_STATUS` bits.
    pub status: u32,
    /// `CTA_MARK` (0 when absent).
    pub mark: u32,
    /// `CTA_TIMEOUT`: seconds until conntrack expires the entry unless traffic refreshes
    /// it (which reports no event); `None` when unknown.
    pub timeout_s: Option<u32>,
}

impl Flow {
    /// The flow's identity.
    #[inline]
    pub fn key(&self) -> FlowKey {
        FlowKey {
            orig: self.orig,
            protocol: self.protocol,
            zone: self.zone,
            id: self.id,
        }
    }

    /// Address family of the flow.
    #[inline]
    pub fn family(&self) -> Family {
        self.orig.family()
    }
}

/// A flow event from the conntrack event stream (or from a host in manual mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEvent {
    /// What happened.
    pub kind: EventKind,
    /// The flow as the message described it.
    pub flow: Flow,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn mapped_addresses_are_normalised_on_both_sides() {
        let mapped: IpAddr = Ipv4Addr::new(10, 0, 0, 2).to_ipv6_mapped().into();
        let t = Tuple::new(mapped, 40000, mapped, 80);
        assert_eq!(t.src, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(t.dst, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(t.family(), Family::V4);
        let v6 = Tuple::new(Ipv6Addr::LOCALHOST.into(), 1, Ipv6Addr::LOCALHOST.into(), 2);
        assert_eq!(v6.family(), Family::V6);
    }

    #[test]
    fn only_none_time_wait_and_close_are_finished() {
        let finished: Vec<u8> = (0..=255u8).filter(|s| TcpState(*s).is_finished()).collect();
        assert_eq!(finished, vec![0, 7, 8]);
        assert_eq!(TcpState::SYN_SENT2.0, 9);
        assert_eq!(TcpState::IGNORE.0, 11);
        assert_eq!(TcpState::RETRANS.0, 12);
        assert_eq!(TcpState(10).name(), "UNKNOWN");
    }
}
