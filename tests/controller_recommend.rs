//! The idle-gap history of a kernel-mode controller on scripted traffic: gaps long
//! enough for a candidate timeout count as standbys and wakes, short gaps and
//! overlapping connections do not, and the history survives an update and goes with
//! unregister. In network namespaces this test creates and always removes. Needs root:
//! fails loudly without it.
//!
//! Margins: the long gaps are 5 s and the candidate 3 s; the short gap is the time to
//! notice a close and open the next connection (milliseconds), so only a stall of
//! seconds could move a gap across the candidate.

mod conntrack_support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use autostandby::controller::{Controller, ControllerConfig, ControllerError};
use autostandby::engine::{EngineError, RecommendQuery};
use conntrack_support::*;

const KEY: u64 = 1;
/// Long enough that no standby is decided during the test.
const IDLE_MS: u64 = 3_600_000;
const LONG_GAP: Duration = Duration::from_secs(5);
const CANDIDATE_MS: u64 = 3_000;
const NEVER_MS: u64 = 60_000;

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < until, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn live(ctl: &Controller) -> u32 {
    ctl.status(KEY).unwrap().active_inbound
}

struct Conn {
    client: TcpStream,
    server: TcpStream,
}

fn connect(pair: &Pair, listener: &TcpListener) -> Conn {
    let sa = SocketAddr::new(ip(SERVER), 80);
    let mut client = pair.in_a(move || TcpStream::connect_timeout(&sa, Duration::from_secs(5)));
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    server.read_exact(&mut b).unwrap();
    Conn { client, server }
}

fn close(c: Conn) {
    c.client.shutdown(Shutdown::Both).unwrap();
    drop(c.client);
    drop(c.server);
}

fn query() -> RecommendQuery {
    RecommendQuery {
        candidates_ms: vec![NEVER_MS, CANDIDATE_MS],
        minutes_per_wake: 0,
    }
}

#[test]
fn gaps_of_scripted_traffic_become_standbys_and_wakes() {
    let pair = Pair::new();
    let mut cfg = ControllerConfig::kernel();
    cfg.netns = Some(pair.b_path());
    let ctl = Controller::new(cfg).expect("kernel controller");
    let sa = SocketAddr::new(ip(SERVER), 80);
    let listener = pair.in_b(move || TcpListener::bind(sa));
    ctl.register(KEY, running_instance(ip(SERVER), IDLE_MS))
        .unwrap();

    // Nothing observed before the first dump of the address has been applied.
    let before = ctl.recommend(KEY, &query()).unwrap();
    if ctl.resync_pending(KEY).unwrap() {
        assert_eq!(before.observed_since, None, "{before:?}");
    }
    wait_until("first dump applied", || !ctl.resync_pending(KEY).unwrap());
    let first = ctl.recommend(KEY, &query()).unwrap();
    assert!(first.observed_since.is_some(), "{first:?}");

    // Gap 1: from the first dump, at least LONG_GAP.
    std::thread::sleep(LONG_GAP);
    let a = connect(&pair, &listener);
    wait_until("first connection seen", || live(&ctl) == 1);
    // Overlapping connections: no gap between them.
    let b = connect(&pair, &listener);
    wait_until("second connection seen", || live(&ctl) == 2);
    close(a);
    wait_until("first connection closed", || live(&ctl) == 1);
    close(b);
    wait_until("second connection closed", || live(&ctl) == 0);
    // Gap 2: as short as noticing the close and connecting again.
    let c = connect(&pair, &listener);
    wait_until("third connection seen", || live(&ctl) == 1);
    close(c);
    wait_until("third connection closed", || live(&ctl) == 0);
    // Gap 3: LONG_GAP; then a connection stays open, so no gap is open when asked.
    std::thread::sleep(LONG_GAP);
    let d = connect(&pair, &listener);
    wait_until("fourth connection seen", || live(&ctl) == 1);

    let r = ctl.recommend(KEY, &query()).unwrap();
    assert_eq!(r.observed_since, first.observed_since);
    assert_eq!(r.open_gap_ms, None, "{r:?}");
    // Gap 2 is recorded unless the close and the connect were applied at the same
    // instant (then it is no gap at all).
    assert!((2..=3).contains(&r.gaps), "{r:?}");
    assert!(r.observed_ms >= 2 * LONG_GAP.as_millis() as u64, "{r:?}");
    let two = r.outcomes[0];
    assert_eq!(two.timeout_ms, CANDIDATE_MS);
    assert_eq!((two.standbys, two.wakes, two.exact), (2, 2, true), "{r:?}");
    // Each long gap spends at least 5 s - 3 s in Standby.
    assert!(
        two.standby_ms >= 2 * (LONG_GAP.as_millis() as u64 - CANDIDATE_MS),
        "{r:?}"
    );
    assert!(
        two.standby_fraction > 0.0 && two.standby_fraction < 1.0,
        "{r:?}"
    );
    let never = r.outcomes[1];
    assert_eq!(
        (never.timeout_ms, never.standbys, never.wakes),
        (NEVER_MS, 0, 0)
    );
    // A few seconds observed allow no wake at one per 30 minutes: the candidate without
    // one.
    assert_eq!(r.recommended_timeout_ms, Some(NEVER_MS));

    // A policy update keeps the history.
    ctl.update(KEY, running_instance(ip(SERVER), IDLE_MS / 2))
        .unwrap();
    let after = ctl.recommend(KEY, &query()).unwrap();
    assert_eq!(
        (after.observed_since, after.gaps),
        (r.observed_since, r.gaps)
    );
    assert_eq!(after.outcomes[0].wakes, 2);

    // Unregistered: gone. Registered again: a new observation, from its first dump.
    ctl.unregister(KEY).unwrap();
    assert_eq!(
        ctl.recommend(KEY, &query()).unwrap_err(),
        ControllerError::Engine(EngineError::NotFound(KEY))
    );
    ctl.register(KEY, running_instance(ip(SERVER), IDLE_MS))
        .unwrap();
    wait_until("first dump after re-registration", || {
        !ctl.resync_pending(KEY).unwrap()
    });
    let fresh = ctl.recommend(KEY, &query()).unwrap();
    assert_eq!(fresh.gaps, 0, "{fresh:?}");
    assert!(fresh.observed_since > r.observed_since, "{fresh:?}");
    // The connection still open is found by that dump: nothing is idle.
    assert_eq!(fresh.open_gap_ms, None, "{fresh:?}");
    close(d);
    wait_until("last connection closed", || live(&ctl) == 0);
    assert!(ctl.recommend(KEY, &query()).unwrap().open_gap_ms.is_some());
}
