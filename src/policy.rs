//! Per-instance auto-standby policy: validation and normalisation.
//!
//! CONTRACT (shared by the engine, the C ABI and the Go bindings): the field names and
//! meanings of [`Policy`], [`Cidr`] and [`PolicyError`] are fixed; the bodies are the
//! engine's to implement.

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
        }
    }
}

impl Cidr {
    /// Builds a masked prefix; rejects a prefix length too long for the family.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, PolicyError> {
        let _ = (addr, prefix_len);
        todo!("engine: Cidr::new")
    }

    /// Parses `a.b.c.d/n` or `x::/n` (a bare address is rejected).
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let _ = text;
        todo!("engine: Cidr::parse")
    }

    /// True when `addr` (canonicalised) lies inside the prefix.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let _ = addr;
        todo!("engine: Cidr::contains")
    }
}

impl Policy {
    /// Validates and normalises: CIDRs masked, deduplicated and sorted by address (IPv4
    /// before IPv6, numerically); ports deduplicated and sorted. Returns the first error.
    pub fn normalized(self) -> Result<Policy, PolicyError> {
        todo!("engine: Policy::normalized")
    }
}
