//! Expiry checks answered by exact-tuple lookups: found, gone, a new entry on the same
//! tuple, failures, and the races with events.

use super::resync::{udp, udp_spec, udp_spec_at, udp_to};
use super::*;
use crate::engine::expiry::{MAX_CHECK_LOOKUPS, MAX_LOOKUP_FLOWS};

/// An engine with instance 1 (UDP counted) and one UDP flow reported at `T0` with 30 s
/// left, ticked to its check; returns the check's time.
fn due() -> (H, UnixMillis) {
    let mut h = H::new();
    h.reg(1, udp_spec(), T0);
    h.new_flow(udp(Some(30)), T0);
    let at = h.e.next_deadline().unwrap();
    h.e.tick(at);
    assert_eq!(h.requests(), vec![ObserverRequest::Lookup(vec![udp(None)])]);
    h.drain();
    (h, at)
}

#[test]
fn a_gone_answer_and_the_destroy_the_kernel_sends_remove_the_flow_once() {
    // The answer first, then the DESTROY event the lookup's reaping caused.
    let (mut h, at) = due();
    let l = h.e.begin_lookup(&[udp(None)], at);
    h.e.lookup_answer(l, &udp(None), LookupAnswer::Gone)
        .unwrap();
    h.destroy(udp(None), at + 1);
    h.e.finish_lookup(l, at + 2).unwrap();
    let st = h.st(1, at + 2);
    assert_eq!((st.status, st.active_inbound), (Status::IdleCountdown, 0));
    assert_eq!(st.next_standby_at, Some(at + MIN));
    // The DESTROY first, then the answer.
    let (mut h, at) = due();
    let l = h.e.begin_lookup(&[udp(None)], at);
    h.destroy(udp(None), at + 1);
    h.e.lookup_answer(l, &udp(None), LookupAnswer::Gone)
        .unwrap();
    h.e.finish_lookup(l, at + 2).unwrap();
    let st = h.st(1, at + 2);
    assert_eq!((st.status, st.active_inbound), (Status::IdleCountdown, 0));
    assert_eq!(st.next_standby_at, Some(at + 1 + MIN));
    assert_eq!(h.e.stats().tracked_flows, 0);
}

#[test]
fn a_found_answer_never_brings_back_a_flow_destroyed_meanwhile() {
    let (mut h, at) = due();
    let l = h.e.begin_lookup(&[udp(None)], at);
    // The kernel answered before the flow ended, the DESTROY was applied first.
    h.destroy(udp(None), at + 1);
    h.e.lookup_answer(l, &udp(None), LookupAnswer::Found(&udp(Some(20))))
        .unwrap();
    h.e.finish_lookup(l, at + 2).unwrap();
    assert_eq!(h.st(1, at + 2).active_inbound, 0);
    assert_eq!(h.e.stats().tracked_flows, 0);
}

#[test]
fn a_gone_answer_never_removes_an_entry_an_event_reported_since() {
    let (mut h, at) = due();
    let l = h.e.begin_lookup(&[udp(None)], at);
    // The entry expired, was answered gone, and a datagram re-created it with the same
    // tuple and id (conntrack ids can repeat) before the answer was applied.
    h.new_flow(udp(Some(30)), at + 1);
    h.e.lookup_answer(l, &udp(None), LookupAnswer::Gone)
        .unwrap();
    h.e.finish_lookup(l, at + 2).unwrap();
    let st = h.st(1, at + 2);
    assert_eq!((st.status, st.active_inbound), (Status::Active, 1));
    // And its own expiry is checked.
    deadline_after(&h, at + 31 * SEC);
}

fn deadline_after(h: &H, from: UnixMillis) -> UnixMillis {
    let d = h.e.next_deadline().expect("a deadline");
    assert!(d >= from, "deadline {d} before {from}");
    d
}

#[test]
fn a_new_entry_on_the_tuple_replaces_the_old_one_without_a_gap() {
    let (mut h, at) = due();
    let l = h.e.begin_lookup(&[udp(None)], at);
    let newer = udp_to(guest(), 5353, 77, Some(25));
    h.e.lookup_answer(l, &udp(None), LookupAnswer::Found(&newer))
        .unwrap();
    h.e.finish_lookup(l, at).unwrap();
    let st = h.st(1, at);
    assert_eq!((st.status, st.active_inbound), (Status::Active, 1));
    // No countdown started and stopped in between.
    assert!(h.persists(1).is_empty());
    let mut why = Vec::new();
    h.e.explain(1, at, &mut why).unwrap();
    assert_eq!(why.len(), 1);
    // The new entry's expiry is what is checked next.
    let next = deadline_after(&h, at + 26 * SEC);
    h.e.tick(next);
    assert_eq!(
        h.requests(),
        vec![ObserverRequest::Lookup(vec![udp_to(
            guest(),
            5353,
            77,
            None
        )])]
    );
}

#[test]
fn a_new_entry_destroyed_before_its_answer_is_not_brought_back() {
    let (mut h, at) = due();
    let l = h.e.begin_lookup(&[udp(None)], at);
    // The new entry's NEW and DESTROY events were applied before the answer naming it.
    let newer = udp_to(guest(), 5353, 77, Some(25));
    h.new_flow(newer, at + 1);
    h.destroy(newer, at + 2);
    h.e.lookup_answer(l, &udp(None), LookupAnswer::Found(&newer))
        .unwrap();
    h.e.finish_lookup(l, at + 3).unwrap();
    // The old entry is gone (the answer says so), the new one ended: idle.
    let st = h.st(1, at + 3);
    assert_eq!((st.status, st.active_inbound), (Status::IdleCountdown, 0));
    assert_eq!(h.e.stats().tracked_flows, 0);
}

#[test]
fn a_failed_answer_resyncs_only_its_instance() {
    let mut h = H::new();
    let (a, b) = (ip("10.0.1.1"), ip("10.0.1.2"));
    h.reg(1, udp_spec_at(a), T0);
    h.reg(2, udp_spec_at(b), T0);
    h.new_flow(udp_to(a, 5353, 1, Some(30)), T0);
    h.new_flow(udp_to(b, 5353, 2, Some(30)), T0);
    let at = h.e.next_deadline().unwrap();
    h.e.tick(at);
    let asked = vec![udp_to(a, 5353, 1, None), udp_to(b, 5353, 2, None)];
    assert_eq!(h.requests(), vec![ObserverRequest::Lookup(asked.clone())]);
    let l = h.e.begin_lookup(&asked, at);
    h.e.lookup_answer(l, &asked[0], LookupAnswer::Failed)
        .unwrap();
    h.e.lookup_answer(l, &asked[1], LookupAnswer::Gone).unwrap();
    h.e.finish_lookup(l, at).unwrap();
    assert_eq!(
        h.requests(),
        vec![ObserverRequest::Resync(ResyncScope::Instances(vec![1]))]
    );
    // Instance 1 stays active (its flow is still counted) until the resync says more.
    assert_eq!(h.st(1, at).status, Status::Active);
    assert_eq!(h.st(2, at).status, Status::IdleCountdown);
    let r = h.e.begin_resync(ResyncScope::Instances(vec![1]), at + SEC);
    h.e.finish_resync(r, at + SEC).unwrap();
    assert_eq!(h.st(1, at + SEC).status, Status::IdleCountdown);
}

#[test]
fn an_answer_for_another_tuple_counts_as_failed() {
    let (mut h, at) = due();
    let l = h.e.begin_lookup(&[udp(None)], at);
    let other = udp_to(guest(), 6000, 9, Some(30));
    h.e.lookup_answer(l, &udp(None), LookupAnswer::Found(&other))
        .unwrap();
    h.e.finish_lookup(l, at).unwrap();
    assert_eq!(h.st(1, at).active_inbound, 1);
    assert_eq!(h.e.stats().tracked_flows, 1, "the stray entry is not taken");
    assert_eq!(
        h.requests(),
        vec![ObserverRequest::Resync(ResyncScope::Instances(vec![1]))]
    );
}

#[test]
fn unknown_lookups_are_refused_and_answers_for_unregistered_instances_ignored() {
    let (mut h, at) = due();
    assert_eq!(
        h.e.finish_lookup(LookupId(999), at),
        Err(EngineError::UnknownLookup(LookupId(999)))
    );
    let l = h.e.begin_lookup(&[udp(None)], at);
    h.e.unregister(1, at).unwrap();
    h.e.lookup_answer(l, &udp(None), LookupAnswer::Found(&udp(Some(30))))
        .unwrap();
    h.e.finish_lookup(l, at).unwrap();
    assert_eq!(h.e.stats().tracked_flows, 0);
    assert_eq!(
        h.e.lookup_answer(l, &udp(None), LookupAnswer::Gone),
        Err(EngineError::UnknownLookup(l))
    );
}

#[test]
fn only_counted_udp_flows_are_looked_up_and_very_many_are_resynced() {
    let mut h = H::new();
    let mut s = udp_spec();
    s.policy.as_mut().unwrap().ignore_destination_ports = vec![54];
    h.reg(1, s, T0);
    h.new_flow(udp(Some(30)), T0);
    // Ignored by the policy, and TCP: neither is asked about.
    h.new_flow(
        Flow {
            timeout_s: Some(30),
            ..flow(proto::UDP, ip("203.0.113.8"), 7000, guest(), 54, None, 3)
        },
        T0,
    );
    h.new_flow(inbound(40_000, Some(TcpState::ESTABLISHED)), T0);
    let at = h.e.next_deadline().unwrap();
    h.e.tick(at);
    assert_eq!(h.requests(), vec![ObserverRequest::Lookup(vec![udp(None)])]);

    let mut h = H::new();
    h.reg(1, udp_spec(), T0);
    let many = MAX_LOOKUP_FLOWS as u32 + 1;
    for i in 0..many {
        h.new_flow(udp_to(guest(), 10_000 + i as u16, i, Some(30)), T0);
    }
    let at = h.e.next_deadline().unwrap();
    h.e.tick(at);
    assert_eq!(
        h.requests(),
        vec![ObserverRequest::Resync(ResyncScope::Instances(vec![1]))]
    );
}

#[test]
fn a_check_due_again_before_the_request_is_taken_asks_each_flow_once() {
    let mut h = H::new();
    let (a, b) = (ip("10.0.1.1"), ip("10.0.1.2"));
    h.reg(1, udp_spec_at(a), T0);
    h.reg(2, udp_spec_at(b), T0);
    h.new_flow(udp_to(a, 5353, 1, Some(2)), T0);
    // Instance 2's check falls later, and comes before the first request is taken.
    h.new_flow(udp_to(b, 5353, 2, Some(2)), T0 + 2 * SEC);
    h.e.tick(T0 + 10 * SEC);
    assert_eq!(
        h.requests(),
        vec![ObserverRequest::Lookup(vec![
            udp_to(a, 5353, 1, None),
            udp_to(b, 5353, 2, None)
        ])]
    );
}

#[test]
fn a_destroy_during_a_long_lookup_does_not_hide_a_later_dumps_entry() {
    let (mut h, at) = due();
    let l = h.e.begin_lookup(&[udp(None)], at);
    // While the lookup is open, an entry is destroyed and later re-created with the same
    // tuple and id; a resync begun after the DESTROY lists it: it counts.
    let est = inbound(40_000, Some(TcpState::ESTABLISHED));
    h.destroy(est, at + 1);
    let r = h.e.begin_resync(ResyncScope::All, at + 2);
    h.e.resync_flow(r, &est).unwrap();
    h.e.resync_flow(r, &udp(Some(30))).unwrap();
    h.e.finish_resync(r, at + 3).unwrap();
    assert_eq!(h.st(1, at + 3).active_inbound, 2);
    h.e.finish_lookup(l, at + 4).unwrap();
    // A resync that began before the DESTROY still may not bring it back.
    let r = h.e.begin_resync(ResyncScope::All, at + 5);
    h.destroy(est, at + 6);
    h.e.resync_flow(r, &est).unwrap();
    h.e.resync_flow(r, &udp(Some(30))).unwrap();
    h.e.finish_resync(r, at + 7).unwrap();
    assert_eq!(h.st(1, at + 7).active_inbound, 1);
}

#[test]
fn the_periodic_check_looks_up_every_tracked_flow_and_ends_the_gone_ones() {
    let mut h = H::new();
    let b = ip("10.0.1.2");
    h.reg(1, spec(MIN), T0);
    h.reg(2, udp_spec_at(b), T0);
    let (gone, live) = (
        inbound(40_000, Some(TcpState::ESTABLISHED)),
        inbound(40_001, Some(TcpState::ESTABLISHED)),
    );
    h.new_flow(gone, T0);
    h.new_flow(live, T0);
    h.new_flow(udp_to(b, 5353, 7, Some(120)), T0);
    h.drain();
    assert_eq!(h.requests(), vec![]);

    let at = T0 + MIN;
    assert_eq!(h.e.check_tracked_flows(at), 3);
    let asked = vec![udp_to(b, 5353, 7, None), gone, live];
    assert_eq!(looked_up(&mut h), asked);
    let l = h.e.begin_lookup(&asked, at);
    h.e.lookup_answer(l, &asked[1], LookupAnswer::Gone).unwrap();
    // Found: the kernel's state replaces the one known.
    let closing = inbound(40_001, Some(TcpState::CLOSE_WAIT));
    h.e.lookup_answer(l, &asked[2], LookupAnswer::Found(&closing))
        .unwrap();
    h.e.lookup_answer(
        l,
        &asked[0],
        LookupAnswer::Found(&udp_to(b, 5353, 7, Some(90))),
    )
    .unwrap();
    h.e.finish_lookup(l, at + 1).unwrap();
    let st = h.st(1, at + 1);
    assert_eq!(
        (st.status, st.active_inbound),
        (Status::Active, 1),
        "{st:?}"
    );
    assert_eq!(h.st(2, at + 1).active_inbound, 1);
    assert_eq!(h.e.stats().lookup_gone, 1);
    assert_eq!(h.e.stats().tracked_flows, 2);
    // The next check asks with the refreshed state.
    assert_eq!(h.e.check_tracked_flows(at + MIN), 2);
    assert_eq!(looked_up(&mut h), vec![udp_to(b, 5353, 7, None), closing]);
}

/// The flows of the one request, a `Lookup`, in the order of their ids.
fn looked_up(h: &mut H) -> Vec<Flow> {
    let requests = h.requests();
    let [ObserverRequest::Lookup(flows)] = &requests[..] else {
        panic!("not one lookup: {requests:?}");
    };
    let mut flows = flows.clone();
    flows.sort_by_key(|f| f.id);
    flows
}

#[test]
fn the_periodic_check_leaves_pending_instances_to_their_resync_and_walks_for_crowds() {
    let mut h = H::new();
    let (a, b, c) = (ip("10.0.1.1"), ip("10.0.1.2"), ip("10.0.1.3"));
    h.reg(1, udp_spec_at(a), T0);
    h.reg(2, udp_spec_at(b), T0);
    h.reg(3, udp_spec_at(c), T0);
    let many = MAX_LOOKUP_FLOWS as u32 + 1;
    for i in 0..many {
        h.new_flow(udp_to(a, 10_000 + i as u16, i, Some(30)), T0);
    }
    h.new_flow(udp_to(b, 5353, 1, Some(30)), T0);
    h.new_flow(udp_to(c, 5353, 2, Some(30)), T0);
    h.e.events_lost(ResyncScope::Instances(vec![3]), T0);
    h.requests();
    assert_eq!(h.e.check_tracked_flows(T0 + SEC), 1);
    assert_eq!(
        h.requests(),
        vec![
            ObserverRequest::Resync(ResyncScope::Instances(vec![1])),
            ObserverRequest::Lookup(vec![udp_to(b, 5353, 1, None)]),
        ]
    );
}

#[test]
fn the_periodic_check_walks_once_when_the_lookups_would_cost_more() {
    let mut h = H::new();
    let per = MAX_LOOKUP_FLOWS as u32;
    let instances = (MAX_CHECK_LOOKUPS as u32).div_ceil(per) + 1;
    for k in 0..instances {
        let addr = ip(&format!("10.0.2.{}", k + 1));
        h.reg(u64::from(k), udp_spec_at(addr), T0);
        for i in 0..per {
            h.new_flow(udp_to(addr, 10_000 + i as u16, i, Some(30)), T0);
        }
    }
    h.requests();
    assert_eq!(h.e.check_tracked_flows(T0 + SEC), 0);
    assert_eq!(
        h.requests(),
        vec![ObserverRequest::Resync(ResyncScope::All)]
    );
}
