//! The standby pipeline: slots, queue, begin/report, outcomes (reference §4.5, §4.6).

use super::*;

fn addr(n: u8) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 100, n))
}

fn fleet(h: &mut H, n: u8, timeout: u64) {
    for k in 1..=n {
        h.reg(u64::from(k), spec_with(addr(k), policy(timeout)), T0);
    }
}

/// An engine that confirms idleness with the observer before each standby.
fn confirm_first() -> H {
    H::with(EngineConfig {
        confirm_before_standby: true,
        ..EngineConfig::default()
    })
}

/// Instance 1 due at `now` and its confirmation resync begun.
fn confirming(now: UnixMillis) -> (H, ResyncId) {
    let mut h = confirm_first();
    h.reg(1, spec(MIN), T0);
    h.e.tick(now);
    let r = h.e.begin_resync(ResyncScope::Instances(vec![1]), now);
    (h, r)
}

/// An engine that runs one standby at a time.
fn one_slot() -> H {
    H::with(EngineConfig {
        max_concurrent_standbys: 1,
        ..EngineConfig::default()
    })
}

/// An established inbound TCP flow to `server`:80.
fn established_to(server: IpAddr) -> Flow {
    flow(
        proto::TCP,
        ip("203.0.113.1"),
        9,
        server,
        80,
        Some(TcpState::ESTABLISHED),
        1,
    )
}

impl H {
    /// Begins and reports success for `key`, returning the standbys emitted after.
    fn run_standbys_after(&mut self, key: InstanceKey, now: UnixMillis) -> Vec<InstanceKey> {
        assert_eq!(self.e.begin_standby(key, now), Ok(BeginStandby::Proceed));
        self.e
            .report_standby(key, StandbyOutcome::Success, now)
            .unwrap();
        self.standbys()
    }
}

#[test]
fn elapsed_countdown_emits_one_standby_and_success_clears_state() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.drain();
    h.e.tick(T0 + MIN);
    assert_eq!(h.standbys(), vec![1]);
    let st = h.st(1, T0 + MIN);
    assert_eq!(
        (st.status, st.reason),
        (Status::StandbyRequested, Reason::ReadyForStandby)
    );
    assert_eq!(h.e.stats().standby_in_flight, 1);
    assert_eq!(h.e.begin_standby(1, T0 + MIN), Ok(BeginStandby::Proceed));
    h.e.report_standby(1, StandbyOutcome::Success, T0 + MIN + SEC)
        .unwrap();
    assert_eq!(h.persists(1), vec![None]);
    let st = h.st(1, T0 + MIN + SEC);
    assert_eq!(
        (st.status, st.reason),
        (Status::Ineligible, Reason::InstanceNotRunning)
    );
    assert_eq!((st.idle_since, st.next_standby_at), (None, None));
    assert_eq!(h.e.stats().standby_in_flight, 0);
    h.e.tick(T0 + 10 * MIN);
    assert!(h.standbys().is_empty());
}

#[test]
fn backoff_retry_doubles_per_failure_capped_by_the_timeout() {
    let mut h = H::with(EngineConfig {
        standby_retry: StandbyRetry::Backoff,
        standby_retry_initial_ms: 10 * SEC,
        ..EngineConfig::default()
    });
    h.reg(1, spec(MIN), T0);
    let mut now = T0 + MIN;
    let mut gaps = Vec::new();
    for _ in 0..5 {
        assert_eq!(h.run_standbys(now, StandbyOutcome::Failed), vec![1]);
        let st = h.st(1, now);
        assert_eq!(st.status, Status::IdleCountdown);
        let next = st.next_standby_at.unwrap();
        gaps.push(next - now);
        h.e.tick(next - 1);
        assert!(h.standbys().is_empty(), "no retry before the backoff");
        now = next;
    }
    assert_eq!(gaps, vec![10 * SEC, 20 * SEC, 40 * SEC, MIN, MIN]);
    // Policy kept, instance still tracked.
    assert!(h.st(1, now).eligible);
}

#[test]
fn failed_standby_restarts_a_full_countdown_and_persists_it_by_default() {
    let mut h = H::new();
    assert_eq!(h.e.config().standby_retry, StandbyRetry::Countdown);
    h.reg(1, spec(MIN), T0);
    h.drain();
    let mut now = T0 + MIN;
    for _ in 0..3 {
        h.e.tick(now);
        assert_eq!(h.standbys(), vec![1]);
        assert_eq!(h.e.begin_standby(1, now), Ok(BeginStandby::Proceed));
        let failed_at = now + 5 * SEC;
        h.e.report_standby(1, StandbyOutcome::Failed, failed_at)
            .unwrap();
        // idle_since moves to the failure; the last activity is left as it was.
        assert_eq!(
            h.persists(1),
            vec![Some(Runtime {
                idle_since: Some(failed_at),
                last_inbound_activity_at: None,
            })]
        );
        let st = h.st(1, failed_at);
        assert_eq!(
            (st.status, st.reason),
            (Status::IdleCountdown, Reason::IdleTimeoutNotElapsed)
        );
        assert_eq!(st.idle_since, Some(failed_at));
        assert_eq!(st.next_standby_at, Some(failed_at + MIN));
        assert_eq!(h.e.next_deadline(), Some(failed_at + MIN));
        h.e.tick(failed_at + MIN - 1);
        assert!(h.standbys().is_empty(), "no retry before a full timeout");
        now = failed_at + MIN;
    }
}

#[test]
fn countdown_retry_keeps_the_last_activity_and_survives_a_restart() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.new_flow(inbound(1, Some(TcpState::ESTABLISHED)), T0 + SEC);
    h.destroy(inbound(1, Some(TcpState::CLOSE)), T0 + 2 * SEC);
    h.drain();
    let due = T0 + 2 * SEC + MIN;
    h.e.tick(due);
    assert_eq!(h.standbys(), vec![1]);
    assert_eq!(h.e.begin_standby(1, due), Ok(BeginStandby::Proceed));
    h.e.report_standby(1, StandbyOutcome::Failed, due + SEC)
        .unwrap();
    let persisted = h.persists(1).last().copied().flatten().unwrap();
    assert_eq!(
        persisted,
        Runtime {
            idle_since: Some(due + SEC),
            last_inbound_activity_at: Some(T0 + SEC),
        }
    );

    // A restarted host registers with what it persisted: the countdown resumes.
    let mut after = H::new();
    let mut s = spec(MIN);
    s.runtime = persisted;
    after.reg(1, s, due + 10 * SEC);
    let st = after.st(1, due + 10 * SEC);
    assert_eq!(st.idle_since, Some(due + SEC));
    assert_eq!(st.next_standby_at, Some(due + SEC + MIN));
}

#[test]
fn countdown_retry_never_moves_idle_since_backwards() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.e.tick(T0 + MIN);
    assert_eq!(h.standbys(), vec![1]);
    assert_eq!(h.e.begin_standby(1, T0 + MIN), Ok(BeginStandby::Proceed));
    // A report stamped before the countdown began (a host clock behind the engine's).
    h.e.report_standby(1, StandbyOutcome::Failed, T0 - SEC)
        .unwrap();
    let st = h.st(1, T0 + MIN);
    assert_eq!(st.idle_since, Some(T0));
}

#[test]
fn failure_with_mid_flight_activity_does_not_rearm_with_backoff_either() {
    let mut h = H::with(EngineConfig {
        standby_retry: StandbyRetry::Backoff,
        ..EngineConfig::default()
    });
    h.reg(1, spec(MIN), T0);
    h.e.tick(T0 + MIN);
    assert_eq!(h.standbys(), vec![1]);
    assert_eq!(h.e.begin_standby(1, T0 + MIN), Ok(BeginStandby::Proceed));
    h.new_flow(inbound(1, Some(TcpState::ESTABLISHED)), T0 + MIN + 100);
    h.e.report_standby(1, StandbyOutcome::Failed, T0 + MIN + 200)
        .unwrap();
    let st = h.st(1, T0 + MIN + 200);
    assert_eq!((st.status, st.active_inbound), (Status::Active, 1));
    assert_eq!((st.idle_since, st.next_standby_at), (None, None));
    assert_eq!(h.e.next_deadline(), None);
}

#[test]
fn failure_with_mid_flight_activity_does_not_rearm() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.e.tick(T0 + MIN);
    assert_eq!(h.standbys(), vec![1]);
    assert_eq!(h.e.begin_standby(1, T0 + MIN), Ok(BeginStandby::Proceed));
    h.new_flow(inbound(1, Some(TcpState::ESTABLISHED)), T0 + MIN + 100);
    h.e.report_standby(1, StandbyOutcome::Failed, T0 + MIN + 200)
        .unwrap();
    let st = h.st(1, T0 + MIN + 200);
    assert_eq!((st.status, st.active_inbound), (Status::Active, 1));
    assert_eq!((st.idle_since, st.next_standby_at), (None, None));
    assert_eq!(h.e.next_deadline(), None);
    let last = h.persists(1).last().copied().flatten().unwrap();
    assert_eq!(last.idle_since, None);
}

#[test]
fn not_found_drops_the_instance() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.run_standbys(T0 + MIN, StandbyOutcome::NotFound);
    assert_eq!(h.e.status(1, T0 + MIN), Err(EngineError::NotFound(1)));
    assert_eq!(h.e.stats().instances, 0);
    assert!(h.e.addresses().is_empty());
}

#[test]
fn concurrency_is_bounded_and_the_queue_is_fifo() {
    let mut h = H::with(EngineConfig {
        max_concurrent_standbys: 2,
        ..EngineConfig::default()
    });
    fleet(&mut h, 4, MIN);
    h.e.tick(T0 + MIN);
    assert_eq!(h.standbys(), vec![1, 2]);
    let s = h.e.stats();
    assert_eq!((s.standby_in_flight, s.standby_queued), (2, 2));
    assert_eq!(h.st(3, T0 + MIN).status, Status::StandbyRequested);
    assert_eq!(h.run_standbys_after(1, T0 + MIN), vec![3]);
    assert_eq!(h.run_standbys_after(2, T0 + MIN), vec![4]);
}

#[test]
fn activity_while_queued_cancels_that_standby() {
    let mut h = one_slot();
    fleet(&mut h, 2, MIN);
    h.e.tick(T0 + MIN);
    assert_eq!(h.standbys(), vec![1]);
    let f = established_to(addr(2));
    h.new_flow(f, T0 + MIN + SEC);
    assert_eq!(h.e.stats().standby_queued, 0);
    assert_eq!(
        h.run_standbys_after(1, T0 + MIN + 2 * SEC),
        Vec::<u64>::new()
    );
    assert_eq!(h.st(2, T0 + MIN + 2 * SEC).status, Status::Active);
}

#[test]
fn activity_after_emission_cancels_at_begin_and_frees_the_slot() {
    let mut h = one_slot();
    fleet(&mut h, 2, MIN);
    h.e.tick(T0 + MIN);
    assert_eq!(h.standbys(), vec![1]);
    let f = established_to(addr(1));
    h.new_flow(f, T0 + MIN + 1);
    assert_eq!(
        h.e.begin_standby(1, T0 + MIN + 2),
        Ok(BeginStandby::Cancelled(Reason::ActiveInboundConnections))
    );
    // The freed slot goes to the queued instance.
    assert_eq!(h.standbys(), vec![2]);
    assert_eq!(
        h.e.report_standby(1, StandbyOutcome::Success, T0 + MIN),
        Err(EngineError::NoStandbyOutstanding(1))
    );
}

#[test]
fn repeated_deliveries_dispatch_once() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.e.tick(T0 + MIN);
    h.e.tick(T0 + MIN);
    h.e.tick(T0 + 2 * MIN);
    assert_eq!(h.standbys(), vec![1]);
}

#[test]
fn refresh_during_an_executing_standby_does_not_dispatch_again() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.e.tick(T0 + MIN);
    assert_eq!(h.standbys(), vec![1]);
    assert_eq!(h.e.begin_standby(1, T0 + MIN), Ok(BeginStandby::Proceed));
    h.e.update(1, spec(MIN), T0 + MIN + SEC).unwrap();
    let r = h.e.begin_resync(ResyncScope::All, T0 + MIN + SEC);
    h.e.finish_resync(r, T0 + MIN + SEC).unwrap();
    h.e.tick(T0 + 5 * MIN);
    assert!(h.standbys().is_empty());
    assert_eq!(
        h.e.hold(1, T0 + 5 * MIN),
        Err(EngineError::StandbyInProgress)
    );
    assert_eq!(
        h.e.begin_standby(1, T0 + 5 * MIN),
        Err(EngineError::NoStandbyOutstanding(1))
    );
    h.e.report_standby(1, StandbyOutcome::Success, T0 + 5 * MIN)
        .unwrap();
}

#[test]
fn resync_finding_a_flow_cancels_a_queued_standby() {
    let mut h = one_slot();
    fleet(&mut h, 2, MIN);
    h.e.tick(T0 + MIN);
    assert_eq!(h.standbys(), vec![1]);
    let r = h.e.begin_resync(ResyncScope::All, T0 + MIN);
    let f = established_to(addr(2));
    h.e.resync_flow(r, &f).unwrap();
    h.e.finish_resync(r, T0 + MIN).unwrap();
    assert_eq!(h.st(2, T0 + MIN).active_inbound, 1);
    assert_eq!(h.run_standbys_after(1, T0 + MIN), Vec::<u64>::new());
}

#[test]
fn invalid_update_does_not_cancel_a_queued_standby() {
    let mut h = one_slot();
    fleet(&mut h, 2, MIN);
    h.e.tick(T0 + MIN);
    assert_eq!(h.standbys(), vec![1]);
    let bad = spec_with(addr(2), policy(0));
    assert!(matches!(
        h.e.update(2, bad, T0 + MIN),
        Err(EngineError::InvalidPolicy(_))
    ));
    let taken = spec_with(addr(1), policy(MIN));
    assert!(matches!(
        h.e.update(2, taken, T0 + MIN),
        Err(EngineError::AddressInUse { owner: 1, .. })
    ));
    assert_eq!(h.st(2, T0 + MIN).status, Status::StandbyRequested);
    assert_eq!(h.run_standbys_after(1, T0 + MIN), vec![2]);
}

#[test]
fn unregistering_releases_slots_and_queue_entries() {
    let mut h = one_slot();
    fleet(&mut h, 3, MIN);
    h.e.tick(T0 + MIN);
    h.e.unregister(2, T0 + MIN).unwrap();
    h.e.unregister(1, T0 + MIN).unwrap();
    // 1's undrained decision is withdrawn; its slot goes to 3.
    assert_eq!(h.standbys(), vec![3]);
    assert_eq!(h.e.stats().standby_in_flight, 1);
    assert_eq!(h.e.stats().standby_queued, 0);
}

#[test]
fn begin_and_report_without_a_standby_are_errors_that_change_nothing() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    let before = h.st(1, T0);
    assert_eq!(
        h.e.begin_standby(1, T0),
        Err(EngineError::NoStandbyOutstanding(1))
    );
    assert_eq!(
        h.e.report_standby(1, StandbyOutcome::Failed, T0),
        Err(EngineError::NoStandbyOutstanding(1))
    );
    assert_eq!(h.e.begin_standby(9, T0), Err(EngineError::NotFound(9)));
    assert_eq!(h.st(1, T0), before);
}

#[test]
fn confirmation_precedes_standby_when_configured() {
    let mut h = confirm_first();
    h.reg(1, spec(MIN), T0);
    h.e.tick(T0 + MIN);
    assert!(h.standbys().is_empty());
    assert_eq!(h.requests(), vec![ObserverRequest::Confirm(1)]);
    let st = h.st(1, T0 + MIN);
    assert_eq!(
        (st.status, st.reason),
        (Status::IdleCountdown, Reason::ConfirmPending)
    );
    let r = h.e.begin_resync(ResyncScope::Instances(vec![1]), T0 + MIN);
    h.e.finish_resync(r, T0 + MIN + 10).unwrap();
    assert_eq!(h.standbys(), vec![1]);
}

#[test]
fn confirmation_that_finds_a_flow_skips_standby() {
    let mut h = confirm_first();
    h.reg(1, spec(MIN), T0);
    h.e.tick(T0 + MIN);
    h.requests();
    let r = h.e.begin_resync(ResyncScope::Instances(vec![1]), T0 + MIN);
    h.e.resync_flow(r, &inbound(1, Some(TcpState::ESTABLISHED)))
        .unwrap();
    h.e.finish_resync(r, T0 + MIN).unwrap();
    assert!(h.standbys().is_empty());
    let st = h.st(1, T0 + MIN);
    assert_eq!(
        (st.status, st.active_inbound, st.idle_since),
        (Status::Active, 1, None)
    );
    assert_eq!(h.e.next_deadline(), None);
}

#[test]
fn failed_confirmation_restarts_the_countdown() {
    let now = T0 + MIN + 5 * SEC;
    let (mut h, r) = confirming(now);
    h.e.fail_resync(r, now).unwrap();
    assert!(h.standbys().is_empty());
    let st = h.st(1, now);
    assert_eq!(
        (st.status, st.reason),
        (Status::IdleCountdown, Reason::ConfirmFailed)
    );
    assert_eq!(
        (st.idle_since, st.next_standby_at),
        (Some(now), Some(now + MIN))
    );
}

#[test]
fn failed_confirmation_after_activity_leaves_the_instance_active() {
    let (mut h, r) = confirming(T0 + MIN);
    h.new_flow(inbound(1, Some(TcpState::ESTABLISHED)), T0 + MIN + 1);
    h.e.fail_resync(r, T0 + MIN + 2).unwrap();
    let st = h.st(1, T0 + MIN + 2);
    assert_eq!(
        (st.status, st.idle_since, st.next_standby_at),
        (Status::Active, None, None)
    );
}

#[test]
fn countdown_restarted_during_confirmation_wins() {
    let (mut h, r) = confirming(T0 + MIN);
    h.new_flow(inbound(1, Some(TcpState::ESTABLISHED)), T0 + MIN + 1);
    h.destroy(inbound(1, None), T0 + MIN + 2);
    h.e.resync_flow(r, &inbound(1, Some(TcpState::ESTABLISHED)))
        .unwrap();
    h.e.finish_resync(r, T0 + MIN + 3).unwrap();
    assert!(
        h.standbys().is_empty(),
        "tombstone kept the dump from resurrecting it"
    );
    assert_eq!(
        h.st(1, T0 + MIN + 3).next_standby_at,
        Some(T0 + MIN + 2 + MIN)
    );
}

#[test]
fn hold_during_confirmation_wins() {
    let (mut h, r) = confirming(T0 + MIN);
    let held = h.e.hold(1, T0 + MIN + 1).unwrap();
    h.e.finish_resync(r, T0 + MIN + 2).unwrap();
    assert!(h.standbys().is_empty());
    assert_eq!(held.hold_until, Some(T0 + 2 * MIN + 1));
    assert_eq!(
        h.st(1, T0 + MIN + 2).next_standby_at,
        Some(T0 + 2 * MIN + 1)
    );
}

#[test]
fn raced_connection_during_snapshot_wakes_the_instance_back() {
    let mut h = H::new();
    let mut p = policy(MIN);
    p.wake_on_traffic = true;
    h.reg(1, spec_with(guest(), p), T0);
    h.e.tick(T0 + MIN);
    h.standbys();
    assert_eq!(h.e.begin_standby(1, T0 + MIN), Ok(BeginStandby::Proceed));
    h.new_flow(inbound(7, Some(TcpState::SYN_SENT)), T0 + MIN + 1);
    h.e.report_standby(1, StandbyOutcome::Success, T0 + MIN + 2)
        .unwrap();
    let wakes: Vec<Decision> = h
        .drain()
        .into_iter()
        .filter(|d| matches!(d, Decision::Wake { .. }))
        .collect();
    assert_eq!(
        wakes,
        vec![Decision::Wake {
            key: 1,
            protocol: proto::TCP,
            flow: inbound(7, None).orig
        }]
    );
}

/// Instance 1 (idle timeout one minute, due at `T0 + MIN`) confirmed idle by a dump that
/// began and ended ahead of its deadline.
fn confirmed_ahead() -> H {
    let mut h = confirm_first();
    h.reg(1, spec(MIN), T0);
    let ask = T0 + MIN - 2 * SEC;
    assert_eq!(h.e.next_deadline(), Some(ask), "asks the lead ahead");
    h.e.tick(ask - 1);
    assert!(h.requests().is_empty());
    h.e.tick(ask);
    assert_eq!(h.requests(), vec![ObserverRequest::Confirm(1)]);
    let st = h.st(1, ask);
    assert_eq!(
        (st.status, st.next_standby_at),
        (Status::IdleCountdown, Some(T0 + MIN)),
        "still counting down while confirming ahead"
    );
    let r = h.e.begin_resync(ResyncScope::Instances(vec![1]), ask);
    h.e.finish_resync(r, ask + 150).unwrap();
    assert!(h.standbys().is_empty(), "not before the deadline");
    assert_eq!(h.e.next_deadline(), Some(T0 + MIN));
    h
}

#[test]
fn confirmed_ahead_gets_standby_exactly_at_the_deadline() {
    let mut h = confirmed_ahead();
    h.e.tick(T0 + MIN - 1);
    assert!(h.standbys().is_empty());
    h.e.tick(T0 + MIN);
    assert_eq!(h.standbys(), vec![1]);
    assert!(h.requests().is_empty(), "no second dump");
}

#[test]
fn activity_after_an_early_confirmation_prevents_standby() {
    let mut h = confirmed_ahead();
    let f = inbound(1, Some(TcpState::ESTABLISHED));
    h.new_flow(f, T0 + MIN - SEC);
    h.e.tick(T0 + MIN);
    assert!(h.standbys().is_empty(), "live flow");
    h.destroy(f, T0 + MIN - SEC + 10);
    h.e.tick(T0 + MIN);
    assert!(h.standbys().is_empty(), "the countdown restarted");
    // The next deadline needs a new confirmation.
    let due = T0 + 2 * MIN - SEC + 10;
    h.e.tick(due);
    assert!(h.standbys().is_empty());
    assert_eq!(h.requests(), vec![ObserverRequest::Confirm(1)]);
}

#[test]
fn hold_loss_update_or_observer_failure_void_an_early_confirmation() {
    type Void = fn(&mut H, UnixMillis);
    let voids: [(&str, Void); 4] = [
        ("hold", |h, now| {
            h.e.hold(1, now).unwrap();
        }),
        ("loss", |h, now| {
            h.e.events_lost(ResyncScope::Instances(vec![1]), now);
            let r = h.e.begin_resync(ResyncScope::Instances(vec![1]), now);
            h.e.finish_resync(r, now).unwrap();
        }),
        ("update", |h, now| h.e.update(1, spec(MIN), now).unwrap()),
        ("observer", |h, now| {
            h.e.set_observer_health(ObserverHealth::Failed("x".into()), now);
            h.e.set_observer_health(ObserverHealth::Healthy, now);
        }),
    ];
    for (what, void) in voids {
        let mut h = confirmed_ahead();
        void(&mut h, T0 + MIN - SEC);
        h.requests();
        h.e.tick(T0 + MIN);
        assert!(
            h.standbys().is_empty(),
            "{what}: standby without a new dump"
        );
    }
}

#[test]
fn early_confirmation_failure_restarts_the_countdown() {
    let mut h = confirm_first();
    h.reg(1, spec(MIN), T0);
    let ask = T0 + MIN - 2 * SEC;
    h.e.tick(ask);
    assert_eq!(h.requests(), vec![ObserverRequest::Confirm(1)]);
    let r = h.e.begin_resync(ResyncScope::Instances(vec![1]), ask);
    h.e.fail_resync(r, ask + 100).unwrap();
    let st = h.st(1, ask + 100);
    assert_eq!(
        (st.status, st.reason, st.idle_since, st.next_standby_at),
        (
            Status::IdleCountdown,
            Reason::ConfirmFailed,
            Some(ask + 100),
            Some(ask + 100 + MIN)
        )
    );
    h.e.tick(T0 + MIN);
    assert!(h.standbys().is_empty());
}

#[test]
fn confirmation_finishing_after_the_deadline_is_followed_by_standby() {
    let mut h = confirm_first();
    h.reg(1, spec(MIN), T0);
    let ask = T0 + MIN - 2 * SEC;
    h.e.tick(ask);
    h.requests();
    let r = h.e.begin_resync(ResyncScope::Instances(vec![1]), ask);
    h.e.tick(T0 + MIN);
    assert!(h.standbys().is_empty(), "the confirmation is not in yet");
    let st = h.st(1, T0 + MIN);
    assert_eq!(
        (st.status, st.reason),
        (Status::IdleCountdown, Reason::ConfirmPending)
    );
    h.e.finish_resync(r, T0 + MIN + 500).unwrap();
    assert_eq!(h.standbys(), vec![1]);
}

#[test]
fn confirmation_lead_is_capped_at_half_the_idle_timeout() {
    let mut h = confirm_first();
    h.reg(1, spec(2 * SEC), T0);
    assert_eq!(h.e.next_deadline(), Some(T0 + SEC));
}

#[test]
fn a_standby_under_way_with_a_live_flow_reports_active() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.e.tick(T0 + MIN);
    assert_eq!(h.standbys(), vec![1]);
    assert_eq!(h.st(1, T0 + MIN).status, Status::StandbyRequested);
    assert_eq!(h.e.begin_standby(1, T0 + MIN), Ok(BeginStandby::Proceed));
    // A connection arrives while the host snapshots.
    h.new_flow(inbound(40_000, Some(TcpState::SYN_SENT)), T0 + MIN + 1);
    let st = h.st(1, T0 + MIN + 2);
    assert_eq!(
        (st.status, st.reason, st.active_inbound),
        (Status::Active, Reason::ActiveInboundConnections, 1)
    );
}

#[test]
fn a_persisted_countdown_is_not_ready_before_its_first_confirmation() {
    let mut h = confirm_first();
    let mut sp = spec(MIN);
    // Idle for an hour before the host restarted: the deadline is long past.
    sp.runtime = Runtime {
        idle_since: Some(T0 - 60 * MIN),
        last_inbound_activity_at: Some(T0 - 60 * MIN),
    };
    h.reg(1, sp, T0);
    // Before any deadline fired, and after it asked for the confirmation.
    let st = h.st(1, T0);
    assert_eq!(
        (st.status, st.reason),
        (Status::IdleCountdown, Reason::ConfirmPending)
    );
    h.e.tick(T0);
    assert_eq!(h.requests(), vec![ObserverRequest::Confirm(1)]);
    let st = h.st(1, T0 + 1);
    assert_eq!(
        (st.status, st.reason),
        (Status::IdleCountdown, Reason::ConfirmPending)
    );
    let r = h.e.begin_resync(ResyncScope::Instances(vec![1]), T0 + 1);
    h.e.finish_resync(r, T0 + 2).unwrap();
    assert_eq!(h.standbys(), vec![1]);
    assert_eq!(h.st(1, T0 + 3).status, Status::StandbyRequested);
}

#[test]
fn a_declined_standby_frees_its_slot_and_is_decided_again() {
    let mut h = H::with(EngineConfig {
        max_concurrent_standbys: 1,
        ..EngineConfig::default()
    });
    h.reg(1, spec(MIN), T0);
    h.reg(2, spec_with(ip("192.168.100.11"), policy(MIN)), T0);
    h.e.tick(T0 + MIN);
    assert_eq!(h.standbys(), vec![1]);
    assert_eq!(h.e.stats().standby_queued, 1);
    // The host took instance 1's decision and dropped it: the slot goes to 2, and 1 is
    // decided again once that slot is free.
    h.e.decline_standby(1, T0 + MIN + 1).unwrap();
    assert_eq!(h.standbys(), vec![2]);
    assert_eq!(
        h.e.decline_standby(1, T0 + MIN + 1),
        Err(EngineError::NoStandbyOutstanding(1))
    );
    assert_eq!(
        h.e.begin_standby(2, T0 + MIN + 2),
        Ok(BeginStandby::Proceed)
    );
    assert_eq!(
        h.e.decline_standby(2, T0 + MIN + 2),
        Err(EngineError::StandbyInProgress)
    );
    h.e.report_standby(2, StandbyOutcome::Success, T0 + MIN + 3)
        .unwrap();
    h.e.tick(T0 + MIN + 3);
    assert_eq!(h.standbys(), vec![1]);
}

#[test]
fn a_longer_confirm_lead_moves_armed_deadlines_earlier() {
    let mut h = confirm_first();
    h.reg(1, spec(MIN), T0);
    // Registered with no flow at T0: due at T0 + 1 min, confirmed 2 s before.
    assert_eq!(h.e.next_deadline(), Some(T0 + MIN - 2 * SEC));
    h.e.set_confirm_lead_ms(10 * SEC, T0 + SEC);
    assert_eq!(h.e.confirm_lead_ms(), 10 * SEC);
    assert_eq!(h.e.next_deadline(), Some(T0 + MIN - 10 * SEC));
    h.e.tick(T0 + MIN - 10 * SEC);
    assert_eq!(h.requests(), vec![ObserverRequest::Confirm(1)]);
    // Capped at half the idle timeout, as the configured lead is.
    let mut h = confirm_first();
    h.reg(2, spec(10 * SEC), T0);
    h.e.set_confirm_lead_ms(MIN, T0);
    assert_eq!(h.e.next_deadline(), Some(T0 + 5 * SEC));
}
