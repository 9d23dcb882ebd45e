//! The query socket: full dumps of one family, dumps filtered by address in the kernel
//! (`CTA_FILTER`) with a userspace fallback, and batched exact-tuple lookups. Never
//! carries a BPF filter: a dump datagram holds many entries and a socket filter sees
//! only the first.

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use netlink_sys::Socket;

use super::error::ConntrackError;
use super::parse::{self, CtMessage};
use super::request::{self, AddressMatch};
use super::socket::{MmsgBuffers, MmsgResult};
use super::{ObserverConfig, netns, socket, wire};
use crate::flow::{Family, Flow};

/// Receive buffer for dump replies: the kernel fills up to about 32 KiB per datagram
/// when the reader offers at least that much; more gains nothing.
const DUMP_BUF_BYTES: usize = 64 * 1024;

/// Above this many kernel walks for one `dump_addresses` call (one or two per address),
/// one full dump per family with a userspace filter is cheaper: each filtered walk still
/// visits the whole global hash, and on a large table a walk costs about a tenth of a
/// full dump.
pub(crate) const MAX_FILTERED_WALKS: usize = 8;

/// Lookups sent per datagram by [`QuerySocket::lookup_flows`]. The kernel queues every
/// reply of a datagram before `send` returns, so the replies of one batch must fit the
/// receive buffer: a reply takes about 1 KiB of it (after the kernel trims the skb), and
/// the default buffer is 208 KiB.
pub const LOOKUP_BATCH: usize = 64;

/// How long [`QuerySocket::lookup_flows`] waits for a reply still missing once the
/// queue is empty (the replies are normally queued before `send` returns).
const LOOKUP_REPLY_WAIT_MS: i32 = 200;

/// The kernel's answer for one flow of [`QuerySocket::lookup_flows`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupResult<'a> {
    /// An entry with the flow's original tuple, protocol and zone exists. Its conntrack
    /// id may differ from the one asked about: then it is a new entry reusing the tuple,
    /// and the one asked about is gone.
    Found(&'a Flow),
    /// No entry has that tuple (`ENOENT`). A lookup also reaps an entry whose timeout has
    /// passed, so it reports such an entry gone, and the kernel sends its DESTROY event.
    Gone,
    /// This flow could not be looked up: the kernel refused it with this errno, the reply
    /// was malformed (`EBADMSG`), or it never came (`ENOBUFS` when the receive buffer
    /// overflowed, else `ETIMEDOUT`).
    Failed(i32),
}

/// Counters of one [`QuerySocket::lookup_flows`] call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LookupStats {
    /// Flows asked about.
    pub asked: u64,
    /// Answered [`LookupResult::Found`].
    pub found: u64,
    /// Answered [`LookupResult::Gone`].
    pub gone: u64,
    /// Answered [`LookupResult::Failed`].
    pub failed: u64,
    /// Of those found, how many carried another conntrack id than the one asked about.
    pub new_ids: u64,
    /// `send` calls (one datagram of up to [`LOOKUP_BATCH`] requests each).
    pub sends: u64,
    /// `recvmmsg` calls that returned datagrams.
    pub recvs: u64,
    /// Replies that could not be parsed.
    pub malformed: u64,
}

impl LookupStats {
    /// System calls the lookups made (sends and receives).
    pub(crate) fn syscalls(&self) -> u64 {
        self.sends + self.recvs
    }
}

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
    /// Receive slots for lookup replies (one reply per datagram), allocated on first use.
    lookup_bufs: Option<MmsgBuffers>,
    lookup_req: Vec<u8>,
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
            lookup_bufs: None,
            lookup_req: Vec::new(),
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
    /// above 8 walks, one full dump with a userspace filter is used
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

    /// Looks each of `flows` up by its original tuple, protocol and zone (`CT_GET` of one
    /// entry: a hash lookup in the kernel, no table walk), and calls `on` once per flow
    /// with its index in `flows` and the answer, in the order the replies come.
    ///
    /// Requests go out [`LOOKUP_BATCH`] to a datagram, each with its own sequence number;
    /// replies are matched by it and read with `recvmmsg`, so a batch costs one `send`
    /// and about one `recvmmsg`. A flow the kernel refused, or whose reply was malformed
    /// or never came, is reported [`LookupResult::Failed`]; only a failure of the socket
    /// itself is an `Err` (flows not reported by then were not answered).
    pub fn lookup_flows(
        &mut self,
        flows: &[Flow],
        on: &mut dyn FnMut(usize, LookupResult<'_>),
    ) -> Result<LookupStats, ConntrackError> {
        let mut stats = LookupStats::default();
        let mut bufs = self
            .lookup_bufs
            .take()
            .unwrap_or_else(|| MmsgBuffers::new(LOOKUP_BATCH));
        let mut result = Ok(());
        for (n, batch) in flows.chunks(LOOKUP_BATCH).enumerate() {
            result = self.lookup_batch(batch, n * LOOKUP_BATCH, &mut bufs, on, &mut stats);
            if result.is_err() {
                break;
            }
        }
        self.lookup_bufs = Some(bufs);
        result.map(|()| stats)
    }

    fn lookup_batch(
        &mut self,
        batch: &[Flow],
        first: usize,
        bufs: &mut MmsgBuffers,
        on: &mut dyn FnMut(usize, LookupResult<'_>),
        stats: &mut LookupStats,
    ) -> Result<(), ConntrackError> {
        // A contiguous range of sequence numbers, so a reply's index is `seq - base`.
        if self.seq > u32::MAX - LOOKUP_BATCH as u32 - 1 {
            self.seq = 0;
        }
        let base = self.seq + 1;
        self.seq += batch.len() as u32;
        self.lookup_req.clear();
        for (i, f) in batch.iter().enumerate() {
            request::lookup_into(&mut self.lookup_req, f, base + i as u32);
        }
        self.sock
            .send(&self.lookup_req, 0)
            .map_err(|e| ConntrackError::io("send conntrack lookups", e))?;
        stats.sends += 1;
        stats.asked += batch.len() as u64;
        let fd = self.sock.as_raw_fd();
        let mut answered = [false; LOOKUP_BATCH];
        let mut left = batch.len();
        let mut overrun = false;
        while left > 0 {
            match bufs.recv(fd)? {
                MmsgResult::Received(n) => {
                    stats.recvs += 1;
                    for d in 0..n {
                        let (datagram, truncated) = bufs.datagram(d);
                        let mut answer = |idx: usize, r: LookupResult<'_>| {
                            if idx < batch.len() && !answered[idx] {
                                answered[idx] = true;
                                left -= 1;
                                match r {
                                    LookupResult::Found(f) => {
                                        stats.found += 1;
                                        stats.new_ids += u64::from(f.id != batch[idx].id);
                                    }
                                    LookupResult::Gone => stats.gone += 1,
                                    LookupResult::Failed(_) => stats.failed += 1,
                                }
                                on(first + idx, r);
                            }
                        };
                        let bad = read_lookup_replies(datagram, truncated, base, &mut answer);
                        stats.malformed += bad;
                    }
                }
                MmsgResult::Overrun => overrun = true,
                MmsgResult::Empty => {
                    if !socket::wait_readable(fd, LOOKUP_REPLY_WAIT_MS)? {
                        break;
                    }
                }
            }
        }
        if left > 0 {
            let errno = if overrun {
                libc::ENOBUFS
            } else {
                libc::ETIMEDOUT
            };
            for (idx, _) in answered[..batch.len()]
                .iter()
                .enumerate()
                .filter(|(_, a)| !**a)
            {
                stats.failed += 1;
                on(first + idx, LookupResult::Failed(errno));
            }
        }
        Ok(())
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

/// Reads the replies in one datagram of lookup replies and hands each to `answer` with
/// its index in the batch (`seq - base`; the caller ignores indexes out of range, which
/// are leftovers of earlier requests). Returns how many replies were malformed.
fn read_lookup_replies(
    datagram: &[u8],
    truncated: bool,
    base: u32,
    answer: &mut dyn FnMut(usize, LookupResult<'_>),
) -> u64 {
    let mut malformed = 0;
    let index = |seq: u32| seq.wrapping_sub(base) as usize;
    if truncated {
        // One reply per datagram: its header is intact even though the rest is cut.
        if let Some(b) = datagram.get(8..12) {
            let seq = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
            answer(index(seq), LookupResult::Failed(libc::EBADMSG));
        }
        return 1;
    }
    for m in parse::messages(datagram) {
        let Ok(m) = m else {
            return malformed + 1;
        };
        if m.msg_type == wire::NLMSG_ERROR {
            match m.error_code() {
                // An acknowledgement: none is asked for, so it answers nothing.
                Some(0) => {}
                Some(code) if code == -libc::ENOENT => answer(index(m.seq), LookupResult::Gone),
                Some(code) => answer(index(m.seq), LookupResult::Failed(code.saturating_neg())),
                None => {
                    malformed += 1;
                    answer(index(m.seq), LookupResult::Failed(libc::EBADMSG));
                }
            }
            continue;
        }
        if m.conntrack_subtype() != Some(wire::IPCTNL_MSG_CT_NEW) {
            continue;
        }
        match parse::parse_conntrack(&m) {
            Ok(ct) => answer(index(m.seq), LookupResult::Found(&ct.flow)),
            Err(_) => {
                malformed += 1;
                answer(index(m.seq), LookupResult::Failed(libc::EBADMSG));
            }
        }
    }
    malformed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::request::testing::build_flow_message;
    use crate::flow::Tuple;

    fn udp(port: u16) -> Flow {
        Flow {
            protocol: 17,
            orig: Tuple::new(
                "10.0.0.1".parse().unwrap(),
                port,
                "10.0.0.2".parse().unwrap(),
                53,
            ),
            reply: Tuple::new(
                "10.0.0.2".parse().unwrap(),
                53,
                "10.0.0.1".parse().unwrap(),
                port,
            ),
            zone: 0,
            id: 5,
            tcp_state: None,
            status: 0,
            mark: 0,
            timeout_s: Some(30),
        }
    }

    fn with_seq(mut msg: Vec<u8>, seq: u32) -> Vec<u8> {
        msg[8..12].copy_from_slice(&seq.to_ne_bytes());
        msg
    }

    fn error(seq: u32, errno: i32) -> Vec<u8> {
        let mut m = vec![0u8; wire::NLMSG_HDRLEN + 4 + wire::NLMSG_HDRLEN];
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[4..6].copy_from_slice(&wire::NLMSG_ERROR.to_ne_bytes());
        m[8..12].copy_from_slice(&seq.to_ne_bytes());
        m[16..20].copy_from_slice(&(-errno).to_ne_bytes());
        m
    }

    fn read(datagram: &[u8], truncated: bool, base: u32) -> (Vec<(usize, String)>, u64) {
        let mut got = Vec::new();
        let bad = read_lookup_replies(datagram, truncated, base, &mut |i, r| {
            got.push((i, format!("{r:?}")));
        });
        (got, bad)
    }

    #[test]
    fn replies_are_matched_by_sequence_number() {
        let base = 100;
        let mut d = with_seq(build_flow_message(&udp(7), wire::IPCTNL_MSG_CT_NEW, 0), 102);
        d.extend(error(100, libc::ENOENT));
        d.extend(error(101, libc::EINVAL));
        d.extend(error(103, 0));
        let (got, bad) = read(&d, false, base);
        assert_eq!(bad, 0);
        let idx: Vec<usize> = got.iter().map(|(i, _)| *i).collect();
        assert_eq!(idx, vec![2, 0, 1], "the acknowledgement answers nothing");
        assert!(got[0].1.starts_with("Found"), "{got:?}");
        assert_eq!(got[1].1, "Gone");
        assert_eq!(got[2].1, format!("Failed({})", libc::EINVAL));
        // A leftover of an earlier request maps outside the batch (the caller drops it).
        let (got, _) = read(&error(7, libc::ENOENT), false, base);
        assert!(got[0].0 >= LOOKUP_BATCH);
    }

    #[test]
    fn malformed_and_truncated_replies_fail_their_flow_and_never_panic() {
        let base = 1;
        let reply = with_seq(build_flow_message(&udp(7), wire::IPCTNL_MSG_CT_NEW, 0), 1);
        // Cut anywhere, flagged truncated or not.
        for cut in 0..reply.len() {
            for truncated in [false, true] {
                let (got, _) = read(&reply[..cut], truncated, base);
                assert!(got.len() <= 1);
            }
        }
        let (got, bad) = read(&reply[..reply.len() / 2], true, base);
        assert_eq!(bad, 1);
        assert_eq!(got, vec![(0, format!("Failed({})", libc::EBADMSG))]);
        // A reply whose tuple is missing: that flow fails, the next one still reads.
        let mut no_tuple = reply[..wire::ATTRS_OFFSET].to_vec();
        let len = no_tuple.len() as u32;
        no_tuple[0..4].copy_from_slice(&len.to_ne_bytes());
        no_tuple.extend(error(2, libc::ENOENT));
        let (got, bad) = read(&no_tuple, false, base);
        assert_eq!(bad, 1);
        assert_eq!(
            got,
            vec![
                (0, format!("Failed({})", libc::EBADMSG)),
                (1, "Gone".to_owned())
            ]
        );
        // Garbage.
        for junk in [&[0xffu8; 3][..], &[0u8; 40][..], &[0xab; 64][..]] {
            let _ = read(junk, false, base);
        }
    }
}
