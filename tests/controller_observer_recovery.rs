//! A kernel-mode controller whose conntrack event socket fails and comes back, in network
//! namespaces this test creates and always removes. Needs root: fails loudly without it.
//!
//! The failure is injected through `Controller::fail_event_socket_for_test`: the event
//! thread takes the very error path a failed `recv` takes (its socket is closed, the
//! engine is told the events are down) and its reopen attempts fail until the given
//! instant, after which a new socket is really opened. Events sent while no socket exists
//! are genuinely lost, so the resync after the reopen is what must find them.

mod conntrack_support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use autostandby::controller::{Controller, ControllerConfig};
use autostandby::engine::{Decision, Reason, Status};
use conntrack_support::*;

const KEY: u64 = 7;
const IDLE_MS: u64 = 2_000;
const DOWN_FOR: Duration = Duration::from_secs(3);

fn fail_with_logs(ctl: &Controller, what: &str) -> ! {
    let mut logs = Vec::new();
    ctl.drain_logs(&mut logs, 100);
    panic!(
        "{what}: status {:?}, stats {:?}, logs {logs:#?}",
        ctl.status(KEY),
        ctl.stats()
    );
}

/// Polls decisions until `done` holds, failing on timeout or on any `Standby`.
fn wait_until(ctl: &Controller, timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        if done() {
            return;
        }
        ctl.poll_decisions(&mut out, 16, Duration::from_millis(20))
            .unwrap();
        if out.iter().any(|d| matches!(d, Decision::Standby { .. })) {
            fail_with_logs(
                ctl,
                &format!("a Standby was decided ({out:?}) while {what}"),
            );
        }
        out.clear();
        if Instant::now() >= until {
            fail_with_logs(ctl, &format!("timed out waiting for {what}"));
        }
    }
}

#[test]
fn a_failed_event_socket_is_reported_reopened_and_followed_by_a_resync() {
    let pair = Pair::new();
    let sa = SocketAddr::new(ip(SERVER), 80);
    let listener = pair.in_b(move || TcpListener::bind(sa));

    let mut cfg = ControllerConfig::kernel();
    cfg.netns = Some(pair.b_path());
    // No periodic reconcile during the test: only the resync after the reopen may find
    // the connection opened while the socket was down.
    cfg.resync_interval_ms = 600_000;
    let ctl = Controller::new(cfg).expect("kernel controller");
    ctl.register(KEY, running_instance(ip(SERVER), IDLE_MS))
        .unwrap();

    // The first resync finds nothing: the idle countdown runs.
    wait_until(&ctl, Duration::from_secs(5), "the first resync", || {
        ctl.status(KEY).unwrap().status == Status::IdleCountdown
    });
    let errors_before = ctl.stats().observer_errors;
    let resyncs_before = ctl.stats().engine.resyncs;
    let failed_at = Instant::now();
    ctl.fail_event_socket_for_test(DOWN_FOR).unwrap();

    // Down: the eligible instance reports the observer error, and it is counted.
    wait_until(&ctl, Duration::from_secs(1), "the observer error", || {
        let st = ctl.status(KEY).unwrap();
        st.status == Status::Error && st.reason == Reason::ObserverError
    });
    assert!(
        ctl.stats().observer_errors > errors_before,
        "observer errors not counted: {:?}",
        ctl.stats()
    );

    // A connection opened while no event socket exists: its events are lost.
    let client = pair.in_a(move || TcpStream::connect_timeout(&sa, Duration::from_secs(2)));
    let (_server, _) = listener.accept().unwrap();

    // Past the idle timeout, still down: no Standby (wait_until fails on one).
    wait_until(
        &ctl,
        Duration::from_millis(IDLE_MS + 500),
        "past the idle timeout while down",
        || {
            let st = ctl.status(KEY).unwrap();
            assert_eq!(
                (st.status, st.reason),
                (Status::Error, Reason::ObserverError),
                "the socket came back before {DOWN_FOR:?}: {st:?}"
            );
            failed_at.elapsed() >= Duration::from_millis(IDLE_MS + 300)
        },
    );

    // Reopened after the backoff; until the resync finishes the instance is either
    // resync-pending or already at its true status, never idle.
    let mut saw_pending = false;
    wait_until(
        &ctl,
        Duration::from_secs(10),
        "the reopen and resync",
        || {
            let st = ctl.status(KEY).unwrap();
            match (st.status, st.reason) {
                (Status::Error, Reason::ObserverError) => false,
                (_, Reason::ResyncPending) => {
                    saw_pending = true;
                    false
                }
                (Status::Active, Reason::ActiveInboundConnections) => {
                    assert_eq!(st.active_inbound, 1, "{st:?}");
                    true
                }
                other => fail_with_logs(&ctl, &format!("unexpected status {other:?}")),
            }
        },
    );
    assert!(
        failed_at.elapsed() >= DOWN_FOR,
        "reopened before the injected failure ended"
    );
    // The connection shows as soon as its dump chunk is applied; the resync itself
    // finishes right after.
    wait_until(
        &ctl,
        Duration::from_secs(5),
        "a resync after the reopen",
        || ctl.stats().engine.resyncs > resyncs_before,
    );
    let mut logs = Vec::new();
    ctl.drain_logs(&mut logs, 1_000);
    let text = format!("{logs:?}");
    assert!(
        text.contains("subscription restored"),
        "no reopen logged (pending seen: {saw_pending}): {logs:#?}"
    );
    drop(client);
}
