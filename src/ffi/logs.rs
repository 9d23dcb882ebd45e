//! Draining the controller's captured log records.

use super::error::{FfiError, autostandby_error};
use super::guard::{autostandby_controller, with_controller};
use super::types::{autostandby_log_record, slice_mut};

/// Moves up to `cap` of the oldest captured log records into `out`; `*out_len` is the
/// count. The buffer keeps the latest 1024 records (older ones are dropped and counted in
/// `autostandby_stats.log_records_dropped`). Records are the library's `tracing` events
/// from this controller only, at INFO or more severe. With `cap` 0, `out` may be NULL.
/// Thread-safe.
///
/// # Safety
/// `c` is NULL or a live handle; `out` is NULL or valid for `cap` writes; `out_len` and
/// `err` are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn autostandby_drain_logs(
    c: *mut autostandby_controller,
    out: *mut autostandby_log_record,
    cap: usize,
    out_len: *mut usize,
    err: *mut autostandby_error,
) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_controller(c, err, |ctl| {
            // SAFETY: NULL or writable, per the caller.
            let out_len = out_len.as_mut().ok_or_else(|| FfiError::null("out_len"))?;
            *out_len = 0;
            let out = slice_mut(out, cap, "out")?;
            let mut records = Vec::new();
            ctl.drain_logs(&mut records, cap);
            for (slot, r) in out.iter_mut().zip(&records) {
                *slot = autostandby_log_record::from_record(r);
            }
            *out_len = records.len();
            Ok(())
        })
    }
}
