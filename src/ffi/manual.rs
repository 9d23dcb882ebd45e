//! Manual mode: flow events, time and observer health supplied by the host.

use std::ffi::CStr;

use super::error::{FfiError, autostandby_error};
use super::guard::{autostandby_controller, with_controller};
use super::types::{autostandby_flow_event, slice};

/// Applies flow events, in order, at the controller's current manual time.
///
/// `events` is borrowed for the call only. The whole array is validated first (kind,
/// address families): on error nothing is applied. `AUTOSTANDBY_ERR_WRONG_MODE` in kernel
/// mode. Thread-safe.
///
/// # Safety
/// `c` is NULL or a live handle; `events` is NULL or valid for `len` reads; `err` is NULL
/// or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn autostandby_ingest(
    c: *mut autostandby_controller,
    events: *const autostandby_flow_event,
    len: usize,
    err: *mut autostandby_error,
) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_controller(c, err, |ctl| {
            let events = slice(events, len, "events")?
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    e.to_event().map_err(|err| {
                        FfiError::new(err.code, format!("events[{i}]: {}", err.message))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ctl.ingest(&events)?)
        })
    }
}

/// Moves the manual clock forward by `delta_ms` and fires every deadline that came due;
/// the resulting decisions are ready for `autostandby_poll_decisions` when this returns.
/// `AUTOSTANDBY_ERR_WRONG_MODE` in kernel mode. Thread-safe.
///
/// # Safety
/// `c` is NULL or a live handle; `err` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn autostandby_advance_clock(
    c: *mut autostandby_controller,
    delta_ms: u64,
    err: *mut autostandby_error,
) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe { with_controller(c, err, |ctl| Ok(ctl.advance_clock(delta_ms)?)) }
}

/// Replaces the known flow table with `table`, as a full conntrack dump would (the
/// entries' `kind` is ignored): flows not in it are forgotten. Answers a lost-events
/// report. Validated first; nothing changes on error. `AUTOSTANDBY_ERR_WRONG_MODE` in
/// kernel mode. Thread-safe.
///
/// # Safety
/// `c` is NULL or a live handle; `table` is NULL or valid for `len` reads; `err` is NULL
/// or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn autostandby_resync(
    c: *mut autostandby_controller,
    table: *const autostandby_flow_event,
    len: usize,
    err: *mut autostandby_error,
) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_controller(c, err, |ctl| {
            let flows = slice(table, len, "table")?
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    e.to_flow().map_err(|err| {
                        FfiError::new(err.code, format!("table[{i}]: {}", err.message))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ctl.resync(&flows)?)
        })
    }
}

/// Reports the (simulated) observer failed, with `message` saying why, or healthy again
/// with NULL. While failed no instance is put into Standby. `message` is borrowed for the
/// call. `AUTOSTANDBY_ERR_WRONG_MODE` in kernel mode. Thread-safe.
///
/// # Safety
/// `c` is NULL or a live handle; `message` is NULL or NUL-terminated; `err` is NULL or
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn autostandby_set_observer_error(
    c: *mut autostandby_controller,
    message: *const std::ffi::c_char,
    err: *mut autostandby_error,
) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_controller(c, err, |ctl| {
            let message = if message.is_null() {
                None
            } else {
                // SAFETY: non-NULL and NUL-terminated, per the caller.
                Some(CStr::from_ptr(message).to_string_lossy().into_owned())
            };
            Ok(ctl.set_observer_error(message)?)
        })
    }
}
