//! Property test: random interleavings never yield Standby while a qualifying flow is
//! live, and an instance left without flows for its timeout always gets Standby.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

const INSTANCES: u64 = 3;
const TIMEOUT: u64 = 10 * SEC;

#[derive(Clone, Debug)]
enum Op {
    /// A TCP event, or with `udp` a UDP event reporting `timeout` seconds left (on a
    /// port of its own: 100 + `port` in the model).
    Event {
        inst: u64,
        port: u16,
        kind: u8,
        state: Option<u8>,
        udp: bool,
        timeout: u8,
    },
    Dump {
        inst: u64,
        ports: Vec<u16>,
    },
    /// A consistent dump of every instance at once (`ResyncScope::All`).
    DumpAll(Vec<(u64, u16)>),
    Hold(u64),
    Advance(u64),
    Outcome(u8),
    Lost(u64),
    Policy {
        inst: u64,
        ignore_port: bool,
    },
    Lifecycle {
        inst: u64,
        running: bool,
    },
    /// Answers the oldest pending confirmation: a consistent dump, or a failed one.
    Confirm {
        fail: bool,
    },
    /// Answers the lookups begun so far with what the kernel had when each began: all
    /// of it (0), with the first flow failed (1), or the whole lookup failed (2).
    Lookups(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..INSTANCES, 1u16..6, 0u8..3, proptest::option::of(0u8..13), proptest::bool::weighted(0.3), 0u8..40)
            .prop_map(|(inst, port, kind, state, udp, timeout)| Op::Event { inst, port, kind, state, udp, timeout }),
        1 => (0..INSTANCES, proptest::collection::vec(1u16..6, 0..3))
            .prop_map(|(inst, ports)| Op::Dump { inst, ports }),
        1 => proptest::collection::vec((0..INSTANCES, 1u16..6), 0..6).prop_map(Op::DumpAll),
        1 => (0..INSTANCES).prop_map(Op::Hold),
        4 => (0u64..15_000).prop_map(Op::Advance),
        2 => (0u8..3).prop_map(Op::Outcome),
        1 => (0..INSTANCES).prop_map(Op::Lost),
        1 => (0..INSTANCES, any::<bool>()).prop_map(|(inst, ignore_port)| Op::Policy { inst, ignore_port }),
        1 => (0..INSTANCES, any::<bool>()).prop_map(|(inst, running)| Op::Lifecycle { inst, running }),
        2 => (0u8..4).prop_map(|f| Op::Confirm { fail: f == 0 }),
        2 => (0u8..4).prop_map(|f| Op::Lookups(f.min(2))),
    ]
}

fn addr(inst: u64) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::new(10, 9, 0, 1 + inst as u8))
}

fn mkspec(ignore_port: bool, running: bool) -> InstanceSpec {
    let mut p = policy(TIMEOUT);
    p.protocols.udp = true;
    if ignore_port {
        p.ignore_destination_ports = vec![5];
    }
    InstanceSpec {
        lifecycle: if running {
            Lifecycle::Running
        } else {
            Lifecycle::Other
        },
        ..spec_with(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), p)
    }
}

/// Model ports from 100 up are UDP flows.
const UDP_PORTS: u16 = 100;

fn mkudp(inst: u64, port: u16, timeout: Option<u32>) -> Flow {
    Flow {
        timeout_s: timeout,
        ..flow(
            proto::UDP,
            ip("198.51.100.1"),
            port,
            addr(inst),
            port,
            None,
            u32::from(port),
        )
    }
}

/// The flow a consistent dump reports for a model port.
fn dumped(inst: u64, port: u16) -> Flow {
    if port >= UDP_PORTS {
        mkudp(inst, port, Some(30))
    } else {
        mkflow(inst, port, Some(3))
    }
}

fn mkflow(inst: u64, port: u16, state: Option<u8>) -> Flow {
    flow(
        proto::TCP,
        ip("198.51.100.1"),
        port,
        addr(inst),
        port,
        state.map(TcpState),
        u32::from(port),
    )
}

/// The model: which flows are live per instance (as conntrack would report them).
#[derive(Default)]
struct Model {
    live: BTreeMap<u64, BTreeSet<u16>>,
    ignore5: BTreeSet<u64>,
    running: BTreeSet<u64>,
}

impl Model {
    fn qualifying(&self, inst: u64) -> usize {
        self.live.get(&inst).map_or(0, |s| {
            s.iter()
                .filter(|p| !(**p == 5 && self.ignore5.contains(&inst)))
                .count()
        })
    }
}

/// Runs a consistent dump of `inst` (what the model says is live) as resync `r`.
fn dump_model(h: &mut H, m: &Model, inst: u64, now: UnixMillis) {
    let r = h.e.begin_resync(ResyncScope::Instances(vec![inst]), now);
    let set = m.live.get(&inst).cloned().unwrap_or_default();
    for &p in &set {
        h.e.resync_flow(r, &dumped(inst, p)).unwrap();
    }
    h.e.finish_resync(r, now).unwrap();
}

/// A lookup begun, with the answers the kernel gave at that moment.
type OpenLookup = (LookupId, Vec<(Flow, Option<Flow>)>);

/// Moves the engine's confirmation requests into `pending`, answers its requests for
/// resyncs of some instances (losses, failed lookups) with consistent dumps, and begins
/// the lookups it asks for (expiry checks), noting what the kernel has now.
fn collect_confirms(
    h: &mut H,
    m: &Model,
    pending: &mut Vec<u64>,
    lookups: &mut Vec<OpenLookup>,
    now: UnixMillis,
) {
    for r in h.requests() {
        match r {
            ObserverRequest::Confirm(k) if !pending.contains(&k) => pending.push(k),
            ObserverRequest::Resync(ResyncScope::Instances(keys)) => {
                for k in keys {
                    dump_model(h, m, k, now);
                }
            }
            ObserverRequest::Lookup(flows) => {
                let id = h.e.begin_lookup(&flows, now);
                let answers = flows
                    .into_iter()
                    .map(|f| {
                        let inst = (0..INSTANCES).find(|&i| addr(i) == f.orig.dst).unwrap();
                        let port = f.orig.src_port;
                        let live = m.live.get(&inst).is_some_and(|s| s.contains(&port));
                        (f, live.then(|| mkudp(inst, port, Some(30))))
                    })
                    .collect();
                lookups.push((id, answers));
            }
            _ => {}
        }
    }
}

/// Answers every lookup begun so far (see [`Op::Lookups`]).
fn answer_lookups(h: &mut H, lookups: &mut Vec<OpenLookup>, how: u8, now: UnixMillis) {
    for (id, answers) in lookups.drain(..) {
        if how == 2 {
            h.e.fail_lookup(id, now).unwrap();
            continue;
        }
        for (i, (asked, found)) in answers.iter().enumerate() {
            let answer = match found {
                _ if how == 1 && i == 0 => LookupAnswer::Failed,
                Some(f) => LookupAnswer::Found(f),
                None => LookupAnswer::Gone,
            };
            h.e.lookup_answer(id, asked, answer).unwrap();
        }
        h.e.finish_lookup(id, now).unwrap();
    }
}

fn run(ops: Vec<Op>, confirm: bool) -> Result<(), TestCaseError> {
    let mut h = H::with(EngineConfig {
        max_concurrent_standbys: 2,
        confirm_before_standby: confirm,
        confirm_lead_ms: 3 * SEC,
        ..EngineConfig::default()
    });
    let mut confirms: Vec<u64> = Vec::new();
    let mut lookups: Vec<OpenLookup> = Vec::new();
    let mut m = Model::default();
    let mut now = T0;
    for i in 0..INSTANCES {
        let mut s = mkspec(false, true);
        s.addresses = vec![addr(i)];
        h.reg(i, s, now);
        m.running.insert(i);
    }
    let mut executing: Vec<u64> = Vec::new();
    let mut emitted: Vec<u64> = Vec::new();
    let check = |h: &mut H, m: &Model, emitted: &mut Vec<u64>| -> Result<(), TestCaseError> {
        for k in h.standbys() {
            prop_assert_eq!(m.qualifying(k), 0, "Standby for {} with live flows", k);
            emitted.push(k);
        }
        Ok(())
    };
    for op in ops {
        match op {
            Op::Event {
                inst,
                port,
                kind,
                udp: true,
                timeout,
                ..
            } => {
                let port = UDP_PORTS + port;
                let set = m.live.entry(inst).or_default();
                if kind < 2 {
                    set.insert(port);
                    let f = mkudp(inst, port, Some(u32::from(timeout)));
                    if kind == 0 {
                        h.new_flow(f, now);
                    } else {
                        h.update_flow(f, now);
                    }
                } else {
                    set.remove(&port);
                    h.destroy(mkudp(inst, port, None), now);
                }
            }
            Op::Event {
                inst,
                port,
                kind,
                state,
                ..
            } => {
                let f = mkflow(inst, port, state);
                let set = m.live.entry(inst).or_default();
                match kind {
                    0 => {
                        let live = state.is_none_or(|s| !TcpState(s).is_finished());
                        if live {
                            set.insert(port);
                        } else {
                            set.remove(&port);
                        }
                        h.new_flow(f, now);
                    }
                    1 => {
                        // An UPDATE without a state keeps the previous one; for an
                        // unknown flow it counts as live.
                        match state {
                            Some(s) if TcpState(s).is_finished() => {
                                set.remove(&port);
                            }
                            _ => {
                                set.insert(port);
                            }
                        }
                        h.update_flow(f, now);
                    }
                    _ => {
                        set.remove(&port);
                        h.destroy(f, now);
                    }
                }
            }
            Op::Dump { inst, ports } => {
                // A consistent dump: the kernel's table is what the dump says.
                let r = h.e.begin_resync(ResyncScope::Instances(vec![inst]), now);
                let set: BTreeSet<u16> = ports.into_iter().collect();
                for &p in &set {
                    h.e.resync_flow(r, &dumped(inst, p)).unwrap();
                }
                h.e.finish_resync(r, now).unwrap();
                m.live.insert(inst, set);
            }
            Op::DumpAll(flows) => {
                let r = h.e.begin_resync(ResyncScope::All, now);
                for i in 0..INSTANCES {
                    m.live.insert(i, BTreeSet::new());
                }
                for (inst, p) in flows {
                    h.e.resync_flow(r, &mkflow(inst, p, Some(3))).unwrap();
                    m.live.entry(inst).or_default().insert(p);
                }
                h.e.finish_resync(r, now).unwrap();
            }
            Op::Hold(inst) => {
                let _ = h.e.hold(inst, now);
            }
            Op::Advance(ms) => {
                now += ms;
                h.e.tick(now);
            }
            Op::Outcome(o) => {
                if let Some(k) = emitted.pop() {
                    if h.e.begin_standby(k, now) == Ok(BeginStandby::Proceed) {
                        executing.push(k);
                    }
                } else if let Some(k) = executing.pop() {
                    let outcome = [
                        StandbyOutcome::Success,
                        StandbyOutcome::Failed,
                        StandbyOutcome::Failed,
                    ][o as usize];
                    h.e.report_standby(k, outcome, now).unwrap();
                    if outcome == StandbyOutcome::Success {
                        m.running.remove(&k);
                    }
                }
            }
            Op::Lost(inst) => {
                h.e.events_lost(ResyncScope::Instances(vec![inst]), now);
                collect_confirms(&mut h, &m, &mut confirms, &mut lookups, now);
                // The loss is repaired at once by a consistent dump.
                dump_model(&mut h, &m, inst, now);
            }
            Op::Confirm { fail } => {
                if !confirms.is_empty() {
                    let inst = confirms.remove(0);
                    if fail {
                        let r = h.e.begin_resync(ResyncScope::Instances(vec![inst]), now);
                        h.e.fail_resync(r, now).unwrap();
                    } else {
                        dump_model(&mut h, &m, inst, now);
                    }
                }
            }
            Op::Lookups(how) => answer_lookups(&mut h, &mut lookups, how, now),
            Op::Policy { inst, ignore_port } => {
                if ignore_port {
                    m.ignore5.insert(inst);
                } else {
                    m.ignore5.remove(&inst);
                }
                let mut s = mkspec(ignore_port, m.running.contains(&inst));
                s.addresses = vec![addr(inst)];
                let _ = h.e.update(inst, s, now);
            }
            Op::Lifecycle { inst, running } => {
                if running {
                    m.running.insert(inst);
                } else {
                    m.running.remove(&inst);
                }
                let mut s = mkspec(m.ignore5.contains(&inst), running);
                s.addresses = vec![addr(inst)];
                let _ = h.e.update(inst, s, now);
            }
        }
        collect_confirms(&mut h, &m, &mut confirms, &mut lookups, now);
        check(&mut h, &m, &mut emitted)?;
    }
    // Liveness: finish whatever is in flight, then leave every running instance
    // without qualifying flows for long enough.
    for k in emitted.drain(..) {
        if h.e.begin_standby(k, now) == Ok(BeginStandby::Proceed) {
            executing.push(k);
        }
    }
    for k in executing.drain(..) {
        h.e.report_standby(k, StandbyOutcome::Failed, now).unwrap();
    }
    for i in 0..INSTANCES {
        let set = m.live.entry(i).or_default();
        for p in std::mem::take(set) {
            let f = if p >= UDP_PORTS {
                mkudp(i, p, None)
            } else {
                mkflow(i, p, None)
            };
            h.destroy(f, now);
        }
    }
    let mut got = BTreeSet::new();
    for _ in 0..8 {
        answer_lookups(&mut h, &mut lookups, 0, now);
        now += TIMEOUT;
        h.e.tick(now);
        collect_confirms(&mut h, &m, &mut confirms, &mut lookups, now);
        answer_lookups(&mut h, &mut lookups, 0, now);
        collect_confirms(&mut h, &m, &mut confirms, &mut lookups, now);
        for inst in std::mem::take(&mut confirms) {
            dump_model(&mut h, &m, inst, now);
        }
        for k in h.standbys() {
            got.insert(k);
            prop_assert_eq!(h.e.begin_standby(k, now), Ok(BeginStandby::Proceed));
            h.e.report_standby(k, StandbyOutcome::Success, now).unwrap();
        }
    }
    prop_assert_eq!(
        got,
        m.running.clone(),
        "every idle running instance gets Standby"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn never_standby_while_live_and_always_standby_when_idle(
        ops in proptest::collection::vec(op(), 0..80)
    ) {
        run(ops, false)?;
    }

    #[test]
    fn confirmed_ahead_never_standby_while_live_and_always_standby_when_idle(
        ops in proptest::collection::vec(op(), 0..80)
    ) {
        run(ops, true)?;
    }
}
