//! Which flows count as inbound activity (reference §2, §8.2, §8.3).

use super::*;
use crate::policy::Cidr;

#[test]
fn only_qualifying_inbound_tcp_counts_with_ignore_rules() {
    let mut h = H::new();
    let mut p = policy(5 * MIN);
    p.ignore_source_cidrs = vec![Cidr::parse("10.0.0.0/8").unwrap()];
    p.ignore_destination_ports = vec![22];
    h.reg(1, spec_with(guest(), p), T0);
    let ext = ip("203.0.113.9");
    let est = Some(TcpState::ESTABLISHED);
    // counted: external client to :8080
    h.new_flow(flow(proto::TCP, ext, 40000, guest(), 8080, est, 1), T0);
    // not counted: the guest's own outbound connection
    h.new_flow(flow(proto::TCP, guest(), 40001, ext, 443, est, 2), T0);
    // not counted: ignored client prefix
    h.new_flow(
        flow(proto::TCP, ip("10.1.2.3"), 40002, guest(), 8080, est, 3),
        T0,
    );
    // not counted: ignored guest port
    h.new_flow(flow(proto::TCP, ext, 40003, guest(), 22, est, 4), T0);
    // not counted: already finished
    h.new_flow(
        flow(
            proto::TCP,
            ext,
            40004,
            guest(),
            8080,
            Some(TcpState::TIME_WAIT),
            5,
        ),
        T0,
    );
    // counted: half-open, a client mid-handshake
    h.new_flow(
        flow(
            proto::TCP,
            ext,
            40005,
            guest(),
            8080,
            Some(TcpState::SYN_SENT),
            6,
        ),
        T0,
    );
    let s = h.st(1, T0);
    assert_eq!(s.active_inbound, 2);
    assert_eq!(s.status, Status::Active);
    let mut why = Vec::new();
    h.e.explain(1, T0 + 5 * SEC, &mut why).unwrap();
    let ports: Vec<u16> = why.iter().map(|k| k.orig.src_port).collect();
    assert_eq!(ports, vec![40000, 40005]);
}

#[test]
fn every_tcp_state_but_none_time_wait_and_close_keeps_an_instance_awake() {
    for state in 0..=13u8 {
        let mut h = H::new();
        h.reg(1, spec(MIN), T0);
        h.new_flow(inbound(1000, Some(TcpState(state))), T0);
        let live = h.st(1, T0).active_inbound == 1;
        assert_eq!(live, !matches!(state, 0 | 7 | 8), "state {state}");
    }
}

#[test]
fn dnat_port_forward_counts_for_the_guest_behind_it() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    let client = ip("198.51.100.4");
    let host = ip("203.0.113.1");
    // The client dials the host's :8080, DNATed to guest:80.
    let f = Flow {
        protocol: proto::TCP,
        orig: Tuple::new(client, 50000, host, 8080),
        reply: Tuple::new(guest(), 80, client, 50000),
        zone: 0,
        id: 77,
        tcp_state: Some(TcpState::ESTABLISHED),
        status: 0,
        mark: 0,
        timeout_s: None,
    };
    h.new_flow(f, T0);
    assert_eq!(h.st(1, T0).active_inbound, 1);
    let mut why = Vec::new();
    h.e.explain(1, T0, &mut why).unwrap();
    assert_eq!(why[0].orig, f.orig);
    assert_eq!(why[0].reply, f.reply);
    // Ignore rules look at the guest's port (80), not the host's (8080).
    let mut p = policy(MIN);
    p.ignore_destination_ports = vec![80];
    h.e.update(1, spec_with(guest(), p), T0).unwrap();
    assert_eq!(h.st(1, T0).active_inbound, 0);
    h.destroy(f, T0);
    assert_eq!(h.e.stats().tracked_flows, 0);
}

#[test]
fn ipv6_and_mapped_addresses_match_the_same_guest() {
    let mut h = H::new();
    let v6 = ip("fd00::10");
    let mut s = spec(MIN);
    s.addresses = vec![guest(), v6];
    h.reg(1, s, T0);
    let est = Some(TcpState::ESTABLISHED);
    h.new_flow(flow(proto::TCP, ip("fd00::99"), 1, v6, 443, est, 1), T0);
    // A dual-stack socket reports the guest as ::ffff:192.168.100.10.
    let mapped = ip("::ffff:192.168.100.10");
    let mut f = flow(proto::TCP, ip("::ffff:203.0.113.5"), 2, mapped, 80, est, 2);
    // Bypass Tuple::new's normalisation to check the engine does it too.
    f.orig.dst = mapped;
    f.reply.src = mapped;
    h.new_flow(f, T0);
    assert_eq!(h.st(1, T0).active_inbound, 2);
    // An instance registered with a mapped address is the same address.
    let mut h2 = H::new();
    let mut s2 = spec(MIN);
    s2.addresses = vec![mapped];
    h2.reg(2, s2, T0);
    h2.new_flow(inbound(5, est), T0);
    assert_eq!(h2.st(2, T0).active_inbound, 1);
    assert_eq!(h2.e.addresses(), vec![guest()]);
}

#[test]
fn udp_counts_only_when_the_policy_enables_it() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    let q = flow(proto::UDP, ip("203.0.113.8"), 5353, guest(), 53, None, 9);
    h.new_flow(q, T0);
    assert_eq!(h.st(1, T0).active_inbound, 0);
    // Stored anyway: enabling UDP recounts without a dump.
    let mut p = policy(MIN);
    p.protocols.udp = true;
    h.e.update(1, spec_with(guest(), p.clone()), T0).unwrap();
    assert_eq!(h.st(1, T0).active_inbound, 1);
    // UDP only: TCP stops counting.
    p.protocols.tcp = false;
    h.new_flow(inbound(1, Some(TcpState::ESTABLISHED)), T0);
    h.e.update(1, spec_with(guest(), p), T0).unwrap();
    assert_eq!(h.st(1, T0).active_inbound, 1);
    h.destroy(q, T0);
    assert_eq!(h.st(1, T0).active_inbound, 0);
}

#[test]
fn ipv6_ignore_prefix_applies_to_ipv6_clients() {
    let mut h = H::new();
    let v6 = ip("fd00::10");
    let mut p = policy(MIN);
    p.ignore_source_cidrs = vec![Cidr::parse("fd00:1::/32").unwrap()];
    h.reg(1, spec_with(v6, p), T0);
    let est = Some(TcpState::ESTABLISHED);
    h.new_flow(flow(proto::TCP, ip("fd00:1::5"), 1, v6, 80, est, 1), T0);
    h.new_flow(flow(proto::TCP, ip("fd00:2::5"), 1, v6, 80, est, 2), T0);
    assert_eq!(h.st(1, T0).active_inbound, 1);
}

#[test]
fn flows_are_told_apart_by_protocol_zone_and_id() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    let est = Some(TcpState::ESTABLISHED);
    let a = inbound(1000, est);
    let mut b = a;
    b.zone = 7;
    let mut c = a;
    c.id = 9999;
    for f in [a, b, c] {
        h.new_flow(f, T0);
    }
    assert_eq!(h.st(1, T0).active_inbound, 3);
    h.destroy(b, T0);
    h.destroy(b, T0);
    assert_eq!(h.st(1, T0).active_inbound, 2);
}

#[test]
fn events_for_unknown_addresses_are_counted_as_unmatched() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    let other = ip("192.168.100.11");
    let est = Some(TcpState::ESTABLISHED);
    h.new_flow(
        flow(proto::TCP, ip("203.0.113.1"), 1, other, 80, est, 1),
        T0,
    );
    h.new_flow(flow(1, ip("203.0.113.1"), 0, guest(), 0, None, 2), T0); // ICMP
    let s = h.e.stats();
    assert_eq!(
        (s.flow_events, s.flow_events_unmatched, s.tracked_flows),
        (2, 2, 0)
    );
}

/// A prefix-form kernel filter passes events of unregistered neighbours of the
/// instances (inside the covering prefixes): the engine counts them as unmatched and
/// keeps nothing for them, one by one or in a batch, whatever their kind.
#[test]
fn events_of_unregistered_neighbours_are_unmatched_and_leave_no_trace() {
    let mut h = H::new();
    h.reg(1, spec(5 * MIN), T0);
    h.drain();
    let before = (h.st(1, T0), h.e.next_deadline());
    let est = Some(TcpState::ESTABLISHED);
    let client = ip("203.0.113.1");
    let neighbours = ["192.168.100.11", "192.168.100.9", "192.168.101.10"];
    let mut batch = Vec::new();
    for (i, n) in neighbours.iter().enumerate() {
        let f = flow(
            proto::TCP,
            client,
            1000 + i as u16,
            ip(n),
            80,
            est,
            i as u32,
        );
        h.new_flow(f, T0);
        h.update_flow(f, T0);
        h.destroy(f, T0);
        for kind in [EventKind::New, EventKind::Update, EventKind::Destroy] {
            batch.push(ev(kind, f));
        }
    }
    h.e.on_flow_events(&batch, T0);
    let s = h.e.stats();
    assert_eq!(
        (s.flow_events, s.flow_events_unmatched, s.tracked_flows),
        (18, 18, 0)
    );
    assert!(h.drain().is_empty());
    assert_eq!((h.st(1, T0), h.e.next_deadline()), before);
}

#[test]
fn flows_with_unspecified_addresses_match_nothing() {
    let mut h = H::new();
    h.reg(1, spec(MIN), T0);
    let any = ip("::");
    let f = flow(
        proto::TCP,
        ip("203.0.113.1"),
        1,
        any,
        80,
        Some(TcpState::ESTABLISHED),
        1,
    );
    h.new_flow(f, T0);
    let f4 = flow(
        proto::TCP,
        ip("203.0.113.1"),
        1,
        ip("0.0.0.0"),
        80,
        Some(TcpState::ESTABLISHED),
        2,
    );
    h.new_flow(f4, T0);
    assert_eq!(h.e.stats().flow_events_unmatched, 2);
}

#[test]
fn traffic_between_an_instances_own_addresses_is_not_inbound() {
    let mut h = H::new();
    let (a, b, c) = (guest(), ip("fd00::10"), ip("192.168.100.77"));
    let mut s = spec(MIN);
    s.addresses = vec![a, b, c];
    h.reg(1, s, T0);
    let est = Some(TcpState::ESTABLISHED);
    // From its third address (beyond the two kept in the hot line) to its first: own.
    h.new_flow(flow(proto::TCP, c, 1, a, 80, est, 1), T0);
    h.new_flow(flow(proto::TCP, a, 2, c, 80, est, 2), T0);
    assert_eq!(h.st(1, T0).active_inbound, 0);
    // A client to the third address: inbound.
    h.new_flow(flow(proto::TCP, ip("203.0.113.5"), 3, c, 80, est, 3), T0);
    assert_eq!(h.st(1, T0).active_inbound, 1);
}
