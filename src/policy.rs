//! Per-instance auto-standby policy: validation and normalisation.
//!
//! The C ABI and the Go bindings mirror [`Policy`] and [`PolicyError`] field for field;
//! a change here is a change to both.

// Pure code: unsafe belongs only in the conntrack socket layer and the C ABI.
#![forbid(unsafe_code)]

use std::net::IpAddr;

/// Upper bound on `idle_timeout`: 30 days, in milliseconds.
pub const MAX_IDLE_TIMEOUT_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// An IP prefix such as `10.0.0.0/8` or `fd00::/8`, always stored masked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// Network address, host bits cleared, IPv4-mapped IPv6 canonicalised to IPv4.
    pub addr: IpAddr,
    /// Prefix length (0..=32 for IPv4, 0..=128 for IPv6).
    pub prefix_len: u8,
}

/// Which transport protocols count as activity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Protocols {
    /// TCP flows count (default on).
    pub tcp: bool,
    /// UDP flows count (default off).
    pub udp: bool,
}

impl Default for Protocols {
    fn default() -> Self {
        Self {
            tcp: true,
            udp: false,
        }
    }
}

/// A per-instance policy. A disabled policy keeps every other field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Master switch.
    pub enabled: bool,
    /// Idle time before standby, in milliseconds; 1..=[`MAX_IDLE_TIMEOUT_MS`].
    pub idle_timeout_ms: u64,
    /// Client (original source) prefixes whose flows never count.
    pub ignore_source_cidrs: Vec<Cidr>,
    /// Guest ports whose flows never count; 1..=65535.
    pub ignore_destination_ports: Vec<u16>,
    /// Transport protocols that count.
    pub protocols: Protocols,
    /// Emit a `Wake` decision on the first qualifying flow while in Standby.
    pub wake_on_traffic: bool,
    /// Client prefixes allowed to wake the instance from Standby; empty allows any
    /// client. A flow must also count under the rest of the policy to wake it.
    pub wake_source_cidrs: Vec<Cidr>,
    /// No standby before this long after start or restore, in milliseconds.
    pub min_uptime_ms: u64,
}

/// Why a policy was rejected. Every variant names the field and carries the value, so a
/// host can render its own message (the Go bindings reproduce hypeman's exact strings).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `idle_timeout` is zero.
    #[error("idle_timeout must be positive, got {value_ms} ms")]
    IdleTimeoutNotPositive {
        /// The rejected value.
        value_ms: u64,
    },
    /// `idle_timeout` is above [`MAX_IDLE_TIMEOUT_MS`].
    #[error("idle_timeout must be at most 30 days, got {value_ms} ms")]
    IdleTimeoutTooLarge {
        /// The rejected value.
        value_ms: u64,
    },
    /// An `ignore_source_cidrs` entry has a prefix length too long for its family.
    #[error("ignore_source_cidrs contains invalid CIDR {addr}/{prefix_len}")]
    InvalidCidr {
        /// The rejected address.
        addr: IpAddr,
        /// The rejected prefix length.
        prefix_len: u8,
    },
    /// An `ignore_source_cidrs` entry could not be parsed from text.
    #[error("ignore_source_cidrs contains invalid CIDR {text:?}")]
    UnparsableCidr {
        /// The rejected text.
        text: String,
    },
    /// An `ignore_destination_ports` entry is 0 (or, from a wider integer, above 65535).
    #[error("ignore_destination_ports must be between 1 and 65535, got {value}")]
    PortOutOfRange {
        /// The rejected value.
        value: u32,
    },
    /// `protocols` selects no protocol at all.
    #[error("protocols must enable at least one of tcp and udp")]
    NoProtocol,
    /// A `wake_source_cidrs` entry has a prefix length too long for its family.
    #[error("wake_source_cidrs contains invalid CIDR {addr}/{prefix_len}")]
    InvalidWakeCidr {
        /// The rejected address.
        addr: IpAddr,
        /// The rejected prefix length.
        prefix_len: u8,
    },
    /// A `wake_source_cidrs` entry could not be parsed from text.
    #[error("wake_source_cidrs contains invalid CIDR {text:?}")]
    UnparsableWakeCidr {
        /// The rejected text.
        text: String,
    },
}

impl PolicyError {
    /// The policy field the error is about (`"idle_timeout"`, `"ignore_source_cidrs"`, ...).
    pub fn field(&self) -> &'static str {
        match self {
            Self::IdleTimeoutNotPositive { .. } | Self::IdleTimeoutTooLarge { .. } => {
                "idle_timeout"
            }
            Self::InvalidCidr { .. } | Self::UnparsableCidr { .. } => "ignore_source_cidrs",
            Self::PortOutOfRange { .. } => "ignore_destination_ports",
            Self::NoProtocol => "protocols",
            Self::InvalidWakeCidr { .. } | Self::UnparsableWakeCidr { .. } => "wake_source_cidrs",
        }
    }

    /// The same error about a `wake_source_cidrs` entry (CIDR errors are built as
    /// `ignore_source_cidrs` ones by [`Cidr::new`] and [`Cidr::parse`]).
    pub fn for_wake_cidrs(self) -> Self {
        match self {
            Self::InvalidCidr { addr, prefix_len } => Self::InvalidWakeCidr { addr, prefix_len },
            Self::UnparsableCidr { text } => Self::UnparsableWakeCidr { text },
            other => other,
        }
    }
}

impl Cidr {
    /// Builds a masked prefix; rejects a prefix length too long for the family.
    ///
    /// An IPv4-mapped prefix of at least 96 bits (`::ffff:10.0.0.0/104`) is stored as the
    /// IPv4 prefix it denotes (`10.0.0.0/8`), so one network has one spelling.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, PolicyError> {
        match addr {
            IpAddr::V4(v4) => {
                if prefix_len > 32 {
                    return Err(PolicyError::InvalidCidr { addr, prefix_len });
                }
                let bits = u32::from(v4) & mask32(prefix_len);
                Ok(Self {
                    addr: IpAddr::V4(bits.into()),
                    prefix_len,
                })
            }
            IpAddr::V6(v6) => {
                if prefix_len > 128 {
                    return Err(PolicyError::InvalidCidr { addr, prefix_len });
                }
                if let (Some(v4), true) = (v6.to_ipv4_mapped(), prefix_len >= 96) {
                    return Self::new(IpAddr::V4(v4), prefix_len - 96);
                }
                let bits = u128::from(v6) & mask128(prefix_len);
                Ok(Self {
                    addr: IpAddr::V6(bits.into()),
                    prefix_len,
                })
            }
        }
    }

    /// Parses `a.b.c.d/n` or `x::/n` (a bare address is rejected). Surrounding
    /// whitespace is ignored.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let unparsable = || PolicyError::UnparsableCidr {
            text: text.to_string(),
        };
        let (addr, len) = text.trim().split_once('/').ok_or_else(unparsable)?;
        let addr: IpAddr = addr.parse().map_err(|_| unparsable())?;
        // Only plain decimal digits: no sign, no spaces, no leading "+".
        if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(unparsable());
        }
        let prefix_len: u8 = len.parse().map_err(|_| unparsable())?;
        Self::new(addr, prefix_len)
    }

    /// True when `addr` (canonicalised) lies inside the prefix.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.addr, addr.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                (u32::from(a) & mask32(self.prefix_len)) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                (u128::from(a) & mask128(self.prefix_len)) == u128::from(net)
            }
            // A short IPv6 prefix (`::ffff:0:0/80`) can cover the mapped IPv4 space.
            (IpAddr::V6(net), IpAddr::V4(a)) => {
                (u128::from(a.to_ipv6_mapped()) & mask128(self.prefix_len)) == u128::from(net)
            }
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }

    /// Sort key: IPv4 before IPv6, then numerically by address, then by prefix length.
    fn sort_key(&self) -> (u8, u128, u8) {
        match self.addr {
            IpAddr::V4(a) => (4, u32::from(a) as u128, self.prefix_len),
            IpAddr::V6(a) => (6, u128::from(a), self.prefix_len),
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl std::str::FromStr for Cidr {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn mask32(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn mask128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

impl Default for Policy {
    /// Disabled, 5 minute timeout, TCP only, nothing ignored.
    fn default() -> Self {
        Self {
            enabled: false,
            idle_timeout_ms: 5 * 60 * 1000,
            ignore_source_cidrs: Vec::new(),
            ignore_destination_ports: Vec::new(),
            protocols: Protocols::default(),
            wake_on_traffic: false,
            wake_source_cidrs: Vec::new(),
            min_uptime_ms: 0,
        }
    }
}

impl Policy {
    /// Validates and normalises: CIDRs masked, deduplicated and sorted by address (IPv4
    /// before IPv6, numerically); ports deduplicated and sorted. Returns the first error.
    ///
    /// A disabled policy is validated the same way and keeps every field.
    pub fn normalized(self) -> Result<Policy, PolicyError> {
        let mut p = self;
        if p.idle_timeout_ms == 0 {
            return Err(PolicyError::IdleTimeoutNotPositive { value_ms: 0 });
        }
        if p.idle_timeout_ms > MAX_IDLE_TIMEOUT_MS {
            return Err(PolicyError::IdleTimeoutTooLarge {
                value_ms: p.idle_timeout_ms,
            });
        }
        let mut cidrs = Vec::with_capacity(p.ignore_source_cidrs.len());
        for c in &p.ignore_source_cidrs {
            // Re-mask: a caller may have built the struct by hand.
            cidrs.push(Cidr::new(c.addr, c.prefix_len)?);
        }
        cidrs.sort_by_key(Cidr::sort_key);
        cidrs.dedup();
        p.ignore_source_cidrs = cidrs;
        let mut wake = Vec::with_capacity(p.wake_source_cidrs.len());
        for c in &p.wake_source_cidrs {
            wake.push(Cidr::new(c.addr, c.prefix_len).map_err(PolicyError::for_wake_cidrs)?);
        }
        wake.sort_by_key(Cidr::sort_key);
        wake.dedup();
        p.wake_source_cidrs = wake;
        if p.ignore_destination_ports.contains(&0) {
            return Err(PolicyError::PortOutOfRange { value: 0 });
        }
        p.ignore_destination_ports.sort_unstable();
        p.ignore_destination_ports.dedup();
        if !p.protocols.tcp && !p.protocols.udp {
            return Err(PolicyError::NoProtocol);
        }
        Ok(p)
    }

    /// Checks a port given as a wider integer (as the C ABI and Go bindings pass it).
    pub fn port_from_u32(value: u32) -> Result<u16, PolicyError> {
        match u16::try_from(value) {
            Ok(port) if port != 0 => Ok(port),
            _ => Err(PolicyError::PortOutOfRange { value }),
        }
    }

    /// Builds `ignore_source_cidrs` from text entries; blank entries are skipped, as
    /// hypeman does.
    pub fn parse_cidrs<'a, I>(texts: I) -> Result<Vec<Cidr>, PolicyError>
    where
        I: IntoIterator<Item = &'a str>,
    {
        texts
            .into_iter()
            .filter(|t| !t.trim().is_empty())
            .map(Cidr::parse)
            .collect()
    }

    /// Builds `wake_source_cidrs` from text entries; blank entries are skipped.
    pub fn parse_wake_cidrs<'a, I>(texts: I) -> Result<Vec<Cidr>, PolicyError>
    where
        I: IntoIterator<Item = &'a str>,
    {
        Self::parse_cidrs(texts).map_err(PolicyError::for_wake_cidrs)
    }

    /// True when a client at `addr` may wake the instance ([`Policy::wake_source_cidrs`]
    /// is empty or has a prefix holding it).
    #[inline]
    pub fn allows_wake_from(&self, addr: IpAddr) -> bool {
        self.wake_source_cidrs.is_empty() || self.wake_source_cidrs.iter().any(|c| c.contains(addr))
    }

    /// True when `port` (the guest's port) is ignored. Ports must be normalised.
    #[inline]
    pub fn ignores_port(&self, port: u16) -> bool {
        self.ignore_destination_ports.binary_search(&port).is_ok()
    }

    /// True when `addr` (the client) lies in an ignored prefix.
    #[inline]
    pub fn ignores_source(&self, addr: IpAddr) -> bool {
        self.ignore_source_cidrs.iter().any(|c| c.contains(addr))
    }

    /// True when flows of IP protocol `protocol` count.
    #[inline]
    pub fn counts_protocol(&self, protocol: u8) -> bool {
        match protocol {
            crate::flow::proto::TCP => self.protocols.tcp,
            crate::flow::proto::UDP => self.protocols.udp,
            _ => false,
        }
    }
}
