//! Controller benchmarks through the C ABI (`make bench-controller`, as root):
//!
//! 1. `status` cost with 10,000 instances, against the Rust API on the same controller
//!    (the peer: what the C ABI adds);
//! 2. how late a `Standby` decision reaches a blocked `poll_decisions`, for 10,000
//!    instances in kernel mode whose deadlines are spread over a minute, against a peer
//!    thread that only sleeps until the same deadlines (the machine's timer floor), run
//!    at the same time: once without the confirm dump (the controller's machinery) and
//!    once end to end through the C ABI with the confirm dump on (the production path:
//!    the engine asks for each confirmation ahead of the deadline).
//!
//! Sizes: `AS_BENCH_INSTANCES` (default 10000), `AS_BENCH_SPREAD_MS` (default 60000).

use std::ffi::CString;
use std::mem::size_of;
use std::process::Command;
use std::ptr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use autostandby::controller::{Controller, ControllerConfig};
use autostandby::engine::{BeginStandby, Decision, InstanceSpec, Lifecycle, StandbyOutcome};
use autostandby::ffi::*;
use autostandby::policy::{Policy, Protocols};

struct Handle(*mut autostandby_controller);
// SAFETY: the C ABI is thread-safe for every call but free.
unsafe impl Send for Handle {}
// SAFETY: as above.
unsafe impl Sync for Handle {}
impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by controller_new, freed once.
        unsafe { autostandby_controller_free(self.0) };
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn addr(i: u64) -> [u8; 4] {
    [10, 128 + (i >> 16) as u8, (i >> 8) as u8, i as u8]
}

fn c_policy(idle_ms: u64) -> autostandby_policy {
    autostandby_policy {
        struct_size: size_of::<autostandby_policy>() as u32,
        enabled: true,
        idle_timeout_ms: idle_ms,
        ignore_source_cidrs: ptr::null(),
        ignore_source_cidrs_len: 0,
        ignore_destination_ports: ptr::null(),
        ignore_destination_ports_len: 0,
        tcp: true,
        udp: false,
        wake_on_traffic: false,
        min_uptime_ms: 0,
        wake_source_cidrs: ptr::null(),
        wake_source_cidrs_len: 0,
    }
}

fn c_register(h: &Handle, key: u64, idle_ms: u64) {
    let mut ip = autostandby_ip {
        family: AUTOSTANDBY_FAMILY_IPV4,
        addr: [0; 16],
    };
    ip.addr[..4].copy_from_slice(&addr(key));
    let pol = c_policy(idle_ms);
    let inst = autostandby_instance {
        struct_size: size_of::<autostandby_instance>() as u32,
        addresses: &ip,
        addresses_len: 1,
        policy: &pol,
        lifecycle: AUTOSTANDBY_LIFECYCLE_RUNNING,
        network_enabled: true,
        has_vgpu: false,
        runtime: autostandby_runtime::default(),
    };
    // SAFETY: valid pointers.
    let rc = unsafe { autostandby_register(h.0, key, &inst, ptr::null_mut()) };
    assert_eq!(rc, AUTOSTANDBY_OK, "register {key}");
}

fn c_status(h: &Handle, key: u64) -> autostandby_status {
    let mut st = autostandby_status {
        struct_size: size_of::<autostandby_status>() as u32,
        ..Default::default()
    };
    // SAFETY: valid pointers.
    let rc = unsafe { autostandby_status(h.0, key, &mut st, ptr::null_mut()) };
    assert_eq!(rc, AUTOSTANDBY_OK);
    st
}

fn spec(key: u64, idle_ms: u64) -> InstanceSpec {
    InstanceSpec {
        addresses: vec![std::net::IpAddr::from(addr(key))],
        policy: Some(Policy {
            enabled: true,
            idle_timeout_ms: idle_ms,
            ignore_source_cidrs: vec![],
            ignore_destination_ports: vec![],
            protocols: Protocols::default(),
            wake_on_traffic: false,
            min_uptime_ms: 0,
            wake_source_cidrs: vec![],
        }),
        lifecycle: Lifecycle::Running,
        network_enabled: true,
        has_vgpu: false,
        runtime: Default::default(),
    }
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn bench_status(instances: u64) {
    const CALLS: u64 = 1_000_000;
    let mut cfg = ControllerConfig::manual(1_700_000_000_000);
    cfg.max_concurrent_standbys = 16;
    let rust = Controller::new(cfg).expect("manual controller");
    let c_cfg = autostandby_config {
        struct_size: size_of::<autostandby_config>() as u32,
        mode: AUTOSTANDBY_MODE_MANUAL,
        netns_path: ptr::null(),
        rcvbuf_bytes: 0,
        max_concurrent_standbys: 0,
        resync_interval_ms: 0,
        events_sysctl: 0,
        manual_start_ms: 1_700_000_000_000,
        ..Default::default()
    };
    let mut raw = ptr::null_mut();
    // SAFETY: valid pointers.
    assert_eq!(
        unsafe { autostandby_controller_new(&c_cfg, &mut raw, ptr::null_mut()) },
        AUTOSTANDBY_OK
    );
    let h = Handle(raw);
    for key in 0..instances {
        c_register(&h, key, 60_000);
        rust.register(key, spec(key, 60_000)).expect("register");
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut sink = 0u64;
    let mut st = autostandby_status {
        struct_size: size_of::<autostandby_status>() as u32,
        ..Default::default()
    };
    let t = Instant::now();
    for _ in 0..CALLS {
        let key = xorshift(&mut seed) % instances;
        // SAFETY: valid pointers.
        unsafe { autostandby_status(h.0, key, &mut st, ptr::null_mut()) };
        sink = sink.wrapping_add(st.idle_since_ms);
    }
    let ffi_ns = t.elapsed().as_nanos() as f64 / CALLS as f64;
    let t = Instant::now();
    for _ in 0..CALLS {
        let key = xorshift(&mut seed) % instances;
        let s = rust.status(key).expect("status");
        sink = sink.wrapping_add(s.idle_since.unwrap_or(0));
    }
    let rust_ns = t.elapsed().as_nanos() as f64 / CALLS as f64;
    std::hint::black_box(sink);
    println!(
        "controller/status ({instances} instances, {CALLS} calls): C ABI {ffi_ns:.0} ns/call, Rust API {rust_ns:.0} ns/call, ratio {:.2}; goal <= 2000 ns: {}",
        ffi_ns / rust_ns,
        if ffi_ns <= 2000.0 { "met" } else { "MISSED" }
    );
}

/// A network namespace for the kernel-mode run, deleted on drop.
struct Netns(String);

impl Netns {
    fn create(tag: &str) -> Self {
        let name = format!("as-ffi-bench{}{tag}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip");
        assert!(ok.success(), "ip netns add {name} failed");
        Self(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn summary(mut v: Vec<i64>) -> String {
    v.sort_unstable();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize] as f64 / 1000.0;
    format!(
        "n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        v.len(),
        p(0.5),
        p(0.99),
        p(1.0)
    )
}

/// Waits for every standby decision and returns how late each reached the poller (µs).
fn collect_latencies(
    instances: u64,
    deadlines: &[u64],
    budget: Duration,
    mut poll: impl FnMut(&mut Vec<u64>),
    mut finish: impl FnMut(u64),
) -> Vec<i64> {
    let mut late = Vec::with_capacity(instances as usize);
    let until = Instant::now() + budget;
    let mut keys = Vec::new();
    while (late.len() as u64) < instances && Instant::now() < until {
        keys.clear();
        poll(&mut keys);
        let at = now_us();
        for &key in &keys {
            late.push(at - deadlines[key as usize] as i64 * 1000);
            finish(key);
        }
    }
    assert_eq!(
        late.len() as u64,
        instances,
        "every instance got its standby decision"
    );
    late
}

fn p99_us(v: &[i64]) -> i64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    s[((s.len() - 1) as f64 * 0.99) as usize]
}

/// Kernel mode through the C ABI, confirm dump included: the production path.
fn run_c_abi(ns: &Netns, instances: u64, spread_ms: u64, base: u64) -> (Vec<i64>, Vec<u64>, u128) {
    let path = CString::new(format!("/run/netns/{}", ns.0)).unwrap();
    let cfg = autostandby_config {
        struct_size: size_of::<autostandby_config>() as u32,
        mode: AUTOSTANDBY_MODE_KERNEL,
        netns_path: path.as_ptr(),
        rcvbuf_bytes: 0,
        max_concurrent_standbys: 0,
        resync_interval_ms: 0,
        events_sysctl: AUTOSTANDBY_EVENTS_SYSCTL_REPORT,
        manual_start_ms: 0,
        ..Default::default()
    };
    let mut raw = ptr::null_mut();
    // SAFETY: valid pointers.
    let rc = unsafe { autostandby_controller_new(&cfg, &mut raw, ptr::null_mut()) };
    assert_eq!(rc, AUTOSTANDBY_OK, "kernel controller");
    let h = Handle(raw);
    let t = Instant::now();
    for key in 0..instances {
        c_register(&h, key, base + key * spread_ms / instances);
    }
    let register_ms = t.elapsed().as_millis();
    let deadlines = deadlines_after_first_dump(instances, |key| {
        let st = c_status(&h, key);
        st.has_next_standby_at.then_some(st.next_standby_at_ms)
    });
    let late = collect_latencies(
        instances,
        &deadlines,
        Duration::from_millis(base + spread_ms + 60_000),
        |keys| {
            let mut out = [autostandby_decision::default(); 64];
            let mut n = 0usize;
            // SAFETY: valid pointers.
            let rc = unsafe {
                autostandby_poll_decisions(
                    h.0,
                    out.as_mut_ptr(),
                    64,
                    &mut n,
                    1_000,
                    ptr::null_mut(),
                )
            };
            assert_eq!(rc, AUTOSTANDBY_OK);
            keys.extend(
                out[..n]
                    .iter()
                    .filter(|d| d.kind == AUTOSTANDBY_DECISION_STANDBY)
                    .map(|d| d.key),
            );
        },
        |key| {
            let (mut proceed, mut reason) = (false, 0u32);
            // SAFETY: valid pointers.
            unsafe {
                autostandby_begin_standby(h.0, key, &mut proceed, &mut reason, ptr::null_mut());
                if proceed {
                    autostandby_report_standby(
                        h.0,
                        key,
                        AUTOSTANDBY_OUTCOME_SUCCESS,
                        ptr::null_mut(),
                    );
                }
            }
        },
    );
    (late, deadlines, register_ms)
}

/// Each instance's deadline, read once it has one: in kernel mode a countdown starts
/// when the first dump of the instance's address has been applied.
fn deadlines_after_first_dump(instances: u64, deadline: impl Fn(u64) -> Option<u64>) -> Vec<u64> {
    (0..instances)
        .map(|key| {
            let until = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(at) = deadline(key) {
                    return at;
                }
                assert!(Instant::now() < until, "instance {key} has no deadline");
                std::thread::sleep(Duration::from_millis(1));
            }
        })
        .collect()
}

/// Kernel mode through the Rust API without the confirm dump: the controller's own
/// machinery (engine loop timer, decision queue, blocked poller).
fn run_machinery(ns: &Netns, instances: u64, spread_ms: u64, base: u64) -> Vec<i64> {
    let mut cfg = ControllerConfig::kernel();
    cfg.netns = Some(format!("/run/netns/{}", ns.0).into());
    cfg.confirm_before_standby = false;
    let ctl = Controller::new(cfg).expect("kernel controller");
    for key in 0..instances {
        ctl.register(key, spec(key, base + key * spread_ms / instances))
            .expect("register");
    }
    let deadlines =
        deadlines_after_first_dump(instances, |key| ctl.status(key).unwrap().next_standby_at);
    let mut decisions = Vec::new();
    collect_latencies(
        instances,
        &deadlines,
        Duration::from_millis(base + spread_ms + 60_000),
        |keys| {
            decisions.clear();
            ctl.poll_decisions(&mut decisions, 64, Duration::from_secs(1))
                .unwrap();
            keys.extend(decisions.iter().filter_map(|d| match d {
                Decision::Standby { key } => Some(*key),
                _ => None,
            }));
        },
        |key| {
            if ctl.begin_standby(key).unwrap() == BeginStandby::Proceed {
                ctl.report_standby(key, StandbyOutcome::Success).unwrap();
            }
        },
    )
}

fn bench_standby_latency(instances: u64, spread_ms: u64) {
    assert!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "the kernel-mode benchmark must run as root (network namespaces, conntrack)"
    );
    let ns_c = Netns::create("c");
    let ns_m = Netns::create("m");
    let base = 2_000;
    // The peer: one thread sleeping until deadlines of the same spread, in turn.
    let peer = || {
        let start_ms = now_us() / 1000 + base as i64;
        (0..instances)
            .map(|i| {
                let d_us = (start_ms + (i * spread_ms / instances) as i64) * 1000;
                let wait = d_us - now_us();
                if wait > 0 {
                    std::thread::sleep(Duration::from_micros(wait as u64));
                }
                now_us() - d_us
            })
            .collect::<Vec<_>>()
    };
    // Each run beside its own peer, so both see the same load.
    let (machinery, peer_m) = std::thread::scope(|s| {
        let p = s.spawn(peer);
        let machinery = run_machinery(&ns_m, instances, spread_ms, base);
        (machinery, p.join().unwrap())
    });
    let (late, peer_c, register_ms) = std::thread::scope(|s| {
        let p = s.spawn(peer);
        let (late, _, register_ms) = run_c_abi(&ns_c, instances, spread_ms, base);
        (late, p.join().unwrap(), register_ms)
    });
    let goal = |v: &[i64]| if p99_us(v) <= 5_000 { "met" } else { "MISSED" };
    let ratio = |a: &[i64], b: &[i64]| p99_us(a).max(1) as f64 / p99_us(b).max(1) as f64;

    println!(
        "controller/standby_latency machinery (kernel mode, no confirm dump, {instances} instances over {spread_ms} ms): {}; goal p99 <= 5 ms: {}",
        summary(machinery.clone()),
        goal(&machinery)
    );
    println!(
        "controller/standby_latency   its peer (a thread sleeping until each deadline of the same spread): {}; p99 ratio {:.2}",
        summary(peer_m.clone()),
        ratio(&machinery, &peer_m)
    );
    println!(
        "controller/standby_latency end-to-end (kernel mode via the C ABI, confirm dump on, asked {} ms ahead, registered in {register_ms} ms): {}; goal p99 <= 5 ms: {}",
        ControllerConfig::kernel().confirm_lead_ms,
        summary(late.clone()),
        goal(&late)
    );
    println!(
        "controller/standby_latency   its peer (a thread sleeping until each deadline of the same spread): {}; p99 ratio {:.2}",
        summary(peer_c.clone()),
        ratio(&late, &peer_c)
    );
}

fn main() {
    // `cargo test --all-targets` runs this binary without `--bench`: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("controller benchmarks: run with `cargo bench --bench controller` (as root)");
        return;
    }
    let instances = env_or("AS_BENCH_INSTANCES", 10_000);
    let spread_ms = env_or("AS_BENCH_SPREAD_MS", 60_000);
    bench_status(instances);
    bench_standby_latency(instances, spread_ms);
}
