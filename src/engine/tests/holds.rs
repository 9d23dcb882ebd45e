//! Holds (reference §4.8, tests 33–42).

use super::*;

#[test]
fn hold_extends_an_armed_countdown_without_persisting() {
    let mut h = H::new();
    let mut s = spec(MIN);
    s.runtime.idle_since = Some(T0);
    h.reg(1, s, T0 + 50 * SEC);
    h.drain();
    let st = h.e.hold(1, T0 + 50 * SEC).unwrap();
    assert_eq!(st.hold_until, Some(T0 + 110 * SEC));
    assert_eq!(st.next_standby_at, Some(T0 + 110 * SEC));
    assert_eq!(
        (st.status, st.reason),
        (Status::IdleCountdown, Reason::StandbyHeld)
    );
    assert!(h.persists(1).is_empty());
    // A resync keeps the held deadline.
    let r = h.e.begin_resync(ResyncScope::All, T0 + 60 * SEC);
    h.e.finish_resync(r, T0 + 60 * SEC).unwrap();
    assert_eq!(h.st(1, T0 + 60 * SEC).next_standby_at, Some(T0 + 110 * SEC));
    h.e.tick(T0 + 100 * SEC);
    assert!(h.standbys().is_empty());
    h.e.tick(T0 + 110 * SEC);
    assert_eq!(h.standbys(), vec![1]);
}

#[test]
fn a_later_hold_replaces_a_longer_one() {
    let mut h = H::new();
    h.reg(1, spec(10 * MIN), T0);
    assert_eq!(h.e.hold(1, T0).unwrap().hold_until, Some(T0 + 10 * MIN));
    h.e.update(1, spec(MIN), T0 + SEC).unwrap();
    let st = h.e.hold(1, T0 + SEC).unwrap();
    assert_eq!(st.hold_until, Some(T0 + SEC + MIN));
    assert_eq!(st.next_standby_at, Some(T0 + SEC + MIN));
}

#[test]
fn hold_cancels_a_queued_standby() {
    let mut h = H::with(EngineConfig {
        max_concurrent_standbys: 1,
        ..EngineConfig::default()
    });
    h.reg(1, spec(MIN), T0);
    h.reg(2, spec_with(ip("192.168.100.20"), policy(MIN)), T0);
    h.e.tick(T0 + MIN);
    assert_eq!(h.standbys(), vec![1]);
    let st = h.e.hold(2, T0 + MIN).unwrap();
    assert_eq!(st.next_standby_at, Some(T0 + 2 * MIN));
    assert_eq!(h.e.begin_standby(1, T0 + MIN), Ok(BeginStandby::Proceed));
    h.e.report_standby(1, StandbyOutcome::Success, T0 + MIN)
        .unwrap();
    assert!(h.standbys().is_empty());
}

#[test]
fn hold_on_an_emitted_standby_cancels_it_at_begin() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.e.tick(T0 + MIN);
    assert_eq!(h.standbys(), vec![1]);
    h.e.hold(1, T0 + MIN).unwrap();
    assert_eq!(
        h.e.begin_standby(1, T0 + MIN),
        Ok(BeginStandby::Cancelled(Reason::StandbyHeld))
    );
    assert_eq!(h.e.stats().standby_in_flight, 0);
    h.e.tick(T0 + 2 * MIN);
    assert_eq!(h.standbys(), vec![1]);
}

#[test]
fn hold_fails_while_a_standby_executes() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.e.tick(T0 + MIN);
    assert_eq!(h.e.begin_standby(1, T0 + MIN), Ok(BeginStandby::Proceed));
    assert_eq!(h.e.hold(1, T0 + MIN), Err(EngineError::StandbyInProgress));
}

#[test]
fn stale_timer_delivery_after_a_hold_is_ignored() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.e.hold(1, T0 + 59 * SEC).unwrap();
    // The original deadline passes: the delivery is early for the held deadline.
    h.e.tick(T0 + MIN);
    assert!(h.standbys().is_empty());
    let st = h.st(1, T0 + MIN);
    assert_eq!(st.status, Status::IdleCountdown);
    assert_eq!(st.next_standby_at, Some(T0 + 59 * SEC + MIN));
}

#[test]
fn hold_survives_connection_churn() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.new_flow(inbound(1, Some(TcpState::ESTABLISHED)), T0);
    let st = h.e.hold(1, T0).unwrap();
    assert_eq!((st.hold_until, st.next_standby_at), (Some(T0 + MIN), None));
    h.destroy(inbound(1, None), T0 + 50 * SEC);
    assert_eq!(h.st(1, T0 + 50 * SEC).next_standby_at, Some(T0 + 110 * SEC));
}

#[test]
fn hold_on_an_instance_with_an_expired_resumed_countdown_still_applies() {
    let mut h = H::new();
    let mut s = spec(MIN);
    s.runtime.idle_since = Some(T0 - 10 * MIN);
    h.reg(1, s, T0);
    assert_eq!(h.st(1, T0).status, Status::ReadyForStandby);
    let st = h.e.hold(1, T0).unwrap();
    assert_eq!(st.next_standby_at, st.hold_until);
    assert_eq!(st.hold_until, Some(T0 + MIN));
    h.e.tick(T0 + 30 * SEC);
    assert!(h.standbys().is_empty());
    h.e.tick(T0 + MIN);
    assert_eq!(h.standbys(), vec![1]);
}

#[test]
fn becoming_ineligible_discards_the_persisted_countdown() {
    let mut h = H::new();
    let mut s = spec(MIN);
    s.runtime.idle_since = Some(T0 - 10 * MIN);
    s.lifecycle = Lifecycle::Other;
    h.reg(1, s.clone(), T0);
    assert_eq!(h.persists(1), vec![None]);
    s.lifecycle = Lifecycle::Running;
    h.e.update(1, s, T0).unwrap();
    assert_eq!(h.st(1, T0).next_standby_at, Some(T0 + MIN));
}

#[test]
fn hold_is_a_no_op_when_the_policy_is_disabled() {
    let mut h = H::new();
    let mut p = policy(MIN);
    p.enabled = false;
    h.reg(1, spec_with(guest(), p), T0);
    let st = h.e.hold(1, T0).unwrap();
    assert_eq!(
        (st.status, st.reason),
        (Status::Disabled, Reason::PolicyDisabled)
    );
    assert_eq!(st.hold_until, None);
}

#[test]
fn expired_hold_is_not_reported() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.new_flow(inbound(1, Some(TcpState::ESTABLISHED)), T0);
    h.e.hold(1, T0).unwrap();
    assert_eq!(h.st(1, T0 + 2 * MIN).hold_until, None);
}

#[test]
fn hold_does_not_wait_on_or_produce_persistence() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    // The registration's persist decision is still undrained (the host is slow).
    let st = h.e.hold(1, T0 + SEC).unwrap();
    assert_eq!(st.hold_until, Some(T0 + SEC + MIN));
    assert_eq!(h.persists(1).len(), 1, "only the registration's write");
}
