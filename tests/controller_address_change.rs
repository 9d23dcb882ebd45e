//! A kernel-mode controller under a steady load of flow events gets a new instance whose
//! address already has an open connection, in network namespaces this test creates and
//! always removes. Needs root: fails loudly without it.
//!
//! Until the instance is registered the kernel event filter drops every event of its
//! address, so only the resync that follows the filter change can find that connection;
//! a connection opened right after the registration must be seen too (by its events if
//! the new filter is in place, else by that resync), and so must the end of both.

mod conntrack_support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use autostandby::controller::{Controller, ControllerConfig};
use autostandby::engine::{Decision, Reason, Status, StatusSnapshot};
use conntrack_support::*;

const LOADED: u64 = 1;
const NEW: u64 = 2;
/// The new instance's idle timeout: short, so a missed connection shows as a Standby.
const IDLE_MS: u64 = 1_000;
/// Short connections per second to the loaded instance.
const LOAD_CONNS_PER_S: u32 = 500;

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Polls decisions until `done` holds for the new instance's status, failing on timeout
/// or, while `no_standby`, on a `Standby` for it.
fn wait_for(
    ctl: &Controller,
    timeout: Duration,
    what: &str,
    no_standby: bool,
    done: impl Fn(&StatusSnapshot) -> bool,
) {
    let until = Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        let st = ctl.status(NEW).unwrap();
        if done(&st) {
            return;
        }
        out.clear();
        ctl.poll_decisions(&mut out, 64, Duration::from_millis(20))
            .unwrap();
        let standby = out
            .iter()
            .any(|d| matches!(d, Decision::Standby { key, .. } if *key == NEW));
        assert!(
            !(no_standby && standby),
            "Standby decided while waiting for {what}: {st:?}, stats {:?}",
            ctl.stats()
        );
        assert!(
            Instant::now() < until,
            "timed out waiting for {what}: {st:?}, stats {:?}",
            ctl.stats()
        );
    }
}

#[test]
fn a_new_address_under_event_load_gets_its_filter_and_a_resync_that_finds_its_flows() {
    let pair = Pair::new();
    let loaded = SocketAddr::new(ip(SERVER), 80);
    let fresh = SocketAddr::new(ip(OTHER), 80);
    let load_listener = pair.in_b(move || TcpListener::bind(loaded));
    let listener = pair.in_b(move || TcpListener::bind(fresh));

    let mut cfg = ControllerConfig::kernel();
    cfg.netns = Some(pair.b_path());
    // No periodic reconcile during the test: only the resync after the address change
    // may find the connection that predates it.
    cfg.resync_interval_ms = 600_000;
    let ctl = Controller::new(cfg).expect("kernel controller");
    ctl.register(LOADED, running_instance(ip(SERVER), 600_000))
        .unwrap();

    // Opened before its address is registered: its events are filtered out.
    let before = pair.in_a(move || TcpStream::connect_timeout(&fresh, Duration::from_secs(2)));
    let (before_server, _) = listener.accept().unwrap();

    load_listener.set_nonblocking(true).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        // Ends the load also when an assertion fails, or the scope would wait forever.
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                match load_listener.accept() {
                    Ok((c, _)) => drop(c),
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        s.spawn(|| {
            pair.in_a(|| {
                let every = Duration::from_secs(1) / LOAD_CONNS_PER_S;
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    next += every;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    drop(TcpStream::connect_timeout(&loaded, Duration::from_secs(1)));
                }
                Ok(())
            })
        });
        std::thread::sleep(Duration::from_millis(500));
        let read_before = ctl.stats().events_read;

        ctl.register(NEW, running_instance(ip(OTHER), IDLE_MS))
            .unwrap();
        // Opened as soon as the registration returns, while the filter changes and the
        // resync begins.
        let after = pair.in_a(move || TcpStream::connect_timeout(&fresh, Duration::from_secs(2)));
        let (after_server, _) = listener.accept().unwrap();

        wait_for(
            &ctl,
            Duration::from_secs(5),
            "both connections, and the end of the resync that found the first",
            true,
            // The dump's entries are applied before its end, and a status may come
            // in between.
            |st| st.active_inbound == 2 && st.reason != Reason::ResyncPending,
        );
        // Held for longer than the idle timeout: it stays active.
        let held_until = Instant::now() + Duration::from_millis(3 * IDLE_MS);
        wait_for(
            &ctl,
            Duration::from_millis(4 * IDLE_MS),
            "the connections to be held past the idle timeout",
            true,
            |st| {
                assert_eq!(
                    (st.status, st.reason, st.active_inbound),
                    (Status::Active, Reason::ActiveInboundConnections, 2),
                    "{st:?}"
                );
                Instant::now() >= held_until
            },
        );
        let stats = ctl.stats();
        assert!(
            stats.events_read > read_before && stats.event_wakeups > 0,
            "the loop read no events under load: {stats:?}"
        );
        assert_eq!(stats.events_lost, 0, "{stats:?}");

        // Their ends come as events through the new filter.
        drop((before, before_server, after, after_server));
        wait_for(
            &ctl,
            Duration::from_secs(5),
            "the connections to end",
            false,
            |st| st.active_inbound == 0,
        );
    });
}
