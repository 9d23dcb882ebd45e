//! With `net.netfilter.nf_conntrack_events=0` in the observed namespace, a new
//! connection sends no event, so idleness can never be trusted: the controller must say
//! so and decide no standby until events flow again. In network namespaces this test
//! creates and always removes. Needs root: fails loudly without it.

mod conntrack_support;

use std::time::{Duration, Instant};

use autostandby::controller::{Controller, ControllerConfig};
use autostandby::engine::{Decision, Reason, Status};
use conntrack_support::*;

const IDLE_MS: u64 = 1_500;

fn standbys(ctl: &Controller, wait: Duration) -> Vec<u64> {
    let mut out = Vec::new();
    ctl.poll_decisions(&mut out, 64, wait).unwrap();
    out.iter()
        .filter_map(|d| match d {
            Decision::Standby { key } => Some(*key),
            _ => None,
        })
        .collect()
}

#[test]
fn events_off_keeps_every_instance_awake_until_they_are_on_again() {
    let pair = Pair::new();
    pair.sysctl_b("net.netfilter.nf_conntrack_events", "0");

    let mut cfg = ControllerConfig::kernel();
    cfg.netns = Some(pair.b_path());
    cfg.resync_interval_ms = 300;
    let ctl = Controller::new(cfg).expect("kernel controller");
    ctl.register(1, running_instance(ip(SERVER), IDLE_MS))
        .unwrap();

    // Several idle timeouts pass: no standby, and the status says why.
    let until = Instant::now() + Duration::from_millis(4 * IDLE_MS);
    while Instant::now() < until {
        assert_eq!(
            standbys(&ctl, Duration::from_millis(100)),
            Vec::<u64>::new(),
            "standby decided with conntrack events off"
        );
    }
    let st = ctl.status(1).unwrap();
    assert_eq!(
        (st.status, st.reason),
        (Status::Error, Reason::ConntrackEventsOff),
        "{st:?}"
    );
    let stats = ctl.stats();
    assert!(
        stats.conntrack_events_off && stats.observer_failed,
        "{stats:?}"
    );
    let mut logs = Vec::new();
    ctl.drain_logs(&mut logs, 1024);
    assert!(
        logs.iter()
            .any(|r| r.message.contains("nf_conntrack_events=0")),
        "{logs:?}"
    );

    // Events on again (2: the library's socket is a listener): resync, then resume.
    pair.sysctl_b("net.netfilter.nf_conntrack_events", "2");
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if standbys(&ctl, Duration::from_millis(100)) == vec![1] {
            break;
        }
        assert!(
            Instant::now() < until,
            "no standby after events came back: {:?}",
            ctl.status(1)
        );
    }
    assert!(!ctl.stats().conntrack_events_off);
}
