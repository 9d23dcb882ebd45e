//! The processes of the steady-state benchmark (`benches/steady.sh`, root). Each runs in its
//! own process so that its CPU time is its own; all of them measure the same window,
//! from `--start-ms` (Unix milliseconds, after the warm-up) for `--window-s` seconds,
//! then print one `key=value` line and exit. Subcommands:
//!
//! - `addrs --count N`: prints the N VM addresses, one a line;
//! - `controller --netns PATH --count N [--udp] [--idle K --idle-ms MS]`: a kernel-mode
//!   [`Controller`] observing PATH with the N addresses registered as running instances,
//!   answering decisions as a host does; prints its CPU (per thread too), the
//!   [`ControllerStats`] deltas and the dumps it ran;
//! - `peer --netns PATH --count N [--all] [--linger-us US]`: the library's own
//!   [`EventSocket`] with the same address filter (none with `--all`), read with a linger
//!   (2 ms by default); prints its CPU and the events it read;
//! - `load --server-netns PATH --count N --rate R [--conc C] [--udp] [--idle K]`: run in
//!   the client namespace; serves TCP port 80 (and UDP port 5353 on every address) in
//!   PATH and opens R short TCP connections per second spread over the N addresses
//!   (connect, send a byte, read the answer, close); with `--udp` one UDP session per
//!   address, a datagram a second each way; with `--idle K` the first K addresses get
//!   TCP traffic only in the first 2 s of every 10 s, and no UDP session. Prints the connections completed in
//!   the window and the achieved rate.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use autostandby::conntrack::{EventSocket, ObserverConfig, netns};
use autostandby::controller::logs::LogRecord;
use autostandby::controller::{Controller, ControllerConfig, ControllerStats};
use autostandby::engine::{
    BeginStandby, Decision, InstanceSpec, Lifecycle, StandbyOutcome, WakeOutcome,
};
use autostandby::policy::{Policy, Protocols};

/// TCP port of the servers.
const TCP_PORT: u16 = 80;
/// UDP port of the servers.
const UDP_PORT: u16 = 5353;
/// Idle timeout of the instances that must not go into Standby during a run.
const BUSY_IDLE_MS: u64 = 3_600_000;
/// `--idle` addresses get traffic only in the first `IDLE_ON_S` of every `IDLE_PERIOD_S`.
const IDLE_PERIOD_S: u64 = 10;
/// See [`IDLE_PERIOD_S`].
const IDLE_ON_S: u64 = 2;

fn arg(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num(args: &[String], flag: &str, default: u64) -> u64 {
    arg(args, flag).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{flag}: not a number: {v}"))
    })
}

fn has(args: &[String], flag: &str) -> bool {
    args.iter().any(|a| a == flag)
}

/// VM address `i`: 10.236.x.y with y in 10..210, so no address ends in .0 or .255.
fn vm_addr(i: u64) -> IpAddr {
    let i = i as u32;
    IpAddr::V4(Ipv4Addr::from(
        0x0aec_0000 + (i / 200) * 256 + (i % 200) + 10,
    ))
}

fn addrs(count: u64) -> Vec<IpAddr> {
    (0..count).map(vm_addr).collect()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The measured window, in Unix milliseconds.
#[derive(Clone, Copy)]
struct Window {
    start_ms: u64,
    end_ms: u64,
}

impl Window {
    fn from_args(args: &[String]) -> Self {
        let start_ms = num(args, "--start-ms", 0);
        assert!(start_ms > 0, "--start-ms is required");
        let secs = num(args, "--window-s", 60);
        let w = Self {
            start_ms,
            end_ms: start_ms + secs * 1000,
        };
        assert!(
            unix_ms() < w.start_ms,
            "started after the window began: the warm-up is too short"
        );
        w
    }

    fn secs(&self) -> f64 {
        (self.end_ms - self.start_ms) as f64 / 1000.0
    }
}

/// CPU time (user + system, ns) of each live thread of this process, by thread name.
/// From schedstat, which counts in nanoseconds; no thread of these processes exits
/// during a window.
fn thread_cpu() -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in dir.flatten() {
        let p = task.path();
        let ns = std::fs::read_to_string(p.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(0);
        let name = std::fs::read_to_string(p.join("comm"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        out.push((name, ns));
    }
    out
}

fn total(cpu: &[(String, u64)]) -> u64 {
    cpu.iter().map(|(_, ns)| ns).sum()
}

fn by_name(cpu: &[(String, u64)], name: &str) -> u64 {
    cpu.iter()
        .filter(|(n, _)| n == name)
        .map(|(_, ns)| ns)
        .sum()
}

fn ready() {
    println!("ready");
    std::io::stdout().flush().ok();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("addrs") => {
            for a in addrs(num(&args, "--count", 500)) {
                println!("{a}");
            }
        }
        Some("controller") => controller(&args),
        Some("peer") => peer(&args),
        Some("load") => load(&args),
        _ => {
            eprintln!("usage: steady addrs|controller|peer|load ... (see benches/steady.sh)");
            std::process::exit(2);
        }
    }
}

fn spec(addr: IpAddr, idle_timeout_ms: u64, udp: bool) -> InstanceSpec {
    InstanceSpec {
        addresses: vec![addr],
        policy: Some(Policy {
            enabled: true,
            idle_timeout_ms,
            protocols: Protocols { tcp: true, udp },
            wake_on_traffic: true,
            ..Policy::default()
        }),
        lifecycle: Lifecycle::Running,
        network_enabled: true,
        has_vgpu: false,
        runtime: Default::default(),
    }
}

/// Dumps the controller ran, from its debug log (`resync dump finished`).
#[derive(Default)]
struct Dumps {
    dumps: u64,
    walks: u64,
    flows: u64,
    /// `seconds into the window/addresses/walks/flows` per dump, comma-separated.
    detail: String,
}

fn log_field(message: &str, key: &str) -> Option<u64> {
    message
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

impl Dumps {
    fn add(&mut self, r: &LogRecord, window: &Window) {
        if r.message.starts_with("resync dump finished") {
            let walks = log_field(&r.message, "walks").unwrap_or(0);
            let flows = log_field(&r.message, "flows").unwrap_or(0);
            let addresses = log_field(&r.message, "addresses").unwrap_or(0);
            self.dumps += 1;
            self.walks += walks;
            self.flows += flows;
            if !self.detail.is_empty() {
                self.detail.push(',');
            }
            let at = r.time_ms.saturating_sub(window.start_ms) as f64 / 1000.0;
            self.detail
                .push_str(&format!("{at:.1}s/{addresses}/{walks}/{flows}"));
        }
    }
}

/// What the controller process has counted when the window begins.
struct HostSample {
    stats: ControllerStats,
    cpu: Vec<(String, u64)>,
    standby: u64,
    wake: u64,
    standby_cancelled: u64,
}

fn controller(args: &[String]) {
    let netns = PathBuf::from(arg(args, "--netns").expect("--netns"));
    let count = num(args, "--count", 500);
    let udp = has(args, "--udp");
    let idle = num(args, "--idle", 0);
    let idle_ms = num(args, "--idle-ms", 2000);
    let window = Window::from_args(args);

    let mut cfg = ControllerConfig::kernel();
    cfg.netns = Some(netns);
    // The dump statistics are logged at debug level.
    cfg.log_level = tracing::Level::DEBUG;
    let ctl = Controller::new(cfg).expect("kernel controller");
    for (i, a) in addrs(count).into_iter().enumerate() {
        let i = i as u64;
        let t = if i < idle { idle_ms } else { BUSY_IDLE_MS };
        ctl.register(i, spec(a, t, udp)).expect("register");
    }
    ready();

    let mut decisions = Vec::new();
    let mut logs = Vec::new();
    let (mut standby, mut wake, mut standby_cancelled) = (0u64, 0u64, 0u64);
    let mut dumps = Dumps::default();
    let mut at_start: Option<HostSample> = None;
    loop {
        let now = unix_ms();
        if at_start.is_none() && now >= window.start_ms {
            at_start = Some(HostSample {
                stats: ctl.stats(),
                cpu: thread_cpu(),
                standby,
                wake,
                standby_cancelled,
            });
        }
        if now >= window.end_ms {
            break;
        }
        decisions.clear();
        ctl.poll_decisions(&mut decisions, 64, Duration::from_millis(100))
            .expect("poll");
        for d in &decisions {
            // As a host: snapshot (instantly here) and report; restore and report, then
            // tell the library the instance runs again.
            match *d {
                Decision::Standby { key } => match ctl.begin_standby(key) {
                    Ok(BeginStandby::Proceed) => {
                        standby += 1;
                        ctl.report_standby(key, StandbyOutcome::Success)
                            .expect("report standby");
                    }
                    _ => standby_cancelled += 1,
                },
                Decision::Wake { key, .. } => {
                    wake += 1;
                    ctl.report_wake(key, WakeOutcome::Success)
                        .expect("report wake");
                    let t = if key < idle { idle_ms } else { BUSY_IDLE_MS };
                    ctl.update(key, spec(vm_addr(key), t, udp)).expect("update");
                }
                Decision::PersistRuntime { .. } | Decision::Confirm { .. } => {}
            }
        }
        logs.clear();
        ctl.drain_logs(&mut logs, usize::MAX);
        if at_start.is_some() {
            for r in &logs {
                if (window.start_ms..window.end_ms).contains(&r.time_ms) {
                    dumps.add(r, &window);
                }
            }
        }
    }
    let HostSample {
        stats: s0,
        cpu: cpu0,
        standby: standby0,
        wake: wake0,
        standby_cancelled: cancelled0,
    } = at_start.expect("window began");
    let (s1, cpu1) = (ctl.stats(), thread_cpu());
    let first = ctl.status(0).expect("status");
    let ms = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e6;
    let thread = |name: &str| ms(by_name(&cpu0, name), by_name(&cpu1, name));
    let cpu_ms = ms(total(&cpu0), total(&cpu1));
    println!(
        "cpu_ms={cpu_ms:.1} engine_thread_ms={:.1} query_thread_ms={:.1} main_thread_ms={:.1} \
         events_read={} event_wakeups={} flow_events={} unmatched={} events_lost={} \
         observer_errors={} resyncs={} dumps={} walks={} dumped_flows={} tracked_flows={} \
         standby={} standby_cancelled={} wake={} observer_failed={} seconds={:.3} \
         periodic_checks={} flow_lookups={} dump_walks={} dump_list={} \
         first_status={:?}/{:?}",
        thread("as-engine"),
        // The dump worker, which owns the query socket.
        thread("as-dump"),
        thread("steady"),
        s1.events_read - s0.events_read,
        s1.event_wakeups - s0.event_wakeups,
        s1.engine.flow_events - s0.engine.flow_events,
        s1.engine.flow_events_unmatched - s0.engine.flow_events_unmatched,
        s1.events_lost - s0.events_lost,
        s1.observer_errors - s0.observer_errors,
        s1.engine.resyncs - s0.engine.resyncs,
        dumps.dumps,
        dumps.walks,
        dumps.flows,
        s1.engine.tracked_flows,
        standby - standby0,
        standby_cancelled - cancelled0,
        wake - wake0,
        s1.observer_failed,
        window.secs(),
        s1.periodic_checks - s0.periodic_checks,
        s1.flow_lookups - s0.flow_lookups,
        s1.dump_walks - s0.dump_walks,
        if dumps.detail.is_empty() {
            "-"
        } else {
            &dumps.detail
        },
        first.status,
        first.reason,
    );
}

fn peer(args: &[String]) {
    let netns = PathBuf::from(arg(args, "--netns").expect("--netns"));
    let count = num(args, "--count", 500);
    let linger = Duration::from_micros(num(args, "--linger-us", 2000));
    let window = Window::from_args(args);
    let cfg = ObserverConfig {
        netns: Some(netns),
        ..ObserverConfig::default()
    };
    let mut ev = EventSocket::open(&cfg).expect("event socket");
    if has(args, "--all") {
        // Every event the kernel produces: no address filter, no state filter.
        ev.set_state_filter(false).expect("no state filter");
    } else {
        ev.set_address_filter(&addrs(count)).expect("filter");
    }
    ready();
    let (mut events, mut wakeups) = (0u64, 0u64);
    let mut at_start: Option<(u64, u64, u64, u64)> = None;
    loop {
        let now = unix_ms();
        if at_start.is_none() && now >= window.start_ms {
            at_start = Some((events, wakeups, ev.stats().drops, total(&thread_cpu())));
        }
        if now >= window.end_ms {
            break;
        }
        if !ev
            .wait_batch(Duration::from_millis(50), linger)
            .expect("wait")
        {
            continue;
        }
        wakeups += 1;
        loop {
            let b = ev.recv_batch(&mut |_| events += 1).expect("receive");
            if !b.more {
                break;
            }
        }
    }
    let (e0, w0, d0, cpu0) = at_start.expect("window began");
    let cpu_ms = total(&thread_cpu()).saturating_sub(cpu0) as f64 / 1e6;
    println!(
        "cpu_ms={cpu_ms:.1} events={} wakeups={} drops={} rcvbuf={} seconds={:.3}",
        events - e0,
        wakeups - w0,
        ev.stats().drops - d0,
        ev.effective_rcvbuf(),
        window.secs()
    );
}

/// Serves one short connection: the client's byte is answered with one, then the
/// client closes first.
fn serve(mut s: TcpStream) {
    let mut b = [0u8; 1];
    if s.read_exact(&mut b).is_ok() && s.write_all(&b).is_ok() {
        let _ = s.read(&mut b);
    }
}

fn spawn_small(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(64 << 10)
        .spawn(f)
        .expect("spawn");
}

fn load(args: &[String]) {
    let server_ns = PathBuf::from(arg(args, "--server-netns").expect("--server-netns"));
    let count = num(args, "--count", 500);
    let rate = num(args, "--rate", 1000).max(1);
    let conc = num(args, "--conc", 16).max(1);
    let servers = num(args, "--servers", 8).max(1);
    let udp = has(args, "--udp");
    let idle = num(args, "--idle", 0).min(count.saturating_sub(1));
    let window = Window::from_args(args);
    let targets = Arc::new(addrs(count));

    // Servers, bound in the host namespace: one TCP listener for every address.
    let listener = netns::run_in(Some(&server_ns), || {
        Ok(TcpListener::bind(("0.0.0.0", TCP_PORT)).expect("bind TCP"))
    })
    .expect("enter the host namespace");
    for _ in 0..servers {
        let l = listener.try_clone().expect("clone listener");
        spawn_small(move || {
            for s in l.incoming().flatten() {
                serve(s);
            }
        });
    }
    if udp {
        // One socket per address, so each answer leaves from the address it was sent to.
        for &a in targets.iter() {
            let s = netns::run_in(Some(&server_ns), move || {
                Ok(UdpSocket::bind(SocketAddr::new(a, UDP_PORT)).expect("bind UDP"))
            })
            .expect("enter the host namespace");
            spawn_small(move || {
                let mut b = [0u8; 64];
                while let Ok((n, from)) = s.recv_from(&mut b) {
                    let _ = s.send_to(&b[..n], from);
                }
            });
        }
        // None for the addresses meant to go idle: a live session would keep them awake.
        let busy = targets[idle as usize..].to_vec();
        spawn_small(move || udp_clients(&busy));
    }

    let done = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let in_window = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let max_lag_us = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let began_ms = unix_ms();
    let interval_ns = 1_000_000_000 / rate;
    let workers: Vec<_> = (0..conc)
        .map(|_| {
            let (done, next, in_window, failed, max_lag_us, targets) = (
                done.clone(),
                next.clone(),
                in_window.clone(),
                failed.clone(),
                max_lag_us.clone(),
                targets.clone(),
            );
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let due = began + Duration::from_nanos(i * interval_ns);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    } else {
                        max_lag_us.fetch_max((now - due).as_micros() as u64, Ordering::Relaxed);
                    }
                    let mut t = i % count;
                    if t < idle && (due - began).as_secs() % IDLE_PERIOD_S >= IDLE_ON_S {
                        t = idle + i % (count - idle);
                    }
                    let ok = TcpStream::connect(SocketAddr::new(targets[t as usize], TCP_PORT))
                        .and_then(|mut c| {
                            c.set_nodelay(true)?;
                            c.write_all(b"x")?;
                            c.read_exact(&mut [0u8; 1])
                        })
                        .is_ok();
                    let end = unix_ms();
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    } else if (window.start_ms..window.end_ms).contains(&end) {
                        in_window.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    ready();
    let left = window.end_ms.saturating_sub(unix_ms());
    std::thread::sleep(Duration::from_millis(left));
    done.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    // Slots scheduled up to the end of the window: what the rate asked for.
    let asked = (window.end_ms - window.start_ms) * rate / 1000;
    let n = in_window.load(Ordering::Relaxed);
    println!(
        "connections={n} asked={asked} rate={:.0} failed={} max_lag_ms={:.1} ran_s={:.1} seconds={:.3}",
        n as f64 / window.secs(),
        failed.load(Ordering::Relaxed),
        max_lag_us.load(Ordering::Relaxed) as f64 / 1000.0,
        (unix_ms() - began_ms) as f64 / 1000.0,
        window.secs(),
    );
}

/// One UDP session per address: a datagram a second each way, sent spread over the
/// second.
fn udp_clients(targets: &[IpAddr]) {
    let socks: Vec<UdpSocket> = targets
        .iter()
        .map(|&a| {
            let s = UdpSocket::bind(("0.0.0.0", 0)).expect("bind UDP client");
            s.connect(SocketAddr::new(a, UDP_PORT))
                .expect("connect UDP");
            s.set_nonblocking(true).expect("non-blocking");
            s
        })
        .collect();
    let step = Duration::from_secs(1) / socks.len().max(1) as u32;
    let mut b = [0u8; 64];
    loop {
        for s in &socks {
            let _ = s.send(b"u");
            while s.recv(&mut b).is_ok() {}
            std::thread::sleep(step);
        }
    }
}
