//! The idle-timer state machine: pure and deterministic.
//!
//! No I/O, no threads, no clock reads: every input carries `now` (milliseconds since the
//! Unix epoch) and the engine answers with decisions for the host, requests for the
//! observer, status, and its next deadline. Time must never go backwards or jump: the
//! kernel-mode controller feeds monotonic time anchored to the wall clock at its start,
//! and converts timestamps to and from the current wall clock at its API.
//!
//! The controller, the C ABI and the Go bindings are written against the public names
//! in this file: renaming one changes all three.
//!
//! Layout: `flows` stores every tracked flow compactly (one table for all instances,
//! per-instance lists); `addrs` finds an instance by address; `deadlines` is the indexed
//! heap of deadlines (one entry per instance, moved in place, never dropped: the standby
//! countdown of an idle instance, the expiry check of an active one);
//! `instance` holds per-instance state and the derived rules (eligibility, due time).
//! The transitions: `registry` (register, update, unregister), `flow_events` (classify
//! and apply flow reports), `countdown` (idleness, holds, persistence), `standby` (the
//! pipeline from a due deadline to the host's report), `resync` (observer health,
//! lost events, dumps) and `expiry` (checks for UDP flows conntrack may have expired
//! without an event). `status` builds snapshots and explanations. `history` keeps each
//! instance's idle gaps and answers what other idle timeouts would have done.
//!
//! Choices worth knowing:
//! - Flows are stored whatever the policy says, so a policy change recounts without a
//!   dump; only TCP and UDP flows are stored, and finished ones are dropped at once.
//! - `PersistRuntime` is emitted when the countdown starts or stops (and on the other
//!   transitions hypeman persists), not on every packet-driven UPDATE: the in-memory
//!   `last_inbound_activity_at` advances on each event, the persisted one on transitions.
//! - DESTROY tombstones are kept only while a resync or a lookup is open (that is the
//!   only time a dump or a lookup answer can resurrect a flow), each for at most
//!   `tombstone_ttl_ms`.
//! - The flow-event path is laid out for memory: one 64-byte line per instance in a
//!   dense array, one line per flow record, a record removed by an event kept as a
//!   spare for its instance's next flow, and [`Engine::on_flow_events`] loading the
//!   lines a group of events needs before applying any of them.
//! - Each instance keeps a histogram of its idle gaps (`history`, 576 bytes behind the
//!   cold part, allocated when its flows are first known), fed only on the transitions
//!   of its live count between 0 and 1, so the flow-event path touches nothing more.

// Pure code: unsafe belongs only in the conntrack socket layer and the C ABI.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::net::IpAddr;

use crate::flow::{EventKind, Flow, FlowEvent, TcpState, Tuple};
use crate::policy::{Policy, PolicyError};

mod addrs;
mod countdown;
mod deadlines;
mod expiry;
mod fasthash;
mod flow_events;
mod flows;
mod history;
mod instance;
mod registry;
mod resync;
mod slots;
mod standby;
mod status;
mod wake;

#[cfg(test)]
mod tests;

pub use history::{
    DEFAULT_CANDIDATES_MS, DEFAULT_MINUTES_PER_WAKE, EDGES_MS as GAP_HISTOGRAM_EDGES_MS,
    HISTORY_BYTES, MAX_CANDIDATES, RecommendQuery, Recommendation, TimeoutOutcome,
};

use fasthash::FastMap;
use flows::Probe;

/// A host-chosen instance identifier.
pub type InstanceKey = u64;

/// Milliseconds since the Unix epoch: the engine's time inside it, wall time at the
/// controller's API (see `controller::clock`).
pub type UnixMillis = u64;

/// Lifecycle state of an instance as the host reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u32)]
pub enum Lifecycle {
    /// Any state that is neither running nor in standby (created, initializing, paused, ...).
    #[default]
    Other = 0,
    /// Running: eligible for idle tracking.
    Running = 1,
    /// In Standby: a target for `Wake` when its policy asks for it.
    Standby = 2,
    /// Stopped.
    Stopped = 3,
}

/// The idle countdown as the host persists it across restarts of the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Runtime {
    /// When the instance last became idle (no qualifying flow), if it is idle.
    pub idle_since: Option<UnixMillis>,
    /// When inbound activity was last observed.
    pub last_inbound_activity_at: Option<UnixMillis>,
}

/// Everything the engine knows about an instance, supplied at register and update.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct InstanceSpec {
    /// The guest's addresses (IPv4 and/or IPv6); empty means `missing_ip`.
    pub addresses: Vec<IpAddr>,
    /// `None` means no policy is configured (`policy_missing`).
    pub policy: Option<Policy>,
    /// Lifecycle state.
    pub lifecycle: Lifecycle,
    /// Whether the instance has networking.
    pub network_enabled: bool,
    /// Whether the instance has a vGPU (never put into Standby).
    pub has_vgpu: bool,
    /// The persisted countdown, as last written through `PersistRuntime`.
    pub runtime: Runtime,
}

/// What the host should do. Taken with [`Engine::drain_decisions`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Put the instance into Standby. The host calls [`Engine::begin_standby`] right
    /// before snapshotting and [`Engine::report_standby`] afterwards.
    Standby {
        /// The instance.
        key: InstanceKey,
    },
    /// Restore the instance: a qualifying flow arrived while it was in Standby.
    Wake {
        /// The instance.
        key: InstanceKey,
        /// IP protocol of the flow that woke it.
        protocol: u8,
        /// Original tuple of that flow.
        flow: Tuple,
    },
    /// Persist this countdown for the instance (`None` deletes it). Coalesced latest-wins.
    PersistRuntime {
        /// The instance.
        key: InstanceKey,
        /// The value to store.
        runtime: Option<Runtime>,
    },
    /// Confirm that the instance is idle: answer with the instance's current flows (or
    /// a failure). The engine itself never emits this: it asks its observer with
    /// [`ObserverRequest::Confirm`], which a manual-mode controller with confirmation
    /// turned on hands to the host as this decision (the host is its observer).
    Confirm {
        /// The instance.
        key: InstanceKey,
    },
}

/// What the engine asks of the observer. Taken with [`Engine::drain_requests`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObserverRequest {
    /// Run a resync of this scope: `begin_resync`, `resync_flow` for each entry of a dump
    /// of the scope's addresses, then `finish_resync` (or `fail_resync`).
    Resync(ResyncScope),
    /// Confirm that an instance is idle right before its standby: a resync scoped to it.
    Confirm(InstanceKey),
    /// Look these flows up by their exact original tuple, protocol and zone (conntrack
    /// `CT_GET`, no table walk): [`Engine::begin_lookup`], [`Engine::lookup_answer`]
    /// for each, then [`Engine::finish_lookup`] (or [`Engine::fail_lookup`] when the
    /// lookups could not run). Asked for the counted UDP flows of active instances whose
    /// reported expiry has passed (the checks falling due together share one request),
    /// and for every tracked flow by [`Engine::check_tracked_flows`].
    Lookup(Vec<Flow>),
}

/// Handle for a lookup in progress (see [`ObserverRequest::Lookup`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LookupId(pub u64);

/// What the kernel answered for one flow of an [`ObserverRequest::Lookup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupAnswer<'a> {
    /// The entry with the flow's tuple, as the kernel reports it now (with its timeout).
    /// Another conntrack id than the flow's means a new entry reuses the tuple: the flow
    /// asked about is gone and this one is reported instead.
    Found(&'a Flow),
    /// No entry has the tuple any more (`ENOENT`).
    Gone,
    /// The lookup of this flow failed: its instance is resynced instead.
    Failed,
}

/// Which instances a resync covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResyncScope {
    /// Every registered instance.
    All,
    /// These instances only.
    Instances(Vec<InstanceKey>),
}

/// Handle for a resync in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResyncId(pub u64);

/// How the host's standby attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum StandbyOutcome {
    /// The instance is in Standby.
    Success = 0,
    /// The attempt failed; retried as [`EngineConfig::standby_retry`] says.
    Failed = 1,
    /// The instance no longer exists; its state is dropped.
    NotFound = 2,
}

/// How the host's restore on a [`Decision::Wake`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum WakeOutcome {
    /// The instance was restored (its lifecycle update follows from the host).
    Success = 0,
    /// The restore failed: the instance is still in Standby. The next qualifying NEW
    /// flow after [`WAKE_RETRY_INITIAL_MS`] (doubled per consecutive failure, capped at
    /// [`WAKE_RETRY_MAX_MS`]) emits `Wake` again.
    Failed = 1,
    /// The host will not restore the instance (a dry run, or it cannot restore): the
    /// restore slot is freed and no other `Wake` comes until the instance leaves Standby.
    Declined = 2,
}

/// Why a NEW flow to an instance in Standby with wake-on-traffic did not ask for a
/// restore (see [`EngineStats::wakes_suppressed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum WakeSuppressed {
    /// `not_counted_protocol`: the policy does not count the flow's protocol.
    NotCountedProtocol = 0,
    /// `not_counted_port`: the guest port is in `ignore_destination_ports`.
    NotCountedPort = 1,
    /// `ignored_source`: the client is in `ignore_source_cidrs`.
    IgnoredSource = 2,
    /// `source_not_allowed`: the client is outside a non-empty `wake_source_cidrs`.
    SourceNotAllowed = 3,
    /// `restore_backoff`: the last restore failed and its backoff is not over.
    RestoreBackoff = 4,
}

impl WakeSuppressed {
    /// Every reason, in the order of their numbers.
    pub const ALL: [Self; 5] = [
        Self::NotCountedProtocol,
        Self::NotCountedPort,
        Self::IgnoredSource,
        Self::SourceNotAllowed,
        Self::RestoreBackoff,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotCountedProtocol => "not_counted_protocol",
            Self::NotCountedPort => "not_counted_port",
            Self::IgnoredSource => "ignored_source",
            Self::SourceNotAllowed => "source_not_allowed",
            Self::RestoreBackoff => "restore_backoff",
        }
    }
}

/// NEW flows that did not ask for a restore of an instance in Standby, by reason (see
/// [`WakeSuppressed`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WakesSuppressed {
    /// [`WakeSuppressed::NotCountedProtocol`].
    pub not_counted_protocol: u64,
    /// [`WakeSuppressed::NotCountedPort`].
    pub not_counted_port: u64,
    /// [`WakeSuppressed::IgnoredSource`].
    pub ignored_source: u64,
    /// [`WakeSuppressed::SourceNotAllowed`].
    pub source_not_allowed: u64,
    /// [`WakeSuppressed::RestoreBackoff`].
    pub restore_backoff: u64,
}

impl WakesSuppressed {
    /// The count for `reason`.
    pub fn get(&self, reason: WakeSuppressed) -> u64 {
        match reason {
            WakeSuppressed::NotCountedProtocol => self.not_counted_protocol,
            WakeSuppressed::NotCountedPort => self.not_counted_port,
            WakeSuppressed::IgnoredSource => self.ignored_source,
            WakeSuppressed::SourceNotAllowed => self.source_not_allowed,
            WakeSuppressed::RestoreBackoff => self.restore_backoff,
        }
    }

    /// All reasons together.
    pub fn total(&self) -> u64 {
        WakeSuppressed::ALL.iter().map(|&r| self.get(r)).sum()
    }

    fn bump(&mut self, reason: WakeSuppressed) {
        let c = match reason {
            WakeSuppressed::NotCountedProtocol => &mut self.not_counted_protocol,
            WakeSuppressed::NotCountedPort => &mut self.not_counted_port,
            WakeSuppressed::IgnoredSource => &mut self.ignored_source,
            WakeSuppressed::SourceNotAllowed => &mut self.source_not_allowed,
            WakeSuppressed::RestoreBackoff => &mut self.restore_backoff,
        };
        *c += 1;
    }
}

/// Default of [`EngineConfig::max_concurrent_restores`].
pub const DEFAULT_MAX_CONCURRENT_RESTORES: u32 = 8;

/// First delay before a failed restore may be retried on new traffic.
pub const WAKE_RETRY_INITIAL_MS: u64 = 1_000;

/// Changes of the address set kept for [`Engine::drain_address_changes`] before they
/// are dropped (and the next drain reports it).
pub const ADDRESS_JOURNAL_MAX: usize = 1 << 16;
/// Longest delay between restore retries: a client retrying its connection is served
/// within this long of the host recovering.
pub const WAKE_RETRY_MAX_MS: u64 = 30_000;

/// Answer of [`Engine::begin_standby`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BeginStandby {
    /// Still idle: snapshot now. The standby is marked executing.
    Proceed,
    /// Activity, a hold or a refresh cancelled it: do not snapshot. No report is needed.
    Cancelled(Reason),
}

/// Health of the conntrack observer, as the controller reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObserverHealth {
    /// Events are flowing and the last resync succeeded.
    Healthy,
    /// The observer is down; the text says why.
    Failed(String),
    /// The observer works but the kernel sends no conntrack events
    /// (`net.netfilter.nf_conntrack_events` is 0): a new connection would go unseen, so
    /// no instance goes into Standby, and eligible ones report `error` with reason
    /// `conntrack_events_off`.
    EventsOff,
}

/// Status of an instance (hypeman's values, same strings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Status {
    /// `unsupported`
    Unsupported = 0,
    /// `disabled`
    Disabled = 1,
    /// `ineligible`
    Ineligible = 2,
    /// `active`
    Active = 3,
    /// `idle_countdown`
    IdleCountdown = 4,
    /// `ready_for_standby`
    ReadyForStandby = 5,
    /// `standby_requested`
    StandbyRequested = 6,
    /// `error`
    Error = 7,
}

/// Why an instance has its status (hypeman's values first, then ours).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Reason {
    /// `unsupported_platform`
    UnsupportedPlatform = 0,
    /// `policy_missing`
    PolicyMissing = 1,
    /// `policy_disabled`
    PolicyDisabled = 2,
    /// `instance_not_running`
    InstanceNotRunning = 3,
    /// `network_disabled`
    NetworkDisabled = 4,
    /// `missing_ip`
    MissingIp = 5,
    /// `has_vgpu`
    HasVgpu = 6,
    /// `active_inbound_connections`
    ActiveInboundConnections = 7,
    /// `idle_timeout_not_elapsed`
    IdleTimeoutNotElapsed = 8,
    /// `observer_error`
    ObserverError = 9,
    /// `ready_for_standby`
    ReadyForStandby = 10,
    /// `standby_held`: a hold keeps the instance awake until `hold_until`.
    StandbyHeld = 11,
    /// `min_uptime_not_elapsed`: started or restored too recently.
    MinUptimeNotElapsed = 12,
    /// `resync_pending`: the instance's flows are not known: no standby until a resync has
    /// read them. Status `active` (no countdown) before the first read after its
    /// registration or a new address (kernel mode); `idle_countdown` after lost events
    /// or a live flow's entry vanished (the countdown runs, standby waits).
    ResyncPending = 13,
    /// `confirm_failed`: the pre-standby confirmation dump failed; the countdown restarted.
    ConfirmFailed = 14,
    /// `confirm_pending`: the countdown has run out (or nearly) and the confirmation
    /// dump has not answered yet, or the instance's flows were never confirmed since it
    /// was registered with a persisted countdown; no standby until it does.
    ConfirmPending = 15,
    /// `conntrack_events_off`: `net.netfilter.nf_conntrack_events` is 0 in the observed
    /// namespace, so new connections go unseen; no standby until events flow again.
    ConntrackEventsOff = 16,
    /// `restore_failed`: the host reported that restoring the instance from Standby (on a
    /// `Wake`) failed; the next qualifying flow after a backoff wakes it again.
    RestoreFailed = 17,
}

impl Status {
    /// The wire string, identical to hypeman's.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unsupported => "unsupported",
            Self::Disabled => "disabled",
            Self::Ineligible => "ineligible",
            Self::Active => "active",
            Self::IdleCountdown => "idle_countdown",
            Self::ReadyForStandby => "ready_for_standby",
            Self::StandbyRequested => "standby_requested",
            Self::Error => "error",
        }
    }
}

impl Reason {
    /// The wire string (hypeman's where hypeman has the reason).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnsupportedPlatform => "unsupported_platform",
            Self::PolicyMissing => "policy_missing",
            Self::PolicyDisabled => "policy_disabled",
            Self::InstanceNotRunning => "instance_not_running",
            Self::NetworkDisabled => "network_disabled",
            Self::MissingIp => "missing_ip",
            Self::HasVgpu => "has_vgpu",
            Self::ActiveInboundConnections => "active_inbound_connections",
            Self::IdleTimeoutNotElapsed => "idle_timeout_not_elapsed",
            Self::ObserverError => "observer_error",
            Self::ReadyForStandby => "ready_for_standby",
            Self::StandbyHeld => "standby_held",
            Self::MinUptimeNotElapsed => "min_uptime_not_elapsed",
            Self::ResyncPending => "resync_pending",
            Self::ConfirmFailed => "confirm_failed",
            Self::ConfirmPending => "confirm_pending",
            Self::ConntrackEventsOff => "conntrack_events_off",
            Self::RestoreFailed => "restore_failed",
        }
    }
}

/// A point-in-time view of one instance (hypeman's `StatusSnapshot`, plus ours).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusSnapshot {
    /// A policy is configured.
    pub configured: bool,
    /// The policy is enabled.
    pub enabled: bool,
    /// The instance passes every eligibility check.
    pub eligible: bool,
    /// Status.
    pub status: Status,
    /// Reason for the status.
    pub reason: Reason,
    /// Qualifying inbound flows now live.
    pub active_inbound: u32,
    /// The policy's idle timeout (0 when unconfigured).
    pub idle_timeout_ms: u64,
    /// Start of the current idle period.
    pub idle_since: Option<UnixMillis>,
    /// Last inbound activity.
    pub last_inbound_activity_at: Option<UnixMillis>,
    /// When standby is due.
    pub next_standby_at: Option<UnixMillis>,
    /// Hold deadline, only while in the future.
    pub hold_until: Option<UnixMillis>,
    /// `max(0, next_standby_at - now)` when a deadline exists.
    pub countdown_remaining_ms: Option<u64>,
}

/// One flow keeping an instance awake, for explanations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeptAwakeBy {
    /// IP protocol.
    pub protocol: u8,
    /// Original tuple (client to guest, or to the host address under DNAT).
    pub orig: Tuple,
    /// Reply tuple.
    pub reply: Tuple,
    /// TCP state, when known.
    pub tcp_state: Option<TcpState>,
    /// When the engine first saw the flow.
    pub first_seen: UnixMillis,
    /// `now - first_seen`.
    pub age_ms: u64,
}

/// Engine-wide counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Registered instances.
    pub instances: u64,
    /// Flows tracked (all instances).
    pub tracked_flows: u64,
    /// Flow events applied.
    pub flow_events: u64,
    /// Flow events for no registered address.
    pub flow_events_unmatched: u64,
    /// `Standby` decisions emitted.
    pub standby_decisions: u64,
    /// `Wake` decisions emitted.
    pub wake_decisions: u64,
    /// Standbys currently emitted or executing and not yet reported.
    pub standby_in_flight: u64,
    /// Standbys due but waiting for a free slot.
    pub standby_queued: u64,
    /// Resyncs completed.
    pub resyncs: u64,
    /// TCP flows whose conntrack entry was destroyed while their last known state was a
    /// live one (SYN, ESTABLISHED): `conntrack -D`/`-F`, an expired ESTABLISHED timeout,
    /// or table pressure. The connection may well still be open.
    pub suspect_ends: u64,
    /// Restores the host reported failed (see [`Engine::report_wake`]).
    pub wake_failures: u64,
    /// NEW flows to an instance in Standby with wake-on-traffic that did not ask for a
    /// restore, by reason.
    pub wakes_suppressed: WakesSuppressed,
    /// `Wake` decisions emitted and not yet settled: neither reported with
    /// [`Engine::report_wake`] nor ended by the instance leaving Standby.
    pub restores_in_flight: u64,
    /// Instances whose restore waits for one of the
    /// [`EngineConfig::max_concurrent_restores`] slots (the restore queue's length).
    pub restores_queued: u64,
    /// Lookups ([`ObserverRequest::Lookup`]) finished, each answering the expiry checks
    /// of one or more instances, or a periodic check, without a dump.
    pub lookups: u64,
    /// Flows those lookups found gone (expired without an event, usually).
    pub lookup_gone: u64,
}

/// When a standby is tried again after the host reported it failed (with no qualifying
/// flow live; a flow that became live during the attempt makes the instance active and
/// nothing is re-armed, whichever the policy).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum StandbyRetry {
    /// hypeman's behaviour: the failure starts a new idle period (`idle_since` moves
    /// forward to the failure, and is persisted), so the retry comes one full idle timeout
    /// later and a restart of the host resumes that countdown from the persisted value.
    #[default]
    Countdown = 0,
    /// Retry after [`EngineConfig::standby_retry_initial_ms`], doubled per consecutive
    /// failure and capped at the idle timeout; the idle period is kept (a transient
    /// failure is retried sooner, but the retry time lives in memory only).
    Backoff = 1,
}

/// Tunables. `Default` gives hypeman's defaults where hypeman has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Standby decisions outstanding at once (default 16).
    pub max_concurrent_standbys: u32,
    /// `Wake` decisions outstanding at once (default 8): more wait in a queue, in the
    /// order of the flows that asked, and go out as restores are reported or instances
    /// leave Standby. At least 1.
    pub max_concurrent_restores: u32,
    /// Ask the observer to confirm idleness right before each standby (kernel mode).
    pub confirm_before_standby: bool,
    /// With `confirm_before_standby`, how long before the deadline the confirmation is
    /// asked for (default 2,000 ms; capped at half the idle timeout), so the dump's
    /// latency does not delay the standby. A confirmation stays valid until activity, a
    /// loss, a hold, an update or an observer failure.
    pub confirm_lead_ms: u64,
    /// What a failed standby does to the countdown (default: a full new countdown).
    pub standby_retry: StandbyRetry,
    /// With [`StandbyRetry::Backoff`], the first retry delay after a failed standby
    /// (doubled per failure, capped by the instance's idle timeout).
    pub standby_retry_initial_ms: u64,
    /// How long a DESTROY tombstone keeps a dump from resurrecting a flow.
    pub tombstone_ttl_ms: u64,
    /// After a suspect end (see [`EngineStats::suspect_ends`]), how long the instance
    /// waits, resync-pending, for a packet of the connection to re-create the entry
    /// before a resync scoped to it decides. 0 turns this off (a manual-mode host
    /// supplies the flow events and decides what an end means; and it would have to
    /// answer the resync).
    pub suspect_end_grace_ms: u64,
    /// This many suspect ends within one grace period, engine-wide, are an observation
    /// fault (a flush of the table): every instance is resync-pending and a full
    /// resync runs.
    pub suspect_end_burst: u32,
    /// Kernel mode: an instance's flows are unknown from its registration, and from each
    /// time it gains an address, until a resync that covers it and began afterwards has
    /// finished. Until then it reports status `active`, reason `resync_pending`, with no
    /// countdown (a persisted one is applied after that resync, under the restart
    /// rules), and is never put into Standby. The observer must run such a resync after
    /// every change of [`Engine::addresses_generation`], as the kernel-mode controller
    /// does. Off (manual mode): the host supplies the flows itself, and the countdown
    /// starts at registration.
    pub pending_until_first_resync: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_concurrent_standbys: 16,
            max_concurrent_restores: DEFAULT_MAX_CONCURRENT_RESTORES,
            confirm_before_standby: false,
            confirm_lead_ms: 2_000,
            standby_retry: StandbyRetry::Countdown,
            standby_retry_initial_ms: 1_000,
            tombstone_ttl_ms: 60_000,
            suspect_end_grace_ms: 0,
            suspect_end_burst: 16,
            pending_until_first_resync: false,
        }
    }
}

/// Errors from engine calls. No call that fails changes any state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// No instance has this key.
    #[error("instance {0} is not registered")]
    NotFound(InstanceKey),
    /// The key is already registered.
    #[error("instance {0} is already registered")]
    AlreadyRegistered(InstanceKey),
    /// Another instance already owns this address.
    #[error("address {addr} already belongs to instance {owner}")]
    AddressInUse {
        /// The contested address.
        addr: IpAddr,
        /// Its current owner.
        owner: InstanceKey,
    },
    /// The policy is invalid.
    #[error("invalid policy: {0}")]
    InvalidPolicy(#[from] PolicyError),
    /// A standby is executing for this instance (hypeman's `ErrStandbyInProgress`).
    #[error("standby in progress")]
    StandbyInProgress,
    /// `begin_standby`/`report_standby` for an instance with no outstanding standby.
    #[error("instance {0} has no outstanding standby")]
    NoStandbyOutstanding(InstanceKey),
    /// A confirmation answer for an instance with no confirmation pending (never asked,
    /// already answered, or cancelled by activity, a hold or an update since).
    #[error("instance {0} has no confirmation pending")]
    NoConfirmPending(InstanceKey),
    /// Unknown resync handle.
    #[error("unknown resync {0:?}")]
    UnknownResync(ResyncId),
    /// Unknown lookup handle.
    #[error("unknown lookup {0:?}")]
    UnknownLookup(LookupId),
    /// An instance address that can never be a guest's flow endpoint: unspecified,
    /// loopback, multicast or the IPv4 limited broadcast.
    #[error(
        "address {0} cannot be an instance address (unspecified, loopback, multicast and broadcast addresses are refused)"
    )]
    InvalidAddress(IpAddr),
    /// A [`RecommendQuery`] asks for something that cannot be answered; the text says what.
    #[error("invalid recommendation query: {0}")]
    InvalidQuery(String),
}

/// The state machine. See the module docs.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    insts: slots::Slots<instance::Inst>,
    free_slots: Vec<u32>,
    by_key: addrs::KeyIndex,
    by_addr: addrs::AddrIndex,
    addr_gen: u64,
    /// Changes of the address set not drained yet (see
    /// [`Engine::drain_address_changes`]): the address (as `flows::addr_bits`) and
    /// whether it was added.
    addr_journal: Vec<(u128, bool)>,
    /// The journal overflowed and was dropped: the next drain says so.
    addr_journal_lost: bool,
    flows: flows::FlowTable,
    deadlines: deadlines::Deadlines,
    decisions: Vec<Decision>,
    drain_epoch: u64,
    requests: Vec<ObserverRequest>,
    queue: VecDeque<(u32, u64)>,
    in_flight: u32,
    queued: u32,
    /// Restores waiting for a slot: instance slot, ticket, and the flow that asked.
    restore_queue: VecDeque<wake::QueuedWake>,
    restores_in_flight: u32,
    restores_queued: u32,
    observer_error: Option<String>,
    /// The observer error is that conntrack events are off (see [`ObserverHealth::EventsOff`]).
    events_off: bool,
    resyncs: Vec<resync::OpenResync>,
    /// A resync closed and being finished in bounded steps
    /// ([`Engine::finish_resync_bounded`]).
    finishing: Option<resync::Finishing>,
    lookups: Vec<expiry::OpenLookup>,
    next_resync: u64,
    touch_seq: u32,
    all_lost_seq: Option<u64>,
    all_resync_requested: bool,
    /// DESTROYed flows, with when the tombstone expires and the sequence number of the
    /// latest resync or lookup begun when it was made.
    tombstones: FastMap<Probe, (UnixMillis, u32)>,
    /// Start of the current window of suspect ends and how many it has seen.
    suspect_window: (UnixMillis, u32),
    stats: EngineStats,
    last_now: UnixMillis,
}

impl Engine {
    /// A new engine with no instances.
    pub fn new(config: EngineConfig) -> Self {
        Self {
            config,
            insts: slots::Slots::default(),
            free_slots: Vec::new(),
            by_key: addrs::KeyIndex::default(),
            by_addr: addrs::AddrIndex::default(),
            addr_gen: 0,
            addr_journal: Vec::new(),
            addr_journal_lost: false,
            flows: flows::FlowTable::default(),
            deadlines: deadlines::Deadlines::default(),
            decisions: Vec::new(),
            drain_epoch: 0,
            requests: Vec::new(),
            queue: VecDeque::new(),
            in_flight: 0,
            queued: 0,
            restore_queue: VecDeque::new(),
            restores_in_flight: 0,
            restores_queued: 0,
            observer_error: None,
            events_off: false,
            resyncs: Vec::new(),
            finishing: None,
            lookups: Vec::new(),
            next_resync: 1,
            touch_seq: 0,
            all_lost_seq: None,
            all_resync_requested: false,
            tombstones: FastMap::default(),
            suspect_window: (0, 0),
            stats: EngineStats::default(),
            last_now: 0,
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Registers an instance. Live flows already known clear a persisted countdown; none
    /// resumes it.
    pub fn register(
        &mut self,
        key: InstanceKey,
        spec: InstanceSpec,
        now: UnixMillis,
    ) -> Result<(), EngineError> {
        self.do_register(key, spec, now)
    }

    /// Replaces an instance's spec (policy, addresses, lifecycle, runtime) and re-evaluates.
    ///
    /// A queued or emitted (not yet begun) standby is cancelled. The runtime field is
    /// ignored: the engine's own record of what it asked the host to persist is newer.
    pub fn update(
        &mut self,
        key: InstanceKey,
        spec: InstanceSpec,
        now: UnixMillis,
    ) -> Result<(), EngineError> {
        self.do_update(key, spec, now)
    }

    /// Forgets an instance. Nothing is persisted.
    pub fn unregister(&mut self, key: InstanceKey, now: UnixMillis) -> Result<(), EngineError> {
        self.do_unregister(key, now)
    }

    /// Applies one flow event. O(1): found through the address index.
    pub fn on_flow_event(&mut self, event: &FlowEvent, now: UnixMillis) {
        self.see(now);
        self.stats.flow_events += 1;
        if !self.apply_flow(&event.flow, flow_events::Source::Event(event.kind), now) {
            self.stats.flow_events_unmatched += 1;
        }
    }

    /// Applies a batch of flow events, in order, all at `now`. Same effect as calling
    /// [`Engine::on_flow_event`] for each, but faster: the table lines each event needs
    /// are loaded for a group of events before any of them is applied, so the memory
    /// latencies overlap instead of adding up.
    pub fn on_flow_events(&mut self, events: &[FlowEvent], now: UnixMillis) {
        const GROUP: usize = 32;
        const NIL: u32 = u32::MAX;
        self.see(now);
        let mut prepared = [flow_events::Prepared::NONE; GROUP];
        let mut hints = [NIL; GROUP];
        let mut shapes = [NIL; GROUP];
        for group in events.chunks(GROUP) {
            let prepared = &mut prepared[..group.len()];
            let hints = &mut hints[..group.len()];
            let shapes = &mut shapes[..group.len()];
            self.stats.flow_events += group.len() as u64;
            // Stage 1: addresses, identities, hashes and instances (small tables).
            for (e, p) in group.iter().zip(prepared.iter_mut()) {
                *p = self.prepare_unchecked(&e.flow);
            }
            // Stage 2: the instance lines (for the outbound check) and the home slots,
            // in a tight loop so that the cache misses are all in flight at once. A NEW
            // will link its record in front of the instance's list head; the others want
            // the record found.
            for ((e, p), hint) in group.iter().zip(prepared.iter_mut()).zip(hints.iter_mut()) {
                self.drop_outbound(p);
                self.stats.flow_events_unmatched += u64::from(!p.classified());
                *hint = NIL;
                if p.classified() {
                    let rec = std::hint::black_box(self.flows.warm_slot(p.hash));
                    *hint = if e.kind == EventKind::New {
                        self.flows.insert_target(p.slot)
                    } else {
                        rec
                    };
                }
            }
            // Stage 3: those records (for a NEW, the spare it will reuse or the list
            // head it will be linked in front of), and for a NEW the shape it will
            // likely share.
            for (((e, p), &hint), shape) in group
                .iter()
                .zip(prepared.iter())
                .zip(hints.iter())
                .zip(shapes.iter_mut())
            {
                let (_, _, found) = self.flows.warm_rec(hint);
                *shape = NIL;
                match e.kind {
                    EventKind::New if p.classified() => self.flows.warm_shape(NIL, p.slot),
                    EventKind::Destroy => *shape = found,
                    _ => {}
                }
            }
            // Stage 4: the shapes DESTROYs release. (A removed record stays on its
            // instance's list as a spare, so its list neighbours are not touched.)
            for &shape in shapes.iter() {
                if shape != NIL {
                    self.flows.warm_shape(shape, NIL);
                }
            }
            // Stage 5: apply, in order. Flow events never change the address index, so
            // the classifications made in stage 1 still hold.
            for (e, p) in group.iter().zip(prepared.iter()) {
                self.apply_prepared(&e.flow, p, flow_events::Source::Event(e.kind), now);
            }
        }
    }

    /// Reports that events were lost for `scope`: no standby there until a resync
    /// finishes. Queues one coalesced `ObserverRequest::Resync`.
    pub fn events_lost(&mut self, scope: ResyncScope, now: UnixMillis) {
        self.do_events_lost(scope, now)
    }

    /// Starts a resync (a dump) of `scope`. Events keep flowing while it runs.
    ///
    /// Call it before the dump starts: DESTROY events applied from then on leave
    /// tombstones so the dump cannot bring their flows back.
    pub fn begin_resync(&mut self, scope: ResyncScope, now: UnixMillis) -> ResyncId {
        self.do_begin_resync(scope, now)
    }

    /// One entry of the dump for resync `id`. Entries destroyed since it began are ignored.
    pub fn resync_flow(&mut self, id: ResyncId, flow: &Flow) -> Result<(), EngineError> {
        self.do_resync_flow(id, flow)
    }

    /// Ends resync `id`: flows of the scope neither dumped nor touched by an event since
    /// it began are removed.
    pub fn finish_resync(&mut self, id: ResyncId, now: UnixMillis) -> Result<(), EngineError> {
        self.do_finish_resync(id, now, usize::MAX).map(|_| ())
    }

    /// [`Engine::finish_resync`] in bounded steps, so that a caller sharing the engine
    /// behind a lock can let other calls in between: each call applies the end of the
    /// resync to at most `max_instances` of the instances it covers and returns whether
    /// it has finished. Until it has, call it again with the same `id`; the instances
    /// not reached yet stay as they were (awaiting this resync), other calls may come in
    /// between, and finishing or failing another resync first completes this one. The
    /// flows the dump showed gone are removed by the first call.
    pub fn finish_resync_bounded(
        &mut self,
        id: ResyncId,
        now: UnixMillis,
        max_instances: usize,
    ) -> Result<bool, EngineError> {
        self.do_finish_resync(id, now, max_instances.max(1))
    }

    /// Abandons resync `id` (the dump failed); the scope stays awake and pending, and a
    /// new `Resync` request is queued for instances whose events were lost.
    pub fn fail_resync(&mut self, id: ResyncId, now: UnixMillis) -> Result<(), EngineError> {
        self.do_fail_resync(id, now)
    }

    /// The periodic safety check of everything tracked: asks, with one
    /// [`ObserverRequest::Lookup`], for the exact-tuple lookup of every flow stored for
    /// every instance whose flows are known, so that an entry gone without its DESTROY
    /// (a lost event, or an entry from before the observer listened, which with
    /// `nf_conntrack_events=2` never sends one) ends, and a found one refreshes its state
    /// and expiry. No table walk, unless an instance tracks very many flows (it is
    /// resynced instead) or all of them together are too many to look up one by one
    /// (everything is). Flows the events never reported are not its concern: the
    /// confirmation before each standby walks the instance's addresses. Returns the
    /// number of flows asked about.
    pub fn check_tracked_flows(&mut self, now: UnixMillis) -> usize {
        self.do_check_tracked_flows(now)
    }

    /// Starts the lookup of `flows` (as an [`ObserverRequest::Lookup`] listed them). Call
    /// it before the first request goes to the kernel: events applied from then on win
    /// over the answers, and DESTROYs leave tombstones so an answer cannot bring their
    /// flows back.
    pub fn begin_lookup(&mut self, flows: &[Flow], now: UnixMillis) -> LookupId {
        self.do_begin_lookup(flows, now)
    }

    /// The answer for `asked`, one of the flows of lookup `id`. Found: the flow is live
    /// and its expiry is noted, like a dump entry; gone: it is removed, as a DESTROY
    /// would (its DESTROY, which the kernel also sends, then changes nothing).
    pub fn lookup_answer(
        &mut self,
        id: LookupId,
        asked: &Flow,
        answer: LookupAnswer<'_>,
    ) -> Result<(), EngineError> {
        self.do_lookup_answer(id, asked, answer)
    }

    /// Ends lookup `id`. Instances with a failed answer are resynced instead.
    pub fn finish_lookup(&mut self, id: LookupId, now: UnixMillis) -> Result<(), EngineError> {
        self.do_finish_lookup(id, now, false)
    }

    /// Abandons lookup `id` (the socket failed): every instance it covered is resynced
    /// instead. Answers already given stand.
    pub fn fail_lookup(&mut self, id: LookupId, now: UnixMillis) -> Result<(), EngineError> {
        self.do_finish_lookup(id, now, true)
    }

    /// Changes how long before each deadline the confirmation is asked for (see
    /// [`EngineConfig::confirm_lead_ms`]). The observer sets it from how long its dumps
    /// take, so that the confirmation of a large table still ends before the deadline.
    /// Every instance's deadline is armed again; a no-op when the lead is unchanged.
    pub fn set_confirm_lead_ms(&mut self, lead_ms: u64, now: UnixMillis) {
        self.see(now);
        if lead_ms == self.config.confirm_lead_ms {
            return;
        }
        self.config.confirm_lead_ms = lead_ms;
        for slot in self.live_slots() {
            self.rearm(slot);
        }
    }

    /// The current confirmation lead (see [`Engine::set_confirm_lead_ms`]).
    pub fn confirm_lead_ms(&self) -> u64 {
        self.config.confirm_lead_ms
    }

    /// Records the observer's health; while failed, no instance is put into Standby.
    pub fn set_observer_health(&mut self, health: ObserverHealth, now: UnixMillis) {
        self.events_off = health == ObserverHealth::EventsOff;
        let error = match health {
            ObserverHealth::Healthy => None,
            ObserverHealth::Failed(e) => Some(e),
            ObserverHealth::EventsOff => Some(
                "net.netfilter.nf_conntrack_events is 0: the kernel sends no conntrack events"
                    .to_owned(),
            ),
        };
        self.do_set_observer_health(error, now)
    }

    /// Places a hold (last write wins, in memory): no standby before `now + idle_timeout`.
    pub fn hold(
        &mut self,
        key: InstanceKey,
        now: UnixMillis,
    ) -> Result<StatusSnapshot, EngineError> {
        self.do_hold(key, now)?;
        self.status(key, now)
    }

    /// The host's last "still idle?" check right before it snapshots.
    pub fn begin_standby(
        &mut self,
        key: InstanceKey,
        now: UnixMillis,
    ) -> Result<BeginStandby, EngineError> {
        self.do_begin_standby(key, now)
    }

    /// The host hands back a `Standby` decision it took but will not carry out (it is
    /// shutting down, or dropped the decision): the standby slot it held is freed at
    /// once, and the instance's countdown carries on as if the decision had never been
    /// taken (still due, it is decided again, confirmed again first when confirmation
    /// is on). [`EngineError::StandbyInProgress`] once `begin_standby` said proceed
    /// (report it instead); [`EngineError::NoStandbyOutstanding`] when no standby was
    /// decided.
    pub fn decline_standby(
        &mut self,
        key: InstanceKey,
        now: UnixMillis,
    ) -> Result<(), EngineError> {
        self.do_decline_standby(key, now)
    }

    /// Whether a confirmation of `key`'s idleness is pending: an
    /// [`ObserverRequest::Confirm`] was asked and neither answered nor cancelled since.
    /// A resync of `key` that begins now answers it.
    pub fn confirm_pending(&self, key: InstanceKey) -> Result<bool, EngineError> {
        Ok(self.inst(self.slot(key)?).phase == instance::Phase::Confirming)
    }

    /// The host's report on a standby it began.
    pub fn report_standby(
        &mut self,
        key: InstanceKey,
        outcome: StandbyOutcome,
        now: UnixMillis,
    ) -> Result<(), EngineError> {
        self.do_report_standby(key, outcome, now)
    }

    /// The host's report on the restore it attempted for a `Wake`.
    ///
    /// Every `Wake` holds one of the [`EngineConfig::max_concurrent_restores`] slots
    /// until this report or until the instance leaves Standby (an update with another
    /// lifecycle, or unregister): a host must do one of them for each `Wake`.
    ///
    /// A failure while the instance is still in Standby makes its status `error` /
    /// `restore_failed` and lets a qualifying NEW flow emit `Wake` again once a backoff
    /// has passed (retries happen only while clients keep connecting; no timer fires on
    /// its own). A success, a lifecycle change or a successful standby clears it. A report
    /// for an instance no longer in Standby changes nothing.
    pub fn report_wake(
        &mut self,
        key: InstanceKey,
        outcome: WakeOutcome,
        now: UnixMillis,
    ) -> Result<(), EngineError> {
        self.do_report_wake(key, outcome, now)
    }

    /// Fires every deadline at or before `now`.
    pub fn tick(&mut self, now: UnixMillis) {
        self.do_tick(now)
    }

    /// The earliest pending deadline, if any.
    pub fn next_deadline(&self) -> Option<UnixMillis> {
        self.deadlines.peek().map(|(at, _)| at)
    }

    /// Moves pending decisions into `out`, oldest first.
    pub fn drain_decisions(&mut self, out: &mut Vec<Decision>) {
        out.append(&mut self.decisions);
        self.drain_epoch += 1;
    }

    /// Moves pending observer requests into `out`.
    pub fn drain_requests(&mut self, out: &mut Vec<ObserverRequest>) {
        out.append(&mut self.requests);
    }

    /// Whether `key` waits for a resync before its flows are known: since its
    /// registration or a new address (with
    /// [`EngineConfig::pending_until_first_resync`]), or since events for it were lost or
    /// a live flow of it ended suspectly. Its status reason is then `resync_pending`,
    /// unless ineligibility or an observer failure takes precedence.
    pub fn resync_pending(&self, key: InstanceKey) -> Result<bool, EngineError> {
        let inst = self.inst(self.slot(key)?);
        Ok(inst.unsynced_seq.is_some() || inst.lost_seq.is_some() || inst.suspect_until.is_some())
    }

    /// Status of one instance.
    pub fn status(&self, key: InstanceKey, now: UnixMillis) -> Result<StatusSnapshot, EngineError> {
        Ok(self.status_of(self.slot(key)?, now))
    }

    /// Appends the flows keeping `key` awake to `out`; for an instance in Standby, the
    /// flows that asked for its restore (and are still tracked).
    pub fn explain(
        &self,
        key: InstanceKey,
        now: UnixMillis,
        out: &mut Vec<KeptAwakeBy>,
    ) -> Result<(), EngineError> {
        self.explain_of(self.slot(key)?, now, out);
        Ok(())
    }

    /// Every registered address (for the observer's kernel filters), sorted.
    pub fn addresses(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self.by_addr.keys().map(flows::bits_addr).collect();
        v.sort();
        v
    }

    /// Bumped whenever the set returned by [`Engine::addresses`] changes.
    pub fn addresses_generation(&self) -> u64 {
        self.addr_gen
    }

    /// Moves the changes of the address set since the last call into `out`, oldest
    /// first: each address and whether it was added (`true`) or removed. Applied in
    /// order to the set as of the previous call they give the current set, at a cost
    /// proportional to the changes rather than to the set, so an observer can keep its
    /// own copy for its kernel filters without walking every address under a lock.
    ///
    /// Returns false when changes were dropped because none were drained for a long
    /// time (at most [`ADDRESS_JOURNAL_MAX`] are kept): `out` is then left unchanged and
    /// the caller must take the whole set again ([`Engine::addresses_unsorted`]).
    pub fn drain_address_changes(&mut self, out: &mut Vec<(IpAddr, bool)>) -> bool {
        if std::mem::take(&mut self.addr_journal_lost) {
            return false;
        }
        out.extend(
            self.addr_journal
                .drain(..)
                .map(|(bits, added)| (flows::bits_addr(bits), added)),
        );
        true
    }

    /// Every registered address, in no particular order, appended to `out`: a copy
    /// without the sort of [`Engine::addresses`].
    pub fn addresses_unsorted(&self, out: &mut Vec<IpAddr>) {
        out.extend(self.by_addr.keys().map(flows::bits_addr));
    }

    /// Records a change of the address set for [`Engine::drain_address_changes`].
    fn note_address(&mut self, bits: u128, added: bool) {
        if self.addr_journal_lost {
            return;
        }
        if self.addr_journal.len() >= ADDRESS_JOURNAL_MAX {
            // Nobody is draining it (manual mode, say): free it, and tell the next
            // drain that it must start from the whole set.
            self.addr_journal = Vec::new();
            self.addr_journal_lost = true;
            return;
        }
        self.addr_journal.push((bits, added));
    }

    /// Addresses of the instances in `scope` (for filtered dumps), sorted.
    pub fn scope_addresses(&self, scope: &ResyncScope) -> Vec<IpAddr> {
        match scope {
            ResyncScope::All => self.addresses(),
            ResyncScope::Instances(keys) => {
                let mut v: Vec<IpAddr> = keys
                    .iter()
                    .filter_map(|k| self.by_key.get(*k))
                    .flat_map(|s| self.inst(s).spec.addresses.iter().copied())
                    .collect();
                v.sort();
                v.dedup();
                v
            }
        }
    }

    /// Why the observer is failed, while it is (see [`Engine::set_observer_health`]).
    pub fn observer_error(&self) -> Option<&str> {
        self.observer_error.as_deref()
    }

    /// Whether the observer reported that conntrack events are off
    /// ([`ObserverHealth::EventsOff`]).
    pub fn events_off(&self) -> bool {
        self.events_off
    }

    /// Counters.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            instances: self.by_key.len() as u64,
            tracked_flows: self.flows.len() as u64,
            standby_in_flight: u64::from(self.in_flight),
            standby_queued: u64::from(self.queued),
            restores_in_flight: u64::from(self.restores_in_flight),
            restores_queued: u64::from(self.restores_queued),
            ..self.stats
        }
    }

    /// Reserves room for `additional` more tracked flows (avoids growth pauses when a
    /// host knows its table size, e.g. from `nf_conntrack_max`).
    pub fn reserve_flows(&mut self, additional: usize) {
        self.flows.reserve(additional);
    }

    /// What candidate idle timeouts would have done over `key`'s observed idle gaps, and
    /// the timeout the rule recommends (see [`RecommendQuery`] and [`Recommendation`]).
    /// Reads only; `now` is the end of the observed window.
    pub fn recommend(
        &self,
        key: InstanceKey,
        query: &RecommendQuery,
        now: UnixMillis,
    ) -> Result<Recommendation, EngineError> {
        self.do_recommend(key, query, now)
    }

    /// Bytes held by the flow storage's buffers (capacity, not length).
    pub fn flow_storage_bytes(&self) -> usize {
        self.flows.heap_bytes()
    }
}
