//! Kernel mode: an instance's flows are unknown from its registration (or a new address)
//! until a resync that began afterwards has read them.

use super::*;

fn kernel() -> H {
    H::with(EngineConfig {
        pending_until_first_resync: true,
        ..EngineConfig::default()
    })
}

fn other() -> IpAddr {
    ip("192.168.100.20")
}

/// Runs a resync of `scope` from `at` to `end` that dumps `flows`.
fn resync(h: &mut H, scope: ResyncScope, at: UnixMillis, end: UnixMillis, flows: &[Flow]) {
    let r = h.e.begin_resync(scope, at);
    for f in flows {
        h.e.resync_flow(r, f).unwrap();
    }
    h.e.finish_resync(r, end).unwrap();
}

fn assert_pending(h: &H, key: InstanceKey, now: UnixMillis) {
    let st = h.st(key, now);
    assert_eq!(
        (st.status, st.reason),
        (Status::Active, Reason::ResyncPending),
        "{st:?}"
    );
    assert_eq!(st.idle_since, None, "{st:?}");
    assert_eq!(st.next_standby_at, None, "{st:?}");
    assert_eq!(st.countdown_remaining_ms, None, "{st:?}");
    assert_eq!(h.e.resync_pending(key), Ok(true));
}

#[test]
fn registered_instance_is_pending_with_no_countdown_and_no_standby() {
    let mut h = kernel();
    h.reg(1, spec(MIN), T0);
    assert_pending(&h, 1, T0);
    assert!(
        h.persists(1).is_empty(),
        "nothing decided before the flows are read"
    );
    assert_eq!(h.e.next_deadline(), None);
    h.e.tick(T0 + 10 * MIN);
    assert!(h.standbys().is_empty());
    assert_pending(&h, 1, T0 + 10 * MIN);
    // The engine asks for nothing itself: the observer resyncs after the address change.
    assert!(h.requests().is_empty());
}

#[test]
fn manual_mode_counts_down_from_registration() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    let st = h.st(1, T0);
    assert_eq!(
        (st.status, st.reason),
        (Status::IdleCountdown, Reason::IdleTimeoutNotElapsed)
    );
    assert_eq!(st.next_standby_at, Some(T0 + MIN));
    assert_eq!(h.e.resync_pending(1), Ok(false));
}

#[test]
fn a_later_resync_without_flows_starts_the_countdown_when_it_finishes() {
    let mut h = kernel();
    h.reg(1, spec(MIN), T0);
    resync(&mut h, ResyncScope::All, T0 + 10, T0 + 50, &[]);
    let st = h.st(1, T0 + 50);
    assert_eq!(
        (st.status, st.reason),
        (Status::IdleCountdown, Reason::IdleTimeoutNotElapsed)
    );
    assert_eq!(st.idle_since, Some(T0 + 50));
    assert_eq!(st.next_standby_at, Some(T0 + 50 + MIN));
    assert_eq!(h.e.resync_pending(1), Ok(false));
    assert_eq!(
        h.persists(1),
        vec![Some(Runtime {
            idle_since: Some(T0 + 50),
            last_inbound_activity_at: None
        })]
    );
    assert!(
        h.run_standbys(T0 + 49 + MIN, StandbyOutcome::Success)
            .is_empty()
    );
    assert_eq!(
        h.run_standbys(T0 + 50 + MIN, StandbyOutcome::Success),
        vec![1]
    );
}

#[test]
fn a_later_resync_with_live_flows_makes_it_active() {
    let mut h = kernel();
    h.reg(1, spec(MIN), T0);
    let live: Vec<Flow> = (1..=10)
        .map(|p| inbound(p, Some(TcpState::ESTABLISHED)))
        .collect();
    resync(
        &mut h,
        ResyncScope::Instances(vec![1]),
        T0 + 10,
        T0 + 20,
        &live,
    );
    let st = h.st(1, T0 + 20);
    assert_eq!(
        (st.status, st.reason, st.active_inbound),
        (Status::Active, Reason::ActiveInboundConnections, 10)
    );
    let mut flows = Vec::new();
    h.e.explain(1, T0 + 20, &mut flows).unwrap();
    assert_eq!(flows.len(), 10);
}

#[test]
fn a_resync_begun_before_registration_does_not_clear_it() {
    let mut h = kernel();
    h.reg(2, spec_with(other(), policy(MIN)), T0);
    // A full resync begins; its dump cannot hold instance 1's addresses.
    let r = h.e.begin_resync(ResyncScope::All, T0);
    h.reg(1, spec(MIN), T0 + 1);
    h.e.finish_resync(r, T0 + 2).unwrap();
    assert_pending(&h, 1, T0 + 2);
    // It did cover instance 2, registered before it began.
    assert_eq!(h.st(2, T0 + 2).reason, Reason::IdleTimeoutNotElapsed);
    h.e.tick(T0 + 10 * MIN);
    assert!(h.standbys().contains(&2));
    assert_pending(&h, 1, T0 + 10 * MIN);

    resync(&mut h, ResyncScope::All, T0 + 10 * MIN, T0 + 10 * MIN, &[]);
    assert_eq!(h.st(1, T0 + 10 * MIN).reason, Reason::IdleTimeoutNotElapsed);
}

#[test]
fn a_scoped_resync_of_another_instance_does_not_clear_it() {
    let mut h = kernel();
    h.reg(1, spec(MIN), T0);
    h.reg(2, spec_with(other(), policy(MIN)), T0);
    resync(&mut h, ResyncScope::Instances(vec![2]), T0 + 1, T0 + 2, &[]);
    assert_pending(&h, 1, T0 + 2);
    assert_eq!(h.e.resync_pending(2), Ok(false));
    resync(&mut h, ResyncScope::Instances(vec![1]), T0 + 3, T0 + 4, &[]);
    assert_eq!(h.e.resync_pending(1), Ok(false));
}

#[test]
fn persisted_countdown_resumes_only_after_a_resync_without_flows() {
    let mut h = kernel();
    let mut s = spec(10 * MIN);
    s.runtime = Runtime {
        idle_since: Some(T0 - 5 * MIN),
        last_inbound_activity_at: Some(T0 - 6 * MIN),
    };
    h.reg(1, s, T0);
    assert_pending(&h, 1, T0);
    assert!(
        h.persists(1).is_empty(),
        "the host's countdown is kept while pending"
    );
    resync(&mut h, ResyncScope::All, T0 + 10, T0 + 20, &[]);
    let st = h.st(1, T0 + 20);
    assert_eq!(
        (st.status, st.reason),
        (Status::IdleCountdown, Reason::IdleTimeoutNotElapsed)
    );
    assert_eq!(st.idle_since, Some(T0 - 5 * MIN));
    assert_eq!(st.next_standby_at, Some(T0 + 5 * MIN));
    assert!(
        h.persists(1).is_empty(),
        "a resumed countdown is not rewritten"
    );
    assert_eq!(
        h.run_standbys(T0 + 5 * MIN, StandbyOutcome::Success),
        vec![1]
    );
}

#[test]
fn persisted_countdown_is_cleared_by_live_flows_found_by_the_resync() {
    let mut h = kernel();
    let mut s = spec(10 * MIN);
    s.runtime = Runtime {
        idle_since: Some(T0 - 5 * MIN),
        last_inbound_activity_at: Some(T0 - 6 * MIN),
    };
    h.reg(1, s, T0);
    resync(
        &mut h,
        ResyncScope::All,
        T0 + 10,
        T0 + 20,
        &[inbound(1, Some(TcpState::ESTABLISHED))],
    );
    let st = h.st(1, T0 + 20);
    assert_eq!(
        (st.status, st.reason),
        (Status::Active, Reason::ActiveInboundConnections)
    );
    assert_eq!(st.idle_since, None);
    let persisted = h.persists(1);
    assert_eq!(
        persisted.last().and_then(|r| r.map(|r| r.idle_since)),
        Some(None)
    );
    h.e.tick(T0 + 10 * MIN);
    assert!(h.standbys().is_empty());
}

#[test]
fn an_expired_persisted_countdown_waits_for_the_resync() {
    let mut h = kernel();
    let mut s = spec(MIN);
    s.runtime.idle_since = Some(T0 - 2 * MIN);
    h.reg(1, s, T0);
    h.e.tick(T0);
    assert!(h.standbys().is_empty());
    assert_pending(&h, 1, T0);
    resync(&mut h, ResyncScope::All, T0 + 1, T0 + 2, &[]);
    assert_eq!(h.st(1, T0 + 2).status, Status::ReadyForStandby);
    assert_eq!(h.run_standbys(T0 + 2, StandbyOutcome::Success), vec![1]);
}

#[test]
fn flows_seen_by_events_while_pending_count_but_the_status_stays_pending() {
    let mut h = kernel();
    h.reg(1, spec(MIN), T0);
    h.new_flow(inbound(1, Some(TcpState::ESTABLISHED)), T0 + 1);
    let st = h.st(1, T0 + 1);
    assert_eq!(
        (st.status, st.reason, st.active_inbound),
        (Status::Active, Reason::ResyncPending, 1)
    );
    // It closes before the resync: the countdown starts at its end, shown once read.
    h.update_flow(inbound(1, Some(TcpState::TIME_WAIT)), T0 + 5);
    assert_pending(&h, 1, T0 + 5);
    h.e.tick(T0 + 10 * MIN);
    assert!(h.standbys().is_empty());
    resync(&mut h, ResyncScope::All, T0 + 2, T0 + 10 * MIN, &[]);
    let st = h.st(1, T0 + 10 * MIN);
    assert_eq!(st.idle_since, Some(T0 + 5));
    assert_eq!(st.status, Status::ReadyForStandby);
}

#[test]
fn a_new_address_is_pending_until_a_resync_begun_after_the_change() {
    let mut h = kernel();
    h.reg(1, spec(MIN), T0);
    resync(&mut h, ResyncScope::All, T0, T0 + 1, &[]);
    assert_eq!(h.st(1, T0 + 1).reason, Reason::IdleTimeoutNotElapsed);

    let open = h.e.begin_resync(ResyncScope::All, T0 + 2);
    let mut s = spec(MIN);
    s.addresses.push(other());
    h.e.update(1, s.clone(), T0 + 3).unwrap();
    h.e.finish_resync(open, T0 + 4).unwrap();
    assert_pending(&h, 1, T0 + 4);
    h.e.tick(T0 + 10 * MIN);
    assert!(h.standbys().is_empty());

    // The resync after the change finds a flow to the new address.
    let to_new = flow(
        proto::TCP,
        ip("203.0.113.7"),
        5000,
        other(),
        443,
        Some(TcpState::ESTABLISHED),
        9,
    );
    resync(
        &mut h,
        ResyncScope::All,
        T0 + 10 * MIN,
        T0 + 10 * MIN,
        &[to_new],
    );
    let st = h.st(1, T0 + 10 * MIN);
    assert_eq!((st.status, st.active_inbound), (Status::Active, 1));

    // Losing an address leaves the others' flows known.
    s.addresses.pop();
    h.e.update(1, s, T0 + 11 * MIN).unwrap();
    assert_eq!(h.e.resync_pending(1), Ok(false));
}

#[test]
fn a_failed_resync_keeps_it_pending_and_asks_again() {
    let mut h = kernel();
    h.reg(1, spec(MIN), T0);
    let r = h.e.begin_resync(ResyncScope::All, T0 + 1);
    h.e.fail_resync(r, T0 + 2).unwrap();
    assert_pending(&h, 1, T0 + 2);
    assert_eq!(
        h.requests(),
        vec![ObserverRequest::Resync(ResyncScope::Instances(vec![1]))]
    );
    resync(&mut h, ResyncScope::Instances(vec![1]), T0 + 3, T0 + 4, &[]);
    assert_eq!(h.e.resync_pending(1), Ok(false));
}

#[test]
fn an_ineligible_instance_shows_why_while_pending() {
    let mut h = kernel();
    let mut s = spec(MIN);
    s.lifecycle = Lifecycle::Standby;
    h.reg(1, s.clone(), T0);
    assert_eq!(h.st(1, T0).reason, Reason::InstanceNotRunning);
    // Restored before the first resync: pending, not counting down.
    s.lifecycle = Lifecycle::Running;
    h.e.update(1, s, T0 + 1).unwrap();
    assert_pending(&h, 1, T0 + 1);
    resync(&mut h, ResyncScope::All, T0 + 2, T0 + 3, &[]);
    assert_eq!(h.st(1, T0 + 3).next_standby_at, Some(T0 + 3 + MIN));
}

fn addr_of(key: InstanceKey) -> IpAddr {
    IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0100 + key as u32))
}

/// Registers `n` instances with addresses of their own, for a full resync.
fn fleet(n: u64) -> H {
    let mut h = kernel();
    for key in 0..n {
        h.reg(key, spec_with(addr_of(key), policy(MIN)), T0);
    }
    h
}

#[test]
fn a_resync_finished_in_steps_ends_as_one_finished_at_once() {
    let (mut once, mut steps) = (fleet(10), fleet(10));
    let flow = |key: u64| {
        let mut f = inbound(40_000 + key as u16, Some(TcpState::ESTABLISHED));
        f.reply.src = addr_of(key);
        f.orig.dst = addr_of(key);
        f
    };
    let r1 = once.e.begin_resync(ResyncScope::All, T0 + SEC);
    let r2 = steps.e.begin_resync(ResyncScope::All, T0 + SEC);
    for key in [2, 7] {
        once.e.resync_flow(r1, &flow(key)).unwrap();
        steps.e.resync_flow(r2, &flow(key)).unwrap();
    }
    once.e.finish_resync(r1, T0 + 2 * SEC).unwrap();
    let mut calls = 0;
    while !steps.e.finish_resync_bounded(r2, T0 + 2 * SEC, 3).unwrap() {
        calls += 1;
        assert!(steps.e.resync_pending(9).unwrap(), "not reached yet");
    }
    assert_eq!(calls, 3, "10 instances, 3 per step");
    assert_eq!(once.drain(), steps.drain());
    assert_eq!(once.e.stats(), steps.e.stats());
    for key in 0..10 {
        assert_eq!(once.st(key, T0 + 2 * SEC), steps.st(key, T0 + 2 * SEC));
    }
    assert_eq!(steps.st(2, T0 + 2 * SEC).status, Status::Active);
    assert_eq!(steps.st(3, T0 + 2 * SEC).status, Status::IdleCountdown);
    assert_eq!(
        steps.e.finish_resync(r2, T0 + 2 * SEC),
        Err(EngineError::UnknownResync(r2))
    );
}

#[test]
fn an_instance_registered_between_steps_waits_for_a_later_resync() {
    let mut h = fleet(4);
    let r = h.e.begin_resync(ResyncScope::All, T0 + SEC);
    assert!(!h.e.finish_resync_bounded(r, T0 + SEC, 1).unwrap());
    // Slot 3 freed and taken by a new instance whose address the dump never read.
    h.e.unregister(3, T0 + SEC).unwrap();
    h.reg(9, spec_with(addr_of(9), policy(MIN)), T0 + SEC);
    while !h.e.finish_resync_bounded(r, T0 + SEC, 1).unwrap() {}
    assert_pending(&h, 9, T0 + SEC);
    for key in 0..3 {
        assert_eq!(h.st(key, T0 + SEC).status, Status::IdleCountdown);
    }
    resync(&mut h, ResyncScope::All, T0 + 2 * SEC, T0 + 2 * SEC, &[]);
    assert_eq!(h.st(9, T0 + 2 * SEC).status, Status::IdleCountdown);
}

#[test]
fn another_resync_ending_first_completes_the_one_in_steps() {
    let mut h = fleet(4);
    let r = h.e.begin_resync(ResyncScope::All, T0 + SEC);
    let scoped = h.e.begin_resync(ResyncScope::Instances(vec![0]), T0 + SEC);
    assert!(!h.e.finish_resync_bounded(r, T0 + SEC, 1).unwrap());
    h.e.fail_resync(scoped, T0 + SEC).unwrap();
    for key in 1..4 {
        assert_eq!(h.st(key, T0 + SEC).status, Status::IdleCountdown);
    }
    assert_eq!(h.e.stats().resyncs, 1);
}
