//! The C ABI: the only `extern "C"` code in the crate.
//!
//! Conventions (see `include/autostandby.h`): every function returns a `uint32_t` status
//! code (`AUTOSTANDBY_OK` is 0) and fills the optional trailing `autostandby_error`;
//! inputs are borrowed for the call; outputs go to caller arrays with a capacity and an
//! `out_len`; enums cross as `uint32_t` and are validated; structs the caller passes in
//! start with `struct_size`; panics never cross into C and poison the handle.

#![allow(non_camel_case_types)]

mod controller;
mod error;
mod guard;
mod logs;
mod manual;
mod types;

use std::ffi::c_char;

pub use controller::*;
pub use error::*;
pub use guard::{autostandby_controller, force_panic_for_tests};
pub use logs::*;
pub use manual::*;
pub use types::*;

/// Version of the C ABI. Bumped on any incompatible change to `include/autostandby.h`.
pub const AUTOSTANDBY_ABI_VERSION: u32 = 1;

/// `autostandby_status.status`: `unsupported`.
pub const AUTOSTANDBY_STATUS_UNSUPPORTED: u32 = 0;
/// `autostandby_status.status`: `disabled`.
pub const AUTOSTANDBY_STATUS_DISABLED: u32 = 1;
/// `autostandby_status.status`: `ineligible`.
pub const AUTOSTANDBY_STATUS_INELIGIBLE: u32 = 2;
/// `autostandby_status.status`: `active`.
pub const AUTOSTANDBY_STATUS_ACTIVE: u32 = 3;
/// `autostandby_status.status`: `idle_countdown`.
pub const AUTOSTANDBY_STATUS_IDLE_COUNTDOWN: u32 = 4;
/// `autostandby_status.status`: `ready_for_standby`.
pub const AUTOSTANDBY_STATUS_READY_FOR_STANDBY: u32 = 5;
/// `autostandby_status.status`: `standby_requested`.
pub const AUTOSTANDBY_STATUS_STANDBY_REQUESTED: u32 = 6;
/// `autostandby_status.status`: `error`.
pub const AUTOSTANDBY_STATUS_ERROR: u32 = 7;

/// `autostandby_status.reason`: `unsupported_platform`.
pub const AUTOSTANDBY_REASON_UNSUPPORTED_PLATFORM: u32 = 0;
/// `autostandby_status.reason`: `policy_missing`.
pub const AUTOSTANDBY_REASON_POLICY_MISSING: u32 = 1;
/// `autostandby_status.reason`: `policy_disabled`.
pub const AUTOSTANDBY_REASON_POLICY_DISABLED: u32 = 2;
/// `autostandby_status.reason`: `instance_not_running`.
pub const AUTOSTANDBY_REASON_INSTANCE_NOT_RUNNING: u32 = 3;
/// `autostandby_status.reason`: `network_disabled`.
pub const AUTOSTANDBY_REASON_NETWORK_DISABLED: u32 = 4;
/// `autostandby_status.reason`: `missing_ip`.
pub const AUTOSTANDBY_REASON_MISSING_IP: u32 = 5;
/// `autostandby_status.reason`: `has_vgpu`.
pub const AUTOSTANDBY_REASON_HAS_VGPU: u32 = 6;
/// `autostandby_status.reason`: `active_inbound_connections`.
pub const AUTOSTANDBY_REASON_ACTIVE_INBOUND_CONNECTIONS: u32 = 7;
/// `autostandby_status.reason`: `idle_timeout_not_elapsed`.
pub const AUTOSTANDBY_REASON_IDLE_TIMEOUT_NOT_ELAPSED: u32 = 8;
/// `autostandby_status.reason`: `observer_error`.
pub const AUTOSTANDBY_REASON_OBSERVER_ERROR: u32 = 9;
/// `autostandby_status.reason`: `ready_for_standby`.
pub const AUTOSTANDBY_REASON_READY_FOR_STANDBY: u32 = 10;
/// `autostandby_status.reason`: `standby_held`.
pub const AUTOSTANDBY_REASON_STANDBY_HELD: u32 = 11;
/// `autostandby_status.reason`: `min_uptime_not_elapsed`.
pub const AUTOSTANDBY_REASON_MIN_UPTIME_NOT_ELAPSED: u32 = 12;
/// `autostandby_status.reason`: `resync_pending`: the instance's flows are not known, so
/// no standby until a conntrack dump has read them. Kernel mode, from registration (and
/// from each new address) until the first dump of its addresses has been applied:
/// status `active`, with no countdown (a persisted one is applied after that dump).
/// After lost events or a live flow's entry vanished: status `idle_countdown`, the
/// countdown runs and the standby waits.
pub const AUTOSTANDBY_REASON_RESYNC_PENDING: u32 = 13;
/// `autostandby_status.reason`: `confirm_failed`.
pub const AUTOSTANDBY_REASON_CONFIRM_FAILED: u32 = 14;
/// `autostandby_status.reason`: `confirm_pending` (status `idle_countdown`): the
/// countdown ran out and the confirmation that the instance is idle has not answered
/// yet, or its flows were never confirmed since it was registered with a persisted
/// countdown.
pub const AUTOSTANDBY_REASON_CONFIRM_PENDING: u32 = 15;
/// `autostandby_status.reason`: `conntrack_events_off` (status `error`):
/// `net.netfilter.nf_conntrack_events` is 0 in the observed namespace; no standby until
/// events flow again.
pub const AUTOSTANDBY_REASON_CONNTRACK_EVENTS_OFF: u32 = 16;
/// `autostandby_status.reason`: `restore_failed` (see `autostandby_report_wake`).
pub const AUTOSTANDBY_REASON_RESTORE_FAILED: u32 = 17;

/// The same wire strings as `Status::as_str`/`Reason::as_str`, NUL-terminated.
const STATUS_NAMES: [&str; 8] = [
    "unsupported\0",
    "disabled\0",
    "ineligible\0",
    "active\0",
    "idle_countdown\0",
    "ready_for_standby\0",
    "standby_requested\0",
    "error\0",
];

const REASON_NAMES: [&str; 18] = [
    "unsupported_platform\0",
    "policy_missing\0",
    "policy_disabled\0",
    "instance_not_running\0",
    "network_disabled\0",
    "missing_ip\0",
    "has_vgpu\0",
    "active_inbound_connections\0",
    "idle_timeout_not_elapsed\0",
    "observer_error\0",
    "ready_for_standby\0",
    "standby_held\0",
    "min_uptime_not_elapsed\0",
    "resync_pending\0",
    "confirm_failed\0",
    "confirm_pending\0",
    "conntrack_events_off\0",
    "restore_failed\0",
];

fn c_str(s: Option<&'static str>) -> *const c_char {
    s.map_or(std::ptr::null(), |s| s.as_ptr().cast())
}

/// The library version as a NUL-terminated string, e.g. `"0.1.0"`.
///
/// The pointer is static: never free it. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn autostandby_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The C ABI version the library implements; compare with `AUTOSTANDBY_ABI_VERSION`.
///
/// Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn autostandby_abi_version() -> u32 {
    AUTOSTANDBY_ABI_VERSION
}

/// A short English text for a status code (`AUTOSTANDBY_OK`, `AUTOSTANDBY_ERR_*`), or
/// NULL for an unknown code. The pointer is static: never free it. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn autostandby_status_str(code: u32) -> *const c_char {
    c_str(error::status_text(code))
}

/// The wire string of an `AUTOSTANDBY_STATUS_*` value (`"idle_countdown"`, ...), or NULL
/// for an unknown value. Static: never free it. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn autostandby_status_name(status: u32) -> *const c_char {
    c_str(STATUS_NAMES.get(status as usize).copied())
}

/// The wire string of an `AUTOSTANDBY_REASON_*` value (`"active_inbound_connections"`,
/// ...), or NULL for an unknown value. Static: never free it. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn autostandby_reason_name(reason: u32) -> *const c_char {
    c_str(REASON_NAMES.get(reason as usize).copied())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Reason, Status};

    const STATUSES: [Status; 8] = [
        Status::Unsupported,
        Status::Disabled,
        Status::Ineligible,
        Status::Active,
        Status::IdleCountdown,
        Status::ReadyForStandby,
        Status::StandbyRequested,
        Status::Error,
    ];

    const REASONS: [Reason; 18] = [
        Reason::UnsupportedPlatform,
        Reason::PolicyMissing,
        Reason::PolicyDisabled,
        Reason::InstanceNotRunning,
        Reason::NetworkDisabled,
        Reason::MissingIp,
        Reason::HasVgpu,
        Reason::ActiveInboundConnections,
        Reason::IdleTimeoutNotElapsed,
        Reason::ObserverError,
        Reason::ReadyForStandby,
        Reason::StandbyHeld,
        Reason::MinUptimeNotElapsed,
        Reason::ResyncPending,
        Reason::ConfirmFailed,
        Reason::ConfirmPending,
        Reason::ConntrackEventsOff,
        Reason::RestoreFailed,
    ];

    #[test]
    fn names_and_constants_match_the_engine() {
        for (i, s) in STATUSES.iter().enumerate() {
            assert_eq!(*s as u32, i as u32);
            assert_eq!(STATUS_NAMES[i], format!("{}\0", s.as_str()));
        }
        for (i, r) in REASONS.iter().enumerate() {
            assert_eq!(*r as u32, i as u32);
            assert_eq!(REASON_NAMES[i], format!("{}\0", r.as_str()));
        }
        assert_eq!(Status::Error as u32, AUTOSTANDBY_STATUS_ERROR);
        assert_eq!(
            Reason::ResyncPending as u32,
            AUTOSTANDBY_REASON_RESYNC_PENDING
        );
        assert_eq!(
            Reason::ConfirmFailed as u32,
            AUTOSTANDBY_REASON_CONFIRM_FAILED
        );
        assert_eq!(
            Reason::ConfirmPending as u32,
            AUTOSTANDBY_REASON_CONFIRM_PENDING
        );
        assert_eq!(
            Reason::ConntrackEventsOff as u32,
            AUTOSTANDBY_REASON_CONNTRACK_EVENTS_OFF
        );
        assert_eq!(
            Reason::RestoreFailed as u32,
            AUTOSTANDBY_REASON_RESTORE_FAILED
        );
        assert_eq!(
            Reason::ActiveInboundConnections as u32,
            AUTOSTANDBY_REASON_ACTIVE_INBOUND_CONNECTIONS
        );
    }
}
