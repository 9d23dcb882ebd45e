//! The engine benchmark's workload, shared by `benches/engine.rs` and
//! `examples/engine_event_profile.rs` so both measure the same stream.

use std::net::{IpAddr, Ipv4Addr};

use autostandby::engine::{InstanceSpec, Lifecycle};
use autostandby::flow::{EventKind, Flow, FlowEvent, TcpState, Tuple, proto};
use autostandby::policy::Policy;

/// Registered instances.
pub const INSTANCES: u32 = 10_000;
/// The workload's start time.
pub const T0: u64 = 1_780_000_000_000;

/// The address of guest `i`.
pub fn guest(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

/// Flow `n`: a client from 100.64/10 to guest `n % INSTANCES`, port 443. `generation`
/// varies the client port and id so a replacement flow differs from the one it replaces.
pub fn flow(n: u32, generation: u32, state: Option<TcpState>) -> Flow {
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
        timeout_s: None,
    }
}

/// An event of `kind` for `flow`.
pub fn ev(kind: EventKind, flow: Flow) -> FlowEvent {
    FlowEvent { kind, flow }
}

/// A running instance with a 5-minute policy.
pub fn spec(i: u32) -> InstanceSpec {
    InstanceSpec {
        addresses: vec![guest(i)],
        policy: Some(Policy {
            enabled: true,
            idle_timeout_ms: 300_000,
            ..Policy::default()
        }),
        lifecycle: Lifecycle::Running,
        network_enabled: true,
        ..InstanceSpec::default()
    }
}

/// A cyclic event stream that keeps the table at `flows`: the first half replaces flows
/// `0..churn` (generation 0) by generation 1, the second half swaps them back. Each
/// step: DESTROY old, NEW replacement (SYN_SENT), UPDATE it (ESTABLISHED), and an UPDATE
/// without protoinfo for a pseudo-random long-lived flow.
pub fn ring(flows: u32, churn: u32) -> Vec<FlowEvent> {
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
