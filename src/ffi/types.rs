//! The C structs and their checked conversions to and from the Rust types.
//!
//! Every conversion from C validates: NULL pointers with a non-zero length, enum values
//! out of range, address families, `struct_size`. Nothing is trusted.

use std::ffi::c_char;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::error::{AUTOSTANDBY_ERR_INVALID_POLICY, AUTOSTANDBY_ERR_STRUCT_SIZE, FfiError};
use crate::controller::logs::LogRecord;
use crate::engine::{InstanceSpec, KeptAwakeBy, Lifecycle, Runtime, StatusSnapshot};
use crate::flow::{EventKind, Flow, FlowEvent, TcpState, Tuple};
use crate::policy::{Cidr, Policy, PolicyError, Protocols};

/// `autostandby_ip.family` for IPv4.
pub const AUTOSTANDBY_FAMILY_IPV4: u8 = 4;
/// `autostandby_ip.family` for IPv6.
pub const AUTOSTANDBY_FAMILY_IPV6: u8 = 6;

/// `autostandby_instance.lifecycle`: neither running nor in standby.
pub const AUTOSTANDBY_LIFECYCLE_OTHER: u32 = 0;
/// `autostandby_instance.lifecycle`: running.
pub const AUTOSTANDBY_LIFECYCLE_RUNNING: u32 = 1;
/// `autostandby_instance.lifecycle`: in Standby.
pub const AUTOSTANDBY_LIFECYCLE_STANDBY: u32 = 2;
/// `autostandby_instance.lifecycle`: stopped.
pub const AUTOSTANDBY_LIFECYCLE_STOPPED: u32 = 3;

/// `autostandby_config.mode`: real conntrack over netlink.
pub const AUTOSTANDBY_MODE_KERNEL: u32 = 0;
/// `autostandby_config.mode`: flow events and time through the API.
pub const AUTOSTANDBY_MODE_MANUAL: u32 = 1;

/// `autostandby_config.events_sysctl`: read and report `nf_conntrack_events` only.
pub const AUTOSTANDBY_EVENTS_SYSCTL_REPORT: u32 = 0;
/// `autostandby_config.events_sysctl`: set `nf_conntrack_events` to 1.
pub const AUTOSTANDBY_EVENTS_SYSCTL_ENABLE: u32 = 1;

/// `autostandby_decision.kind`: put the instance into Standby.
pub const AUTOSTANDBY_DECISION_STANDBY: u32 = 0;
/// `autostandby_decision.kind`: restore the instance (traffic arrived).
pub const AUTOSTANDBY_DECISION_WAKE: u32 = 1;
/// `autostandby_decision.kind`: store (or delete) the instance's runtime.
pub const AUTOSTANDBY_DECISION_PERSIST_RUNTIME: u32 = 2;
/// `autostandby_decision.kind`: confirm the instance is idle; answer with
/// `autostandby_confirm`. Manual mode with `config.confirm_before_standby` only.
pub const AUTOSTANDBY_DECISION_CONFIRM: u32 = 3;

/// `autostandby_config.standby_retry` (the default): a failed standby starts a new idle
/// period at the failure (persisted), so the retry comes one full idle timeout later.
pub const AUTOSTANDBY_STANDBY_RETRY_COUNTDOWN: u32 = 0;
/// `autostandby_config.standby_retry`: a failed standby is retried after 1 s, 2 s, 4 s
/// ... capped at the idle timeout; the idle period is kept.
pub const AUTOSTANDBY_STANDBY_RETRY_BACKOFF: u32 = 1;

/// `autostandby_confirm` outcome: the confirmation dump succeeded; the flows are its result.
pub const AUTOSTANDBY_CONFIRM_OK: u32 = 0;
/// `autostandby_confirm` outcome: the confirmation dump failed.
pub const AUTOSTANDBY_CONFIRM_FAILED: u32 = 1;

/// `autostandby_report_standby` outcome: the instance is in Standby.
pub const AUTOSTANDBY_OUTCOME_SUCCESS: u32 = 0;
/// `autostandby_report_standby` outcome: the attempt failed.
pub const AUTOSTANDBY_OUTCOME_FAILED: u32 = 1;
/// `autostandby_report_standby` outcome: the instance no longer exists.
pub const AUTOSTANDBY_OUTCOME_NOT_FOUND: u32 = 2;

/// `autostandby_report_wake` outcome: the instance was restored.
pub const AUTOSTANDBY_WAKE_RESTORED: u32 = 0;
/// `autostandby_report_wake` outcome: the restore failed; the instance is still in
/// Standby.
pub const AUTOSTANDBY_WAKE_FAILED: u32 = 1;
/// `autostandby_report_wake` outcome: the host will not restore the instance (a dry
/// run, or it cannot restore): the restore slot is freed and no other WAKE comes for it
/// until it leaves Standby.
pub const AUTOSTANDBY_WAKE_DECLINED: u32 = 2;

/// `autostandby_flow_event.kind`: a new flow.
pub const AUTOSTANDBY_FLOW_NEW: u32 = 0;
/// `autostandby_flow_event.kind`: a flow changed.
pub const AUTOSTANDBY_FLOW_UPDATE: u32 = 1;
/// `autostandby_flow_event.kind`: a flow ended.
pub const AUTOSTANDBY_FLOW_DESTROY: u32 = 2;

/// `autostandby_log_record.level`: error.
pub const AUTOSTANDBY_LOG_ERROR: u32 = 1;
/// `autostandby_log_record.level`: warning.
pub const AUTOSTANDBY_LOG_WARN: u32 = 2;
/// `autostandby_log_record.level`: information.
pub const AUTOSTANDBY_LOG_INFO: u32 = 3;
/// `autostandby_log_record.level`: debug.
pub const AUTOSTANDBY_LOG_DEBUG: u32 = 4;
/// `autostandby_log_record.level`: trace.
pub const AUTOSTANDBY_LOG_TRACE: u32 = 5;

/// An IPv4 or IPv6 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct autostandby_ip {
    /// `AUTOSTANDBY_FAMILY_IPV4` (4) or `AUTOSTANDBY_FAMILY_IPV6` (6).
    pub family: u8,
    /// Network byte order; IPv4 uses `addr[0..4]` and the rest is ignored.
    pub addr: [u8; 16],
}

/// An IP prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct autostandby_cidr {
    /// Network address (host bits are cleared by the library).
    pub ip: autostandby_ip,
    /// Prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
    pub prefix_len: u8,
}

/// A per-instance policy.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct autostandby_policy {
    /// `sizeof(autostandby_policy)`.
    pub struct_size: u32,
    /// Master switch.
    pub enabled: bool,
    /// Idle time before standby: 1 ms to 30 days.
    pub idle_timeout_ms: u64,
    /// Client prefixes whose flows never count (may be NULL when the length is 0).
    pub ignore_source_cidrs: *const autostandby_cidr,
    /// Entries of `ignore_source_cidrs`.
    pub ignore_source_cidrs_len: usize,
    /// Guest ports whose flows never count, 1..=65535 (u32 so a bad value is reported,
    /// not truncated; may be NULL when the length is 0).
    pub ignore_destination_ports: *const u32,
    /// Entries of `ignore_destination_ports`.
    pub ignore_destination_ports_len: usize,
    /// TCP flows count.
    pub tcp: bool,
    /// UDP flows count.
    pub udp: bool,
    /// Emit a Wake decision on the first qualifying flow while in Standby.
    pub wake_on_traffic: bool,
    /// No standby before this long after start or restore.
    pub min_uptime_ms: u64,
    /// Client prefixes allowed to wake the instance from Standby; none (length 0)
    /// allows any client. A flow must also count under the rest of the policy. May be
    /// NULL when the length is 0. Added after the first release: a caller whose
    /// `struct_size` ends at `min_uptime_ms` gets none.
    pub wake_source_cidrs: *const autostandby_cidr,
    /// Entries of `wake_source_cidrs`.
    pub wake_source_cidrs_len: usize,
}

/// `sizeof(struct autostandby_policy)` in the first release, which ended at
/// `min_uptime_ms`.
pub(crate) const POLICY_SIZE_V1: usize =
    std::mem::offset_of!(autostandby_policy, min_uptime_ms) + size_of::<u64>();

/// The persisted idle countdown.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct autostandby_runtime {
    /// `idle_since_ms` is set.
    pub has_idle_since: bool,
    /// When the instance last became idle (ms since the Unix epoch).
    pub idle_since_ms: u64,
    /// `last_inbound_activity_at_ms` is set.
    pub has_last_inbound_activity_at: bool,
    /// When inbound activity was last observed (ms since the Unix epoch).
    pub last_inbound_activity_at_ms: u64,
}

/// An instance as the host describes it at register and update.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct autostandby_instance {
    /// `sizeof(autostandby_instance)`.
    pub struct_size: u32,
    /// The guest's addresses (may be NULL when the length is 0).
    pub addresses: *const autostandby_ip,
    /// Entries of `addresses`.
    pub addresses_len: usize,
    /// The policy, or NULL when none is configured.
    pub policy: *const autostandby_policy,
    /// One of `AUTOSTANDBY_LIFECYCLE_*`.
    pub lifecycle: u32,
    /// The instance has networking.
    pub network_enabled: bool,
    /// The instance has a vGPU (never put into Standby).
    pub has_vgpu: bool,
    /// The countdown last persisted through a PERSIST_RUNTIME decision.
    pub runtime: autostandby_runtime,
}

/// Controller configuration. Zero in every field after `struct_size` selects the
/// defaults (kernel mode).
///
/// Fields are only ever appended. A caller built against an older header passes that
/// header's `sizeof` in `struct_size`; the fields it lacks take their defaults.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct autostandby_config {
    /// `sizeof(autostandby_config)`.
    pub struct_size: u32,
    /// `AUTOSTANDBY_MODE_KERNEL` or `AUTOSTANDBY_MODE_MANUAL`.
    pub mode: u32,
    /// Network namespace to observe (e.g. `/run/netns/x`); NULL for the caller's.
    pub netns_path: *const c_char,
    /// Event socket receive buffer; 0 for 16 MiB.
    pub rcvbuf_bytes: usize,
    /// Standbys outstanding at once; 0 for 16.
    pub max_concurrent_standbys: u32,
    /// How often the controller checks every flow it tracks (exact-tuple lookups, no
    /// table walk; kernel mode); 0 for 60 s.
    pub resync_interval_ms: u64,
    /// `AUTOSTANDBY_EVENTS_SYSCTL_REPORT` or `AUTOSTANDBY_EVENTS_SYSCTL_ENABLE`.
    pub events_sysctl: u32,
    /// Manual mode: the clock's start (ms since the Unix epoch). Ignored in kernel mode.
    pub manual_start_ms: u64,
    /// One of `AUTOSTANDBY_STANDBY_RETRY_*`: what a failed standby does to the countdown.
    /// Added after the first release: callers with the shorter struct get `COUNTDOWN`.
    pub standby_retry: u32,
    /// Manual mode: confirm idleness before each standby through the host, which sees a
    /// `AUTOSTANDBY_DECISION_CONFIRM` and answers with `autostandby_confirm` (false, the
    /// default, leaves manual hosts unchanged). Ignored in kernel mode, which always
    /// confirms with a conntrack dump.
    pub confirm_before_standby: bool,
    /// How long before each standby deadline the confirmation is asked for (capped at
    /// half the idle timeout); 0 for the mode's default: 2,000 ms in kernel mode, the
    /// deadline itself in manual mode.
    pub confirm_lead_ms: u64,
    /// WAKE decisions outstanding at once (each until `autostandby_report_wake` or an
    /// update out of Standby); more wait in a queue in the order of the flows that
    /// asked; 0 for 8. Added in the third layout: callers with a shorter struct get 8.
    pub max_concurrent_restores: u32,
    /// Hold packets for instances in Standby (false, the default, leaves the kernel
    /// alone): when an instance's standby begins (`autostandby_begin_standby` says
    /// proceed), again when it is reported successful (`autostandby_report_standby`
    /// with `AUTOSTANDBY_OUTCOME_SUCCESS`), and when it is registered with
    /// `AUTOSTANDBY_LIFECYCLE_STANDBY`, its neighbour entries (ARP, NDP) in the
    /// namespace of `netns_path` are removed, so the first packets of a wake wait in the
    /// kernel's neighbour queue and go out once the restored guest's address resolves,
    /// instead of being lost. Resolution gives up after the device's `mcast_solicit` x
    /// `retrans_time` (3 x 1 s by default): restores slower than that lose the packets
    /// as before. Static (permanent) entries, and entries being resolved (their queue
    /// already holds packets), are left alone. Nothing is installed, so
    /// nothing needs undoing. Added after the first release: callers with the shorter
    /// struct get false.
    pub hold_packets_in_standby: bool,
    /// With the hold: the restore time held packets must survive, in ms; 0 leaves the
    /// devices' settings alone (about 3 s). The `mcast_solicit` of the device reaching a
    /// held instance is raised to cover it (never lowered) and put back when the last
    /// instance is unregistered or the controller is freed; the original values are
    /// recorded under `/run/autostandby` first, and the next controller of the same
    /// namespace with the hold on (with a window or not) restores any a crash left
    /// behind.
    pub hold_resolve_window_ms: u64,
}

impl Default for autostandby_config {
    /// All zero, `struct_size` included: the defaults, for the fields a shorter caller
    /// struct does not cover.
    fn default() -> Self {
        Self {
            struct_size: 0,
            mode: 0,
            netns_path: std::ptr::null(),
            rcvbuf_bytes: 0,
            max_concurrent_standbys: 0,
            resync_interval_ms: 0,
            events_sysctl: 0,
            manual_start_ms: 0,
            standby_retry: 0,
            confirm_before_standby: false,
            confirm_lead_ms: 0,
            max_concurrent_restores: 0,
            hold_packets_in_standby: false,
            hold_resolve_window_ms: 0,
        }
    }
}

/// A decision for the host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct autostandby_decision {
    /// One of `AUTOSTANDBY_DECISION_*`.
    pub kind: u32,
    /// The instance.
    pub key: u64,
    /// PERSIST_RUNTIME: true to store `runtime`, false to delete the stored value.
    pub runtime_present: bool,
    /// PERSIST_RUNTIME: the value to store.
    pub runtime: autostandby_runtime,
    /// WAKE: IP protocol of the flow that woke the instance.
    pub protocol: u8,
    /// WAKE: the flow's original source address.
    pub src: autostandby_ip,
    /// WAKE: the flow's original source port.
    pub src_port: u16,
    /// WAKE: the flow's original destination address.
    pub dst: autostandby_ip,
    /// WAKE: the flow's original destination port.
    pub dst_port: u16,
}

/// Status of one instance.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct autostandby_status {
    /// `sizeof(autostandby_status)`, set by the caller before the call.
    pub struct_size: u32,
    /// One of `AUTOSTANDBY_STATUS_*` (see `autostandby_status_name`).
    pub status: u32,
    /// One of `AUTOSTANDBY_REASON_*` (see `autostandby_reason_name`).
    pub reason: u32,
    /// A policy is configured.
    pub configured: bool,
    /// The policy is enabled.
    pub enabled: bool,
    /// The instance passes every eligibility check.
    pub eligible: bool,
    /// Qualifying inbound flows now live.
    pub active_inbound: u32,
    /// The policy's idle timeout (0 when unconfigured).
    pub idle_timeout_ms: u64,
    /// `idle_since_ms` is set.
    pub has_idle_since: bool,
    /// Start of the current idle period.
    pub idle_since_ms: u64,
    /// `last_inbound_activity_at_ms` is set.
    pub has_last_inbound_activity_at: bool,
    /// Last inbound activity.
    pub last_inbound_activity_at_ms: u64,
    /// `next_standby_at_ms` is set.
    pub has_next_standby_at: bool,
    /// When standby is due.
    pub next_standby_at_ms: u64,
    /// `hold_until_ms` is set.
    pub has_hold_until: bool,
    /// Hold deadline, only while in the future.
    pub hold_until_ms: u64,
    /// `countdown_remaining_ms` is set.
    pub has_countdown_remaining: bool,
    /// Time left before standby is due.
    pub countdown_remaining_ms: u64,
}

/// Most candidate timeouts one `autostandby_recommend` query may ask about, and so the
/// most outcomes it reports.
pub const AUTOSTANDBY_RECOMMEND_MAX_CANDIDATES: usize = 64;
const _: () = assert!(AUTOSTANDBY_RECOMMEND_MAX_CANDIDATES == crate::engine::MAX_CANDIDATES);

/// What `autostandby_recommend` is asked (NULL asks with every default).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct autostandby_recommend_query {
    /// `sizeof(autostandby_recommend_query)`.
    pub struct_size: u32,
    /// The rule's N: the recommended timeout is the shortest candidate with at most one
    /// wake per N minutes of observed time. 0 means 30.
    pub minutes_per_wake: u32,
    /// Candidate idle timeouts in ms, each at least 1 (may be NULL when the length is 0;
    /// none means 30 s, 1, 2, 5, 10, 15, 30 min and 1 h). Answered ascending, each once.
    pub candidates_ms: *const u64,
    /// Entries of `candidates_ms`, at most `AUTOSTANDBY_RECOMMEND_MAX_CANDIDATES`.
    pub candidates_len: usize,
}

/// The summary `autostandby_recommend` writes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct autostandby_recommendation {
    /// `sizeof(autostandby_recommendation)`, set by the caller before the call.
    pub struct_size: u32,
    /// The rule's N in use.
    pub minutes_per_wake: u32,
    /// Observation has begun (`observed_since_ms` is set): the instance's flows are known.
    pub has_observed_since: bool,
    /// When observation began (ms since the Unix epoch).
    pub observed_since_ms: u64,
    /// Observed time, to now.
    pub observed_ms: u64,
    /// Closed idle gaps recorded.
    pub gaps: u64,
    /// A gap is open now (no counted flow is live).
    pub has_open_gap: bool,
    /// Length so far of the open gap.
    pub open_gap_ms: u64,
    /// A candidate satisfies the rule.
    pub has_recommended: bool,
    /// The shortest candidate satisfying the rule.
    pub recommended_timeout_ms: u64,
}

/// What one candidate timeout would have done over the observed window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct autostandby_timeout_outcome {
    /// The candidate timeout.
    pub timeout_ms: u64,
    /// Standbys it would have caused (one per gap at least this long, the open one too).
    pub standbys: u64,
    /// Wakes it would have caused (one per such gap that has ended).
    pub wakes: u64,
    /// Time the instance would have spent in Standby.
    pub standby_ms: u64,
    /// `standby_ms` over the observed time.
    pub standby_fraction: f64,
    /// False when part of the answer was estimated (gaps sharing the timeout's
    /// histogram bucket).
    pub exact: bool,
}

impl autostandby_timeout_outcome {
    pub(crate) fn from_outcome(o: &crate::engine::TimeoutOutcome) -> Self {
        Self {
            timeout_ms: o.timeout_ms,
            standbys: o.standbys,
            wakes: o.wakes,
            standby_ms: o.standby_ms,
            standby_fraction: o.standby_fraction,
            exact: o.exact,
        }
    }
}

/// One flow keeping an instance awake.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct autostandby_flow_info {
    /// IP protocol.
    pub protocol: u8,
    /// Original source.
    pub orig_src: autostandby_ip,
    /// Original destination.
    pub orig_dst: autostandby_ip,
    /// Original source port.
    pub orig_src_port: u16,
    /// Original destination port.
    pub orig_dst_port: u16,
    /// Reply source.
    pub reply_src: autostandby_ip,
    /// Reply destination.
    pub reply_dst: autostandby_ip,
    /// Reply source port.
    pub reply_src_port: u16,
    /// Reply destination port.
    pub reply_dst_port: u16,
    /// `tcp_state` is set.
    pub has_tcp_state: bool,
    /// Conntrack TCP state (uapi `enum tcp_conntrack`).
    pub tcp_state: u8,
    /// When the flow was first seen (ms since the Unix epoch).
    pub first_seen_ms: u64,
    /// How long ago that was.
    pub age_ms: u64,
}

/// A conntrack flow event supplied by the host (manual mode).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct autostandby_flow_event {
    /// One of `AUTOSTANDBY_FLOW_*` (ignored by `autostandby_resync`).
    pub kind: u32,
    /// IP protocol (6 TCP, 17 UDP, ...).
    pub protocol: u8,
    /// Original source.
    pub orig_src: autostandby_ip,
    /// Original destination.
    pub orig_dst: autostandby_ip,
    /// Original source port.
    pub orig_src_port: u16,
    /// Original destination port.
    pub orig_dst_port: u16,
    /// Reply source.
    pub reply_src: autostandby_ip,
    /// Reply destination.
    pub reply_dst: autostandby_ip,
    /// Reply source port.
    pub reply_src_port: u16,
    /// Reply destination port.
    pub reply_dst_port: u16,
    /// Conntrack zone.
    pub zone: u16,
    /// Conntrack id.
    pub id: u32,
    /// `tcp_state` is set (absent means "unchanged").
    pub has_tcp_state: bool,
    /// Conntrack TCP state (uapi `enum tcp_conntrack`).
    pub tcp_state: u8,
}

/// Controller-wide counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct autostandby_stats {
    /// `sizeof(autostandby_stats)`, set by the caller before the call.
    pub struct_size: u32,
    /// Registered instances.
    pub instances: u64,
    /// Flows tracked.
    pub tracked_flows: u64,
    /// Flow events applied.
    pub flow_events: u64,
    /// Flow events for no registered address.
    pub flow_events_unmatched: u64,
    /// Standby decisions emitted.
    pub standby_decisions: u64,
    /// Wake decisions emitted.
    pub wake_decisions: u64,
    /// Standbys emitted or executing and not yet reported.
    pub standby_in_flight: u64,
    /// Standbys due but waiting for a free slot.
    pub standby_queued: u64,
    /// Resyncs completed.
    pub resyncs: u64,
    /// Times events were lost.
    pub events_lost: u64,
    /// Observer failures.
    pub observer_errors: u64,
    /// Decisions queued and not yet polled.
    pub decisions_pending: u64,
    /// Log records dropped because the buffer was full.
    pub log_records_dropped: u64,
    /// The observer is failed now (kernel: the conntrack socket or the last dump;
    /// manual: `autostandby_set_observer_error`): no instance goes into Standby, and
    /// eligible ones report status `error`, reason `observer_error`. Added after the
    /// first release: written only when `struct_size` covers it.
    pub observer_failed: bool,
    /// Decisions merged into one already waiting for the same instance and kind (at
    /// most one decision per instance and kind waits to be polled; a newer
    /// `PERSIST_RUNTIME` replaces the waiting one's runtime). Added in the third
    /// layout: written only when `struct_size` covers it.
    pub decisions_merged: u64,
    /// `net.netfilter.nf_conntrack_events` was 0 in the observed namespace at its last
    /// read (at start and before every dump): connections opened now send no events, so
    /// no instance goes into Standby and eligible ones report status `error`, reason
    /// `AUTOSTANDBY_REASON_CONNTRACK_EVENTS_OFF` (`observer_failed` is set too). Added in
    /// the third layout: written only when `struct_size` covers it.
    pub conntrack_events_off: bool,
    /// TCP entries conntrack destroyed while the connection looked alive (last state
    /// SYN or ESTABLISHED: `conntrack -D`/`-F`, an expired ESTABLISHED timeout, table
    /// pressure). The connection may still be open, so in kernel mode the instance is
    /// held `resync_pending` for a short grace, then a dump of it decides. Added in the
    /// third layout: written only when `struct_size` covers it.
    pub suspect_ends: u64,
    /// Restores the host reported failed with `autostandby_report_wake`. Added in the
    /// third layout: written only when `struct_size` covers it.
    pub wake_failures: u64,
    /// New flows to an instance in Standby with wake-on-traffic that did not ask for a
    /// restore because the policy does not count their protocol. This and the fields
    /// below were added in the fourth layout: written only when `struct_size` covers
    /// them.
    pub wakes_suppressed_not_counted_protocol: u64,
    /// ... because their guest port is in `ignore_destination_ports`.
    pub wakes_suppressed_not_counted_port: u64,
    /// ... because their client is in `ignore_source_cidrs`.
    pub wakes_suppressed_ignored_source: u64,
    /// ... because their client is outside a non-empty `wake_source_cidrs`.
    pub wakes_suppressed_source_not_allowed: u64,
    /// ... because the last restore failed and its backoff is not over.
    pub wakes_suppressed_restore_backoff: u64,
    /// WAKE decisions emitted and not yet reported (nor ended by an update out of
    /// Standby).
    pub restores_in_flight: u64,
    /// Instances whose WAKE waits for one of the `max_concurrent_restores` slots: the
    /// restore queue's length.
    pub restores_queued: u64,
}

/// One captured log record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct autostandby_log_record {
    /// One of `AUTOSTANDBY_LOG_*`.
    pub level: u32,
    /// Capture time (ms since the Unix epoch).
    pub time_ms: u64,
    /// The record's target, NUL-terminated, truncated.
    pub target: [c_char; 64],
    /// The message and its fields as `key=value`, NUL-terminated, truncated.
    pub message: [c_char; 512],
}

/// Checks `struct_size` against this library's size of `T`.
pub(crate) fn check_size<T>(struct_size: u32, what: &str) -> Result<(), FfiError> {
    if (struct_size as usize) < size_of::<T>() {
        return Err(FfiError::new(
            AUTOSTANDBY_ERR_STRUCT_SIZE,
            format!(
                "{what}.struct_size is {struct_size}, this library needs at least {}",
                size_of::<T>()
            ),
        ));
    }
    Ok(())
}

/// Refuses an element count no array can have: a slice spans at most `isize::MAX`
/// bytes, so a larger count is a caller bug (often a negative length cast to `size_t`),
/// and building the slice from it would be undefined behaviour.
fn check_array_len<T>(len: usize, what: &str) -> Result<(), FfiError> {
    let max = isize::MAX.unsigned_abs() / size_of::<T>().max(1);
    if len > max {
        return Err(FfiError::invalid(format!(
            "{what}: {len} elements of {} bytes exceed the largest possible array",
            size_of::<T>()
        )));
    }
    Ok(())
}

/// Borrows a caller array; NULL is allowed only with length 0.
///
/// # Safety
/// When non-NULL, `ptr` points to `len` initialised values living for `'a`.
pub(crate) unsafe fn slice<'a, T>(
    ptr: *const T,
    len: usize,
    what: &str,
) -> Result<&'a [T], FfiError> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(FfiError::null(what));
    }
    check_array_len::<T>(len, what)?;
    // SAFETY: non-NULL and, per the caller, valid for `len` elements.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Borrows a caller output array; NULL is allowed only with capacity 0.
///
/// # Safety
/// When non-NULL, `ptr` points to `cap` writable values living for `'a`.
pub(crate) unsafe fn slice_mut<'a, T>(
    ptr: *mut T,
    cap: usize,
    what: &str,
) -> Result<&'a mut [T], FfiError> {
    if cap == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return Err(FfiError::null(what));
    }
    check_array_len::<T>(cap, what)?;
    // SAFETY: non-NULL and, per the caller, valid for `cap` writable elements.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, cap) })
}

impl autostandby_ip {
    /// The address, or an error naming `what` for an unknown family.
    pub fn to_ip(&self, what: &str) -> Result<IpAddr, FfiError> {
        match self.family {
            AUTOSTANDBY_FAMILY_IPV4 => {
                let [a, b, c, d, ..] = self.addr;
                Ok(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
            }
            AUTOSTANDBY_FAMILY_IPV6 => Ok(IpAddr::V6(Ipv6Addr::from(self.addr))),
            other => Err(FfiError::invalid(format!(
                "{what}.family is {other}, expected 4 or 6"
            ))),
        }
    }

    /// The C form of `ip`; IPv4-mapped IPv6 becomes IPv4.
    pub fn from_ip(ip: IpAddr) -> Self {
        let mut addr = [0u8; 16];
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                addr[..4].copy_from_slice(&v4.octets());
                Self {
                    family: AUTOSTANDBY_FAMILY_IPV4,
                    addr,
                }
            }
            IpAddr::V6(v6) => Self {
                family: AUTOSTANDBY_FAMILY_IPV6,
                addr: v6.octets(),
            },
        }
    }
}

impl autostandby_runtime {
    /// The Rust form.
    pub fn to_runtime(&self) -> Runtime {
        Runtime {
            idle_since: self.has_idle_since.then_some(self.idle_since_ms),
            last_inbound_activity_at: self
                .has_last_inbound_activity_at
                .then_some(self.last_inbound_activity_at_ms),
        }
    }

    /// The C form.
    pub fn from_runtime(rt: &Runtime) -> Self {
        Self {
            has_idle_since: rt.idle_since.is_some(),
            idle_since_ms: rt.idle_since.unwrap_or(0),
            has_last_inbound_activity_at: rt.last_inbound_activity_at.is_some(),
            last_inbound_activity_at_ms: rt.last_inbound_activity_at.unwrap_or(0),
        }
    }
}

fn policy_error(err: PolicyError) -> FfiError {
    FfiError::new(
        AUTOSTANDBY_ERR_INVALID_POLICY,
        format!("{}: {err}", err.field()),
    )
}

impl autostandby_policy {
    /// Validates and converts.
    ///
    /// # Safety
    /// The array pointers are NULL or valid for their lengths.
    pub unsafe fn to_policy(&self) -> Result<Policy, FfiError> {
        check_size::<Self>(self.struct_size, "policy")?;
        // SAFETY: forwarded from the caller.
        unsafe { self.convert_unchecked() }
    }

    /// Reads a caller's policy of this header's size or the first release's (whose
    /// missing fields are empty), and converts it.
    ///
    /// # Safety
    /// `ptr` is valid for reads of its own `struct_size` bytes, and the array pointers
    /// it holds are NULL or valid for their lengths.
    pub unsafe fn read(ptr: *const Self) -> Result<Policy, FfiError> {
        // SAFETY: non-NULL per the caller; every struct with a size starts with it.
        let size = unsafe { ptr.cast::<u32>().read() } as usize;
        if size >= size_of::<Self>() {
            // SAFETY: valid for a whole struct, per the caller and its size.
            return unsafe { (*ptr).convert_unchecked() };
        }
        if size != POLICY_SIZE_V1 {
            return Err(FfiError::new(
                AUTOSTANDBY_ERR_STRUCT_SIZE,
                format!(
                    "policy.struct_size is {size}: expected sizeof from this header ({}) or \
                     from an older release ({POLICY_SIZE_V1})",
                    size_of::<Self>()
                ),
            ));
        }
        let mut p = Self {
            struct_size: 0,
            enabled: false,
            idle_timeout_ms: 0,
            ignore_source_cidrs: std::ptr::null(),
            ignore_source_cidrs_len: 0,
            ignore_destination_ports: std::ptr::null(),
            ignore_destination_ports_len: 0,
            tcp: false,
            udp: false,
            wake_on_traffic: false,
            min_uptime_ms: 0,
            wake_source_cidrs: std::ptr::null(),
            wake_source_cidrs_len: 0,
        };
        // SAFETY: the caller's struct has `size` readable bytes, fewer than ours, ending
        // on a field boundary; the two do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(ptr.cast::<u8>(), (&raw mut p).cast::<u8>(), size);
        }
        // SAFETY: the pointers read are the caller's, valid per the caller.
        unsafe { p.convert_unchecked() }
    }

    /// [`autostandby_policy::to_policy`] without the size check.
    ///
    /// # Safety
    /// The array pointers are NULL or valid for their lengths.
    unsafe fn convert_unchecked(&self) -> Result<Policy, FfiError> {
        // SAFETY: forwarded from the caller.
        let cidrs = unsafe {
            slice(
                self.ignore_source_cidrs,
                self.ignore_source_cidrs_len,
                "policy.ignore_source_cidrs",
            )?
        };
        // SAFETY: forwarded from the caller.
        let ports = unsafe {
            slice(
                self.ignore_destination_ports,
                self.ignore_destination_ports_len,
                "policy.ignore_destination_ports",
            )?
        };
        let mut ignore_source_cidrs = Vec::with_capacity(cidrs.len());
        for (i, c) in cidrs.iter().enumerate() {
            let ip =
                c.ip.to_ip(&format!("policy.ignore_source_cidrs[{i}].ip"))
                    .map_err(|e| {
                        FfiError::new(
                            AUTOSTANDBY_ERR_INVALID_POLICY,
                            format!("ignore_source_cidrs: {}", e.message),
                        )
                    })?;
            ignore_source_cidrs.push(Cidr::new(ip, c.prefix_len).map_err(policy_error)?);
        }
        // SAFETY: forwarded from the caller.
        let wake = unsafe {
            slice(
                self.wake_source_cidrs,
                self.wake_source_cidrs_len,
                "policy.wake_source_cidrs",
            )?
        };
        let mut wake_source_cidrs = Vec::with_capacity(wake.len());
        for (i, c) in wake.iter().enumerate() {
            let ip =
                c.ip.to_ip(&format!("policy.wake_source_cidrs[{i}].ip"))
                    .map_err(|e| {
                        FfiError::new(
                            AUTOSTANDBY_ERR_INVALID_POLICY,
                            format!("wake_source_cidrs: {}", e.message),
                        )
                    })?;
            wake_source_cidrs
                .push(Cidr::new(ip, c.prefix_len).map_err(|e| policy_error(e.for_wake_cidrs()))?);
        }
        let mut ignore_destination_ports = Vec::with_capacity(ports.len());
        for &p in ports {
            match u16::try_from(p) {
                Ok(port) if port != 0 => ignore_destination_ports.push(port),
                _ => return Err(policy_error(PolicyError::PortOutOfRange { value: p })),
            }
        }
        Policy {
            enabled: self.enabled,
            idle_timeout_ms: self.idle_timeout_ms,
            ignore_source_cidrs,
            ignore_destination_ports,
            protocols: Protocols {
                tcp: self.tcp,
                udp: self.udp,
            },
            wake_on_traffic: self.wake_on_traffic,
            wake_source_cidrs,
            min_uptime_ms: self.min_uptime_ms,
        }
        .normalized()
        .map_err(policy_error)
    }
}

/// Converts an `AUTOSTANDBY_LIFECYCLE_*` value.
pub(crate) fn lifecycle(value: u32) -> Result<Lifecycle, FfiError> {
    Ok(match value {
        AUTOSTANDBY_LIFECYCLE_OTHER => Lifecycle::Other,
        AUTOSTANDBY_LIFECYCLE_RUNNING => Lifecycle::Running,
        AUTOSTANDBY_LIFECYCLE_STANDBY => Lifecycle::Standby,
        AUTOSTANDBY_LIFECYCLE_STOPPED => Lifecycle::Stopped,
        other => {
            return Err(FfiError::invalid(format!(
                "instance.lifecycle is {other}, expected 0..=3"
            )));
        }
    })
}

impl autostandby_instance {
    /// Validates and converts.
    ///
    /// # Safety
    /// Every pointer is NULL or valid for its length.
    pub unsafe fn to_spec(&self) -> Result<InstanceSpec, FfiError> {
        check_size::<Self>(self.struct_size, "instance")?;
        // SAFETY: forwarded from the caller.
        let addrs = unsafe { slice(self.addresses, self.addresses_len, "instance.addresses")? };
        let addresses = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| a.to_ip(&format!("instance.addresses[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        // SAFETY: NULL or valid, per the caller.
        let policy = if self.policy.is_null() {
            None
        } else {
            // SAFETY: non-NULL, and valid for its own size, per the caller.
            Some(unsafe { autostandby_policy::read(self.policy)? })
        };
        Ok(InstanceSpec {
            addresses,
            policy,
            lifecycle: lifecycle(self.lifecycle)?,
            network_enabled: self.network_enabled,
            has_vgpu: self.has_vgpu,
            runtime: self.runtime.to_runtime(),
        })
    }
}

fn tuple(
    src: &autostandby_ip,
    sp: u16,
    dst: &autostandby_ip,
    dp: u16,
    what: &str,
) -> Result<Tuple, FfiError> {
    let src = src.to_ip(&format!("{what}_src"))?;
    let dst = dst.to_ip(&format!("{what}_dst"))?;
    Ok(Tuple::new(src, sp, dst, dp))
}

impl autostandby_flow_event {
    /// The flow the event describes.
    pub fn to_flow(&self) -> Result<Flow, FfiError> {
        let orig = tuple(
            &self.orig_src,
            self.orig_src_port,
            &self.orig_dst,
            self.orig_dst_port,
            "flow_event.orig",
        )?;
        let reply = tuple(
            &self.reply_src,
            self.reply_src_port,
            &self.reply_dst,
            self.reply_dst_port,
            "flow_event.reply",
        )?;
        let v4 = orig.src.is_ipv4();
        if [orig.dst, reply.src, reply.dst]
            .iter()
            .any(|ip| ip.is_ipv4() != v4)
        {
            return Err(FfiError::invalid(
                "flow_event mixes IPv4 and IPv6 addresses",
            ));
        }
        Ok(Flow {
            protocol: self.protocol,
            orig,
            reply,
            zone: self.zone,
            id: self.id,
            tcp_state: self.has_tcp_state.then_some(TcpState(self.tcp_state)),
            status: 0,
            mark: 0,
            timeout_s: None,
        })
    }

    /// The event, kind included.
    pub fn to_event(&self) -> Result<FlowEvent, FfiError> {
        let kind = match self.kind {
            AUTOSTANDBY_FLOW_NEW => EventKind::New,
            AUTOSTANDBY_FLOW_UPDATE => EventKind::Update,
            AUTOSTANDBY_FLOW_DESTROY => EventKind::Destroy,
            other => {
                return Err(FfiError::invalid(format!(
                    "flow_event.kind is {other}, expected 0..=2"
                )));
            }
        };
        Ok(FlowEvent {
            kind,
            flow: self.to_flow()?,
        })
    }
}

impl autostandby_status {
    /// Fills everything but `struct_size`.
    pub fn fill(&mut self, s: &StatusSnapshot) {
        let struct_size = self.struct_size;
        *self = Self {
            struct_size,
            status: s.status as u32,
            reason: s.reason as u32,
            configured: s.configured,
            enabled: s.enabled,
            eligible: s.eligible,
            active_inbound: s.active_inbound,
            idle_timeout_ms: s.idle_timeout_ms,
            has_idle_since: s.idle_since.is_some(),
            idle_since_ms: s.idle_since.unwrap_or(0),
            has_last_inbound_activity_at: s.last_inbound_activity_at.is_some(),
            last_inbound_activity_at_ms: s.last_inbound_activity_at.unwrap_or(0),
            has_next_standby_at: s.next_standby_at.is_some(),
            next_standby_at_ms: s.next_standby_at.unwrap_or(0),
            has_hold_until: s.hold_until.is_some(),
            hold_until_ms: s.hold_until.unwrap_or(0),
            has_countdown_remaining: s.countdown_remaining_ms.is_some(),
            countdown_remaining_ms: s.countdown_remaining_ms.unwrap_or(0),
        };
    }
}

impl autostandby_flow_info {
    /// The C form of an explanation entry.
    pub fn from_kept(k: &KeptAwakeBy) -> Self {
        Self {
            protocol: k.protocol,
            orig_src: autostandby_ip::from_ip(k.orig.src),
            orig_dst: autostandby_ip::from_ip(k.orig.dst),
            orig_src_port: k.orig.src_port,
            orig_dst_port: k.orig.dst_port,
            reply_src: autostandby_ip::from_ip(k.reply.src),
            reply_dst: autostandby_ip::from_ip(k.reply.dst),
            reply_src_port: k.reply.src_port,
            reply_dst_port: k.reply.dst_port,
            has_tcp_state: k.tcp_state.is_some(),
            tcp_state: k.tcp_state.map_or(0, |s| s.0),
            first_seen_ms: k.first_seen,
            age_ms: k.age_ms,
        }
    }
}

impl autostandby_log_record {
    /// The C form of a captured record.
    pub fn from_record(r: &LogRecord) -> Self {
        let mut out = Self {
            level: r.level as u32,
            time_ms: r.time_ms,
            target: [0; 64],
            message: [0; 512],
        };
        super::error::copy_str(&mut out.target, &r.target);
        super::error::copy_str(&mut out.message, &r.message);
        out
    }
}
