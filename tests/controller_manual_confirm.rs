//! Manual mode with confirmation on: the engine's confirmation requests reach the host as
//! `Decision::Confirm`, and the host's answer is applied as the kernel observer's dump.

use std::net::IpAddr;
use std::time::Duration;

use autostandby::controller::{ConfirmAnswer, Controller, ControllerConfig, ControllerError};
use autostandby::engine::{
    BeginStandby, Decision, EngineError, InstanceSpec, Lifecycle, Reason, Runtime, StandbyOutcome,
    Status,
};
use autostandby::flow::{EventKind, Flow, FlowEvent, TcpState, Tuple, proto};
use autostandby::policy::Policy;

const T0: u64 = 1_700_000_000_000;
const TIMEOUT: u64 = 10_000;

fn guest() -> IpAddr {
    "10.0.0.2".parse().unwrap()
}

fn spec() -> InstanceSpec {
    InstanceSpec {
        addresses: vec![guest()],
        policy: Some(Policy {
            enabled: true,
            idle_timeout_ms: TIMEOUT,
            ..Policy::default()
        }),
        lifecycle: Lifecycle::Running,
        network_enabled: true,
        has_vgpu: false,
        runtime: Runtime::default(),
    }
}

fn established(cport: u16) -> Flow {
    let client: IpAddr = "192.0.2.10".parse().unwrap();
    Flow {
        protocol: proto::TCP,
        orig: Tuple::new(client, cport, guest(), 8080),
        reply: Tuple::new(guest(), 8080, client, cport),
        zone: 0,
        id: u32::from(cport),
        tcp_state: Some(TcpState::ESTABLISHED),
        status: 0,
        mark: 0,
        timeout_s: None,
    }
}

/// A manual controller with confirmation on and instance 1 registered at `T0`.
fn confirming_controller() -> Controller {
    let c = Controller::new(ControllerConfig {
        confirm_before_standby: true,
        ..ControllerConfig::manual(T0)
    })
    .unwrap();
    c.register(1, spec()).unwrap();
    c
}

fn poll(c: &Controller) -> Vec<Decision> {
    let mut out = Vec::new();
    c.poll_decisions(&mut out, 64, Duration::ZERO).unwrap();
    out
}

fn kinds(decisions: &[Decision]) -> Vec<&'static str> {
    decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Standby { .. } => Some("standby"),
            Decision::Confirm { .. } => Some("confirm"),
            _ => None,
        })
        .collect()
}

/// Moves the clock to the deadline: the host sees CONFIRM for 1 and no STANDBY.
fn to_deadline(c: &Controller) {
    poll(c);
    c.advance_clock(TIMEOUT).unwrap();
    assert_eq!(poll(c), vec![Decision::Confirm { key: 1 }]);
    // Not standby_requested until the confirmation has answered.
    let st = c.status(1).unwrap();
    assert_eq!(
        (st.status, st.reason),
        (Status::IdleCountdown, Reason::ConfirmPending)
    );
}

#[test]
fn manual_mode_stays_without_confirmation_by_default() {
    let c = Controller::new(ControllerConfig::manual(T0)).unwrap();
    c.register(1, spec()).unwrap();
    c.advance_clock(TIMEOUT).unwrap();
    assert_eq!(kinds(&poll(&c)), vec!["standby"]);
    assert_eq!(
        c.confirm(1, ConfirmAnswer::Flows(&[])),
        Err(ControllerError::Engine(EngineError::NoConfirmPending(1)))
    );
}

#[test]
fn an_empty_answer_lets_the_standby_proceed() {
    let c = confirming_controller();
    c.advance_clock(TIMEOUT - 1).unwrap();
    assert!(
        kinds(&poll(&c)).is_empty(),
        "a lead of 0: nothing before the deadline"
    );
    c.advance_clock(1).unwrap();
    assert_eq!(poll(&c), vec![Decision::Confirm { key: 1 }]);
    c.confirm(1, ConfirmAnswer::Flows(&[])).unwrap();
    assert_eq!(kinds(&poll(&c)), vec!["standby"]);
    assert_eq!(c.begin_standby(1), Ok(BeginStandby::Proceed));
    c.report_standby(1, StandbyOutcome::Success).unwrap();
    assert_eq!(c.status(1).unwrap().reason, Reason::InstanceNotRunning);
}

#[test]
fn an_answer_with_a_live_flow_keeps_the_instance_active() {
    let c = confirming_controller();
    to_deadline(&c);
    // The flow's NEW event never reached the host's event feed; the dump shows it.
    c.confirm(1, ConfirmAnswer::Flows(&[established(40_000)]))
        .unwrap();
    assert!(kinds(&poll(&c)).is_empty());
    let st = c.status(1).unwrap();
    assert_eq!(
        (st.status, st.reason, st.active_inbound),
        (Status::Active, Reason::ActiveInboundConnections, 1)
    );
    c.advance_clock(10 * TIMEOUT).unwrap();
    assert!(kinds(&poll(&c)).is_empty());
}

#[test]
fn an_answer_with_only_finished_flows_lets_the_standby_proceed() {
    let c = confirming_controller();
    to_deadline(&c);
    // A dump returns TIME_WAIT entries too; they do not count.
    let finished = Flow {
        tcp_state: Some(TcpState::TIME_WAIT),
        ..established(40_000)
    };
    c.confirm(1, ConfirmAnswer::Flows(&[finished])).unwrap();
    assert_eq!(kinds(&poll(&c)), vec!["standby"]);
}

#[test]
fn a_failed_answer_keeps_the_instance_awake_and_restarts_the_countdown() {
    let c = confirming_controller();
    to_deadline(&c);
    c.confirm(1, ConfirmAnswer::Failed).unwrap();
    let decisions = poll(&c);
    assert!(kinds(&decisions).is_empty());
    let now = T0 + TIMEOUT;
    assert!(decisions.contains(&Decision::PersistRuntime {
        key: 1,
        runtime: Some(Runtime {
            idle_since: Some(now),
            last_inbound_activity_at: None,
        }),
    }));
    let st = c.status(1).unwrap();
    assert_eq!(
        (st.status, st.reason),
        (Status::IdleCountdown, Reason::ConfirmFailed)
    );
    assert_eq!(st.next_standby_at, Some(now + TIMEOUT));
    assert_eq!(c.stats().observer_errors, 1);
    assert!(!c.stats().observer_failed, "the host owns observer health");
    // The next deadline asks again.
    c.advance_clock(TIMEOUT).unwrap();
    assert_eq!(poll(&c), vec![Decision::Confirm { key: 1 }]);
}

#[test]
fn a_hold_while_a_confirmation_is_pending_cancels_the_standby() {
    let c = confirming_controller();
    to_deadline(&c);
    let st = c.hold(1).unwrap();
    assert_eq!(st.reason, Reason::StandbyHeld);
    assert_eq!(
        c.confirm(1, ConfirmAnswer::Flows(&[])),
        Err(ControllerError::Engine(EngineError::NoConfirmPending(1)))
    );
    assert!(kinds(&poll(&c)).is_empty());
    // After the hold, a fresh confirmation.
    c.advance_clock(TIMEOUT - 1).unwrap();
    assert!(kinds(&poll(&c)).is_empty());
    c.advance_clock(1).unwrap();
    assert_eq!(poll(&c), vec![Decision::Confirm { key: 1 }]);
}

#[test]
fn activity_while_a_confirmation_is_pending_cancels_the_standby() {
    let c = confirming_controller();
    to_deadline(&c);
    c.ingest(&[FlowEvent {
        kind: EventKind::New,
        flow: established(40_000),
    }])
    .unwrap();
    assert_eq!(
        c.confirm(1, ConfirmAnswer::Flows(&[])),
        Err(ControllerError::Engine(EngineError::NoConfirmPending(1)))
    );
    assert!(kinds(&poll(&c)).is_empty());
    assert_eq!(c.status(1).unwrap().status, Status::Active);
}

#[test]
fn an_unanswered_confirmation_is_asked_again() {
    let c = confirming_controller();
    to_deadline(&c);
    // The engine's watchdog: one idle timeout (at least 1 s) without an answer.
    c.advance_clock(TIMEOUT - 1).unwrap();
    assert!(poll(&c).is_empty());
    c.advance_clock(1).unwrap();
    assert_eq!(poll(&c), vec![Decision::Confirm { key: 1 }]);
    // Either CONFIRM is answered by one answer; the other is then stale.
    c.confirm(1, ConfirmAnswer::Flows(&[])).unwrap();
    assert_eq!(kinds(&poll(&c)), vec!["standby"]);
    assert_eq!(
        c.confirm(1, ConfirmAnswer::Flows(&[])),
        Err(ControllerError::Engine(EngineError::NoConfirmPending(1)))
    );
    assert_eq!(c.status(1).unwrap().status, Status::StandbyRequested);
}

#[test]
fn answers_for_gone_instances_are_harmless() {
    let c = confirming_controller();
    to_deadline(&c);
    c.unregister(1).unwrap();
    assert_eq!(
        c.confirm(1, ConfirmAnswer::Failed),
        Err(ControllerError::Engine(EngineError::NotFound(1)))
    );
    assert_eq!(
        c.confirm(7, ConfirmAnswer::Flows(&[established(1)])),
        Err(ControllerError::Engine(EngineError::NotFound(7)))
    );
    assert_eq!(c.stats().engine.tracked_flows, 0);
    assert_eq!(c.stats().observer_errors, 0);
}
