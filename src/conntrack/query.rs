//! The query socket: full dumps of one family, and dumps filtered by address in the
//! kernel (`CTA_FILTER`) with a userspace fallback. Never carries a BPF filter: a dump
//! datagram holds many entries and a socket filter sees only the first.

use std::net::IpAddr;

use netlink_sys::Socket;

use super::error::ConntrackError;
use super::parse::{self, CtMessage};
use super::request::{self, AddressMatch};
use super::{ObserverConfig, netns, socket, wire};
use crate::flow::{Family, Flow};

/// Receive buffer for dump replies: the kernel fills up to about 32 KiB per datagram
/// when the reader offers at least that much; more gains nothing.
const DUMP_BUF_BYTES: usize = 64 * 1024;

/// Above this many kernel walks for one `dump_addresses` call (one or two per address),
/// one full dump per family with a userspace filter is cheaper: each filtered walk still
/// visits the whole global hash, and on a large table a walk costs about a tenth of a
/// full dump.
pub const MAX_FILTERED_WALKS: usize = 8;

/// Whether the kernel applies `CTA_FILTER` address filters to dumps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterSupport {
    /// No filtered dump has run yet. The first one is tried in the kernel and settles
    /// the question: a separate probe would cost a walk of the whole hash table.
    Untried,
    /// A filtered dump ran in the kernel (every entry is still checked in userspace; a
    /// mismatch switches to [`FilterSupport::Userspace`]).
    Kernel,
    /// The kernel refused or ignored the filter: full dumps filtered in userspace.
    Userspace,
}

/// Counters of one dump call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpStats {
    /// Entries handed to the callback.
    pub flows: u64,
    /// Entries the kernel sent (before the userspace filter).
    pub received: u64,
    /// Messages that could not be parsed and were skipped.
    pub malformed: u64,
    /// Dump requests sent (each one a walk of the kernel's hash table).
    pub walks: u32,
    /// Datagrams received.
    pub recvs: u64,
    /// The kernel filtered the entries (`CTA_FILTER`).
    pub kernel_filtered: bool,
}

impl DumpStats {
    fn add(&mut self, o: &DumpStats) {
        self.flows += o.flows;
        self.received += o.received;
        self.malformed += o.malformed;
        self.walks += o.walks;
        self.recvs += o.recvs;
        self.kernel_filtered |= o.kernel_filtered;
    }
}

/// A ctnetlink socket for dumps. Use one dump at a time.
#[derive(Debug)]
pub struct QuerySocket {
    sock: Socket,
    buf: Vec<u8>,
    seq: u32,
    filter: FilterSupport,
    match_orig_destination: bool,
}

impl QuerySocket {
    /// Opens the query socket in the configured namespace.
    pub fn open(cfg: &ObserverConfig) -> Result<Self, ConntrackError> {
        let sock = netns::run_in(cfg.netns.as_deref(), socket::open_netfilter)?;
        Ok(Self {
            sock,
            buf: vec![0; DUMP_BUF_BYTES],
            seq: 0,
            filter: FilterSupport::Untried,
            match_orig_destination: false,
        })
    }

    /// What the filtered dumps so far found about kernel-side filtering.
    pub fn filter_support(&self) -> FilterSupport {
        self.filter
    }

    /// Whether [`QuerySocket::dump_addresses`] also matches the original destination
    /// (default `false`: one kernel walk per address instead of two). The reply source
    /// names the host that really answers the flow, so it is the guest exactly when the
    /// guest serves the flow, with or without DNAT in front of it. What the
    /// original-destination walk adds are flows dialled to the address but answered by
    /// another host, which the guest never sees; the event filter still passes them, so
    /// they only keep a guest awake until the next resync drops them.
    pub fn set_match_orig_destination(&mut self, on: bool) {
        self.match_orig_destination = on;
    }

    /// Forces userspace filtering (for comparisons and tests).
    pub fn force_userspace_filter(&mut self) {
        self.filter = FilterSupport::Userspace;
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Sends `req` and reads the dump to its end, calling `on_entry` for every entry.
    fn run_dump(
        &mut self,
        req: &[u8],
        on_entry: &mut dyn FnMut(&CtMessage, u16),
    ) -> Result<DumpStats, ConntrackError> {
        let seq = parse::messages(req)
            .next()
            .and_then(|m| m.ok())
            .map(|m| m.seq)
            .unwrap_or(0);
        self.sock
            .send(req, 0)
            .map_err(|e| ConntrackError::io("send dump request", e))?;
        let mut stats = DumpStats {
            walks: 1,
            ..DumpStats::default()
        };
        loop {
            let n = socket::recv_blocking(&self.sock, &mut self.buf)?;
            stats.recvs += 1;
            for m in parse::messages(&self.buf[..n]) {
                let Ok(m) = m else {
                    stats.malformed += 1;
                    continue;
                };
                // Leftovers of an earlier, abandoned dump.
                if m.seq != seq {
                    continue;
                }
                match m.msg_type {
                    wire::NLMSG_DONE => return Ok(stats),
                    wire::NLMSG_ERROR => match m.error_code() {
                        Some(0) => continue,
                        Some(code) => {
                            return Err(ConntrackError::io(
                                "conntrack dump",
                                std::io::Error::from_raw_os_error(-code),
                            ));
                        }
                        None => return Err(ConntrackError::Malformed("short NLMSG_ERROR")),
                    },
                    wire::NLMSG_OVERRUN => {
                        return Err(ConntrackError::Malformed("NLMSG_OVERRUN during a dump"));
                    }
                    _ => {}
                }
                if m.conntrack_subtype() != Some(wire::IPCTNL_MSG_CT_NEW) {
                    continue;
                }
                match parse::parse_conntrack(&m) {
                    Ok(ct) => {
                        stats.received += 1;
                        if m.flags & wire::NLM_F_DUMP_FILTERED != 0 {
                            stats.kernel_filtered = true;
                        }
                        on_entry(&ct, m.flags);
                    }
                    Err(_) => stats.malformed += 1,
                }
            }
        }
    }

    /// Dumps every flow of one address family.
    pub fn dump(
        &mut self,
        family: Family,
        on_flow: &mut dyn FnMut(&Flow),
    ) -> Result<DumpStats, ConntrackError> {
        let req = request::dump(family, self.next_seq());
        let mut flows = 0;
        let mut stats = self.run_dump(&req, &mut |ct, _| {
            flows += 1;
            on_flow(&ct.flow);
        })?;
        stats.flows = flows;
        Ok(stats)
    }

    /// Only flows whose reply source (and, when asked for, original destination) is one
    /// of `addrs`, filtered in the kernel (`CTA_FILTER`) unless an earlier dump found that
    /// the kernel refuses or ignores it, else in userspace. Each flow is reported once.
    ///
    /// IPv4 addresses are filtered in the kernel: one walk per address for the reply
    /// source (the guest, with or without DNAT), and one more for the original
    /// destination if [`QuerySocket::set_match_orig_destination`] asked for it;
    /// above [`MAX_FILTERED_WALKS`] walks, one full dump with a userspace filter is used
    /// instead. IPv6 addresses always use a full IPv6 dump filtered in userspace: on
    /// Linux 6.18 the kernel's IPv6 `CTA_FILTER` address match is inverted (asking for
    /// an address returns every other flow and not the flow itself), so trusting it
    /// could report a busy guest idle.
    pub fn dump_addresses(
        &mut self,
        addrs: &[IpAddr],
        on_flow: &mut dyn FnMut(&Flow),
    ) -> Result<DumpStats, ConntrackError> {
        let mut set: Vec<IpAddr> = addrs.iter().map(|a| a.to_canonical()).collect();
        set.sort_unstable();
        set.dedup();
        // IpAddr orders every V4 before every V6.
        let split = set.partition_point(IpAddr::is_ipv4);
        let (v4, v6) = set.split_at(split);
        let mut total = DumpStats::default();
        if !v4.is_empty() {
            let mut done = false;
            let walks = v4.len() * if self.match_orig_destination { 2 } else { 1 };
            if self.filter != FilterSupport::Userspace && walks <= MAX_FILTERED_WALKS {
                match self.dump_addresses_kernel(v4, on_flow) {
                    Ok(Some(stats)) => {
                        self.filter = FilterSupport::Kernel;
                        total.add(&stats);
                        done = true;
                    }
                    // The kernel ignored the filter: what was delivered was correct
                    // (checked in userspace) but may be incomplete; run the fallback.
                    Ok(None) => self.filter = FilterSupport::Userspace,
                    // A kernel without CTA_FILTER refuses the first filtered dump.
                    Err(ConntrackError::Io { source, .. })
                        if self.filter == FilterSupport::Untried
                            && matches!(
                                source.raw_os_error(),
                                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
                            ) =>
                    {
                        self.filter = FilterSupport::Userspace;
                    }
                    Err(e) => return Err(e),
                }
            }
            if !done {
                total.add(&self.dump_family_userspace(Family::V4, v4, on_flow)?);
            }
        }
        if !v6.is_empty() {
            total.add(&self.dump_family_userspace(Family::V6, v6, on_flow)?);
        }
        Ok(total)
    }

    fn dump_addresses_kernel(
        &mut self,
        set: &[IpAddr],
        on_flow: &mut dyn FnMut(&Flow),
    ) -> Result<Option<DumpStats>, ConntrackError> {
        let mut total = DumpStats {
            kernel_filtered: true,
            ..DumpStats::default()
        };
        let mut ignored = false;
        let sides: &[AddressMatch] = if self.match_orig_destination {
            &[AddressMatch::ReplySource, AddressMatch::OrigDestination]
        } else {
            &[AddressMatch::ReplySource]
        };
        for &side in sides {
            for &addr in set {
                let req = request::filtered_dump(addr, side, self.next_seq());
                let mut flows = 0;
                let stats = self.run_dump(&req, &mut |ct, _| {
                    let f = &ct.flow;
                    let matched = match side {
                        AddressMatch::ReplySource => f.reply.src == addr,
                        AddressMatch::OrigDestination => f.orig.dst == addr,
                    };
                    if !matched {
                        ignored = true;
                        return;
                    }
                    // A flow that the reply-source walks already reported.
                    if side == AddressMatch::OrigDestination
                        && set.binary_search(&f.reply.src).is_ok()
                    {
                        return;
                    }
                    flows += 1;
                    on_flow(f);
                })?;
                total.add(&DumpStats { flows, ..stats });
                if ignored {
                    return Ok(None);
                }
            }
        }
        Ok(Some(total))
    }

    fn dump_family_userspace(
        &mut self,
        family: Family,
        set: &[IpAddr],
        on_flow: &mut dyn FnMut(&Flow),
    ) -> Result<DumpStats, ConntrackError> {
        let req = request::dump(family, self.next_seq());
        let mut flows = 0;
        let orig_too = self.match_orig_destination;
        let mut stats = self.run_dump(&req, &mut |ct, _| {
            let f = &ct.flow;
            if set.binary_search(&f.reply.src).is_ok()
                || (orig_too && set.binary_search(&f.orig.dst).is_ok())
            {
                flows += 1;
                on_flow(f);
            }
        })?;
        stats.flows = flows;
        stats.kernel_filtered = false;
        Ok(stats)
    }

    /// Sends a request that the kernel acknowledges (create, update, delete) and waits
    /// for the answer. Used by tests and benchmarks to shape a table.
    pub fn request_ack(&mut self, req: &[u8]) -> Result<(), ConntrackError> {
        self.sock
            .send(req, 0)
            .map_err(|e| ConntrackError::io("send request", e))?;
        let seq = parse::messages(req)
            .next()
            .and_then(|m| m.ok())
            .map(|m| m.seq);
        loop {
            let n = socket::recv_blocking(&self.sock, &mut self.buf)?;
            for m in parse::messages(&self.buf[..n]).flatten() {
                if Some(m.seq) != seq {
                    continue;
                }
                if let Some(code) = m.error_code() {
                    return if code == 0 {
                        Ok(())
                    } else {
                        Err(ConntrackError::io(
                            "conntrack request",
                            std::io::Error::from_raw_os_error(-code),
                        ))
                    };
                }
            }
        }
    }

    /// Sends requests without asking for acknowledgements (bulk inserts). Errors the
    /// kernel would report are not read.
    pub fn send_raw(&mut self, req: &[u8]) -> Result<(), ConntrackError> {
        self.sock
            .send(req, 0)
            .map(|_| ())
            .map_err(|e| ConntrackError::io("send request", e))
    }

    /// A sequence number for a request built by the caller.
    pub fn alloc_seq(&mut self) -> u32 {
        self.next_seq()
    }
}
