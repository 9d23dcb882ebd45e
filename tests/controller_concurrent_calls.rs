//! A kernel-mode controller used from many host threads at once while its own threads
//! work: connections opening and closing (read by the engine loop), registrations
//! changing the address filter and asking for resyncs, confirmations before standbys
//! (dumped by the dump worker), a forced failure of the event socket and its recovery,
//! and a poller answering standbys. Besides what it asserts, it gives ThreadSanitizer
//! (make tsan) every path between the host-facing calls and the controller's threads to
//! watch. In network namespaces this test creates and always removes. Needs root: fails
//! loudly without it.

mod conntrack_support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use autostandby::controller::{Controller, ControllerConfig, ControllerError};
use autostandby::engine::{
    BeginStandby, Decision, EngineError, InstanceKey, Reason, StandbyOutcome, Status,
};
use conntrack_support::*;

/// The instance serving a connection held open throughout: never a standby.
const BUSY: InstanceKey = 1;
/// An instance nobody talks to: its standby must come, confirmed by a dump.
const IDLE: InstanceKey = 2;
const IDLE_MS: u64 = 300;
/// Host threads registering, querying and unregistering instances of their own.
const HOST_THREADS: u64 = 3;
/// How long the host threads and the traffic run.
const CHURN: Duration = Duration::from_millis(1_500);

/// The address of a host thread's instance (inside 10.234.0.0/16, never a real host).
fn churn_addr(thread: u64, round: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        10,
        234,
        thread as u8,
        (round % 250) as u8 + 1,
    ))
}

/// Answers a standby as a host would; a churned instance may be gone meanwhile.
fn answer_standby(ctl: &Controller, key: InstanceKey) {
    let gone = |e: &ControllerError| {
        matches!(
            e,
            ControllerError::Engine(
                EngineError::NotFound(_) | EngineError::NoStandbyOutstanding(_)
            )
        )
    };
    match ctl.begin_standby(key) {
        Ok(BeginStandby::Proceed) => match ctl.report_standby(key, StandbyOutcome::Success) {
            Ok(()) => {}
            Err(e) => assert!(gone(&e), "report_standby({key}): {e}"),
        },
        Ok(BeginStandby::Cancelled(_)) => {}
        Err(e) => assert!(gone(&e), "begin_standby({key}): {e}"),
    }
}

/// One host thread: instances registered, queried, held, updated and unregistered in a
/// sliding window of eight, so the address set keeps changing.
fn host_thread(ctl: &Controller, thread: u64, stop: &AtomicBool) {
    let key = |round: u64| 1_000 * (thread + 1) + round;
    let mut round = 0;
    while !stop.load(Ordering::Relaxed) {
        let k = key(round);
        ctl.register(k, running_instance(churn_addr(thread, round), 100))
            .unwrap_or_else(|e| panic!("register {k}: {e}"));
        let st = ctl.status(k).unwrap();
        assert!(st.configured && st.enabled, "{st:?}");
        ctl.hold(k).unwrap();
        ctl.update(k, running_instance(churn_addr(thread, round), 150))
            .unwrap();
        let mut kept = Vec::new();
        ctl.explain(k, &mut kept).unwrap();
        assert!(kept.is_empty(), "no traffic to {k}: {kept:?}");
        let _ = ctl.stats();
        let mut logs = Vec::new();
        ctl.drain_logs(&mut logs, 16);
        if round >= 8 {
            ctl.unregister(key(round - 8)).unwrap();
        }
        round += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    for r in round.saturating_sub(8)..round {
        ctl.unregister(key(r)).unwrap();
    }
}

#[test]
fn host_calls_from_many_threads_while_the_controller_threads_work() {
    let pair = Pair::new();
    let sa = SocketAddr::new(ip(SERVER), 80);
    let listener = pair.in_b(move || TcpListener::bind(sa));
    listener.set_nonblocking(true).unwrap();

    let mut cfg = ControllerConfig::kernel();
    cfg.netns = Some(pair.b_path());
    // Reconciles run during the churn too.
    cfg.resync_interval_ms = 250;
    let ctl = Controller::new(cfg).expect("kernel controller");
    ctl.register(BUSY, running_instance(ip(SERVER), 600_000))
        .unwrap();
    ctl.register(IDLE, running_instance(ip(OTHER), IDLE_MS))
        .unwrap();
    let _held = pair.in_a(move || TcpStream::connect_timeout(&sa, Duration::from_secs(2)));

    let stop = AtomicBool::new(false);
    let polling = AtomicBool::new(true);
    let idle_standbys = std::thread::scope(|s| {
        s.spawn(|| {
            let mut accepted = Vec::new();
            while polling.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((c, _)) => accepted.push(c),
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
                // Closed by the server after a while, so DESTROY events come too.
                if accepted.len() > 16 {
                    accepted.drain(..8);
                }
            }
        });
        s.spawn(|| {
            pair.in_a(|| {
                while !stop.load(Ordering::Relaxed) {
                    drop(TcpStream::connect_timeout(&sa, Duration::from_secs(1)));
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(())
            })
        });
        let poller = s.spawn(|| {
            let mut idle_standbys = 0;
            while polling.load(Ordering::Relaxed) {
                let mut out = Vec::new();
                ctl.poll_decisions(&mut out, 64, Duration::from_millis(50))
                    .unwrap();
                for d in out {
                    if let Decision::Standby { key } = d {
                        assert_ne!(key, BUSY, "standby while a connection is open");
                        if key == IDLE {
                            idle_standbys += 1;
                        }
                        answer_standby(&ctl, key);
                    }
                }
            }
            idle_standbys
        });
        let hosts: Vec<_> = (0..HOST_THREADS)
            .map(|t| {
                s.spawn({
                    let (ctl, stop) = (&ctl, &stop);
                    move || host_thread(ctl, t, stop)
                })
            })
            .collect();

        std::thread::sleep(CHURN / 2);
        ctl.fail_event_socket_for_test(Duration::from_millis(100))
            .unwrap();
        std::thread::sleep(CHURN / 2);
        stop.store(true, Ordering::Relaxed);
        for h in hosts {
            h.join().unwrap();
        }

        // The event socket is back, the idle instance went into Standby (the poller
        // reported it done, so it is no longer running) and the busy one is still active.
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            let stats = ctl.stats();
            let idle = ctl.status(IDLE).unwrap();
            if !stats.observer_failed
                && (idle.status, idle.reason) == (Status::Ineligible, Reason::InstanceNotRunning)
            {
                break;
            }
            assert!(
                Instant::now() < until,
                "not settled: idle {idle:?}, stats {stats:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        polling.store(false, Ordering::Relaxed);
        poller.join().unwrap()
    });
    assert_eq!(idle_standbys, 1);
    let busy = ctl.status(BUSY).unwrap();
    assert_eq!(
        (busy.status, busy.reason),
        (Status::Active, Reason::ActiveInboundConnections),
        "{busy:?}"
    );
    assert!(busy.active_inbound >= 1, "{busy:?}");
    assert_eq!(
        ctl.stats().engine.instances,
        2,
        "churned instances are gone"
    );

    // A poller blocked on a long timeout wakes with Shutdown.
    std::thread::scope(|s| {
        let blocked = s.spawn(|| {
            let mut out = Vec::new();
            ctl.poll_decisions(&mut out, 8, Duration::from_secs(30))
        });
        std::thread::sleep(Duration::from_millis(50));
        ctl.begin_shutdown();
        assert_eq!(blocked.join().unwrap(), Err(ControllerError::Shutdown));
    });
}
