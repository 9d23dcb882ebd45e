//! Kernel mode: the engine thread and the conntrack observer threads.
//!
//! Three threads per controller:
//! - the **event thread** owns the [`EventSocket`]: it reads batches of flow events and
//!   hands each batch to the engine thread over a bounded crossbeam channel, reports
//!   loss, keeps the kernel address filter equal to the registered address set, and
//!   reopens the socket with backoff after a failure;
//! - the **query thread** owns the [`QuerySocket`]: it runs the resyncs (address-filtered
//!   dumps) the engine asks for, including the confirmation before each standby and the
//!   periodic reconcile, and reopens its socket with backoff after a failure;
//! - the **engine thread** applies event batches, owns the deadlines (it sleeps until the
//!   engine's next one), forwards the engine's requests, tracks observer health (failed
//!   until a resync has succeeded after any failure), and schedules the reconcile.
//!
//! The engine itself sits behind the shared mutex; each thread holds it only for engine
//! calls, never across a system call.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, bounded, unbounded};

use super::{ControllerConfig, ControllerError, EventsSysctlMode, Shared};
use crate::conntrack::{ConntrackError, EventSocket, EventsSysctl, ObserverConfig, QuerySocket};
use crate::engine::{ObserverHealth, ObserverRequest, ResyncScope};
use crate::flow::{Flow, FlowEvent};

/// How long the event thread blocks in poll(2) before looking at its commands.
const EVENT_POLL: Duration = Duration::from_millis(50);
/// First delay before reopening a failed socket; doubled per failure.
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest delay between reopen attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Event batches queued for the engine thread before the event thread waits.
const BATCH_QUEUE: usize = 256;

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
    /// A resync's dump failed.
    ResyncFailed(String),
    /// A resync succeeded.
    ResyncDone,
    /// Stop.
    Shutdown,
}

/// What the engine thread asks of the query thread.
#[derive(Debug)]
enum QueryCmd {
    Resync(ResyncScope),
    Shutdown,
}

/// What the engine thread asks of the event thread.
#[derive(Debug)]
enum EventCmd {
    Addresses(Vec<IpAddr>),
    /// Test-only: fail the socket as a failed receive does, and make every reopen
    /// attempt fail until the given instant.
    Fail {
        reopen_after: Instant,
    },
}

/// What a controller thread runs.
type ThreadBody = Box<dyn FnOnce() + Send>;

/// The threads of a kernel-mode controller.
#[derive(Debug)]
pub(crate) struct KernelRuntime {
    to_engine: Sender<EngineMsg>,
    to_query: Sender<QueryCmd>,
    to_events: Sender<EventCmd>,
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
        // Subscribe before the first dump: nothing created in between is missed.
        let events = EventSocket::open(&ocfg).map_err(where_)?;
        let query = QuerySocket::open(&ocfg).map_err(where_)?;
        if let Some(path) = &ocfg.netns {
            tracing::info!(netns = %path.display(), "observing conntrack in a network namespace");
        }

        let (to_engine, engine_rx) = bounded::<EngineMsg>(BATCH_QUEUE);
        let (to_query, query_rx) = unbounded::<QueryCmd>();
        let (to_events, events_rx) = unbounded::<EventCmd>();
        let (stop_events, stop_rx) = bounded::<()>(1);
        let resync_interval = Duration::from_millis(config.resync_interval_ms);

        let mut runtime = Self {
            to_engine,
            to_query,
            to_events,
            stop_events,
            threads: Vec::new(),
        };
        let engine = {
            let shared = shared.clone();
            let to_query = runtime.to_query.clone();
            let to_events = runtime.to_events.clone();
            move || EngineThread::new(shared, to_query, to_events, resync_interval).run(engine_rx)
        };
        let event = {
            let to_engine = runtime.to_engine.clone();
            let ocfg = ocfg.clone();
            move || event_thread(events, ocfg, to_engine, events_rx, stop_rx)
        };
        let query = {
            let shared = shared.clone();
            let to_engine = runtime.to_engine.clone();
            move || query_thread(query, ocfg, shared, to_engine, query_rx)
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
        let _ = self.to_events.send(EventCmd::Fail {
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

fn event_thread(
    socket: EventSocket,
    cfg: ObserverConfig,
    to_engine: Sender<EngineMsg>,
    cmds: Receiver<EventCmd>,
    stop: Receiver<()>,
) {
    let mut socket = Some(socket);
    let mut addresses: Option<Vec<IpAddr>> = None;
    let mut filter_dirty = false;
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
            }
            if !sock.wait_readable(EVENT_POLL)? {
                return Ok(());
            }
            loop {
                let b = sock.recv_batch(&mut |ev| batch.push(*ev))?;
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
    cmds: Receiver<QueryCmd>,
) {
    let mut socket = Some(socket);
    let mut backoff = BACKOFF_INITIAL;
    let mut flows: Vec<Flow> = Vec::new();
    let mut pending: Option<ResyncScope> = None;
    loop {
        // Block for the first command, then coalesce whatever else is queued.
        if pending.is_none() {
            match cmds.recv() {
                Ok(QueryCmd::Resync(s)) => pending = Some(s),
                Ok(QueryCmd::Shutdown) | Err(_) => return,
            }
        }
        loop {
            match cmds.try_recv() {
                Ok(QueryCmd::Resync(s)) => pending = Some(merge_scope(pending.take(), s)),
                Ok(QueryCmd::Shutdown) | Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) => break,
            }
        }
        let scope = pending.take().expect("set above");
        if socket.is_none() {
            match QuerySocket::open(&cfg) {
                Ok(s) => socket = Some(s),
                Err(e) => {
                    let _ = to_engine.send(EngineMsg::ResyncFailed(e.to_string()));
                    pending = Some(scope);
                    if sleep_or_stop_query(&cmds, backoff, &mut pending) {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
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
        flows.clear();
        let started = Instant::now();
        let dumped = sock.dump_addresses(&addrs, &mut |f| flows.push(*f));
        let mut engine = shared.engine.lock();
        let now = shared.clock.now();
        match dumped {
            Ok(_) => {
                let mut result = Ok(());
                // The engine skips entries older than an event it applied meanwhile.
                for f in &flows {
                    if let Err(e) = engine.resync_flow(id, f) {
                        result = Err(e);
                        break;
                    }
                }
                let result = result.and_then(|()| engine.finish_resync(id, now));
                shared.settle(&mut engine, now);
                drop(engine);
                if let Err(e) = result {
                    // The engine forgot the resync (a newer one replaced it): not an
                    // observer failure.
                    tracing::debug!(error = %e, "resync superseded");
                } else {
                    tracing::debug!(
                        flows = flows.len(),
                        addresses = addrs.len(),
                        elapsed_us = started.elapsed().as_micros() as u64,
                        "resync finished"
                    );
                }
                backoff = BACKOFF_INITIAL;
                let _ = to_engine.send(EngineMsg::ResyncDone);
            }
            Err(e) => {
                let _ = engine.fail_resync(id, now);
                shared.settle(&mut engine, now);
                drop(engine);
                tracing::warn!(error = %e, "auto-standby resync failed");
                socket = None;
                let _ = to_engine.send(EngineMsg::ResyncFailed(e.to_string()));
                pending = Some(merge_scope(pending.take(), scope));
                if sleep_or_stop_query(&cmds, backoff, &mut pending) {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Waits out a backoff while still collecting resync requests; true on shutdown.
fn sleep_or_stop_query(
    cmds: &Receiver<QueryCmd>,
    d: Duration,
    pending: &mut Option<ResyncScope>,
) -> bool {
    let until = Instant::now() + d;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match cmds.recv_timeout(left) {
            Ok(QueryCmd::Resync(s)) => *pending = Some(merge_scope(pending.take(), s)),
            Ok(QueryCmd::Shutdown) | Err(RecvTimeoutError::Disconnected) => return true,
            Err(RecvTimeoutError::Timeout) => return false,
        }
    }
}

/// The engine thread's state.
struct EngineThread {
    shared: Arc<Shared>,
    to_query: Sender<QueryCmd>,
    to_events: Sender<EventCmd>,
    resync_interval: Duration,
    next_reconcile: Instant,
    address_generation: Option<u64>,
    events_down: Option<String>,
    resync_error: Option<String>,
    reported: ObserverHealth,
    requests: Vec<ObserverRequest>,
}

impl EngineThread {
    fn new(
        shared: Arc<Shared>,
        to_query: Sender<QueryCmd>,
        to_events: Sender<EventCmd>,
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
            resync_interval,
            next_reconcile: Instant::now() + resync_interval,
            address_generation: None,
            events_down: None,
            resync_error: None,
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
        let until_deadline = deadline.map_or(Duration::MAX, |d| {
            let at = UNIX_EPOCH + Duration::from_millis(d);
            at.duration_since(std::time::SystemTime::now())
                .unwrap_or(Duration::ZERO)
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
            EngineMsg::ResyncFailed(why) => {
                self.shared.observer_errors.fetch_add(1, Ordering::Relaxed);
                self.resync_error = Some(why);
            }
            EngineMsg::ResyncDone => self.resync_error = None,
        }
    }

    fn after(&mut self) {
        let now = self.shared.clock.now();
        let health = if let Some(why) = &self.events_down {
            ObserverHealth::Failed(format!("conntrack events: {why}"))
        } else if let Some(why) = &self.resync_error {
            ObserverHealth::Failed(format!("conntrack dump: {why}"))
        } else {
            ObserverHealth::Healthy
        };
        let mut engine = self.shared.engine.lock();
        if health != self.reported {
            engine.set_observer_health(health.clone(), now);
            self.reported = health;
        }
        self.shared.settle(&mut engine, now);
        engine.drain_requests(&mut self.requests);
        let generation = engine.addresses_generation();
        let addresses = (self.address_generation != Some(generation)).then(|| engine.addresses());
        drop(engine);

        if let Some(addresses) = addresses {
            self.address_generation = Some(generation);
            let _ = self.to_events.send(EventCmd::Addresses(addresses));
            // Flows of new addresses may predate the filter change: look them up.
            let _ = self.to_query.send(QueryCmd::Resync(ResyncScope::All));
        }
        for req in self.requests.drain(..) {
            let scope = match req {
                ObserverRequest::Resync(scope) => scope,
                ObserverRequest::Confirm(key) => ResyncScope::Instances(vec![key]),
            };
            let _ = self.to_query.send(QueryCmd::Resync(scope));
        }
        if Instant::now() >= self.next_reconcile {
            self.next_reconcile = Instant::now() + self.resync_interval;
            let _ = self.to_query.send(QueryCmd::Resync(ResyncScope::All));
        }
    }
}
