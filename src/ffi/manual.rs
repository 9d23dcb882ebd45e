//! Manual mode: flow events, time and observer health supplied by the host.

use std::ffi::CStr;

use super::error::{FfiError, autostandby_error};
use super::guard::{autostandby_controller, with_controller};
use super::types::{
    AUTOSTANDBY_CONFIRM_FAILED, AUTOSTANDBY_CONFIRM_OK, autostandby_flow_event, slice,
};
use crate::controller::{ConfirmAnswer, ControllerError};
use crate::flow::Flow;

/// Validates a host-supplied flow table (the entries' `kind` is ignored); errors name the
/// entry.
///
/// # Safety
/// `table` is NULL or valid for `len` reads.
unsafe fn flows_from_c(
    table: *const autostandby_flow_event,
    len: usize,
    what: &str,
) -> Result<Vec<Flow>, FfiError> {
    // SAFETY: forwarded from the caller.
    unsafe { slice(table, len, what)? }
        .iter()
        .enumerate()
        .map(|(i, e)| {
            e.to_flow()
                .map_err(|err| FfiError::new(err.code, format!("{what}[{i}]: {}", err.message)))
        })
        .collect()
}

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
            let flows = flows_from_c(table, len, "table")?;
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

/// Answers an `AUTOSTANDBY_DECISION_CONFIRM` for `key` (manual mode, with
/// `config.confirm_before_standby`), as the kernel observer's confirmation dump would.
///
/// `outcome` `AUTOSTANDBY_CONFIRM_OK`: `flows[0..len]` are the instance's conntrack flows
/// now, as a dump filtered to its addresses returns them (the entries' `kind` is
/// ignored); its known flows missing from them are gone. No live qualifying flow: the
/// standby proceeds (a STANDBY decision follows at the deadline); one: the instance is
/// active and nothing is put into Standby. `AUTOSTANDBY_CONFIRM_FAILED` (with `len` 0):
/// the dump failed; the instance stays awake with reason `confirm_failed` and its
/// countdown restarts.
///
/// A stale answer changes nothing: `AUTOSTANDBY_ERR_NOT_FOUND` once the instance is
/// gone, `AUTOSTANDBY_ERR_NO_CONFIRM_PENDING` when no confirmation is pending (already
/// answered, or cancelled by activity, a hold or an update; a new CONFIRM follows when
/// one is needed again). An unknown `outcome`, flows with `AUTOSTANDBY_CONFIRM_FAILED` or
/// an invalid flow: `AUTOSTANDBY_ERR_INVALID_ARGUMENT`, validated before anything
/// changes. `AUTOSTANDBY_ERR_WRONG_MODE` in kernel mode. `flows` is borrowed for the call
/// only. Thread-safe.
///
/// # Safety
/// `c` is NULL or a live handle; `flows` is NULL or valid for `len` reads; `err` is NULL
/// or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn autostandby_confirm(
    c: *mut autostandby_controller,
    key: u64,
    outcome: u32,
    flows: *const autostandby_flow_event,
    len: usize,
    err: *mut autostandby_error,
) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_controller(c, err, |ctl| {
            if !ctl.is_manual() {
                return Err(ControllerError::WrongMode("confirm").into());
            }
            let flows = flows_from_c(flows, len, "flows")?;
            let answer = match outcome {
                AUTOSTANDBY_CONFIRM_OK => ConfirmAnswer::Flows(&flows),
                AUTOSTANDBY_CONFIRM_FAILED if flows.is_empty() => ConfirmAnswer::Failed,
                AUTOSTANDBY_CONFIRM_FAILED => {
                    return Err(FfiError::invalid(
                        "flows given with AUTOSTANDBY_CONFIRM_FAILED: a failed dump has none",
                    ));
                }
                other => {
                    return Err(FfiError::invalid(format!(
                        "outcome is {other}, expected 0 (ok) or 1 (failed)"
                    )));
                }
            };
            Ok(ctl.confirm(key, answer)?)
        })
    }
}
