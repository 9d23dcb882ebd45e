//! Kernel mode: the engine thread and the conntrack observer threads.
//!
//! Three threads per controller:
//! - the **event thread** owns the [`EventSocket`]: it reads batches of flow events and
//!   hands each batch to the engine thread over a bounded crossbeam channel, reports
//!   loss, keeps the kernel address filter equal to the registered address set (and
//!   asks for a resync once a new set is in place), and reopens the socket with backoff
//!   after a failure;
//! - the **query thread** owns the [`QuerySocket`]: it runs the resyncs (address-filtered
//!   dumps) the engine asks for, including the confirmation before each standby and the
//!   periodic reconcile, streams what it reads to the engine thread in chunks, and
//!   reopens its socket with backoff after a failure; it also runs the exact-tuple
//!   lookups that check UDP flows whose expiry passed (`run_lookups`), which walk no
//!   table;
//! - the **engine thread** applies event batches and resync chunks (so a large dump is
//!   applied while the kernel is still producing it), owns the deadlines (it sleeps until
//!   the engine's next one), forwards the engine's requests, tracks observer health
//!   (failed until a resync has succeeded after any failure), and schedules the
//!   reconcile.
//!
//! The engine itself sits behind the shared mutex; each thread holds it only for engine
//! calls, never across a system call.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, bounded, unbounded};

use super::{ControllerConfig, ControllerError, EventsSysctlMode, Shared};
use crate::conntrack::{
    ConntrackError, EventSocket, EventsSysctl, LookupResult, ObserverConfig, QuerySocket, Wakeup,
};
use crate::engine::{
    LookupAnswer, LookupId, ObserverHealth, ObserverRequest, ResyncId, ResyncScope,
};
use crate::flow::{Flow, FlowEvent};

/// How long the event thread blocks in poll(2) when nothing wakes it.
const EVENT_POLL: Duration = Duration::from_millis(50);
/// A resync of everything mostly answers a change of the address set, and those come in
/// bursts (a host registering its instances one by one at start-up): the query thread
/// starts the dump once no request has come for this long...
const BURST_QUIET: Duration = Duration::from_millis(5);
/// ...or once the burst has lasted this long.
const BURST_MAX: Duration = Duration::from_millis(50);
/// First delay before reopening a failed socket; doubled per failure.
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest delay between reopen attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Event batches and resync chunks queued for the engine thread before senders wait.
const BATCH_QUEUE: usize = 256;
/// Dumped flows per chunk sent to the engine thread: small enough that the engine lock
/// is held well under a millisecond per chunk.
const RESYNC_CHUNK: usize = 1024;

/// What the observer threads tell the engine thread.
#[derive(Debug)]
enum EngineMsg {
    /// Engine state changed outside the engine thread: recompute deadlines, forward
    /// requests, check the address set.
    Rearm,
    /// A batch of flow events, in kernel order.
    Events(Vec<FlowEvent>),
    /// The event socket lost events.
    Lost,
    /// The event socket failed (and is being reopened).
    EventsDown(String),
    /// The event socket works again; a full resync must succeed before it counts healthy.
    EventsUp,
    /// `net.netfilter.nf_conntrack_events` as read before a dump.
    EventsSysctl(u8),
    /// The query socket could not be opened.
    ResyncFailed(String),
    /// Entries of the dump for a resync, in kernel order.
    ResyncFlows(ResyncId, Vec<Flow>),
    /// The dump for a resync ended (with its error, if it failed). The engine thread
    /// answers on the resync-applied channel once it has finished or abandoned it.
    ResyncEnd(ResyncId, Result<(), String>),
    /// A lookup ran: the flows asked about, the answers by index into them, and the
    /// socket's error if it failed partway.
    LookupDone(
        LookupId,
        Vec<Flow>,
        Vec<(usize, LookupReply)>,
        Result<(), String>,
    ),
    /// Stop.
    Shutdown,
}

/// What the engine thread asks of the query thread.
#[derive(Debug)]
enum QueryCmd {
    Resync(ResyncScope),
    /// Look these flows up by exact tuple (see `run_lookups`).
    Lookup(Vec<Flow>),
    Shutdown,
}

/// One flow's lookup answer, owned, for the trip to the engine thread.
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

/// What the engine thread asks of the event thread.
#[derive(Debug)]
enum EventCmd {
    /// Filter on these addresses, then ask for a resync: flows of an address that is new
    /// may predate the filter, and a dump that began before the filter was in place
    /// could miss a flow created in between.
    Addresses(Vec<IpAddr>),
    /// Test-only: fail the socket as a failed receive does, and make every reopen
    /// attempt fail until the given instant.
    Fail { reopen_after: Instant },
}

/// What a controller thread runs.
type ThreadBody = Box<dyn FnOnce() + Send>;

/// The event thread's command channel; sending also interrupts its poll(2).
#[derive(Clone, Debug)]
struct ToEvents {
    tx: Sender<EventCmd>,
    wakeup: Arc<Wakeup>,
}

impl ToEvents {
    fn send(&self, cmd: EventCmd) {
        let _ = self.tx.send(cmd);
        self.wakeup.wake();
    }
}

/// The threads of a kernel-mode controller.
#[derive(Debug)]
pub(crate) struct KernelRuntime {
    to_engine: Sender<EngineMsg>,
    to_query: Sender<QueryCmd>,
    to_events: ToEvents,
    stop_events: Sender<()>,
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

        let (to_engine, engine_rx) = bounded::<EngineMsg>(BATCH_QUEUE);
        let (applied_tx, applied_rx) = bounded::<()>(1);
        let (to_query, query_rx) = unbounded::<QueryCmd>();
        let (events_tx, events_rx) = unbounded::<EventCmd>();
        let (stop_events, stop_rx) = bounded::<()>(1);
        let resync_interval = Duration::from_millis(config.resync_interval_ms);

        let mut runtime = Self {
            to_engine,
            to_query,
            to_events: ToEvents {
                tx: events_tx,
                wakeup,
            },
            stop_events,
            threads: Vec::new(),
        };
        let engine = {
            let shared = shared.clone();
            let to_query = runtime.to_query.clone();
            let to_events = runtime.to_events.clone();
            move || {
                EngineThread::new(shared, to_query, to_events, applied_tx, resync_interval)
                    .run(engine_rx)
            }
        };
        let event = {
            let to_engine = runtime.to_engine.clone();
            let to_query = runtime.to_query.clone();
            let wakeup = runtime.to_events.wakeup.clone();
            let ocfg = ocfg.clone();
            let channels = EventThreadChannels {
                shared: shared.clone(),
                to_engine,
                to_query,
                cmds: events_rx,
                stop: stop_rx,
                wakeup,
            };
            move || event_thread(events, ocfg, channels)
        };
        let query = {
            let shared = shared.clone();
            let to_engine = runtime.to_engine.clone();
            move || query_thread(query, ocfg, shared, to_engine, applied_rx, query_rx)
        };
        let threads: [(&str, ThreadBody); 3] = [
            ("as-engine", Box::new(engine)),
            ("as-events", Box::new(event)),
            ("as-query", Box::new(query)),
        ];
        for (name, f) in threads {
            let dispatch = shared.dispatch.clone();
            match std::thread::Builder::new()
                .name(name.into())
                .spawn(move || tracing::dispatcher::with_default(&dispatch, f))
            {
                Ok(handle) => runtime.threads.push(handle),
                Err(e) => {
                    // The threads already running would otherwise outlive the failed
                    // start. The closures not yet spawned are dropped with their
                    // channel ends, so `stop` never waits on a thread that is not there.
                    runtime.stop();
                    return Err(ControllerError::Io(format!("spawn {name}: {e}")));
                }
            }
        }
        // The first resync of everything registered so far (nothing, at start); it also
        // makes the observer count healthy.
        let _ = runtime.to_query.send(QueryCmd::Resync(ResyncScope::All));
        Ok(runtime)
    }

    /// Test-only: makes the event thread lose its socket through the same path as a
    /// failed receive, and fail every reopen attempt for `down_for`.
    pub(crate) fn fail_event_socket(&self, down_for: Duration) {
        self.to_events.send(EventCmd::Fail {
            reopen_after: Instant::now() + down_for,
        });
    }

    /// Tells the engine thread that deadlines or the address set may have changed.
    pub(crate) fn rearm(&self) {
        // A full queue already holds a message that will make the thread look again.
        let _ = self.to_engine.try_send(EngineMsg::Rearm);
    }

    /// Stops and joins every thread.
    pub(crate) fn stop(&mut self) {
        let _ = self.stop_events.try_send(());
        self.to_events.wakeup.wake();
        let _ = self.to_query.send(QueryCmd::Shutdown);
        // Blocking is fine: the engine thread keeps draining its queue until it reads this.
        let _ = self.to_engine.send(EngineMsg::Shutdown);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Sleeps up to `d`, returning early (true) when `stop` fires or is disconnected.
fn sleep_or_stop<T>(stop: &Receiver<T>, d: Duration) -> bool {
    !matches!(stop.recv_timeout(d), Err(RecvTimeoutError::Timeout))
}

/// The event thread's channels (and the shared counters it keeps).
struct EventThreadChannels {
    shared: Arc<Shared>,
    to_engine: Sender<EngineMsg>,
    to_query: Sender<QueryCmd>,
    cmds: Receiver<EventCmd>,
    stop: Receiver<()>,
    wakeup: Arc<Wakeup>,
}

fn event_thread(socket: EventSocket, cfg: ObserverConfig, ch: EventThreadChannels) {
    let EventThreadChannels {
        shared,
        to_engine,
        to_query,
        cmds,
        stop,
        wakeup,
    } = ch;
    let mut socket = Some(socket);
    let mut addresses: Option<Vec<IpAddr>> = None;
    let mut filter_dirty = false;
    // A new address set arrived: resync once it is the filter. A reopened socket needs
    // none from here: the engine thread asks for one when it hears `EventsUp`.
    let mut resync_after_filter = false;
    let mut backoff = BACKOFF_INITIAL;
    let mut batch = Vec::new();
    // Test-only failure injection (see `EventCmd::Fail`).
    let mut fail_now = false;
    let mut reopen_after: Option<Instant> = None;
    loop {
        match stop.try_recv() {
            Ok(()) | Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) => {}
        }
        while let Ok(cmd) = cmds.try_recv() {
            match cmd {
                EventCmd::Addresses(a) => {
                    addresses = Some(a);
                    filter_dirty = true;
                    resync_after_filter = true;
                }
                EventCmd::Fail { reopen_after: at } => {
                    fail_now = true;
                    reopen_after = Some(at);
                }
            }
        }
        let Some(sock) = socket.as_mut() else {
            if sleep_or_stop(&stop, backoff) {
                return;
            }
            let opened = if reopen_after.is_some_and(|at| Instant::now() < at) {
                Err(ConntrackError::io(
                    "open event socket",
                    std::io::Error::other("failure injected by a test"),
                ))
            } else {
                EventSocket::open(&cfg)
            };
            match opened {
                Ok(s) => {
                    tracing::info!("auto-standby conntrack subscription restored");
                    socket = Some(s);
                    filter_dirty = true;
                    resync_after_filter = false;
                    backoff = BACKOFF_INITIAL;
                    let _ = to_engine.send(EngineMsg::EventsUp);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "auto-standby conntrack reconnect failed");
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
            continue;
        };
        let result = (|| -> Result<(), ConntrackError> {
            if std::mem::take(&mut fail_now) {
                return Err(ConntrackError::io(
                    "receive conntrack events",
                    std::io::Error::other("failure injected by a test"),
                ));
            }
            if filter_dirty {
                // With no address registered there is no filter at all rather than one
                // that drops everything: after such a filter was replaced, later events
                // of flows it had dropped were seen to go missing.
                if addresses.as_ref().is_some_and(|a| a.is_empty())
                    && sock.address_filter().is_some()
                {
                    sock.clear_address_filter()?;
                }
                if let Some(a) = addresses.as_ref().filter(|a| !a.is_empty()) {
                    match sock.set_address_filter(a) {
                        // Too many addresses for one classic BPF program: take every
                        // event and let the engine's address index sort them.
                        Err(ConntrackError::Invalid(why)) => {
                            tracing::info!(addresses = a.len(), %why, "kernel event filter not used");
                            if sock.address_filter().is_some() {
                                sock.clear_address_filter()?;
                            }
                        }
                        other => other?,
                    }
                }
                filter_dirty = false;
                if std::mem::take(&mut resync_after_filter) {
                    let _ = to_query.send(QueryCmd::Resync(ResyncScope::All));
                }
            }
            if !sock.wait_readable_or_woken(EVENT_POLL, &wakeup)? {
                return Ok(());
            }
            shared.event_wakeups.fetch_add(1, Ordering::Relaxed);
            loop {
                let b = sock.recv_batch(&mut |ev| batch.push(*ev))?;
                shared.events_read.fetch_add(b.events, Ordering::Relaxed);
                if !batch.is_empty() {
                    let _ = to_engine.send(EngineMsg::Events(std::mem::take(&mut batch)));
                }
                if b.lost() {
                    let _ = to_engine.send(EngineMsg::Lost);
                }
                if !b.more {
                    return Ok(());
                }
            }
        })();
        if let Err(e) = result {
            tracing::error!(error = %e, "auto-standby conntrack subscription failed");
            socket = None;
            batch.clear();
            let _ = to_engine.send(EngineMsg::EventsDown(e.to_string()));
        }
    }
}

fn merge_scope(a: Option<ResyncScope>, b: ResyncScope) -> ResyncScope {
    match (a, b) {
        (None, b) => b,
        (Some(ResyncScope::All), _) | (_, ResyncScope::All) => ResyncScope::All,
        (Some(ResyncScope::Instances(mut x)), ResyncScope::Instances(y)) => {
            x.extend(y);
            x.sort_unstable();
            x.dedup();
            ResyncScope::Instances(x)
        }
    }
}

fn query_thread(
    socket: QuerySocket,
    cfg: ObserverConfig,
    shared: Arc<Shared>,
    to_engine: Sender<EngineMsg>,
    applied: Receiver<()>,
    cmds: Receiver<QueryCmd>,
) {
    let mut socket = Some(socket);
    let mut backoff = BACKOFF_INITIAL;
    let mut pending: Option<ResyncScope> = None;
    let mut lookups: Vec<Flow> = Vec::new();
    loop {
        // Block for the first command, then coalesce what is queued. A resync of
        // everything also waits for the rest of its burst, so that one dump answers a
        // host that registers many instances in a row; a confirmation before a standby
        // does not wait.
        if pending.is_none() && lookups.is_empty() {
            match cmds.recv() {
                Ok(QueryCmd::Resync(s)) => pending = Some(s),
                Ok(QueryCmd::Lookup(f)) => lookups.extend(f),
                Ok(QueryCmd::Shutdown) | Err(_) => return,
            }
        }
        let burst_end = Instant::now() + BURST_MAX;
        loop {
            let wait = if matches!(pending, Some(ResyncScope::All)) {
                BURST_QUIET.min(burst_end.saturating_duration_since(Instant::now()))
            } else {
                Duration::ZERO
            };
            match cmds.recv_timeout(wait) {
                Ok(QueryCmd::Resync(s)) => pending = Some(merge_scope(pending.take(), s)),
                Ok(QueryCmd::Lookup(f)) => lookups.extend(f),
                Ok(QueryCmd::Shutdown) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        if !lookups.is_empty() {
            run_lookups(
                &mut socket,
                &cfg,
                &shared,
                &to_engine,
                std::mem::take(&mut lookups),
            );
        }
        let Some(scope) = pending.take() else {
            continue;
        };
        if socket.is_none() {
            match QuerySocket::open(&cfg) {
                Ok(s) => socket = Some(s),
                Err(e) => {
                    let _ = to_engine.send(EngineMsg::ResyncFailed(e.to_string()));
                    pending = Some(scope);
                    if sleep_or_stop_query(&cmds, backoff, &mut pending, &mut lookups) {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
        }
        // Events off means a connection opened from now on is never seen, so every dump
        // (the first, each reconcile, each confirmation before a standby) reads it
        // first; the engine thread applies the value before the dump's entries.
        match crate::conntrack::sysctl::events_sysctl(cfg.netns.as_deref()) {
            Ok(v) => {
                let _ = to_engine.send(EngineMsg::EventsSysctl(v));
            }
            Err(e) => tracing::debug!(error = %e, "could not read nf_conntrack_events"),
        }
        let sock = socket.as_mut().expect("opened above");
        let (id, addrs) = {
            let mut engine = shared.engine.lock();
            let now = shared.clock.now();
            (
                engine.begin_resync(scope.clone(), now),
                engine.scope_addresses(&scope),
            )
        };
        let mut chunk = Vec::with_capacity(RESYNC_CHUNK);
        let dumped = sock.dump_addresses(&addrs, &mut |f| {
            chunk.push(*f);
            if chunk.len() == RESYNC_CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(RESYNC_CHUNK));
                let _ = to_engine.send(EngineMsg::ResyncFlows(id, full));
            }
        });
        if !chunk.is_empty() {
            let _ = to_engine.send(EngineMsg::ResyncFlows(id, chunk));
        }
        let ok = dumped.is_ok();
        if let Ok(stats) = &dumped {
            shared
                .dump_walks
                .fetch_add(u64::from(stats.walks), Ordering::Relaxed);
        }
        match &dumped {
            Ok(stats) => tracing::debug!(
                flows = stats.flows,
                addresses = addrs.len(),
                walks = stats.walks,
                "resync dump finished"
            ),
            Err(e) => tracing::warn!(error = %e, "auto-standby resync failed"),
        }
        let end = dumped.map(|_| ()).map_err(|e| e.to_string());
        let _ = to_engine.send(EngineMsg::ResyncEnd(id, end));
        // The next resync begins only once this one is applied, so it cannot supersede
        // it halfway. A closed channel means the engine thread has stopped.
        if applied.recv().is_err() {
            return;
        }
        if ok {
            backoff = BACKOFF_INITIAL;
        } else {
            socket = None;
            pending = Some(merge_scope(pending.take(), scope));
            if sleep_or_stop_query(&cmds, backoff, &mut pending, &mut lookups) {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// Looks `flows` up by exact tuple on the query socket (a hash lookup each, no table
/// walk) and hands the answers to the engine thread. A socket that cannot be opened or
/// fails is reported as a failed lookup, which the engine answers with resyncs of the
/// instances concerned (and the resync path reopens the socket with backoff).
fn run_lookups(
    socket: &mut Option<QuerySocket>,
    cfg: &ObserverConfig,
    shared: &Shared,
    to_engine: &Sender<EngineMsg>,
    flows: Vec<Flow>,
) {
    let id = shared
        .engine
        .lock()
        .begin_lookup(&flows, shared.clock.now());
    if socket.is_none() {
        *socket = QuerySocket::open(cfg).ok();
    }
    let mut answers = Vec::with_capacity(flows.len());
    let result = match socket.as_mut() {
        Some(sock) => sock
            .lookup_flows(&flows, &mut |i, r| answers.push((i, LookupReply::of(r))))
            .map(|stats| {
                shared
                    .flow_lookups
                    .fetch_add(stats.asked, Ordering::Relaxed);
                tracing::debug!(
                    flows = stats.asked,
                    gone = stats.gone,
                    failed = stats.failed,
                    syscalls = stats.syscalls(),
                    "expiry lookups finished"
                );
            })
            .map_err(|e| e.to_string()),
        None => Err("the query socket could not be opened".to_owned()),
    };
    if let Err(e) = &result {
        tracing::warn!(error = %e, "auto-standby expiry lookups failed; resyncing instead");
        *socket = None;
    }
    let _ = to_engine.send(EngineMsg::LookupDone(id, flows, answers, result));
}

/// Waits out a backoff while still collecting resync and lookup requests; true on
/// shutdown.
fn sleep_or_stop_query(
    cmds: &Receiver<QueryCmd>,
    d: Duration,
    pending: &mut Option<ResyncScope>,
    lookups: &mut Vec<Flow>,
) -> bool {
    let until = Instant::now() + d;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match cmds.recv_timeout(left) {
            Ok(QueryCmd::Resync(s)) => *pending = Some(merge_scope(pending.take(), s)),
            Ok(QueryCmd::Lookup(f)) => lookups.extend(f),
            Ok(QueryCmd::Shutdown) | Err(RecvTimeoutError::Disconnected) => return true,
            Err(RecvTimeoutError::Timeout) => return false,
        }
    }
}

/// The engine thread's state.
struct EngineThread {
    shared: Arc<Shared>,
    to_query: Sender<QueryCmd>,
    to_events: ToEvents,
    resync_applied: Sender<()>,
    resync_interval: Duration,
    next_reconcile: Instant,
    address_generation: Option<u64>,
    events_down: Option<String>,
    resync_error: Option<String>,
    /// `nf_conntrack_events` was 0 at the last read.
    events_off: bool,
    reported: ObserverHealth,
    requests: Vec<ObserverRequest>,
}

impl EngineThread {
    fn new(
        shared: Arc<Shared>,
        to_query: Sender<QueryCmd>,
        to_events: ToEvents,
        resync_applied: Sender<()>,
        resync_interval: Duration,
    ) -> Self {
        // Nothing is known of the flows that began before the event socket listened:
        // every instance is resync-pending (kept awake, and saying so) until the first
        // resync has run. That is not an observer failure.
        let now = shared.clock.now();
        shared.engine.lock().events_lost(ResyncScope::All, now);
        Self {
            shared,
            to_query,
            to_events,
            resync_applied,
            resync_interval,
            next_reconcile: Instant::now() + resync_interval,
            address_generation: None,
            events_down: None,
            resync_error: None,
            events_off: false,
            reported: ObserverHealth::Healthy,
            requests: Vec::new(),
        }
    }

    fn run(mut self, rx: Receiver<EngineMsg>) {
        self.after();
        loop {
            let timeout = self.time_to_next_wake();
            let msg = match rx.recv_timeout(timeout) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            if matches!(msg, Some(EngineMsg::Shutdown)) {
                return;
            }
            self.handle(msg);
            // Apply whatever else is queued before looking at deadlines again.
            while let Ok(m) = rx.try_recv() {
                if matches!(m, EngineMsg::Shutdown) {
                    return;
                }
                self.handle(Some(m));
            }
            self.after();
        }
    }

    /// Until the engine's next deadline or the next reconcile, whichever is first.
    fn time_to_next_wake(&self) -> Duration {
        let reconcile = self
            .next_reconcile
            .saturating_duration_since(Instant::now());
        let deadline = self.shared.engine.lock().next_deadline();
        // In the engine's (monotonic) time: a step of the wall clock moves no deadline.
        let now = self.shared.clock.now();
        let until_deadline = deadline.map_or(Duration::MAX, |d| {
            Duration::from_millis(d.saturating_sub(now))
        });
        reconcile.min(until_deadline)
    }

    fn handle(&mut self, msg: Option<EngineMsg>) {
        let Some(msg) = msg else { return };
        let now = self.shared.clock.now();
        match msg {
            EngineMsg::Rearm | EngineMsg::Shutdown => {}
            EngineMsg::Events(batch) => {
                let mut engine = self.shared.engine.lock();
                for ev in &batch {
                    engine.on_flow_event(ev, now);
                }
            }
            EngineMsg::Lost => {
                let mut engine = self.shared.engine.lock();
                self.shared.events_lost.fetch_add(1, Ordering::Relaxed);
                engine.events_lost(ResyncScope::All, now);
            }
            EngineMsg::EventsDown(why) => {
                self.shared.observer_errors.fetch_add(1, Ordering::Relaxed);
                self.events_down = Some(why);
            }
            EngineMsg::EventsUp => {
                self.events_down = None;
                // Whatever happened while the socket was down is unknown.
                self.shared.engine.lock().events_lost(ResyncScope::All, now);
                let _ = self.to_query.send(QueryCmd::Resync(ResyncScope::All));
                // Put the address filter back on the new socket.
                self.address_generation = None;
            }
            EngineMsg::EventsSysctl(value) => {
                let off = value == 0;
                if off != self.events_off {
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
                        let _ = self.to_query.send(QueryCmd::Resync(ResyncScope::All));
                    }
                    // At once, not at the end of the batch: the dump that follows in
                    // this batch (a confirmation, say) must not let a standby out first.
                    self.apply_health(now);
                }
            }
            EngineMsg::ResyncFailed(why) => {
                self.shared.observer_errors.fetch_add(1, Ordering::Relaxed);
                self.resync_error = Some(why);
            }
            EngineMsg::ResyncFlows(id, flows) => {
                let mut engine = self.shared.engine.lock();
                // The engine skips entries older than an event it applied meanwhile. An
                // error means a newer resync replaced this one: the rest is moot.
                for f in &flows {
                    if engine.resync_flow(id, f).is_err() {
                        break;
                    }
                }
            }
            EngineMsg::ResyncEnd(id, Ok(())) => {
                if let Err(e) = self.shared.engine.lock().finish_resync(id, now) {
                    // Not an observer failure.
                    tracing::debug!(error = %e, "resync superseded");
                }
                self.resync_error = None;
                let _ = self.resync_applied.send(());
            }
            EngineMsg::LookupDone(id, flows, answers, result) => {
                let mut engine = self.shared.engine.lock();
                for (i, a) in &answers {
                    let _ = engine.lookup_answer(id, &flows[*i], a.answer());
                }
                let _ = match result {
                    Ok(()) => engine.finish_lookup(id, now),
                    Err(_) => {
                        self.shared.observer_errors.fetch_add(1, Ordering::Relaxed);
                        engine.fail_lookup(id, now)
                    }
                };
            }
            EngineMsg::ResyncEnd(id, Err(why)) => {
                let _ = self.shared.engine.lock().fail_resync(id, now);
                self.shared.observer_errors.fetch_add(1, Ordering::Relaxed);
                self.resync_error = Some(why);
                let _ = self.resync_applied.send(());
            }
        }
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
    fn apply_health(&mut self, now: crate::engine::UnixMillis) {
        let health = self.health();
        if health != self.reported {
            self.shared
                .engine
                .lock()
                .set_observer_health(health.clone(), now);
            self.reported = health;
        }
    }

    fn after(&mut self) {
        let now = self.shared.clock.now();
        self.apply_health(now);
        let mut engine = self.shared.engine.lock();
        self.shared.settle(&mut engine, now);
        engine.drain_requests(&mut self.requests);
        let generation = engine.addresses_generation();
        let addresses = (self.address_generation != Some(generation)).then(|| engine.addresses());
        drop(engine);

        if let Some(addresses) = addresses {
            self.address_generation = Some(generation);
            // The event thread asks for the resync once the filter is in place.
            self.to_events.send(EventCmd::Addresses(addresses));
        }
        for req in self.requests.drain(..) {
            let cmd = match req {
                ObserverRequest::Resync(scope) => QueryCmd::Resync(scope),
                ObserverRequest::Confirm(key) => {
                    QueryCmd::Resync(ResyncScope::Instances(vec![key]))
                }
                ObserverRequest::Lookup(flows) => QueryCmd::Lookup(flows),
            };
            let _ = self.to_query.send(cmd);
        }
        if Instant::now() >= self.next_reconcile {
            self.next_reconcile = Instant::now() + self.resync_interval;
            let _ = self.to_query.send(QueryCmd::Resync(ResyncScope::All));
        }
    }
}
