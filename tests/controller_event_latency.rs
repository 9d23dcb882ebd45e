//! Measures how long a conntrack event takes to reach the host as a decision in kernel
//! mode, idle and under a load of flow events: a client in one namespace connects to a
//! Standby instance with wake-on-traffic, and the time from its `connect` (the SYN makes
//! the kernel emit the NEW event) to the `Wake` returned by `poll_decisions` is taken.
//! That bounds the event-to-engine latency from above: it adds the decision queue and
//! the poller's wake-up. The load is short TCP connections to a Running instance.
//!
//! It also prints what the controller's threads cost meanwhile: their CPU time, per
//! event read, and how many events each wake-up of the engine loop read.
//!
//! Prints figures, asserts nothing about them (they depend on the machine). Needs root;
//! ignored by default:
//!
//! ```sh
//! cargo test --release --test controller_event_latency -- --ignored --nocapture
//! ```
//!
//! `LOAD_CONNS_PER_S` sets the load (default 1,200 connections/s, about 7,500 events/s
//! reaching the engine).

mod conntrack_support;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use autostandby::controller::{Controller, ControllerConfig};
use autostandby::engine::{Decision, InstanceSpec, Lifecycle};
use conntrack_support::*;
use parking_lot::Mutex;

const PROBES: u32 = 200;
const PROBE_EVERY: Duration = Duration::from_millis(25);

/// Addresses in the pair's /24 from .10 on, past those the pair already uses.
fn probe_addr(i: u32) -> IpAddr {
    let host = 10 + i + u32::from(10 + i >= 100);
    IpAddr::V4(Ipv4Addr::new(10, 231, 0, host as u8))
}

fn standby_instance(addr: IpAddr) -> InstanceSpec {
    let mut spec = running_instance(addr, 600_000);
    spec.lifecycle = Lifecycle::Standby;
    spec.policy.as_mut().unwrap().wake_on_traffic = true;
    spec
}

/// CPU time so far of this process's controller threads, from the scheduler's
/// per-thread accounting. (`as-netns` is not one: the load runs in such a thread.)
fn controller_cpu() -> Duration {
    let mut total = Duration::ZERO;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !matches!(
            comm.trim_end(),
            "as-engine" | "as-dump" | "as-events" | "as-query"
        ) {
            continue;
        }
        let sched = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
        if let Some(ns) = sched.split_whitespace().next().and_then(|v| v.parse().ok()) {
            total += Duration::from_nanos(ns);
        }
    }
    total
}

/// The controller's cost over a round: CPU, event socket wake-ups, events read.
struct Cost {
    cpu: Duration,
    wakeups: u64,
    events: u64,
    secs: f64,
}

impl Cost {
    fn start(ctl: &Controller) -> (Duration, u64, u64, Instant) {
        let s = ctl.stats();
        (
            controller_cpu(),
            s.event_wakeups,
            s.events_read,
            Instant::now(),
        )
    }

    fn since(ctl: &Controller, (cpu, wakeups, events, t0): (Duration, u64, u64, Instant)) -> Self {
        let s = ctl.stats();
        Self {
            cpu: controller_cpu() - cpu,
            wakeups: s.event_wakeups - wakeups,
            events: s.events_read - events,
            secs: t0.elapsed().as_secs_f64(),
        }
    }

    fn print(&self, what: &str) {
        let per_event = self.cpu.as_secs_f64() * 1e6 / self.events.max(1) as f64;
        println!(
            "{what:<10} controller CPU {:>5.1}% of a core  {per_event:>5.2} us/event  events read {:>6.0}/s  wake-ups {:>6.0}/s  {:>5.1} events/wake-up",
            self.cpu.as_secs_f64() * 100.0 / self.secs,
            self.events as f64 / self.secs,
            self.wakeups as f64 / self.secs,
            self.events as f64 / self.wakeups.max(1) as f64,
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// One round of probes, one per Standby instance (registered afresh: each emits one
/// Wake); returns the latencies, the flow events per second the engine applied, and
/// what the controller cost meanwhile (after the registrations).
fn round(pair: &Pair, ctl: &Controller) -> (Vec<Duration>, f64, Cost) {
    for i in 0..PROBES {
        let key = 1 + u64::from(i);
        let _ = ctl.unregister(key);
        ctl.register(key, standby_instance(probe_addr(i))).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let mut latencies = Vec::new();
    let cost = Cost::start(ctl);
    let events_before = ctl.stats().engine.flow_events;
    let started = Instant::now();
    std::thread::scope(|s| {
        let sending = sent.clone();
        s.spawn(move || {
            pair.in_a(|| {
                let mut next = Instant::now();
                for i in 0..PROBES {
                    next += PROBE_EVERY;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    let to = SocketAddr::new(probe_addr(i), 80);
                    sending.lock().insert(1 + u64::from(i), Instant::now());
                    let _ = TcpStream::connect_timeout(&to, Duration::from_secs(1));
                }
                Ok(())
            })
        });
        let until = Instant::now() + PROBE_EVERY * PROBES + Duration::from_secs(5);
        let mut out = Vec::new();
        while latencies.len() < PROBES as usize && Instant::now() < until {
            out.clear();
            ctl.poll_decisions(&mut out, 256, Duration::from_millis(50))
                .unwrap();
            let now = Instant::now();
            for d in &out {
                if let Decision::Wake { key, .. } = d
                    && let Some(t0) = sent.lock().get(key)
                {
                    latencies.push(now - *t0);
                }
            }
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let events = ctl.stats().engine.flow_events - events_before;
    let cost = Cost::since(ctl, cost);
    latencies.sort();
    (latencies, events as f64 / secs, cost)
}

fn report(what: &str, lat: &[Duration], events_per_s: f64, lost: u64) {
    println!(
        "{what:<10} events/s {events_per_s:>7.0}  wakes {:>3}/{PROBES}  p50 {:>9.3?}  p99 {:>9.3?}  max {:>9.3?}  lost-event reports {lost}",
        lat.len(),
        percentile(lat, 0.50),
        percentile(lat, 0.99),
        lat[lat.len() - 1],
    );
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn conntrack_event_to_decision_latency_under_load() {
    let conns_per_s: u32 = std::env::var("LOAD_CONNS_PER_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_200);
    let pair = Pair::new();
    for i in 0..PROBES {
        let status = Command::new("ip")
            .args([
                "-n",
                &pair.b,
                "addr",
                "add",
                &format!("{}/32", probe_addr(i)),
                "dev",
                "vb",
            ])
            .status()
            .unwrap();
        assert!(status.success());
    }
    let listener = pair.in_b(|| TcpListener::bind("0.0.0.0:80"));
    let stop = AtomicBool::new(false);

    let mut cfg = ControllerConfig::kernel();
    cfg.netns = Some(pair.b_path());
    cfg.resync_interval_ms = 600_000;
    // Every probe's instance is woken and none restored: no restore may wait for a slot.
    cfg.max_concurrent_restores = PROBES;
    let ctl = Controller::new(cfg).expect("kernel controller");
    ctl.register(0, running_instance(ip(SERVER), 600_000))
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));

    std::thread::scope(|s| {
        // Accept throughout: a full backlog would drop the probes' SYNs.
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if let Ok((c, _)) = listener.accept() {
                    drop(c);
                }
            }
        });
        let (idle, idle_rate, cost) = round(&pair, &ctl);
        report("idle", &idle, idle_rate, ctl.stats().events_lost);
        cost.print("idle");

        s.spawn(|| {
            pair.in_a(|| {
                let to = SocketAddr::new(ip(SERVER), 80);
                let every = Duration::from_secs(1) / conns_per_s;
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    next += every;
                    let wait = next.saturating_duration_since(Instant::now());
                    if !wait.is_zero() {
                        std::thread::sleep(wait);
                    }
                    drop(TcpStream::connect_timeout(&to, Duration::from_secs(1)));
                }
                Ok(())
            })
        });
        std::thread::sleep(Duration::from_secs(2));
        let lost = ctl.stats().events_lost;
        let (loaded, rate, cost) = round(&pair, &ctl);
        report("loaded", &loaded, rate, ctl.stats().events_lost - lost);
        cost.print("loaded");
        stop.store(true, Ordering::Relaxed);
        // Unblock the accept loop.
        let _ = pair.in_a(|| {
            Ok(TcpStream::connect_timeout(
                &SocketAddr::new(ip(SERVER), 80),
                Duration::from_secs(1),
            ))
        });
    });
}
