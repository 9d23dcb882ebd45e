//! The running system: the engine loop and its dump worker, decisions queued for the
//! host, and status snapshots readers never wait for.
//!
//! The [`Engine`] sits behind one `parking_lot` mutex that is never held across I/O:
//! host calls and the engine loop each take it for the few microseconds an engine call
//! lasts, so `status` never waits on netlink. Decisions go into a [`DecisionQueue`] that
//! the host drains with a blocking [`Controller::poll_decisions`].
//!
//! In [`Mode::Manual`] there is no thread at all: flow events and time come through the
//! API and every call runs the engine to completion before it returns, so scenarios are
//! deterministic. [`Mode::Kernel`] starts two threads for the observed network namespace:
//! the engine loop, which owns the conntrack event socket and the deadlines and does all
//! the engine's work in program order (events, dump results, decisions, the kernel
//! address filter, resyncs), and a dump worker that owns the query socket and streams
//! dumps back to it without ever touching the engine. A host call that changes the
//! engine wakes the loop.

#![forbid(unsafe_code)]

pub mod clock;
mod hold;
mod kernel;
mod lead;
pub mod logs;
pub mod queue;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tracing::{Dispatch, Level};

use crate::engine::{
    BeginStandby, Decision, Engine, EngineConfig, EngineError, EngineStats, InstanceKey,
    InstanceSpec, KeptAwakeBy, ObserverHealth, ObserverRequest, RecommendQuery, Recommendation,
    ResyncScope, Runtime, StandbyOutcome, StandbyRetry, StatusSnapshot, UnixMillis, WakeOutcome,
};
use crate::flow::{Flow, FlowEvent};
use clock::{Clock, SystemClock};
use logs::{LOG_BUFFER_CAPACITY, LogBuffer, LogCapture, LogRecord};
use queue::DecisionQueue;

/// Default receive buffer of the conntrack event socket: 16 MiB.
pub const DEFAULT_RCVBUF_BYTES: usize = 16 << 20;
/// Default number of standbys outstanding at once.
pub const DEFAULT_MAX_CONCURRENT_STANDBYS: u32 = 16;
/// Default number of restores (`Wake` decisions) outstanding at once.
pub use crate::engine::DEFAULT_MAX_CONCURRENT_RESTORES;
/// Kernel mode: how long an instance whose live TCP entry conntrack destroyed waits for
/// a packet to re-create it before a scoped resync decides (see
/// [`EngineConfig::suspect_end_grace_ms`]).
pub const SUSPECT_END_GRACE_MS: u64 = 1_500;
/// Default period of the safety check of every tracked flow (exact-tuple lookups, no
/// table walk): 60 s.
pub const DEFAULT_RESYNC_INTERVAL_MS: u64 = 60_000;

/// Where flow events and time come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Real conntrack events over netlink and the wall clock.
    Kernel,
    /// Flow events and time supplied through the API; the clock starts at `start_ms`.
    Manual {
        /// Initial value of the manual clock (milliseconds since the Unix epoch).
        start_ms: UnixMillis,
    },
}

/// What to do about `net.netfilter.nf_conntrack_events` in the observed namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EventsSysctlMode {
    /// Read and report it; when it is 2, flows created before the library listened send
    /// no events: the start-up dump finds them and the periodic check retires them.
    #[default]
    ReportOnly,
    /// Set it to 1 so every new flow sends events.
    Enable,
}

/// Controller configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerConfig {
    /// Kernel or manual.
    pub mode: Mode,
    /// Network namespace to observe (a `/run/netns/...` path); `None` is the caller's.
    pub netns: Option<PathBuf>,
    /// Receive buffer of the event socket.
    pub rcvbuf_bytes: usize,
    /// Standby decisions outstanding at once.
    pub max_concurrent_standbys: u32,
    /// `Wake` decisions outstanding at once (see [`EngineConfig::max_concurrent_restores`]).
    pub max_concurrent_restores: u32,
    /// How often the controller checks what it tracks (kernel mode): every tracked flow
    /// is looked up by its exact tuple, so an entry whose DESTROY never came ends within
    /// about this long, and `nf_conntrack_events` is read again. No table walk, unless
    /// an instance tracks more than a few thousand flows (see
    /// [`Engine::check_tracked_flows`]).
    pub resync_interval_ms: u64,
    /// Handling of the events sysctl.
    pub events_sysctl: EventsSysctlMode,
    /// Most verbose level captured into the log buffer.
    pub log_level: Level,
    /// Confirm idleness right before each standby. Kernel mode (default on): with a
    /// targeted dump; off only to measure the rest of the pipeline, never in production.
    /// Manual mode (default off, so hosts that never answer are unchanged): each
    /// confirmation becomes a [`Decision::Confirm`] that the host answers with
    /// [`Controller::confirm`].
    pub confirm_before_standby: bool,
    /// How long before each deadline the confirmation is asked for (the engine caps it
    /// at half the idle timeout). Default 2,000 ms in kernel mode, so the dump's latency
    /// does not delay the standby; 0 in manual mode, so a host that moves its clock
    /// straight to the deadline sees `Confirm` there, answers it, then sees `Standby`.
    pub confirm_lead_ms: u64,
    /// What a failed standby does to the countdown (default: a full new countdown).
    pub standby_retry: StandbyRetry,
    /// Hold packets for instances in Standby (default off): when an instance's standby
    /// begins, again when it is reported successful, and when it is registered in
    /// Standby, its neighbour entries (ARP, NDP) in the namespace of `netns` are removed, so the
    /// first packets of a wake wait in the kernel's neighbour queue while the address
    /// resolves again, and go out as soon as the restored guest announces itself or
    /// answers a solicitation. Resolution gives up after `mcast_solicit` x
    /// `retrans_time` (3 x 1 s by default on the device), which bounds the restore time
    /// it covers; `unres_qlen_bytes` bounds the queue. Nothing is installed in the
    /// kernel, so there is nothing to undo, and traffic is never black-holed.
    pub hold_packets_in_standby: bool,
    /// With the hold: the restore time held packets must survive, in ms (0, the
    /// default, leaves the devices' settings alone: about 3 s). The `mcast_solicit` of a
    /// device reaching a held instance is raised so that `mcast_solicit` x
    /// `retrans_time` covers it (never lowered), and put back when the last instance is
    /// unregistered or the controller ends; the original values are recorded in
    /// `hold_state_dir` first, and a controller with the hold on (with a window or not)
    /// that finds records of its namespace there (left by a crash) restores them at
    /// start.
    pub hold_resolve_window_ms: u64,
    /// Where device settings changed for the hold are recorded (`None`:
    /// [`crate::conntrack::solicit::DEFAULT_STATE_DIR`]).
    pub hold_state_dir: Option<PathBuf>,
}

impl ControllerConfig {
    /// A manual-mode configuration whose clock starts at `start_ms` (no confirmation).
    pub fn manual(start_ms: UnixMillis) -> Self {
        Self {
            mode: Mode::Manual { start_ms },
            confirm_before_standby: false,
            confirm_lead_ms: 0,
            ..Self::kernel()
        }
    }

    /// A kernel-mode configuration with every default.
    pub fn kernel() -> Self {
        Self {
            mode: Mode::Kernel,
            netns: None,
            rcvbuf_bytes: DEFAULT_RCVBUF_BYTES,
            max_concurrent_standbys: DEFAULT_MAX_CONCURRENT_STANDBYS,
            max_concurrent_restores: DEFAULT_MAX_CONCURRENT_RESTORES,
            resync_interval_ms: DEFAULT_RESYNC_INTERVAL_MS,
            events_sysctl: EventsSysctlMode::ReportOnly,
            log_level: Level::INFO,
            confirm_before_standby: true,
            confirm_lead_ms: EngineConfig::default().confirm_lead_ms,
            standby_retry: StandbyRetry::default(),
            hold_packets_in_standby: false,
            hold_resolve_window_ms: 0,
            hold_state_dir: None,
        }
    }
}

/// Errors from controller calls.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControllerError {
    /// The engine refused the call; nothing changed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The call exists only in the other mode.
    #[error("{0} is only available in manual mode")]
    WrongMode(&'static str),
    /// The controller is shutting down.
    #[error("the controller is shutting down")]
    Shutdown,
    /// Missing privileges (CAP_NET_ADMIN for conntrack, or entering the namespace).
    #[error("permission denied: {0}")]
    Permission(String),
    /// A system call failed.
    #[error("I/O error: {0}")]
    Io(String),
    /// A configuration value is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Controller-wide counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControllerStats {
    /// The engine's counters.
    pub engine: EngineStats,
    /// Times the observer detected lost events.
    pub events_lost: u64,
    /// Flow events read from the event socket after the kernel filter.
    pub events_read: u64,
    /// Loop wake-ups that read the event socket.
    pub event_wakeups: u64,
    /// Observer failures (socket errors, failed dumps).
    pub observer_errors: u64,
    /// Decisions queued and not yet polled.
    pub decisions_pending: u64,
    /// Log records dropped because the buffer was full.
    pub log_records_dropped: u64,
    /// Decisions merged into one already waiting for the same instance and kind (the
    /// host polls less often than the engine decides).
    pub decisions_merged: u64,
    /// The observer is failed now: no standby anywhere, and eligible instances report
    /// `error`/`observer_error` (hosts use it for instances not registered yet).
    pub observer_failed: bool,
    /// `net.netfilter.nf_conntrack_events` was 0 in the observed namespace at its last
    /// read (at start and before every dump): new connections send no events, so no
    /// instance goes into Standby and eligible ones report `error`/`conntrack_events_off`.
    /// `observer_failed` is set too.
    pub conntrack_events_off: bool,
    /// Walks of the kernel's conntrack hash the query socket asked for (each dump
    /// request is one, filtered or not; kernel mode).
    pub dump_walks: u64,
    /// Flows looked up by exact tuple (`CT_GET`, a hash lookup, no walk): UDP flows whose
    /// expiry passed, and every tracked flow at each periodic check (kernel mode).
    pub flow_lookups: u64,
    /// Periodic checks of the tracked flows run (every `resync_interval_ms`, kernel
    /// mode). In steady state they add to `flow_lookups`, not to `dump_walks`.
    pub periodic_checks: u64,
    /// How long before each deadline the confirmation is asked for now, in
    /// milliseconds: in kernel mode the configured lead, or three times the slowest of
    /// the last dumps when that is longer, so that a slow table is confirmed in time.
    pub confirm_lead_ms: u64,
}

/// State shared by the host-facing handle and the controller's threads.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) engine: Mutex<Engine>,
    pub(crate) clock: Clock,
    pub(crate) decisions: DecisionQueue,
    pub(crate) logs: Arc<LogBuffer>,
    pub(crate) dispatch: Dispatch,
    pub(crate) events_lost: AtomicU64,
    pub(crate) observer_errors: AtomicU64,
    /// See [`ControllerStats::events_read`].
    pub(crate) events_read: AtomicU64,
    /// See [`ControllerStats::event_wakeups`].
    pub(crate) event_wakeups: AtomicU64,
    /// See [`ControllerStats::dump_walks`].
    pub(crate) dump_walks: AtomicU64,
    /// See [`ControllerStats::flow_lookups`].
    pub(crate) flow_lookups: AtomicU64,
    /// See [`ControllerStats::periodic_checks`].
    pub(crate) periodic_checks: AtomicU64,
}

/// The host's answer to a [`Decision::Confirm`] (manual mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfirmAnswer<'a> {
    /// The confirmation dump succeeded: the instance's current conntrack flows, as a
    /// dump filtered to its addresses returns them (empty: it is idle).
    Flows(&'a [Flow]),
    /// The confirmation dump failed.
    Failed,
}

impl Shared {
    /// Fires due deadlines and moves the engine's output to where it goes. Called with
    /// the engine locked after every change. With `defer_persist`, a batch of only
    /// `PersistRuntime` decisions does not wake a blocked poller: the return value says
    /// so, and the caller announces them soon (see [`DecisionQueue::announce`]).
    pub(crate) fn settle(&self, engine: &mut Engine, now: UnixMillis, defer_persist: bool) -> bool {
        engine.tick(now);
        let mut out = Vec::new();
        engine.drain_decisions(&mut out);
        // The host stores the countdown and reads it back against its own wall clock.
        for d in &mut out {
            if let Decision::PersistRuntime {
                runtime: Some(r), ..
            } = d
            {
                *r = self.runtime_to_wall(*r);
            }
        }
        if defer_persist {
            self.decisions.push_all_deferring(&mut out)
        } else {
            self.decisions.push_all(&mut out);
            false
        }
    }

    fn runtime_to_wall(&self, r: Runtime) -> Runtime {
        Runtime {
            idle_since: r.idle_since.map(|t| self.clock.to_wall(t)),
            last_inbound_activity_at: r.last_inbound_activity_at.map(|t| self.clock.to_wall(t)),
        }
    }

    /// A spec from the host, with its persisted (wall-clock) countdown in engine time.
    fn spec_to_engine(&self, mut spec: InstanceSpec) -> InstanceSpec {
        let r = spec.runtime;
        spec.runtime = Runtime {
            idle_since: r.idle_since.map(|t| self.clock.to_engine(t)),
            last_inbound_activity_at: r.last_inbound_activity_at.map(|t| self.clock.to_engine(t)),
        };
        spec
    }

    /// A status snapshot with its timestamps in wall-clock time (durations unchanged).
    fn status_to_wall(&self, mut s: StatusSnapshot) -> StatusSnapshot {
        let w = |t: Option<UnixMillis>| t.map(|t| self.clock.to_wall(t));
        s.idle_since = w(s.idle_since);
        s.last_inbound_activity_at = w(s.last_inbound_activity_at);
        s.next_standby_at = w(s.next_standby_at);
        s.hold_until = w(s.hold_until);
        s
    }
}

/// A running controller. Every method takes `&self` and may be called from any thread.
#[derive(Debug)]
pub struct Controller {
    shared: Arc<Shared>,
    kernel: Option<kernel::KernelRuntime>,
    hold: Option<Mutex<hold::PacketHold>>,
}

impl Controller {
    /// Starts a controller. In kernel mode this opens the conntrack sockets and starts
    /// the threads; errors name what failed (privileges, the namespace, the sysctl).
    pub fn new(config: ControllerConfig) -> Result<Self, ControllerError> {
        if config.max_concurrent_standbys == 0 {
            return Err(ControllerError::InvalidArgument(
                "max_concurrent_standbys must be positive".into(),
            ));
        }
        if config.max_concurrent_restores == 0 {
            return Err(ControllerError::InvalidArgument(
                "max_concurrent_restores must be positive".into(),
            ));
        }
        if config.resync_interval_ms == 0 {
            return Err(ControllerError::InvalidArgument(
                "resync_interval_ms must be positive".into(),
            ));
        }
        let engine_config = EngineConfig {
            max_concurrent_standbys: config.max_concurrent_standbys,
            max_concurrent_restores: config.max_concurrent_restores,
            confirm_before_standby: config.confirm_before_standby,
            confirm_lead_ms: config.confirm_lead_ms,
            standby_retry: config.standby_retry,
            // Kernel mode only: there the observer answers the scoped resync.
            suspect_end_grace_ms: match config.mode {
                Mode::Kernel => SUSPECT_END_GRACE_MS,
                Mode::Manual { .. } => 0,
            },
            // Kernel mode: the observer reads a new address's flows with the resync that
            // follows every address-set change; a manual host feeds them itself.
            pending_until_first_resync: config.mode == Mode::Kernel,
            ..EngineConfig::default()
        };
        let clock = match config.mode {
            Mode::Kernel => Clock::System(SystemClock::new()),
            Mode::Manual { start_ms } => Clock::Manual(AtomicU64::new(start_ms)),
        };
        let logs = Arc::new(LogBuffer::new(LOG_BUFFER_CAPACITY));
        let dispatch = LogCapture::new(logs.clone(), config.log_level).into_dispatch();
        let shared = Arc::new(Shared {
            engine: Mutex::new(Engine::new(engine_config)),
            clock,
            decisions: DecisionQueue::new(),
            logs,
            dispatch,
            events_lost: AtomicU64::new(0),
            observer_errors: AtomicU64::new(0),
            events_read: AtomicU64::new(0),
            event_wakeups: AtomicU64::new(0),
            dump_walks: AtomicU64::new(0),
            flow_lookups: AtomicU64::new(0),
            periodic_checks: AtomicU64::new(0),
        });
        let kernel = match config.mode {
            Mode::Kernel => Some(kernel::KernelRuntime::start(shared.clone(), &config)?),
            Mode::Manual { .. } => None,
        };
        let hold = if config.hold_packets_in_standby {
            let state_dir = config
                .hold_state_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(crate::conntrack::solicit::DEFAULT_STATE_DIR));
            let hold = hold::PacketHold::open(
                config.netns.as_deref(),
                config.hold_resolve_window_ms,
                &state_dir,
            );
            Some(Mutex::new(hold?))
        } else {
            None
        };
        let controller = Self {
            shared,
            kernel,
            hold,
        };
        controller.logged(|| {
            tracing::info!(
                mode = ?config.mode,
                max_concurrent_standbys = config.max_concurrent_standbys,
                "auto-standby controller started"
            )
        });
        Ok(controller)
    }

    /// True in manual mode.
    pub fn is_manual(&self) -> bool {
        self.kernel.is_none()
    }

    /// The controller's current wall-clock time (the manual clock in manual mode), the
    /// time base of every timestamp in its status and decisions.
    pub fn now(&self) -> UnixMillis {
        self.shared.clock.wall_now()
    }

    /// Runs `f` with this controller's log capture as the thread's default subscriber.
    fn logged<T>(&self, f: impl FnOnce() -> T) -> T {
        tracing::dispatcher::with_default(&self.shared.dispatch, f)
    }

    /// Runs a mutating engine call, then settles the engine and wakes the engine loop.
    fn mutate<T>(
        &self,
        f: impl FnOnce(&mut Engine, UnixMillis) -> Result<T, EngineError>,
    ) -> Result<T, ControllerError> {
        self.logged(|| {
            let mut engine = self.shared.engine.lock();
            let now = self.shared.clock.now();
            let result = f(&mut engine, now);
            self.settle_locked(&mut engine, now);
            drop(engine);
            if let Some(kernel) = &self.kernel {
                kernel.rearm();
            }
            result.map_err(ControllerError::from)
        })
    }

    fn settle_locked(&self, engine: &mut Engine, now: UnixMillis) {
        self.shared.settle(engine, now, false);
        if self.kernel.is_none() {
            // No observer in manual mode: the host answers a lost-events report with
            // `resync`, so resync and lookup requests have no reader. The host is the observer for
            // confirmations, though: with them on, each becomes a decision it answers
            // with `confirm` (the engine only asks while one is needed).
            let mut requests = Vec::new();
            engine.drain_requests(&mut requests);
            let mut asks: Vec<Decision> = requests
                .into_iter()
                .filter_map(|r| match r {
                    ObserverRequest::Confirm(key) => Some(Decision::Confirm { key }),
                    ObserverRequest::Resync(_) | ObserverRequest::Lookup(_) => None,
                })
                .collect();
            self.shared.decisions.push_all(&mut asks);
        }
    }

    /// Registers an instance under a host-chosen key.
    pub fn register(&self, key: InstanceKey, spec: InstanceSpec) -> Result<(), ControllerError> {
        let spec = self.shared.spec_to_engine(spec);
        let (addrs, lifecycle) = (spec.addresses.clone(), spec.lifecycle);
        self.mutate(|e, now| e.register(key, spec, now))?;
        self.with_hold(|h| h.set(key, &addrs, lifecycle));
        Ok(())
    }

    /// Replaces an instance's spec.
    pub fn update(&self, key: InstanceKey, spec: InstanceSpec) -> Result<(), ControllerError> {
        let spec = self.shared.spec_to_engine(spec);
        let (addrs, lifecycle) = (spec.addresses.clone(), spec.lifecycle);
        self.mutate(|e, now| e.update(key, spec, now))?;
        self.with_hold(|h| h.set(key, &addrs, lifecycle));
        Ok(())
    }

    /// Forgets an instance.
    pub fn unregister(&self, key: InstanceKey) -> Result<(), ControllerError> {
        self.mutate(|e, now| e.unregister(key, now))?;
        self.with_hold(|h| h.forget(key));
        Ok(())
    }

    /// Runs `f` on the packet hold when it is on, with this controller's log capture.
    fn with_hold(&self, f: impl FnOnce(&mut hold::PacketHold)) {
        if let Some(hold) = &self.hold {
            self.logged(|| f(&mut hold.lock()));
        }
    }

    /// Moves up to `max` decisions into `out`, waiting up to `timeout` for the first. In
    /// kernel mode a `PersistRuntime` that comes without other decisions ends the wait
    /// up to 50 ms after it is queued (a call that finds it queued takes it at once), so a
    /// busy instance whose countdown flips with every connection does not wake the host
    /// each time.
    pub fn poll_decisions(
        &self,
        out: &mut Vec<Decision>,
        max: usize,
        timeout: Duration,
    ) -> Result<(), ControllerError> {
        self.shared
            .decisions
            .take(out, max, timeout)
            .map_err(|_| ControllerError::Shutdown)
    }

    /// The host's last "still idle?" check before it snapshots `key`.
    pub fn begin_standby(&self, key: InstanceKey) -> Result<BeginStandby, ControllerError> {
        let begun = self.mutate(|e, now| e.begin_standby(key, now))?;
        if begun == BeginStandby::Proceed {
            // The guest stops answering from the moment the host pauses it, well before
            // the standby is reported: removed now, its entries stay gone unless a
            // packet makes the still-running guest answer again, which the removal at
            // the report then covers.
            self.with_hold(|h| h.release(key));
        }
        Ok(begun)
    }

    /// Hands back a taken `Standby` decision without beginning it (see
    /// [`Engine::decline_standby`]).
    pub fn decline_standby(&self, key: InstanceKey) -> Result<(), ControllerError> {
        self.mutate(|e, now| e.decline_standby(key, now))
    }

    /// The host's report on a standby it began.
    pub fn report_standby(
        &self,
        key: InstanceKey,
        outcome: StandbyOutcome,
    ) -> Result<(), ControllerError> {
        self.mutate(|e, now| e.report_standby(key, outcome, now))?;
        if outcome == StandbyOutcome::Success {
            self.with_hold(|h| h.release(key));
        }
        Ok(())
    }

    /// The host's report on the restore it attempted for a `Wake` decision.
    pub fn report_wake(
        &self,
        key: InstanceKey,
        outcome: WakeOutcome,
    ) -> Result<(), ControllerError> {
        self.mutate(|e, now| e.report_wake(key, outcome, now))
    }

    /// Keeps `key` awake for one idle timeout from now.
    pub fn hold(&self, key: InstanceKey) -> Result<StatusSnapshot, ControllerError> {
        let s = self.mutate(|e, now| e.hold(key, now))?;
        Ok(self.shared.status_to_wall(s))
    }

    /// Whether `key` waits for a resync before its flows are known (see
    /// [`Engine::resync_pending`]): in kernel mode, from its registration until the
    /// first dump of its addresses has been applied. Never waits on I/O.
    pub fn resync_pending(&self, key: InstanceKey) -> Result<bool, ControllerError> {
        Ok(self.shared.engine.lock().resync_pending(key)?)
    }

    /// Status of `key`. Never waits on I/O.
    pub fn status(&self, key: InstanceKey) -> Result<StatusSnapshot, ControllerError> {
        let engine = self.shared.engine.lock();
        let s = engine.status(key, self.shared.clock.now())?;
        Ok(self.shared.status_to_wall(s))
    }

    /// What candidate idle timeouts would have done over `key`'s observed idle gaps, and
    /// the recommended one (see [`Engine::recommend`]); `observed_since` is wall time.
    /// Never waits on I/O.
    pub fn recommend(
        &self,
        key: InstanceKey,
        query: &RecommendQuery,
    ) -> Result<Recommendation, ControllerError> {
        let engine = self.shared.engine.lock();
        let mut r = engine.recommend(key, query, self.shared.clock.now())?;
        r.observed_since = r.observed_since.map(|t| self.shared.clock.to_wall(t));
        Ok(r)
    }

    /// Appends the flows keeping `key` awake to `out`.
    pub fn explain(
        &self,
        key: InstanceKey,
        out: &mut Vec<KeptAwakeBy>,
    ) -> Result<(), ControllerError> {
        let engine = self.shared.engine.lock();
        let from = out.len();
        engine.explain(key, self.shared.clock.now(), out)?;
        for k in &mut out[from..] {
            k.first_seen = self.shared.clock.to_wall(k.first_seen);
        }
        Ok(())
    }

    /// Every registered address.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.shared.engine.lock().addresses()
    }

    /// Counters.
    pub fn stats(&self) -> ControllerStats {
        let (engine, observer_failed, conntrack_events_off, confirm_lead_ms) = {
            let e = self.shared.engine.lock();
            (
                e.stats(),
                e.observer_error().is_some(),
                e.events_off(),
                e.confirm_lead_ms(),
            )
        };
        ControllerStats {
            engine,
            observer_failed,
            conntrack_events_off,
            events_lost: self.shared.events_lost.load(Ordering::Relaxed),
            events_read: self.shared.events_read.load(Ordering::Relaxed),
            event_wakeups: self.shared.event_wakeups.load(Ordering::Relaxed),
            observer_errors: self.shared.observer_errors.load(Ordering::Relaxed),
            dump_walks: self.shared.dump_walks.load(Ordering::Relaxed),
            flow_lookups: self.shared.flow_lookups.load(Ordering::Relaxed),
            periodic_checks: self.shared.periodic_checks.load(Ordering::Relaxed),
            confirm_lead_ms,
            decisions_pending: self.shared.decisions.len() as u64,
            decisions_merged: self.shared.decisions.merged(),
            log_records_dropped: self.shared.logs.dropped(),
        }
    }

    /// Moves up to `max` of the oldest captured log records into `out`.
    pub fn drain_logs(&self, out: &mut Vec<LogRecord>, max: usize) {
        self.shared.logs.drain(out, max);
    }

    fn manual_only(&self, call: &'static str) -> Result<(), ControllerError> {
        if self.is_manual() {
            Ok(())
        } else {
            Err(ControllerError::WrongMode(call))
        }
    }

    /// Manual mode: applies flow events at the current manual time.
    pub fn ingest(&self, events: &[FlowEvent]) -> Result<(), ControllerError> {
        self.manual_only("ingest")?;
        self.mutate(|e, now| {
            e.on_flow_events(events, now);
            Ok(())
        })
    }

    /// Manual mode: moves the clock forward and fires what came due.
    pub fn advance_clock(&self, delta_ms: u64) -> Result<(), ControllerError> {
        self.manual_only("advance_clock")?;
        self.logged(|| {
            // Under the engine lock, so no call sees the new time before its deadlines fired.
            let mut engine = self.shared.engine.lock();
            let now = self.shared.clock.advance(delta_ms).unwrap_or_default();
            self.settle_locked(&mut engine, now);
        });
        Ok(())
    }

    /// Manual mode: replaces the flow table with `table`, as a full dump would.
    pub fn resync(&self, table: &[Flow]) -> Result<(), ControllerError> {
        self.manual_only("resync")?;
        self.mutate(|e, now| {
            let id = e.begin_resync(ResyncScope::All, now);
            for flow in table {
                e.resync_flow(id, flow)?;
            }
            e.finish_resync(id, now)
        })
    }

    /// Manual mode: answers a [`Decision::Confirm`] for `key`, exactly as the kernel
    /// observer's confirmation dump would: a resync scoped to the instance that begins
    /// now, fed `flows` and finished, or failed. Flows of the instance missing from the
    /// answer are gone; a live one keeps it awake; an empty answer lets the standby
    /// proceed; a failure keeps it awake with reason `confirm_failed` and restarts the
    /// countdown.
    ///
    /// A stale answer changes nothing: [`EngineError::NotFound`] when the instance is
    /// gone, [`EngineError::NoConfirmPending`] when no confirmation is pending for it
    /// (already answered, or cancelled by activity, a hold or an update).
    pub fn confirm(
        &self,
        key: InstanceKey,
        answer: ConfirmAnswer<'_>,
    ) -> Result<(), ControllerError> {
        self.manual_only("confirm")?;
        let applied = self.mutate(|e, now| {
            if !e.confirm_pending(key)? {
                return Err(EngineError::NoConfirmPending(key));
            }
            // The same engine calls the kernel observer makes for a `Confirm` request.
            let id = e.begin_resync(ResyncScope::Instances(vec![key]), now);
            match answer {
                ConfirmAnswer::Flows(flows) => {
                    for flow in flows {
                        e.resync_flow(id, flow)?;
                    }
                    e.finish_resync(id, now)
                }
                ConfirmAnswer::Failed => e.fail_resync(id, now),
            }
        });
        // As in kernel mode, a failed dump counts as an observer error; unlike there, it
        // does not mark the observer failed: in manual mode the host reports that with
        // `set_observer_error`, and the status says `confirm_failed`.
        if applied.is_ok() && answer == ConfirmAnswer::Failed {
            self.shared.observer_errors.fetch_add(1, Ordering::Relaxed);
        }
        applied
    }

    /// Manual mode: reports the observer failed (`Some(why)`) or healthy again (`None`).
    pub fn set_observer_error(&self, error: Option<String>) -> Result<(), ControllerError> {
        self.manual_only("set_observer_error")?;
        if error.is_some() {
            self.shared.observer_errors.fetch_add(1, Ordering::Relaxed);
        }
        let health = error.map_or(ObserverHealth::Healthy, ObserverHealth::Failed);
        self.mutate(|e, now| {
            e.set_observer_health(health, now);
            Ok(())
        })
    }

    /// Test-only (kernel mode, cargo feature `test-hooks`): the engine loop drops its
    /// conntrack event socket exactly as after a failed receive, and its reopen attempts
    /// fail for `down_for`; it then reopens through the usual backoff and resyncs.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn fail_event_socket_for_test(&self, down_for: Duration) -> Result<(), ControllerError> {
        let kernel = self
            .kernel
            .as_ref()
            .ok_or(ControllerError::InvalidArgument(
                "fail_event_socket_for_test needs kernel mode".into(),
            ))?;
        kernel.fail_event_socket(down_for);
        Ok(())
    }

    /// Test-only (kernel mode): steps the wall clock the controller reads by `delta_ms`,
    /// as NTP or an operator setting the time would. Deadlines do not move; timestamps
    /// in status and decisions do.
    #[doc(hidden)]
    pub fn step_wall_clock_for_test(&self, delta_ms: i64) -> Result<(), ControllerError> {
        if self.shared.clock.step_wall(delta_ms) {
            Ok(())
        } else {
            Err(ControllerError::InvalidArgument(
                "step_wall_clock_for_test needs kernel mode".into(),
            ))
        }
    }

    /// Wakes every blocked poller with [`ControllerError::Shutdown`], now and for every
    /// later poll, without waiting for the threads.
    pub fn begin_shutdown(&self) {
        self.shared.decisions.shut_down();
    }

    /// Stops the threads and wakes every blocked poller with [`ControllerError::Shutdown`].
    /// Idempotent; also run on drop.
    pub fn shutdown(&mut self) {
        self.shared.decisions.shut_down();
        if let Some(mut kernel) = self.kernel.take() {
            kernel.stop();
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.shutdown();
    }
}
