//! Controller lifecycle, instances, decisions, status and statistics.

use std::ffi::CStr;
use std::path::PathBuf;
use std::time::Duration;

use super::error::{AUTOSTANDBY_ERR_STRUCT_SIZE, FfiError, autostandby_error};
use super::guard::{autostandby_controller, call, with_controller};
use super::types::*;
use crate::controller::{
    Controller, ControllerConfig, DEFAULT_MAX_CONCURRENT_RESTORES, DEFAULT_MAX_CONCURRENT_STANDBYS,
    DEFAULT_RCVBUF_BYTES, DEFAULT_RESYNC_INTERVAL_MS, EventsSysctlMode, Mode,
};
use crate::engine::{
    BeginStandby, Decision, Reason, RecommendQuery, StandbyOutcome, StandbyRetry, WakeOutcome,
};

/// `sizeof(autostandby_config)` in the first release, which ended at `manual_start_ms`.
/// Callers built against that header still pass it; the later fields take defaults.
const CONFIG_SIZE_V1: usize =
    std::mem::offset_of!(autostandby_config, manual_start_ms) + std::mem::size_of::<u64>();

/// `sizeof(struct autostandby_config)` in the second layout, which ended at
/// `confirm_lead_ms`.
const CONFIG_SIZE_V2: usize =
    std::mem::offset_of!(autostandby_config, confirm_lead_ms) + std::mem::size_of::<u64>();

/// `sizeof(struct autostandby_stats)` in the third layout, which ended at
/// `wake_failures`.
const STATS_SIZE_V3: usize =
    std::mem::offset_of!(autostandby_stats, wake_failures) + std::mem::size_of::<u64>();

/// `sizeof(struct autostandby_stats)` in the first release, which ended at
/// `log_records_dropped`. Such callers get every field their struct has.
const STATS_SIZE_V1: usize =
    std::mem::offset_of!(autostandby_stats, log_records_dropped) + std::mem::size_of::<u64>();

/// `sizeof(struct autostandby_stats)` in the second layout, which ended at
/// `observer_failed` (padded to the struct's 8-byte alignment).
const STATS_SIZE_V2: usize = (std::mem::offset_of!(autostandby_stats, observer_failed)
    + std::mem::size_of::<bool>())
.next_multiple_of(std::mem::align_of::<autostandby_stats>());

/// How much of a caller struct that has grown by appending fields this library reads or
/// writes: all of ours when the caller's is at least as large (a newer caller's extra
/// fields are left alone), or exactly an older release's size. Any other size is a
/// caller bug (a garbage or truncated `struct_size`) and is refused.
fn versioned_len<T>(struct_size: u32, older: &[usize], what: &str) -> Result<usize, FfiError> {
    let size = struct_size as usize;
    let ours = std::mem::size_of::<T>();
    if size >= ours {
        return Ok(ours);
    }
    if older.contains(&size) {
        return Ok(size);
    }
    Err(FfiError::new(
        AUTOSTANDBY_ERR_STRUCT_SIZE,
        format!(
            "{what}.struct_size is {size}: expected sizeof from this header ({ours}) or \
             from an older release ({older:?})"
        ),
    ))
}

/// Writes through an output pointer that must not be NULL.
///
/// # Safety
/// `ptr` is NULL or valid for writes.
unsafe fn out<'a, T>(ptr: *mut T, what: &str) -> Result<&'a mut T, FfiError> {
    // SAFETY: NULL or valid, per the caller.
    unsafe { ptr.as_mut() }.ok_or_else(|| FfiError::null(what))
}

/// Reads the first field (`struct_size`) of a caller struct, before anything else.
///
/// # Safety
/// `ptr` is NULL or points to at least a `uint32_t`.
unsafe fn leading_size<T>(ptr: *const T, what: &str) -> Result<u32, FfiError> {
    if ptr.is_null() {
        return Err(FfiError::null(what));
    }
    // SAFETY: non-NULL; every struct with a size starts with a `uint32_t struct_size`.
    Ok(unsafe { ptr.cast::<u32>().read() })
}

/// Reads the caller's config, however many fields its release has: the rest stay zero,
/// which is every field's default.
///
/// # Safety
/// `ptr` is NULL or valid for reads of its own `struct_size` bytes.
unsafe fn read_config(ptr: *const autostandby_config) -> Result<autostandby_config, FfiError> {
    // SAFETY: NULL or valid, per the caller.
    let size = unsafe { leading_size(ptr, "config")? };
    let len =
        versioned_len::<autostandby_config>(size, &[CONFIG_SIZE_V1, CONFIG_SIZE_V2], "config")?;
    let mut c = autostandby_config::default();
    // SAFETY: the caller's struct has at least `len` readable bytes (its `struct_size`),
    // `len` is at most `size_of::<autostandby_config>()`, and the two do not overlap.
    // Every `len` accepted ends on a field boundary, so no field is read in part.
    unsafe {
        std::ptr::copy_nonoverlapping(ptr.cast::<u8>(), (&raw mut c).cast::<u8>(), len);
    }
    Ok(c)
}

fn config_from_c(c: &autostandby_config) -> Result<ControllerConfig, FfiError> {
    let (mode, base) = match c.mode {
        AUTOSTANDBY_MODE_KERNEL => (Mode::Kernel, ControllerConfig::kernel()),
        AUTOSTANDBY_MODE_MANUAL => (
            Mode::Manual {
                start_ms: c.manual_start_ms,
            },
            ControllerConfig::manual(c.manual_start_ms),
        ),
        other => {
            return Err(FfiError::invalid(format!(
                "config.mode is {other}, expected 0 (kernel) or 1 (manual)"
            )));
        }
    };
    let events_sysctl = match c.events_sysctl {
        AUTOSTANDBY_EVENTS_SYSCTL_REPORT => EventsSysctlMode::ReportOnly,
        AUTOSTANDBY_EVENTS_SYSCTL_ENABLE => EventsSysctlMode::Enable,
        other => {
            return Err(FfiError::invalid(format!(
                "config.events_sysctl is {other}, expected 0 (report) or 1 (enable)"
            )));
        }
    };
    let netns = if c.netns_path.is_null() {
        None
    } else {
        // SAFETY: a non-NULL `netns_path` is a NUL-terminated string, per the contract.
        let text = unsafe { CStr::from_ptr(c.netns_path) };
        let text = text
            .to_str()
            .map_err(|_| FfiError::invalid("config.netns_path is not UTF-8"))?;
        if text.is_empty() {
            return Err(FfiError::invalid("config.netns_path is empty"));
        }
        Some(PathBuf::from(text))
    };
    let standby_retry = match c.standby_retry {
        AUTOSTANDBY_STANDBY_RETRY_COUNTDOWN => StandbyRetry::Countdown,
        AUTOSTANDBY_STANDBY_RETRY_BACKOFF => StandbyRetry::Backoff,
        other => {
            return Err(FfiError::invalid(format!(
                "config.standby_retry is {other}, expected 0 (countdown) or 1 (backoff)"
            )));
        }
    };
    let nonzero = |v: u64, default: u64| if v == 0 { default } else { v };
    // Kernel mode always confirms (a dump); only a manual host may opt in or out.
    let confirm_before_standby = match mode {
        Mode::Kernel => base.confirm_before_standby,
        Mode::Manual { .. } => c.confirm_before_standby,
    };
    Ok(ControllerConfig {
        mode,
        netns,
        rcvbuf_bytes: if c.rcvbuf_bytes == 0 {
            DEFAULT_RCVBUF_BYTES
        } else {
            c.rcvbuf_bytes
        },
        max_concurrent_standbys: nonzero(
            c.max_concurrent_standbys.into(),
            DEFAULT_MAX_CONCURRENT_STANDBYS.into(),
        ) as u32,
        max_concurrent_restores: nonzero(
            c.max_concurrent_restores.into(),
            DEFAULT_MAX_CONCURRENT_RESTORES.into(),
        ) as u32,
        resync_interval_ms: nonzero(c.resync_interval_ms, DEFAULT_RESYNC_INTERVAL_MS),
        events_sysctl,
        standby_retry,
        confirm_before_standby,
        confirm_lead_ms: nonzero(c.confirm_lead_ms, base.confirm_lead_ms),
        hold_packets_in_standby: c.hold_packets_in_standby,
        hold_resolve_window_ms: c.hold_resolve_window_ms,
        ..base
    })
}

/// Creates a controller and stores its handle in `*out`.
///
/// `config` is borrowed for the call only; its `struct_size` may be this header's
/// `sizeof(autostandby_config)` or an older release's (the missing fields take their
/// defaults), anything else is `AUTOSTANDBY_ERR_STRUCT_SIZE`. On success the caller owns the handle and
/// must release it with `autostandby_controller_free`; on failure `*out` is set to NULL.
/// Kernel mode opens conntrack sockets (needs CAP_NET_ADMIN: `AUTOSTANDBY_ERR_PERMISSION`
/// otherwise) and starts the controller's threads. A `netns_path` that is not a network
/// namespace file (a FIFO, a regular file, another namespace type) is
/// `AUTOSTANDBY_ERR_INVALID_ARGUMENT`, refused without blocking. Thread-safe.
///
/// # Safety
/// `config` is NULL or points to `struct_size` readable bytes of an
/// `autostandby_config` (with `netns_path` NULL or a NUL-terminated string); `out` is NULL or writable; `err` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn autostandby_controller_new(
    config: *const autostandby_config,
    out: *mut *mut autostandby_controller,
    err: *mut autostandby_error,
) -> u32 {
    call(err, || {
        if out.is_null() {
            return Err(FfiError::null("out"));
        }
        // SAFETY: non-NULL and writable, per the caller.
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: NULL or valid for its `struct_size`, per the caller.
        let raw = unsafe { read_config(config)? };
        let config = config_from_c(&raw)?;
        let controller = Controller::new(config)?;
        let handle = Box::new(autostandby_controller::new(controller));
        // SAFETY: checked non-NULL above.
        unsafe { out.write(Box::into_raw(handle)) };
        Ok(())
    })
}

/// Stops the controller, joins its threads and frees it. NULL is a no-op.
///
/// Blocked `autostandby_poll_decisions` calls on other threads return
/// `AUTOSTANDBY_ERR_SHUTDOWN`, and this call waits for every call in progress on the
/// handle to return before freeing it. No call may *start* on the handle once this one
/// has: the handle is invalid afterwards. Works on a poisoned handle.
///
/// # Safety
/// `c` is NULL or a handle from `autostandby_controller_new` not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn autostandby_controller_free(c: *mut autostandby_controller) {
    if c.is_null() {
        return;
    }
    // A panic while stopping cannot be reported; it must still not cross into C.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: a live handle, per the caller.
        unsafe { (*c).close() };
        // SAFETY: created by Box::into_raw in `autostandby_controller_new`; no call is
        // inside the library on it any more.
        drop(unsafe { Box::from_raw(c) });
    }));
}

/// Registers an instance under the host-chosen `key`.
///
/// In kernel mode the instance reports status `active`, reason `resync_pending` (no
/// countdown, no standby) until a dump of its addresses that began after this call has
/// been applied (typically tens of milliseconds); then its persisted runtime is applied
/// (live flows clear it, none resumes it). In manual mode the countdown starts at once.
///
/// `inst` and everything it points to are borrowed for the call only.
/// Errors: `AUTOSTANDBY_ERR_ALREADY_EXISTS` for a used key, `AUTOSTANDBY_ERR_ADDRESS_IN_USE`
/// for an address another instance owns, `AUTOSTANDBY_ERR_INVALID_POLICY` with the message
/// `"<field>: <text>"`. Nothing changes on error. Thread-safe.
///
/// # Safety
/// `c` is NULL or a live handle; `inst` is NULL or a valid `autostandby_instance` whose
/// arrays are valid for their lengths; `err` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn autostandby_register(
    c: *mut autostandby_controller,
    key: u64,
    inst: *const autostandby_instance,
    err: *mut autostandby_error,
) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_controller(c, err, |ctl| {
            let spec = instance_spec(inst)?;
            Ok(ctl.register(key, spec)?)
        })
    }
}

/// # Safety
/// `inst` is NULL or a valid `autostandby_instance`.
unsafe fn instance_spec(
    inst: *const autostandby_instance,
) -> Result<crate::engine::InstanceSpec, FfiError> {
    // SAFETY: NULL or valid, per the caller.
    let size = unsafe { leading_size(inst, "instance")? };
    check_size::<autostandby_instance>(size, "instance")?;
    // SAFETY: checked non-NULL and large enough; arrays valid per the caller.
    unsafe { (*inst).to_spec() }
}

/// Replaces the spec of a registered instance (policy, addresses, lifecycle, runtime).
///
/// Same borrowing and errors as `autostandby_register`, plus `AUTOSTANDBY_ERR_NOT_FOUND`.
/// Thread-safe.
///
/// # Safety
/// As for `autostandby_register`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn autostandby_update(
    c: *mut autostandby_controller,
    key: u64,
    inst: *const autostandby_instance,
    err: *mut autostandby_error,
) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_controller(c, err, |ctl| {
            let spec = instance_spec(inst)?;
            Ok(ctl.update(key, spec)?)
        })
    }
}

/// Forgets an instance (`AUTOSTANDBY_ERR_NOT_FOUND` for an unknown key). Thread-safe.
///
/// # Safety
/// `c` is NULL or a live handle; `err` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn autostandby_unregister(
    c: *mut autostandby_controller,
    key: u64,
    err: *mut autostandby_error,
) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe { with_controller(c, err, |ctl| Ok(ctl.unregister(key)?)) }
}

fn decision_to_c(d: &Decision) -> autostandby_decision {
    match *d {
        Decision::Standby { key } => autostandby_decision {
            kind: AUTOSTANDBY_DECISION_STANDBY,
            key,
            ..Default::default()
        },
        Decision::Wake {
            key,
            protocol,
            flow,
        } => autostandby_decision {
            kind: AUTOSTANDBY_DECISION_WAKE,
            key,
            protocol,
            src: autostandby_ip::from_ip(flow.src),
            src_port: flow.src_port,
            dst: autostandby_ip::from_ip(flow.dst),
            dst_port: flow.dst_port,
            ..Default::default()
        },
        Decision::PersistRuntime { key, runtime } => autostandby_decision {
            kind: AUTOSTANDBY_DECISION_PERSIST_RUNTIME,
            key,
            runtime_present: runtime.is_some(),
            runtime: runtime
                .as_ref()
                .map(autostandby_runtime::from_runtime)
                .unwrap_or_default(),
            ..Default::default()
        },
        Decision::Confirm { key } => autostandby_decision {
            kind: AUTOSTANDBY_DECISION_CONFIRM,
            key,
            ..Default::default()
        },
    }
}

/// Takes up to `cap` pending decisions, oldest first, into `out`; `*out_len` is the count.
///
/// Blocks up to `timeout_ms` until at least one decision is ready (0: never blocks). In
/// kernel mode a `PERSIST_RUNTIME` that comes without other decisions ends the block up
/// to 50 ms after it is ready (it is taken at once by a call that finds it queued), so a
/// busy instance whose countdown flips with every connection does not wake the host each
/// time.
/// Returns `AUTOSTANDBY_OK` with `*out_len == 0` on timeout, and
/// `AUTOSTANDBY_ERR_SHUTDOWN` once `autostandby_controller_free` has begun. With `cap`
/// 0, `out` may be NULL and nothing is taken. Thread-safe: concurrent pollers each get
/// distinct decisions.
///
/// # Safety
/// `c` is NULL or a live handle; `out` is NULL or valid for `cap` writes; `out_len` is
/// NULL or writable; `err` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn autostandby_poll_decisions(
    c: *mut autostandby_controller,
    out: *mut autostandby_decision,
    cap: usize,
    out_len: *mut usize,
    timeout_ms: u32,
    err: *mut autostandby_error,
) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_controller(c, err, |ctl| {
            let out_len = self::out(out_len, "out_len")?;
            *out_len = 0;
            let out = slice_mut(out, cap, "out")?;
            let mut taken = Vec::new();
            ctl.poll_decisions(&mut taken, cap, Duration::from_millis(timeout_ms.into()))?;
            for (slot, d) in out.iter_mut().zip(&taken) {
                *slot = decision_to_c(d);
            }
            *out_len = taken.len();
            Ok(())
        })
    }
}

/// The host's last "still idle?" check, right before it snapshots the instance.
///
/// `*out_proceed` true: snapshot now (the standby is marked executing; report it with
/// `autostandby_report_standby`), and `*out_reason` is `AUTOSTANDBY_REASON_READY_FOR_STANDBY`.
/// False: do not snapshot, no report is needed, `*out_reason` says why.
/// `AUTOSTANDBY_ERR_NO_STANDBY_OUTSTANDING` when no standby was decided. Thread-safe.
///
/// # Safety
/// `c` is NULL or a live handle; `out_proceed`, `out_reason`, `err` are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn autostandby_begin_standby(
    c: *mut autostandby_controller,
    key: u64,
    out_proceed: *mut bool,
    out_reason: *mut u32,
    err: *mut autostandby_error,
) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_controller(c, err, |ctl| {
            let proceed = out(out_proceed, "out_proceed")?;
            let reason = out(out_reason, "out_reason")?;
            let (p, r) = match ctl.begin_standby(key)? {
                BeginStandby::Proceed => (true, Reason::ReadyForStandby),
                BeginStandby::Cancelled(r) => (false, r),
            };
            *proceed = p;
            *reason = r as u32;
            Ok(())
        })
    }
}

/// The host's report on a standby it began: `outcome` is one of `AUTOSTANDBY_OUTCOME_*`.
/// Thread-safe.
///
/// # Safety
/// `c` is NULL or a live handle; `err` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn autostandby_report_standby(
    c: *mut autostandby_controller,
    key: u64,
    outcome: u32,
    err: *mut autostandby_error,
) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_controller(c, err, |ctl| {
            let outcome = match outcome {
                AUTOSTANDBY_OUTCOME_SUCCESS => StandbyOutcome::Success,
                AUTOSTANDBY_OUTCOME_FAILED => StandbyOutcome::Failed,
                AUTOSTANDBY_OUTCOME_NOT_FOUND => StandbyOutcome::NotFound,
                other => {
                    return Err(FfiError::invalid(format!(
                        "outcome is {other}, expected 0..=2"
                    )));
                }
            };
            Ok(ctl.report_standby(key, outcome)?)
        })
    }
}

/// Hands back a `STANDBY` decision the host took from `autostandby_poll_decisions` but
/// will not carry out (it is shutting down, abandoned the worker, or dropped the
/// decision as a duplicate), without calling `autostandby_begin_standby`.
///
/// Every taken `STANDBY` holds one of the `max_concurrent_standbys` slots until it is
/// begun and reported, cancelled by `autostandby_begin_standby`, or declined here; a
/// decision dropped without any of these keeps its slot forever. Declining frees the
/// slot at once; the instance's countdown carries on as if the decision had not been
/// taken, so an instance still due is decided again (confirmed again first when
/// confirmation is on). `AUTOSTANDBY_ERR_STANDBY_IN_PROGRESS` after
/// `autostandby_begin_standby` said proceed (report the outcome instead);
/// `AUTOSTANDBY_ERR_NO_STANDBY_OUTSTANDING` when no standby was decided for `key`;
/// `AUTOSTANDBY_ERR_NOT_FOUND` for an unknown key. Thread-safe.
///
/// # Safety
/// `c` is NULL or a live handle; `err` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn autostandby_decline_standby(
    c: *mut autostandby_controller,
    key: u64,
    err: *mut autostandby_error,
) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe { with_controller(c, err, |ctl| Ok(ctl.decline_standby(key)?)) }
}

/// The host's report on the restore it attempted for an `AUTOSTANDBY_DECISION_WAKE`:
/// `outcome` is `AUTOSTANDBY_WAKE_RESTORED`, `AUTOSTANDBY_WAKE_FAILED` or
/// `AUTOSTANDBY_WAKE_DECLINED`.
///
/// Each WAKE holds one of the `max_concurrent_restores` slots until this report or an
/// update of the instance out of Standby (or its unregistration); WAKEs beyond them
/// wait, in the order of the flows that asked. Report every WAKE taken.
///
/// After a failure, while the instance is still in Standby, its status is `error` with
/// reason `restore_failed`, and the next qualifying new flow after a backoff (1 s,
/// doubled per consecutive failure, capped at 30 s) emits another WAKE; without new
/// traffic nothing is retried. A success, a lifecycle update out of Standby or a
/// successful standby clears it. A report for an instance no longer in Standby is
/// accepted and changes nothing. `AUTOSTANDBY_ERR_NOT_FOUND` for an unknown key.
/// Thread-safe.
///
/// # Safety
/// `c` is NULL or a live handle; `err` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn autostandby_report_wake(
    c: *mut autostandby_controller,
    key: u64,
    outcome: u32,
    err: *mut autostandby_error,
) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_controller(c, err, |ctl| {
            let outcome = match outcome {
                AUTOSTANDBY_WAKE_RESTORED => WakeOutcome::Success,
                AUTOSTANDBY_WAKE_FAILED => WakeOutcome::Failed,
                AUTOSTANDBY_WAKE_DECLINED => WakeOutcome::Declined,
                other => {
                    return Err(FfiError::invalid(format!(
                        "outcome is {other}, expected 0..=2"
                    )));
                }
            };
            Ok(ctl.report_wake(key, outcome)?)
        })
    }
}

/// Checks an output struct's `struct_size` before anything is written to it.
///
/// # Safety
/// `ptr` is NULL or valid for reads and writes of a `T` whose first field is `struct_size`.
unsafe fn sized_out<'a, T>(ptr: *mut T, what: &str) -> Result<&'a mut T, FfiError> {
    // SAFETY: NULL or valid, per the caller.
    let size = unsafe { leading_size(ptr.cast_const(), what)? };
    if (size as usize) < std::mem::size_of::<T>() {
        return Err(FfiError::new(
            AUTOSTANDBY_ERR_STRUCT_SIZE,
            format!(
                "{what}.struct_size is {size}, this library needs at least {}",
                std::mem::size_of::<T>()
            ),
        ));
    }
    // SAFETY: non-NULL and large enough.
    Ok(unsafe { &mut *ptr })
}

/// Places a hold: no standby before one idle timeout from now (last write wins, kept in
/// memory only). Fills `*out` (whose `struct_size` the caller sets) with the new status.
/// `AUTOSTANDBY_ERR_STANDBY_IN_PROGRESS` while a standby executes. Thread-safe.
///
/// # Safety
/// `c` is NULL or a live handle; `out` is NULL or a writable `autostandby_status` with
/// `struct_size` set; `err` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn autostandby_hold(
    c: *mut autostandby_controller,
    key: u64,
    out: *mut autostandby_status,
    err: *mut autostandby_error,
) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_controller(c, err, |ctl| {
            let out = sized_out(out, "status")?;
            out.fill(&ctl.hold(key)?);
            Ok(())
        })
    }
}

/// Status of one instance into `*out` (whose `struct_size` the caller sets). Never waits
/// on I/O. Thread-safe.
///
/// # Safety
/// As for `autostandby_hold`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn autostandby_status(
    c: *mut autostandby_controller,
    key: u64,
    out: *mut autostandby_status,
    err: *mut autostandby_error,
) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_controller(c, err, |ctl| {
            let out = sized_out(out, "status")?;
            out.fill(&ctl.status(key)?);
            Ok(())
        })
    }
}

/// The flows keeping an instance awake: fills up to `cap` entries of `out` and sets
/// `*out_len` to the total, which may exceed `cap` (call again with a larger array).
/// With `cap` 0, `out` may be NULL. Thread-safe.
///
/// # Safety
/// `c` is NULL or a live handle; `out` is NULL or valid for `cap` writes; `out_len` and
/// `err` are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn autostandby_explain(
    c: *mut autostandby_controller,
    key: u64,
    out: *mut autostandby_flow_info,
    cap: usize,
    out_len: *mut usize,
    err: *mut autostandby_error,
) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_controller(c, err, |ctl| {
            let out_len = self::out(out_len, "out_len")?;
            *out_len = 0;
            let out = slice_mut(out, cap, "out")?;
            let mut flows = Vec::new();
            ctl.explain(key, &mut flows)?;
            for (slot, f) in out.iter_mut().zip(&flows) {
                *slot = autostandby_flow_info::from_kept(f);
            }
            *out_len = flows.len();
            Ok(())
        })
    }
}

/// What candidate idle timeouts would have done over an instance's observed idle gaps,
/// and the recommended one. `query` is NULL (every default) or has `struct_size` at least
/// this header's; `*out` (whose `struct_size` the caller sets) gets the summary; up to
/// `cap` entries of `outcomes` get one outcome per candidate, ascending, and `*out_len`
/// the number of candidates, which may exceed `cap` (at most
/// `AUTOSTANDBY_RECOMMEND_MAX_CANDIDATES`). With `cap` 0, `outcomes` may be NULL. A
/// candidate of 0, too many candidates, or candidates NULL with a length is
/// `AUTOSTANDBY_ERR_INVALID_ARGUMENT`. Never waits on I/O. Thread-safe.
///
/// # Safety
/// `c` is NULL or a live handle; `query` is NULL or points to `struct_size` readable
/// bytes of an `autostandby_recommend_query` (with `candidates_ms` valid for
/// `candidates_len` reads); `out` is NULL or a writable `autostandby_recommendation`
/// with `struct_size` set; `outcomes` is NULL or valid for `cap` writes; `out_len` and
/// `err` are NULL or writable.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn autostandby_recommend(
    c: *mut autostandby_controller,
    key: u64,
    query: *const autostandby_recommend_query,
    out: *mut autostandby_recommendation,
    outcomes: *mut autostandby_timeout_outcome,
    cap: usize,
    out_len: *mut usize,
    err: *mut autostandby_error,
) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_controller(c, err, |ctl| {
            let out_len = self::out(out_len, "out_len")?;
            *out_len = 0;
            let out = sized_out(out, "out")?;
            let outcomes = slice_mut(outcomes, cap, "outcomes")?;
            let q = if query.is_null() {
                RecommendQuery::default()
            } else {
                let size = leading_size(query, "query")?;
                check_size::<autostandby_recommend_query>(size, "query")?;
                let q = &*query;
                RecommendQuery {
                    candidates_ms: slice(q.candidates_ms, q.candidates_len, "query.candidates_ms")?
                        .to_vec(),
                    minutes_per_wake: q.minutes_per_wake,
                }
            };
            let r = ctl.recommend(key, &q)?;
            *out = autostandby_recommendation {
                struct_size: out.struct_size,
                minutes_per_wake: r.minutes_per_wake,
                has_observed_since: r.observed_since.is_some(),
                observed_since_ms: r.observed_since.unwrap_or(0),
                observed_ms: r.observed_ms,
                gaps: r.gaps,
                has_open_gap: r.open_gap_ms.is_some(),
                open_gap_ms: r.open_gap_ms.unwrap_or(0),
                has_recommended: r.recommended_timeout_ms.is_some(),
                recommended_timeout_ms: r.recommended_timeout_ms.unwrap_or(0),
            };
            for (slot, o) in outcomes.iter_mut().zip(&r.outcomes) {
                *slot = autostandby_timeout_outcome::from_outcome(o);
            }
            *out_len = r.outcomes.len();
            Ok(())
        })
    }
}

/// Controller-wide counters into `*out` (whose `struct_size` the caller sets).
///
/// `struct_size` may be this header's `sizeof(struct autostandby_stats)` or an older
/// release's: only the fields that size covers are written. Anything else is
/// `AUTOSTANDBY_ERR_STRUCT_SIZE`. Thread-safe.
///
/// # Safety
/// `c` is NULL or a live handle; `out` is NULL or points to `struct_size` writable bytes
/// of an `autostandby_stats`; `err` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn autostandby_stats(
    c: *mut autostandby_controller,
    out: *mut autostandby_stats,
    err: *mut autostandby_error,
) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_controller(c, err, |ctl| {
            // SAFETY: NULL or valid for its `struct_size`, per the caller.
            let size = leading_size(out.cast_const(), "stats")?;
            let len = versioned_len::<autostandby_stats>(
                size,
                &[STATS_SIZE_V1, STATS_SIZE_V2, STATS_SIZE_V3],
                "stats",
            )?;
            let s = ctl.stats();
            let full = autostandby_stats {
                struct_size: size,
                instances: s.engine.instances,
                tracked_flows: s.engine.tracked_flows,
                flow_events: s.engine.flow_events,
                flow_events_unmatched: s.engine.flow_events_unmatched,
                standby_decisions: s.engine.standby_decisions,
                wake_decisions: s.engine.wake_decisions,
                standby_in_flight: s.engine.standby_in_flight,
                standby_queued: s.engine.standby_queued,
                resyncs: s.engine.resyncs,
                events_lost: s.events_lost,
                observer_errors: s.observer_errors,
                decisions_pending: s.decisions_pending,
                log_records_dropped: s.log_records_dropped,
                observer_failed: s.observer_failed,
                decisions_merged: s.decisions_merged,
                conntrack_events_off: s.conntrack_events_off,
                suspect_ends: s.engine.suspect_ends,
                wake_failures: s.engine.wake_failures,
                wakes_suppressed_not_counted_protocol: s
                    .engine
                    .wakes_suppressed
                    .not_counted_protocol,
                wakes_suppressed_not_counted_port: s.engine.wakes_suppressed.not_counted_port,
                wakes_suppressed_ignored_source: s.engine.wakes_suppressed.ignored_source,
                wakes_suppressed_source_not_allowed: s.engine.wakes_suppressed.source_not_allowed,
                wakes_suppressed_restore_backoff: s.engine.wakes_suppressed.restore_backoff,
                restores_in_flight: s.engine.restores_in_flight,
                restores_queued: s.engine.restores_queued,
            };
            // SAFETY: the caller's struct has `struct_size` writable bytes, `len` is no
            // more than that nor than ours, and ends on a field boundary.
            std::ptr::copy_nonoverlapping((&raw const full).cast::<u8>(), out.cast::<u8>(), len);
            Ok(())
        })
    }
}
