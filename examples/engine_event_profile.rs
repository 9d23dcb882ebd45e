//! A small driver for counting instructions per flow event under callgrind.
//!
//! Builds the benchmark's table (10,000 instances, `FLOWS` tracked flows, default
//! 1,000,000), warms it with one cycle of the event ring through `on_flow_event`, then
//! applies `ROUNDS` cycles (default 1) through `on_flow_events` in batches of 256. The
//! instructions per event are `on_flow_events`' inclusive cost divided by the event
//! count it prints (with `ROUNDS` above 1 it also prints the best, median and worst
//! rate of the cycles, a quick A/B figure on a shared machine):
//!
//! ```text
//! cargo build --profile release-debug --example engine_event_profile
//! valgrind --tool=callgrind --callgrind-out-file=cg.out \
//!     target/release-debug/examples/engine_event_profile
//! callgrind_annotate --inclusive=yes cg.out | grep 'Engine::on_flow_events'
//! ```
//!
//! The stream is the one `benches/engine.rs` measures: DESTROY, NEW, UPDATE of a
//! replaced flow and an UPDATE without protoinfo of a long-lived one.

use std::hint::black_box;

use autostandby::engine::{Decision, Engine, EngineConfig};
use autostandby::flow::{EventKind, TcpState};

#[path = "../benches/support/engine_workload.rs"]
mod workload;
use workload::{INSTANCES, T0, ev, flow, ring, spec};

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let flows = env_u32("FLOWS", 1_000_000).max(2 * INSTANCES);
    let rounds = env_u32("ROUNDS", 1);
    let churn = (flows / 4).min(1 << 15);
    let mut e = Engine::new(EngineConfig::default());
    for i in 0..INSTANCES {
        e.register(u64::from(i), spec(i), T0).expect("register");
    }
    e.reserve_flows(flows as usize);
    for n in 0..flows {
        e.on_flow_event(
            &ev(EventKind::New, flow(n, 0, Some(TcpState::ESTABLISHED))),
            T0 + 1,
        );
    }
    let events = ring(flows, churn);
    for x in &events {
        e.on_flow_event(x, T0 + 2);
    }
    let mut sink: Vec<Decision> = Vec::with_capacity(1024);
    e.drain_decisions(&mut sink);
    let mut rates = Vec::with_capacity(rounds as usize);
    for r in 0..rounds {
        let t = std::time::Instant::now();
        for batch in events.chunks(256) {
            e.on_flow_events(black_box(batch), T0 + 3 + u64::from(r));
        }
        sink.clear();
        e.drain_decisions(&mut sink);
        rates.push(events.len() as f64 / t.elapsed().as_secs_f64());
    }
    if rounds > 1 {
        // Per-cycle rates: on a shared machine the best and the median tell more than
        // the mean, which other load drags down.
        rates.sort_by(f64::total_cmp);
        println!(
            "events/s per cycle (wall): best {:.0}, median {:.0}, worst {:.0}",
            rates[rates.len() - 1],
            rates[rates.len() / 2],
            rates[0]
        );
    }
    assert_eq!(e.stats().tracked_flows, u64::from(flows));
    println!(
        "{} flows, {} events through on_flow_events",
        flows,
        u64::from(rounds) * events.len() as u64
    );
}
