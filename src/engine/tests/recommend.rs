//! Idle-gap history and what candidate timeouts would have done, on recorded activity
//! patterns whose answers are worked out by hand in each test.

use super::*;

const K: InstanceKey = 7;
const DAY: u64 = 24 * 60 * MIN;

fn open(h: &mut H, port: u16, at: u64) {
    h.new_flow(inbound(port, Some(TcpState::ESTABLISHED)), T0 + at);
}

fn close(h: &mut H, port: u16, at: u64) {
    h.destroy(inbound(port, Some(TcpState::TIME_WAIT)), T0 + at);
}

fn defaults() -> RecommendQuery {
    RecommendQuery::default()
}

/// Observed for 75 minutes from registration (idle then): closed gaps of 10 min, 40 s,
/// 3 min, 20 min and exactly 2 min, then a gap open for 25 min.
fn office_pattern() -> H {
    let mut h = H::new();
    h.reg(K, spec(DAY), T0);
    open(&mut h, 1001, 10 * MIN); // gap 0 → 10 min
    close(&mut h, 1001, 11 * MIN);
    open(&mut h, 1002, 11 * MIN + 40 * SEC); // gap 40 s
    close(&mut h, 1002, 12 * MIN);
    open(&mut h, 1003, 15 * MIN); // gap 3 min
    // A second, overlapping connection: no gap between the two.
    open(&mut h, 1004, 15 * MIN + 30 * SEC);
    close(&mut h, 1003, 15 * MIN + 45 * SEC);
    close(&mut h, 1004, 16 * MIN);
    open(&mut h, 1005, 36 * MIN); // gap 20 min
    close(&mut h, 1005, 40 * MIN);
    open(&mut h, 1006, 42 * MIN); // gap exactly 2 min
    close(&mut h, 1006, 50 * MIN); // gap open since 50 min
    h
}

/// (timeout, standbys, wakes, standby time) per candidate.
fn rows(r: &Recommendation) -> Vec<(u64, u64, u64, u64)> {
    r.outcomes
        .iter()
        .map(|o| (o.timeout_ms, o.standbys, o.wakes, o.standby_ms))
        .collect()
}

#[test]
fn default_candidates_on_a_recorded_pattern() {
    let h = office_pattern();
    let now = T0 + 75 * MIN;
    let r = h.e.recommend(K, &defaults(), now).unwrap();
    assert_eq!(r.observed_since, Some(T0));
    assert_eq!(r.observed_ms, 75 * MIN);
    assert_eq!(r.gaps, 5);
    assert_eq!(r.open_gap_ms, Some(25 * MIN));
    assert_eq!(r.minutes_per_wake, 30);
    // A gap at least as long as the timeout is a standby, and a wake when it has ended;
    // its length less the timeout is time in Standby.
    //  30 s: all five closed gaps and the open one: 9m30 + 10s + 2m30 + 19m30 + 1m30
    //        + 24m30 = 57m40s.
    //   1 m: 10m, 3m, 20m, 2m closed: 9 + 2 + 19 + 1 = 31 m, open 24 m.
    //   2 m: the same four (2 m is not shorter): 8 + 1 + 18 + 0, open 23 m.
    //   5 m: 10m, 20m: 5 + 15, open 20 m.
    //  10 m: 10m (equal), 20m: 0 + 10, open 15 m.
    //  15 m: 20m: 5, open 10 m.
    //  30 m and 1 h: nothing (the open gap is 25 m).
    assert_eq!(
        rows(&r),
        vec![
            (30 * SEC, 6, 5, 57 * MIN + 40 * SEC),
            (MIN, 5, 4, 55 * MIN),
            (2 * MIN, 5, 4, 50 * MIN),
            (5 * MIN, 3, 2, 40 * MIN),
            (10 * MIN, 3, 2, 25 * MIN),
            (15 * MIN, 2, 1, 15 * MIN),
            (30 * MIN, 0, 0, 0),
            (60 * MIN, 0, 0, 0),
        ]
    );
    assert!(r.outcomes.iter().all(|o| o.exact), "{r:?}");
    let f = r.outcomes[3].standby_fraction;
    assert!((f - 40.0 / 75.0).abs() < 1e-9, "{f}");
    // At most one wake per 30 minutes of 75 observed: at most 2 wakes; 5 m is the
    // shortest with 2.
    assert_eq!(r.recommended_timeout_ms, Some(5 * MIN));
}

#[test]
fn the_rule_follows_minutes_per_wake() {
    let h = office_pattern();
    let now = T0 + 75 * MIN;
    let ask = |n| {
        let q = RecommendQuery {
            minutes_per_wake: n,
            ..defaults()
        };
        h.e.recommend(K, &q, now).unwrap().recommended_timeout_ms
    };
    // 60: at most 1 wake → 15 m. 10: at most 7 → 30 s. 200: none → 30 m (0 wakes).
    assert_eq!(ask(60), Some(15 * MIN));
    assert_eq!(ask(10), Some(30 * SEC));
    assert_eq!(ask(200), Some(30 * MIN));
}

#[test]
fn caller_candidates_are_sorted_and_estimates_are_flagged() {
    let h = office_pattern();
    let now = T0 + 75 * MIN;
    let q = RecommendQuery {
        candidates_ms: vec![50 * SEC, 35 * SEC, 50 * SEC],
        minutes_per_wake: 0,
    };
    let r = h.e.recommend(K, &q, now).unwrap();
    let got: Vec<_> = r.outcomes.iter().map(|o| (o.timeout_ms, o.exact)).collect();
    // 35 s splits the [30 s, 45 s) bucket, which holds the 40 s gap: estimated. 50 s
    // splits [45 s, 60 s), which is empty: exact.
    assert_eq!(got, vec![(35 * SEC, false), (50 * SEC, true)]);
    // 50 s: 10m, 3m, 20m, 2m, and the open gap.
    assert_eq!((r.outcomes[1].standbys, r.outcomes[1].wakes), (5, 4));
    assert_eq!(
        r.outcomes[1].standby_ms,
        (10 * MIN + 3 * MIN + 20 * MIN + 2 * MIN + 25 * MIN) - 5 * 50 * SEC
    );
    // 35 s: the 40 s gap is two thirds over it (evenly spread over [30 s, 45 s)), so it
    // is counted, with half of 10 s in Standby.
    assert_eq!((r.outcomes[0].standbys, r.outcomes[0].wakes), (6, 5));
    let exact_part = (10 * MIN + 3 * MIN + 20 * MIN + 2 * MIN + 25 * MIN) - 5 * 35 * SEC;
    assert_eq!(r.outcomes[0].standby_ms, exact_part + 5 * SEC);
}

#[test]
fn an_always_busy_instance_has_no_gaps_and_the_shortest_candidate() {
    let mut h = H::new();
    h.reg(K, spec(DAY), T0);
    // A flow at the instant observation begins leaves no gap; overlapping ones none.
    open(&mut h, 2001, 0);
    open(&mut h, 2002, 60 * MIN);
    close(&mut h, 2001, 61 * MIN);
    let r = h.e.recommend(K, &defaults(), T0 + 3 * 60 * MIN).unwrap();
    assert_eq!((r.gaps, r.open_gap_ms), (0, None));
    assert!(
        r.outcomes
            .iter()
            .all(|o| o.standbys == 0 && o.standby_ms == 0)
    );
    assert_eq!(r.recommended_timeout_ms, Some(30 * SEC));
}

#[test]
fn a_gap_at_registration_is_counted_from_then() {
    let mut h = H::new();
    h.reg(K, spec(DAY), T0);
    let r = h.e.recommend(K, &defaults(), T0 + 45 * MIN).unwrap();
    assert_eq!((r.gaps, r.open_gap_ms), (0, Some(45 * MIN)));
    // 30 m: one standby, no wake, 15 of 45 minutes in Standby.
    let o = r
        .outcomes
        .iter()
        .find(|o| o.timeout_ms == 30 * MIN)
        .unwrap();
    assert_eq!((o.standbys, o.wakes, o.standby_ms), (1, 0, 15 * MIN));
    assert!((o.standby_fraction - 1.0 / 3.0).abs() < 1e-9);
    // Never a wake: the shortest candidate.
    assert_eq!(r.recommended_timeout_ms, Some(30 * SEC));
    // Nothing observed yet: no recommendation.
    let r = h.e.recommend(K, &defaults(), T0).unwrap();
    assert_eq!((r.observed_ms, r.recommended_timeout_ms), (0, None));
}

#[test]
fn history_survives_an_update_and_is_dropped_on_unregister() {
    let mut h = office_pattern();
    let now = T0 + 75 * MIN;
    let before = h.e.recommend(K, &defaults(), now).unwrap();
    // A policy change (a new timeout) at 75 min keeps every gap.
    h.e.update(K, spec(10 * MIN), now).unwrap();
    assert_eq!(h.e.recommend(K, &defaults(), now).unwrap(), before);
    h.e.unregister(K, now).unwrap();
    assert_eq!(
        h.e.recommend(K, &defaults(), now),
        Err(EngineError::NotFound(K))
    );
    // Registered again: a new observation from then on.
    h.reg(K, spec(DAY), now);
    let r = h.e.recommend(K, &defaults(), now + MIN).unwrap();
    assert_eq!(r.observed_since, Some(now));
    assert_eq!((r.gaps, r.open_gap_ms), (0, Some(MIN)));
}

#[test]
fn a_policy_change_that_stops_counting_flows_opens_a_gap() {
    let mut h = H::new();
    h.reg(K, spec(DAY), T0);
    h.new_flow(
        flow(
            proto::TCP,
            ip("203.0.113.9"),
            4000,
            guest(),
            22,
            Some(TcpState::ESTABLISHED),
            9,
        ),
        T0 + MIN,
    ); // gap 1 min closed
    let ignore22 = Policy {
        ignore_destination_ports: vec![22],
        ..policy(DAY)
    };
    // Port 22 stops counting at 5 min: a gap opens then, and closes when it counts again
    // at 12 min.
    h.e.update(K, spec_with(guest(), ignore22), T0 + 5 * MIN)
        .unwrap();
    h.e.update(K, spec(DAY), T0 + 12 * MIN).unwrap();
    let r = h.e.recommend(K, &defaults(), T0 + 20 * MIN).unwrap();
    assert_eq!((r.gaps, r.open_gap_ms), (2, None));
    let o = r.outcomes.iter().find(|o| o.timeout_ms == 5 * MIN).unwrap();
    assert_eq!((o.standbys, o.wakes, o.standby_ms), (1, 1, 2 * MIN));
}

#[test]
fn kernel_mode_observes_from_the_first_dump() {
    let mut h = H::with(EngineConfig {
        pending_until_first_resync: true,
        ..EngineConfig::default()
    });
    h.reg(K, spec(DAY), T0);
    let r = h.e.recommend(K, &defaults(), T0 + 5 * SEC).unwrap();
    assert_eq!((r.observed_since, r.recommended_timeout_ms), (None, None));
    assert!(r.outcomes.iter().all(|o| o.standbys == 0));
    // The first dump finds a live flow: no gap is made of the time before it.
    let live = inbound(3000, Some(TcpState::ESTABLISHED));
    let id = h.e.begin_resync(ResyncScope::All, T0 + 10 * SEC);
    h.e.resync_flow(id, &live).unwrap();
    h.e.finish_resync(id, T0 + 11 * SEC).unwrap();
    close(&mut h, 3000, 11 * MIN);
    let r = h.e.recommend(K, &defaults(), T0 + 21 * MIN).unwrap();
    assert_eq!(r.observed_since, Some(T0 + 11 * SEC));
    assert_eq!((r.gaps, r.open_gap_ms), (0, Some(10 * MIN)));
}

#[test]
fn bad_queries_are_refused() {
    let h = office_pattern();
    let now = T0 + 75 * MIN;
    let zero = RecommendQuery {
        candidates_ms: vec![MIN, 0],
        minutes_per_wake: 0,
    };
    assert!(matches!(
        h.e.recommend(K, &zero, now),
        Err(EngineError::InvalidQuery(_))
    ));
    let many = RecommendQuery {
        candidates_ms: (1..=MAX_CANDIDATES as u64 + 1).map(|i| i * SEC).collect(),
        minutes_per_wake: 0,
    };
    assert!(matches!(
        h.e.recommend(K, &many, now),
        Err(EngineError::InvalidQuery(_))
    ));
    assert_eq!(
        h.e.recommend(K + 1, &defaults(), now),
        Err(EngineError::NotFound(K + 1))
    );
}
