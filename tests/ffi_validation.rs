//! The C ABI refuses bad input with the right code and a clear message, never crashes,
//! and turns a panic into PANIC then POISONED.

mod ffi_util;

use std::ffi::{CStr, c_char};
use std::mem::size_of;
use std::ptr;

use autostandby::ffi::*;
use ffi_util::*;

fn text(p: *const c_char) -> Option<String> {
    // SAFETY: the library returns NULL or a static NUL-terminated string.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_owned())
}

#[test]
fn version_strings_and_names() {
    assert_eq!(
        text(autostandby_version()).unwrap(),
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(autostandby_abi_version(), AUTOSTANDBY_ABI_VERSION);
    for code in 0..=16 {
        assert!(text(autostandby_status_str(code)).is_some_and(|t| !t.is_empty()));
    }
    assert_eq!(text(autostandby_status_str(17)), None);
    assert_eq!(text(autostandby_status_str(u32::MAX)), None);
    assert_eq!(
        text(autostandby_status_name(AUTOSTANDBY_STATUS_IDLE_COUNTDOWN)).unwrap(),
        "idle_countdown"
    );
    assert_eq!(text(autostandby_status_name(8)), None);
    assert_eq!(
        text(autostandby_reason_name(
            AUTOSTANDBY_REASON_ACTIVE_INBOUND_CONNECTIONS
        ))
        .unwrap(),
        "active_inbound_connections"
    );
    assert_eq!(text(autostandby_reason_name(13)).unwrap(), "resync_pending");
    assert_eq!(text(autostandby_reason_name(14)).unwrap(), "confirm_failed");
    assert_eq!(
        text(autostandby_reason_name(15)).unwrap(),
        "confirm_pending"
    );
    assert_eq!(
        text(autostandby_reason_name(16)).unwrap(),
        "conntrack_events_off"
    );
    assert_eq!(text(autostandby_reason_name(17)).unwrap(), "restore_failed");
    assert_eq!(text(autostandby_reason_name(18)), None);
}

#[test]
fn controller_new_validates_its_arguments() {
    let mut out = ptr::dangling_mut::<autostandby_controller>();
    let mut e = err();
    let cfg = manual_config(0);
    // SAFETY (all calls below): pointers are NULL or valid.
    unsafe {
        assert_eq!(
            autostandby_controller_new(ptr::null(), &mut out, &mut e),
            AUTOSTANDBY_ERR_NULL_POINTER
        );
        assert_eq!(e.code, AUTOSTANDBY_ERR_NULL_POINTER);
        assert!(msg(&e).contains("config"), "{}", msg(&e));
        assert!(out.is_null(), "out is cleared on failure");

        assert_eq!(
            autostandby_controller_new(&cfg, ptr::null_mut(), &mut e),
            AUTOSTANDBY_ERR_NULL_POINTER
        );
        assert!(msg(&e).contains("out"));

        let small = autostandby_config {
            struct_size: 8,
            ..cfg
        };
        assert_eq!(
            autostandby_controller_new(&small, &mut out, &mut e),
            AUTOSTANDBY_ERR_STRUCT_SIZE
        );
        assert!(msg(&e).contains("struct_size is 8"), "{}", msg(&e));

        let bad_mode = autostandby_config { mode: 2, ..cfg };
        assert_eq!(
            autostandby_controller_new(&bad_mode, &mut out, &mut e),
            AUTOSTANDBY_ERR_INVALID_ARGUMENT
        );
        assert!(msg(&e).contains("mode is 2"), "{}", msg(&e));

        let bad_sysctl = autostandby_config {
            events_sysctl: 7,
            ..cfg
        };
        assert_eq!(
            autostandby_controller_new(&bad_sysctl, &mut out, &mut e),
            AUTOSTANDBY_ERR_INVALID_ARGUMENT
        );
        assert!(msg(&e).contains("events_sysctl"), "{}", msg(&e));

        let empty = c"";
        let bad_ns = autostandby_config {
            netns_path: empty.as_ptr(),
            ..cfg
        };
        assert_eq!(
            autostandby_controller_new(&bad_ns, &mut out, &mut e),
            AUTOSTANDBY_ERR_INVALID_ARGUMENT
        );

        // A NULL error struct is allowed everywhere.
        assert_eq!(
            autostandby_controller_new(ptr::null(), &mut out, ptr::null_mut()),
            AUTOSTANDBY_ERR_NULL_POINTER
        );

        autostandby_controller_free(ptr::null_mut());
    }
}

#[test]
fn every_handle_function_rejects_a_null_controller() {
    let c = ptr::null_mut();
    let inst = instance(&[], ptr::null());
    let mut st = status_out();
    let mut stats = stats_out();
    let mut n = 0usize;
    let mut proceed = false;
    let mut reason = 0u32;
    let mut e = err();
    // SAFETY (all calls below): pointers are NULL or valid.
    let codes = unsafe {
        [
            autostandby_register(c, 1, &inst, &mut e),
            autostandby_update(c, 1, &inst, &mut e),
            autostandby_unregister(c, 1, &mut e),
            autostandby_poll_decisions(c, ptr::null_mut(), 0, &mut n, 0, &mut e),
            autostandby_begin_standby(c, 1, &mut proceed, &mut reason, &mut e),
            autostandby_report_standby(c, 1, 0, &mut e),
            autostandby_hold(c, 1, &mut st, &mut e),
            autostandby_status(c, 1, &mut st, &mut e),
            autostandby_explain(c, 1, ptr::null_mut(), 0, &mut n, &mut e),
            autostandby_recommend(
                c,
                1,
                ptr::null(),
                &mut recommendation_out(),
                ptr::null_mut(),
                0,
                &mut n,
                &mut e,
            ),
            autostandby_stats(c, &mut stats, &mut e),
            autostandby_drain_logs(c, ptr::null_mut(), 0, &mut n, &mut e),
            autostandby_ingest(c, ptr::null(), 0, &mut e),
            autostandby_advance_clock(c, 1, &mut e),
            autostandby_resync(c, ptr::null(), 0, &mut e),
            autostandby_set_observer_error(c, ptr::null(), &mut e),
            autostandby_confirm(c, 1, AUTOSTANDBY_CONFIRM_OK, ptr::null(), 0, &mut e),
        ]
    };
    for (i, code) in codes.into_iter().enumerate() {
        assert_eq!(code, AUTOSTANDBY_ERR_NULL_POINTER, "function #{i}");
    }
    assert!(msg(&e).contains("controller"));
}

#[test]
fn null_outputs_and_inputs_are_refused_on_a_live_controller() {
    let h = Handle::manual(1_000);
    let mut e = err();
    let mut n = 0usize;
    let mut proceed = false;
    let mut reason = 0u32;
    // SAFETY (all calls below): pointers are NULL or valid.
    unsafe {
        assert_eq!(
            autostandby_register(h.0, 1, ptr::null(), &mut e),
            AUTOSTANDBY_ERR_NULL_POINTER
        );
        assert!(msg(&e).contains("instance"));
        assert_eq!(
            autostandby_update(h.0, 1, ptr::null(), &mut e),
            AUTOSTANDBY_ERR_NULL_POINTER
        );
        assert_eq!(
            autostandby_poll_decisions(h.0, ptr::null_mut(), 0, ptr::null_mut(), 0, &mut e),
            AUTOSTANDBY_ERR_NULL_POINTER
        );
        assert!(msg(&e).contains("out_len"));
        assert_eq!(
            autostandby_poll_decisions(h.0, ptr::null_mut(), 4, &mut n, 0, &mut e),
            AUTOSTANDBY_ERR_NULL_POINTER
        );
        assert_eq!(
            autostandby_begin_standby(h.0, 1, ptr::null_mut(), &mut reason, &mut e),
            AUTOSTANDBY_ERR_NULL_POINTER
        );
        assert_eq!(
            autostandby_begin_standby(h.0, 1, &mut proceed, ptr::null_mut(), &mut e),
            AUTOSTANDBY_ERR_NULL_POINTER
        );
        assert_eq!(
            autostandby_hold(h.0, 1, ptr::null_mut(), &mut e),
            AUTOSTANDBY_ERR_NULL_POINTER
        );
        assert_eq!(
            autostandby_status(h.0, 1, ptr::null_mut(), &mut e),
            AUTOSTANDBY_ERR_NULL_POINTER
        );
        assert_eq!(
            autostandby_explain(h.0, 1, ptr::null_mut(), 0, ptr::null_mut(), &mut e),
            AUTOSTANDBY_ERR_NULL_POINTER
        );
        assert_eq!(
            autostandby_explain(h.0, 1, ptr::null_mut(), 3, &mut n, &mut e),
            AUTOSTANDBY_ERR_NULL_POINTER
        );
        assert_eq!(
            autostandby_stats(h.0, ptr::null_mut(), &mut e),
            AUTOSTANDBY_ERR_NULL_POINTER
        );
        assert_eq!(
            autostandby_drain_logs(h.0, ptr::null_mut(), 0, ptr::null_mut(), &mut e),
            AUTOSTANDBY_ERR_NULL_POINTER
        );
        assert_eq!(
            autostandby_drain_logs(h.0, ptr::null_mut(), 2, &mut n, &mut e),
            AUTOSTANDBY_ERR_NULL_POINTER
        );
        assert_eq!(
            autostandby_ingest(h.0, ptr::null(), 2, &mut e),
            AUTOSTANDBY_ERR_NULL_POINTER
        );
        assert_eq!(
            autostandby_resync(h.0, ptr::null(), 2, &mut e),
            AUTOSTANDBY_ERR_NULL_POINTER
        );

        // Instance arrays: NULL with a length.
        let mut inst = instance(&[], ptr::null());
        inst.addresses = ptr::null();
        inst.addresses_len = 1;
        assert_eq!(
            autostandby_register(h.0, 1, &inst, &mut e),
            AUTOSTANDBY_ERR_NULL_POINTER
        );
        assert!(msg(&e).contains("instance.addresses"), "{}", msg(&e));
        let mut pol = policy(1_000);
        pol.ignore_destination_ports_len = 2;
        let inst = instance(&[], &pol);
        assert_eq!(
            autostandby_register(h.0, 1, &inst, &mut e),
            AUTOSTANDBY_ERR_NULL_POINTER
        );
        assert!(msg(&e).contains("ignore_destination_ports"), "{}", msg(&e));
        let mut pol = policy(1_000);
        pol.ignore_source_cidrs_len = 1;
        let inst = instance(&[], &pol);
        assert_eq!(
            autostandby_register(h.0, 1, &inst, &mut e),
            AUTOSTANDBY_ERR_NULL_POINTER
        );
    }
}

#[test]
fn zero_capacity_outputs_take_nothing() {
    let h = Handle::manual(1_000);
    let mut e = err();
    let mut n = usize::MAX;
    // SAFETY: valid pointers; NULL arrays with zero capacity are allowed.
    unsafe {
        assert_eq!(
            autostandby_poll_decisions(h.0, ptr::null_mut(), 0, &mut n, 50, &mut e),
            AUTOSTANDBY_OK
        );
        assert_eq!(n, 0);
        n = usize::MAX;
        assert_eq!(
            autostandby_drain_logs(h.0, ptr::null_mut(), 0, &mut n, &mut e),
            AUTOSTANDBY_OK
        );
        assert_eq!(n, 0);
        // Nothing was drained: the start-up record is still there.
        let mut recs = [autostandby_log_record {
            level: 0,
            time_ms: 0,
            target: [0; 64],
            message: [0; 512],
        }; 4];
        assert_eq!(
            autostandby_drain_logs(h.0, recs.as_mut_ptr(), recs.len(), &mut n, &mut e),
            AUTOSTANDBY_OK
        );
        assert!(n >= 1);
        let first = CStr::from_ptr(recs[0].message.as_ptr()).to_str().unwrap();
        assert!(
            first.starts_with("auto-standby controller started"),
            "{first}"
        );
        assert_eq!(recs[0].level, AUTOSTANDBY_LOG_INFO);
    }
}

#[test]
fn too_small_struct_sizes_are_refused() {
    let h = Handle::manual(1_000);
    let mut e = err();
    let addr = [ip("10.0.0.2")];
    // SAFETY (all calls below): pointers are valid.
    unsafe {
        let mut inst = instance(&addr, ptr::null());
        inst.struct_size = 4;
        assert_eq!(
            autostandby_register(h.0, 1, &inst, &mut e),
            AUTOSTANDBY_ERR_STRUCT_SIZE
        );
        assert!(msg(&e).contains("instance.struct_size is 4"), "{}", msg(&e));

        let mut pol = policy(1_000);
        pol.struct_size = size_of::<autostandby_policy>() as u32 - 1;
        let inst = instance(&addr, &pol);
        assert_eq!(
            autostandby_register(h.0, 1, &inst, &mut e),
            AUTOSTANDBY_ERR_STRUCT_SIZE
        );
        assert!(msg(&e).contains("policy.struct_size"), "{}", msg(&e));

        let mut st = status_out();
        st.struct_size = 0;
        assert_eq!(
            autostandby_status(h.0, 1, &mut st, &mut e),
            AUTOSTANDBY_ERR_STRUCT_SIZE
        );
        assert_eq!(
            autostandby_hold(h.0, 1, &mut st, &mut e),
            AUTOSTANDBY_ERR_STRUCT_SIZE
        );
        assert_eq!(st.status, 0, "nothing written");

        // Neither this release's size nor an older one's (which is 8 bytes shorter).
        let mut stats = stats_out();
        stats.struct_size -= 1;
        assert_eq!(
            autostandby_stats(h.0, &mut stats, &mut e),
            AUTOSTANDBY_ERR_STRUCT_SIZE
        );
        assert_eq!(stats.instances, 0);
    }
}

#[test]
fn out_of_range_enums_and_addresses_are_refused() {
    let h = Handle::manual(1_000);
    let mut e = err();
    // SAFETY (all calls below): pointers are valid.
    unsafe {
        let addr = [ip("10.0.0.2")];
        let mut inst = instance(&addr, ptr::null());
        inst.lifecycle = 4;
        assert_eq!(
            autostandby_register(h.0, 1, &inst, &mut e),
            AUTOSTANDBY_ERR_INVALID_ARGUMENT
        );
        assert!(msg(&e).contains("lifecycle is 4"), "{}", msg(&e));

        let bad = [autostandby_ip {
            family: 5,
            addr: [0; 16],
        }];
        let inst = instance(&bad, ptr::null());
        assert_eq!(
            autostandby_register(h.0, 1, &inst, &mut e),
            AUTOSTANDBY_ERR_INVALID_ARGUMENT
        );
        assert!(
            msg(&e).contains("instance.addresses[0].family is 5"),
            "{}",
            msg(&e)
        );

        assert_eq!(
            autostandby_report_standby(h.0, 1, 3, &mut e),
            AUTOSTANDBY_ERR_INVALID_ARGUMENT
        );
        assert!(msg(&e).contains("outcome is 3"));

        let mut ev = tcp_event(3, "192.0.2.1", 40000, "10.0.0.2", 80, 1, Some(3));
        assert_eq!(
            autostandby_ingest(h.0, &ev, 1, &mut e),
            AUTOSTANDBY_ERR_INVALID_ARGUMENT
        );
        assert!(
            msg(&e).contains("events[0]: flow_event.kind is 3"),
            "{}",
            msg(&e)
        );
        ev.kind = AUTOSTANDBY_FLOW_NEW;
        ev.reply_dst = ip("2001:db8::1");
        assert_eq!(
            autostandby_ingest(h.0, &ev, 1, &mut e),
            AUTOSTANDBY_ERR_INVALID_ARGUMENT
        );
        assert!(msg(&e).contains("mixes IPv4 and IPv6"), "{}", msg(&e));
        ev.reply_dst = autostandby_ip {
            family: 0,
            addr: [0; 16],
        };
        assert_eq!(
            autostandby_resync(h.0, &ev, 1, &mut e),
            AUTOSTANDBY_ERR_INVALID_ARGUMENT
        );
        assert!(msg(&e).contains("table[0]"), "{}", msg(&e));
    }
}

#[test]
fn unusable_instance_addresses_are_refused_at_register_and_update() {
    let h = Handle::manual(1_000);
    let mut e = err();
    let good = [ip("10.0.0.2")];
    let pol = policy(1_000);
    // SAFETY (all calls below): pointers are valid.
    unsafe {
        assert_eq!(
            autostandby_register(h.0, 1, &instance(&good, &pol), &mut e),
            AUTOSTANDBY_OK
        );
        for bad in [
            "0.0.0.0",
            "::",
            "127.0.0.1",
            "127.3.2.1",
            "::1",
            "::ffff:127.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "239.1.2.3",
            "ff02::1",
        ] {
            let addrs = [good[0], ip(bad)];
            let inst = instance(&addrs, &pol);
            assert_eq!(
                autostandby_register(h.0, 2, &inst, &mut e),
                AUTOSTANDBY_ERR_INVALID_ARGUMENT,
                "register {bad}"
            );
            assert!(
                msg(&e).contains("cannot be an instance address") && msg(&e).contains("loopback"),
                "{bad}: {}",
                msg(&e)
            );
            assert_eq!(
                autostandby_update(h.0, 1, &inst, &mut e),
                AUTOSTANDBY_ERR_INVALID_ARGUMENT,
                "update {bad}"
            );
        }
        // Nothing half-applied: 1 still owns its address, 2 does not exist.
        assert_eq!(
            autostandby_register(h.0, 3, &instance(&good, &pol), &mut e),
            AUTOSTANDBY_ERR_ADDRESS_IN_USE
        );
        // Ordinary private, documentation and ULA addresses stay valid.
        let fine = [
            ip("192.168.1.2"),
            ip("203.0.113.7"),
            ip("fd00::2"),
            ip("10.255.255.255"),
        ];
        assert_eq!(
            autostandby_register(h.0, 2, &instance(&fine, &pol), &mut e),
            AUTOSTANDBY_OK,
            "{}",
            msg(&e)
        );
    }
}

#[test]
fn port_out_of_range_names_the_field() {
    let h = Handle::manual(1_000);
    let mut e = err();
    let addr = [ip("10.0.0.2")];
    for bad in [0u32, 65_536, u32::MAX] {
        let ports = [80u32, bad];
        let mut pol = policy(1_000);
        pol.ignore_destination_ports = ports.as_ptr();
        pol.ignore_destination_ports_len = ports.len();
        let inst = instance(&addr, &pol);
        // SAFETY: valid pointers.
        let rc = unsafe { autostandby_register(h.0, 1, &inst, &mut e) };
        assert_eq!(rc, AUTOSTANDBY_ERR_INVALID_POLICY);
        assert_eq!(e.code, AUTOSTANDBY_ERR_INVALID_POLICY);
        assert!(
            msg(&e).starts_with("ignore_destination_ports: ") && msg(&e).contains(&bad.to_string()),
            "{}",
            msg(&e)
        );
    }
}

#[test]
fn a_panic_returns_panic_then_poisons_the_handle() {
    let h = Handle::manual(1_000);
    let mut e = err();
    // SAFETY: valid pointers.
    unsafe {
        assert_eq!(force_panic_for_tests(h.0, &mut e), AUTOSTANDBY_ERR_PANIC);
        assert!(
            msg(&e).contains("forced by force_panic_for_tests"),
            "{}",
            msg(&e)
        );
        let mut st = status_out();
        assert_eq!(
            autostandby_status(h.0, 1, &mut st, &mut e),
            AUTOSTANDBY_ERR_POISONED
        );
        assert_eq!(e.code, AUTOSTANDBY_ERR_POISONED);
        let mut n = 0;
        assert_eq!(
            autostandby_poll_decisions(h.0, ptr::null_mut(), 0, &mut n, 0, &mut e),
            AUTOSTANDBY_ERR_POISONED
        );
        assert_eq!(
            autostandby_advance_clock(h.0, 1, ptr::null_mut()),
            AUTOSTANDBY_ERR_POISONED
        );
    }
    // Drop frees the poisoned handle without trouble.
}

#[test]
fn free_wakes_a_blocked_poller_with_shutdown() {
    let h = Handle::manual(1_000);
    let raw = h.0 as usize;
    let poller = std::thread::spawn(move || {
        let mut n = 0usize;
        let mut out = [autostandby_decision::default(); 4];
        // SAFETY: the handle stays valid until this call returns: free waits for it.
        unsafe {
            autostandby_poll_decisions(
                raw as *mut autostandby_controller,
                out.as_mut_ptr(),
                out.len(),
                &mut n,
                60_000,
                ptr::null_mut(),
            )
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    let started = std::time::Instant::now();
    drop(h);
    assert_eq!(poller.join().unwrap(), AUTOSTANDBY_ERR_SHUTDOWN);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn impossible_capacities_are_refused() {
    let h = Handle::manual(1_000);
    let mut e = err();
    let mut n = usize::MAX;
    // Larger than any array of these element types can be (isize::MAX bytes).
    let huge = usize::MAX / 2;
    // SAFETY: the pointers are dangling but never dereferenced: the capacities are
    // refused before any array is built from them.
    unsafe {
        assert_eq!(
            autostandby_poll_decisions(h.0, ptr::dangling_mut(), huge, &mut n, 0, &mut e),
            AUTOSTANDBY_ERR_INVALID_ARGUMENT
        );
        assert!(msg(&e).contains("out"), "{}", msg(&e));
        assert_eq!(n, 0);
        assert_eq!(
            autostandby_explain(h.0, 1, ptr::dangling_mut(), usize::MAX, &mut n, &mut e),
            AUTOSTANDBY_ERR_INVALID_ARGUMENT
        );
        let just_over = isize::MAX.unsigned_abs() / size_of::<autostandby_log_record>() + 1;
        assert_eq!(
            autostandby_drain_logs(h.0, ptr::dangling_mut(), just_over, &mut n, &mut e),
            AUTOSTANDBY_ERR_INVALID_ARGUMENT
        );
        // The refusals took nothing: the start-up log record is still there.
        let mut recs = [autostandby_log_record {
            level: 0,
            time_ms: 0,
            target: [0; 64],
            message: [0; 512],
        }; 2];
        assert_eq!(
            autostandby_drain_logs(h.0, recs.as_mut_ptr(), recs.len(), &mut n, &mut e),
            AUTOSTANDBY_OK
        );
        assert!(n >= 1);
    }
}

#[test]
fn a_netns_path_that_is_not_a_network_namespace_is_refused_at_once() {
    let dir = std::env::temp_dir();
    let fifo = dir.join(format!("as-ffi-netns-fifo-{}", std::process::id()));
    let file = dir.join(format!("as-ffi-netns-file-{}", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    let c_fifo = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    let c_file = std::ffi::CString::new(file.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0);
    std::fs::write(&file, b"x").unwrap();
    // Before the check, opening the FIFO blocked forever waiting for a writer: run the
    // calls on a thread so a hang fails the test instead of stalling it.
    let (tx, rx) = std::sync::mpsc::channel();
    let paths = (c_fifo.clone(), c_file.clone());
    std::thread::spawn(move || {
        let mut results = Vec::new();
        for path in [&paths.0, &paths.1] {
            let cfg = autostandby_config {
                mode: AUTOSTANDBY_MODE_KERNEL,
                netns_path: path.as_ptr(),
                ..manual_config(0)
            };
            let mut out = ptr::dangling_mut::<autostandby_controller>();
            let mut e = err();
            // SAFETY: valid pointers.
            let rc = unsafe { autostandby_controller_new(&cfg, &mut out, &mut e) };
            results.push((rc, msg(&e), out.is_null()));
        }
        let _ = tx.send(results);
    });
    let got = rx.recv_timeout(std::time::Duration::from_secs(10));
    let _ = std::fs::remove_file(&fifo);
    let _ = std::fs::remove_file(&file);
    let got = got.expect("autostandby_controller_new hung on a FIFO");
    assert_eq!(got[0].0, AUTOSTANDBY_ERR_INVALID_ARGUMENT, "{}", got[0].1);
    assert!(
        got[0].1.contains("is not a network namespace: a FIFO"),
        "{}",
        got[0].1
    );
    assert_eq!(got[1].0, AUTOSTANDBY_ERR_INVALID_ARGUMENT, "{}", got[1].1);
    assert!(got[1].1.contains("not a namespace file"), "{}", got[1].1);
    assert!(got[0].2 && got[1].2, "out is cleared on failure");
}

fn recommendation_out() -> autostandby_recommendation {
    autostandby_recommendation {
        struct_size: size_of::<autostandby_recommendation>() as u32,
        ..Default::default()
    }
}

fn query(candidates: &[u64]) -> autostandby_recommend_query {
    autostandby_recommend_query {
        struct_size: size_of::<autostandby_recommend_query>() as u32,
        minutes_per_wake: 0,
        candidates_ms: candidates.as_ptr(),
        candidates_len: candidates.len(),
    }
}

#[test]
fn recommend_validates_its_arguments_and_answers() {
    const MIN: u64 = 60_000;
    let h = Handle::manual(1_000);
    let addrs = [ip("10.9.0.2")];
    let p = policy(24 * 60 * MIN);
    let inst = instance(&addrs, &p);
    let mut e = err();
    let mut n = usize::MAX;
    let mut out = recommendation_out();
    let mut outcomes = [autostandby_timeout_outcome::default(); 8];
    let cands = [5 * MIN, MIN];
    let q = query(&cands);
    // SAFETY (all calls below): pointers are NULL or valid for what they say.
    unsafe {
        assert_eq!(autostandby_register(h.0, 1, &inst, &mut e), AUTOSTANDBY_OK);
        let call = |q: *const autostandby_recommend_query,
                    out: *mut autostandby_recommendation,
                    outcomes: *mut autostandby_timeout_outcome,
                    cap: usize,
                    n: *mut usize,
                    e: &mut autostandby_error| {
            autostandby_recommend(h.0, 1, q, out, outcomes, cap, n, e)
        };
        let oc = outcomes.as_mut_ptr();
        // NULL outputs.
        assert_eq!(
            call(&q, &mut out, oc, 8, ptr::null_mut(), &mut e),
            AUTOSTANDBY_ERR_NULL_POINTER
        );
        assert!(msg(&e).contains("out_len"), "{}", msg(&e));
        assert_eq!(
            call(&q, ptr::null_mut(), oc, 8, &mut n, &mut e),
            AUTOSTANDBY_ERR_NULL_POINTER
        );
        assert_eq!(n, 0, "out_len is cleared on failure");
        assert_eq!(
            call(&q, &mut out, ptr::null_mut(), 2, &mut n, &mut e),
            AUTOSTANDBY_ERR_NULL_POINTER
        );
        assert!(msg(&e).contains("outcomes"), "{}", msg(&e));
        // Wrong sizes.
        let mut small = recommendation_out();
        small.struct_size = 4;
        assert_eq!(
            call(&q, &mut small, oc, 8, &mut n, &mut e),
            AUTOSTANDBY_ERR_STRUCT_SIZE
        );
        let mut bad_q = q;
        bad_q.struct_size = 8;
        assert_eq!(
            call(&bad_q, &mut out, oc, 8, &mut n, &mut e),
            AUTOSTANDBY_ERR_STRUCT_SIZE
        );
        assert!(msg(&e).contains("query"), "{}", msg(&e));
        assert_eq!(
            call(&q, &mut out, oc, usize::MAX, &mut n, &mut e),
            AUTOSTANDBY_ERR_INVALID_ARGUMENT
        );
        // Bad candidates.
        let mut null_c = q;
        null_c.candidates_ms = ptr::null();
        assert_eq!(
            call(&null_c, &mut out, oc, 8, &mut n, &mut e),
            AUTOSTANDBY_ERR_NULL_POINTER
        );
        let zero = [MIN, 0];
        assert_eq!(
            call(&query(&zero), &mut out, oc, 8, &mut n, &mut e),
            AUTOSTANDBY_ERR_INVALID_ARGUMENT
        );
        assert!(msg(&e).contains("candidate"), "{}", msg(&e));
        let many: Vec<u64> = (1..=AUTOSTANDBY_RECOMMEND_MAX_CANDIDATES as u64 + 1).collect();
        assert_eq!(
            call(&query(&many), &mut out, oc, 8, &mut n, &mut e),
            AUTOSTANDBY_ERR_INVALID_ARGUMENT
        );
        // Unknown instance.
        assert_eq!(
            autostandby_recommend(h.0, 99, &q, &mut out, oc, 8, &mut n, &mut e),
            AUTOSTANDBY_ERR_NOT_FOUND
        );

        // Idle from registration for 10 min, a 1-minute connection, idle for 4 more.
        let open = tcp_event(
            AUTOSTANDBY_FLOW_NEW,
            "10.9.0.1",
            4000,
            "10.9.0.2",
            80,
            1,
            Some(3),
        );
        let close = tcp_event(
            AUTOSTANDBY_FLOW_DESTROY,
            "10.9.0.1",
            4000,
            "10.9.0.2",
            80,
            1,
            Some(7),
        );
        assert_eq!(
            autostandby_advance_clock(h.0, 10 * MIN, &mut e),
            AUTOSTANDBY_OK
        );
        assert_eq!(autostandby_ingest(h.0, &open, 1, &mut e), AUTOSTANDBY_OK);
        assert_eq!(autostandby_advance_clock(h.0, MIN, &mut e), AUTOSTANDBY_OK);
        assert_eq!(autostandby_ingest(h.0, &close, 1, &mut e), AUTOSTANDBY_OK);
        assert_eq!(
            autostandby_advance_clock(h.0, 4 * MIN, &mut e),
            AUTOSTANDBY_OK
        );

        // A capacity of 1 still reports both candidates, ascending.
        assert_eq!(
            call(&q, &mut out, oc, 1, &mut n, &mut e),
            AUTOSTANDBY_OK,
            "{}",
            msg(&e)
        );
        assert_eq!(n, 2);
        assert_eq!(
            (
                outcomes[0].timeout_ms,
                outcomes[0].standbys,
                outcomes[0].wakes
            ),
            (MIN, 2, 1)
        );
        assert_eq!(outcomes[0].standby_ms, 9 * MIN + 3 * MIN);
        assert_eq!(
            outcomes[1],
            autostandby_timeout_outcome::default(),
            "beyond cap"
        );
        assert_eq!(call(&q, &mut out, oc, 8, &mut n, &mut e), AUTOSTANDBY_OK);
        assert_eq!(
            (
                outcomes[1].timeout_ms,
                outcomes[1].standbys,
                outcomes[1].wakes,
                outcomes[1].standby_ms
            ),
            (5 * MIN, 1, 1, 5 * MIN)
        );
        assert!(outcomes[1].exact);
        assert!(out.has_observed_since);
        assert_eq!(out.observed_since_ms, 1_000);
        assert_eq!((out.observed_ms, out.gaps), (15 * MIN, 1));
        assert_eq!((out.has_open_gap, out.open_gap_ms), (true, 4 * MIN));
        assert_eq!(out.minutes_per_wake, 30);
        // 15 minutes observed, at most one wake per 30 minutes: no wake allowed, and
        // both candidates have one.
        assert!(!out.has_recommended);
        // NULL query: the default candidates (30 s to 1 h); the 10-minute gap wakes
        // every one up to 10 min, so 15 min is the shortest with no wake.
        assert_eq!(
            autostandby_recommend(h.0, 1, ptr::null(), &mut out, oc, 8, &mut n, &mut e),
            AUTOSTANDBY_OK
        );
        assert_eq!(n, 8);
        assert_eq!(outcomes[0].timeout_ms, 30_000);
        assert_eq!(
            (out.has_recommended, out.recommended_timeout_ms),
            (true, 15 * MIN)
        );
    }
}
