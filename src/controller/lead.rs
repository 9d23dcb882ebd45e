//! Kernel mode's confirmation lead: how long before a deadline the confirmation dump is
//! asked for. A fixed lead is too short on a host whose dumps are slow (a large table,
//! a loaded machine): the confirmation would end after the deadline and every standby
//! of an idle storm would run late. So the lead follows the dumps this host has run.

use std::time::Duration;

/// Dumps remembered; the slowest of them sizes the lead.
const RECENT: usize = 8;
/// The lead is this many times the slowest recent dump...
const FACTOR: u64 = 3;
/// ...rounded up to a multiple of this, so it changes (and every deadline is armed
/// again) only when the dump time moves by a real amount.
const STEP_MS: u64 = 250;

/// The lead in force and the dump times it rests on.
#[derive(Debug)]
pub(crate) struct ConfirmLead {
    /// The configured lead: never less.
    base_ms: u64,
    /// Wall times of the last dumps, in milliseconds.
    recent: [u64; RECENT],
    next: usize,
    current_ms: u64,
}

impl ConfirmLead {
    pub(crate) fn new(base_ms: u64) -> Self {
        Self {
            base_ms,
            recent: [0; RECENT],
            next: 0,
            current_ms: base_ms,
        }
    }

    /// Records how long a successful dump took; returns the new lead when it changed.
    pub(crate) fn dump_took(&mut self, took: Duration) -> Option<u64> {
        // Whole milliseconds, rounded up: a dump is never free.
        let ms = took.as_micros().div_ceil(1_000);
        self.recent[self.next] = u64::try_from(ms).unwrap_or(u64::MAX);
        self.next = (self.next + 1) % RECENT;
        let slowest = self.recent.iter().copied().max().unwrap_or(0);
        let lead = slowest
            .saturating_mul(FACTOR)
            .checked_next_multiple_of(STEP_MS)
            .unwrap_or(u64::MAX)
            .max(self.base_ms);
        (lead != self.current_ms).then(|| {
            self.current_ms = lead;
            lead
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn fast_dumps_keep_the_configured_lead() {
        let mut l = ConfirmLead::new(2_000);
        for _ in 0..20 {
            assert_eq!(l.dump_took(ms(40)), None);
        }
    }

    #[test]
    fn a_slow_dump_lengthens_the_lead_until_it_is_forgotten() {
        let mut l = ConfirmLead::new(2_000);
        // 3 x 1,020 ms, rounded up to 250 ms.
        assert_eq!(l.dump_took(ms(1_020)), Some(3_250));
        for _ in 0..RECENT - 1 {
            assert_eq!(l.dump_took(ms(30)), None);
        }
        // The slow dump has left the window.
        assert_eq!(l.dump_took(ms(30)), Some(2_000));
    }

    #[test]
    fn small_changes_do_not_move_the_lead() {
        let mut l = ConfirmLead::new(0);
        assert_eq!(l.dump_took(ms(700)), Some(2_250));
        assert_eq!(l.dump_took(ms(710)), None);
        assert_eq!(l.dump_took(ms(760)), Some(2_500));
    }
}
