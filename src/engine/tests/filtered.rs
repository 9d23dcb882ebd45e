//! Property test: the engine decides the same when the event socket's BPF filter
//! (`conntrack::bpf`, run by its interpreter on the message the kernel would send)
//! removes the TCP UPDATEs it judges unable to change a decision.
//!
//! Unlike `model`, whose events are arbitrary, the TCP events here follow the kernel's
//! state machine (`nf_conntrack_proto_tcp.c`): the filter's rule rests on which
//! transitions the kernel makes, so only streams the kernel can send are meaningful.
//! Dumps, confirmations and loss repairs are answered alike for both engines from the
//! kernel table the stream implies.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::conntrack::{bpf, request::testing::build_flow_message, wire};

const INSTANCES: u64 = 2;
const PORTS: u16 = 4;
const TIMEOUT: u64 = 5 * SEC;

/// A conntrack entry as the kernel holds it.
#[derive(Clone, Copy, Debug)]
struct Entry {
    state: TcpState,
    assured: bool,
    id: u32,
}

#[derive(Clone, Debug)]
enum Op {
    /// The next packet of the connection on (`inst`, `port`): `pick` chooses among the
    /// transitions the kernel can make from the entry's state.
    Packet {
        inst: u64,
        port: u16,
        pick: u8,
    },
    /// The entry ends without a packet (`conntrack -D`, a timeout, garbage collection).
    Destroy {
        inst: u64,
        port: u16,
    },
    Advance(u64),
    Hold(u64),
    Lost(u64),
    Outcome(u8),
    Lifecycle {
        inst: u64,
        running: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0..INSTANCES, 0..PORTS, any::<u8>())
            .prop_map(|(inst, port, pick)| Op::Packet { inst, port, pick }),
        1 => (0..INSTANCES, 0..PORTS).prop_map(|(inst, port)| Op::Destroy { inst, port }),
        4 => (0u64..4_000).prop_map(Op::Advance),
        1 => (0..INSTANCES).prop_map(Op::Hold),
        1 => (0..INSTANCES).prop_map(Op::Lost),
        2 => (0u8..2).prop_map(Op::Outcome),
        1 => (0..INSTANCES, proptest::bool::weighted(0.8))
            .prop_map(|(inst, running)| Op::Lifecycle { inst, running }),
    ]
}

/// What one packet does to an entry: `None` for a new entry; `Some(None)` for an
/// UPDATE with no state change reported (a mark or status change).
fn transitions(e: Option<Entry>) -> Vec<Step> {
    use Step::*;
    let s = |n: u8| Update(Some(TcpState(n)));
    let Some(e) = e else {
        // A SYN, or a mid-stream packet picked up (loose tracking).
        return vec![New(TcpState::SYN_SENT), New(TcpState::ESTABLISHED)];
    };
    match e.state.0 {
        1 => vec![s(2), s(9), s(8)],
        9 => vec![s(2), s(8)],
        2 => vec![s(3), s(4), s(8)],
        3 => vec![s(4), s(5), s(8), Update(None)],
        4 => vec![s(5), s(6), s(8), Update(None)],
        5 => vec![s(6), s(8), Update(None)],
        6 => vec![s(7), s(8)],
        // A SYN on a finished entry: killed and created again, or (CLOSE without a FIN
        // seen) ignored, and the peer's SYN/ACK moves it to SYN_RECV.
        7 => vec![Reopen, s(7)],
        // The filter keeps that SYN_RECV only on an ASSURED entry: the reopen of a CLOSE
        // entry that never was ESTABLISHED is its one blind spot, left to the dumps
        // (`a_reopened_never_assured_close_entry_is_left_to_the_confirmation`).
        8 if e.assured => vec![Reopen, s(2), s(8)],
        8 => vec![Reopen, s(8)],
        _ => unreachable!("the model stores kernel states only"),
    }
}

#[derive(Clone, Copy, Debug)]
enum Step {
    New(TcpState),
    Update(Option<TcpState>),
    /// DESTROY of the entry, then NEW (SYN_SENT) of the next connection on the tuple.
    Reopen,
}

fn key(inst: u64, port: u16) -> (u64, u16) {
    (inst, port)
}

fn addr(inst: u64) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::new(10, 9, 1, 1 + inst as u8))
}

fn mk(inst: u64, port: u16, e: &Entry, with_state: bool) -> Flow {
    Flow {
        status: match (e.assured, e.state) {
            (true, _) => 0xe,
            (false, TcpState::SYN_SENT) => 0x8,
            _ => 0xa,
        },
        ..flow(
            proto::TCP,
            ip("198.51.100.1"),
            1000 + port,
            addr(inst),
            80,
            with_state.then_some(e.state),
            e.id,
        )
    }
}

/// Two engines, one behind the filter.
struct Pair {
    full: H,
    filtered: H,
    prog: Vec<bpf::Insn>,
    dropped: usize,
}

impl Pair {
    fn event(&mut self, kind: EventKind, f: Flow, now: UnixMillis) {
        let (subtype, flags) = match kind {
            EventKind::New => (
                wire::IPCTNL_MSG_CT_NEW,
                wire::NLM_F_CREATE | wire::NLM_F_EXCL,
            ),
            EventKind::Update => (wire::IPCTNL_MSG_CT_NEW, 0),
            EventKind::Destroy => (wire::IPCTNL_MSG_CT_DELETE, 0),
        };
        let msg = build_flow_message(&f, subtype, flags);
        let e = ev(kind, f);
        self.full.e.on_flow_event(&e, now);
        match bpf::interpret(&self.prog, &msg) {
            Some(bpf::ACCEPT) => self.filtered.e.on_flow_event(&e, now),
            Some(bpf::DROP) => self.dropped += 1,
            other => panic!("verdict {other:?}"),
        }
    }

    fn both(&mut self, f: impl Fn(&mut H)) {
        f(&mut self.full);
        f(&mut self.filtered);
    }
}

/// The decisions other than `PersistRuntime`, which go into `store` (what the host
/// keeps per instance) with `last_inbound_activity_at` left out: it advances on every
/// event the engine sees, so the engine behind the filter persists it less often and
/// with older values, by design. What the countdown rests on, `idle_since`, must match.
fn split(d: Vec<Decision>, store: &mut BTreeMap<u64, Option<Option<u64>>>) -> Vec<Decision> {
    d.into_iter()
        .filter(|d| match d {
            Decision::PersistRuntime { key, runtime } => {
                store.insert(*key, runtime.map(|r| r.idle_since));
                false
            }
            _ => true,
        })
        .collect()
}

fn run(ops: Vec<Op>) -> Result<usize, TestCaseError> {
    let config = EngineConfig {
        confirm_before_standby: true,
        confirm_lead_ms: SEC,
        suspect_end_grace_ms: 1_500,
        ..EngineConfig::default()
    };
    let mut p = Pair {
        full: H::with(config.clone()),
        filtered: H::with(config),
        prog: bpf::state_filter(),
        dropped: 0,
    };
    let mut now = T0;
    let spec = |inst: u64, running: bool| InstanceSpec {
        lifecycle: if running {
            Lifecycle::Running
        } else {
            Lifecycle::Other
        },
        ..spec_with(addr(inst), policy(TIMEOUT))
    };
    for i in 0..INSTANCES {
        p.both(|h| h.reg(i, spec(i, true), now));
    }
    let mut table: BTreeMap<(u64, u16), Entry> = BTreeMap::new();
    let mut next_id = 1u32;
    let mut emitted: Vec<u64> = Vec::new();
    let mut executing: Vec<u64> = Vec::new();
    let mut stores = (BTreeMap::new(), BTreeMap::new());
    for op in ops {
        match op {
            Op::Packet { inst, port, pick } => {
                let k = key(inst, port);
                let cur = table.get(&k).copied();
                let options = transitions(cur);
                let step = options[pick as usize % options.len()];
                match step {
                    Step::New(state) => {
                        next_id += 1;
                        let e = Entry {
                            state,
                            assured: false,
                            id: next_id,
                        };
                        table.insert(k, e);
                        p.event(EventKind::New, mk(inst, port, &e, true), now);
                    }
                    Step::Update(state) => {
                        let mut e = cur.expect("an entry");
                        if let Some(s) = state {
                            e.assured |= s == TcpState::ESTABLISHED;
                            e.state = s;
                        } else {
                            // A status change on a picked-up entry: its reply makes it
                            // ASSURED without a state change.
                            e.assured = true;
                        }
                        table.insert(k, e);
                        p.event(EventKind::Update, mk(inst, port, &e, state.is_some()), now);
                    }
                    Step::Reopen => {
                        let old = cur.expect("an entry");
                        p.event(EventKind::Destroy, mk(inst, port, &old, true), now);
                        next_id += 1;
                        let e = Entry {
                            state: TcpState::SYN_SENT,
                            assured: false,
                            id: next_id,
                        };
                        table.insert(k, e);
                        p.event(EventKind::New, mk(inst, port, &e, true), now);
                    }
                }
            }
            Op::Destroy { inst, port } => {
                if let Some(e) = table.remove(&key(inst, port)) {
                    p.event(EventKind::Destroy, mk(inst, port, &e, true), now);
                }
            }
            Op::Advance(ms) => {
                now += ms;
                p.both(|h| h.e.tick(now));
            }
            Op::Hold(inst) => p.both(|h| {
                let _ = h.e.hold(inst, now);
            }),
            Op::Lost(inst) => p.both(|h| h.e.events_lost(ResyncScope::Instances(vec![inst]), now)),
            Op::Outcome(o) => {
                if let Some(k) = emitted.pop() {
                    let (a, b) = (
                        p.full.e.begin_standby(k, now),
                        p.filtered.e.begin_standby(k, now),
                    );
                    prop_assert_eq!(&a, &b);
                    if a == Ok(BeginStandby::Proceed) {
                        executing.push(k);
                    }
                } else if let Some(k) = executing.pop() {
                    let outcome = [StandbyOutcome::Success, StandbyOutcome::Failed][o as usize];
                    p.both(|h| h.e.report_standby(k, outcome, now).unwrap());
                }
            }
            Op::Lifecycle { inst, running } => {
                p.both(|h| {
                    let _ = h.e.update(inst, spec(inst, running), now);
                });
            }
        }
        // Requests, answered alike from the kernel's table.
        for _ in 0..3 {
            let (ra, rb) = (p.full.requests(), p.filtered.requests());
            prop_assert_eq!(&ra, &rb, "requests");
            if ra.is_empty() {
                break;
            }
            for r in ra {
                let flows: Vec<Flow> = table
                    .iter()
                    .map(|((inst, port), e)| mk(*inst, *port, e, true))
                    .collect();
                let scope = match r {
                    ObserverRequest::Resync(s) => s,
                    ObserverRequest::Confirm(k) => ResyncScope::Instances(vec![k]),
                    ObserverRequest::Lookup(asked) => {
                        // An exact-tuple lookup finds the table's entry for the tuple.
                        p.both(|h| {
                            let id = h.e.begin_lookup(&asked, now);
                            for a in &asked {
                                let found = flows
                                    .iter()
                                    .find(|f| f.orig == a.orig && f.protocol == a.protocol);
                                let answer = found.map_or(LookupAnswer::Gone, LookupAnswer::Found);
                                h.e.lookup_answer(id, a, answer).unwrap();
                            }
                            h.e.finish_lookup(id, now).unwrap();
                        });
                        continue;
                    }
                };
                p.both(|h| {
                    let id = h.e.begin_resync(scope.clone(), now);
                    for f in &flows {
                        h.e.resync_flow(id, f).unwrap();
                    }
                    h.e.finish_resync(id, now).unwrap();
                });
            }
        }
        let da = split(p.full.drain(), &mut stores.0);
        let db = split(p.filtered.drain(), &mut stores.1);
        prop_assert_eq!(&da, &db, "decisions at +{} ms", now - T0);
        prop_assert_eq!(&stores.0, &stores.1, "persisted at +{} ms", now - T0);
        for d in &da {
            if let Decision::Standby { key } = d {
                emitted.push(*key);
            }
        }
        for i in 0..INSTANCES {
            let (mut a, mut b) = (p.full.st(i, now), p.filtered.st(i, now));
            prop_assert!(b.last_inbound_activity_at <= a.last_inbound_activity_at);
            a.last_inbound_activity_at = None;
            b.last_inbound_activity_at = None;
            prop_assert_eq!(a, b, "status of {} at +{} ms", i, now - T0);
        }
    }
    Ok(p.dropped)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_state_filter_changes_no_decision(ops in proptest::collection::vec(op(), 0..120)) {
        run(ops)?;
    }
}

/// The generator reaches the states the filter drops, and the property holds on a
/// long scripted run through all of them.
#[test]
fn the_filtered_model_drops_events() {
    let mut ops = Vec::new();
    for round in 0..40u8 {
        for port in 0..PORTS {
            ops.push(Op::Packet {
                inst: u64::from(round % 2),
                port,
                pick: round.wrapping_mul(7).wrapping_add(port as u8),
            });
        }
        ops.push(Op::Advance(700));
    }
    ops.push(Op::Advance(3 * TIMEOUT));
    let dropped = run(ops).expect("identical decisions");
    assert!(dropped >= 20, "{dropped} events dropped");
}

/// The filter's blind spot: a CLOSE entry that never reached ESTABLISHED (picked up,
/// then reset before any answer) reopened through the ignored SYN goes to SYN_RECV
/// unASSURED, and that UPDATE is dropped. The engine behind the filter does not count
/// the connection; the confirmation dump before the standby finds it, so no Standby is
/// decided while it is open.
#[test]
fn a_reopened_never_assured_close_entry_is_left_to_the_confirmation() {
    let mut h = H::with(EngineConfig {
        confirm_before_standby: true,
        confirm_lead_ms: SEC,
        ..EngineConfig::default()
    });
    h.reg(1, spec_with(addr(0), policy(TIMEOUT)), T0);
    let mut e = Entry {
        state: TcpState::ESTABLISHED,
        assured: false,
        id: 7,
    };
    h.new_flow(mk(0, 1, &e, true), T0);
    e.state = TcpState::CLOSE;
    h.update_flow(mk(0, 1, &e, true), T0 + 10);
    e.state = TcpState::SYN_RECV;
    let reopened = mk(0, 1, &e, true);
    let msg = build_flow_message(&reopened, wire::IPCTNL_MSG_CT_NEW, 0);
    assert_eq!(bpf::interpret(&bpf::state_filter(), &msg), Some(bpf::DROP));
    assert_eq!(h.st(1, T0 + 20).active_inbound, 0, "not seen");
    // At the confirmation, the kernel's table holds the live entry.
    e.state = TcpState::ESTABLISHED;
    e.assured = true;
    let now = T0 + 10 + TIMEOUT;
    h.e.tick(now - SEC);
    let confirm = h.requests();
    assert_eq!(confirm, vec![ObserverRequest::Confirm(1)]);
    let id = h.e.begin_resync(ResyncScope::Instances(vec![1]), now - SEC);
    h.e.resync_flow(id, &mk(0, 1, &e, true)).unwrap();
    h.e.finish_resync(id, now - SEC).unwrap();
    h.e.tick(now);
    assert!(h.standbys().is_empty());
    assert_eq!(h.st(1, now).active_inbound, 1);
}
