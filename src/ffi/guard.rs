//! The controller handle, the panic guard around every entry point, and poisoning.
//!
//! A panic never crosses into C: each entry point runs its body under `catch_unwind`,
//! returns `AUTOSTANDBY_ERR_PANIC`, and marks the handle poisoned, because a panic may
//! have left the controller's invariants broken. Every later call on that handle returns
//! `AUTOSTANDBY_ERR_POISONED`; only `autostandby_controller_free` still works.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Condvar, Mutex};

use super::error::{
    AUTOSTANDBY_ERR_PANIC, AUTOSTANDBY_ERR_POISONED, AUTOSTANDBY_ERR_SHUTDOWN, AUTOSTANDBY_OK,
    FfiError, autostandby_error, write_error,
};
use crate::controller::Controller;

/// An opaque controller handle, created by `autostandby_controller_new` and released by
/// `autostandby_controller_free`.
pub struct autostandby_controller {
    pub(crate) controller: Controller,
    poisoned: AtomicBool,
    closing: AtomicBool,
    /// Calls currently inside the library; `free` waits for them to leave.
    active: Mutex<usize>,
    idle: Condvar,
}

impl autostandby_controller {
    pub(crate) fn new(controller: Controller) -> Self {
        Self {
            controller,
            poisoned: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            active: Mutex::new(0),
            idle: Condvar::new(),
        }
    }

    /// Wakes blocked pollers with SHUTDOWN and waits until no call is inside the library.
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.controller.begin_shutdown();
        let mut active = self.active.lock();
        while *active > 0 {
            self.idle.wait(&mut active);
        }
    }

    /// True once a call on this handle panicked.
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }
}

/// Decrements the in-flight count when a call leaves, even by unwinding.
struct InFlight<'a>(&'a autostandby_controller);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut active = self.0.active.lock();
        *active -= 1;
        if *active == 0 {
            self.0.idle.notify_all();
        }
    }
}

fn panic_text(payload: &(dyn Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown payload");
    format!("panic inside libautostandby: {what}")
}

fn finish(err: *mut autostandby_error, result: Result<(), FfiError>) -> u32 {
    match result {
        Ok(()) => AUTOSTANDBY_OK,
        Err(e) => {
            // SAFETY: every entry point passes its caller's `err`, NULL or valid.
            unsafe { write_error(err, &e) };
            e.code
        }
    }
}

/// Runs an entry point that takes no handle, catching panics.
pub(crate) fn call(
    err: *mut autostandby_error,
    body: impl FnOnce() -> Result<(), FfiError>,
) -> u32 {
    let result = catch_unwind(AssertUnwindSafe(body))
        .unwrap_or_else(|payload| Err(FfiError::new(AUTOSTANDBY_ERR_PANIC, panic_text(&*payload))));
    finish(err, result)
}

/// Runs an entry point on a controller handle: checks NULL, poisoning and shutdown,
/// counts the call in flight, catches panics and poisons the handle on one.
///
/// # Safety
/// `handle` is NULL or a live handle from `autostandby_controller_new`; `err` is NULL or
/// valid for writes.
pub(crate) unsafe fn with_controller(
    handle: *const autostandby_controller,
    err: *mut autostandby_error,
    body: impl FnOnce(&Controller) -> Result<(), FfiError>,
) -> u32 {
    // SAFETY: the caller guarantees the handle is NULL or live.
    let Some(handle) = (unsafe { handle.as_ref() }) else {
        return finish(err, Err(FfiError::null("controller")));
    };
    if handle.is_poisoned() {
        return finish(
            err,
            Err(FfiError::new(
                AUTOSTANDBY_ERR_POISONED,
                "an earlier call panicked; free this controller",
            )),
        );
    }
    *handle.active.lock() += 1;
    let in_flight = InFlight(handle);
    if handle.closing.load(Ordering::SeqCst) {
        return finish(
            err,
            Err(FfiError::new(
                AUTOSTANDBY_ERR_SHUTDOWN,
                "the controller is being freed",
            )),
        );
    }
    let result =
        catch_unwind(AssertUnwindSafe(|| body(&handle.controller))).unwrap_or_else(|payload| {
            handle.poisoned.store(true, Ordering::SeqCst);
            Err(FfiError::new(AUTOSTANDBY_ERR_PANIC, panic_text(&*payload)))
        });
    drop(in_flight);
    finish(err, result)
}

/// Runs a panicking body through the handle guard, as any entry point would: returns
/// `AUTOSTANDBY_ERR_PANIC` and poisons the handle. For tests of the guard only; not part
/// of the C ABI.
///
/// # Safety
/// As for any entry point: `handle` is NULL or live, `err` is NULL or writable.
#[doc(hidden)]
pub unsafe fn force_panic_for_tests(
    handle: *const autostandby_controller,
    err: *mut autostandby_error,
) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_controller(handle, err, |_| {
            panic!("forced by force_panic_for_tests");
        })
    }
}
