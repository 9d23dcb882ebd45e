//! A scripted scenario, narrated: the engine decides on simulated time alone.
//!
//! A VM is registered, a client connects and talks, the connection closes, the idle
//! countdown runs out, Standby is decided and carried out, and a new connection while
//! the VM is in Standby asks for it to be woken.

use std::net::IpAddr;

use autostandby::engine::{
    BeginStandby, Decision, Engine, EngineConfig, InstanceSpec, Lifecycle, StandbyOutcome,
    UnixMillis,
};
use autostandby::flow::{EventKind, Flow, FlowEvent, TcpState, Tuple, proto};
use autostandby::policy::Policy;

const T0: UnixMillis = 1_780_000_000_000;
const VM: u64 = 1;

struct Demo {
    engine: Engine,
    start: UnixMillis,
}

impl Demo {
    fn at(&self, now: UnixMillis) -> String {
        let s = (now - self.start) / 1000;
        format!("{}:{:02}", s / 60, s % 60)
    }

    fn say(&mut self, now: UnixMillis, what: &str) {
        let st = self.engine.status(VM, now).expect("registered");
        let countdown = match st.countdown_remaining_ms {
            Some(ms) => format!("standby in {:>3}s", ms / 1000),
            None => "no countdown    ".to_string(),
        };
        println!(
            "t={:>5}  {:<44} status={:<17} reason={:<26} inbound={} {}",
            self.at(now),
            what,
            st.status.as_str(),
            st.reason.as_str(),
            st.active_inbound,
            countdown
        );
        let mut decisions = Vec::new();
        self.engine.drain_decisions(&mut decisions);
        for d in decisions {
            let text = match d {
                Decision::Standby { key } => format!("Standby(vm {key})"),
                Decision::Wake { key, flow, .. } => format!(
                    "Wake(vm {key}) for {}:{} -> {}:{}",
                    flow.src, flow.src_port, flow.dst, flow.dst_port
                ),
                Decision::PersistRuntime { key, runtime } => match runtime {
                    None => format!("PersistRuntime(vm {key}: delete)"),
                    Some(rt) => format!(
                        "PersistRuntime(vm {key}: idle_since={}, last_inbound={})",
                        rt.idle_since.map_or("-".into(), |t| self.at(t)),
                        rt.last_inbound_activity_at
                            .map_or("-".into(), |t| self.at(t)),
                    ),
                },
                Decision::Confirm { key } => format!("Confirm(vm {key})"),
            };
            println!("        -> decision: {text}");
        }
    }

    fn event(&mut self, kind: EventKind, flow: Flow, now: UnixMillis) {
        self.engine.on_flow_event(&FlowEvent { kind, flow }, now);
    }
}

fn tcp(client: IpAddr, port: u16, vm: IpAddr, state: Option<TcpState>) -> Flow {
    Flow {
        protocol: proto::TCP,
        orig: Tuple::new(client, port, vm, 80),
        reply: Tuple::new(vm, 80, client, port),
        zone: 0,
        id: u32::from(port),
        tcp_state: state,
        status: 0,
        mark: 0,
        timeout_s: None,
    }
}

fn main() {
    let vm: IpAddr = "192.168.100.10".parse().unwrap();
    let client: IpAddr = "203.0.113.7".parse().unwrap();
    let policy = Policy {
        enabled: true,
        idle_timeout_ms: 60_000,
        wake_on_traffic: true,
        ..Policy::default()
    };
    let mut d = Demo {
        engine: Engine::new(EngineConfig::default()),
        start: T0,
    };
    println!("policy: idle_timeout=60s, TCP, wake_on_traffic; VM address {vm}");
    println!();

    let spec = InstanceSpec {
        addresses: vec![vm],
        policy: Some(policy),
        lifecycle: Lifecycle::Running,
        network_enabled: true,
        ..InstanceSpec::default()
    };
    d.engine.register(VM, spec, T0).unwrap();
    d.say(T0, "VM registered, running, no traffic yet");

    let mut now = T0 + 5_000;
    d.event(
        EventKind::New,
        tcp(client, 40_000, vm, Some(TcpState::SYN_SENT)),
        now,
    );
    d.say(now, "client 203.0.113.7 connects (NEW, SYN_SENT)");
    now += 100;
    d.event(
        EventKind::Update,
        tcp(client, 40_000, vm, Some(TcpState::ESTABLISHED)),
        now,
    );
    d.say(now, "handshake done (UPDATE, ESTABLISHED)");
    now += 40_000;
    d.event(EventKind::Update, tcp(client, 40_000, vm, None), now);
    d.say(now, "40s of traffic later (UPDATE, no state)");
    let mut why = Vec::new();
    d.engine.explain(VM, now, &mut why).unwrap();
    for k in &why {
        println!(
            "        kept awake by {}:{} -> {}:{} {} age {}s",
            k.orig.src,
            k.orig.src_port,
            k.orig.dst,
            k.orig.dst_port,
            k.tcp_state.map_or("?", |s| s.name()),
            k.age_ms / 1000
        );
    }
    now += 2_000;
    d.event(
        EventKind::Update,
        tcp(client, 40_000, vm, Some(TcpState::TIME_WAIT)),
        now,
    );
    d.say(now, "client closes (UPDATE, TIME_WAIT)");

    for step in [30_000, 29_000] {
        now += step;
        d.engine.tick(now);
        d.say(now, "time passes, engine ticks");
    }
    now = d.engine.next_deadline().expect("countdown armed");
    d.engine.tick(now);
    d.say(now, "countdown over: tick at the deadline");

    match d.engine.begin_standby(VM, now).unwrap() {
        BeginStandby::Proceed => d.say(now, "host: begin_standby -> Proceed (snapshot)"),
        BeginStandby::Cancelled(r) => d.say(now, &format!("host: cancelled ({})", r.as_str())),
    }
    now += 3_000;
    d.engine
        .report_standby(VM, StandbyOutcome::Success, now)
        .unwrap();
    d.say(now, "host: report_standby(Success)");

    now += 120_000;
    d.event(
        EventKind::New,
        tcp(client, 40_001, vm, Some(TcpState::SYN_SENT)),
        now,
    );
    d.say(now, "a new client connects while in Standby");
    now += 50;
    d.event(
        EventKind::New,
        tcp(client, 40_002, vm, Some(TcpState::SYN_SENT)),
        now,
    );
    d.say(now, "another one: no second Wake");
}
