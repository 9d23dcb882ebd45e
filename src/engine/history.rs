//! Per-instance history of idle gaps, and what candidate idle timeouts would have done
//! over it.
//!
//! A *gap* is a period with no counted flow: it opens when the instance's last counted
//! flow ends (its live count drops to 0) and closes when the next counted flow starts (the
//! count leaves 0). "Counted" is the engine's own rule (the policy's protocols, ignored
//! ports and sources; without a policy, TCP), whatever the instance's eligibility, so a VM
//! can be observed before its policy is enabled. Observation starts when the instance's
//! flows are first known: at registration, or in kernel mode when the first dump of its
//! addresses has been applied; a gap open then is taken to start then. The gap still open
//! now is kept apart, exactly.
//!
//! Closed gaps go into a log-scaled histogram over fixed bucket edges ([`EDGES_MS`]),
//! each bucket holding a count and the summed length. For a timeout equal to an edge the
//! answer is exact (every gap of a bucket is either at least the timeout or shorter); so
//! are the default candidates, which are all edges. For another timeout the answer is
//! exact when no recorded gap falls in the bucket the timeout splits, else that bucket is
//! apportioned as if its gaps were spread evenly, and the answer says it is an estimate.
//!
//! Memory: [`HISTORY_BYTES`] per instance once it is observed (one allocation), nothing
//! before; the history is kept across `update` and dropped with the instance.

use super::{Engine, EngineError, InstanceKey, UnixMillis};

/// Bucket edges in milliseconds: bucket 0 holds gaps shorter than the first edge, bucket
/// `i` gaps in `[EDGES_MS[i-1], EDGES_MS[i])`, the last one gaps of at least the last
/// edge. Round values (steps of about 1.3 to 1.5) so that common timeouts are exact.
pub const EDGES_MS: [u64; 45] = [
    100,
    150,
    200,
    300,
    400,
    500,
    700,
    1_000,
    1_500,
    2_000,
    3_000,
    4_000,
    5_000,
    7_000,
    10_000,
    15_000,
    20_000,
    30_000,
    45_000,
    60_000,
    90_000,
    120_000,
    180_000,
    240_000,
    300_000,
    420_000,
    600_000,
    900_000,
    1_200_000,
    1_800_000,
    2_700_000,
    3_600_000,
    5_400_000,
    7_200_000,
    10_800_000,
    14_400_000,
    21_600_000,
    28_800_000,
    43_200_000,
    64_800_000,
    86_400_000,
    172_800_000,
    345_600_000,
    604_800_000,
    1_209_600_000,
];

const BUCKETS: usize = EDGES_MS.len() + 1;

/// The candidate timeouts used when the caller gives none: 30 s, 1, 2, 5, 10, 15 and 30
/// minutes, 1 hour (all bucket edges, so their answers are exact).
pub const DEFAULT_CANDIDATES_MS: [u64; 8] = [
    30_000, 60_000, 120_000, 300_000, 600_000, 900_000, 1_800_000, 3_600_000,
];

/// The recommendation rule's default: at most one wake per this many minutes of observed
/// time.
pub const DEFAULT_MINUTES_PER_WAKE: u32 = 30;

/// Most candidates one query may ask about.
pub const MAX_CANDIDATES: usize = 64;

/// Heap bytes of one instance's history.
pub const HISTORY_BYTES: usize = std::mem::size_of::<GapHistory>();

/// One instance's idle gaps since its observation began.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GapHistory {
    /// When observation began (the window's start).
    since: UnixMillis,
    /// Start of the gap open now, if no counted flow is live.
    open: Option<UnixMillis>,
    /// Closed gaps per bucket.
    counts: [u32; BUCKETS],
    /// Summed length (ms) of the closed gaps per bucket.
    sums: [u64; BUCKETS],
}

fn bucket_of(len: u64) -> usize {
    EDGES_MS.partition_point(|&e| e <= len)
}

/// `[lo, hi)` of bucket `b` (`hi` is `u64::MAX` for the last).
fn bounds(b: usize) -> (u64, u64) {
    let lo = if b == 0 { 0 } else { EDGES_MS[b - 1] };
    let hi = EDGES_MS.get(b).copied().unwrap_or(u64::MAX);
    (lo, hi)
}

impl GapHistory {
    fn new(now: UnixMillis, idle: bool) -> Self {
        Self {
            since: now,
            open: idle.then_some(now),
            counts: [0; BUCKETS],
            sums: [0; BUCKETS],
        }
    }

    /// A counted flow became live at `now`: the open gap closes.
    fn busy(&mut self, now: UnixMillis) {
        if let Some(start) = self.open.take() {
            let len = now.saturating_sub(start);
            // No time passed without a counted flow: no gap.
            if len == 0 {
                return;
            }
            let b = bucket_of(len);
            self.counts[b] = self.counts[b].saturating_add(1);
            self.sums[b] = self.sums[b].saturating_add(len);
        }
    }

    /// The last counted flow ended at `at`: a gap opens.
    fn idle(&mut self, at: UnixMillis) {
        if self.open.is_none() {
            self.open = Some(at.max(self.since));
        }
    }

    /// What a timeout of `t` ms would have done over the closed gaps and the open one.
    fn outcome(&self, t: u64, now: UnixMillis, observed_ms: u64) -> TimeoutOutcome {
        let mut standbys = 0u64;
        let mut standby_ms = 0u64;
        let mut exact = true;
        for b in 0..BUCKETS {
            let (n, sum) = (u64::from(self.counts[b]), self.sums[b]);
            if n == 0 {
                continue;
            }
            let (lo, hi) = bounds(b);
            if lo >= t {
                standbys += n;
                standby_ms += sum.saturating_sub(n * t);
            } else if hi > t {
                // The timeout splits this bucket: apportion it.
                exact = false;
                if hi == u64::MAX {
                    // Unbounded: judged by the mean.
                    if sum / n >= t {
                        standbys += n;
                        standby_ms += sum.saturating_sub(n * t);
                    }
                } else {
                    let share = (hi - t) as f64 / (hi - lo) as f64;
                    let over = (n as f64 * share).round() as u64;
                    standbys += over;
                    // Evenly spread over [t, hi): each is on average (hi - t) / 2 over.
                    standby_ms += over * (hi - t) / 2;
                }
            }
        }
        let wakes = standbys;
        if let Some(start) = self.open {
            let len = now.saturating_sub(start);
            if len >= t {
                standbys += 1;
                standby_ms += len - t;
            }
        }
        let standby_ms = standby_ms.min(observed_ms);
        TimeoutOutcome {
            timeout_ms: t,
            standbys,
            wakes,
            standby_ms,
            standby_fraction: if observed_ms == 0 {
                0.0
            } else {
                standby_ms as f64 / observed_ms as f64
            },
            exact,
        }
    }
}

/// What a caller asks of [`Engine::recommend`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecommendQuery {
    /// Candidate idle timeouts in ms (each at least 1; empty means
    /// [`DEFAULT_CANDIDATES_MS`]; at most [`MAX_CANDIDATES`]). Answered in ascending
    /// order, duplicates once.
    pub candidates_ms: Vec<u64>,
    /// The rule's N: the recommended timeout is the shortest candidate with at most one
    /// wake per N minutes of observed time on average. 0 means
    /// [`DEFAULT_MINUTES_PER_WAKE`].
    pub minutes_per_wake: u32,
}

/// What one candidate timeout would have done over the observed window, had it been the
/// instance's idle timeout (with no hold, `min_uptime` or confirmation delay, and restores
/// taking no time).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimeoutOutcome {
    /// The candidate timeout.
    pub timeout_ms: u64,
    /// Standbys: one per gap at least this long, the open one included.
    pub standbys: u64,
    /// Wakes: one per closed gap at least this long (the open gap has not ended).
    pub wakes: u64,
    /// Time the instance would have spent in Standby: per such gap, its length less
    /// the timeout.
    pub standby_ms: u64,
    /// `standby_ms` over the observed time (0 when nothing has been observed).
    pub standby_fraction: f64,
    /// False when some recorded gaps fell in the histogram bucket the timeout splits and
    /// their share was estimated (see the module docs).
    pub exact: bool,
}

/// The answer of [`Engine::recommend`].
#[derive(Clone, Debug, PartialEq)]
pub struct Recommendation {
    /// When observation began; `None` while the instance's flows are not known yet.
    pub observed_since: Option<UnixMillis>,
    /// Observed time: from `observed_since` to now.
    pub observed_ms: u64,
    /// Closed gaps recorded.
    pub gaps: u64,
    /// Length so far of the gap open now, if no counted flow is live.
    pub open_gap_ms: Option<u64>,
    /// The rule's N (see [`RecommendQuery::minutes_per_wake`]).
    pub minutes_per_wake: u32,
    /// One entry per candidate, ascending.
    pub outcomes: Vec<TimeoutOutcome>,
    /// The shortest candidate whose wakes are at most one per `minutes_per_wake` minutes
    /// of observed time; `None` when none is, or nothing has been observed yet.
    pub recommended_timeout_ms: Option<u64>,
}

/// Normalises a query: defaults filled, candidates checked, sorted and deduplicated.
pub(crate) fn normalise_query(q: &RecommendQuery) -> Result<(Vec<u64>, u32), EngineError> {
    let mut c = if q.candidates_ms.is_empty() {
        DEFAULT_CANDIDATES_MS.to_vec()
    } else {
        q.candidates_ms.clone()
    };
    if c.len() > MAX_CANDIDATES {
        return Err(EngineError::InvalidQuery(format!(
            "{} candidate timeouts: at most {MAX_CANDIDATES}",
            c.len()
        )));
    }
    if c.contains(&0) {
        return Err(EngineError::InvalidQuery(
            "a candidate timeout is 0: each must be at least 1 ms".to_owned(),
        ));
    }
    c.sort_unstable();
    c.dedup();
    let n = if q.minutes_per_wake == 0 {
        DEFAULT_MINUTES_PER_WAKE
    } else {
        q.minutes_per_wake
    };
    Ok((c, n))
}

impl Engine {
    /// Observation of the instance's gaps begins now, unless it already has.
    pub(super) fn history_start(&mut self, slot: u32, now: UnixMillis) {
        let inst = self.inst_mut(slot);
        if inst.history.is_none() {
            let idle = inst.live == 0;
            inst.cold.history = Some(Box::new(GapHistory::new(now, idle)));
        }
    }

    /// The instance's counted flows went from none to some at `now`.
    #[inline]
    pub(super) fn history_busy(&mut self, slot: u32, now: UnixMillis) {
        if let Some(h) = self.inst_mut(slot).cold.history.as_mut() {
            h.busy(now);
        }
    }

    /// The instance's last counted flow ended at `at`.
    #[inline]
    pub(super) fn history_idle(&mut self, slot: u32, at: UnixMillis) {
        if let Some(h) = self.inst_mut(slot).cold.history.as_mut() {
            h.idle(at);
        }
    }

    pub(super) fn do_recommend(
        &self,
        key: InstanceKey,
        query: &RecommendQuery,
        now: UnixMillis,
    ) -> Result<Recommendation, EngineError> {
        let slot = self.slot(key)?;
        let (candidates, minutes_per_wake) = normalise_query(query)?;
        let Some(h) = self.inst(slot).history.as_deref() else {
            return Ok(Recommendation {
                observed_since: None,
                observed_ms: 0,
                gaps: 0,
                open_gap_ms: None,
                minutes_per_wake,
                outcomes: candidates
                    .iter()
                    .map(|&t| TimeoutOutcome {
                        timeout_ms: t,
                        standbys: 0,
                        wakes: 0,
                        standby_ms: 0,
                        standby_fraction: 0.0,
                        exact: true,
                    })
                    .collect(),
                recommended_timeout_ms: None,
            });
        };
        let observed_ms = now.saturating_sub(h.since);
        let outcomes: Vec<TimeoutOutcome> = candidates
            .iter()
            .map(|&t| h.outcome(t, now, observed_ms))
            .collect();
        let per_wake_ms = u64::from(minutes_per_wake) * 60_000;
        let recommended_timeout_ms = if observed_ms == 0 {
            None
        } else {
            outcomes
                .iter()
                .find(|o| o.wakes.saturating_mul(per_wake_ms) <= observed_ms)
                .map(|o| o.timeout_ms)
        };
        Ok(Recommendation {
            observed_since: Some(h.since),
            observed_ms,
            gaps: h.counts.iter().map(|&c| u64::from(c)).sum(),
            open_gap_ms: h.open.map(|s| now.saturating_sub(s)),
            minutes_per_wake,
            outcomes,
            recommended_timeout_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_ascend_and_hold_the_default_candidates() {
        assert!(EDGES_MS.windows(2).all(|w| w[0] < w[1]));
        for c in DEFAULT_CANDIDATES_MS {
            assert!(EDGES_MS.contains(&c), "{c} is not an edge");
        }
    }

    #[test]
    fn buckets_split_at_edges() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(99), 0);
        assert_eq!(bucket_of(100), 1);
        assert_eq!(bucket_of(149), 1);
        assert_eq!(bucket_of(30_000), 18);
        assert_eq!(bounds(18), (30_000, 45_000));
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(bounds(BUCKETS - 1).1, u64::MAX);
    }

    #[test]
    fn history_size_is_what_the_docs_say() {
        // 46 buckets of a u32 count and a u64 sum, the window start and the open gap.
        assert_eq!(HISTORY_BYTES, 576);
    }
}
