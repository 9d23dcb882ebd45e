//! A small driver for counting instructions per flow event under callgrind.
//!
//! Builds the benchmark's table (10,000 instances, `FLOWS` tracked flows, default
//! 1,000,000), warms it with one cycle of the event ring through `on_flow_event`, then
//! applies `ROUNDS` cycles (default 1) through `on_flow_events` in batches of 256. The
//! instructions per event are `on_flow_events`' inclusive cost divided by the event
//! count it prints:
//!
//! ```text
//! cargo build --release --example engine_event_profile
//! valgrind --tool=callgrind --callgrind-out-file=cg.out \
//!     target/release/examples/engine_event_profile
//! callgrind_annotate --inclusive=yes cg.out | grep 'Engine::on_flow_events'
//! ```
//!
//! The stream is the one `benches/engine.rs` measures: DESTROY, NEW, UPDATE of a
//! replaced flow and an UPDATE without protoinfo of a long-lived one.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use autostandby::engine::{Decision, Engine, EngineConfig, InstanceSpec, Lifecycle};
use autostandby::flow::{EventKind, Flow, FlowEvent, TcpState, Tuple, proto};
use autostandby::policy::Policy;

const INSTANCES: u32 = 10_000;
const T0: u64 = 1_780_000_000_000;

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn guest(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

fn flow(n: u32, generation: u32, state: Option<TcpState>) -> Flow {
    let client = IpAddr::V4(Ipv4Addr::from(0x6440_0000 + (n / INSTANCES)));
    let port = 1024 + (n % 50_000) as u16 + (generation as u16) * 7;
    let g = guest(n % INSTANCES);
    Flow {
        protocol: proto::TCP,
        orig: Tuple::new(client, port, g, 443),
        reply: Tuple::new(g, 443, client, port),
        zone: 0,
        id: n.wrapping_mul(2_654_435_761) ^ (generation << 31),
        tcp_state: state,
        status: 0,
        mark: 0,
    }
}

fn ev(kind: EventKind, flow: Flow) -> FlowEvent {
    FlowEvent { kind, flow }
}

fn ring(flows: u32, churn: u32) -> Vec<FlowEvent> {
    let mut v = Vec::with_capacity(8 * churn as usize);
    let mut x: u32 = 12345;
    for (old, new) in [(0, 1), (1, 0)] {
        for i in 0..churn {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let other = churn + x % (flows - churn);
            v.push(ev(EventKind::Destroy, flow(i, old, None)));
            v.push(ev(EventKind::New, flow(i, new, Some(TcpState::SYN_SENT))));
            v.push(ev(
                EventKind::Update,
                flow(i, new, Some(TcpState::ESTABLISHED)),
            ));
            v.push(ev(EventKind::Update, flow(other, 0, None)));
        }
    }
    v
}

fn main() {
    let flows = env_u32("FLOWS", 1_000_000).max(2 * INSTANCES);
    let rounds = env_u32("ROUNDS", 1);
    let churn = (flows / 4).min(1 << 15);
    let mut e = Engine::new(EngineConfig::default());
    for i in 0..INSTANCES {
        let spec = InstanceSpec {
            addresses: vec![guest(i)],
            policy: Some(Policy {
                enabled: true,
                idle_timeout_ms: 300_000,
                ..Policy::default()
            }),
            lifecycle: Lifecycle::Running,
            network_enabled: true,
            ..InstanceSpec::default()
        };
        e.register(u64::from(i), spec, T0).expect("register");
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
    for r in 0..rounds {
        for batch in events.chunks(256) {
            e.on_flow_events(black_box(batch), T0 + 3 + u64::from(r));
        }
        sink.clear();
        e.drain_decisions(&mut sink);
    }
    assert_eq!(e.stats().tracked_flows, u64::from(flows));
    println!(
        "{} flows, {} events through on_flow_events",
        flows,
        u64::from(rounds) * events.len() as u64
    );
}
