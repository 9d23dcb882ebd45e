//! Where the controller's `now` comes from: the wall clock, or the host in manual mode.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::engine::UnixMillis;

/// The controller's time source.
#[derive(Debug)]
pub enum Clock {
    /// The host's wall clock.
    System,
    /// A clock that moves only through [`Clock::advance`].
    Manual(AtomicU64),
}

impl Clock {
    /// Milliseconds since the Unix epoch.
    pub fn now(&self) -> UnixMillis {
        match self {
            Self::System => system_now(),
            Self::Manual(ms) => ms.load(Ordering::Acquire),
        }
    }

    /// Moves a manual clock forward (saturating) and returns the new time; `None` for
    /// the system clock.
    pub fn advance(&self, delta_ms: u64) -> Option<UnixMillis> {
        match self {
            Self::System => None,
            Self::Manual(ms) => {
                let mut cur = ms.load(Ordering::Acquire);
                loop {
                    let next = cur.saturating_add(delta_ms);
                    match ms.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                        Ok(_) => return Some(next),
                        Err(seen) => cur = seen,
                    }
                }
            }
        }
    }
}

/// The wall clock in milliseconds since the Unix epoch (0 if it is before the epoch).
pub fn system_now() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
