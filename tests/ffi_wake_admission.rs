//! Wake admission through the C ABI (manual mode): `wake_source_cidrs` in the policy,
//! the first release's shorter policy struct, `max_concurrent_restores` in the config,
//! the suppressed-wake and restore-queue counters, and `AUTOSTANDBY_WAKE_DECLINED`.

mod ffi_util;

use std::mem::{offset_of, size_of};

use autostandby::ffi::*;
use ffi_util::*;

fn cidr(text: &str, prefix_len: u8) -> autostandby_cidr {
    autostandby_cidr {
        ip: ip(text),
        prefix_len,
    }
}

fn standby(addrs: &[autostandby_ip], pol: &autostandby_policy) -> autostandby_instance {
    let mut inst = instance(addrs, pol);
    inst.lifecycle = AUTOSTANDBY_LIFECYCLE_STANDBY;
    inst
}

fn register(h: &Handle, key: u64, inst: &autostandby_instance) {
    let mut e = err();
    // SAFETY: valid pointers.
    let rc = unsafe { autostandby_register(h.0, key, inst, &mut e) };
    assert_eq!(rc, AUTOSTANDBY_OK, "register: {}", msg(&e));
}

fn syn(h: &Handle, client: &str, cport: u16, guest: &str) {
    let ev = tcp_event(
        AUTOSTANDBY_FLOW_NEW,
        client,
        cport,
        guest,
        80,
        u32::from(cport),
        Some(1),
    );
    let mut e = err();
    // SAFETY: valid pointers.
    let rc = unsafe { autostandby_ingest(h.0, &ev, 1, &mut e) };
    assert_eq!(rc, AUTOSTANDBY_OK, "ingest: {}", msg(&e));
}

fn stats(h: &Handle) -> autostandby_stats {
    let mut s = stats_out();
    let mut e = err();
    // SAFETY: valid pointers.
    let rc = unsafe { autostandby_stats(h.0, &mut s, &mut e) };
    assert_eq!(rc, AUTOSTANDBY_OK, "stats: {}", msg(&e));
    s
}

fn wakes(h: &Handle) -> Vec<u64> {
    poll(h)
        .into_iter()
        .filter(|d| d.kind == AUTOSTANDBY_DECISION_WAKE)
        .map(|d| d.key)
        .collect()
}

#[test]
fn wake_sources_admit_only_their_clients() {
    let h = Handle::manual(1_000_000);
    let allowed = [cidr("203.0.113.0", 24)];
    let mut pol = policy(60_000);
    pol.wake_on_traffic = true;
    pol.wake_source_cidrs = allowed.as_ptr();
    pol.wake_source_cidrs_len = allowed.len();
    let addrs = [ip("10.0.0.2")];
    register(&h, 1, &standby(&addrs, &pol));
    syn(&h, "198.51.100.1", 1000, "10.0.0.2");
    assert!(wakes(&h).is_empty());
    let s = stats(&h);
    assert_eq!(s.wakes_suppressed_source_not_allowed, 1);
    assert_eq!(s.wake_decisions, 0);
    syn(&h, "203.0.113.7", 1001, "10.0.0.2");
    assert_eq!(wakes(&h), vec![1]);
    assert_eq!(stats(&h).restores_in_flight, 1);
}

#[test]
fn a_bad_wake_cidr_is_refused_with_its_field_name() {
    let h = Handle::manual(1_000_000);
    let bad = [cidr("203.0.113.0", 33)];
    let mut pol = policy(60_000);
    pol.wake_source_cidrs = bad.as_ptr();
    pol.wake_source_cidrs_len = bad.len();
    let addrs = [ip("10.0.0.2")];
    let inst = standby(&addrs, &pol);
    let mut e = err();
    // SAFETY: valid pointers.
    let rc = unsafe { autostandby_register(h.0, 1, &inst, &mut e) };
    assert_eq!(rc, AUTOSTANDBY_ERR_INVALID_POLICY);
    assert_eq!(
        msg(&e),
        "wake_source_cidrs: wake_source_cidrs contains invalid CIDR 203.0.113.0/33"
    );
}

#[test]
fn the_first_releases_policy_struct_is_still_accepted() {
    let h = Handle::manual(1_000_000);
    let mut pol = policy(60_000);
    pol.wake_on_traffic = true;
    pol.struct_size = (offset_of!(autostandby_policy, min_uptime_ms) + size_of::<u64>()) as u32;
    // Garbage past the old end must not be read.
    pol.wake_source_cidrs = std::ptr::dangling();
    pol.wake_source_cidrs_len = 99;
    let addrs = [ip("10.0.0.2")];
    register(&h, 1, &standby(&addrs, &pol));
    syn(&h, "198.51.100.1", 1000, "10.0.0.2");
    assert_eq!(wakes(&h), vec![1]);
    pol.struct_size -= 1;
    let inst = standby(&addrs, &pol);
    let mut e = err();
    // SAFETY: valid pointers.
    let rc = unsafe { autostandby_update(h.0, 1, &inst, &mut e) };
    assert_eq!(rc, AUTOSTANDBY_ERR_STRUCT_SIZE, "{}", msg(&e));
}

#[test]
fn restores_wait_for_a_slot_and_a_declined_one_frees_it() {
    let mut cfg = manual_config(1_000_000);
    cfg.max_concurrent_restores = 1;
    let h = Handle::new(&cfg);
    let mut pol = policy(60_000);
    pol.wake_on_traffic = true;
    let a = [ip("10.0.0.2")];
    let b = [ip("10.0.0.3")];
    register(&h, 1, &standby(&a, &pol));
    register(&h, 2, &standby(&b, &pol));
    syn(&h, "198.51.100.1", 1000, "10.0.0.2");
    syn(&h, "198.51.100.1", 1001, "10.0.0.3");
    assert_eq!(wakes(&h), vec![1]);
    let s = stats(&h);
    assert_eq!((s.restores_in_flight, s.restores_queued), (1, 1));
    let mut e = err();
    // SAFETY: valid pointers.
    let rc = unsafe { autostandby_report_wake(h.0, 1, AUTOSTANDBY_WAKE_DECLINED, &mut e) };
    assert_eq!(rc, AUTOSTANDBY_OK, "{}", msg(&e));
    assert_eq!(wakes(&h), vec![2]);
    // SAFETY: valid pointers.
    let rc = unsafe { autostandby_report_wake(h.0, 2, 3, &mut e) };
    assert_eq!(rc, AUTOSTANDBY_ERR_INVALID_ARGUMENT);
}
