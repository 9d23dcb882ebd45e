//! Conntrack observation over ctnetlink: event and query sockets, kernel-side filters,
//! the zero-copy parser, and loss detection.
//!
//! Two sockets per observed network namespace:
//! - [`EventSocket`] subscribes to NEW, UPDATE and DESTROY, reads in batches with
//!   `recvmmsg`, carries a classic BPF filter that drops the TCP state changes that
//!   cannot change a decision and, when set, the events of other addresses, and reports
//!   loss exactly (ENOBUFS and the socket's drop counter);
//! - [`QuerySocket`] runs dumps, full or filtered by address in the kernel (`CTA_FILTER`),
//!   and batched exact-tuple lookups (`CT_GET` of one entry, no table walk); it is never
//!   filtered by BPF.
//!
//! Subscribe (open the [`EventSocket`]) before the first dump, so nothing created in
//! between is missed; the engine's tombstones keep a dump from resurrecting a flow that an
//! event already destroyed.

pub mod bpf;
mod error;
pub(crate) mod events;
pub mod neigh;
pub mod netns;
pub mod parse;
pub mod query;
pub mod request;
pub mod socket;
pub mod solicit;
pub(crate) mod sysctl;
mod wakeup;
pub mod wire;

use std::path::PathBuf;

pub use error::ConntrackError;
pub use events::{EventSocket, EventStats, RecvBatch};
pub use query::{DumpStats, FilterSupport, LookupResult, LookupStats, QuerySocket};
pub use sysctl::events_sysctl;
pub(crate) use wakeup::Wakeup;

/// What the observer does about `net.netfilter.nf_conntrack_events` in its namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EventsSysctl {
    /// Read and report the value only. With 2 (the kernel's default, "auto"), flows
    /// created while no listener existed never send events; the start-up dump finds
    /// them, and the controller's periodic check (exact-tuple lookups) sees them end.
    #[default]
    Report,
    /// Set it to 1 at open, so every new flow carries events.
    SetOne,
}

/// Receive buffer asked for by default: about 13,000 events of headroom at ~1,280 bytes
/// of kernel truesize each.
pub(crate) const DEFAULT_RCVBUF_BYTES: usize = 16 << 20;

/// How the observer opens its sockets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObserverConfig {
    /// Network namespace to observe, as a path (`/run/netns/NAME`, `/proc/PID/ns/net`);
    /// `None` observes the caller's namespace.
    pub netns: Option<PathBuf>,
    /// Effective receive buffer wanted for the event socket (default 16 MiB).
    pub rcvbuf_bytes: usize,
    /// What to do about `nf_conntrack_events`.
    pub events_sysctl: EventsSysctl,
}

impl Default for ObserverConfig {
    fn default() -> Self {
        Self {
            netns: None,
            rcvbuf_bytes: DEFAULT_RCVBUF_BYTES,
            events_sysctl: EventsSysctl::Report,
        }
    }
}
