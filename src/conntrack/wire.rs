//! ctnetlink wire constants (uapi `nfnetlink.h`, `nfnetlink_conntrack.h`).

/// `struct nlmsghdr` size.
pub(crate) const NLMSG_HDRLEN: usize = 16;
/// `struct nfgenmsg` size.
pub(crate) const NFGENMSG_LEN: usize = 4;
/// Offset of the first attribute of a netfilter message.
pub const ATTRS_OFFSET: usize = NLMSG_HDRLEN + NFGENMSG_LEN;

/// `NLMSG_ERROR`.
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`.
pub const NLMSG_DONE: u16 = 3;
/// `NLMSG_OVERRUN`.
pub(crate) const NLMSG_OVERRUN: u16 = 4;

/// `NLM_F_REQUEST`.
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_MULTI`.
pub const NLM_F_MULTI: u16 = 0x2;
/// `NLM_F_ACK`.
pub(crate) const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_DUMP_FILTERED`: the kernel applied the dump filter.
pub(crate) const NLM_F_DUMP_FILTERED: u16 = 0x20;
/// `NLM_F_DUMP` (`ROOT | MATCH`).
pub(crate) const NLM_F_DUMP: u16 = 0x300;
/// `NLM_F_EXCL`.
pub const NLM_F_EXCL: u16 = 0x200;
/// `NLM_F_CREATE`: on a `CT_NEW` event, tells NEW from UPDATE.
pub const NLM_F_CREATE: u16 = 0x400;

/// `NFNL_SUBSYS_CTNETLINK`.
pub(crate) const NFNL_SUBSYS_CTNETLINK: u8 = 1;
/// `IPCTNL_MSG_CT_NEW`.
pub const IPCTNL_MSG_CT_NEW: u8 = 0;
/// `IPCTNL_MSG_CT_GET`; requests are built with netlink-packet-netfilter, tests check them.
#[cfg(test)]
pub(crate) const IPCTNL_MSG_CT_GET: u8 = 1;
/// `IPCTNL_MSG_CT_DELETE`.
pub const IPCTNL_MSG_CT_DELETE: u8 = 2;

/// Multicast group numbers (`NFNLGRP_CONNTRACK_*`).
pub const NFNLGRP_CONNTRACK_NEW: u32 = 1;
/// See [`NFNLGRP_CONNTRACK_NEW`].
pub const NFNLGRP_CONNTRACK_UPDATE: u32 = 2;
/// See [`NFNLGRP_CONNTRACK_NEW`].
pub const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;

/// `NLA_F_NESTED`.
pub(crate) const NLA_F_NESTED: u16 = 0x8000;
/// `NLA_F_NET_BYTEORDER`.
pub(crate) const NLA_F_NET_BYTEORDER: u16 = 0x4000;
/// Mask of the attribute type bits.
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

/// `enum ctattr_type`.
pub mod cta {
    /// `CTA_TUPLE_ORIG`.
    pub const TUPLE_ORIG: u16 = 1;
    /// `CTA_TUPLE_REPLY`.
    pub const TUPLE_REPLY: u16 = 2;
    /// `CTA_STATUS`.
    pub const STATUS: u16 = 3;
    /// `CTA_PROTOINFO`.
    pub const PROTOINFO: u16 = 4;
    /// `CTA_TIMEOUT`.
    pub(crate) const TIMEOUT: u16 = 7;
    /// `CTA_MARK`.
    pub(crate) const MARK: u16 = 8;
    /// `CTA_ID`.
    pub const ID: u16 = 12;
    /// `CTA_ZONE`.
    pub const ZONE: u16 = 18;
    /// `CTA_FILTER`.
    pub(crate) const FILTER: u16 = 25;
    /// `CTA_TIMESTAMP_EVENT`.
    pub(crate) const TIMESTAMP_EVENT: u16 = 27;

    /// `CTA_TUPLE_IP`.
    pub const TUPLE_IP: u16 = 1;
    /// `CTA_TUPLE_PROTO`.
    pub const TUPLE_PROTO: u16 = 2;

    /// `CTA_IP_V4_SRC`.
    pub(crate) const IP_V4_SRC: u16 = 1;
    /// `CTA_IP_V4_DST`.
    pub(crate) const IP_V4_DST: u16 = 2;
    /// `CTA_IP_V6_SRC`.
    pub(crate) const IP_V6_SRC: u16 = 3;
    /// `CTA_IP_V6_DST`.
    pub(crate) const IP_V6_DST: u16 = 4;

    /// `CTA_PROTO_NUM`.
    pub const PROTO_NUM: u16 = 1;
    /// `CTA_PROTO_SRC_PORT`.
    pub(crate) const PROTO_SRC_PORT: u16 = 2;
    /// `CTA_PROTO_DST_PORT`.
    pub(crate) const PROTO_DST_PORT: u16 = 3;

    /// `CTA_PROTOINFO_TCP`.
    pub const PROTOINFO_TCP: u16 = 1;
    /// `CTA_PROTOINFO_TCP_STATE`.
    pub const PROTOINFO_TCP_STATE: u16 = 1;

    /// `CTA_FILTER_ORIG_FLAGS`.
    pub(crate) const FILTER_ORIG_FLAGS: u16 = 1;
    /// `CTA_FILTER_REPLY_FLAGS`.
    pub(crate) const FILTER_REPLY_FLAGS: u16 = 2;
    /// `CTA_FILTER_FLAG(CTA_IP_SRC)`.
    pub(crate) const FILTER_F_IP_SRC: u32 = 1 << 0;
    /// `CTA_FILTER_FLAG(CTA_IP_DST)`.
    pub(crate) const FILTER_F_IP_DST: u32 = 1 << 1;
}

/// `AF_INET` as `nfgen_family`.
pub(crate) const AF_INET: u8 = 2;
/// `AF_INET6` as `nfgen_family`.
pub(crate) const AF_INET6: u8 = 10;

/// Rounds up to the netlink 4-byte alignment.
#[inline]
pub(crate) const fn align4(len: usize) -> usize {
    (len + 3) & !3
}
