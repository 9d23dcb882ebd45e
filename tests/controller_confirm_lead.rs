//! Kernel mode sizes the confirmation lead from the dumps it has run. In a network
//! namespace this test creates and always removes. Needs root: fails loudly without it.

mod conntrack_support;

use std::time::{Duration, Instant};

use autostandby::controller::{Controller, ControllerConfig};
use autostandby::engine::Reason;
use conntrack_support::*;

#[test]
fn the_confirm_lead_follows_the_time_dumps_take() {
    let pair = Pair::new();
    let mut cfg = ControllerConfig::kernel();
    cfg.netns = Some(pair.b_path());
    // No configured lead: whatever the stats say comes from the dumps.
    cfg.confirm_lead_ms = 0;
    let ctl = Controller::new(cfg).expect("kernel controller");
    assert_eq!(ctl.stats().confirm_lead_ms, 0);
    ctl.register(1, running_instance(ip(SERVER), 600_000))
        .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while ctl.status(1).unwrap().reason == Reason::ResyncPending {
        assert!(Instant::now() < until, "no resync: {:?}", ctl.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    let lead = ctl.stats().confirm_lead_ms;
    // Three times a dump of at least a millisecond, rounded up to 250 ms steps.
    assert!(lead >= 250 && lead.is_multiple_of(250), "lead {lead} ms");
    assert!(lead < 60_000, "lead {lead} ms");
}
