//! Conntrack can end an entry while its connection lives (`conntrack -D`, a flush, an
//! expired ESTABLISHED timeout): no FIN, no RST, just a DESTROY. Such an end must not
//! start a countdown to standby without a dump confirming it. In network namespaces
//! this test creates and always removes. Needs root: fails loudly without it.

mod conntrack_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use autostandby::controller::{Controller, ControllerConfig};
use autostandby::engine::{Decision, Reason, Status};
use conntrack_support::*;

const IDLE_MS: u64 = 3_000;

fn wait_for(ctl: &Controller, what: &str, ok: impl Fn(Status, Reason, u32) -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let st = ctl.status(1).unwrap();
        if ok(st.status, st.reason, st.active_inbound) {
            return;
        }
        assert!(Instant::now() < until, "{what}: {st:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_deleted_entry_of_an_open_connection_does_not_count_down_to_standby() {
    let pair = Pair::new();
    let mut cfg = ControllerConfig::kernel();
    cfg.netns = Some(pair.b_path());
    cfg.resync_interval_ms = 600_000;
    let ctl = Controller::new(cfg).expect("kernel controller");
    ctl.register(1, running_instance(ip(SERVER), IDLE_MS))
        .unwrap();
    // Connect once the controller listens: with nf_conntrack_events=2 an entry created
    // before any listener sends no events at all, its DESTROY included.
    let sa = SocketAddr::new(ip(SERVER), 80);
    let listener = pair.in_b(move || TcpListener::bind(sa));
    let mut client = pair.in_a(move || TcpStream::connect_timeout(&sa, Duration::from_secs(2)));
    let (mut server, _) = listener.accept().unwrap();
    // Seen, and the first resync after the registration has read the instance's flows.
    wait_for(&ctl, "the connection is seen", |s, r, n| {
        (s, r, n) == (Status::Active, Reason::ActiveInboundConnections, 1)
    });

    // Delete the entry: the connection is still open on both ends.
    let out = Command::new("ip")
        .args(["netns", "exec", pair.b.as_str()])
        .args(["conntrack", "-D", "-p", "tcp", "--orig-port-dst", "80"])
        .output()
        .expect("conntrack -D");
    assert!(out.status.success(), "{out:?}");
    wait_for(&ctl, "the DESTROY is applied", |_, _, n| n == 0);
    // Held for a resync: not a countdown that could reach standby.
    let st = ctl.status(1).unwrap();
    assert_eq!(
        (st.status, st.reason),
        (Status::IdleCountdown, Reason::ResyncPending),
        "{st:?}"
    );
    assert_eq!(ctl.stats().engine.suspect_ends, 1);

    // A packet on the connection re-creates the entry (loose pickup): active again.
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).unwrap();
    wait_for(&ctl, "the re-created entry is seen", |s, _, n| {
        s == Status::Active && n == 1
    });

    // Well past the idle timeout with the connection open: no standby.
    let until = Instant::now() + Duration::from_millis(2 * IDLE_MS);
    while Instant::now() < until {
        let mut out = Vec::new();
        ctl.poll_decisions(&mut out, 64, Duration::from_millis(100))
            .unwrap();
        assert!(
            !out.iter().any(|d| matches!(d, Decision::Standby { .. })),
            "standby while the connection is open: {:?}",
            ctl.status(1)
        );
    }
    assert_eq!(ctl.status(1).unwrap().status, Status::Active);

    // A normal close (FIN both ways) is not suspect: a plain countdown starts.
    drop(client);
    drop(server);
    wait_for(&ctl, "the close is seen", |s, r, _| {
        (s, r) == (Status::IdleCountdown, Reason::IdleTimeoutNotElapsed)
    });
    assert_eq!(ctl.stats().engine.suspect_ends, 1);
}
