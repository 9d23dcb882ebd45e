//! The kernel-mode controller at fleet scale, driven by `benches/scale.sh` (root). Each
//! subcommand runs one controller on a network namespace the script prepared and prints
//! one line of `key=value` figures:
//!
//! - `storm --netns PATH [--instances N] [--idle-ms MS] [--spread-ms MS]`: N instances
//!   whose persisted countdowns all run out within SPREAD ms (an idle storm); how late
//!   each `Standby` decision reaches a host polling for it, answered as a host does, and
//!   the dumps the storm issued;
//! - `burst --netns PATH [--instances N]`: N `register()` calls in a row while the
//!   controller runs; the time of each call and the full dumps the burst caused;
//! - `status --netns PATH --count N --start-ms MS --window-s S`: `status()` calls over
//!   the window while the load of `examples/steady.rs` flows to the N addresses that
//!   example uses.
//!
//! Every subcommand also samples `status()` from a thread of its own (one call every
//! `--probe-us`, default 200), so a long hold of the engine lock shows up in its maximum.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use autostandby::controller::{Controller, ControllerConfig, ControllerStats};
use autostandby::engine::{
    BeginStandby, Decision, InstanceSpec, Lifecycle, Runtime, StandbyOutcome,
};
use autostandby::policy::{Policy, Protocols};

fn arg(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num(args: &[String], flag: &str, default: u64) -> u64 {
    arg(args, flag).map_or(default, |v| v.parse().expect("a number"))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// VM address `i` of `examples/steady.rs` (10.236.x.y, y in 10..210), so the load
/// generator of that example reaches the instances registered here.
fn vm_addr(i: u64) -> IpAddr {
    let i = i as u32;
    IpAddr::V4(Ipv4Addr::from(
        0x0aec_0000 + (i / 200) * 256 + (i % 200) + 10,
    ))
}

fn spec(addr: IpAddr, idle_timeout_ms: u64, runtime: Runtime) -> InstanceSpec {
    InstanceSpec {
        addresses: vec![addr],
        policy: Some(Policy {
            enabled: true,
            idle_timeout_ms,
            protocols: Protocols::default(),
            ..Policy::default()
        }),
        lifecycle: Lifecycle::Running,
        network_enabled: true,
        has_vgpu: false,
        runtime,
    }
}

fn controller(args: &[String]) -> Arc<Controller> {
    let mut cfg = ControllerConfig::kernel();
    cfg.netns = Some(PathBuf::from(arg(args, "--netns").expect("--netns")));
    Arc::new(Controller::new(cfg).expect("kernel-mode controller"))
}

/// Percentiles of a sample, in the unit given.
fn pct(mut v: Vec<i64>, name: &str, unit: &str, div: f64) -> String {
    if v.is_empty() {
        return format!("{name}_n=0");
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64 / div;
    format!(
        "{name}_n={} {name}_p50_{unit}={:.3} {name}_p99_{unit}={:.3} {name}_max_{unit}={:.3}",
        v.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    )
}

/// Times the calling thread was preempted (involuntary context switches), from
/// `/proc/thread-self/status`.
fn preemptions() -> u64 {
    std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// What a [`Probe`] measured: every call's time (nanoseconds), and the time of the
/// calls during which the probe thread itself was not preempted (waiting for the lock
/// parks it, which is voluntary and counted): on a loaded host the first maximum is
/// the scheduler's, the second what the controller's lock holds cost.
struct Probed {
    all: Vec<i64>,
    unpreempted: Vec<i64>,
}

/// A thread timing `status()` of random instances until stopped.
struct Probe {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Probed>,
}

impl Probe {
    fn start(ctl: &Arc<Controller>, keys: u64, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (ctl, stop) = (ctl.clone(), stop.clone());
            std::thread::Builder::new()
                .name("probe".into())
                .spawn(move || {
                    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
                    let mut p = Probed {
                        all: Vec::with_capacity(1 << 20),
                        unpreempted: Vec::with_capacity(1 << 20),
                    };
                    while !stop.load(Ordering::Relaxed) {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        let before = preemptions();
                        let t = Instant::now();
                        let s = ctl.status(seed % keys);
                        let took = t.elapsed().as_nanos() as i64;
                        if preemptions() == before {
                            p.unpreempted.push(took);
                        }
                        p.all.push(took);
                        std::hint::black_box(s.ok());
                        std::thread::sleep(every);
                    }
                    p
                })
                .expect("spawn probe")
        };
        Self { stop, handle }
    }

    fn finish(self) -> Probed {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("probe")
    }
}

impl Probed {
    fn report(self) -> String {
        format!(
            "{} {}",
            pct(self.all, "status", "us", 1000.0),
            pct(self.unpreempted, "status_unpreempted", "us", 1000.0)
        )
    }
}

fn probe_every(args: &[String]) -> Duration {
    Duration::from_micros(num(args, "--probe-us", 200))
}

/// Waits until no instance waits for its first resync.
fn wait_synced(ctl: &Controller, keys: u64, budget: Duration) {
    let until = Instant::now() + budget;
    for key in (0..keys).rev() {
        while ctl.resync_pending(key).expect("registered") {
            assert!(Instant::now() < until, "instance {key} never resynced");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn walks_and_resyncs(s: &ControllerStats) -> (u64, u64) {
    (s.dump_walks, s.engine.resyncs)
}

fn storm(args: &[String]) {
    let n = num(args, "--instances", 10_000);
    let idle_ms = num(args, "--idle-ms", 20_000);
    let spread_ms = num(args, "--spread-ms", 1_000).max(1);
    let ctl = controller(args);
    // Persisted countdowns ending in [start + idle - spread, start + idle).
    let start = unix_ms();
    for key in 0..n {
        let since = start - spread_ms + key * spread_ms / n;
        let rt = Runtime {
            idle_since: Some(since),
            last_inbound_activity_at: Some(since),
        };
        ctl.register(key, spec(vm_addr(key), idle_ms, rt))
            .expect("register");
    }
    wait_synced(&ctl, n, Duration::from_secs(60));
    let deadlines: Vec<i64> = (0..n)
        .map(|key| {
            let s = ctl.status(key).expect("status");
            s.next_standby_at.expect("a countdown after the first dump") as i64 * 1000
        })
        .collect();
    let first = *deadlines.iter().min().expect("instances");
    let last = *deadlines.iter().max().expect("instances");
    let (walks0, resyncs0) = walks_and_resyncs(&ctl.stats());
    let probe = Probe::start(&ctl, n, probe_every(args));
    let mut late = Vec::with_capacity(n as usize);
    let mut decisions = Vec::new();
    let budget = Instant::now()
        + Duration::from_micros((last - unix_us()).max(0) as u64)
        + Duration::from_secs(60);
    while (late.len() as u64) < n && Instant::now() < budget {
        decisions.clear();
        ctl.poll_decisions(&mut decisions, 256, Duration::from_secs(1))
            .expect("poll");
        let at = unix_us();
        for d in &decisions {
            if let Decision::Standby { key } = *d {
                late.push(at - deadlines[key as usize]);
                if ctl.begin_standby(key).expect("begin") == BeginStandby::Proceed {
                    ctl.report_standby(key, StandbyOutcome::Success)
                        .expect("report");
                }
            }
        }
    }
    let probed = probe.finish();
    let stats = ctl.stats();
    let (walks1, resyncs1) = walks_and_resyncs(&stats);
    assert_eq!(
        late.len() as u64,
        n,
        "every instance got its Standby decision"
    );
    println!(
        "instances={n} deadline_span_ms={:.0} confirm_lead_ms={} {} storm_walks={} storm_resyncs={} {}",
        (last - first) as f64 / 1000.0,
        stats.confirm_lead_ms,
        pct(late, "late", "ms", 1000.0),
        walks1 - walks0,
        resyncs1 - resyncs0,
        probed.report(),
    );
}

fn burst(args: &[String]) {
    let n = num(args, "--instances", 100_000);
    let ctl = controller(args);
    // The start-up resync first, so that what follows is the burst's own.
    std::thread::sleep(Duration::from_millis(500));
    let (walks0, resyncs0) = walks_and_resyncs(&ctl.stats());
    // Always instance 0: the call takes the engine lock whether or not it is there yet.
    let probe = Probe::start(&ctl, 1, probe_every(args));
    let mut took = Vec::with_capacity(n as usize);
    let t = Instant::now();
    for key in 0..n {
        let a = IpAddr::V4(Ipv4Addr::from(0x0a80_0001 + key as u32));
        let s = spec(a, 3_600_000, Runtime::default());
        let t = Instant::now();
        ctl.register(key, s).expect("register");
        took.push(t.elapsed().as_nanos() as i64);
    }
    let burst_ms = t.elapsed().as_millis();
    wait_synced(&ctl, n, Duration::from_secs(120));
    // Anything the burst still had queued.
    std::thread::sleep(Duration::from_millis(500));
    let probed = probe.finish();
    let (walks1, resyncs1) = walks_and_resyncs(&ctl.stats());
    println!(
        "instances={n} burst_ms={burst_ms} {} burst_resyncs={} burst_walks={} {}",
        pct(took, "register", "us", 1000.0),
        resyncs1 - resyncs0,
        walks1 - walks0,
        probed.report(),
    );
}

fn status(args: &[String]) {
    let n = num(args, "--count", 500);
    let start_ms = num(args, "--start-ms", 0);
    let window_s = num(args, "--window-s", 30);
    let ctl = controller(args);
    for key in 0..n {
        // Long enough that none goes into Standby during the window.
        ctl.register(key, spec(vm_addr(key), 3_600_000, Runtime::default()))
            .expect("register");
    }
    println!("ready");
    let now = unix_ms();
    assert!(now < start_ms, "started after the window began");
    std::thread::sleep(Duration::from_millis(start_ms - now));
    let before = ctl.stats();
    let probe = Probe::start(&ctl, n, probe_every(args));
    std::thread::sleep(Duration::from_secs(window_s));
    let probed = probe.finish();
    let after = ctl.stats();
    println!(
        "instances={n} events_read_per_s={:.0} flow_events_per_s={:.0} walks={} {}",
        (after.events_read - before.events_read) as f64 / window_s as f64,
        (after.engine.flow_events - before.engine.flow_events) as f64 / window_s as f64,
        after.dump_walks - before.dump_walks,
        probed.report(),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("storm") => storm(&args),
        Some("burst") => burst(&args),
        Some("status") => status(&args),
        _ => {
            eprintln!("usage: scale storm|burst|status ... (see benches/scale.sh)");
            std::process::exit(2);
        }
    }
}
