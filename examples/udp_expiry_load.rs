//! Driver of `benches/udp_expiry.sh`: a kernel-mode controller watching namespace B with
//! COUNT instances, each serving one live UDP session whose datagrams (every few
//! seconds, from namespace A) refresh its conntrack entry without any event, so every
//! expiry check finds it live and is re-armed. After a warm-up it measures, over a
//! window, the CPU time (user + kernel, from `/proc/self/task/*/schedstat`, in ns) of
//! the controller's threads: the thread that owns the query socket runs the checks (a
//! dump's kernel walk and a lookup's hash lookup are both charged to the thread that
//! reads or sends; the query thread of the older code, the dump worker now), the engine
//! thread or loop applies their results.
//!
//! `udp_expiry_load NETNS_A NETNS_B COUNT WARMUP_S WINDOW_S`; the instance addresses are
//! 10.232.(i / 250).(i % 250 + 1), which the script assigns in B. Only API that predates
//! exact-tuple lookups is used, so the script can build this against the older code too.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use autostandby::conntrack::{ConntrackError, netns};
use autostandby::controller::{Controller, ControllerConfig};
use autostandby::engine::{InstanceSpec, Lifecycle};
use autostandby::policy::Policy;

const PORT: u16 = 5353;
/// Each session sends a datagram this often: well within the UDP timeout.
const REFRESH: Duration = Duration::from_secs(5);

fn addr(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 232, (i / 250) as u8, (i % 250 + 1) as u8))
}

/// CPU time in ns of each controller thread, by name.
fn thread_cpu() -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let comm = comm.trim().to_owned();
        if !comm.starts_with("as-") {
            continue;
        }
        let sched = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        let ns = sched
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        out.push((comm, ns));
    }
    out.sort();
    out
}

/// Where the window began: the time, the threads' CPU, resyncs and flow events so far.
struct Mark {
    at: Instant,
    cpu: Vec<(String, u64)>,
    resyncs: u64,
    flow_events: u64,
}

fn in_ns<T: Send>(
    path: &Path,
    f: impl FnOnce() -> std::io::Result<T> + Send,
) -> Result<T, ConntrackError> {
    netns::run_in(Some(path), || {
        f().map_err(|e| ConntrackError::io("in netns", e))
    })
}

fn main() -> Result<(), ConntrackError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [a, b, count, warmup, window] = &args[..] else {
        eprintln!("usage: udp_expiry_load NETNS_A NETNS_B COUNT WARMUP_S WINDOW_S");
        std::process::exit(2);
    };
    let a_path = PathBuf::from(format!("/run/netns/{a}"));
    let b_path = PathBuf::from(format!("/run/netns/{b}"));
    let count: usize = count.parse().expect("COUNT");
    let warmup = Duration::from_secs(warmup.parse().expect("WARMUP_S"));
    let window = Duration::from_secs(window.parse().expect("WINDOW_S"));

    let mut cfg = ControllerConfig::kernel();
    cfg.netns = Some(b_path.clone());
    // No periodic reconcile inside the window: only the expiry checks are measured.
    cfg.resync_interval_ms = 3_600_000;
    let ctl = Controller::new(cfg).expect("kernel controller");
    for i in 0..count {
        let spec = InstanceSpec {
            addresses: vec![addr(i)],
            policy: Some(Policy {
                enabled: true,
                idle_timeout_ms: 3_600_000,
                protocols: autostandby::policy::Protocols {
                    tcp: true,
                    udp: true,
                },
                ..Policy::default()
            }),
            lifecycle: Lifecycle::Running,
            network_enabled: true,
            has_vgpu: false,
            runtime: Default::default(),
        };
        ctl.register(i as u64, spec).expect("register");
    }

    let servers: Vec<UdpSocket> = (0..count)
        .map(|i| {
            let s = in_ns(&b_path, || UdpSocket::bind((addr(i), PORT)))?;
            s.set_nonblocking(true).unwrap();
            Ok(s)
        })
        .collect::<Result<_, ConntrackError>>()?;
    let clients: Vec<UdpSocket> = (0..count)
        .map(|_| {
            let s = in_ns(&a_path, || UdpSocket::bind(("0.0.0.0", 0)))?;
            s.set_nonblocking(true).unwrap();
            Ok(s)
        })
        .collect::<Result<_, ConntrackError>>()?;

    let start = Instant::now();
    let mut measured_from: Option<Mark> = None;
    let mut buf = [0u8; 64];
    loop {
        // One exchange per session, then the replies are drained.
        for (i, c) in clients.iter().enumerate() {
            let _ = c.send_to(b"ping", (addr(i), PORT));
        }
        std::thread::sleep(Duration::from_millis(20));
        for s in &servers {
            while let Ok((_, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(b"pong", from);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
        for c in &clients {
            while c.recv_from(&mut buf).is_ok() {}
        }
        let elapsed = start.elapsed();
        if measured_from.is_none() && elapsed >= warmup {
            let st = ctl.stats();
            let active = (0..count)
                .filter(|&i| ctl.status(i as u64).is_ok_and(|s| s.active_inbound > 0))
                .count();
            eprintln!("warm: {active}/{count} instances active, {st:?}");
            measured_from = Some(Mark {
                at: Instant::now(),
                cpu: thread_cpu(),
                resyncs: st.engine.resyncs,
                flow_events: st.engine.flow_events,
            });
        }
        if let Some(mark) = &measured_from
            && mark.at.elapsed() >= window
        {
            let secs = mark.at.elapsed().as_secs_f64();
            let cpu1 = thread_cpu();
            let st = ctl.stats();
            let active = (0..count)
                .filter(|&i| ctl.status(i as u64).is_ok_and(|s| s.active_inbound > 0))
                .count();
            let mut total = 0u64;
            for (name, ns) in &cpu1 {
                let before = mark
                    .cpu
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(0, |(_, v)| *v);
                let d = ns.saturating_sub(before);
                if name != "as-events" {
                    total += d;
                }
                println!(
                    "thread={name} cpu_ms={:.3} cpu_ms_per_min={:.3}",
                    d as f64 / 1e6,
                    d as f64 / 1e6 * 60.0 / secs
                );
            }
            println!(
                "window_s={secs:.1} instances={count} active_at_end={active} resyncs={} flow_events={} checks_cpu_ms_per_min={:.3}",
                st.engine.resyncs - mark.resyncs,
                st.engine.flow_events - mark.flow_events,
                total as f64 / 1e6 * 60.0 / secs
            );
            println!("stats_at_end {st:?}");
            return Ok(());
        }
        std::thread::sleep(REFRESH.saturating_sub(Duration::from_millis(40)));
    }
}
