//! Wake admission: which new flows may wake an instance in Standby, one `Wake` per
//! Standby period, and the restore slots with their FIFO queue.

use proptest::prelude::*;

use super::*;
use crate::policy::Cidr;

fn guest_n(n: u8) -> IpAddr {
    IpAddr::from([192, 168, 100, 10 + n])
}

fn wake_policy() -> Policy {
    let mut p = policy(MIN);
    p.wake_on_traffic = true;
    p
}

fn standby_spec(addr: IpAddr, p: Policy) -> InstanceSpec {
    let mut s = spec_with(addr, p);
    s.lifecycle = Lifecycle::Standby;
    s
}

fn lifecycle(mut s: InstanceSpec, l: Lifecycle) -> InstanceSpec {
    s.lifecycle = l;
    s
}

/// A SYN from `client:cport` to `guest:port`.
fn syn(client: &str, cport: u16, guest: IpAddr, port: u16) -> Flow {
    flow(
        proto::TCP,
        ip(client),
        cport,
        guest,
        port,
        Some(TcpState::SYN_SENT),
        u32::from(cport) << 8 | u32::from(port & 0xff),
    )
}

fn woken(h: &mut H) -> Vec<InstanceKey> {
    h.drain()
        .into_iter()
        .filter_map(|d| match d {
            Decision::Wake { key, .. } => Some(key),
            _ => None,
        })
        .collect()
}

#[test]
fn flows_that_would_not_count_do_not_wake_and_are_counted_by_reason() {
    let mut h = H::new();
    let mut p = wake_policy();
    p.ignore_destination_ports = vec![22];
    p.ignore_source_cidrs = vec![Cidr::parse("10.9.0.0/16").unwrap()];
    p.wake_source_cidrs = vec![Cidr::parse("203.0.113.0/24").unwrap()];
    h.reg(1, standby_spec(guest(), p), T0);

    h.new_flow(syn("203.0.113.5", 1000, guest(), 22), T0);
    h.new_flow(syn("10.9.1.1", 1001, guest(), 80), T0);
    h.new_flow(syn("198.51.100.1", 1002, guest(), 80), T0);
    let udp = flow(proto::UDP, ip("203.0.113.5"), 1003, guest(), 53, None, 7);
    h.new_flow(udp, T0);
    assert!(woken(&mut h).is_empty());
    let s = h.e.stats().wakes_suppressed;
    assert_eq!(
        (
            s.not_counted_port,
            s.ignored_source,
            s.source_not_allowed,
            s.not_counted_protocol,
            s.restore_backoff
        ),
        (1, 1, 1, 1, 0)
    );
    // An UPDATE or a DESTROY is no request at all.
    h.update_flow(syn("198.51.100.1", 1002, guest(), 80), T0);
    assert_eq!(h.e.stats().wakes_suppressed.total(), 4);

    // An allowed client on a counted port wakes it.
    h.new_flow(syn("203.0.113.9", 1004, guest(), 80), T0);
    assert_eq!(woken(&mut h), vec![1]);
    assert_eq!(h.e.stats().wakes_suppressed.total(), 4);
}

#[test]
fn wake_sources_limit_waking_only_not_counting() {
    let mut h = H::new();
    let mut p = wake_policy();
    p.wake_source_cidrs = vec![Cidr::parse("203.0.113.0/24").unwrap()];
    let running = lifecycle(standby_spec(guest(), p.clone()), Lifecycle::Running);
    h.reg(1, running, T0);
    h.new_flow(syn("198.51.100.1", 1000, guest(), 80), T0);
    assert_eq!(h.st(1, T0).active_inbound, 1);
    assert_eq!(h.e.stats().wakes_suppressed.total(), 0);
}

#[test]
fn a_restore_backoff_suppresses_and_counts() {
    let mut h = H::new();
    h.reg(1, standby_spec(guest(), wake_policy()), T0);
    h.new_flow(syn("203.0.113.1", 1000, guest(), 80), T0);
    assert_eq!(woken(&mut h), vec![1]);
    h.e.report_wake(1, WakeOutcome::Failed, T0).unwrap();
    h.new_flow(syn("203.0.113.1", 1001, guest(), 80), T0 + 500);
    assert!(woken(&mut h).is_empty());
    assert_eq!(h.e.stats().wakes_suppressed.restore_backoff, 1);
    assert_eq!(h.e.stats().restores_in_flight, 0);
}

#[test]
fn a_thousand_clients_ask_for_one_restore() {
    let mut h = H::new();
    h.reg(1, standby_spec(guest(), wake_policy()), T0);
    for i in 0..1000u32 {
        let client = format!("10.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256);
        h.new_flow(syn(&client, 40_000, guest(), 80), T0 + u64::from(i));
    }
    assert_eq!(woken(&mut h), vec![1]);
    // Restored: still no second Wake while the host's Running update is on its way.
    h.e.report_wake(1, WakeOutcome::Success, T0 + 2 * SEC)
        .unwrap();
    h.new_flow(syn("10.200.0.1", 40_001, guest(), 80), T0 + 2 * SEC);
    assert!(woken(&mut h).is_empty());
    assert_eq!(h.e.stats().wake_decisions, 1);
    assert_eq!(h.e.stats().restores_in_flight, 0);
}

#[test]
fn restores_beyond_the_limit_wait_in_first_syn_order() {
    let mut h = H::with(EngineConfig {
        max_concurrent_restores: 2,
        ..EngineConfig::default()
    });
    for k in 1..=6u8 {
        h.reg(u64::from(k), standby_spec(guest_n(k), wake_policy()), T0);
    }
    // SYNs in the order 3, 1, 5, 2, 6, 4 (and repeats, which change nothing).
    for (i, k) in [3u8, 1, 5, 3, 2, 6, 1, 4].into_iter().enumerate() {
        h.new_flow(syn("203.0.113.1", 1000 + i as u16, guest_n(k), 80), T0);
    }
    assert_eq!(woken(&mut h), vec![3, 1]);
    let s = h.e.stats();
    assert_eq!((s.restores_in_flight, s.restores_queued), (2, 4));

    // A report frees a slot: the oldest waiting goes out.
    h.e.report_wake(3, WakeOutcome::Success, T0 + SEC).unwrap();
    assert_eq!(woken(&mut h), vec![5]);
    // So does the host's update out of Standby (no report needed).
    h.e.update(
        1,
        lifecycle(standby_spec(guest_n(1), wake_policy()), Lifecycle::Running),
        T0 + SEC,
    )
    .unwrap();
    assert_eq!(woken(&mut h), vec![2]);
    // A waiting instance that leaves Standby or can no longer wake leaves the queue.
    h.e.update(
        6,
        lifecycle(standby_spec(guest_n(6), wake_policy()), Lifecycle::Stopped),
        T0 + SEC,
    )
    .unwrap();
    assert_eq!(h.e.stats().restores_queued, 1);
    // A failure frees the slot too.
    h.e.report_wake(5, WakeOutcome::Failed, T0 + 2 * SEC)
        .unwrap();
    assert_eq!(woken(&mut h), vec![4]);
    // So does unregistering.
    h.e.unregister(2, T0 + 2 * SEC).unwrap();
    let s = h.e.stats();
    assert_eq!((s.restores_in_flight, s.restores_queued), (1, 0));
    h.e.report_wake(4, WakeOutcome::Declined, T0 + 3 * SEC)
        .unwrap();
    assert_eq!(h.e.stats().restores_in_flight, 0);
    // Declined: no other Wake in this Standby period, and no restore_failed.
    h.new_flow(syn("203.0.113.1", 2000, guest_n(4), 80), T0 + 4 * SEC);
    assert!(woken(&mut h).is_empty());
    assert_eq!(h.st(4, T0 + 4 * SEC).reason, Reason::InstanceNotRunning);
}

#[test]
fn a_queued_restore_is_dropped_when_wake_on_traffic_is_turned_off() {
    let mut h = H::with(EngineConfig {
        max_concurrent_restores: 1,
        ..EngineConfig::default()
    });
    h.reg(1, standby_spec(guest_n(1), wake_policy()), T0);
    h.reg(2, standby_spec(guest_n(2), wake_policy()), T0);
    h.new_flow(syn("203.0.113.1", 1000, guest_n(1), 80), T0);
    h.new_flow(syn("203.0.113.1", 1001, guest_n(2), 80), T0);
    assert_eq!(woken(&mut h), vec![1]);
    h.e.update(2, standby_spec(guest_n(2), policy(MIN)), T0)
        .unwrap();
    assert_eq!(h.e.stats().restores_queued, 0);
    h.e.report_wake(1, WakeOutcome::Success, T0).unwrap();
    assert!(woken(&mut h).is_empty());
}

#[test]
fn explain_on_a_standby_instance_lists_the_flows_that_asked_for_a_wake() {
    let mut h = H::new();
    let mut p = wake_policy();
    p.wake_source_cidrs = vec![Cidr::parse("203.0.113.0/24").unwrap()];
    h.reg(1, standby_spec(guest(), p), T0);
    h.new_flow(syn("198.51.100.1", 1000, guest(), 80), T0);
    h.new_flow(syn("203.0.113.1", 1001, guest(), 80), T0 + SEC);
    h.new_flow(syn("203.0.113.2", 1002, guest(), 80), T0 + 2 * SEC);
    let mut out = Vec::new();
    h.e.explain(1, T0 + 3 * SEC, &mut out).unwrap();
    let clients: Vec<_> = out.iter().map(|k| (k.orig.src, k.orig.src_port)).collect();
    assert_eq!(
        clients,
        vec![(ip("203.0.113.1"), 1001), (ip("203.0.113.2"), 1002)]
    );
}

#[derive(Clone, Debug)]
enum Op {
    /// A SYN to instance `inst` from an allowed client or not.
    Syn {
        inst: u8,
        allowed: bool,
    },
    Report {
        inst: u8,
        outcome: u8,
    },
    /// The host moves the instance to Running, or back to Standby.
    Flip {
        inst: u8,
    },
    Unregister {
        inst: u8,
    },
}

const N: u8 = 6;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..N, any::<bool>()).prop_map(|(inst, allowed)| Op::Syn { inst, allowed }),
        3 => (0..N, 0..3u8).prop_map(|(inst, outcome)| Op::Report { inst, outcome }),
        2 => (0..N).prop_map(|inst| Op::Flip { inst }),
        1 => (0..N).prop_map(|inst| Op::Unregister { inst }),
    ]
}

proptest! {
    /// Whatever the hosts and clients do: never more restores outstanding than the
    /// limit, at most one per instance, none for a client that may not wake, a free
    /// slot never idles while a restore waits, and the waiting ones go in the order they
    /// asked.
    #[test]
    fn restore_slots_hold_their_rules(limit in 1..4u32, ops in prop::collection::vec(op(), 1..120)) {
        let mut h = H::with(EngineConfig { max_concurrent_restores: limit, ..EngineConfig::default() });
        let mut p = wake_policy();
        p.wake_source_cidrs = vec![Cidr::parse("203.0.113.0/24").unwrap()];
        let spec = |i: u8, l| lifecycle(standby_spec(guest_n(i), p.clone()), l);
        let mut standby = [true; N as usize];
        let mut registered = [true; N as usize];
        for i in 0..N {
            h.reg(u64::from(i), spec(i, Lifecycle::Standby), T0);
        }
        // Model: outstanding restores, and the queue in order of asking.
        let mut outstanding: Vec<u8> = Vec::new();
        let mut queue: Vec<u8> = Vec::new();
        let mut settled = [false; N as usize];
        let mut now = T0;
        let mut port = 1u16;
        for op in ops {
            now += WAKE_RETRY_MAX_MS + SEC; // past any backoff
            match op {
                Op::Syn { inst, allowed } => {
                    port += 1;
                    let client = if allowed { "203.0.113.1" } else { "198.51.100.1" };
                    if !registered[inst as usize] {
                        continue;
                    }
                    h.new_flow(syn(client, port, guest_n(inst), 80), now);
                    let i = inst as usize;
                    if allowed && standby[i] && !settled[i] && !outstanding.contains(&inst) && !queue.contains(&inst) {
                        queue.push(inst);
                    }
                }
                Op::Report { inst, outcome } => {
                    let outcome = [WakeOutcome::Success, WakeOutcome::Failed, WakeOutcome::Declined][outcome as usize];
                    let r = h.e.report_wake(u64::from(inst), outcome, now);
                    prop_assert_eq!(r.is_ok(), registered[inst as usize]);
                    let i = inst as usize;
                    if registered[i] && standby[i] && !queue.contains(&inst) {
                        if let Some(pos) = outstanding.iter().position(|&x| x == inst) {
                            outstanding.remove(pos);
                            settled[i] = outcome != WakeOutcome::Failed;
                        } else if outcome == WakeOutcome::Failed {
                            settled[i] = false;
                        }
                    }
                }
                Op::Flip { inst } => {
                    let i = inst as usize;
                    if !registered[i] {
                        continue;
                    }
                    standby[i] = !standby[i];
                    let l = if standby[i] { Lifecycle::Standby } else { Lifecycle::Running };
                    h.e.update(u64::from(inst), spec(inst, l), now).unwrap();
                    outstanding.retain(|&x| x != inst);
                    queue.retain(|&x| x != inst);
                    settled[i] = false;
                }
                Op::Unregister { inst } => {
                    let i = inst as usize;
                    if !registered[i] {
                        continue;
                    }
                    h.e.unregister(u64::from(inst), now).unwrap();
                    registered[i] = false;
                    outstanding.retain(|&x| x != inst);
                    queue.retain(|&x| x != inst);
                }
            }
            // Free slots take the oldest waiting restores.
            let mut expected = Vec::new();
            while outstanding.len() < limit as usize && !queue.is_empty() {
                let k = queue.remove(0);
                outstanding.push(k);
                expected.push(u64::from(k));
            }
            prop_assert_eq!(woken(&mut h), expected);
            let s = h.e.stats();
            prop_assert!(s.restores_in_flight <= u64::from(limit));
            prop_assert_eq!(s.restores_in_flight, outstanding.len() as u64);
            prop_assert_eq!(s.restores_queued, queue.len() as u64);
        }
    }
}
