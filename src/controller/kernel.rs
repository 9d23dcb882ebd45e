//! Kernel mode: the engine loop and the dump worker.
//!
//! Two threads per controller:
//! - the **engine loop** (`as-engine`) owns the [`EventSocket`], the [`Wakeup`] eventfd,
//!   the deadlines and the observer's health. It sleeps in poll(2) on the event socket
//!   and the eventfd until the engine's next deadline (or the next periodic check, the
//!   end of a burst of resync requests, a socket reopen, the announcement of queued
//!   `PersistRuntime` decisions), then does everything in program
//!   order: reads what is queued and applies it as one batch
//!   ([`Engine::on_flow_events`](crate::engine::Engine::on_flow_events)), applies what
//!   the dump worker sent back, fires due deadlines and queues the decisions, keeps the
//!   kernel address filter equal to the registered address set, and begins the next
//!   resync. Since one thread does it all, a new filter is in place before the resync
//!   that follows it begins, and a resync begins only once the previous one is applied.
//!   Under a steady trickle of events, the first event of a batch waits briefly for
//!   those behind it, so the trickle is read in batches instead of costing a wake-up
//!   each; a lone event is read at once.
//! - the **dump worker** (`as-dump`) owns the [`QuerySocket`]: it runs the dumps the loop
//!   asks for and streams the flows back in chunks over a channel, and looks up flows by
//!   exact tuple (a hash lookup each in the kernel, no walk of the table), waking the
//!   loop through the eventfd. It never touches the engine.
//!
//! The kernel's table is walked only for the first resync, after lost events, an address
//! change or a socket reopen, and for the confirmation before a standby. The periodic
//! safety check (every `resync_interval_ms`) looks up each tracked flow instead
//! ([`Engine::check_tracked_flows`](crate::engine::Engine::check_tracked_flows)), as the
//! checks of UDP flows whose expiry passed do: that catches an end whose DESTROY was
//! lost or never sent, at a few microseconds a flow where a walk of a 200k-entry table
//! costs most of a second. A flow whose NEW was lost is the confirmation's to find.
//!
//! Host calls lock the engine themselves, then wake the loop. Every thread holds the
//! engine lock only for engine calls, never across a system call, and no hold walks
//! every instance or address: the loop keeps its own copy of the address set from the
//! engine's changes, applies dumped flows and the end of a resync in bounded steps,
//! and lets host calls in between (`make bench-scale`).

use std::collections::BTreeSet;
use std::mem;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use super::lead::ConfirmLead;
use super::{ControllerConfig, ControllerError, EventsSysctlMode, Shared};
use crate::conntrack::{
    ConntrackError, EventSocket, EventsSysctl, LookupResult, ObserverConfig, QuerySocket, Wakeup,
};
use crate::engine::{
    InstanceKey, LookupAnswer, LookupId, ObserverHealth, ObserverRequest, ResyncId, ResyncScope,
    UnixMillis,
};
use crate::flow::{Flow, FlowEvent};

/// A resync of everything mostly answers a change of the address set, and those come in
/// bursts (a host registering its instances one by one at start-up): the loop begins the
/// dump once no such request has come for this long...
const BURST_QUIET: Duration = Duration::from_millis(5);
/// ...or once the burst has lasted this long...
const BURST_MAX: Duration = Duration::from_millis(500);
/// ...a span multiplied by this for each further dump while the same burst goes on, so
/// that a long burst costs few dumps (each walks the whole table and applies the state
/// of every instance): a burst of 100,000 registrations (1-3 s) costs two...
const BURST_GROWTH: u32 = 4;
/// ...up to this span, so that a host registering without pause still gets its new
/// instances read this often.
const BURST_MAX_LIMIT: Duration = Duration::from_secs(8);
/// First delay before reopening a failed socket or retrying a failed dump; doubled per
/// failure.
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest delay between reopen attempts or dump retries.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Dumped flows per chunk sent to the loop.
const RESYNC_CHUNK: usize = 1024;
/// Shortest time between two replacements of the kernel filter while the address set
/// keeps changing.
const FILTER_EVERY: Duration = Duration::from_millis(5);
/// Dumped flows applied per hold of the engine lock, so a host call waits at most
/// tens of microseconds for a chunk.
const APPLY_STEP: usize = 128;
/// Instances the end of a resync is applied to per hold of the engine lock
/// ([`Engine::finish_resync_bounded`](crate::engine::Engine::finish_resync_bounded)).
const FINISH_STEP: usize = 256;
/// Chunks queued for the loop before the worker waits (the loop never waits on it).
const REPLY_QUEUE: usize = 64;
/// How long the first event of a steady trickle waits, once the socket is readable,
/// before the loop reads, so that the events behind it are read in the same wake-up.
/// The socket's receive buffer absorbs the wait. Never beyond the next deadline; host
/// calls and dump results end it early. Waiting after the socket became readable,
/// rather than after the last read, also covers the time the next event takes to come:
/// one wake-up per linger, where waiting first and polling after costs about a quarter
/// more at 3,000 events/s (`make bench-steady`). Measured there (500 addresses, 1,000
/// TCP connections/s): 2 ms gives as many wake-ups as a reader lingering 2 ms (~350/s)
/// and 1.35x its CPU per event, the decision work included; 4 ms ~200 wake-ups/s and
/// 0.9-1.25x. The price is at most this much added to a Wake that arrives during a
/// trickle (at 3,600 other events/s, `controller_event_latency`: probe to Wake p50
/// 2.5 ms, p99 7.6 ms, against 1.1 and 2.9 ms with 2 ms); a lone event is read at once
/// (quiet: p50 0.36 ms, p99 under 1 ms).
const LINGER: Duration = Duration::from_millis(4);
/// How long a blocked poller may be left asleep when the loop queued only
/// `PersistRuntime` decisions. A busy instance flips between active and idle with each
/// short connection, each flip a decision to persist; waking the host for each cost it
/// a wake-up per loop turn (about 200/s at 1,000 connections/s). The countdown they
/// carry needs no such haste; `Standby`, `Wake` and `Confirm` still wake it at once.
const PERSIST_ANNOUNCE: Duration = Duration::from_millis(50);
/// A wake-up that read this many events or more is under a flood: poll again at once.
const LINGER_BELOW: u64 = 256;
/// Linger only when the socket became readable this soon after the previous read: a
/// steady trickle (where a linger saves wake-ups) keeps them closer than this, while
/// sparse events (where it would only delay the next one, say the NEW that wakes an
/// instance) do not.
const LINGER_WITHIN: Duration = Duration::from_millis(4);

/// What the engine loop asks of the dump worker. The worker answers each request with
/// replies that carry the request's id, in order; a new kind of request is a new variant
/// with its own request type and replies.
#[derive(Debug)]
enum WorkerRequest {
    /// A dump of the flows of a set of addresses.
    Dump(DumpRequest),
    /// Exact-tuple lookups of flows.
    Lookup(LookupRequest),
    /// A read of `nf_conntrack_events`, answered with [`WorkerReply::Sysctl`] (every
    /// dump reads it too).
    Sysctl,
}

/// Look up each of `flows` by its original tuple for lookup `id`, answered with one
/// [`WorkerReply::Looked`].
#[derive(Debug)]
struct LookupRequest {
    id: LookupId,
    flows: Vec<Flow>,
}

/// One flow's lookup answer, owned for the trip to the loop.
#[derive(Debug)]
enum LookupReply {
    Found(Flow),
    Gone,
    Failed,
}

impl LookupReply {
    fn of(r: LookupResult<'_>) -> Self {
        match r {
            LookupResult::Found(f) => Self::Found(*f),
            LookupResult::Gone => Self::Gone,
            LookupResult::Failed(_) => Self::Failed,
        }
    }

    fn answer(&self) -> LookupAnswer<'_> {
        match self {
            Self::Found(f) => LookupAnswer::Found(f),
            Self::Gone => LookupAnswer::Gone,
            Self::Failed => LookupAnswer::Failed,
        }
    }
}

/// Dump the flows of `addresses` for resync `id`, answered with [`WorkerReply::Sysctl`],
/// [`WorkerReply::Flows`] chunks, then [`WorkerReply::End`].
#[derive(Debug)]
struct DumpRequest {
    id: ResyncId,
    addresses: Vec<IpAddr>,
}

/// What the dump worker sends back, in the order it happened.
#[derive(Debug)]
enum WorkerReply {
    /// `net.netfilter.nf_conntrack_events`, read before a dump's first entry.
    Sysctl(u8),
    /// Entries of the dump for a resync, in kernel order.
    Flows(ResyncId, Vec<Flow>),
    /// The dump for a resync ended (or could not run: the query socket could not be
    /// opened), with its error if it failed, and the walks of the kernel's table it took.
    End(ResyncId, Result<(), String>, u32),
    /// A lookup ended: the flows asked about, the answers by index into them, and its
    /// error if the socket failed (the engine then resyncs the instances concerned).
    Looked(LookupRequest, Vec<(usize, LookupReply)>, Result<(), String>),
}

/// Test-only failure injection, set by the host's thread and taken by the loop.
#[cfg(feature = "test-hooks")]
#[derive(Debug, Default)]
struct TestHooks {
    /// Fail the event socket now and refuse to reopen it until this instant.
    fail_events: parking_lot::Mutex<Option<Instant>>,
}

/// What a controller thread runs.
type ThreadBody = Box<dyn FnOnce() + Send>;

/// The threads of a kernel-mode controller.
#[derive(Debug)]
pub(crate) struct KernelRuntime {
    wakeup: Arc<Wakeup>,
    stop: Arc<AtomicBool>,
    #[cfg(feature = "test-hooks")]
    hooks: Arc<TestHooks>,
    threads: Vec<JoinHandle<()>>,
}

fn observer_config(config: &ControllerConfig) -> ObserverConfig {
    ObserverConfig {
        netns: config.netns.clone(),
        rcvbuf_bytes: config.rcvbuf_bytes,
        events_sysctl: match config.events_sysctl {
            EventsSysctlMode::ReportOnly => EventsSysctl::Report,
            EventsSysctlMode::Enable => EventsSysctl::SetOne,
        },
    }
}

impl From<ConntrackError> for ControllerError {
    fn from(err: ConntrackError) -> Self {
        if err.is_permission_denied() {
            Self::Permission(err.to_string())
        } else if matches!(err, ConntrackError::NotNetns { .. }) {
            Self::InvalidArgument(err.to_string())
        } else {
            Self::Io(err.to_string())
        }
    }
}

impl KernelRuntime {
    /// Opens the sockets (so privilege and namespace errors surface here) and starts the
    /// threads.
    pub(crate) fn start(
        shared: Arc<Shared>,
        config: &ControllerConfig,
    ) -> Result<Self, ControllerError> {
        let ocfg = observer_config(config);
        let where_ = |e: ConntrackError| {
            let place = ocfg.netns.as_ref().map_or_else(
                || "the current network namespace".to_owned(),
                |p| format!("network namespace {}", p.display()),
            );
            match ControllerError::from(e) {
                ControllerError::Permission(m) => {
                    ControllerError::Permission(format!("{m} ({place})"))
                }
                ControllerError::Io(m) => ControllerError::Io(format!("{m} ({place})")),
                other => other,
            }
        };
        if let Some(path) = &ocfg.netns {
            // Checked here so a wrong path is refused before anything starts.
            crate::conntrack::netns::open(path).map_err(where_)?;
        }
        // Subscribe before the first dump: nothing created in between is missed.
        let events = EventSocket::open(&ocfg).map_err(where_)?;
        let query = QuerySocket::open(&ocfg).map_err(where_)?;
        let wakeup = Arc::new(Wakeup::new().map_err(where_)?);
        if let Some(path) = &ocfg.netns {
            tracing::info!(netns = %path.display(), "observing conntrack in a network namespace");
        }
        // Nothing is known of the flows that began before the event socket listened:
        // every instance is resync-pending (kept awake, and saying so) until the first
        // resync has run. That is not an observer failure. Done before any host call
        // can register an instance, and it queues the first resync of everything.
        {
            let now = shared.clock.now();
            shared.engine.lock().events_lost(ResyncScope::All, now);
        }

        let (to_worker, requests) = unbounded::<WorkerRequest>();
        let (reply_tx, replies) = bounded::<WorkerReply>(REPLY_QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        #[cfg(feature = "test-hooks")]
        let hooks = Arc::new(TestHooks::default());
        let mut runtime = Self {
            wakeup: wakeup.clone(),
            stop: stop.clone(),
            #[cfg(feature = "test-hooks")]
            hooks: hooks.clone(),
            threads: Vec::new(),
        };
        let worker = {
            let ocfg = ocfg.clone();
            let wakeup = wakeup.clone();
            move || dump_worker(query, &ocfg, &requests, &reply_tx, &wakeup)
        };
        let engine_loop = EngineLoop {
            shared: shared.clone(),
            cfg: ocfg,
            wakeup,
            stop,
            #[cfg(feature = "test-hooks")]
            hooks,
            #[cfg(feature = "test-hooks")]
            reopen_refused_until: None,
            events: Some(events),
            reopen_at: Instant::now(),
            reopen_backoff: BACKOFF_INITIAL,
            batch: Vec::new(),
            linger: false,
            last_read: Instant::now(),
            to_worker,
            replies,
            inbox: Vec::new(),
            resyncs: ResyncQueue::default(),
            resync_interval: Duration::from_millis(config.resync_interval_ms),
            next_reconcile: Instant::now() + Duration::from_millis(config.resync_interval_ms),
            next_deadline: None,
            address_generation: None,
            seen_generation: None,
            filter_set_at: None,
            addresses: AddressSet::default(),
            events_down: None,
            resync_error: None,
            events_off: false,
            reported: ObserverHealth::Healthy,
            requests: Vec::new(),
            lead: ConfirmLead::new(config.confirm_lead_ms),
            dump_began: Instant::now(),
            announce_at: None,
        };
        // The worker first: if the loop cannot be spawned, dropping it drops the
        // worker's request channel and the worker ends.
        let threads: [(&str, ThreadBody); 2] = [
            ("as-dump", Box::new(worker)),
            ("as-engine", Box::new(move || engine_loop.run())),
        ];
        for (name, f) in threads {
            let dispatch = shared.dispatch.clone();
            match std::thread::Builder::new()
                .name(name.into())
                .spawn(move || tracing::dispatcher::with_default(&dispatch, f))
            {
                Ok(handle) => runtime.threads.push(handle),
                Err(e) => {
                    runtime.stop();
                    return Err(ControllerError::Io(format!("spawn {name}: {e}")));
                }
            }
        }
        Ok(runtime)
    }

    /// Test-only: makes the loop lose its event socket through the same path as a
    /// failed receive, and fail every reopen attempt for `down_for`.
    #[cfg(feature = "test-hooks")]
    pub(crate) fn fail_event_socket(&self, down_for: Duration) {
        *self.hooks.fail_events.lock() = Some(Instant::now() + down_for);
        self.wakeup.wake();
    }

    /// Tells the loop that the engine changed outside it (deadlines, the address set,
    /// requests).
    pub(crate) fn rearm(&self) {
        self.wakeup.wake();
    }

    /// Stops and joins both threads.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.wakeup.wake();
        // The loop returns at once; its channel ends go with it, which ends the worker
        // (after the dump it may be running).
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The dump worker: runs each request, streaming its answer to the loop.
fn dump_worker(
    socket: QuerySocket,
    cfg: &ObserverConfig,
    requests: &Receiver<WorkerRequest>,
    replies: &Sender<WorkerReply>,
    wakeup: &Wakeup,
) {
    let mut socket = Some(socket);
    // False once the loop has gone: stop.
    let send = |reply| {
        let sent = replies.send(reply).is_ok();
        wakeup.wake();
        sent
    };
    for request in requests {
        let listening = match request {
            WorkerRequest::Dump(d) => run_dump(&mut socket, cfg, d, &send),
            WorkerRequest::Lookup(l) => run_lookup(&mut socket, cfg, l, &send),
            WorkerRequest::Sysctl => read_sysctl(cfg, &send),
        };
        if !listening {
            return;
        }
    }
}

/// Runs one dump; false when the loop is gone.
fn run_dump(
    socket: &mut Option<QuerySocket>,
    cfg: &ObserverConfig,
    req: DumpRequest,
    send: &dyn Fn(WorkerReply) -> bool,
) -> bool {
    let DumpRequest { id, addresses } = req;
    if socket.is_none() {
        match QuerySocket::open(cfg) {
            Ok(s) => *socket = Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "auto-standby could not reopen its conntrack query socket");
                return send(WorkerReply::End(id, Err(e.to_string()), 0));
            }
        }
    }
    // Events off means a connection opened from now on is never seen, so every dump
    // (the first, each confirmation before a standby) reads it first, as each periodic
    // check does; the loop applies the value before the dump's entries.
    if !read_sysctl(cfg, send) {
        return false;
    }
    let sock = socket.as_mut().expect("opened above");
    let mut chunk = Vec::with_capacity(RESYNC_CHUNK);
    let mut listening = true;
    let dumped = sock.dump_addresses(&addresses, &mut |f| {
        if listening {
            chunk.push(*f);
            if chunk.len() == RESYNC_CHUNK {
                let full = mem::replace(&mut chunk, Vec::with_capacity(RESYNC_CHUNK));
                listening = send(WorkerReply::Flows(id, full));
            }
        }
    });
    if !listening || (!chunk.is_empty() && !send(WorkerReply::Flows(id, chunk))) {
        return false;
    }
    match &dumped {
        Ok(stats) => tracing::debug!(
            flows = stats.flows,
            addresses = addresses.len(),
            walks = stats.walks,
            "resync dump finished"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "auto-standby resync failed");
            // A fresh socket for the next request: this one may hold half a dump.
            *socket = None;
        }
    }
    let walks = dumped.as_ref().map_or(0, |s| s.walks);
    send(WorkerReply::End(
        id,
        dumped.map(|_| ()).map_err(|e| e.to_string()),
        walks,
    ))
}

/// Reads `nf_conntrack_events` and sends it to the loop; false when the loop is gone.
fn read_sysctl(cfg: &ObserverConfig, send: &dyn Fn(WorkerReply) -> bool) -> bool {
    match crate::conntrack::sysctl::events_sysctl(cfg.netns.as_deref()) {
        Ok(v) => send(WorkerReply::Sysctl(v)),
        Err(e) => {
            tracing::debug!(error = %e, "could not read nf_conntrack_events");
            true
        }
    }
}

/// Runs one batch of exact-tuple lookups; false when the loop is gone. A socket that
/// cannot be opened or fails makes the whole lookup fail.
fn run_lookup(
    socket: &mut Option<QuerySocket>,
    cfg: &ObserverConfig,
    req: LookupRequest,
    send: &dyn Fn(WorkerReply) -> bool,
) -> bool {
    if socket.is_none() {
        *socket = QuerySocket::open(cfg).ok();
    }
    let mut answers = Vec::with_capacity(req.flows.len());
    let result = match socket.as_mut() {
        Some(sock) => sock
            .lookup_flows(&req.flows, &mut |i, r| {
                answers.push((i, LookupReply::of(r)))
            })
            .map(|stats| {
                tracing::debug!(
                    flows = stats.asked,
                    gone = stats.gone,
                    failed = stats.failed,
                    syscalls = stats.syscalls(),
                    "flow lookups finished"
                );
            })
            .map_err(|e| e.to_string()),
        None => Err("the query socket could not be opened".to_owned()),
    };
    if let Err(e) = &result {
        tracing::warn!(error = %e, "auto-standby flow lookups failed; resyncing instead");
        // A fresh socket for the next request: this one may hold unread replies.
        *socket = None;
    }
    send(WorkerReply::Looked(req, answers, result))
}

/// Resyncs asked for and not begun yet, and the one the worker is running.
#[derive(Debug)]
struct ResyncQueue {
    /// A resync of everything is wanted: when the burst of such requests began and when
    /// its latest request came.
    all: Option<(Instant, Instant)>,
    /// Instances to resync (confirmations before a standby, scoped losses): not held
    /// back by a burst.
    instances: Vec<InstanceKey>,
    /// The resync whose dump the worker is running; the next begins once it is applied,
    /// so it cannot supersede it halfway.
    in_flight: Option<(ResyncId, ResyncScope)>,
    /// After a failed dump, none begins before this.
    not_before: Option<Instant>,
    backoff: Duration,
    /// How long the current burst of requests to resync everything may last before a
    /// dump begins anyway.
    burst_max: Duration,
}

impl Default for ResyncQueue {
    fn default() -> Self {
        Self {
            all: None,
            instances: Vec::new(),
            in_flight: None,
            not_before: None,
            backoff: BACKOFF_INITIAL,
            burst_max: BURST_MAX,
        }
    }
}

impl ResyncQueue {
    fn add(&mut self, scope: ResyncScope, at: Instant) {
        match scope {
            ResyncScope::All => {
                self.all = Some(self.all.map_or((at, at), |(first, _)| (first, at)));
            }
            ResyncScope::Instances(keys) => self.instances.extend(keys),
        }
    }

    /// When the pending resync of everything is ripe.
    fn all_ripe_at(&self) -> Option<Instant> {
        self.all
            .map(|(first, last)| (last + BURST_QUIET).min(first + self.burst_max))
    }

    /// When the next resync may begin; `None` when none is wanted or one is running.
    fn due(&self, now: Instant) -> Option<Instant> {
        if self.in_flight.is_some() {
            return None;
        }
        let at = if self.instances.is_empty() {
            self.all_ripe_at()?
        } else {
            now
        };
        Some(self.not_before.map_or(at, |nb| nb.max(at)))
    }

    /// The scope to resync now, if one is due.
    fn take(&mut self, now: Instant) -> Option<ResyncScope> {
        if self.due(now)? > now {
            return None;
        }
        self.not_before = None;
        if self.all_ripe_at().is_some_and(|at| at <= now) {
            // A burst still going on (no quiet gap yet) waits longer for its next dump.
            let going_on = self.all.is_some_and(|(_, last)| last + BURST_QUIET > now);
            self.burst_max = if going_on {
                (self.burst_max * BURST_GROWTH).min(BURST_MAX_LIMIT)
            } else {
                BURST_MAX
            };
            // Covers the instances too.
            self.all = None;
            self.instances.clear();
            return Some(ResyncScope::All);
        }
        let mut keys = mem::take(&mut self.instances);
        keys.sort_unstable();
        keys.dedup();
        Some(ResyncScope::Instances(keys))
    }

    /// The running resync ended; a failed one is asked for again after a backoff.
    fn ended(&mut self, id: ResyncId, ok: bool, now: Instant) {
        let Some((running, scope)) = self.in_flight.take() else {
            return;
        };
        debug_assert_eq!(running, id);
        if ok {
            self.backoff = BACKOFF_INITIAL;
        } else {
            self.add(scope, now);
            self.not_before = Some(now + self.backoff);
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// The loop's copy of the registered addresses, kept up to date from the engine's
/// changes ([`Engine::drain_address_changes`](crate::engine::Engine::drain_address_changes))
/// so that the engine lock is never held for a walk of the whole set.
#[derive(Debug, Default)]
struct AddressSet {
    /// Changes drained from the engine and not applied yet.
    changes: Vec<(IpAddr, bool)>,
    /// The whole set, when the engine could not give the changes.
    all: Vec<IpAddr>,
    set: BTreeSet<IpAddr>,
    /// `set` as a list (for the kernel filter and the dumps), once `refresh`ed.
    sorted: Vec<IpAddr>,
    /// `sorted` is older than `set`.
    stale: bool,
}

impl AddressSet {
    /// Applies what was drained: the changes, or the whole set when not `complete`.
    fn apply(&mut self, complete: bool) {
        if !complete {
            self.set.clear();
            self.set.extend(self.all.drain(..));
        } else if self.changes.is_empty() {
            return;
        }
        for (a, added) in self.changes.drain(..) {
            if added {
                self.set.insert(a);
            } else {
                self.set.remove(&a);
            }
        }
        self.stale = true;
    }

    /// Brings `sorted` up to date (only when needed: it copies the whole set).
    fn refresh(&mut self) {
        if mem::take(&mut self.stale) {
            self.sorted.clear();
            self.sorted.extend(self.set.iter().copied());
        }
    }
}

/// The engine loop's state. See the module docs.
struct EngineLoop {
    shared: Arc<Shared>,
    cfg: ObserverConfig,
    wakeup: Arc<Wakeup>,
    stop: Arc<AtomicBool>,
    #[cfg(feature = "test-hooks")]
    hooks: Arc<TestHooks>,
    #[cfg(feature = "test-hooks")]
    reopen_refused_until: Option<Instant>,
    /// `None` while failed; reopened at `reopen_at`.
    events: Option<EventSocket>,
    reopen_at: Instant,
    reopen_backoff: Duration,
    /// Events of one `recv_batch`, reused.
    batch: Vec<FlowEvent>,
    /// The last read was a small, complete batch: the next one may linger.
    linger: bool,
    /// When events were last read.
    last_read: Instant,
    to_worker: Sender<WorkerRequest>,
    replies: Receiver<WorkerReply>,
    /// Replies taken from the channel and not applied yet, reused.
    inbox: Vec<WorkerReply>,
    resyncs: ResyncQueue,
    resync_interval: Duration,
    next_reconcile: Instant,
    /// The engine's next deadline as of the last settle.
    next_deadline: Option<UnixMillis>,
    /// The address-set generation the kernel filter was last built from.
    address_generation: Option<u64>,
    /// The latest address-set generation seen.
    seen_generation: Option<u64>,
    /// When the kernel filter was last replaced.
    filter_set_at: Option<Instant>,
    /// The registered addresses, kept from the engine's changes.
    addresses: AddressSet,
    events_down: Option<String>,
    resync_error: Option<String>,
    /// `nf_conntrack_events` was 0 at the last read.
    events_off: bool,
    reported: ObserverHealth,
    requests: Vec<ObserverRequest>,
    /// The confirmation lead, sized from the wall time of the dumps.
    lead: ConfirmLead,
    /// When the running dump was handed to the worker.
    dump_began: Instant,
    /// When to wake a blocked poller for `PersistRuntime` decisions queued without
    /// waking it.
    announce_at: Option<Instant>,
}

impl EngineLoop {
    fn run(mut self) {
        loop {
            self.after();
            let timeout = self.time_to_next_wake();
            let readable = self.wait(timeout);
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            self.inbox.extend(self.replies.try_iter());
            #[cfg(feature = "test-hooks")]
            self.injected_failure();
            // A dump's end is applied after the events queued before it: a flow created
            // once the dump had walked past its place is known by its NEW event then.
            let ending = self
                .inbox
                .iter()
                .any(|r| matches!(r, WorkerReply::End(..) | WorkerReply::Looked(..)));
            if readable || ending {
                self.read_events(readable);
            }
            self.apply_replies();
            self.reopen_events();
        }
    }

    /// When the kernel filter may be replaced next: at once, or, while the address set
    /// keeps changing, [`FILTER_EVERY`] after the last time, so that a burst of
    /// registrations does not rebuild a filter of every address for each one. Until
    /// then the instances added are resync-pending (and the resync that reads their
    /// flows begins after the filter that passes their events).
    fn filter_due(&self, now: Instant) -> Instant {
        self.filter_set_at.map_or(now, |t| t + FILTER_EVERY)
    }

    /// Until the engine's next deadline, the next reconcile, the next resync that may
    /// begin, the next reopen attempt or a filter update put off, whichever is first.
    fn time_to_next_wake(&self) -> Duration {
        let now = Instant::now();
        let mut next = self.next_reconcile;
        if self.address_generation != self.seen_generation {
            next = next.min(self.filter_due(now));
        }
        if let Some(at) = self.resyncs.due(now) {
            next = next.min(at);
        }
        if self.events.is_none() {
            next = next.min(self.reopen_at);
        }
        if let Some(at) = self.announce_at {
            next = next.min(at);
        }
        // In the engine's (monotonic) time: a step of the wall clock moves no deadline.
        let engine_now = self.shared.clock.now();
        let until_deadline = self.next_deadline.map_or(Duration::MAX, |d| {
            Duration::from_millis(d.saturating_sub(engine_now))
        });
        next.saturating_duration_since(now).min(until_deadline)
    }

    /// Waits up to `timeout` for events or a wake-up; true when events are queued.
    fn wait(&mut self, timeout: Duration) -> bool {
        let Some(sock) = self.events.as_ref() else {
            // Spurious returns are harmless: the loop just looks around once more.
            let _ = self.wakeup.wait(timeout);
            return false;
        };
        let readable = match sock.wait_readable_or_woken(timeout, &self.wakeup) {
            Ok(readable) => readable,
            Err(e) => {
                self.events_failed(e);
                return false;
            }
        };
        if readable && mem::take(&mut self.linger) && self.last_read.elapsed() < LINGER_WITHIN {
            // A wake-up from the host or the worker ends it: that work is waiting.
            let _ = self.wakeup.wait(LINGER.min(self.time_to_next_wake()));
        }
        readable
    }

    /// Reads and applies what is queued on the event socket (`woke`: poll said so), one
    /// bounded batch: under a flood the loop goes round (deadlines, dump results, host
    /// calls) between batches, and the next poll returns at once.
    fn read_events(&mut self, woke: bool) {
        let Some(sock) = self.events.as_mut() else {
            return;
        };
        let batch = &mut self.batch;
        let result = sock.recv_batch(&mut |ev| batch.push(*ev));
        let read = batch.len() as u64;
        if !batch.is_empty() {
            let now = self.shared.clock.now();
            self.shared.engine.lock().on_flow_events(batch, now);
            batch.clear();
        }
        self.shared.events_read.fetch_add(read, Ordering::Relaxed);
        if woke {
            self.shared.event_wakeups.fetch_add(1, Ordering::Relaxed);
        }
        match result {
            Ok(b) => {
                if b.lost() {
                    self.shared.events_lost.fetch_add(1, Ordering::Relaxed);
                    let now = self.shared.clock.now();
                    self.shared.engine.lock().events_lost(ResyncScope::All, now);
                }
                if read > 0 {
                    self.last_read = Instant::now();
                    self.linger = !b.more && read < LINGER_BELOW;
                }
            }
            Err(e) => self.events_failed(e),
        }
    }

    /// The event socket failed: report it and reopen it after a backoff.
    fn events_failed(&mut self, e: ConntrackError) {
        tracing::error!(error = %e, "auto-standby conntrack subscription failed");
        self.events = None;
        self.batch.clear();
        self.linger = false;
        self.shared.observer_errors.fetch_add(1, Ordering::Relaxed);
        self.events_down = Some(e.to_string());
        self.reopen_at = Instant::now() + self.reopen_backoff;
    }

    /// Reopens a failed event socket once its backoff has run out.
    fn reopen_events(&mut self) {
        if self.events.is_some() || Instant::now() < self.reopen_at {
            return;
        }
        #[cfg(feature = "test-hooks")]
        let refused = self
            .reopen_refused_until
            .is_some_and(|at| Instant::now() < at);
        #[cfg(not(feature = "test-hooks"))]
        let refused = false;
        let opened = if refused {
            Err(ConntrackError::io(
                "open event socket",
                std::io::Error::other("failure injected by a test"),
            ))
        } else {
            EventSocket::open(&self.cfg)
        };
        match opened {
            Ok(s) => {
                tracing::info!("auto-standby conntrack subscription restored");
                self.events = Some(s);
                self.reopen_backoff = BACKOFF_INITIAL;
                self.events_down = None;
                // Whatever happened while the socket was down is unknown: resync
                // everything, once the address filter is back on the new socket.
                let now = self.shared.clock.now();
                self.shared.engine.lock().events_lost(ResyncScope::All, now);
                self.address_generation = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "auto-standby conntrack reconnect failed");
                self.reopen_backoff = (self.reopen_backoff * 2).min(BACKOFF_MAX);
                self.reopen_at = Instant::now() + self.reopen_backoff;
            }
        }
    }

    /// Test-only: takes an injected event socket failure.
    #[cfg(feature = "test-hooks")]
    fn injected_failure(&mut self) {
        let Some(until) = self.hooks.fail_events.lock().take() else {
            return;
        };
        self.reopen_refused_until = Some(until);
        if self.events.is_some() {
            self.events_failed(ConntrackError::io(
                "receive conntrack events",
                std::io::Error::other("failure injected by a test"),
            ));
        }
    }

    /// Applies the worker's replies, in the order it sent them.
    fn apply_replies(&mut self) {
        let mut inbox = mem::take(&mut self.inbox);
        for reply in inbox.drain(..) {
            let now = self.shared.clock.now();
            match reply {
                WorkerReply::Sysctl(value) => self.events_sysctl(value, now),
                WorkerReply::Flows(id, flows) => {
                    // The engine skips entries older than an event it applied meanwhile.
                    // An error means a newer resync replaced this one: the rest is moot.
                    'chunk: for part in flows.chunks(APPLY_STEP) {
                        let mut engine = self.shared.engine.lock();
                        for f in part {
                            if engine.resync_flow(id, f).is_err() {
                                break 'chunk;
                            }
                        }
                    }
                }
                WorkerReply::End(id, Ok(()), walks) => {
                    self.count_walks(walks);
                    if let Some(lead) = self.lead.dump_took(self.dump_began.elapsed()) {
                        tracing::info!(
                            confirm_lead_ms = lead,
                            "confirmation lead follows the time dumps take"
                        );
                        self.shared.engine.lock().set_confirm_lead_ms(lead, now);
                    }
                    // In steps, each settled, so host calls get the lock in between
                    // and the decisions go out in bounded batches.
                    loop {
                        let mut engine = self.shared.engine.lock();
                        match engine.finish_resync_bounded(id, now, FINISH_STEP) {
                            Ok(false) => {
                                if self.shared.settle(&mut engine, now, true)
                                    && self.announce_at.is_none()
                                {
                                    self.announce_at = Some(Instant::now() + PERSIST_ANNOUNCE);
                                }
                            }
                            Ok(true) => break,
                            Err(e) => {
                                // Not an observer failure.
                                tracing::debug!(error = %e, "resync superseded");
                                break;
                            }
                        }
                    }
                    self.resync_error = None;
                    self.resyncs.ended(id, true, Instant::now());
                }
                WorkerReply::End(id, Err(why), walks) => {
                    self.count_walks(walks);
                    let _ = self.shared.engine.lock().fail_resync(id, now);
                    self.shared.observer_errors.fetch_add(1, Ordering::Relaxed);
                    self.resync_error = Some(why);
                    self.resyncs.ended(id, false, Instant::now());
                }
                WorkerReply::Looked(req, answers, result) => {
                    let mut engine = self.shared.engine.lock();
                    for (i, a) in &answers {
                        let _ = engine.lookup_answer(req.id, &req.flows[*i], a.answer());
                    }
                    let _ = match result {
                        Ok(()) => {
                            self.shared
                                .flow_lookups
                                .fetch_add(req.flows.len() as u64, Ordering::Relaxed);
                            engine.finish_lookup(req.id, now)
                        }
                        Err(_) => {
                            self.shared.observer_errors.fetch_add(1, Ordering::Relaxed);
                            engine.fail_lookup(req.id, now)
                        }
                    };
                }
            }
        }
        self.inbox = inbox;
    }

    fn count_walks(&self, walks: u32) {
        self.shared
            .dump_walks
            .fetch_add(u64::from(walks), Ordering::Relaxed);
    }

    fn events_sysctl(&mut self, value: u8, now: UnixMillis) {
        let off = value == 0;
        if off == self.events_off {
            return;
        }
        self.events_off = off;
        if off {
            tracing::warn!(
                "net.netfilter.nf_conntrack_events=0 in the observed namespace: new connections send no events, so no instance goes into Standby until it is 1 or 2 again"
            );
        } else {
            tracing::info!(
                nf_conntrack_events = value,
                "conntrack events are on again; resyncing before any standby"
            );
            // Connections opened while events were off sent none.
            self.shared.engine.lock().events_lost(ResyncScope::All, now);
        }
        // At once, not after the batch: the entries that follow (a confirmation, say)
        // must not let a standby out first.
        self.apply_health(now);
    }

    fn health(&self) -> ObserverHealth {
        if let Some(why) = &self.events_down {
            ObserverHealth::Failed(format!("conntrack events: {why}"))
        } else if let Some(why) = &self.resync_error {
            ObserverHealth::Failed(format!("conntrack dump: {why}"))
        } else if self.events_off {
            ObserverHealth::EventsOff
        } else {
            ObserverHealth::Healthy
        }
    }

    /// Tells the engine the observer's health, if it changed.
    fn apply_health(&mut self, now: UnixMillis) {
        let health = self.health();
        if health != self.reported {
            self.shared
                .engine
                .lock()
                .set_observer_health(health.clone(), now);
            self.reported = health;
        }
    }

    /// After any change: fires due deadlines and queues the decisions, puts a new
    /// address set into the kernel filter, runs the periodic check when due, collects
    /// the engine's requests, and begins the next resync if one is due.
    fn after(&mut self) {
        let now = self.shared.clock.now();
        self.apply_health(now);
        let periodic = Instant::now() >= self.next_reconcile;
        if periodic {
            self.next_reconcile = Instant::now() + self.resync_interval;
            // Checked with the flows: events switched off since the last dump would
            // otherwise go unnoticed until the next one.
            self.send_worker(WorkerRequest::Sysctl);
        }
        let (generation, complete) = {
            let mut engine = self.shared.engine.lock();
            if self.shared.settle(&mut engine, now, true) && self.announce_at.is_none() {
                self.announce_at = Some(Instant::now() + PERSIST_ANNOUNCE);
            }
            if periodic {
                let flows = engine.check_tracked_flows(now);
                tracing::debug!(flows, "periodic check of the tracked flows");
            }
            engine.drain_requests(&mut self.requests);
            self.next_deadline = engine.next_deadline();
            // The changes only: the set itself is kept here, off the lock.
            let complete = engine.drain_address_changes(&mut self.addresses.changes);
            if !complete {
                self.addresses.all.clear();
                engine.addresses_unsorted(&mut self.addresses.all);
            }
            (engine.addresses_generation(), complete)
        };
        self.addresses.apply(complete);
        let at = Instant::now();
        if self.announce_at.is_some_and(|t| t <= at) {
            self.announce_at = None;
            self.shared.decisions.announce();
        }
        if self.seen_generation != Some(generation) {
            self.seen_generation = Some(generation);
            // Flows of a new address may predate the filter, and a dump that began
            // before the filter was in place could miss one created in between: this
            // resync begins after it (`begin_resync` checks).
            self.resyncs.add(ResyncScope::All, at);
        }
        if self.address_generation != Some(generation) && self.filter_due(at) <= at {
            self.address_generation = Some(generation);
            self.filter_set_at = Some(at);
            self.addresses.refresh();
            let addresses = mem::take(&mut self.addresses.sorted);
            self.set_address_filter(&addresses);
            self.addresses.sorted = addresses;
        }
        // Taken and put back so the loop keeps one allocation for them.
        let mut requests = mem::take(&mut self.requests);
        for req in requests.drain(..) {
            let scope = match req {
                ObserverRequest::Resync(scope) => scope,
                ObserverRequest::Confirm(key) => ResyncScope::Instances(vec![key]),
                ObserverRequest::Lookup(flows) => {
                    self.begin_lookup(flows, now);
                    continue;
                }
            };
            self.resyncs.add(scope, at);
        }
        self.requests = requests;
        if periodic {
            self.shared.periodic_checks.fetch_add(1, Ordering::Relaxed);
        }
        self.begin_resync(at);
    }

    /// Makes the kernel filter pass the events of `addresses` (and of nothing else,
    /// when it can).
    fn set_address_filter(&mut self, addresses: &[IpAddr]) {
        let Some(sock) = self.events.as_mut() else {
            // Put on the new socket when it is reopened.
            return;
        };
        let result = (|| {
            // With no address registered there is no filter at all rather than one that
            // drops everything: after such a filter was replaced, later events of flows
            // it had dropped were seen to go missing.
            if addresses.is_empty() {
                if sock.address_filter().is_some() {
                    sock.clear_address_filter()?;
                }
                return Ok(());
            }
            sock.set_address_filter(addresses)?;
            if let Some(form) = sock.address_filter_form().filter(|f| f.is_prefixes()) {
                tracing::info!(addresses = addresses.len(), %form, "kernel event filter compares covering prefixes");
            }
            Ok(())
        })();
        if let Err(e) = result {
            self.events_failed(e);
        }
    }

    /// Begins a lookup in the engine (before any GET goes out, so that an event the
    /// engine applies meanwhile outranks the answer) and hands it to the worker.
    fn begin_lookup(&mut self, flows: Vec<Flow>, now: UnixMillis) {
        let id = self.shared.engine.lock().begin_lookup(&flows, now);
        self.send_worker(WorkerRequest::Lookup(LookupRequest { id, flows }));
    }

    fn send_worker(&self, request: WorkerRequest) {
        if self.to_worker.send(request).is_err() {
            // Only if the worker panicked: what was asked of it never ends (a resync that
            // never ends keeps every instance it covers awake, saying it waits for it).
            tracing::error!("auto-standby dump worker is gone");
        }
    }

    /// Begins the next resync and hands its dump to the worker, if one is due.
    fn begin_resync(&mut self, at: Instant) {
        let Some(scope) = self.resyncs.take(at) else {
            return;
        };
        let now = self.shared.clock.now();
        let begun = {
            let mut engine = self.shared.engine.lock();
            if scope == ResyncScope::All
                && self.address_generation != Some(engine.addresses_generation())
            {
                // The set changed since the filter was set: the next round sets it and
                // resyncs everything after that.
                None
            } else {
                let addresses = match &scope {
                    // Every address: the loop's copy, equal to the engine's set now.
                    ResyncScope::All => None,
                    ResyncScope::Instances(_) => Some(engine.scope_addresses(&scope)),
                };
                Some((engine.begin_resync(scope.clone(), now), addresses))
            }
        };
        let Some((id, addresses)) = begun else {
            self.resyncs.add(scope, at);
            return;
        };
        let addresses = addresses.unwrap_or_else(|| {
            self.addresses.refresh();
            self.addresses.sorted.clone()
        });
        self.resyncs.in_flight = Some((id, scope));
        self.dump_began = Instant::now();
        self.send_worker(WorkerRequest::Dump(DumpRequest { id, addresses }));
    }
}
