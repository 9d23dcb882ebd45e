//! Where the controller's `now` comes from: the monotonic clock, or the host in manual
//! mode.
//!
//! In kernel mode the engine's time is the wall clock read once at start plus the
//! monotonic time elapsed since, so a step of the wall clock (NTP, an operator's `date`)
//! neither fires every countdown at once nor postpones them: deadlines, leads and
//! backoffs run on monotonic time. Wall time still matters wherever a timestamp leaves
//! or enters the controller (status, `PersistRuntime`, a persisted runtime given at
//! registration), because the host stores those and compares them with its own clock:
//! [`Clock::to_wall`] and [`Clock::to_engine`] convert at that boundary with the offset
//! between the wall clock and the engine's time as it is at the call, so after a step
//! the values the host sees are true wall times.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::engine::UnixMillis;

/// The controller's time source.
#[derive(Debug)]
pub enum Clock {
    /// Monotonic time anchored to the host's wall clock at start.
    System(SystemClock),
    /// A clock that moves only through [`Clock::advance`]; it is its own wall clock.
    Manual(AtomicU64),
}

/// The kernel-mode clock: see the module documentation.
#[derive(Debug)]
pub struct SystemClock {
    start: Instant,
    /// The wall clock at `start`, since the Unix epoch.
    wall_at_start: Duration,
    /// Test-only: added to every wall-clock read, to step the wall clock.
    wall_step_ms: AtomicI64,
}

impl SystemClock {
    /// Anchors the engine's time to the wall clock now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            wall_at_start: since_epoch(),
            wall_step_ms: AtomicI64::new(0),
        }
    }

    fn engine_now(&self) -> Duration {
        self.wall_at_start + self.start.elapsed()
    }

    fn wall_now(&self) -> Duration {
        shift(since_epoch(), self.wall_step_ms.load(Ordering::Acquire))
    }

    /// The wall clock minus the engine's time, in whole milliseconds. Computed at
    /// nanosecond precision and rounded, so without a step it is 0 at every call and
    /// converted timestamps do not wobble by a millisecond from one call to the next.
    fn offset_ms(&self) -> i64 {
        let engine = self.engine_now().as_nanos() as i128;
        let wall = self.wall_now().as_nanos() as i128;
        let diff = wall - engine;
        let ms = (diff + diff.signum() * 500_000) / 1_000_000;
        ms.clamp(i64::MIN.into(), i64::MAX.into()) as i64
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// The engine's time: milliseconds since the Unix epoch as the wall clock was at
    /// start, advanced by monotonic time since (kernel mode); the manual clock.
    pub fn now(&self) -> UnixMillis {
        match self {
            Self::System(c) => c.engine_now().as_millis() as u64,
            Self::Manual(ms) => ms.load(Ordering::Acquire),
        }
    }

    /// The wall clock now, in milliseconds since the Unix epoch.
    pub fn wall_now(&self) -> UnixMillis {
        match self {
            Self::System(c) => c.wall_now().as_millis() as u64,
            Self::Manual(ms) => ms.load(Ordering::Acquire),
        }
    }

    fn offset_ms(&self) -> i64 {
        match self {
            Self::System(c) => c.offset_ms(),
            Self::Manual(_) => 0,
        }
    }

    /// An engine timestamp as a wall-clock timestamp, for the host.
    pub fn to_wall(&self, t: UnixMillis) -> UnixMillis {
        t.saturating_add_signed(self.offset_ms())
    }

    /// A wall-clock timestamp from the host as an engine timestamp.
    pub fn to_engine(&self, t: UnixMillis) -> UnixMillis {
        t.saturating_add_signed(self.offset_ms().saturating_neg())
    }

    /// Test-only: steps the wall clock of a system clock by `delta_ms` (the engine's
    /// time does not move); false for a manual clock.
    pub fn step_wall(&self, delta_ms: i64) -> bool {
        match self {
            Self::System(c) => {
                c.wall_step_ms.fetch_add(delta_ms, Ordering::AcqRel);
                true
            }
            Self::Manual(_) => false,
        }
    }

    /// Moves a manual clock forward (saturating) and returns the new time; `None` for
    /// the system clock.
    pub fn advance(&self, delta_ms: u64) -> Option<UnixMillis> {
        match self {
            Self::System(_) => None,
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

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

fn shift(d: Duration, ms: i64) -> Duration {
    let delta = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        d.saturating_add(delta)
    } else {
        d.saturating_sub(delta)
    }
}

/// The wall clock in milliseconds since the Unix epoch (0 if it is before the epoch).
pub fn system_now() -> UnixMillis {
    since_epoch().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wall_step_moves_the_boundary_not_the_engine() {
        let clock = Clock::System(SystemClock::new());
        let before = clock.now();
        assert_eq!(clock.to_wall(before), before, "no step, no offset");
        assert!(clock.step_wall(3_600_000));
        let after = clock.now();
        assert!(
            after - before < 1_000,
            "engine time jumped: {before} -> {after}"
        );
        assert_eq!(clock.to_wall(after), after + 3_600_000);
        assert_eq!(clock.to_engine(after + 3_600_000), after);
        assert!(clock.step_wall(-7_200_000));
        assert_eq!(clock.to_wall(after), after - 3_600_000);
        assert_eq!(clock.to_engine(after - 3_600_000), after);
    }

    #[test]
    fn a_manual_clock_is_its_own_wall_clock() {
        let clock = Clock::Manual(AtomicU64::new(1_000));
        assert!(!clock.step_wall(5));
        assert_eq!(clock.to_wall(1_000), 1_000);
        assert_eq!(clock.to_engine(1_000), 1_000);
        assert_eq!(clock.wall_now(), 1_000);
    }
}
