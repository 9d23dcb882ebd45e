//! The event counters of a kernel-mode controller: flow events read past the kernel
//! filter and the wake-ups that read them. In network namespaces this test creates and
//! always removes. Needs root: fails loudly without it.

mod conntrack_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use autostandby::controller::{Controller, ControllerConfig};
use autostandby::engine::Status;
use conntrack_support::*;

/// Long enough that no countdown ends during the test.
const IDLE_MS: u64 = 600_000;
/// Connections made to the registered address.
const CONNS: u64 = 5;

#[test]
fn events_read_and_wakeups_count_what_the_engine_loop_reads() {
    let pair = Pair::new();
    let mut cfg = ControllerConfig::kernel();
    cfg.netns = Some(pair.b_path());
    cfg.resync_interval_ms = 600_000;
    let ctl = Controller::new(cfg).expect("kernel controller");
    ctl.register(1, running_instance(ip(SERVER), IDLE_MS))
        .unwrap();
    // The resync that follows the new address filter has run once the instance counts
    // down: the filter is in place from then on.
    let until = Instant::now() + Duration::from_secs(10);
    while ctl.status(1).unwrap().status != Status::IdleCountdown {
        assert!(Instant::now() < until, "{:?}", ctl.status(1));
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = ctl.stats();

    // Traffic to the unregistered address first: the kernel filter drops its events, so
    // they must not be counted.
    for addr in [OTHER, SERVER] {
        let sa = SocketAddr::new(ip(addr), 80);
        let listener = pair.in_b(move || TcpListener::bind(sa));
        for _ in 0..CONNS {
            let mut c = pair.in_a(move || TcpStream::connect_timeout(&sa, Duration::from_secs(2)));
            let (mut s, _) = listener.accept().unwrap();
            c.write_all(b"x").unwrap();
            let mut byte = [0u8; 1];
            s.read_exact(&mut byte).unwrap();
        }
    }

    // At least the NEW of each connection to the registered address, and everything
    // read applied (the counter moves before the engine thread applies the batch).
    let until = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let s = ctl.stats();
        let applied = s.engine.flow_events - before.engine.flow_events;
        if applied >= CONNS && applied == s.events_read - before.events_read {
            break s;
        }
        assert!(
            Instant::now() < until,
            "events not applied or not counted: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let read = after.events_read - before.events_read;
    let wakeups = after.event_wakeups - before.event_wakeups;
    assert!(read >= CONNS, "events_read {read}: {after:?}");
    assert_eq!(
        after.engine.flow_events_unmatched, 0,
        "the filter passed foreign events: {after:?}"
    );
    assert!(
        (1..=read).contains(&wakeups),
        "{wakeups} wake-ups for {read} events"
    );
}
