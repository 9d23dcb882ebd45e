//! Engine benchmark: 10,000 instances, 1,000,000 tracked flows.
//!
//! Prints events/s on one core, heap allocations per event in steady state and bytes
//! of engine memory per tracked flow (both from a counting global allocator), next to
//! a hypeman-shaped peer run in the same process: a scan over every instance per event
//! and a `HashMap` of flows per instance.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use autostandby::engine::{Decision, Engine, EngineConfig};
use autostandby::flow::{EventKind, FlowEvent, FlowKey, TcpState};
use criterion::{Criterion, Throughput};

#[path = "support/engine_workload.rs"]
mod workload;
use workload::{INSTANCES, T0, ev, flow, guest, ring, spec};

/// Counts allocations and live bytes; forwards to the system allocator.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        LIVE.fetch_add(l.size() as u64, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as u64, Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        LIVE.fetch_add(new as u64, Relaxed);
        LIVE.fetch_sub(l.size() as u64, Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Tracked flows in the full run (`cargo bench`).
const FLOWS: u32 = 1_000_000;
/// Sizes in use: the full ones under `cargo bench`, small ones when `cargo test` runs
/// this file as a smoke test (the figures are then not meaningful, the checks are).
static FLOWS_N: AtomicU64 = AtomicU64::new(FLOWS as u64);
static CHURN_N: AtomicU64 = AtomicU64::new(CHURN as u64);

fn flows() -> u32 {
    FLOWS_N.load(Relaxed) as u32
}

fn churn() -> u32 {
    CHURN_N.load(Relaxed) as u32
}
/// Flows replaced per half of the event ring (full run).
const CHURN: u32 = 1 << 15;
/// Events per `on_flow_events` call, as an observer hands them over after one read.
const BATCH: usize = 256;

fn build_engine() -> (Engine, u64) {
    let mut e = Engine::new(EngineConfig::default());
    for i in 0..INSTANCES {
        e.register(u64::from(i), spec(i), T0).unwrap();
    }
    let mut sink: Vec<Decision> = Vec::new();
    e.drain_decisions(&mut sink);
    drop(sink);
    let before = LIVE.load(Relaxed);
    for n in 0..flows() {
        e.on_flow_event(
            &ev(EventKind::New, flow(n, 0, Some(TcpState::ESTABLISHED))),
            T0 + 1,
        );
    }
    let mut sink: Vec<Decision> = Vec::new();
    e.drain_decisions(&mut sink);
    drop(sink);
    let bytes = LIVE.load(Relaxed) - before;
    assert_eq!(e.stats().tracked_flows, u64::from(flows()));
    (e, bytes)
}

/// hypeman's shape: a list of instances scanned per event, one `HashMap` per instance.
struct Peer {
    instances: Vec<(IpAddr, HashMap<FlowKey, Option<TcpState>>)>,
}

impl Peer {
    fn apply(&mut self, e: &FlowEvent) {
        for (addr, flows) in &mut self.instances {
            if e.flow.orig.dst != *addr {
                continue;
            }
            match e.kind {
                EventKind::Destroy => {
                    flows.remove(&e.flow.key());
                }
                _ => match e.flow.tcp_state {
                    Some(s) if s.is_finished() => {
                        flows.remove(&e.flow.key());
                    }
                    s => {
                        flows.insert(e.flow.key(), s);
                    }
                },
            }
        }
    }
}

/// CPU time of the calling thread: the figure "on one core" means, whatever else the
/// machine is running.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

struct Figures {
    events_per_s: f64,
    /// Per-round rates of the batched run, sorted: the spread other load causes.
    round_rates: Vec<f64>,
    single_events_per_s: f64,
    events_per_wall_s: f64,
    peer_events_per_wall_s: f64,
    allocs_per_event: f64,
    bytes_per_flow: f64,
    peer_events_per_s: f64,
    peer_bytes_per_flow: f64,
}

fn measure() -> Figures {
    let (mut e, bytes) = build_engine();
    let events = ring(flows(), churn());
    // Warm up: one full cycle, so every buffer has reached its steady size.
    for x in &events {
        e.on_flow_event(x, T0 + 2);
    }
    let mut sink = Vec::with_capacity(1024);
    e.drain_decisions(&mut sink);
    let rounds = 8;
    let mut round_rates = Vec::with_capacity(rounds as usize);
    let a0 = ALLOCS.load(Relaxed);
    let t = Instant::now();
    let c = thread_cpu();
    for r in 0..rounds {
        let rc = thread_cpu();
        for batch in events.chunks(BATCH) {
            e.on_flow_events(black_box(batch), T0 + 3 + r);
        }
        sink.clear();
        e.drain_decisions(&mut sink);
        round_rates.push(events.len() as f64 / (thread_cpu() - rc).as_secs_f64());
    }
    let dt = thread_cpu() - c;
    round_rates.sort_by(f64::total_cmp);
    let wall = t.elapsed();
    let allocs = ALLOCS.load(Relaxed) - a0;
    let n = (rounds as usize * events.len()) as f64;
    // The same stream, one call per event.
    let c = thread_cpu();
    for r in 0..2 {
        for x in &events {
            e.on_flow_event(black_box(x), T0 + 20 + r);
        }
        sink.clear();
        e.drain_decisions(&mut sink);
    }
    let single_dt = thread_cpu() - c;
    let single = (2 * events.len()) as f64 / single_dt.as_secs_f64();
    assert_eq!(e.stats().tracked_flows, u64::from(flows()));

    // The peer: memory per flow on 100,000 flows, speed on a slice of the ring.
    let peer_flows = 100_000u32.min(flows());
    let before = LIVE.load(Relaxed);
    let mut peer = Peer {
        instances: (0..INSTANCES).map(|i| (guest(i), HashMap::new())).collect(),
    };
    for n in 0..peer_flows {
        peer.apply(&ev(EventKind::New, flow(n, 0, Some(TcpState::ESTABLISHED))));
    }
    let peer_bytes = (LIVE.load(Relaxed) - before) as f64 / f64::from(peer_flows);
    let slice = &events[..20_000.min(events.len())];
    let t = Instant::now();
    let c = thread_cpu();
    for x in slice {
        peer.apply(black_box(x));
    }
    let peer_dt = thread_cpu() - c;
    let peer_wall = t.elapsed();
    Figures {
        events_per_s: n / dt.as_secs_f64(),
        round_rates,
        single_events_per_s: single,
        events_per_wall_s: n / wall.as_secs_f64(),
        peer_events_per_wall_s: slice.len() as f64 / peer_wall.as_secs_f64(),
        allocs_per_event: allocs as f64 / n,
        bytes_per_flow: bytes as f64 / f64::from(flows()),
        peer_events_per_s: slice.len() as f64 / peer_dt.as_secs_f64(),
        peer_bytes_per_flow: peer_bytes,
    }
}

fn criterion_run(e: &mut Engine, events: &[FlowEvent]) {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(events.len() as u64));
    let mut now = T0 + 10;
    let mut sink = Vec::with_capacity(1024);
    g.bench_function("apply_event_ring_10k_instances_1m_flows", |b| {
        b.iter(|| {
            now += 1;
            for batch in events.chunks(BATCH) {
                e.on_flow_events(black_box(batch), now);
            }
            sink.clear();
            e.drain_decisions(&mut sink);
        })
    });
    g.finish();
    c.final_summary();
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    if !full {
        FLOWS_N.store(20_000, Relaxed);
        CHURN_N.store(1_024, Relaxed);
    } else if let Some(n) = std::env::var("AUTOSTANDBY_BENCH_FLOWS")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        // A smaller table, to tell cache misses from computation.
        FLOWS_N.store(u64::from(n.max(2 * CHURN)), Relaxed);
    }
    let f = measure();
    assert_eq!(
        f.allocs_per_event, 0.0,
        "steady-state events must not allocate"
    );
    if full {
        let (mut e, _) = build_engine();
        let events = ring(flows(), churn());
        criterion_run(&mut e, &events);
    } else {
        println!("smoke run (cargo test): sizes reduced, figures not meaningful");
    }
    println!();
    println!(
        "== engine benchmark summary ({INSTANCES} instances, {} flows) ==",
        flows()
    );
    let thp = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.hugetlb=1"));
    println!(
        "heap: {}",
        if thp {
            "transparent huge pages via GLIBC_TUNABLES=glibc.malloc.hugetlb=1"
        } else {
            "4 KiB pages (set GLIBC_TUNABLES=glibc.malloc.hugetlb=1 for huge pages)"
        }
    );
    println!(
        "flow events/s (CPU time, batches of {BATCH}): {:>12.0}   target >= 3000000   peer {:>10.0}   ratio {:.0}x",
        f.events_per_s,
        f.peer_events_per_s,
        f.events_per_s / f.peer_events_per_s
    );
    let rr = &f.round_rates;
    println!(
        "  spread over {} rounds:    min {:.0}   median {:.0}   max {:.0}",
        rr.len(),
        rr[0],
        rr[rr.len() / 2],
        rr[rr.len() - 1]
    );
    println!(
        "  one call per event:       {:>12.0}",
        f.single_events_per_s
    );
    println!(
        "flow events/s (wall clock): {:>12.0}   (includes time the scheduler gave to other work)   peer {:>10.0}",
        f.events_per_wall_s, f.peer_events_per_wall_s
    );
    println!(
        "allocations per event:      {:>12.6}   target 0",
        f.allocs_per_event
    );
    println!(
        "engine bytes per flow:      {:>12.1}   target <= 96        peer {:>10.1}   ratio {:.2}x",
        f.bytes_per_flow,
        f.peer_bytes_per_flow,
        f.peer_bytes_per_flow / f.bytes_per_flow
    );
    if full {
        let ok = f.events_per_s >= 3e6 && f.allocs_per_event == 0.0 && f.bytes_per_flow <= 96.0;
        println!("targets met: {}", if ok { "yes" } else { "NO" });
    }
}
