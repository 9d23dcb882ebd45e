//! Resyncs, lost events, tombstones and observer health (reference §3.4–§3.6).

use super::*;

#[test]
fn periodic_resync_picks_up_a_missed_flow() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    let r = h.e.begin_resync(ResyncScope::All, T0 + SEC);
    h.e.resync_flow(r, &inbound(1, Some(TcpState::ESTABLISHED)))
        .unwrap();
    h.e.finish_resync(r, T0 + SEC).unwrap();
    let st = h.st(1, T0 + SEC);
    assert_eq!((st.status, st.active_inbound), (Status::Active, 1));
}

#[test]
fn resync_drops_flows_that_vanished_and_starts_the_countdown() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.new_flow(inbound(1, Some(TcpState::ESTABLISHED)), T0);
    // The DESTROY was missed; the dump no longer lists the flow.
    let r =
        h.e.begin_resync(ResyncScope::Instances(vec![1]), T0 + 10 * SEC);
    h.e.finish_resync(r, T0 + 11 * SEC).unwrap();
    let st = h.st(1, T0 + 11 * SEC);
    assert_eq!(st.status, Status::IdleCountdown);
    assert_eq!(st.idle_since, Some(T0 + 10 * SEC));
    assert_eq!(st.next_standby_at, Some(T0 + 10 * SEC + MIN));
}

#[test]
fn flows_touched_by_events_during_a_resync_are_kept() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    let r = h.e.begin_resync(ResyncScope::All, T0);
    h.new_flow(inbound(1, Some(TcpState::ESTABLISHED)), T0 + 1);
    h.e.finish_resync(r, T0 + 2).unwrap();
    assert_eq!(h.st(1, T0 + 2).active_inbound, 1);
}

#[test]
fn destroyed_flow_is_not_resurrected_by_a_concurrent_dump() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.new_flow(inbound(1, Some(TcpState::ESTABLISHED)), T0);
    let r = h.e.begin_resync(ResyncScope::All, T0 + 1);
    h.destroy(inbound(1, None), T0 + 2);
    // The dump read the entry before it was destroyed.
    h.e.resync_flow(r, &inbound(1, Some(TcpState::ESTABLISHED)))
        .unwrap();
    h.e.finish_resync(r, T0 + 3).unwrap();
    assert_eq!(h.st(1, T0 + 3).active_inbound, 0);
    assert_eq!(h.e.stats().tracked_flows, 0);
}

#[test]
fn resync_handles_are_checked() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    let r = h.e.begin_resync(ResyncScope::All, T0);
    h.e.finish_resync(r, T0).unwrap();
    assert_eq!(h.e.finish_resync(r, T0), Err(EngineError::UnknownResync(r)));
    assert_eq!(h.e.fail_resync(r, T0), Err(EngineError::UnknownResync(r)));
    assert_eq!(
        h.e.resync_flow(r, &inbound(1, Some(TcpState::ESTABLISHED))),
        Err(EngineError::UnknownResync(r))
    );
    assert_eq!(h.st(1, T0).active_inbound, 0);
    assert_eq!(h.e.stats().resyncs, 1);
}

#[test]
fn lost_events_block_standby_until_a_later_resync_finishes() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.reg(2, spec_with(ip("192.168.100.20"), policy(MIN)), T0);
    h.e.events_lost(ResyncScope::Instances(vec![1]), T0 + SEC);
    h.e.events_lost(ResyncScope::Instances(vec![1]), T0 + 2 * SEC);
    assert_eq!(
        h.requests(),
        vec![ObserverRequest::Resync(ResyncScope::Instances(vec![1]))]
    );
    h.e.events_lost(ResyncScope::Instances(vec![1]), T0 + 3 * SEC);
    assert!(
        h.requests().is_empty(),
        "one request until a resync covers it"
    );
    let st = h.st(1, T0 + MIN);
    assert_eq!(
        (st.status, st.reason),
        (Status::IdleCountdown, Reason::ResyncPending)
    );
    h.e.tick(T0 + MIN);
    assert_eq!(h.standbys(), vec![2]);
    let r = h.e.begin_resync(ResyncScope::Instances(vec![1]), T0 + MIN);
    h.e.finish_resync(r, T0 + MIN + SEC).unwrap();
    assert_eq!(h.e.next_deadline(), Some(T0 + MIN));
    h.e.tick(T0 + MIN + SEC);
    assert_eq!(h.standbys(), vec![1]);
}

#[test]
fn a_resync_begun_before_the_loss_does_not_clear_it() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    let early = h.e.begin_resync(ResyncScope::All, T0);
    h.e.events_lost(ResyncScope::All, T0 + 1);
    h.e.finish_resync(early, T0 + 2).unwrap();
    assert_eq!(h.st(1, T0 + 2).reason, Reason::ResyncPending);
    assert_eq!(
        h.requests(),
        vec![ObserverRequest::Resync(ResyncScope::All)]
    );
    let r = h.e.begin_resync(ResyncScope::All, T0 + 3);
    h.e.finish_resync(r, T0 + 4).unwrap();
    assert_eq!(h.st(1, T0 + 4).reason, Reason::IdleTimeoutNotElapsed);
}

#[test]
fn lost_events_then_restore_resync_reports_the_flow() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.e.set_observer_health(
        ObserverHealth::Failed("recv: no buffer space available".into()),
        T0,
    );
    h.e.events_lost(ResyncScope::All, T0);
    h.e.set_observer_health(ObserverHealth::Healthy, T0 + SEC);
    let r = h.e.begin_resync(ResyncScope::All, T0 + SEC);
    h.e.resync_flow(r, &inbound(3, Some(TcpState::ESTABLISHED)))
        .unwrap();
    h.e.finish_resync(r, T0 + 2 * SEC).unwrap();
    assert_eq!(h.st(1, T0 + 2 * SEC).status, Status::Active);
}

#[test]
fn failed_restore_resync_is_not_an_observer_error_and_asks_again() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.e.events_lost(ResyncScope::All, T0);
    assert_eq!(
        h.requests(),
        vec![ObserverRequest::Resync(ResyncScope::All)]
    );
    let r = h.e.begin_resync(ResyncScope::All, T0 + SEC);
    h.e.fail_resync(r, T0 + SEC).unwrap();
    let st = h.st(1, T0 + 2 * MIN);
    assert_ne!(st.status, Status::Error);
    assert_eq!(st.reason, Reason::ResyncPending);
    assert_eq!(
        h.requests(),
        vec![ObserverRequest::Resync(ResyncScope::All)]
    );
    h.e.tick(T0 + 2 * MIN);
    assert!(h.standbys().is_empty());
}

#[test]
fn instance_registered_during_a_full_resync_waits_for_it() {
    let mut h = H::new();
    let r = h.e.begin_resync(ResyncScope::All, T0);
    let mut s = spec(MIN);
    s.runtime.idle_since = Some(T0 - 10 * MIN);
    h.reg(1, s, T0);
    h.e.tick(T0 + 1);
    assert!(h.standbys().is_empty());
    h.e.resync_flow(r, &inbound(1, Some(TcpState::ESTABLISHED)))
        .unwrap();
    h.e.finish_resync(r, T0 + 2).unwrap();
    assert_eq!(h.st(1, T0 + 2).status, Status::Active);
}

#[test]
fn observer_failure_reports_error_and_blocks_standby() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    let mut off = spec(MIN);
    off.policy.as_mut().unwrap().enabled = false;
    off.addresses = vec![ip("192.168.100.20")];
    h.reg(2, off, T0);
    h.e.set_observer_health(
        ObserverHealth::Failed("conntrack permission denied".into()),
        T0,
    );
    let st = h.st(1, T0);
    assert_eq!(
        (st.status, st.reason),
        (Status::Error, Reason::ObserverError)
    );
    assert_eq!(
        h.st(2, T0).status,
        Status::Disabled,
        "only eligible instances"
    );
    h.e.tick(T0 + 5 * MIN);
    assert!(h.standbys().is_empty());
    h.e.set_observer_health(ObserverHealth::Healthy, T0 + 6 * MIN);
    h.e.tick(T0 + 6 * MIN);
    assert_eq!(h.standbys(), vec![1]);
}

#[test]
fn standby_requested_is_reported_before_observer_error() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.e.tick(T0 + MIN);
    assert_eq!(h.e.begin_standby(1, T0 + MIN), Ok(BeginStandby::Proceed));
    h.e.set_observer_health(ObserverHealth::Failed("x".into()), T0 + MIN);
    assert_eq!(h.st(1, T0 + MIN).status, Status::StandbyRequested);
}

#[test]
fn observer_failure_cancels_an_emitted_standby() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.e.tick(T0 + MIN);
    h.standbys();
    h.e.set_observer_health(ObserverHealth::Failed("x".into()), T0 + MIN);
    assert_eq!(
        h.e.begin_standby(1, T0 + MIN),
        Ok(BeginStandby::Cancelled(Reason::ObserverError))
    );
}

#[test]
fn unanswered_confirmation_is_asked_again() {
    let mut h = H::with(EngineConfig {
        confirm_before_standby: true,
        ..EngineConfig::default()
    });
    h.reg(1, spec(MIN), T0);
    h.e.tick(T0 + MIN);
    assert_eq!(h.requests(), vec![ObserverRequest::Confirm(1)]);
    h.e.tick(T0 + 2 * MIN);
    assert_eq!(h.requests(), vec![ObserverRequest::Confirm(1)]);
}

#[test]
fn tombstones_expire_after_their_ttl() {
    let mut h = H::with(EngineConfig {
        tombstone_ttl_ms: 5 * SEC,
        ..EngineConfig::default()
    });
    h.reg(1, spec(MIN), T0);
    h.new_flow(inbound(1, Some(TcpState::ESTABLISHED)), T0);
    let r = h.e.begin_resync(ResyncScope::All, T0);
    h.destroy(inbound(1, None), T0 + SEC);
    // A long dump: by the time it lists the entry again, the tombstone has expired and
    // the entry is taken as a new live flow (the kernel re-used the tuple and id).
    h.e.tick(T0 + 10 * SEC);
    h.e.resync_flow(r, &inbound(1, Some(TcpState::ESTABLISHED)))
        .unwrap();
    h.e.finish_resync(r, T0 + 10 * SEC).unwrap();
    assert_eq!(h.st(1, T0 + 10 * SEC).active_inbound, 1);
}

#[test]
fn dump_entry_read_before_a_close_does_not_revive_the_flow() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.new_flow(inbound(1, Some(TcpState::ESTABLISHED)), T0);
    let r = h.e.begin_resync(ResyncScope::All, T0 + 1);
    // The connection closes while the dump runs; the DESTROY comes much later.
    h.update_flow(inbound(1, Some(TcpState::TIME_WAIT)), T0 + 2);
    assert_eq!(h.st(1, T0 + 2).active_inbound, 0);
    // The dump had read the entry while it was still established.
    h.e.resync_flow(r, &inbound(1, Some(TcpState::ESTABLISHED)))
        .unwrap();
    h.e.finish_resync(r, T0 + 3).unwrap();
    assert_eq!(h.st(1, T0 + 3).active_inbound, 0);
    assert_eq!(h.e.stats().tracked_flows, 0);
}

#[test]
fn dump_entry_does_not_overwrite_a_newer_event() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.new_flow(inbound(1, Some(TcpState::ESTABLISHED)), T0);
    let r = h.e.begin_resync(ResyncScope::All, T0 + 1);
    h.update_flow(inbound(1, Some(TcpState::FIN_WAIT)), T0 + 2);
    h.e.resync_flow(r, &inbound(1, Some(TcpState::ESTABLISHED)))
        .unwrap();
    h.e.finish_resync(r, T0 + 3).unwrap();
    let mut why = Vec::new();
    h.e.explain(1, T0 + 3, &mut why).unwrap();
    assert_eq!(why.len(), 1);
    assert_eq!(why[0].tcp_state, Some(TcpState::FIN_WAIT));
}

#[test]
fn dump_entry_older_than_the_resync_is_still_applied() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.new_flow(inbound(1, Some(TcpState::SYN_RECV)), T0);
    // The event came before the resync began: the dump is newer and wins.
    let r = h.e.begin_resync(ResyncScope::All, T0 + 1);
    h.e.resync_flow(r, &inbound(1, Some(TcpState::TIME_WAIT)))
        .unwrap();
    h.e.finish_resync(r, T0 + 2).unwrap();
    assert_eq!(h.e.stats().tracked_flows, 0);
}

#[test]
fn loss_during_the_resync_answering_an_earlier_loss_stays_pending() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.e.events_lost(ResyncScope::All, T0);
    assert_eq!(
        h.requests(),
        vec![ObserverRequest::Resync(ResyncScope::All)]
    );
    let r = h.e.begin_resync(ResyncScope::All, T0 + 1);
    h.e.events_lost(ResyncScope::All, T0 + 2);
    assert!(h.requests().is_empty(), "queued when the open resync ends");
    h.e.finish_resync(r, T0 + 3).unwrap();
    assert_eq!(h.st(1, T0 + 3).reason, Reason::ResyncPending);
    assert_eq!(
        h.requests(),
        vec![ObserverRequest::Resync(ResyncScope::All)]
    );
    h.e.tick(T0 + 2 * MIN);
    assert!(h.standbys().is_empty());
    let r = h.e.begin_resync(ResyncScope::All, T0 + 2 * MIN);
    h.e.finish_resync(r, T0 + 2 * MIN).unwrap();
    assert_ne!(h.st(1, T0 + 2 * MIN).reason, Reason::ResyncPending);
    assert!(h.requests().is_empty());
}

#[test]
fn scoped_loss_during_its_resync_asks_once_more() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.e.events_lost(ResyncScope::Instances(vec![1]), T0);
    assert_eq!(h.requests().len(), 1);
    let r = h.e.begin_resync(ResyncScope::Instances(vec![1]), T0 + 1);
    h.e.events_lost(ResyncScope::Instances(vec![1]), T0 + 2);
    h.e.events_lost(ResyncScope::Instances(vec![1]), T0 + 3);
    assert!(h.requests().is_empty());
    h.e.finish_resync(r, T0 + 4).unwrap();
    assert_eq!(h.st(1, T0 + 4).reason, Reason::ResyncPending);
    assert_eq!(
        h.requests(),
        vec![ObserverRequest::Resync(ResyncScope::Instances(vec![1]))]
    );
    let r = h.e.begin_resync(ResyncScope::Instances(vec![1]), T0 + 5);
    h.e.finish_resync(r, T0 + 6).unwrap();
    assert_ne!(h.st(1, T0 + 6).reason, Reason::ResyncPending);
    assert!(h.requests().is_empty());
}

/// A UDP flow from 203.0.113.8:`cport` to `server` port 53, with conntrack id `id`,
/// reported with `timeout_s` seconds left before conntrack expires it.
pub(super) fn udp_to(server: IpAddr, cport: u16, id: u32, timeout_s: Option<u32>) -> Flow {
    Flow {
        timeout_s,
        ..flow(proto::UDP, ip("203.0.113.8"), cport, server, 53, None, id)
    }
}

/// [`udp_to`] the default guest from port 5353.
pub(super) fn udp(timeout_s: Option<u32>) -> Flow {
    udp_to(guest(), 5353, 9, timeout_s)
}

/// A running instance at `addr` whose policy counts UDP too.
pub(super) fn udp_spec_at(addr: IpAddr) -> InstanceSpec {
    let mut p = policy(MIN);
    p.protocols.udp = true;
    spec_with(addr, p)
}

pub(super) fn udp_spec() -> InstanceSpec {
    udp_spec_at(guest())
}

/// The pending deadline, checked to lie in `[from, from + grid)`.
fn deadline_within(h: &H, from: UnixMillis, grid: u64) -> UnixMillis {
    let at = h.e.next_deadline().expect("a deadline");
    assert!(
        (from..from + grid).contains(&at),
        "deadline {} after {from}",
        at - from
    );
    at
}

#[test]
fn a_silently_expired_udp_flow_is_checked_at_its_expiry_and_dropped() {
    let mut h = H::new();
    h.reg(1, udp_spec(), T0);
    h.new_flow(udp(Some(30)), T0);
    assert_eq!(h.st(1, T0).status, Status::Active);
    // Checked a second after the expiry (CTA_TIMEOUT is rounded down), on the 4.096 s
    // grid of a 30 s timeout, and not before.
    let at = deadline_within(&h, T0 + 31 * SEC, 4_096);
    assert_eq!(at % 4_096, 0);
    h.e.tick(at - 1);
    assert_eq!(h.requests(), vec![]);
    h.e.tick(at);
    // The flow is looked up by its tuple, not dumped.
    assert_eq!(h.requests(), vec![ObserverRequest::Lookup(vec![udp(None)])]);
    // The kernel no longer has the expired entry: the countdown starts from the lookup.
    let l = h.e.begin_lookup(&[udp(None)], at);
    h.e.lookup_answer(l, &udp(None), LookupAnswer::Gone)
        .unwrap();
    h.e.finish_lookup(l, at).unwrap();
    assert!(h.requests().is_empty());
    assert_eq!(h.e.stats().lookups, 1);
    assert_eq!(h.e.stats().lookup_gone, 1);
    let st = h.st(1, at);
    assert_eq!((st.status, st.active_inbound), (Status::IdleCountdown, 0));
    assert_eq!(st.next_standby_at, Some(at + MIN));
    assert_eq!(h.run_standbys(at + MIN, StandbyOutcome::Success), vec![1]);
}

#[test]
fn a_udp_flow_still_in_the_dump_is_checked_again_at_its_new_expiry() {
    let mut h = H::new();
    h.reg(1, udp_spec(), T0);
    h.new_flow(udp(Some(30)), T0);
    // A reply makes the flow a stream: the UPDATE carries the longer timeout.
    h.update_flow(udp(Some(120)), T0 + SEC);
    let at = deadline_within(&h, T0 + 122 * SEC, 8_192);
    h.e.tick(T0 + 60 * SEC);
    assert_eq!(h.requests(), vec![]);
    h.e.tick(at);
    assert_eq!(h.requests(), vec![ObserverRequest::Lookup(vec![udp(None)])]);
    // Traffic refreshed the entry without events: the kernel has it with 100 s left.
    let l = h.e.begin_lookup(&[udp(None)], at);
    h.e.lookup_answer(l, &udp(None), LookupAnswer::Found(&udp(Some(100))))
        .unwrap();
    h.e.finish_lookup(l, at).unwrap();
    assert_eq!(h.st(1, at).status, Status::Active);
    let again = deadline_within(&h, at + 101 * SEC, 8_192);
    h.e.tick(again - 1);
    assert_eq!(h.requests(), vec![]);
    assert!(h.standbys().is_empty());
}

#[test]
fn instances_whose_udp_flows_expire_close_together_share_one_check() {
    let mut h = H::new();
    let mut asked = Vec::new();
    for k in 1..=3u64 {
        let addr = ip(&format!("10.0.1.{k}"));
        h.reg(k, udp_spec_at(addr), T0);
        // Reported 400 ms apart, all with 120 s left.
        h.new_flow(udp_to(addr, 5353, k as u32, Some(120)), T0 + 400 * (k - 1));
        asked.push(udp_to(addr, 5353, k as u32, None));
    }
    let at = h.e.next_deadline().unwrap();
    h.e.tick(at);
    assert_eq!(h.requests(), vec![ObserverRequest::Lookup(asked)]);
}

#[test]
fn flows_without_a_timeout_or_over_tcp_are_never_checked_for_expiry() {
    let mut h = H::new();
    h.reg(1, udp_spec(), T0);
    h.reg(2, spec_with(ip("10.0.0.9"), policy(MIN)), T0);
    // Manual mode reports no timeouts; TCP flows end through their state.
    h.new_flow(udp(None), T0);
    h.new_flow(
        Flow {
            timeout_s: Some(30),
            ..flow(
                proto::TCP,
                ip("203.0.113.9"),
                4000,
                ip("10.0.0.9"),
                80,
                Some(TcpState::ESTABLISHED),
                10,
            )
        },
        T0,
    );
    assert_eq!(h.e.next_deadline(), None);
    h.e.tick(T0 + 10 * MIN);
    assert_eq!(h.requests(), vec![]);
    assert_eq!(h.st(1, T0 + 10 * MIN).status, Status::Active);
    assert_eq!(h.st(2, T0 + 10 * MIN).status, Status::Active);
}

#[test]
fn an_expiry_check_is_forgotten_once_the_instance_drains() {
    let mut h = H::new();
    h.reg(1, udp_spec(), T0);
    h.new_flow(udp(Some(30)), T0);
    h.destroy(udp(None), T0 + 5 * SEC);
    // A TCP flow later keeps it active: no check is due for the UDP flow that ended,
    // even once something re-arms the instance.
    h.new_flow(inbound(1, Some(TcpState::ESTABLISHED)), T0 + 6 * SEC);
    h.e.update(1, udp_spec(), T0 + 7 * SEC).unwrap();
    h.e.tick(T0 + 40 * SEC);
    assert_eq!(h.requests(), vec![]);
    assert_eq!(h.e.next_deadline(), None);
}

#[test]
fn an_instance_that_cannot_go_into_standby_is_not_checked_for_expiry() {
    let mut h = H::new();
    let mut s = udp_spec();
    s.lifecycle = Lifecycle::Other;
    h.reg(1, s, T0);
    h.new_flow(udp(Some(30)), T0);
    assert_eq!(h.e.next_deadline(), None);
    // Running again: the check is armed from the expiry the flow reported.
    h.e.update(1, udp_spec(), T0 + SEC).unwrap();
    deadline_within(&h, T0 + 31 * SEC, 4_096);
}

#[test]
fn a_udp_flow_after_a_policy_change_gets_its_own_expiry_check() {
    let mut h = H::new();
    h.reg(1, udp_spec(), T0);
    h.new_flow(udp(Some(120)), T0);
    // UDP stops counting, the flow ends, UDP counts again: the old check is forgotten.
    let mut tcp_only = udp_spec();
    tcp_only.policy.as_mut().unwrap().protocols.udp = false;
    h.e.update(1, tcp_only, T0 + SEC).unwrap();
    h.destroy(udp(None), T0 + 2 * SEC);
    h.e.update(1, udp_spec(), T0 + 3 * SEC).unwrap();
    h.new_flow(udp_to(guest(), 6000, 11, Some(30)), T0 + 4 * SEC);
    deadline_within(&h, T0 + 35 * SEC, 4_096);
}

#[test]
fn a_failed_expiry_check_is_asked_again() {
    let mut h = H::new();
    h.reg(1, udp_spec(), T0);
    h.new_flow(udp(Some(30)), T0);
    let at = h.e.next_deadline().unwrap();
    h.e.tick(at);
    assert_eq!(h.requests().len(), 1);
    // The lookup cannot run: a resync of the instance is asked for instead.
    let l = h.e.begin_lookup(&[udp(None)], at);
    h.e.fail_lookup(l, at + 5).unwrap();
    assert_eq!(
        h.requests(),
        vec![ObserverRequest::Resync(ResyncScope::Instances(vec![1]))]
    );
    assert_eq!(h.st(1, at + 5).status, Status::Active);
    // That fails too: the check comes again a second later, as a lookup.
    let r = h.e.begin_resync(ResyncScope::Instances(vec![1]), at + 6);
    h.e.fail_resync(r, at + 10).unwrap();
    assert_eq!(h.e.next_deadline(), Some(at + 10 + SEC));
    h.e.tick(at + 10 + SEC);
    assert_eq!(h.requests(), vec![ObserverRequest::Lookup(vec![udp(None)])]);
    let l = h.e.begin_lookup(&[udp(None)], at + 10 + SEC);
    h.e.fail_lookup(l, at + 10 + SEC).unwrap();
    assert_eq!(
        h.requests(),
        vec![ObserverRequest::Resync(ResyncScope::Instances(vec![1]))]
    );
    // Answered this time: nothing more is asked until the flow reports again.
    let r =
        h.e.begin_resync(ResyncScope::Instances(vec![1]), at + 2 * SEC);
    h.e.finish_resync(r, at + 2 * SEC).unwrap();
    assert_eq!(h.st(1, at + 2 * SEC).status, Status::IdleCountdown);
}

#[test]
fn conntrack_events_off_reports_its_reason_and_blocks_standby() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    h.e.set_observer_health(ObserverHealth::EventsOff, T0 + SEC);
    let st = h.st(1, T0 + SEC);
    assert_eq!(
        (st.status, st.reason),
        (Status::Error, Reason::ConntrackEventsOff)
    );
    assert!(h.e.events_off());
    h.e.tick(T0 + 2 * MIN);
    assert!(h.standbys().is_empty());
    h.e.set_observer_health(ObserverHealth::Healthy, T0 + 2 * MIN);
    assert!(!h.e.events_off());
    h.e.tick(T0 + 2 * MIN);
    assert_eq!(h.standbys(), vec![1]);
}

fn suspect_first() -> H {
    H::with(EngineConfig {
        suspect_end_grace_ms: 1_500,
        ..EngineConfig::default()
    })
}

#[test]
fn a_live_entry_destroyed_without_fin_holds_the_instance_until_a_resync() {
    let mut h = suspect_first();
    h.reg(1, spec(MIN), T0);
    let est = inbound(40_000, Some(TcpState::ESTABLISHED));
    h.new_flow(est, T0);
    h.requests();
    // `conntrack -D`: DESTROY with the entry's last state, ESTABLISHED.
    h.destroy(est, T0 + SEC);
    assert_eq!(h.e.stats().suspect_ends, 1);
    let st = h.st(1, T0 + SEC);
    assert_eq!(
        (st.status, st.reason),
        (Status::IdleCountdown, Reason::ResyncPending)
    );
    // The grace ends: a resync scoped to the instance is asked for, and until it has
    // run nothing counts down to standby, however long it takes.
    h.e.tick(T0 + SEC + 1_500);
    assert_eq!(
        h.requests(),
        vec![ObserverRequest::Resync(ResyncScope::Instances(vec![1]))]
    );
    h.e.tick(T0 + 5 * MIN);
    assert!(h.standbys().is_empty());
    assert_eq!(h.st(1, T0 + 5 * MIN).reason, Reason::ResyncPending);
    // The dump finds the connection's re-created entry: active again.
    let r =
        h.e.begin_resync(ResyncScope::Instances(vec![1]), T0 + 5 * MIN);
    let again = flow(
        proto::TCP,
        ip("203.0.113.7"),
        40_000,
        guest(),
        80,
        Some(TcpState::ESTABLISHED),
        77,
    );
    h.e.resync_flow(r, &again).unwrap();
    h.e.finish_resync(r, T0 + 5 * MIN).unwrap();
    assert_eq!(h.st(1, T0 + 5 * MIN).status, Status::Active);
}

#[test]
fn a_packet_recreating_the_entry_within_the_grace_needs_no_resync() {
    let mut h = suspect_first();
    h.reg(1, spec(MIN), T0);
    let est = inbound(40_000, Some(TcpState::ESTABLISHED));
    h.new_flow(est, T0);
    h.requests();
    h.destroy(est, T0 + SEC);
    let mut again = est;
    again.id = 99;
    h.new_flow(again, T0 + SEC + 10);
    assert_eq!(h.st(1, T0 + SEC + 10).status, Status::Active);
    h.e.tick(T0 + SEC + 1_500);
    assert!(h.requests().is_empty());
}

#[test]
fn a_normal_close_is_not_suspect() {
    let mut h = suspect_first();
    h.reg(1, spec(MIN), T0);
    let est = inbound(40_000, Some(TcpState::ESTABLISHED));
    h.new_flow(est, T0);
    h.update_flow(inbound(40_000, Some(TcpState::TIME_WAIT)), T0 + SEC);
    h.destroy(inbound(40_000, Some(TcpState::TIME_WAIT)), T0 + 2 * SEC);
    assert_eq!(h.e.stats().suspect_ends, 0);
    let st = h.st(1, T0 + 2 * SEC);
    assert_eq!(
        (st.status, st.reason),
        (Status::IdleCountdown, Reason::IdleTimeoutNotElapsed)
    );
}

#[test]
fn a_burst_of_live_entries_destroyed_is_answered_like_lost_events() {
    let mut h = suspect_first();
    h.reg(1, spec(MIN), T0);
    h.reg(2, spec_with(ip("192.168.100.11"), policy(MIN)), T0);
    for p in 0..16u16 {
        h.new_flow(inbound(40_000 + p, Some(TcpState::ESTABLISHED)), T0);
    }
    h.requests();
    for p in 0..16u16 {
        h.destroy(inbound(40_000 + p, Some(TcpState::ESTABLISHED)), T0 + SEC);
    }
    assert_eq!(h.e.stats().suspect_ends, 16);
    assert_eq!(
        h.requests(),
        vec![ObserverRequest::Resync(ResyncScope::All)]
    );
    assert_eq!(h.st(2, T0 + SEC).reason, Reason::ResyncPending);
}
