//! Wake on traffic, explanations, registration rules and other additions.

use super::*;

fn wake_spec() -> InstanceSpec {
    let mut p = policy(MIN);
    p.wake_on_traffic = true;
    let mut s = spec_with(guest(), p);
    s.lifecycle = Lifecycle::Standby;
    s
}

fn wakes(h: &mut H) -> Vec<Decision> {
    h.drain()
        .into_iter()
        .filter(|d| matches!(d, Decision::Wake { .. }))
        .collect()
}

#[test]
fn first_qualifying_new_flow_wakes_once_until_running_again() {
    let mut h = H::new();
    h.reg(1, wake_spec(), T0);
    h.new_flow(inbound(1, Some(TcpState::SYN_SENT)), T0);
    h.new_flow(inbound(2, Some(TcpState::SYN_SENT)), T0);
    assert_eq!(
        wakes(&mut h),
        vec![Decision::Wake {
            key: 1,
            protocol: proto::TCP,
            flow: inbound(1, None).orig
        }]
    );
    // Running again, then Standby again: the next flow wakes it again.
    let mut s = wake_spec();
    s.lifecycle = Lifecycle::Running;
    h.e.update(1, s, T0 + SEC).unwrap();
    h.e.update(1, wake_spec(), T0 + 2 * SEC).unwrap();
    h.new_flow(inbound(3, Some(TcpState::SYN_SENT)), T0 + 3 * SEC);
    assert_eq!(wakes(&mut h).len(), 1);
    assert_eq!(h.e.stats().wake_decisions, 2);
}

#[test]
fn a_failed_restore_is_retried_on_new_traffic_after_a_doubling_backoff() {
    let mut h = H::new();
    h.reg(1, wake_spec(), T0);
    h.new_flow(inbound(1, Some(TcpState::SYN_SENT)), T0);
    assert_eq!(wakes(&mut h).len(), 1);

    h.e.report_wake(1, WakeOutcome::Failed, T0 + 100).unwrap();
    let st = h.e.status(1, T0 + 100).unwrap();
    assert_eq!(
        (st.status, st.reason),
        (Status::Error, Reason::RestoreFailed)
    );
    assert_eq!(h.e.stats().wake_failures, 1);

    // Within the first backoff (1 s from the failure): no new Wake.
    h.new_flow(inbound(2, Some(TcpState::SYN_SENT)), T0 + 1_000);
    assert!(wakes(&mut h).is_empty());
    // Once it has passed, the next connection wakes it again, once.
    h.new_flow(inbound(3, Some(TcpState::SYN_SENT)), T0 + 1_100);
    h.new_flow(inbound(4, Some(TcpState::SYN_SENT)), T0 + 1_200);
    assert_eq!(wakes(&mut h).len(), 1);

    // A second failure doubles the backoff (2 s).
    h.e.report_wake(1, WakeOutcome::Failed, T0 + 2_000).unwrap();
    h.new_flow(inbound(5, Some(TcpState::SYN_SENT)), T0 + 3_900);
    assert!(wakes(&mut h).is_empty());
    h.new_flow(inbound(6, Some(TcpState::SYN_SENT)), T0 + 4_000);
    assert_eq!(wakes(&mut h).len(), 1);
    assert_eq!(
        h.e.status(1, T0 + 4_000).unwrap().reason,
        Reason::RestoreFailed
    );

    // A success clears the error; the host's Running update follows.
    h.e.report_wake(1, WakeOutcome::Success, T0 + 4_500)
        .unwrap();
    let st = h.e.status(1, T0 + 4_500).unwrap();
    assert_eq!(st.reason, Reason::InstanceNotRunning);
    assert_eq!(h.e.stats().wake_failures, 2);
}

#[test]
fn the_restore_backoff_is_capped_and_reset_by_leaving_standby() {
    let mut h = H::new();
    h.reg(1, wake_spec(), T0);
    let mut t = T0;
    for i in 0..10u16 {
        h.new_flow(inbound(100 + i, Some(TcpState::SYN_SENT)), t);
        assert_eq!(wakes(&mut h).len(), 1, "failure {i}");
        h.e.report_wake(1, WakeOutcome::Failed, t).unwrap();
        t += WAKE_RETRY_MAX_MS.min(SEC << i);
    }
    // Capped: the tenth retry came 30 s after the ninth failure, not 256 s.
    assert!(t - T0 < 10 * WAKE_RETRY_MAX_MS);

    // Running again clears the failures; a later Standby period starts afresh.
    let mut s = wake_spec();
    s.lifecycle = Lifecycle::Running;
    h.e.update(1, s, t).unwrap();
    assert_ne!(h.e.status(1, t).unwrap().reason, Reason::RestoreFailed);
    h.e.update(1, wake_spec(), t).unwrap();
    h.new_flow(inbound(999, Some(TcpState::SYN_SENT)), t);
    assert_eq!(wakes(&mut h).len(), 1);
    // A report for an instance that is no longer in Standby changes nothing.
    let mut s = wake_spec();
    s.lifecycle = Lifecycle::Running;
    h.e.update(1, s, t).unwrap();
    h.e.report_wake(1, WakeOutcome::Failed, t).unwrap();
    assert_ne!(h.e.status(1, t).unwrap().reason, Reason::RestoreFailed);
    assert_eq!(
        h.e.report_wake(2, WakeOutcome::Failed, t),
        Err(EngineError::NotFound(2))
    );
}

#[test]
fn no_wake_without_opt_in_or_for_ignored_or_outbound_flows() {
    let mut h = H::new();
    let mut s = wake_spec();
    s.policy.as_mut().unwrap().wake_on_traffic = false;
    h.reg(1, s, T0);
    h.new_flow(inbound(1, Some(TcpState::SYN_SENT)), T0);
    assert!(wakes(&mut h).is_empty());

    let mut h = H::new();
    let mut s = wake_spec();
    s.policy.as_mut().unwrap().ignore_destination_ports = vec![80];
    h.reg(1, s, T0);
    h.new_flow(inbound(1, Some(TcpState::SYN_SENT)), T0);
    let out = flow(
        proto::TCP,
        guest(),
        5,
        ip("203.0.113.1"),
        443,
        Some(TcpState::SYN_SENT),
        9,
    );
    h.new_flow(out, T0);
    // An UPDATE is not a new connection.
    let mut s2 = wake_spec();
    s2.policy.as_mut().unwrap().ignore_destination_ports = vec![];
    h.e.update(1, s2, T0).unwrap();
    h.update_flow(inbound(2, Some(TcpState::ESTABLISHED)), T0);
    assert!(wakes(&mut h).is_empty());
}

#[test]
fn explain_lists_the_flows_keeping_an_instance_awake() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.new_flow(inbound(1, Some(TcpState::ESTABLISHED)), T0);
    h.new_flow(inbound(2, Some(TcpState::SYN_SENT)), T0 + 5 * SEC);
    h.new_flow(inbound(3, Some(TcpState::TIME_WAIT)), T0 + 5 * SEC);
    let mut why = Vec::new();
    h.e.explain(1, T0 + 65 * SEC, &mut why).unwrap();
    assert_eq!(why.len(), 2);
    assert_eq!(why[0].orig, inbound(1, None).orig);
    assert_eq!(why[0].reply, inbound(1, None).reply);
    assert_eq!(why[0].tcp_state, Some(TcpState::ESTABLISHED));
    assert_eq!((why[0].first_seen, why[0].age_ms), (T0, 65 * SEC));
    assert_eq!(why[1].age_ms, 60 * SEC);
    assert_eq!(h.e.explain(9, T0, &mut why), Err(EngineError::NotFound(9)));
}

#[test]
fn registration_errors_leave_no_trace() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    assert_eq!(
        h.e.register(1, spec(MIN), T0),
        Err(EngineError::AlreadyRegistered(1))
    );
    assert_eq!(
        h.e.register(2, spec(MIN), T0),
        Err(EngineError::AddressInUse {
            addr: guest(),
            owner: 1
        })
    );
    assert!(matches!(
        h.e.register(3, spec_with(ip("10.0.0.3"), policy(0)), T0),
        Err(EngineError::InvalidPolicy(_))
    ));
    assert_eq!(
        h.e.register(4, spec_with(ip("0.0.0.0"), policy(MIN)), T0),
        Err(EngineError::InvalidAddress(ip("0.0.0.0")))
    );
    assert_eq!(h.e.stats().instances, 1);
    assert_eq!(h.e.addresses(), vec![guest()]);
    assert_eq!(h.e.unregister(2, T0), Err(EngineError::NotFound(2)));
    assert_eq!(h.e.update(2, spec(MIN), T0), Err(EngineError::NotFound(2)));
}

#[test]
fn address_changes_move_the_index_and_drop_old_flows() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    let g0 = h.e.addresses_generation();
    h.new_flow(inbound(1, Some(TcpState::ESTABLISHED)), T0);
    let moved = ip("192.168.100.99");
    h.e.update(1, spec_with(moved, policy(MIN)), T0 + SEC)
        .unwrap();
    assert!(h.e.addresses_generation() > g0);
    assert_eq!(h.e.addresses(), vec![moved]);
    assert_eq!(h.e.stats().tracked_flows, 0);
    assert_eq!(h.st(1, T0 + SEC).status, Status::IdleCountdown);
    let g1 = h.e.addresses_generation();
    h.e.update(1, spec_with(moved, policy(2 * MIN)), T0 + SEC)
        .unwrap();
    assert_eq!(h.e.addresses_generation(), g1, "same set, same generation");
    assert_eq!(
        h.e.scope_addresses(&ResyncScope::Instances(vec![1, 42])),
        vec![moved]
    );
    // The old address is free for another instance.
    h.reg(2, spec(MIN), T0 + SEC);
}

#[test]
fn drained_address_changes_rebuild_the_address_set() {
    use std::collections::BTreeSet;
    let mut h = H::new();
    let mut set = BTreeSet::new();
    let mut changes = Vec::new();
    let mut replay = |e: &mut crate::engine::Engine, set: &mut BTreeSet<IpAddr>| {
        changes.clear();
        assert!(e.drain_address_changes(&mut changes));
        for &(a, added) in &changes {
            if added {
                set.insert(a);
            } else {
                set.remove(&a);
            }
        }
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), e.addresses());
    };
    h.reg(1, spec(MIN), T0);
    let other = ip("192.168.100.99");
    h.reg(2, spec_with(other, policy(MIN)), T0);
    replay(&mut h.e, &mut set);
    // An address moves from one instance to another between two drains.
    h.e.unregister(2, T0).unwrap();
    h.e.update(1, spec_with(other, policy(MIN)), T0).unwrap();
    h.reg(3, spec(MIN), T0);
    replay(&mut h.e, &mut set);
    h.e.update(1, spec_with(other, policy(2 * MIN)), T0)
        .unwrap();
    replay(&mut h.e, &mut set);
    assert_eq!(set.len(), 2);
}

#[test]
fn an_undrained_address_journal_is_dropped_and_reported() {
    let mut h = H::new();
    let n = crate::engine::ADDRESS_JOURNAL_MAX as u64 + 10;
    for key in 0..n {
        let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0001 + key as u32));
        h.reg(key, spec_with(a, policy(MIN)), T0);
    }
    let mut changes = Vec::new();
    assert!(
        !h.e.drain_address_changes(&mut changes),
        "changes were dropped"
    );
    assert!(changes.is_empty());
    let mut all = Vec::new();
    h.e.addresses_unsorted(&mut all);
    all.sort();
    assert_eq!(all, h.e.addresses());
    // From here on it is complete again.
    h.e.unregister(0, T0).unwrap();
    assert!(h.e.drain_address_changes(&mut changes));
    assert_eq!(changes, vec![(ip("10.0.0.1"), false)]);
}

#[test]
fn unregister_forgets_flows_and_persists_nothing() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.new_flow(inbound(1, Some(TcpState::ESTABLISHED)), T0);
    h.e.unregister(1, T0).unwrap();
    assert!(
        h.drain().is_empty(),
        "undrained decisions about it are withdrawn"
    );
    let s = h.e.stats();
    assert_eq!((s.instances, s.tracked_flows), (0, 0));
    assert_eq!(h.e.next_deadline(), None);
}

#[test]
fn status_follows_hypemans_eligibility_order() {
    let mut h = H::new();
    let mut s = spec(MIN);
    s.policy = None;
    s.network_enabled = false;
    h.reg(1, s.clone(), T0);
    let st = h.st(1, T0);
    assert_eq!(
        (st.status, st.reason, st.configured),
        (Status::Disabled, Reason::PolicyMissing, false)
    );
    assert_eq!(st.idle_timeout_ms, 0);
    s.policy = Some(policy(MIN));
    s.lifecycle = Lifecycle::Stopped;
    h.e.update(1, s.clone(), T0).unwrap();
    assert_eq!(h.st(1, T0).reason, Reason::InstanceNotRunning);
    s.lifecycle = Lifecycle::Running;
    h.e.update(1, s.clone(), T0).unwrap();
    assert_eq!(h.st(1, T0).reason, Reason::NetworkDisabled);
    s.network_enabled = true;
    s.addresses.clear();
    h.e.update(1, s.clone(), T0).unwrap();
    assert_eq!(h.st(1, T0).reason, Reason::MissingIp);
    s.addresses = vec![guest()];
    s.has_vgpu = true;
    h.e.update(1, s.clone(), T0).unwrap();
    let st = h.st(1, T0);
    assert_eq!(
        (st.status, st.reason, st.eligible),
        (Status::Ineligible, Reason::HasVgpu, false)
    );
    s.has_vgpu = false;
    h.e.update(1, s, T0).unwrap();
    let st = h.st(1, T0);
    assert_eq!(
        (st.status, st.eligible, st.idle_timeout_ms),
        (Status::IdleCountdown, true, MIN)
    );
}

#[test]
fn status_and_reason_strings_match_hypeman() {
    let statuses = [
        (Status::Unsupported, "unsupported"),
        (Status::Disabled, "disabled"),
        (Status::Ineligible, "ineligible"),
        (Status::Active, "active"),
        (Status::IdleCountdown, "idle_countdown"),
        (Status::ReadyForStandby, "ready_for_standby"),
        (Status::StandbyRequested, "standby_requested"),
        (Status::Error, "error"),
    ];
    for (s, text) in statuses {
        assert_eq!(s.as_str(), text);
    }
    assert_eq!(
        Reason::ActiveInboundConnections.as_str(),
        "active_inbound_connections"
    );
    assert_eq!(
        Reason::IdleTimeoutNotElapsed.as_str(),
        "idle_timeout_not_elapsed"
    );
    assert_eq!(Reason::ConfirmFailed.as_str(), "confirm_failed");
}

#[test]
fn index_dispatch_touches_only_the_addressed_instance() {
    let mut h = H::new();
    for k in 0..2_000u64 {
        let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + k as u32));
        h.reg(k, spec_with(a, policy(MIN)), T0);
    }
    let target = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + 1234));
    let f = flow(
        proto::TCP,
        ip("203.0.113.1"),
        1,
        target,
        80,
        Some(TcpState::ESTABLISHED),
        1,
    );
    h.new_flow(f, T0);
    assert_eq!(h.st(1234, T0).status, Status::Active);
    assert_eq!(h.st(1233, T0).status, Status::IdleCountdown);
    assert_eq!(h.e.stats().tracked_flows, 1);
}

#[test]
fn batched_events_have_the_same_effect_as_single_ones() {
    let mut stream = Vec::new();
    let est = Some(TcpState::ESTABLISHED);
    for i in 0..200u16 {
        let f = inbound(1000 + i % 37, if i % 5 == 0 { None } else { est });
        let kind = match i % 3 {
            0 => EventKind::New,
            1 => EventKind::Update,
            _ => EventKind::Destroy,
        };
        stream.push(ev(kind, f));
        // Unmatched and outbound traffic mixed in.
        stream.push(ev(
            EventKind::New,
            flow(
                proto::TCP,
                guest(),
                i,
                ip("203.0.113.50"),
                443,
                est,
                u32::from(i),
            ),
        ));
    }
    let mut a = H::new();
    let mut b = H::new();
    a.reg(1, spec(MIN), T0);
    b.reg(1, spec(MIN), T0);
    for e in &stream {
        a.e.on_flow_event(e, T0 + SEC);
    }
    for chunk in stream.chunks(23) {
        b.e.on_flow_events(chunk, T0 + SEC);
    }
    assert_eq!(a.e.stats(), b.e.stats());
    assert_eq!(a.st(1, T0 + SEC), b.st(1, T0 + SEC));
    assert_eq!(a.drain(), b.drain());
    let (mut wa, mut wb) = (Vec::new(), Vec::new());
    a.e.explain(1, T0 + SEC, &mut wa).unwrap();
    b.e.explain(1, T0 + SEC, &mut wb).unwrap();
    assert_eq!(wa, wb);
}

/// Ports of the flows keeping instance `key` awake, sorted.
fn awake_ports(h: &H, key: InstanceKey, now: UnixMillis) -> Vec<u16> {
    let mut why = Vec::new();
    h.e.explain(key, now, &mut why).unwrap();
    let mut ports: Vec<u16> = why.iter().map(|k| k.orig.src_port).collect();
    ports.sort();
    ports
}

#[test]
fn replaced_flows_leave_no_trace_in_explanations_recounts_or_a_reused_slot() {
    let est = Some(TcpState::ESTABLISHED);
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.reg(2, spec_with(ip("192.168.100.11"), policy(MIN)), T0);
    // Churn: flows come and go on instance 1, as conntrack events report them.
    for p in 1..=5 {
        h.new_flow(inbound(p, est), T0);
    }
    for p in 1..=4 {
        h.destroy(inbound(p, None), T0 + SEC);
    }
    h.new_flow(inbound(6, est), T0 + 2 * SEC);
    assert_eq!(awake_ports(&h, 1, T0 + 3 * SEC), vec![5, 6]);
    assert_eq!(h.e.stats().tracked_flows, 2);

    // A policy change recounts the live flows only: ignoring port 80 leaves none.
    let mut ignoring = spec(MIN);
    ignoring.policy.as_mut().unwrap().ignore_destination_ports = vec![80];
    h.e.update(1, ignoring, T0 + 3 * SEC).unwrap();
    assert_eq!(awake_ports(&h, 1, T0 + 3 * SEC), Vec::<u16>::new());
    h.e.update(1, spec(MIN), T0 + 4 * SEC).unwrap();
    assert_eq!(awake_ports(&h, 1, T0 + 4 * SEC), vec![5, 6]);

    // Unregistering frees everything; an instance registered in the freed slot with
    // the same address starts clean, and the flow it gets is its only one.
    h.destroy(inbound(5, None), T0 + 5 * SEC);
    h.e.unregister(1, T0 + 5 * SEC).unwrap();
    assert_eq!(h.e.stats().tracked_flows, 0);
    h.reg(3, spec(MIN), T0 + 5 * SEC);
    assert_eq!(awake_ports(&h, 3, T0 + 5 * SEC), Vec::<u16>::new());
    h.new_flow(inbound(7, est), T0 + 6 * SEC);
    assert_eq!(awake_ports(&h, 3, T0 + 6 * SEC), vec![7]);
    assert_eq!(awake_ports(&h, 2, T0 + 6 * SEC), Vec::<u16>::new());
    assert_eq!(h.e.stats().tracked_flows, 1);

    // Once that flow ends, the instance is idle and goes to Standby on time.
    h.destroy(inbound(7, None), T0 + 7 * SEC);
    h.drain();
    h.e.tick(T0 + 7 * SEC + MIN - 1);
    assert!(!h.standbys().contains(&3));
    h.e.tick(T0 + 7 * SEC + MIN);
    assert_eq!(h.standbys(), vec![3]);
}
