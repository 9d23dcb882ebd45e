//! Sequences of C ABI calls on a manual-mode controller, checked against a model of
//! which instances exist and which addresses they own: no crash, no panic, every return
//! code documented and equal to the error struct's, and no lost or invented instance.
#![no_main]

#[path = "../../tests/ffi_util/mod.rs"]
mod ffi_util;

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use autostandby::ffi::*;
use ffi_util::*;
use libfuzzer_sys::fuzz_target;

/// Instance addresses: four usable ones, then ones the library must refuse.
const ADDRS: [&str; 7] = [
    "10.0.0.2",
    "10.0.0.3",
    "fd00::2",
    "192.168.1.2",
    "127.0.0.1",
    "255.255.255.255",
    "ff02::1",
];
const USABLE: usize = 4;

#[derive(Arbitrary, Debug)]
enum Op {
    Register {
        key: u8,
        addr: u8,
        timeout_s: u8,
    },
    Update {
        key: u8,
        addr: u8,
        timeout_s: u8,
    },
    Unregister {
        key: u8,
    },
    Ingest {
        kind: u8,
        addr: u8,
        cport: u16,
        state: u8,
    },
    Advance {
        ms: u32,
    },
    Poll,
    Begin {
        key: u8,
    },
    Report {
        key: u8,
        outcome: u8,
    },
    Hold {
        key: u8,
    },
    Status {
        key: u8,
    },
    Explain {
        key: u8,
    },
}

fn check(rc: u32, e: &autostandby_error, call: &str) {
    assert!(
        rc <= AUTOSTANDBY_ERR_NO_CONFIRM_PENDING,
        "{call}: undocumented code {rc}"
    );
    assert!(
        !matches!(
            rc,
            AUTOSTANDBY_ERR_PANIC
                | AUTOSTANDBY_ERR_POISONED
                | AUTOSTANDBY_ERR_NULL_POINTER
                | AUTOSTANDBY_ERR_STRUCT_SIZE
        ),
        "{call}: {rc} {}",
        msg(e)
    );
    if rc != AUTOSTANDBY_OK {
        assert_eq!(e.code, rc, "{call}: error struct disagrees");
        assert!(!msg(e).is_empty(), "{call}: empty message for {rc}");
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let h = Handle::manual(1_700_000_000_000);
    // key -> address index
    let mut model: BTreeMap<u64, usize> = BTreeMap::new();
    let mut e = err();
    for op in ops.iter().take(256) {
        e = err();
        match *op {
            Op::Register {
                key,
                addr,
                timeout_s,
            }
            | Op::Update {
                key,
                addr,
                timeout_s,
            } => {
                let update = matches!(op, Op::Update { .. });
                let (key, a) = (u64::from(key % 6), addr as usize % ADDRS.len());
                let pol = policy(1_000 + u64::from(timeout_s) * 100);
                let addrs = [ip(ADDRS[a])];
                let inst = instance(&addrs, &pol);
                // SAFETY: valid pointers.
                let rc = unsafe {
                    if update {
                        autostandby_update(h.0, key, &inst, &mut e)
                    } else {
                        autostandby_register(h.0, key, &inst, &mut e)
                    }
                };
                check(rc, &e, "register/update");
                let exists = model.contains_key(&key);
                let owner = model.iter().find(|(_, v)| **v == a).map(|(k, _)| *k);
                let want = if update && !exists {
                    AUTOSTANDBY_ERR_NOT_FOUND
                } else if !update && exists {
                    AUTOSTANDBY_ERR_ALREADY_EXISTS
                } else if a >= USABLE {
                    AUTOSTANDBY_ERR_INVALID_ARGUMENT
                } else if owner.is_some_and(|o| o != key) {
                    AUTOSTANDBY_ERR_ADDRESS_IN_USE
                } else {
                    AUTOSTANDBY_OK
                };
                if update && rc == AUTOSTANDBY_ERR_STANDBY_IN_PROGRESS {
                    continue;
                }
                assert_eq!(rc, want, "{op:?} with {model:?}: {}", msg(&e));
                if rc == AUTOSTANDBY_OK {
                    model.insert(key, a);
                }
            }
            Op::Unregister { key } => {
                let key = u64::from(key % 6);
                // SAFETY: valid pointers.
                let rc = unsafe { autostandby_unregister(h.0, key, &mut e) };
                check(rc, &e, "unregister");
                let want = if model.remove(&key).is_some() {
                    AUTOSTANDBY_OK
                } else {
                    AUTOSTANDBY_ERR_NOT_FOUND
                };
                assert_eq!(rc, want, "{op:?}: {}", msg(&e));
            }
            Op::Ingest {
                kind,
                addr,
                cport,
                state,
            } => {
                let guest = ADDRS[addr as usize % USABLE];
                let client = if guest.contains(':') {
                    "fd00::99"
                } else {
                    "192.0.2.9"
                };
                let ev = tcp_event(
                    u32::from(kind % 3),
                    client,
                    cport,
                    guest,
                    80,
                    u32::from(cport),
                    (state < 10).then_some(state),
                );
                // SAFETY: valid pointers.
                let rc = unsafe { autostandby_ingest(h.0, &ev, 1, &mut e) };
                check(rc, &e, "ingest");
                assert_eq!(rc, AUTOSTANDBY_OK, "{op:?}: {}", msg(&e));
            }
            Op::Advance { ms } => {
                // SAFETY: valid pointers.
                let rc = unsafe { autostandby_advance_clock(h.0, u64::from(ms % 120_000), &mut e) };
                check(rc, &e, "advance_clock");
                assert_eq!(rc, AUTOSTANDBY_OK);
            }
            Op::Poll => {
                let mut out = [autostandby_decision::default(); 16];
                let mut n = usize::MAX;
                // SAFETY: valid pointers.
                let rc = unsafe {
                    autostandby_poll_decisions(h.0, out.as_mut_ptr(), out.len(), &mut n, 0, &mut e)
                };
                check(rc, &e, "poll_decisions");
                assert_eq!(rc, AUTOSTANDBY_OK);
                assert!(n <= out.len());
            }
            Op::Begin { key } => {
                let key = u64::from(key % 6);
                let (mut proceed, mut reason) = (false, u32::MAX);
                // SAFETY: valid pointers.
                let rc = unsafe {
                    autostandby_begin_standby(h.0, key, &mut proceed, &mut reason, &mut e)
                };
                check(rc, &e, "begin_standby");
                if !model.contains_key(&key) {
                    assert_eq!(rc, AUTOSTANDBY_ERR_NOT_FOUND, "{op:?}: {}", msg(&e));
                }
            }
            Op::Report { key, outcome } => {
                let key = u64::from(key % 6);
                // SAFETY: valid pointers.
                let rc =
                    unsafe { autostandby_report_standby(h.0, key, u32::from(outcome % 3), &mut e) };
                check(rc, &e, "report_standby");
                if rc == AUTOSTANDBY_OK && outcome % 3 == 2 {
                    // NOT_FOUND: the host says the instance is gone; the library drops it.
                    model.remove(&key);
                }
            }
            Op::Hold { key } | Op::Status { key } => {
                let key = u64::from(key % 6);
                let mut s = status_out();
                // SAFETY: valid pointers.
                let rc = unsafe {
                    if matches!(op, Op::Hold { .. }) {
                        autostandby_hold(h.0, key, &mut s, &mut e)
                    } else {
                        autostandby_status(h.0, key, &mut s, &mut e)
                    }
                };
                check(rc, &e, "hold/status");
                if model.contains_key(&key) {
                    assert!(
                        rc == AUTOSTANDBY_OK || rc == AUTOSTANDBY_ERR_STANDBY_IN_PROGRESS,
                        "{op:?}: {rc} {}",
                        msg(&e)
                    );
                } else {
                    assert_eq!(rc, AUTOSTANDBY_ERR_NOT_FOUND, "{op:?}: {}", msg(&e));
                }
            }
            Op::Explain { key } => {
                let key = u64::from(key % 6);
                let mut out = [autostandby_flow_info::default(); 8];
                let mut n = usize::MAX;
                // SAFETY: valid pointers.
                let rc = unsafe {
                    autostandby_explain(h.0, key, out.as_mut_ptr(), out.len(), &mut n, &mut e)
                };
                check(rc, &e, "explain");
            }
        }
        let mut st = stats_out();
        // SAFETY: valid pointers.
        let rc = unsafe { autostandby_stats(h.0, &mut st, &mut e) };
        check(rc, &e, "stats");
        assert_eq!(
            st.instances,
            model.len() as u64,
            "after {op:?}: model {model:?}"
        );
    }
    let _ = e;
});
