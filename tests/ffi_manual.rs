//! Manual-mode scenarios through the exported C functions: the whole standby and wake
//! cycle, errors for unknown and reused keys, holds, observer failures, resyncs, logs,
//! and concurrent calls from several threads.

mod ffi_util;

use std::ffi::CStr;
use std::ptr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use autostandby::ffi::*;
use ffi_util::*;

const T0: u64 = 1_700_000_000_000;
const GUEST: &str = "10.0.0.2";
const CLIENT: &str = "192.0.2.10";

fn register(h: &Handle, key: u64, addr: &str, pol: &autostandby_policy) -> (u32, String) {
    let addrs = [ip(addr)];
    let inst = instance(&addrs, pol);
    let mut e = err();
    // SAFETY: valid pointers.
    let rc = unsafe { autostandby_register(h.0, key, &inst, &mut e) };
    (rc, msg(&e))
}

fn status(h: &Handle, key: u64) -> Result<autostandby_status, u32> {
    let mut st = status_out();
    // SAFETY: valid pointers.
    match unsafe { autostandby_status(h.0, key, &mut st, ptr::null_mut()) } {
        AUTOSTANDBY_OK => Ok(st),
        code => Err(code),
    }
}

fn ingest(h: &Handle, events: &[autostandby_flow_event]) {
    let mut e = err();
    // SAFETY: valid pointers.
    let rc = unsafe { autostandby_ingest(h.0, events.as_ptr(), events.len(), &mut e) };
    assert_eq!(rc, AUTOSTANDBY_OK, "ingest: {}", msg(&e));
}

fn advance(h: &Handle, ms: u64) {
    // SAFETY: valid handle.
    assert_eq!(
        unsafe { autostandby_advance_clock(h.0, ms, ptr::null_mut()) },
        AUTOSTANDBY_OK
    );
}

fn standbys(decisions: &[autostandby_decision]) -> Vec<u64> {
    decisions
        .iter()
        .filter(|d| d.kind == AUTOSTANDBY_DECISION_STANDBY)
        .map(|d| d.key)
        .collect()
}

fn established(cport: u16, id: u32) -> autostandby_flow_event {
    tcp_event(
        AUTOSTANDBY_FLOW_NEW,
        CLIENT,
        cport,
        GUEST,
        8080,
        id,
        Some(3),
    )
}

fn destroyed(cport: u16, id: u32) -> autostandby_flow_event {
    tcp_event(
        AUTOSTANDBY_FLOW_DESTROY,
        CLIENT,
        cport,
        GUEST,
        8080,
        id,
        None,
    )
}

#[test]
fn standby_then_wake_with_persisted_runtime() {
    let h = Handle::manual(T0);
    let mut pol = policy(10_000);
    pol.wake_on_traffic = true;
    assert_eq!(register(&h, 1, GUEST, &pol).0, AUTOSTANDBY_OK);
    let st = status(&h, 1).unwrap();
    assert_eq!(st.status, AUTOSTANDBY_STATUS_IDLE_COUNTDOWN);
    assert!(st.has_next_standby_at && st.next_standby_at_ms == T0 + 10_000);
    assert!(st.has_countdown_remaining && st.countdown_remaining_ms == 10_000);

    advance(&h, 4_000);
    ingest(&h, &[established(40_000, 1)]);
    let st = status(&h, 1).unwrap();
    assert_eq!(
        (st.status, st.reason),
        (
            AUTOSTANDBY_STATUS_ACTIVE,
            AUTOSTANDBY_REASON_ACTIVE_INBOUND_CONNECTIONS
        )
    );
    assert_eq!(st.active_inbound, 1);
    assert!(st.has_last_inbound_activity_at);

    // A long connection: no standby however long it lasts.
    advance(&h, 60_000);
    assert!(standbys(&poll(&h)).is_empty());

    ingest(&h, &[destroyed(40_000, 1)]);
    let idle_at = T0 + 64_000;
    let st = status(&h, 1).unwrap();
    assert_eq!(st.status, AUTOSTANDBY_STATUS_IDLE_COUNTDOWN);
    assert_eq!((st.has_idle_since, st.idle_since_ms), (true, idle_at));
    // The new countdown is persisted for the host.
    let persisted: Vec<_> = poll(&h)
        .into_iter()
        .filter(|d| d.kind == AUTOSTANDBY_DECISION_PERSIST_RUNTIME && d.key == 1)
        .collect();
    let last = persisted.last().expect("a PERSIST_RUNTIME decision");
    assert!(
        last.runtime_present
            && last.runtime.has_idle_since
            && last.runtime.idle_since_ms == idle_at
    );

    advance(&h, 9_999);
    assert!(standbys(&poll(&h)).is_empty());
    advance(&h, 1);
    assert_eq!(standbys(&poll(&h)), vec![1]);
    assert_eq!(
        status(&h, 1).unwrap().status,
        AUTOSTANDBY_STATUS_STANDBY_REQUESTED
    );

    let (mut proceed, mut reason) = (false, u32::MAX);
    // SAFETY: valid pointers.
    unsafe {
        assert_eq!(
            autostandby_begin_standby(h.0, 1, &mut proceed, &mut reason, ptr::null_mut()),
            AUTOSTANDBY_OK
        );
        assert!(proceed);
        assert_eq!(reason, AUTOSTANDBY_REASON_READY_FOR_STANDBY);
        // A hold while the snapshot is written is refused, as in hypeman.
        let mut st = status_out();
        assert_eq!(
            autostandby_hold(h.0, 1, &mut st, ptr::null_mut()),
            AUTOSTANDBY_ERR_STANDBY_IN_PROGRESS
        );
        assert_eq!(
            autostandby_report_standby(h.0, 1, AUTOSTANDBY_OUTCOME_SUCCESS, ptr::null_mut()),
            AUTOSTANDBY_OK
        );
        assert_eq!(
            autostandby_report_standby(h.0, 1, AUTOSTANDBY_OUTCOME_SUCCESS, ptr::null_mut()),
            AUTOSTANDBY_ERR_NO_STANDBY_OUTSTANDING
        );
    }

    // The host reports Standby; a client arrives: Wake, naming the flow.
    let addrs = [ip(GUEST)];
    let mut inst = instance(&addrs, &pol);
    inst.lifecycle = AUTOSTANDBY_LIFECYCLE_STANDBY;
    // SAFETY: valid pointers.
    assert_eq!(
        unsafe { autostandby_update(h.0, 1, &inst, ptr::null_mut()) },
        AUTOSTANDBY_OK
    );
    ingest(
        &h,
        &[tcp_event(
            AUTOSTANDBY_FLOW_NEW,
            CLIENT,
            40_001,
            GUEST,
            8080,
            2,
            Some(1),
        )],
    );
    let wakes: Vec<_> = poll(&h)
        .into_iter()
        .filter(|d| d.kind == AUTOSTANDBY_DECISION_WAKE)
        .collect();
    assert_eq!(wakes.len(), 1);
    let w = wakes[0];
    assert_eq!(
        (w.key, w.protocol, w.src_port, w.dst_port),
        (1, 6, 40_001, 8080)
    );
    assert_eq!((w.src, w.dst), (ip(CLIENT), ip(GUEST)));

    let mut s = stats_out();
    // SAFETY: valid pointers.
    assert_eq!(
        unsafe { autostandby_stats(h.0, &mut s, ptr::null_mut()) },
        AUTOSTANDBY_OK
    );
    assert_eq!(
        (s.instances, s.standby_decisions, s.wake_decisions),
        (1, 1, 1)
    );
    assert!(s.flow_events >= 3);
}

#[test]
fn unknown_reused_and_conflicting_keys() {
    let h = Handle::manual(T0);
    let pol = policy(10_000);
    assert_eq!(register(&h, 1, GUEST, &pol).0, AUTOSTANDBY_OK);
    let before = status(&h, 1).unwrap();

    let (rc, m) = register(&h, 1, "10.0.0.3", &pol);
    assert_eq!(rc, AUTOSTANDBY_ERR_ALREADY_EXISTS, "{m}");
    assert!(m.contains("instance 1"), "{m}");
    let (rc, m) = register(&h, 2, GUEST, &pol);
    assert_eq!(rc, AUTOSTANDBY_ERR_ADDRESS_IN_USE, "{m}");
    assert!(m.contains(GUEST), "{m}");
    assert_eq!(status(&h, 2), Err(AUTOSTANDBY_ERR_NOT_FOUND));
    assert_eq!(
        status(&h, 1).unwrap(),
        before,
        "failed calls change nothing"
    );

    let addrs = [ip("10.0.0.9")];
    let inst = instance(&addrs, &pol);
    let mut n = 0usize;
    let (mut proceed, mut reason) = (false, 0u32);
    let mut st = status_out();
    // SAFETY (all calls below): valid pointers.
    unsafe {
        assert_eq!(
            autostandby_update(h.0, 9, &inst, ptr::null_mut()),
            AUTOSTANDBY_ERR_NOT_FOUND
        );
        assert_eq!(
            autostandby_unregister(h.0, 9, ptr::null_mut()),
            AUTOSTANDBY_ERR_NOT_FOUND
        );
        assert_eq!(
            autostandby_hold(h.0, 9, &mut st, ptr::null_mut()),
            AUTOSTANDBY_ERR_NOT_FOUND
        );
        assert_eq!(
            autostandby_explain(h.0, 9, ptr::null_mut(), 0, &mut n, ptr::null_mut()),
            AUTOSTANDBY_ERR_NOT_FOUND
        );
        assert_eq!(
            autostandby_begin_standby(h.0, 9, &mut proceed, &mut reason, ptr::null_mut()),
            AUTOSTANDBY_ERR_NOT_FOUND
        );
        assert_eq!(
            autostandby_report_standby(h.0, 9, 0, ptr::null_mut()),
            AUTOSTANDBY_ERR_NOT_FOUND
        );
        assert_eq!(
            autostandby_begin_standby(h.0, 1, &mut proceed, &mut reason, ptr::null_mut()),
            AUTOSTANDBY_ERR_NO_STANDBY_OUTSTANDING
        );

        // A key can be reused once unregistered, and the address is free again.
        assert_eq!(
            autostandby_unregister(h.0, 1, ptr::null_mut()),
            AUTOSTANDBY_OK
        );
    }
    assert_eq!(register(&h, 2, GUEST, &pol).0, AUTOSTANDBY_OK);
    assert_eq!(register(&h, 1, "10.0.0.3", &pol).0, AUTOSTANDBY_OK);
}

#[test]
fn invalid_policies_name_the_field_and_change_nothing() {
    let h = Handle::manual(T0);
    let cidr = [autostandby_cidr {
        ip: ip("10.0.0.0"),
        prefix_len: 33,
    }];
    let mut zero = policy(0);
    zero.enabled = true;
    let mut none = policy(1_000);
    none.tcp = false;
    let mut bad_cidr = policy(1_000);
    bad_cidr.ignore_source_cidrs = cidr.as_ptr();
    bad_cidr.ignore_source_cidrs_len = 1;
    let too_long = policy(31 * 24 * 3_600_000);
    for (pol, field) in [
        (zero, "idle_timeout: "),
        (none, "protocols: "),
        (bad_cidr, "ignore_source_cidrs: "),
        (too_long, "idle_timeout: "),
    ] {
        let (rc, m) = register(&h, 1, GUEST, &pol);
        assert_eq!(rc, AUTOSTANDBY_ERR_INVALID_POLICY, "{m}");
        assert!(m.starts_with(field), "{m}");
        assert_eq!(status(&h, 1), Err(AUTOSTANDBY_ERR_NOT_FOUND));
    }
}

#[test]
fn hold_and_observer_failure_keep_an_instance_awake() {
    let h = Handle::manual(T0);
    assert_eq!(register(&h, 1, GUEST, &policy(10_000)).0, AUTOSTANDBY_OK);
    advance(&h, 5_000);
    let mut st = status_out();
    // SAFETY: valid pointers.
    assert_eq!(
        unsafe { autostandby_hold(h.0, 1, &mut st, ptr::null_mut()) },
        AUTOSTANDBY_OK
    );
    assert_eq!(st.reason, AUTOSTANDBY_REASON_STANDBY_HELD);
    assert!(st.has_hold_until && st.hold_until_ms == T0 + 15_000);
    advance(&h, 9_999);
    assert!(standbys(&poll(&h)).is_empty());
    advance(&h, 1);
    assert_eq!(standbys(&poll(&h)), vec![1]);
    let (mut proceed, mut reason) = (false, 0);
    // SAFETY: valid pointers.
    unsafe {
        assert_eq!(
            autostandby_begin_standby(h.0, 1, &mut proceed, &mut reason, ptr::null_mut()),
            AUTOSTANDBY_OK
        );
        assert_eq!(
            autostandby_report_standby(h.0, 1, AUTOSTANDBY_OUTCOME_FAILED, ptr::null_mut()),
            AUTOSTANDBY_OK
        );
    }

    // Observer down: past every deadline, no standby, and the status says why.
    let why = c"netlink socket closed";
    // SAFETY: valid pointers.
    assert_eq!(
        unsafe { autostandby_set_observer_error(h.0, why.as_ptr(), ptr::null_mut()) },
        AUTOSTANDBY_OK
    );
    advance(&h, 60_000);
    assert!(standbys(&poll(&h)).is_empty());
    assert_eq!(
        status(&h, 1).unwrap().reason,
        AUTOSTANDBY_REASON_OBSERVER_ERROR
    );
    let mut s = stats_out();
    // SAFETY: valid pointers.
    unsafe {
        assert_eq!(
            autostandby_stats(h.0, &mut s, ptr::null_mut()),
            AUTOSTANDBY_OK
        );
        assert_eq!(s.observer_errors, 1);
        // Healthy again: the standby follows (after the engine's own checks).
        assert_eq!(
            autostandby_set_observer_error(h.0, ptr::null(), ptr::null_mut()),
            AUTOSTANDBY_OK
        );
    }
    advance(&h, 10_000);
    assert_eq!(standbys(&poll(&h)), vec![1]);
}

#[test]
fn resync_replaces_the_flow_table_and_explain_reports_the_total() {
    let h = Handle::manual(T0);
    assert_eq!(register(&h, 1, GUEST, &policy(10_000)).0, AUTOSTANDBY_OK);
    ingest(
        &h,
        &[established(1, 1), established(2, 2), established(3, 3)],
    );
    let mut out = [autostandby_flow_info::default(); 1];
    let mut n = 0usize;
    // SAFETY: valid pointers, capacity 1.
    unsafe {
        assert_eq!(
            autostandby_explain(h.0, 1, out.as_mut_ptr(), 1, &mut n, ptr::null_mut()),
            AUTOSTANDBY_OK
        );
    }
    assert_eq!(n, 3, "out_len is the total, larger than the capacity");
    assert_eq!(out[0].orig_dst, ip(GUEST));
    assert_eq!(out[0].orig_dst_port, 8080);

    // A dump that holds one of the three flows.
    let table = [established(2, 2)];
    // SAFETY: valid pointers.
    assert_eq!(
        unsafe { autostandby_resync(h.0, table.as_ptr(), 1, ptr::null_mut()) },
        AUTOSTANDBY_OK
    );
    assert_eq!(status(&h, 1).unwrap().active_inbound, 1);
    // SAFETY: valid pointers.
    assert_eq!(
        unsafe { autostandby_resync(h.0, ptr::null(), 0, ptr::null_mut()) },
        AUTOSTANDBY_OK
    );
    assert_eq!(
        status(&h, 1).unwrap().status,
        AUTOSTANDBY_STATUS_IDLE_COUNTDOWN
    );
}

fn drain_messages(h: &Handle) -> Vec<String> {
    let mut recs = vec![
        autostandby_log_record {
            level: 0,
            time_ms: 0,
            target: [0; 64],
            message: [0; 512]
        };
        64
    ];
    let mut n = 0usize;
    // SAFETY: valid pointers.
    let rc = unsafe {
        autostandby_drain_logs(h.0, recs.as_mut_ptr(), recs.len(), &mut n, ptr::null_mut())
    };
    assert_eq!(rc, AUTOSTANDBY_OK);
    recs[..n]
        .iter()
        // SAFETY: the library NUL-terminates every message.
        .map(|r| {
            unsafe { CStr::from_ptr(r.message.as_ptr()) }
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

#[test]
fn each_controller_drains_only_its_own_logs() {
    let a = Handle::manual(T0);
    let b = Handle::manual(T0);
    let first = drain_messages(&a);
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].starts_with("auto-standby controller started"));
    assert_eq!(register(&b, 1, GUEST, &policy(1_000)).0, AUTOSTANDBY_OK);
    advance(&b, 1_000);
    assert!(drain_messages(&a).is_empty(), "b's records never reach a");
    assert!(!drain_messages(&b).is_empty());
    assert!(drain_messages(&b).is_empty(), "drained records are gone");
}

#[test]
fn concurrent_calls_from_several_threads() {
    let h = Arc::new(Handle::manual(T0));
    const THREADS: u64 = 6;
    const PER: u64 = 50;
    let poller = {
        let h = h.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let until = Instant::now() + Duration::from_secs(20);
            while seen.len() < 16 && Instant::now() < until {
                let mut out = [autostandby_decision::default(); 32];
                let mut n = 0usize;
                // SAFETY: valid pointers; the handle outlives the thread.
                let rc = unsafe {
                    autostandby_poll_decisions(
                        h.0,
                        out.as_mut_ptr(),
                        32,
                        &mut n,
                        200,
                        ptr::null_mut(),
                    )
                };
                assert_eq!(rc, AUTOSTANDBY_OK);
                seen.extend(standbys(&out[..n]));
            }
            seen
        })
    };
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let h = h.clone();
            std::thread::spawn(move || {
                let pol = policy(1_000);
                for i in 0..PER {
                    let key = t * 1_000 + i;
                    let addr = format!("10.{t}.{}.{}", i / 200, i % 200 + 1);
                    assert_eq!(register(&h, key, &addr, &pol).0, AUTOSTANDBY_OK);
                    let ev = tcp_event(
                        AUTOSTANDBY_FLOW_NEW,
                        CLIENT,
                        1_000 + i as u16,
                        &addr,
                        80,
                        key as u32,
                        Some(3),
                    );
                    ingest(&h, &[ev]);
                    assert_eq!(status(&h, key).unwrap().active_inbound, 1);
                    let mut s = stats_out();
                    // SAFETY: valid pointers.
                    assert_eq!(
                        unsafe { autostandby_stats(h.0, &mut s, ptr::null_mut()) },
                        AUTOSTANDBY_OK
                    );
                    let mut end = ev;
                    end.kind = AUTOSTANDBY_FLOW_DESTROY;
                    ingest(&h, &[end]);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    advance(&h, 1_000);
    let mut seen = poller.join().unwrap();
    seen.sort_unstable();
    let mut want: Vec<u64> = (0..THREADS)
        .flat_map(|t| (0..PER).map(move |i| t * 1_000 + i))
        .collect();
    want.sort_unstable();
    // Standbys beyond the concurrency limit wait for a slot: at most 16 are out at once.
    assert_eq!(seen.len(), 16.min(want.len()), "{seen:?}");
    assert!(seen.iter().all(|k| want.binary_search(k).is_ok()));
    let mut s = stats_out();
    // SAFETY: valid pointers.
    assert_eq!(
        unsafe { autostandby_stats(h.0, &mut s, ptr::null_mut()) },
        AUTOSTANDBY_OK
    );
    assert_eq!(s.instances, THREADS * PER);
    assert_eq!(s.standby_in_flight, 16);
    assert_eq!(s.standby_queued, THREADS * PER - 16);
}

#[test]
fn a_blocked_poll_wakes_when_another_thread_advances_the_clock() {
    let h = Arc::new(Handle::manual(T0));
    assert_eq!(register(&h, 7, GUEST, &policy(1_000)).0, AUTOSTANDBY_OK);
    let _ = poll(&h);
    let poller = {
        let h = h.clone();
        std::thread::spawn(move || {
            let mut out = [autostandby_decision::default(); 4];
            let mut n = 0usize;
            let started = Instant::now();
            // SAFETY: valid pointers.
            let rc = unsafe {
                autostandby_poll_decisions(
                    h.0,
                    out.as_mut_ptr(),
                    4,
                    &mut n,
                    30_000,
                    ptr::null_mut(),
                )
            };
            (rc, standbys(&out[..n]), started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    advance(&h, 1_000);
    let (rc, keys, waited) = poller.join().unwrap();
    assert_eq!(rc, AUTOSTANDBY_OK);
    assert_eq!(keys, vec![7]);
    assert!(waited < Duration::from_secs(20));
}

/// A manual controller that hands its confirmations to the host.
fn confirming(start_ms: u64) -> Handle {
    Handle::new(&autostandby_config {
        confirm_before_standby: true,
        ..manual_config(start_ms)
    })
}

fn confirm(h: &Handle, key: u64, outcome: u32, flows: &[autostandby_flow_event]) -> (u32, String) {
    let mut e = err();
    // SAFETY: valid pointers.
    let rc = unsafe { autostandby_confirm(h.0, key, outcome, flows.as_ptr(), flows.len(), &mut e) };
    (rc, msg(&e))
}

fn kinds(decisions: &[autostandby_decision]) -> Vec<(u32, u64)> {
    decisions
        .iter()
        .filter(|d| d.kind != AUTOSTANDBY_DECISION_PERSIST_RUNTIME)
        .map(|d| (d.kind, d.key))
        .collect()
}

#[test]
fn confirm_round_trip_idle_then_standby() {
    let h = confirming(T0);
    assert_eq!(register(&h, 1, GUEST, &policy(10_000)).0, AUTOSTANDBY_OK);
    advance(&h, 10_000);
    assert_eq!(kinds(&poll(&h)), vec![(AUTOSTANDBY_DECISION_CONFIRM, 1)]);
    // Not standby_requested until the confirmation has answered.
    let st = status(&h, 1).unwrap();
    assert_eq!(
        (st.status, st.reason),
        (
            AUTOSTANDBY_STATUS_IDLE_COUNTDOWN,
            AUTOSTANDBY_REASON_CONFIRM_PENDING
        )
    );
    assert_eq!(
        confirm(&h, 1, AUTOSTANDBY_CONFIRM_OK, &[]).0,
        AUTOSTANDBY_OK
    );
    assert_eq!(kinds(&poll(&h)), vec![(AUTOSTANDBY_DECISION_STANDBY, 1)]);
    // Answering again is stale and changes nothing.
    let (rc, m) = confirm(&h, 1, AUTOSTANDBY_CONFIRM_OK, &[]);
    assert_eq!(rc, AUTOSTANDBY_ERR_NO_CONFIRM_PENDING, "{m}");
    assert!(m.contains("no confirmation pending"), "{m}");
    let (mut proceed, mut reason) = (false, 0);
    // SAFETY: valid pointers.
    unsafe {
        assert_eq!(
            autostandby_begin_standby(h.0, 1, &mut proceed, &mut reason, ptr::null_mut()),
            AUTOSTANDBY_OK
        );
    }
    assert!(proceed);
}

#[test]
fn confirm_with_a_live_flow_or_a_failure_keeps_the_instance_awake() {
    let h = confirming(T0);
    assert_eq!(register(&h, 1, GUEST, &policy(10_000)).0, AUTOSTANDBY_OK);
    assert_eq!(
        register(&h, 2, "10.0.0.3", &policy(10_000)).0,
        AUTOSTANDBY_OK
    );
    advance(&h, 10_000);
    assert_eq!(
        kinds(&poll(&h)),
        vec![
            (AUTOSTANDBY_DECISION_CONFIRM, 1),
            (AUTOSTANDBY_DECISION_CONFIRM, 2)
        ]
    );
    assert_eq!(
        confirm(&h, 1, AUTOSTANDBY_CONFIRM_OK, &[established(40_000, 1)]).0,
        AUTOSTANDBY_OK
    );
    let st = status(&h, 1).unwrap();
    assert_eq!(
        (st.status, st.active_inbound),
        (AUTOSTANDBY_STATUS_ACTIVE, 1)
    );

    assert_eq!(
        confirm(&h, 2, AUTOSTANDBY_CONFIRM_FAILED, &[]).0,
        AUTOSTANDBY_OK
    );
    let st = status(&h, 2).unwrap();
    assert_eq!(
        (st.status, st.reason),
        (
            AUTOSTANDBY_STATUS_IDLE_COUNTDOWN,
            AUTOSTANDBY_REASON_CONFIRM_FAILED
        )
    );
    assert_eq!(st.next_standby_at_ms, T0 + 20_000);
    // SAFETY: a static string.
    let name = unsafe { CStr::from_ptr(autostandby_reason_name(st.reason)) };
    assert_eq!(name, c"confirm_failed");
    assert!(kinds(&poll(&h)).is_empty(), "no standby for either");
}

#[test]
fn confirm_rejects_bad_input_and_stale_answers_without_changing_anything() {
    let h = confirming(T0);
    assert_eq!(register(&h, 1, GUEST, &policy(10_000)).0, AUTOSTANDBY_OK);
    advance(&h, 10_000);
    assert_eq!(kinds(&poll(&h)), vec![(AUTOSTANDBY_DECISION_CONFIRM, 1)]);

    let (rc, m) = confirm(&h, 1, 2, &[]);
    assert_eq!(rc, AUTOSTANDBY_ERR_INVALID_ARGUMENT);
    assert!(m.contains("outcome is 2"), "{m}");
    let (rc, m) = confirm(&h, 1, AUTOSTANDBY_CONFIRM_FAILED, &[established(1, 1)]);
    assert_eq!(rc, AUTOSTANDBY_ERR_INVALID_ARGUMENT, "{m}");
    let mut bad = established(1, 1);
    bad.orig_src.family = 5;
    let (rc, m) = confirm(&h, 1, AUTOSTANDBY_CONFIRM_OK, &[bad]);
    assert_eq!(rc, AUTOSTANDBY_ERR_INVALID_ARGUMENT);
    assert!(m.starts_with("flows[0]"), "{m}");
    let mut e = err();
    // SAFETY: NULL with a non-zero length is what is being tested.
    let rc = unsafe { autostandby_confirm(h.0, 1, AUTOSTANDBY_CONFIRM_OK, ptr::null(), 3, &mut e) };
    assert_eq!(rc, AUTOSTANDBY_ERR_NULL_POINTER, "{}", msg(&e));
    assert_eq!(
        confirm(&h, 9, AUTOSTANDBY_CONFIRM_OK, &[]).0,
        AUTOSTANDBY_ERR_NOT_FOUND
    );
    // Still pending after all of that: a hold cancels it, and the answer is then stale.
    assert_eq!(
        status(&h, 1).unwrap().reason,
        AUTOSTANDBY_REASON_CONFIRM_PENDING
    );
    let mut st = status_out();
    // SAFETY: valid pointers.
    assert_eq!(
        unsafe { autostandby_hold(h.0, 1, &mut st, ptr::null_mut()) },
        AUTOSTANDBY_OK
    );
    assert_eq!(
        confirm(&h, 1, AUTOSTANDBY_CONFIRM_OK, &[]).0,
        AUTOSTANDBY_ERR_NO_CONFIRM_PENDING
    );
    assert!(kinds(&poll(&h)).is_empty());
    assert_eq!(
        status(&h, 1).unwrap().reason,
        AUTOSTANDBY_REASON_STANDBY_HELD
    );
}

#[test]
fn manual_mode_without_the_option_never_asks_to_confirm() {
    let h = Handle::manual(T0);
    assert_eq!(register(&h, 1, GUEST, &policy(10_000)).0, AUTOSTANDBY_OK);
    advance(&h, 10_000);
    assert_eq!(kinds(&poll(&h)), vec![(AUTOSTANDBY_DECISION_STANDBY, 1)]);
    assert_eq!(
        confirm(&h, 1, AUTOSTANDBY_CONFIRM_OK, &[]).0,
        AUTOSTANDBY_ERR_NO_CONFIRM_PENDING
    );
}

/// Begins and fails the standby of 1, then returns its status.
fn fail_standby(h: &Handle) -> autostandby_status {
    assert_eq!(kinds(&poll(h)), vec![(AUTOSTANDBY_DECISION_STANDBY, 1)]);
    let (mut proceed, mut reason) = (false, 0);
    // SAFETY: valid pointers.
    unsafe {
        assert_eq!(
            autostandby_begin_standby(h.0, 1, &mut proceed, &mut reason, ptr::null_mut()),
            AUTOSTANDBY_OK
        );
        assert_eq!(
            autostandby_report_standby(h.0, 1, AUTOSTANDBY_OUTCOME_FAILED, ptr::null_mut()),
            AUTOSTANDBY_OK
        );
    }
    status(h, 1).unwrap()
}

#[test]
fn failed_standby_retry_policy_is_configurable() {
    // Default: a full countdown from the failure, persisted.
    let h = Handle::manual(T0);
    assert_eq!(register(&h, 1, GUEST, &policy(10_000)).0, AUTOSTANDBY_OK);
    advance(&h, 10_000);
    let st = fail_standby(&h);
    assert_eq!(
        (st.idle_since_ms, st.next_standby_at_ms),
        (T0 + 10_000, T0 + 20_000)
    );
    let last = poll(&h)
        .into_iter()
        .rfind(|d| d.kind == AUTOSTANDBY_DECISION_PERSIST_RUNTIME)
        .expect("the new countdown is persisted");
    assert!(last.runtime.has_idle_since && last.runtime.idle_since_ms == T0 + 10_000);

    // Backoff: retried 1 s later, idle period kept.
    let h = Handle::new(&autostandby_config {
        standby_retry: AUTOSTANDBY_STANDBY_RETRY_BACKOFF,
        ..manual_config(T0)
    });
    assert_eq!(register(&h, 1, GUEST, &policy(10_000)).0, AUTOSTANDBY_OK);
    advance(&h, 10_000);
    let st = fail_standby(&h);
    assert_eq!((st.idle_since_ms, st.next_standby_at_ms), (T0, T0 + 11_000));
}

#[test]
fn config_from_an_older_header_gets_the_defaults_and_unknown_values_are_refused() {
    // The first release's struct ended at `manual_start_ms`: whatever follows in memory
    // (here an invalid retry value and confirmation on) must not be read.
    let old_size = std::mem::offset_of!(autostandby_config, manual_start_ms) + 8;
    let cfg = autostandby_config {
        struct_size: old_size as u32,
        standby_retry: 77,
        confirm_before_standby: true,
        ..manual_config(T0)
    };
    let h = Handle::new(&cfg);
    assert_eq!(register(&h, 1, GUEST, &policy(10_000)).0, AUTOSTANDBY_OK);
    advance(&h, 10_000);
    let st = fail_standby(&h);
    assert_eq!(st.next_standby_at_ms, T0 + 20_000, "countdown, the default");

    let mut out = ptr::null_mut();
    let mut e = err();
    let bad = autostandby_config {
        standby_retry: 2,
        ..manual_config(T0)
    };
    // SAFETY: valid pointers.
    let rc = unsafe { autostandby_controller_new(&bad, &mut out, &mut e) };
    assert_eq!(rc, AUTOSTANDBY_ERR_INVALID_ARGUMENT);
    assert!(msg(&e).contains("standby_retry is 2"), "{}", msg(&e));
    // The second layout ended at `confirm_lead_ms`: that size is accepted too.
    let v2_size = std::mem::offset_of!(autostandby_config, confirm_lead_ms) + 8;
    let cfg = autostandby_config {
        struct_size: v2_size as u32,
        hold_packets_in_standby: true,
        ..manual_config(T0)
    };
    let h2 = Handle::new(&cfg);
    assert_eq!(register(&h2, 1, GUEST, &policy(10_000)).0, AUTOSTANDBY_OK);
    drop(h2);

    // A size that is neither release's.
    let odd = autostandby_config {
        struct_size: old_size as u32 + 4,
        ..manual_config(T0)
    };
    // SAFETY: valid pointers.
    let rc = unsafe { autostandby_controller_new(&odd, &mut out, &mut e) };
    assert_eq!(rc, AUTOSTANDBY_ERR_STRUCT_SIZE, "{}", msg(&e));
    assert!(out.is_null());
}

#[test]
fn stats_report_a_failed_observer_and_serve_older_callers() {
    let h = Handle::manual(T0);
    let why = c"netlink socket closed";
    // SAFETY: valid pointers.
    assert_eq!(
        unsafe { autostandby_set_observer_error(h.0, why.as_ptr(), ptr::null_mut()) },
        AUTOSTANDBY_OK
    );
    let mut s = stats_out();
    // SAFETY: valid pointers.
    assert_eq!(
        unsafe { autostandby_stats(h.0, &mut s, ptr::null_mut()) },
        AUTOSTANDBY_OK
    );
    assert!(s.observer_failed);

    // A caller built against the first release: `observer_failed` is beyond its struct
    // and must not be written.
    let old_size = std::mem::offset_of!(autostandby_stats, log_records_dropped) + 8;
    let mut old = autostandby_stats {
        struct_size: old_size as u32,
        ..Default::default()
    };
    // SAFETY: valid pointers; the struct is larger than the size it claims.
    assert_eq!(
        unsafe { autostandby_stats(h.0, &mut old, ptr::null_mut()) },
        AUTOSTANDBY_OK
    );
    assert_eq!(old.observer_errors, 1);
    assert!(
        !old.observer_failed,
        "written past the caller's struct_size"
    );

    // SAFETY: valid pointers.
    unsafe {
        assert_eq!(
            autostandby_set_observer_error(h.0, ptr::null(), ptr::null_mut()),
            AUTOSTANDBY_OK
        );
        assert_eq!(
            autostandby_stats(h.0, &mut s, ptr::null_mut()),
            AUTOSTANDBY_OK
        );
    }
    assert!(!s.observer_failed);
}

#[test]
fn an_unpolled_queue_keeps_one_decision_per_instance_and_kind() {
    let h = Handle::manual(T0);
    let pol = policy(10_000);
    assert_eq!(register(&h, 1, "10.0.0.2", &pol).0, AUTOSTANDBY_OK);
    // The host never polls while connections come and go: each start and end of the
    // countdown persists a runtime, and only the latest may wait.
    for i in 0..50u16 {
        ingest(&h, &[established(40_000 + i, u32::from(i) + 1)]);
        advance(&h, 100);
        ingest(&h, &[destroyed(40_000 + i, u32::from(i) + 1)]);
        advance(&h, 100);
    }
    let mut s = stats_out();
    // SAFETY: valid pointers.
    assert_eq!(
        unsafe { autostandby_stats(h.0, &mut s, ptr::null_mut()) },
        AUTOSTANDBY_OK
    );
    assert_eq!(s.decisions_pending, 1);
    assert!(s.decisions_merged >= 99, "{}", s.decisions_merged);
    let d = poll(&h);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].kind, AUTOSTANDBY_DECISION_PERSIST_RUNTIME);
    assert!(d[0].runtime_present && d[0].runtime.has_idle_since);
    assert_eq!(d[0].runtime.idle_since_ms, T0 + 50 * 200 - 100);

    // A caller built against the second layout (ending at `observer_failed`) is served
    // and nothing is written past it.
    let v2 = (std::mem::offset_of!(autostandby_stats, observer_failed) + 1).next_multiple_of(8);
    let mut old = autostandby_stats {
        struct_size: v2 as u32,
        ..Default::default()
    };
    // SAFETY: valid pointers; the struct is larger than the size it claims.
    assert_eq!(
        unsafe { autostandby_stats(h.0, &mut old, ptr::null_mut()) },
        AUTOSTANDBY_OK
    );
    assert_eq!(old.instances, 1);
    assert_eq!(
        old.decisions_merged, 0,
        "written past the caller's struct_size"
    );
}

#[test]
fn a_declined_standby_frees_its_slot_for_the_next_instance() {
    let cfg = autostandby_config {
        max_concurrent_standbys: 1,
        ..manual_config(T0)
    };
    let h = Handle::new(&cfg);
    let pol = policy(10_000);
    assert_eq!(register(&h, 1, "10.0.0.2", &pol).0, AUTOSTANDBY_OK);
    assert_eq!(register(&h, 2, "10.0.0.3", &pol).0, AUTOSTANDBY_OK);
    poll(&h);
    advance(&h, 10_000);
    let first = standbys(&poll(&h));
    assert_eq!(first.len(), 1, "one slot: {first:?}");
    let mut e = err();
    // SAFETY (all calls below): valid pointers.
    unsafe {
        assert_eq!(
            autostandby_decline_standby(h.0, first[0], &mut e),
            AUTOSTANDBY_OK,
            "{}",
            msg(&e)
        );
        assert_eq!(
            autostandby_decline_standby(h.0, first[0], &mut e),
            AUTOSTANDBY_ERR_NO_STANDBY_OUTSTANDING
        );
        assert_eq!(
            autostandby_decline_standby(h.0, 99, &mut e),
            AUTOSTANDBY_ERR_NOT_FOUND
        );
    }
    // The freed slot went to the other instance.
    let next = standbys(&poll(&h));
    assert_eq!(next.len(), 1);
    assert_ne!(next[0], first[0]);
}

fn syn(cport: u16, id: u32) -> autostandby_flow_event {
    tcp_event(
        AUTOSTANDBY_FLOW_NEW,
        CLIENT,
        cport,
        GUEST,
        8080,
        id,
        Some(1),
    )
}

fn wake_count(h: &Handle) -> usize {
    poll(h)
        .iter()
        .filter(|d| d.kind == AUTOSTANDBY_DECISION_WAKE)
        .count()
}

#[test]
fn a_failed_restore_is_reported_counted_and_retried_on_new_traffic() {
    let h = Handle::manual(T0);
    let mut pol = policy(10_000);
    pol.wake_on_traffic = true;
    let addrs = [ip(GUEST)];
    let mut inst = instance(&addrs, &pol);
    inst.lifecycle = AUTOSTANDBY_LIFECYCLE_STANDBY;
    // SAFETY: valid pointers.
    assert_eq!(
        unsafe { autostandby_register(h.0, 1, &inst, ptr::null_mut()) },
        AUTOSTANDBY_OK
    );
    ingest(&h, &[syn(40_000, 1)]);
    assert_eq!(wake_count(&h), 1);

    let mut e = err();
    // SAFETY: valid pointers.
    unsafe {
        assert_eq!(
            autostandby_report_wake(h.0, 1, AUTOSTANDBY_WAKE_FAILED, &mut e),
            AUTOSTANDBY_OK
        );
        assert_eq!(
            autostandby_report_wake(h.0, 1, 7, &mut e),
            AUTOSTANDBY_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            autostandby_report_wake(h.0, 9, AUTOSTANDBY_WAKE_FAILED, &mut e),
            AUTOSTANDBY_ERR_NOT_FOUND
        );
    }
    let st = status(&h, 1).unwrap();
    assert_eq!(
        (st.status, st.reason),
        (AUTOSTANDBY_STATUS_ERROR, AUTOSTANDBY_REASON_RESTORE_FAILED)
    );
    // SAFETY: a static string.
    let name = unsafe { CStr::from_ptr(autostandby_reason_name(st.reason)) };
    assert_eq!(name.to_str().unwrap(), "restore_failed");

    // Traffic during the backoff does not ask again; traffic after it does.
    ingest(&h, &[syn(40_001, 2)]);
    assert_eq!(wake_count(&h), 0);
    advance(&h, 1_000);
    ingest(&h, &[syn(40_002, 3)]);
    assert_eq!(wake_count(&h), 1);

    let mut s = stats_out();
    // SAFETY: valid pointers.
    assert_eq!(
        unsafe { autostandby_stats(h.0, &mut s, ptr::null_mut()) },
        AUTOSTANDBY_OK
    );
    assert_eq!((s.wake_decisions, s.wake_failures), (2, 1));
    // A caller whose struct ends at `observer_failed` gets everything but the new fields.
    let v2 = (std::mem::offset_of!(autostandby_stats, observer_failed) + 1).next_multiple_of(8);
    let mut old = autostandby_stats {
        struct_size: v2 as u32,
        ..Default::default()
    };
    // SAFETY: valid pointers; the struct is larger than the size it claims.
    assert_eq!(
        unsafe { autostandby_stats(h.0, &mut old, ptr::null_mut()) },
        AUTOSTANDBY_OK
    );
    assert_eq!((old.wake_decisions, old.wake_failures), (2, 0));

    // SAFETY: valid pointers.
    assert_eq!(
        unsafe { autostandby_report_wake(h.0, 1, AUTOSTANDBY_WAKE_RESTORED, ptr::null_mut()) },
        AUTOSTANDBY_OK
    );
    assert_eq!(
        status(&h, 1).unwrap().reason,
        AUTOSTANDBY_REASON_INSTANCE_NOT_RUNNING
    );
}
