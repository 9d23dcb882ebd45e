//! The periodic safety check of a kernel-mode controller looks every tracked flow up by
//! its exact tuple instead of walking the conntrack table: a live flow survives it, and
//! a flow whose entry ended without any event (one from before the controller listened,
//! which with `nf_conntrack_events=2` never sends one) is dropped by it, with no walk of
//! the table. In network namespaces this test creates and always removes. Needs root:
//! fails loudly without it.

mod conntrack_support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use autostandby::controller::{Controller, ControllerConfig, ControllerStats};
use autostandby::engine::Status;
use conntrack_support::*;

/// Short, so that the test sees several checks; the checks cost a lookup each.
const INTERVAL_MS: u64 = 500;
/// Wide margins: the suite also runs under ThreadSanitizer on a busy machine.
const PATIENCE: Duration = Duration::from_secs(30);

/// An established connection from namespace A to `SERVER:80`, both ends kept open.
struct Conn {
    _client: TcpStream,
    _server: TcpStream,
    client_port: u16,
}

fn connect(pair: &Pair) -> Conn {
    let sa = SocketAddr::new(ip(SERVER), 80);
    let listener = pair.in_b(move || TcpListener::bind(sa));
    let client = pair.in_a(move || TcpStream::connect_timeout(&sa, Duration::from_secs(5)));
    // Accepted once the handshake's last ACK reached B: conntrack has seen it.
    let (server, _) = listener.accept().unwrap();
    Conn {
        client_port: client.local_addr().unwrap().port(),
        _client: client,
        _server: server,
    }
}

fn controller(pair: &Pair) -> Controller {
    let mut cfg = ControllerConfig::kernel();
    cfg.netns = Some(pair.b_path());
    cfg.resync_interval_ms = INTERVAL_MS;
    let ctl = Controller::new(cfg).expect("kernel controller");
    ctl.register(1, running_instance(ip(SERVER), 600_000))
        .unwrap();
    ctl
}

fn wait(ctl: &Controller, what: &str, ok: &dyn Fn(&ControllerStats) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if ok(&ctl.stats()) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < PATIENCE,
            "{what} not reached within {PATIENCE:?}: {:?} {:?}",
            ctl.status(1),
            ctl.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the instance's first resync has been applied and shows one live flow.
/// After it no walk is due: the walks of the start-up and of the registration have
/// both been counted.
fn wait_first_resync(ctl: &Controller) {
    wait(ctl, "the first resync", &|_| {
        !ctl.resync_pending(1).unwrap() && ctl.status(1).unwrap().active_inbound == 1
    });
}

/// Waits for at least `n` more flow lookups than `since` and checks the flow is still
/// live, with no walk of the table meanwhile.
fn survives_checks(ctl: &Controller, since: &ControllerStats, n: u64) -> ControllerStats {
    wait(ctl, "periodic lookups", &|s| {
        s.flow_lookups >= since.flow_lookups + n
    });
    let now = ctl.stats();
    let st = ctl.status(1).unwrap();
    assert_eq!(
        (st.status, st.active_inbound),
        (Status::Active, 1),
        "{st:?}"
    );
    assert_eq!(now.dump_walks, since.dump_walks, "a walk ran: {now:?}");
    assert!(now.periodic_checks > since.periodic_checks, "{now:?}");
    assert_eq!(now.engine.lookup_gone, since.engine.lookup_gone, "{now:?}");
    now
}

#[test]
fn a_live_flow_survives_the_periodic_checks_without_a_walk() {
    let pair = Pair::new();
    let ctl = controller(&pair);
    wait(&ctl, "the first resync", &|_| {
        !ctl.resync_pending(1).unwrap()
    });
    // Created while the controller listens: its NEW makes it live.
    let _conn = connect(&pair);
    wait(&ctl, "the flow's NEW", &|_| {
        ctl.status(1).unwrap().active_inbound == 1
    });
    let before = ctl.stats();
    // Three lookups of the one flow: at least two whole checks after `before`.
    let after = survives_checks(&ctl, &before, 3);
    eprintln!(
        "{} periodic checks, {} flow lookups, {} walks",
        after.periodic_checks, after.flow_lookups, after.dump_walks
    );
}

#[test]
fn a_flow_ended_without_events_is_dropped_by_the_periodic_check_without_a_walk() {
    let pair = Pair::new();
    // An entry created with events off in its namespace carries no event cache, so it
    // never sends an event, its DESTROY included, whatever listens later. That is what
    // `nf_conntrack_events=2` does to an entry created before any listener existed, but
    // does not depend on other ctnetlink listeners on the host (the flag is global).
    pair.sysctl_b("net.netfilter.nf_conntrack_events", "0");
    let conn = connect(&pair);
    pair.sysctl_b("net.netfilter.nf_conntrack_events", "2");

    let ctl = controller(&pair);
    // Found by the start-up dump only.
    wait_first_resync(&ctl);
    let start = ctl.stats();
    assert_eq!(start.events_read, 0, "the entry sent an event: {start:?}");
    let before = survives_checks(&ctl, &start, 2);

    // The entry goes away without an event: only a check can tell.
    let out = Command::new("ip")
        .args(["netns", "exec", &pair.b, "conntrack", "-D", "-p", "tcp"])
        .args(["--orig-src", CLIENT, "--orig-dst", SERVER])
        .args(["--sport", &conn.client_port.to_string(), "--dport", "80"])
        .output()
        .expect("conntrack -D");
    assert!(
        out.status.success(),
        "conntrack -D failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let took = wait(&ctl, "the flow's end", &|_| {
        ctl.status(1).unwrap().active_inbound == 0
    });
    let after = ctl.stats();
    let st = ctl.status(1).unwrap();
    assert_eq!(st.status, Status::IdleCountdown, "{st:?}");
    // Ended by a lookup that found the entry gone, and not by an event or a walk.
    assert_eq!(
        after.engine.lookup_gone,
        before.engine.lookup_gone + 1,
        "{after:?}"
    );
    assert!(after.flow_lookups > before.flow_lookups, "{after:?}");
    assert_eq!(after.dump_walks, before.dump_walks, "a walk ran: {after:?}");
    assert_eq!(after.events_read, 0, "an event came: {after:?}");
    eprintln!(
        "the deleted entry was dropped {took:?} after its deletion (interval {INTERVAL_MS} ms)"
    );
}
