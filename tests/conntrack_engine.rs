//! The observer driving the engine against the real kernel (root): loss answered by one
//! coalesced resync, and flows from before the observer reconciled by dumps.

mod conntrack_support;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use autostandby::conntrack::{EventSocket, QuerySocket};
use autostandby::engine::{Engine, EngineConfig, ObserverRequest, Reason, ResyncScope, UnixMillis};
use conntrack_support::*;

const KEY: u64 = 1;

struct Clock(Instant);

impl Clock {
    fn now(&self) -> UnixMillis {
        1_780_000_000_000 + self.0.elapsed().as_millis() as u64
    }
}

fn engine_with_guest(clock: &Clock) -> Engine {
    let mut e = Engine::new(EngineConfig::default());
    e.register(KEY, running_instance(ip(SERVER), 600_000), clock.now())
        .unwrap();
    e
}

/// Runs one resync of `scope` the way the controller does: begin, filtered dump, finish.
fn resync(e: &mut Engine, q: &mut QuerySocket, scope: ResyncScope, clock: &Clock) {
    let id = e.begin_resync(scope.clone(), clock.now());
    let addrs = e.scope_addresses(&scope);
    q.dump_addresses(&addrs, &mut |f| e.resync_flow(id, f).unwrap())
        .unwrap();
    e.finish_resync(id, clock.now()).unwrap();
}

/// Client ports of the live flows the engine holds for the guest.
fn engine_live_ports(e: &Engine, clock: &Clock) -> BTreeSet<u16> {
    let mut out = Vec::new();
    e.explain(KEY, clock.now(), &mut out).unwrap();
    out.iter().map(|k| k.orig.src_port).collect()
}

/// Client ports of the live (not TIME_WAIT/CLOSE) TCP entries to the guest, per `conntrack -L`.
fn kernel_live_ports(pair: &Pair) -> BTreeSet<u16> {
    pair.conntrack_list_b()
        .iter()
        .filter(|l| l.starts_with("tcp") && l.contains(&format!(" dst={SERVER} ")))
        .filter(|l| !l.contains(" TIME_WAIT ") && !l.contains(" CLOSE "))
        .map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("sport="))
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

#[test]
fn a_reader_stall_is_answered_by_one_resync_and_the_engine_then_equals_the_kernel() {
    let pair = Pair::new();
    let clock = Clock(Instant::now());
    let mut e = engine_with_guest(&clock);
    let mut cfg = pair.config();
    cfg.rcvbuf_bytes = 64 * 1024;
    let mut ev = EventSocket::open(&cfg).unwrap();
    let mut q = QuerySocket::open(&pair.config()).unwrap();
    let sa = SocketAddr::new(ip(SERVER), 80);
    let l = pair.in_b(move || TcpListener::bind(sa));

    // The reader stalls while 150 connections come and (two thirds) go.
    let mut open = Vec::new();
    for i in 0..150 {
        let c = pair.in_a(move || TcpStream::connect_timeout(&sa, Duration::from_secs(2)));
        let (s, _) = l.accept().unwrap();
        if i % 3 == 0 {
            open.push((c, s));
        }
    }
    std::thread::sleep(Duration::from_millis(200));

    // Draining: every batch that lost something reports it to the engine.
    let mut loss_reports = 0;
    loop {
        let b = ev
            .recv_batch(&mut |event| e.on_flow_event(event, clock.now()))
            .unwrap();
        if b.lost() {
            loss_reports += 1;
            e.events_lost(ResyncScope::All, clock.now());
        }
        if b.messages == 0 && !b.more {
            break;
        }
    }
    assert!(loss_reports >= 1, "the overflow was detected");
    // Pending (or kept awake by the few flows it did see): never ready for standby.
    let st = e.status(KEY, clock.now()).unwrap();
    assert!(
        matches!(
            st.reason,
            Reason::ResyncPending | Reason::ActiveInboundConnections
        ),
        "{st:?}"
    );
    let seen_before_resync = st.active_inbound as usize;

    // However many loss reports, exactly one resync is asked for.
    let mut reqs = Vec::new();
    e.drain_requests(&mut reqs);
    let resyncs: Vec<&ObserverRequest> = reqs
        .iter()
        .filter(|r| matches!(r, ObserverRequest::Resync(_)))
        .collect();
    assert_eq!(resyncs.len(), 1, "{reqs:?}");
    let ObserverRequest::Resync(scope) = resyncs[0].clone() else {
        unreachable!()
    };
    resync(&mut e, &mut q, scope, &clock);

    let st = e.status(KEY, clock.now()).unwrap();
    assert_ne!(st.reason, Reason::ResyncPending, "{st:?}");
    let kernel = kernel_live_ports(&pair);
    assert_eq!(kernel.len(), open.len());
    assert_eq!(engine_live_ports(&e, &clock), kernel);
    assert_eq!(st.active_inbound as usize, open.len());
    assert!(
        seen_before_resync < open.len(),
        "the loss hid live flows until the resync"
    );
    let mut more = Vec::new();
    e.drain_requests(&mut more);
    assert!(
        !more.iter().any(|r| matches!(r, ObserverRequest::Resync(_))),
        "{more:?}"
    );
}

#[test]
fn a_flow_from_before_the_observer_is_found_by_the_dump_and_reconciled_away_after_it_closes() {
    let pair = Pair::new();
    let clock = Clock(Instant::now());
    let sa = SocketAddr::new(ip(SERVER), 80);
    let l = pair.in_b(move || TcpListener::bind(sa));
    let c = pair.in_a(move || TcpStream::connect_timeout(&sa, Duration::from_secs(2)));
    let (s, _) = l.accept().unwrap();
    let port = c.local_addr().unwrap().port();

    // The observer starts: subscribe first, then the initial dump.
    let mut e = engine_with_guest(&clock);
    let mut ev = EventSocket::open(&pair.config()).unwrap();
    assert_eq!(ev.events_sysctl(), 2);
    let mut q = QuerySocket::open(&pair.config()).unwrap();
    resync(&mut e, &mut q, ResyncScope::All, &clock);
    assert_eq!(engine_live_ports(&e, &clock), BTreeSet::from([port]));
    assert_eq!(e.status(KEY, clock.now()).unwrap().active_inbound, 1);

    // It closes. With nf_conntrack_events=2 and no listener when it was created, it may
    // send no event at all; the periodic targeted reconcile must clear it regardless.
    drop(c);
    drop(s);
    // Reconcile until the close shows (the FIN exchange may lag on a loaded machine).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        ev.recv_batch(&mut |event| e.on_flow_event(event, clock.now()))
            .unwrap();
        resync(&mut e, &mut q, ResyncScope::Instances(vec![KEY]), &clock);
        if engine_live_ports(&e, &clock).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed flow is still live in the engine"
        );
    }
    let st = e.status(KEY, clock.now()).unwrap();
    assert_eq!(st.active_inbound, 0, "{st:?}");
    assert!(
        st.idle_since.is_some(),
        "the idle countdown started: {st:?}"
    );
}
