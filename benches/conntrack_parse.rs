//! Parser benchmark (no root): the zero-copy walker against `netlink-packet-netfilter`
//! on the captured corpus, with a counting allocator proving the walker allocates
//! nothing. Run: `cargo bench --bench conntrack_parse`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use autostandby::conntrack::parse;
use criterion::{Criterion, Throughput};
use netlink_packet_core::NetlinkMessage;
use netlink_packet_netfilter::NetfilterMessage;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CORPUS: &[u8] = include_bytes!("../tests/data/ctnetlink-corpus.bin");

fn corpus() -> Vec<&'static [u8]> {
    let mut out = Vec::new();
    let mut rest = CORPUS;
    while rest.len() >= 4 {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        out.push(&rest[4..4 + len]);
        rest = &rest[4 + len..];
    }
    out
}

fn ours(msgs: &[&[u8]]) -> u64 {
    let mut acc = 0u64;
    for bytes in msgs {
        for m in parse::messages(bytes).flatten() {
            if let Ok(ct) = parse::parse_conntrack(&m) {
                // "Classify": finished or live, as the engine would.
                acc += u64::from(ct.flow.tcp_state.is_some_and(|s| s.is_finished()))
                    + u64::from(ct.flow.orig.dst_port);
            }
        }
    }
    acc
}

fn theirs(msgs: &[&[u8]]) -> u64 {
    let mut acc = 0u64;
    for bytes in msgs {
        if let Ok(m) = NetlinkMessage::<NetfilterMessage>::deserialize(bytes) {
            acc += u64::from(m.header.length);
        }
    }
    acc
}

/// On-CPU nanoseconds of this thread: unlike wall time, not inflated when other
/// processes compete for the cores.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn per_message(f: fn(&[&[u8]]) -> u64, msgs: &[&[u8]], rounds: u32) -> (f64, f64, f64) {
    // Reading /proc allocates: keep it outside the counted window.
    let c0 = thread_cpu_ns();
    let a0 = ALLOCS.load(Ordering::Relaxed);
    let t0 = Instant::now();
    for _ in 0..rounds {
        black_box(f(black_box(msgs)));
    }
    let wall = t0.elapsed().as_nanos() as f64;
    let a1 = ALLOCS.load(Ordering::Relaxed);
    let cpu = (thread_cpu_ns() - c0) as f64;
    let allocs = (a1 - a0) as f64;
    let n = f64::from(rounds) * msgs.len() as f64;
    (cpu / n, wall / n, allocs / n)
}

fn main() {
    let msgs = corpus();
    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("ctnetlink_parse");
    g.throughput(Throughput::Elements(msgs.len() as u64));
    g.bench_function("zero_copy", |b| b.iter(|| ours(black_box(&msgs))));
    g.bench_function("netlink_packet_netfilter", |b| {
        b.iter(|| theirs(black_box(&msgs)))
    });
    g.finish();

    // The headline table, from plain timed loops over the same corpus.
    // `cargo test --all-targets` runs this in test mode: keep it short there.
    let rounds = if std::env::args().any(|a| a == "--bench") {
        20_000
    } else {
        200
    };
    let (ours_ns, ours_wall, ours_allocs) = per_message(ours, &msgs, rounds);
    let (crate_ns, crate_wall, crate_allocs) = per_message(theirs, &msgs, rounds / 10);
    println!();
    println!(
        "parser, {} captured messages (events and dump entries)",
        msgs.len()
    );
    println!("| parser | CPU ns/message | wall ns/message | allocations/message |");
    println!("|---|---|---|---|");
    println!("| zero-copy walker | {ours_ns:.1} | {ours_wall:.1} | {ours_allocs:.3} |");
    println!(
        "| netlink-packet-netfilter 0.4 | {crate_ns:.1} | {crate_wall:.1} | {crate_allocs:.1} |"
    );
    println!(
        "ratio ours/crate time: {:.3} (target <= 150 ns/message, 0 allocations)",
        ours_ns / crate_ns
    );
    assert_eq!(ours_allocs, 0.0, "the hot-path parser must not allocate");
}
