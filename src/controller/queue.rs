//! The decisions waiting for the host, with a blocking take.
//!
//! At most one decision per instance and kind waits: a host that stops polling must not
//! make the queue grow without bound, and a second copy would only repeat the first (a
//! `Standby`, `Wake` or `Confirm` already waiting says the same thing; a newer
//! `PersistRuntime` replaces the older one's runtime in place, latest wins). Merged
//! decisions are counted.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::engine::{Decision, InstanceKey};

/// Which kind of decision, for the one-per-instance-and-kind rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Standby,
    Wake,
    Persist,
    Confirm,
}

fn slot_of(d: &Decision) -> (InstanceKey, Kind) {
    match *d {
        Decision::Standby { key } => (key, Kind::Standby),
        Decision::Wake { key, .. } => (key, Kind::Wake),
        Decision::PersistRuntime { key, .. } => (key, Kind::Persist),
        Decision::Confirm { key } => (key, Kind::Confirm),
    }
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Decision>,
    /// Sequence number (`popped` + index) of the waiting decision of each slot.
    waiting: HashMap<(InstanceKey, Kind), u64>,
    /// Decisions taken since the queue was created.
    popped: u64,
    merged: u64,
    shutdown: bool,
    /// Decisions were appended without waking the pollers (see
    /// [`DecisionQueue::push_all_deferring`]).
    unannounced: bool,
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
        self.push(decisions, false);
    }

    /// Appends decisions, waking the pollers only if one of them is not a
    /// `PersistRuntime`. Returns true when the pollers were left asleep with decisions
    /// waiting: [`DecisionQueue::announce`] is then due soon. A poller that is not
    /// blocked takes them at once either way.
    pub fn push_all_deferring(&self, decisions: &mut Vec<Decision>) -> bool {
        self.push(decisions, true)
    }

    /// Wakes the pollers if decisions were appended without waking them.
    pub fn announce(&self) {
        let mut state = self.state.lock();
        if std::mem::take(&mut state.unannounced) {
            self.ready.notify_all();
        }
    }

    fn push(&self, decisions: &mut Vec<Decision>, defer_persist: bool) -> bool {
        if decisions.is_empty() {
            return false;
        }
        let urgent = !defer_persist
            || decisions
                .iter()
                .any(|d| !matches!(d, Decision::PersistRuntime { .. }));
        let mut state = self.state.lock();
        let state = &mut *state;
        for d in decisions.drain(..) {
            let slot = slot_of(&d);
            if let Some(&seq) = state.waiting.get(&slot) {
                state.merged += 1;
                if let Decision::PersistRuntime { .. } = d {
                    let at = (seq - state.popped) as usize;
                    state.items[at] = d;
                }
                continue;
            }
            state
                .waiting
                .insert(slot, state.popped + state.items.len() as u64);
            state.items.push_back(d);
        }
        if urgent {
            state.unannounced = false;
            self.ready.notify_all();
            false
        } else {
            state.unannounced = true;
            true
        }
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
        let state = &mut *state;
        let n = max.min(state.items.len());
        for d in state.items.drain(..n) {
            state.waiting.remove(&slot_of(&d));
            out.push(d);
        }
        state.popped += n as u64;
        if state.items.is_empty() {
            state.unannounced = false;
        }
        Ok(())
    }

    /// Decisions waiting.
    pub fn len(&self) -> usize {
        self.state.lock().items.len()
    }

    /// Decisions merged into one already waiting for the same instance and kind.
    pub fn merged(&self) -> u64 {
        self.state.lock().merged
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
    fn persist_decisions_alone_wait_for_the_announcement_others_wake_at_once() {
        let q = Arc::new(DecisionQueue::new());
        let persist = Decision::PersistRuntime {
            key: 1,
            runtime: None,
        };
        let unannounced = |q: &DecisionQueue| q.state.lock().unannounced;
        // Whether the poller blocks before or after the push, the announcement (or
        // finding them queued) hands it the decision.
        let q2 = q.clone();
        let poller = std::thread::spawn(move || {
            let mut out = Vec::new();
            q2.take(&mut out, 8, Duration::from_secs(60)).map(|()| out)
        });
        assert!(q.push_all_deferring(&mut vec![persist]));
        assert!(unannounced(&q));
        q.announce();
        assert!(!unannounced(&q));
        assert_eq!(poller.join().unwrap(), Ok(vec![persist]));

        // Another kind in the batch wakes the pollers with it.
        let standby = Decision::Standby { key: 2 };
        assert!(!q.push_all_deferring(&mut vec![persist, standby]));
        assert!(!unannounced(&q));
        let mut out = Vec::new();
        q.take(&mut out, 8, Duration::ZERO).unwrap();
        assert_eq!(out, vec![persist, standby]);

        // A poller that finds them queued takes them without the announcement, and
        // nothing is left to announce.
        assert!(q.push_all_deferring(&mut vec![persist]));
        out.clear();
        q.take(&mut out, 8, Duration::from_secs(60)).unwrap();
        assert_eq!(out, vec![persist]);
        assert!(!unannounced(&q));
        // Plain pushes always wake.
        q.push_all(&mut vec![persist]);
        assert!(!unannounced(&q));
    }

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
    fn one_decision_per_instance_and_kind_waits_and_the_latest_runtime_wins() {
        use crate::engine::Runtime;
        let q = DecisionQueue::new();
        let persist = |key, at| Decision::PersistRuntime {
            key,
            runtime: Some(Runtime {
                idle_since: Some(at),
                last_inbound_activity_at: Some(at),
            }),
        };
        // A host that stops polling while instance 1 flaps for a long time.
        for round in 0..10_000u64 {
            q.push_all(&mut vec![
                persist(1, round),
                Decision::Standby { key: 1 },
                Decision::Confirm { key: 1 },
                persist(2, round),
            ]);
        }
        assert_eq!(q.len(), 4);
        assert_eq!(q.merged(), 4 * 10_000 - 4);
        let mut out = Vec::new();
        q.take(&mut out, 2, Duration::ZERO).unwrap();
        assert_eq!(out, vec![persist(1, 9_999), Decision::Standby { key: 1 }]);
        // A taken decision frees its slot; a waiting one still merges.
        q.push_all(&mut vec![persist(1, 20_000), persist(2, 20_000)]);
        out.clear();
        q.take(&mut out, 8, Duration::ZERO).unwrap();
        assert_eq!(
            out,
            vec![
                Decision::Confirm { key: 1 },
                persist(2, 20_000),
                persist(1, 20_000)
            ]
        );
        assert!(q.is_empty());
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
