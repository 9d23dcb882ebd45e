//! Countdown, persistence and restart behaviour (reference §4.2–§4.5, §5, §8.6).

use super::*;

#[test]
fn restart_with_live_flows_clears_the_persisted_countdown() {
    let mut h = H::new();
    let mut s = spec(10 * MIN);
    s.runtime = Runtime {
        idle_since: Some(T0 - 5 * MIN),
        last_inbound_activity_at: Some(T0 - 6 * MIN),
    };
    h.reg(1, s, T0);
    // The startup resync finds a live flow.
    let r = h.e.begin_resync(ResyncScope::All, T0);
    h.e.resync_flow(r, &inbound(1, Some(TcpState::ESTABLISHED)))
        .unwrap();
    h.e.finish_resync(r, T0).unwrap();
    let st = h.st(1, T0);
    assert_eq!(st.status, Status::Active);
    assert_eq!(st.idle_since, None);
    assert_eq!(
        h.persists(1).last().copied(),
        Some(Some(Runtime {
            idle_since: None,
            last_inbound_activity_at: Some(T0)
        }))
    );
}

#[test]
fn restart_without_flows_resumes_the_persisted_countdown() {
    let mut h = H::new();
    let mut s = spec(10 * MIN);
    s.runtime.idle_since = Some(T0 - 5 * MIN);
    h.reg(1, s, T0);
    let st = h.st(1, T0);
    assert_eq!(st.status, Status::IdleCountdown);
    assert_eq!(st.reason, Reason::IdleTimeoutNotElapsed);
    assert_eq!(st.next_standby_at, Some(T0 + 5 * MIN));
    assert_eq!(st.countdown_remaining_ms, Some(5 * MIN));
    assert!(
        h.persists(1).is_empty(),
        "a resumed countdown is not rewritten"
    );
    assert_eq!(h.e.next_deadline(), Some(T0 + 5 * MIN));
}

#[test]
fn expired_persisted_countdown_fires_at_once() {
    let mut h = H::new();
    let mut s = spec(MIN);
    s.runtime.idle_since = Some(T0 - 2 * MIN);
    h.reg(1, s, T0);
    assert_eq!(h.st(1, T0).status, Status::ReadyForStandby);
    h.e.tick(T0);
    assert_eq!(h.standbys(), vec![1]);
}

#[test]
fn fresh_instance_starts_its_countdown_at_registration() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    let st = h.st(1, T0);
    assert_eq!(
        (st.idle_since, st.next_standby_at),
        (Some(T0), Some(T0 + MIN))
    );
    assert_eq!(
        h.persists(1),
        vec![Some(Runtime {
            idle_since: Some(T0),
            last_inbound_activity_at: None
        })]
    );
}

#[test]
fn connection_events_clear_idle_and_restart_the_countdown() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.new_flow(inbound(1, Some(TcpState::ESTABLISHED)), T0 + SEC);
    let st = h.st(1, T0 + SEC);
    assert_eq!(
        (st.status, st.idle_since, st.next_standby_at),
        (Status::Active, None, None)
    );
    assert_eq!(st.last_inbound_activity_at, Some(T0 + SEC));
    h.destroy(inbound(1, None), T0 + 10 * SEC);
    let st = h.st(1, T0 + 10 * SEC);
    assert_eq!(st.status, Status::IdleCountdown);
    assert_eq!(st.idle_since, Some(T0 + 10 * SEC));
    assert_eq!(st.next_standby_at, Some(T0 + 10 * SEC + MIN));
}

#[test]
fn syn_sent_keeps_an_instance_active_from_events_and_dumps() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.new_flow(inbound(1, Some(TcpState::SYN_SENT)), T0);
    assert_eq!(h.st(1, T0).status, Status::Active);
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    let r = h.e.begin_resync(ResyncScope::All, T0);
    h.e.resync_flow(r, &inbound(1, Some(TcpState::SYN_SENT)))
        .unwrap();
    h.e.finish_resync(r, T0).unwrap();
    assert_eq!(h.st(1, T0).status, Status::Active);
    assert_eq!(h.st(1, T0).active_inbound, 1);
}

#[test]
fn update_to_a_finished_state_starts_the_countdown() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.new_flow(inbound(1, Some(TcpState::ESTABLISHED)), T0);
    h.update_flow(inbound(1, Some(TcpState::TIME_WAIT)), T0 + SEC);
    let st = h.st(1, T0 + SEC);
    assert_eq!(st.status, Status::IdleCountdown);
    assert_eq!(st.idle_since, Some(T0 + SEC));
    // The later DESTROY of the same flow changes nothing.
    h.destroy(inbound(1, None), T0 + 2 * SEC);
    assert_eq!(h.st(1, T0 + 2 * SEC).idle_since, Some(T0 + SEC));
}

#[test]
fn update_without_tcp_state_keeps_a_live_flow_live() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.new_flow(inbound(1, Some(TcpState::ESTABLISHED)), T0);
    // A mark or ASSURED change carries no protoinfo: not a finished flow.
    h.update_flow(inbound(1, None), T0 + SEC);
    assert_eq!(h.st(1, T0 + SEC).active_inbound, 1);
    let mut why = Vec::new();
    h.e.explain(1, T0 + SEC, &mut why).unwrap();
    assert_eq!(why[0].tcp_state, Some(TcpState::ESTABLISHED));
    // An unknown flow seen first without a state counts as live (safe side).
    h.update_flow(inbound(2, None), T0 + SEC);
    assert_eq!(h.st(1, T0 + SEC).active_inbound, 2);
}

#[test]
fn duplicate_destroy_does_not_go_negative() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.destroy(inbound(1, None), T0);
    h.destroy(inbound(1, None), T0);
    assert_eq!(h.st(1, T0).active_inbound, 0);
    h.new_flow(inbound(2, Some(TcpState::ESTABLISHED)), T0);
    h.destroy(inbound(2, None), T0);
    h.destroy(inbound(2, None), T0);
    assert_eq!(h.st(1, T0).active_inbound, 0);
    assert_eq!(h.st(1, T0).status, Status::IdleCountdown);
}

#[test]
fn last_inbound_activity_moves_to_now_on_activity() {
    let mut h = H::new();
    let mut s = spec(MIN);
    s.runtime.last_inbound_activity_at = Some(T0 - 50 * MIN);
    h.reg(1, s, T0);
    h.new_flow(inbound(1, Some(TcpState::ESTABLISHED)), T0 + SEC);
    h.update_flow(inbound(1, Some(TcpState::ESTABLISHED)), T0 + 9 * SEC);
    assert_eq!(
        h.st(1, T0 + 9 * SEC).last_inbound_activity_at,
        Some(T0 + 9 * SEC)
    );
    // A refresh with live flows also reports now, not the stale persisted value.
    h.e.update(1, spec(2 * MIN), T0 + 20 * SEC).unwrap();
    assert_eq!(
        h.st(1, T0 + 20 * SEC).last_inbound_activity_at,
        Some(T0 + 20 * SEC)
    );
}

#[test]
fn becoming_ineligible_deletes_the_persisted_runtime() {
    let mut h = H::new();
    let mut s = spec(MIN);
    s.runtime.idle_since = Some(T0 - SEC);
    h.reg(1, s.clone(), T0);
    h.drain();
    s.network_enabled = false;
    h.e.update(1, s, T0 + SEC).unwrap();
    assert_eq!(h.persists(1), vec![None]);
    let st = h.st(1, T0 + SEC);
    assert_eq!(
        (st.status, st.reason),
        (Status::Ineligible, Reason::NetworkDisabled)
    );
    assert_eq!(h.e.next_deadline(), None);
}

#[test]
fn policy_update_keeps_idle_since_and_applies_the_new_timeout() {
    let mut h = H::new();
    h.reg(1, spec(10 * MIN), T0);
    h.e.update(1, spec(MIN), T0 + 2 * MIN).unwrap();
    let st = h.st(1, T0 + 2 * MIN);
    assert_eq!(st.idle_since, Some(T0));
    assert_eq!(st.status, Status::ReadyForStandby);
    h.e.tick(T0 + 2 * MIN);
    assert_eq!(h.standbys(), vec![1]);
}

#[test]
fn persist_decisions_are_coalesced_latest_wins() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.reg(2, spec_with(ip("192.168.100.20"), policy(MIN)), T0);
    for i in 0..5u64 {
        h.new_flow(inbound(1, Some(TcpState::ESTABLISHED)), T0 + i * SEC);
        h.destroy(inbound(1, None), T0 + i * SEC + 500);
    }
    let d = h.drain();
    let mine: Vec<&Decision> = d
        .iter()
        .filter(|d| matches!(d, Decision::PersistRuntime { key: 1, .. }))
        .collect();
    assert_eq!(mine.len(), 1, "{d:?}");
    assert_eq!(
        *mine[0],
        Decision::PersistRuntime {
            key: 1,
            runtime: Some(Runtime {
                idle_since: Some(T0 + 4 * SEC + 500),
                last_inbound_activity_at: Some(T0 + 4 * SEC)
            })
        }
    );
    assert_eq!(d.len(), 2, "one per instance: {d:?}");
}

#[test]
fn idle_since_never_moves_backwards_on_a_clock_step() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.new_flow(inbound(1, Some(TcpState::ESTABLISHED)), T0 + 10 * SEC);
    // The wall clock steps back 30 s before the flow ends.
    h.destroy(inbound(1, None), T0 - 20 * SEC);
    assert_eq!(h.st(1, T0).idle_since, Some(T0 + 10 * SEC));
}

#[test]
fn backward_clock_step_does_not_fire_early_and_loses_no_timer() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.e.tick(T0 + MIN - 30 * SEC);
    assert!(h.standbys().is_empty());
    assert_eq!(h.st(1, T0).next_standby_at, Some(T0 + MIN));
    assert_eq!(h.e.next_deadline(), Some(T0 + MIN));
    h.e.tick(T0 + MIN);
    assert_eq!(h.standbys(), vec![1]);
}

#[test]
fn thousands_of_simultaneous_deadlines_all_fire() {
    let mut h = H::with(EngineConfig {
        max_concurrent_standbys: 100_000,
        ..EngineConfig::default()
    });
    for k in 0..5_000u64 {
        let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + k as u32));
        h.reg(k, spec_with(a, policy(MIN)), T0);
    }
    h.e.tick(T0 + MIN);
    let mut keys = h.standbys();
    keys.sort();
    assert_eq!(keys, (0..5_000).collect::<Vec<_>>());
}

#[test]
fn min_uptime_delays_standby_after_start() {
    let mut h = H::new();
    let mut p = policy(MIN);
    p.min_uptime_ms = 5 * MIN;
    let mut s = spec_with(guest(), p);
    s.lifecycle = Lifecycle::Other;
    h.reg(1, s.clone(), T0);
    s.lifecycle = Lifecycle::Running;
    h.e.update(1, s, T0 + MIN).unwrap();
    let st = h.st(1, T0 + 3 * MIN);
    assert_eq!(
        (st.status, st.reason),
        (Status::IdleCountdown, Reason::MinUptimeNotElapsed)
    );
    assert_eq!(st.next_standby_at, Some(T0 + 6 * MIN));
    h.e.tick(T0 + 5 * MIN);
    assert!(h.standbys().is_empty());
    h.e.tick(T0 + 6 * MIN);
    assert_eq!(h.standbys(), vec![1]);
}

#[test]
fn fresh_countdown_at_registration_keeps_the_persisted_last_activity() {
    let mut h = H::new();
    let mut s = spec(MIN);
    s.runtime.last_inbound_activity_at = Some(T0 - 3 * MIN);
    h.reg(1, s, T0);
    assert_eq!(
        h.persists(1),
        vec![Some(Runtime {
            idle_since: Some(T0),
            last_inbound_activity_at: Some(T0 - 3 * MIN)
        })]
    );
    assert_eq!(h.st(1, T0).last_inbound_activity_at, Some(T0 - 3 * MIN));
}
