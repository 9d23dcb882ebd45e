//! A kernel-mode controller whose host wall clock is stepped (NTP, an operator setting
//! the time): countdowns run on monotonic time, so a step forward fires none early and a
//! step back postpones none, while the timestamps the host sees and stores (status,
//! `PersistRuntime`, a persisted countdown given back at registration) stay wall times.
//! In network namespaces this test creates and always removes. Needs root: fails loudly
//! without it.

mod conntrack_support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use autostandby::controller::{Controller, ControllerConfig};
use autostandby::engine::{
    BeginStandby, Decision, Reason, Runtime, StandbyOutcome, Status, UnixMillis,
};
use conntrack_support::*;

const IDLE_MS: u64 = 3_000;
const HOUR_MS: i64 = 3_600_000;

fn wall_ms() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn near(a: UnixMillis, b: UnixMillis, within: u64) -> bool {
    a.abs_diff(b) <= within
}

fn controller(pair: &Pair) -> Controller {
    let mut cfg = ControllerConfig::kernel();
    cfg.netns = Some(pair.b_path());
    cfg.resync_interval_ms = 600_000;
    Controller::new(cfg).expect("kernel controller")
}

/// Waits until `key` counts down, and returns its status then.
fn counting_down(ctl: &Controller, key: u64) -> autostandby::engine::StatusSnapshot {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let s = ctl.status(key).unwrap();
        if s.status == Status::IdleCountdown && s.reason == Reason::IdleTimeoutNotElapsed {
            return s;
        }
        assert!(Instant::now() < until, "no countdown: {s:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls until a decision matching `want` arrives; panics after `within`.
fn wait_for(
    ctl: &Controller,
    within: Duration,
    want: impl Fn(&Decision) -> bool,
) -> (Decision, Instant) {
    let until = Instant::now() + within;
    let mut out = Vec::new();
    loop {
        out.clear();
        ctl.poll_decisions(&mut out, 64, Duration::from_millis(20))
            .unwrap();
        if let Some(d) = out.iter().find(|d| want(d)) {
            return (*d, Instant::now());
        }
        assert!(
            Instant::now() < until,
            "no such decision within {within:?}: {:?}",
            ctl.status(1)
        );
    }
}

fn is_standby(d: &Decision) -> bool {
    matches!(d, Decision::Standby { .. })
}

#[test]
fn a_step_forward_fires_no_countdown_early_and_persists_wall_times() {
    let pair = Pair::new();
    let ctl = controller(&pair);
    ctl.register(1, running_instance(ip(SERVER), IDLE_MS))
        .unwrap();
    let registered = Instant::now();
    let before = counting_down(&ctl, 1);

    ctl.step_wall_clock_for_test(HOUR_MS).unwrap();
    let after = ctl.status(1).unwrap();
    assert_eq!(after.status, Status::IdleCountdown, "{after:?}");
    let shifted = |t: Option<UnixMillis>| t.map(|t| t + HOUR_MS as u64);
    assert!(
        near(
            after.next_standby_at.unwrap(),
            shifted(before.next_standby_at).unwrap(),
            50
        ),
        "deadline not shown in the new wall time: {before:?} then {after:?}"
    );
    assert!(near(
        after.idle_since.unwrap(),
        shifted(before.idle_since).unwrap(),
        50
    ));
    assert!(near(ctl.now(), wall_ms() + HOUR_MS as u64, 50));

    let (_, at) = wait_for(&ctl, Duration::from_secs(10), is_standby);
    let waited = at - registered;
    assert!(
        waited >= Duration::from_millis(IDLE_MS - 100),
        "standby {waited:?} after registering, idle timeout {IDLE_MS} ms"
    );

    // A failed standby starts a new countdown from now, which the host persists: in the
    // stepped wall time, as the host's own clock reads it.
    assert_eq!(ctl.begin_standby(1).unwrap(), BeginStandby::Proceed);
    ctl.report_standby(1, StandbyOutcome::Failed).unwrap();
    let (d, _) = wait_for(&ctl, Duration::from_secs(2), |d| {
        matches!(
            d,
            Decision::PersistRuntime {
                runtime: Some(Runtime {
                    idle_since: Some(_),
                    ..
                }),
                ..
            }
        )
    });
    let Decision::PersistRuntime {
        runtime: Some(Runtime {
            idle_since: Some(idle_since),
            ..
        }),
        ..
    } = d
    else {
        unreachable!()
    };
    let wall = wall_ms() + HOUR_MS as u64;
    assert!(
        near(idle_since, wall, 1_000),
        "persisted idle_since {idle_since} is not the wall time {wall}"
    );
}

#[test]
fn a_step_back_postpones_no_countdown_and_reads_persisted_wall_times() {
    let pair = Pair::new();
    let ctl = controller(&pair);
    ctl.register(1, running_instance(ip(SERVER), IDLE_MS))
        .unwrap();
    let registered = Instant::now();
    counting_down(&ctl, 1);

    ctl.step_wall_clock_for_test(-HOUR_MS).unwrap();
    let (_, at) = wait_for(&ctl, Duration::from_secs(10), is_standby);
    let waited = at - registered;
    assert!(
        waited < Duration::from_millis(IDLE_MS + 2_000),
        "standby only {waited:?} after registering, idle timeout {IDLE_MS} ms"
    );

    // A host restarting after the step gives back a countdown it persisted in its (now
    // stepped) wall time, 1 s from its end: it ends about a second later.
    let mut spec = running_instance(ip(OTHER), IDLE_MS);
    let wall = wall_ms() - HOUR_MS as u64;
    spec.runtime.idle_since = Some(wall - (IDLE_MS - 1_000));
    ctl.register(2, spec).unwrap();
    let resumed = Instant::now();
    let s = counting_down(&ctl, 2);
    assert!(
        near(s.idle_since.unwrap(), wall - (IDLE_MS - 1_000), 50),
        "persisted idle_since not kept as a wall time: {s:?}"
    );
    let (_, at) = wait_for(&ctl, Duration::from_secs(10), |d| {
        matches!(d, Decision::Standby { key: 2 })
    });
    assert!(
        at - resumed < Duration::from_millis(2_500),
        "resumed countdown took {:?}",
        at - resumed
    );
}
