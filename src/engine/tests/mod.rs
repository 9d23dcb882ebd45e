//! Engine tests, by topic. Times are Unix milliseconds; `T0` is an arbitrary instant.

mod classification;
mod countdown;
mod expiry;
mod features;
mod filtered;
mod first_resync;
mod holds;
mod model;
mod recommend;
mod resync;
mod standby;
mod wake_admission;

use std::net::IpAddr;

use super::*;
use crate::flow::{EventKind, Flow, FlowEvent, TcpState, Tuple, proto};
use crate::policy::Policy;

pub(super) const T0: UnixMillis = 1_780_000_000_000;
pub(super) const SEC: u64 = 1_000;
pub(super) const MIN: u64 = 60_000;

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

pub(super) fn guest() -> IpAddr {
    ip("192.168.100.10")
}

pub(super) fn policy(timeout_ms: u64) -> Policy {
    Policy {
        enabled: true,
        idle_timeout_ms: timeout_ms,
        ..Policy::default()
    }
}

pub(super) fn spec_with(addr: IpAddr, p: Policy) -> InstanceSpec {
    InstanceSpec {
        addresses: vec![addr],
        policy: Some(p),
        lifecycle: Lifecycle::Running,
        network_enabled: true,
        has_vgpu: false,
        runtime: Runtime::default(),
    }
}

pub(super) fn spec(timeout_ms: u64) -> InstanceSpec {
    spec_with(guest(), policy(timeout_ms))
}

/// A direct (un-NATed) flow from `client:cport` to `server:sport`.
pub(super) fn flow(
    protocol: u8,
    client: IpAddr,
    cport: u16,
    server: IpAddr,
    sport: u16,
    state: Option<TcpState>,
    id: u32,
) -> Flow {
    Flow {
        protocol,
        orig: Tuple::new(client, cport, server, sport),
        reply: Tuple::new(server, sport, client, cport),
        zone: 0,
        id,
        tcp_state: state,
        status: 0,
        mark: 0,
        timeout_s: None,
    }
}

/// An inbound TCP flow to the default guest's port 80 from 203.0.113.7:`cport`.
pub(super) fn inbound(cport: u16, state: Option<TcpState>) -> Flow {
    flow(
        proto::TCP,
        ip("203.0.113.7"),
        cport,
        guest(),
        80,
        state,
        u32::from(cport),
    )
}

pub(super) fn ev(kind: EventKind, flow: Flow) -> FlowEvent {
    FlowEvent { kind, flow }
}

/// An engine plus the decisions it has emitted so far.
pub(super) struct H {
    pub e: Engine,
    pub out: Vec<Decision>,
}

impl H {
    pub fn new() -> Self {
        Self::with(EngineConfig::default())
    }

    pub fn with(config: EngineConfig) -> Self {
        Self {
            e: Engine::new(config),
            out: Vec::new(),
        }
    }

    pub fn reg(&mut self, key: InstanceKey, spec: InstanceSpec, now: UnixMillis) {
        self.e.register(key, spec, now).expect("register");
    }

    pub fn new_flow(&mut self, f: Flow, now: UnixMillis) {
        self.e.on_flow_event(&ev(EventKind::New, f), now);
    }

    pub fn update_flow(&mut self, f: Flow, now: UnixMillis) {
        self.e.on_flow_event(&ev(EventKind::Update, f), now);
    }

    pub fn destroy(&mut self, f: Flow, now: UnixMillis) {
        self.e.on_flow_event(&ev(EventKind::Destroy, f), now);
    }

    /// Drains and returns the decisions emitted since the last call.
    pub fn drain(&mut self) -> Vec<Decision> {
        let mut v = Vec::new();
        self.e.drain_decisions(&mut v);
        self.out.extend(v.iter().copied());
        v
    }

    /// Keys of the `Standby` decisions emitted since the last drain.
    pub fn standbys(&mut self) -> Vec<InstanceKey> {
        self.drain()
            .into_iter()
            .filter_map(|d| match d {
                Decision::Standby { key } => Some(key),
                _ => None,
            })
            .collect()
    }

    /// Persisted runtimes emitted since the last drain, in order.
    pub fn persists(&mut self, key: InstanceKey) -> Vec<Option<Runtime>> {
        self.drain()
            .into_iter()
            .filter_map(|d| match d {
                Decision::PersistRuntime { key: k, runtime } if k == key => Some(runtime),
                _ => None,
            })
            .collect()
    }

    pub fn st(&self, key: InstanceKey, now: UnixMillis) -> StatusSnapshot {
        self.e.status(key, now).expect("status")
    }

    pub fn requests(&mut self) -> Vec<ObserverRequest> {
        let mut v = Vec::new();
        self.e.drain_requests(&mut v);
        v
    }

    /// Ticks, then begins and reports every standby emitted, with `outcome`.
    pub fn run_standbys(&mut self, now: UnixMillis, outcome: StandbyOutcome) -> Vec<InstanceKey> {
        self.e.tick(now);
        let keys = self.standbys();
        for &k in &keys {
            assert_eq!(self.e.begin_standby(k, now), Ok(BeginStandby::Proceed));
            self.e.report_standby(k, outcome, now).expect("report");
        }
        keys
    }
}
