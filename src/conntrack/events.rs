//! The event socket: NEW, UPDATE and DESTROY, read in batches, with exact loss detection.
//!
//! A classic BPF filter is on the socket from the start: its state part drops the TCP
//! UPDATEs that cannot change a decision, and an address part, once addresses are set,
//! drops the events of other addresses (see [`bpf`]).

use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use netlink_sys::Socket;

use super::error::ConntrackError;
use super::socket::{self, MmsgBuffers, MmsgResult};
use super::{EventsSysctl, ObserverConfig, Wakeup, bpf, netns, parse, sysctl, wire};
use crate::flow::FlowEvent;

/// Datagrams per `recvmmsg` call.
pub(crate) const MMSG_SLOTS: usize = 64;

/// `recvmmsg` calls per [`EventSocket::recv_batch`] at most (4,096 events), so one call
/// returns even under a sustained flood.
pub(crate) const MAX_CALLS_PER_BATCH: u32 = 64;

/// What one [`EventSocket::recv_batch`] read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecvBatch {
    /// Netlink messages read.
    pub messages: u64,
    /// Conntrack events handed to the callback.
    pub events: u64,
    /// Messages that could not be parsed and were skipped.
    pub malformed: u64,
    /// Datagrams the kernel truncated (larger than a receive slot): their events are lost.
    pub truncated: u64,
    /// ENOBUFS reports (at most one per congestion episode).
    pub enobufs: u32,
    /// Messages the kernel dropped since the previous batch (`SK_MEMINFO_DROPS` delta).
    pub drops: u64,
    /// `recvmmsg` calls made.
    pub syscalls: u32,
    /// The batch stopped at its bound with data still queued: call again.
    pub more: bool,
}

impl RecvBatch {
    /// True when events were lost: answer with one coalesced resync.
    #[inline]
    pub fn lost(&self) -> bool {
        self.enobufs > 0 || self.drops > 0 || self.truncated > 0
    }
}

/// Counters over the socket's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventStats {
    /// Messages read.
    pub messages: u64,
    /// Events delivered.
    pub events: u64,
    /// Malformed messages skipped.
    pub malformed: u64,
    /// Truncated datagrams.
    pub truncated: u64,
    /// ENOBUFS reports.
    pub enobufs: u64,
    /// Messages dropped by the kernel.
    pub drops: u64,
    /// Batches in which loss was detected.
    pub loss_episodes: u64,
    /// `recvmmsg` calls.
    pub syscalls: u64,
}

/// A non-blocking ctnetlink event subscriber. See the module docs.
#[derive(Debug)]
pub struct EventSocket {
    sock: Socket,
    bufs: MmsgBuffers,
    rcvbuf: socket::RcvbufOutcome,
    events_sysctl: u8,
    last_drops: u32,
    filter: Option<Vec<IpAddr>>,
    form: Option<bpf::AddressFilterForm>,
    state_filter: bool,
    stats: EventStats,
}

impl EventSocket {
    /// Opens and subscribes the event socket in the configured namespace, sizes its
    /// receive buffer, and reads (or sets) `nf_conntrack_events` there.
    pub fn open(cfg: &ObserverConfig) -> Result<Self, ConntrackError> {
        let rcvbuf_bytes = cfg.rcvbuf_bytes;
        let want = cfg.events_sysctl;
        let (sock, rcvbuf, events_sysctl) = netns::run_in(cfg.netns.as_deref(), move || {
            let sock = socket::open_netfilter()?;
            for group in [
                wire::NFNLGRP_CONNTRACK_NEW,
                wire::NFNLGRP_CONNTRACK_UPDATE,
                wire::NFNLGRP_CONNTRACK_DESTROY,
            ] {
                sock.add_membership(group)
                    .map_err(|e| ConntrackError::io("subscribe to conntrack events", e))?;
            }
            sock.set_non_blocking(true)
                .map_err(|e| ConntrackError::io("set non-blocking", e))?;
            let rcvbuf = socket::set_rcvbuf(sock.as_raw_fd(), rcvbuf_bytes)?;
            // Already in the namespace: read and write the sysctl here.
            let mut value = sysctl::events_sysctl(None)?;
            if want == EventsSysctl::SetOne && value != 1 {
                sysctl::set_events_sysctl(None, 1)?;
                value = 1;
            }
            Ok((sock, rcvbuf, value))
        })?;
        if events_sysctl == 2 {
            tracing::info!(
                "nf_conntrack_events=2: flows created before the observer started send no events; the first dump finds them and the periodic check sees them end"
            );
        }
        // The state part of the filter from the start: no event is queued that cannot
        // change a decision, whether or not addresses are ever registered.
        socket::attach_filter(sock.as_raw_fd(), &bpf::state_filter())?;
        let last_drops = socket::socket_drops(sock.as_raw_fd())?;
        Ok(Self {
            sock,
            bufs: MmsgBuffers::new(MMSG_SLOTS),
            rcvbuf,
            events_sysctl,
            last_drops,
            filter: None,
            form: None,
            state_filter: true,
            stats: EventStats::default(),
        })
    }

    /// The receive buffer the kernel granted, in bytes.
    pub fn effective_rcvbuf(&self) -> usize {
        self.rcvbuf.effective
    }

    /// `nf_conntrack_events` in the observed namespace, as found (or set) at open.
    pub fn events_sysctl(&self) -> u8 {
        self.events_sysctl
    }

    /// Attaches (or replaces) the kernel filter so only events whose reply source or
    /// original destination is in `addrs` are queued. An empty set drops every event.
    /// The state part stays in place (see [`EventSocket::set_state_filter`]). Never
    /// fails for the number of addresses: when they do not fit one program exactly, a
    /// family is compared by covering prefixes and the events of other addresses inside
    /// them are passed (the engine ignores them); [`EventSocket::address_filter_form`]
    /// tells which form is in place. Fails, leaving the filter as it was, only when the
    /// kernel refuses the program.
    pub fn set_address_filter(&mut self, addrs: &[IpAddr]) -> Result<(), ConntrackError> {
        let plan = bpf::AddressPlan::new(addrs, self.state_filter);
        socket::attach_filter(self.sock.as_raw_fd(), &bpf::plan_filter(&plan))?;
        self.filter = Some(addrs.to_vec());
        self.form = Some(plan.form());
        Ok(())
    }

    /// The form of the address part in place (exact addresses or prefixes per family,
    /// with the program length), or `None` without one.
    pub fn address_filter_form(&self) -> Option<bpf::AddressFilterForm> {
        self.form
    }

    /// Removes the address part of the kernel filter: events of every address are
    /// queued again. The state part stays in place while it is on.
    pub(crate) fn clear_address_filter(&mut self) -> Result<(), ConntrackError> {
        if self.state_filter {
            socket::attach_filter(self.sock.as_raw_fd(), &bpf::state_filter())?;
        } else {
            socket::detach_filter(self.sock.as_raw_fd())?;
        }
        self.filter = None;
        self.form = None;
        Ok(())
    }

    /// Turns the state part of the kernel filter on (the default from
    /// [`EventSocket::open`]) or off. On, the TCP UPDATEs that cannot change a decision
    /// (see [`bpf`]) are dropped in the kernel; off, every state change is queued, for a
    /// reader that wants the whole lifecycle. The address part is kept either way.
    pub fn set_state_filter(&mut self, on: bool) -> Result<(), ConntrackError> {
        let plan = self.filter.as_deref().map(|a| bpf::AddressPlan::new(a, on));
        match (&plan, on) {
            (Some(p), _) => socket::attach_filter(self.sock.as_raw_fd(), &bpf::plan_filter(p))?,
            (None, true) => socket::attach_filter(self.sock.as_raw_fd(), &bpf::state_filter())?,
            (None, false) => socket::detach_filter(self.sock.as_raw_fd())?,
        }
        self.form = plan.map(|p| p.form());
        self.state_filter = on;
        Ok(())
    }

    /// Whether the state part of the kernel filter is on.
    pub fn state_filter(&self) -> bool {
        self.state_filter
    }

    /// The addresses the filter passes, if a filter is attached.
    pub(crate) fn address_filter(&self) -> Option<&[IpAddr]> {
        self.filter.as_deref()
    }

    /// Reads everything queued now (non-blocking), calling `on_event` per parsed event;
    /// reports messages, malformed messages skipped, and loss (ENOBUFS / SO_MEMINFO
    /// drops delta).
    pub fn recv_batch(
        &mut self,
        on_event: &mut dyn FnMut(&FlowEvent),
    ) -> Result<RecvBatch, ConntrackError> {
        let fd = self.sock.as_raw_fd();
        let mut b = RecvBatch::default();
        let mut exhausted = true;
        for _ in 0..MAX_CALLS_PER_BATCH {
            let n = match self.bufs.recv(fd)? {
                MmsgResult::Empty => {
                    exhausted = false;
                    break;
                }
                MmsgResult::Overrun => {
                    b.syscalls += 1;
                    b.enobufs += 1;
                    continue;
                }
                MmsgResult::Received(n) => n,
            };
            b.syscalls += 1;
            for i in 0..n {
                let (datagram, truncated) = self.bufs.datagram(i);
                if truncated {
                    b.truncated += 1;
                    continue;
                }
                for m in parse::messages(datagram) {
                    let Ok(m) = m else {
                        b.malformed += 1;
                        continue;
                    };
                    b.messages += 1;
                    match parse::parse_event(&m) {
                        Ok(Some(ev)) => {
                            b.events += 1;
                            on_event(&ev);
                        }
                        Ok(None) => {}
                        Err(_) => b.malformed += 1,
                    }
                }
            }
            if n < self.bufs.slots() {
                // A short batch means the queue was drained: spare the EAGAIN call.
                exhausted = false;
                break;
            }
        }
        b.more = exhausted;
        let drops = socket::socket_drops(fd)?;
        b.drops = u64::from(drops.wrapping_sub(self.last_drops));
        self.last_drops = drops;

        let s = &mut self.stats;
        s.messages += b.messages;
        s.events += b.events;
        s.malformed += b.malformed;
        s.truncated += b.truncated;
        s.enobufs += u64::from(b.enobufs);
        s.drops += b.drops;
        s.syscalls += u64::from(b.syscalls);
        if b.lost() {
            s.loss_episodes += 1;
            tracing::warn!(
                drops = b.drops,
                enobufs = b.enobufs,
                truncated = b.truncated,
                "conntrack events were lost; a resync is needed"
            );
        }
        Ok(b)
    }

    /// Waits up to `timeout` for the socket to become readable.
    pub fn wait_readable(&self, timeout: Duration) -> Result<bool, ConntrackError> {
        self.wait(timeout, None)
    }

    /// Like [`EventSocket::wait_readable`], but also returns (false, unless events are
    /// queued too) as soon as `wakeup` is set, and clears it.
    pub(crate) fn wait_readable_or_woken(
        &self,
        timeout: Duration,
        wakeup: &Wakeup,
    ) -> Result<bool, ConntrackError> {
        self.wait(timeout, Some(wakeup))
    }

    fn wait(&self, timeout: Duration, wakeup: Option<&Wakeup>) -> Result<bool, ConntrackError> {
        let pfd = |fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut pfds = [pfd(self.sock.as_raw_fd()), pfd(-1)];
        if let Some(w) = wakeup {
            pfds[1] = pfd(w.raw_fd());
        }
        let count = if wakeup.is_some() { 2 } else { 1 };
        // ppoll rather than poll: a timeout under a millisecond must not become 0 (a
        // caller waiting for an instant would spin) nor round up to a millisecond.
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        loop {
            // SAFETY: `count` valid pollfds, a live timespec, no signal mask.
            let rc = unsafe { libc::ppoll(pfds.as_mut_ptr(), count, &ts, std::ptr::null()) };
            if rc >= 0 {
                if let Some(w) = wakeup.filter(|_| pfds[1].revents != 0) {
                    w.clear();
                }
                return Ok(pfds[0].revents != 0);
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINTR) {
                return Err(ConntrackError::io("poll", err));
            }
        }
    }

    /// Waits up to `timeout` for events, then lingers `linger` so that a burst is read
    /// in a few large batches rather than one syscall per event; the receive buffer
    /// absorbs the wait (16 MiB holds about 13,000 events, over 100 ms at the highest
    /// rates measured). Returns whether events are queued.
    pub fn wait_batch(&self, timeout: Duration, linger: Duration) -> Result<bool, ConntrackError> {
        let ready = self.wait_readable(timeout)?;
        if ready && !linger.is_zero() {
            std::thread::sleep(linger);
        }
        Ok(ready)
    }

    /// Counters since open.
    pub fn stats(&self) -> EventStats {
        self.stats
    }
}

impl AsRawFd for EventSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}
