//! A deliberate data race, run only by `scripts/tsan.sh` under ThreadSanitizer, which
//! expects it to be reported. A clean TSan run of the controller's tests means something
//! only if the build really is instrumented and a report really fails the run; this is
//! the proof, so a broken sanitizer setup (flags lost, std not rebuilt, reports not
//! fatal) fails `make tsan` instead of passing it silently.
//!
//! Ignored by default: outside ThreadSanitizer the race is undefined behaviour that
//! nothing would detect.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};

/// A counter shared between threads with no synchronisation at all.
struct Racy(UnsafeCell<u64>);

// SAFETY: it is not; sharing it unsynchronised is the race this test exists to show.
unsafe impl Sync for Racy {}

impl Racy {
    fn set(&self, value: u64) {
        // SAFETY: none; another thread writes the same cell concurrently.
        unsafe { self.0.get().write_volatile(value) };
    }
}

#[test]
#[ignore = "a deliberate data race: run only under ThreadSanitizer, by scripts/tsan.sh"]
fn tsan_reports_an_unsynchronised_write() {
    let shared = Racy(UnsafeCell::new(0));
    // Both threads keep writing while both are alive, and the flag is relaxed so it orders
    // nothing: TSan can miss a race with a thread that has already exited, or with
    // accesses right after a release that the other thread acquires later (a single
    // write on each side was reported about half the time).
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                shared.set(1);
                std::thread::yield_now();
            }
        });
        for i in 0..1_000 {
            shared.set(i);
            std::thread::yield_now();
        }
        stop.store(true, Ordering::Relaxed);
    });
    // Reached only when no sanitizer stopped the process.
    let value = shared.0.into_inner();
    assert!(value < 1_000, "{value}");
}
