//! The decisions waiting for the host, with a blocking take.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::engine::Decision;

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Decision>,
    shutdown: bool,
}

/// Why [`DecisionQueue::take`] returned nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueShutdown;

/// A FIFO of decisions that pollers can wait on.
#[derive(Debug, Default)]
pub struct DecisionQueue {
    state: Mutex<State>,
    ready: Condvar,
}

impl DecisionQueue {
    /// An empty, open queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends decisions and wakes the pollers.
    pub fn push_all(&self, decisions: &mut Vec<Decision>) {
        if decisions.is_empty() {
            return;
        }
        let mut state = self.state.lock();
        state.items.extend(decisions.drain(..));
        drop(state);
        self.ready.notify_all();
    }

    /// Moves up to `max` decisions into `out`, waiting up to `timeout` for the first one.
    /// Returns `QueueShutdown` once [`DecisionQueue::shut_down`] has been called.
    pub fn take(
        &self,
        out: &mut Vec<Decision>,
        max: usize,
        timeout: Duration,
    ) -> Result<(), QueueShutdown> {
        let deadline = Instant::now().checked_add(timeout);
        let mut state = self.state.lock();
        loop {
            if state.shutdown {
                return Err(QueueShutdown);
            }
            if !state.items.is_empty() || max == 0 {
                break;
            }
            match deadline {
                Some(deadline) => {
                    if self.ready.wait_until(&mut state, deadline).timed_out() {
                        break;
                    }
                }
                None => self.ready.wait(&mut state),
            }
        }
        if state.shutdown {
            return Err(QueueShutdown);
        }
        let n = max.min(state.items.len());
        out.extend(state.items.drain(..n));
        Ok(())
    }

    /// Decisions waiting.
    pub fn len(&self) -> usize {
        self.state.lock().items.len()
    }

    /// True when no decision is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wakes every poller with `QueueShutdown`, now and for every later call.
    pub fn shut_down(&self) {
        self.state.lock().shutdown = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_blocked_take_wakes_on_push_and_on_shutdown() {
        let q = Arc::new(DecisionQueue::new());
        let q2 = q.clone();
        let poller = std::thread::spawn(move || {
            let mut out = Vec::new();
            q2.take(&mut out, 8, Duration::from_secs(30)).map(|()| out)
        });
        std::thread::sleep(Duration::from_millis(20));
        q.push_all(&mut vec![Decision::Standby { key: 3 }]);
        assert_eq!(
            poller.join().unwrap(),
            Ok(vec![Decision::Standby { key: 3 }])
        );

        let mut out = Vec::new();
        assert_eq!(q.take(&mut out, 8, Duration::ZERO), Ok(()));
        assert!(out.is_empty());

        let q3 = q.clone();
        let poller = std::thread::spawn(move || {
            let mut out = Vec::new();
            q3.take(&mut out, 8, Duration::from_secs(30))
        });
        std::thread::sleep(Duration::from_millis(20));
        q.shut_down();
        assert_eq!(poller.join().unwrap(), Err(QueueShutdown));
    }

    #[test]
    fn take_respects_max_and_keeps_order() {
        let q = DecisionQueue::new();
        q.push_all(&mut (1..=5).map(|key| Decision::Standby { key }).collect());
        let mut out = Vec::new();
        q.take(&mut out, 2, Duration::ZERO).unwrap();
        assert_eq!(
            out,
            vec![Decision::Standby { key: 1 }, Decision::Standby { key: 2 }]
        );
        assert_eq!(q.len(), 3);
    }
}
