//! A kernel-mode controller started next to connections that already exist, with many
//! instances registered in a row, as a host does at start-up. In network namespaces this
//! test creates and always removes. Needs root: fails loudly without it.

mod conntrack_support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use autostandby::controller::{Controller, ControllerConfig};
use autostandby::engine::{Reason, Status};
use conntrack_support::*;

/// Instances registered besides the one that serves the connection.
const OTHERS: u64 = 199;
/// Long enough that no countdown ends during the test.
const IDLE_MS: u64 = 600_000;

#[test]
fn registrations_in_a_burst_share_a_resync_that_finds_existing_connections() {
    let pair = Pair::new();
    let sa = SocketAddr::new(ip(SERVER), 80);
    let listener = pair.in_b(move || TcpListener::bind(sa));
    let _client = pair.in_a(move || TcpStream::connect_timeout(&sa, Duration::from_secs(2)));
    let (_server, _) = listener.accept().unwrap();

    let mut cfg = ControllerConfig::kernel();
    cfg.netns = Some(pair.b_path());
    cfg.resync_interval_ms = 600_000;
    let ctl = Controller::new(cfg).expect("kernel controller");
    let burst_started = Instant::now();
    ctl.register(1, running_instance(ip(SERVER), IDLE_MS))
        .unwrap();
    for key in 2..=OTHERS + 1 {
        let addr = IpAddr::V4(Ipv4Addr::from(0x0aea_0000 + key as u32));
        ctl.register(key, running_instance(addr, IDLE_MS)).unwrap();
    }
    let burst = burst_started.elapsed();

    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let st = ctl.status(1).unwrap();
        let others_settled = (2..=OTHERS + 1).all(|k| {
            let o = ctl.status(k).unwrap();
            (o.status, o.reason) == (Status::IdleCountdown, Reason::IdleTimeoutNotElapsed)
        });
        if st.status == Status::Active && others_settled {
            assert_eq!(st.reason, Reason::ActiveInboundConnections);
            assert_eq!(st.active_inbound, 1, "{st:?}");
            break;
        }
        assert!(
            Instant::now() < until,
            "not settled: instance 1 {st:?}, stats {:?}",
            ctl.stats()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Let any resync still queued run, then count: requests that came in one burst share
    // a dump (one at start and one for the burst, with slack for a slow machine), where
    // one per registration would be 200. A burst ends after BURST_MAX (50 ms) at most, so
    // one that took longer to register (a sanitizer build) may take one more per 50 ms.
    std::thread::sleep(Duration::from_millis(300));
    let resyncs = ctl.stats().engine.resyncs;
    let allowed = 3 + (burst.as_millis() / 50) as u64;
    assert!(
        (1..=allowed).contains(&resyncs),
        "{resyncs} resyncs for one burst of registrations that took {burst:?}"
    );
}
