//! Kernel mode through the C ABI, against real conntrack in network namespaces this test
//! creates and always removes. Needs root: fails loudly without it in CI, says
//! "needs root" elsewhere (tests/root_check).

mod ffi_util;
mod root_check;

use std::ffi::CString;
use std::mem::size_of;
use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::ptr;
use std::time::{Duration, Instant};

use autostandby::controller::{Controller, ControllerConfig};
use autostandby::engine::{InstanceSpec, Lifecycle, Reason};
use autostandby::ffi::*;
use autostandby::policy::{Policy, Protocols};
use ffi_util::*;

fn require_root() {
    root_check::require_root("network namespaces, conntrack");
}

fn sh(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect("spawn");
    assert!(status.success(), "{args:?} failed");
}

/// A namespace reached from the host over a veth pair, with conntrack enabled by an nft
/// rule. Removed on drop.
struct Lab {
    ns: String,
    host_if: String,
    guest: Ipv4Addr,
}

impl Lab {
    fn new(tag: u8) -> Self {
        require_root();
        let id = std::process::id() % 10_000;
        let ns = format!("as-ffi-k{id}-{tag}");
        let host_if = format!("asffk{id}{tag}h");
        let ns_if = format!("asffk{id}{tag}n");
        let net = format!("10.202.{}", (id as u8).wrapping_add(tag));
        let lab = Self {
            ns: ns.clone(),
            host_if: host_if.clone(),
            guest: format!("{net}.2").parse().unwrap(),
        };
        sh(&["ip", "netns", "add", &ns]);
        sh(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        sh(&["ip", "link", "set", &ns_if, "netns", &ns]);
        sh(&["ip", "addr", "add", &format!("{net}.1/24"), "dev", &host_if]);
        sh(&["ip", "link", "set", &host_if, "up"]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{net}.2/24"),
            "dev",
            &ns_if,
        ]);
        sh(&["ip", "-n", &ns, "link", "set", &ns_if, "up"]);
        sh(&["ip", "netns", "exec", &ns, "nft", "add table inet as_ffi_k"]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "nft",
            "add chain inet as_ffi_k input { type filter hook input priority 0; }",
        ]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "nft",
            "add rule inet as_ffi_k input ct state new,established counter",
        ]);
        lab
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.ns)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

#[test]
fn a_missing_namespace_is_a_clear_error() {
    require_root();
    let path = CString::new("/run/netns/as-ffi-does-not-exist").unwrap();
    let mut cfg = manual_config(0);
    cfg.mode = AUTOSTANDBY_MODE_KERNEL;
    cfg.netns_path = path.as_ptr();
    let mut out = ptr::null_mut();
    let mut e = err();
    // SAFETY: valid pointers.
    let rc = unsafe { autostandby_controller_new(&cfg, &mut out, &mut e) };
    assert_eq!(rc, AUTOSTANDBY_ERR_IO, "{}", msg(&e));
    assert!(out.is_null());
    assert!(msg(&e).contains("as-ffi-does-not-exist"), "{}", msg(&e));
}

#[test]
fn manual_only_calls_are_refused_in_kernel_mode() {
    let lab = Lab::new(1);
    let path = CString::new(lab.path()).unwrap();
    let mut cfg = manual_config(0);
    cfg.mode = AUTOSTANDBY_MODE_KERNEL;
    cfg.netns_path = path.as_ptr();
    let mut raw = ptr::null_mut();
    let mut e = err();
    // SAFETY: valid pointers.
    unsafe {
        assert_eq!(
            autostandby_controller_new(&cfg, &mut raw, &mut e),
            AUTOSTANDBY_OK,
            "{}",
            msg(&e)
        );
        let h = Handle(raw);
        let ev = tcp_event(0, "10.9.9.9", 1, "10.9.9.8", 2, 1, Some(3));
        assert_eq!(
            autostandby_ingest(h.0, &ev, 1, &mut e),
            AUTOSTANDBY_ERR_WRONG_MODE
        );
        assert!(
            msg(&e).contains("ingest is only available in manual mode"),
            "{}",
            msg(&e)
        );
        assert_eq!(
            autostandby_advance_clock(h.0, 1, &mut e),
            AUTOSTANDBY_ERR_WRONG_MODE
        );
        assert_eq!(
            autostandby_resync(h.0, ptr::null(), 0, &mut e),
            AUTOSTANDBY_ERR_WRONG_MODE
        );
        assert_eq!(
            autostandby_set_observer_error(h.0, ptr::null(), &mut e),
            AUTOSTANDBY_ERR_WRONG_MODE
        );
        assert_eq!(
            autostandby_confirm(h.0, 1, AUTOSTANDBY_CONFIRM_OK, ptr::null(), 0, &mut e),
            AUTOSTANDBY_ERR_WRONG_MODE
        );
        assert!(
            msg(&e).contains("confirm is only available in manual mode"),
            "{}",
            msg(&e)
        );
        let mut s = stats_out();
        assert_eq!(autostandby_stats(h.0, &mut s, &mut e), AUTOSTANDBY_OK);
        let _ = size_of::<autostandby_stats>();
    }
}

/// Lost events (a receive buffer far too small for a burst) are detected, answered with
/// a resync, and the instance ends up with the true flow count.
#[test]
fn lost_events_are_answered_with_a_resync() {
    let lab = Lab::new(2);
    let mut cfg = ControllerConfig::kernel();
    cfg.netns = Some(lab.path().into());
    cfg.rcvbuf_bytes = 4096;
    let ctl = Controller::new(cfg).expect("kernel controller");
    let spec = InstanceSpec {
        addresses: vec![lab.guest.into()],
        policy: Some(Policy {
            enabled: true,
            idle_timeout_ms: 600_000,
            ignore_source_cidrs: vec![],
            ignore_destination_ports: vec![],
            protocols: Protocols {
                tcp: true,
                udp: true,
            },
            wake_on_traffic: false,
            min_uptime_ms: 0,
            wake_source_cidrs: vec![],
        }),
        lifecycle: Lifecycle::Running,
        network_enabled: true,
        has_vgpu: false,
        runtime: Default::default(),
    };
    ctl.register(1, spec).unwrap();
    // Let the first resync finish so the burst is judged by events alone.
    std::thread::sleep(Duration::from_millis(500));

    // A burst of distinct UDP flows to the guest: far more events than 4 KiB holds.
    const FLOWS: u16 = 3_000;
    let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
    // Resolve the neighbour first, so the burst is not cut by the unresolved queue.
    sock.send_to(b"x", (lab.guest, 10_000)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for port in 1..=FLOWS {
        sock.send_to(b"x", (lab.guest, 10_000 + port)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    // The kernel's own count is the truth the controller must reach.
    let listed = Command::new("ip")
        .args(["netns", "exec", &lab.ns, "conntrack", "-L", "-p", "udp"])
        .args(["-d", &lab.guest.to_string()])
        .output()
        .expect("conntrack -L");
    let in_kernel = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|l| l.starts_with("udp"))
        .count() as u32;
    assert!(
        in_kernel > 1_000,
        "the burst created only {in_kernel} flows"
    );

    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let s = ctl.stats();
        let st = ctl.status(1).unwrap();
        if s.events_lost >= 1
            && st.active_inbound == in_kernel
            && st.reason == Reason::ActiveInboundConnections
        {
            assert!(s.engine.resyncs >= 2, "{s:?}");
            break;
        }
        if Instant::now() >= until {
            let mut logs = Vec::new();
            ctl.drain_logs(&mut logs, 100);
            panic!("no recovery to {in_kernel} flows: stats {s:?}, status {st:?}, logs {logs:#?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
