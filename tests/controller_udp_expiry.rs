//! A kernel-mode controller and a UDP flow that conntrack expires without an event: the
//! activity must end within about a second of the flow's timeout, not when conntrack's
//! garbage collector gets to the entry, and the checks look the flow up by its exact
//! tuple instead of dumping the table. In network namespaces this test creates and
//! always removes. Needs root: fails loudly without it.

mod conntrack_support;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use autostandby::controller::{Controller, ControllerConfig};
use autostandby::engine::Status;
use conntrack_support::*;

const PORT: u16 = 5353;

/// One datagram from the client and the server's answer.
fn exchange(client: &UdpSocket, server: &UdpSocket) {
    let mut buf = [0u8; 16];
    client.send_to(b"ping", (ip(SERVER), PORT)).unwrap();
    let (_, from) = server.recv_from(&mut buf).unwrap();
    server.send_to(b"pong", from).unwrap();
    client.recv_from(&mut buf).unwrap();
}

#[test]
fn an_expired_udp_flow_stops_counting_soon_after_its_timeout() {
    let pair = Pair::new();
    pair.sysctl_b("net.netfilter.nf_conntrack_udp_timeout", "2");
    pair.sysctl_b("net.netfilter.nf_conntrack_udp_timeout_stream", "2");
    let server = pair.in_b(|| UdpSocket::bind((ip(SERVER), PORT)));
    let client = pair.in_a(|| UdpSocket::bind((ip(CLIENT), 0)));
    for s in [&server, &client] {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    }

    let mut cfg = ControllerConfig::kernel();
    cfg.netns = Some(pair.b_path());
    cfg.resync_interval_ms = 600_000;
    let ctl = Controller::new(cfg).expect("kernel controller");
    let mut spec = running_instance(ip(SERVER), 600_000);
    spec.policy.as_mut().unwrap().protocols.udp = true;
    ctl.register(1, spec).unwrap();
    let wait = |what: &str, within: Duration, ok: &dyn Fn() -> bool| {
        let until = Instant::now() + within;
        while !ok() {
            assert!(
                Instant::now() < until,
                "{what} not reached within {within:?}: {:?}",
                ctl.status(1).unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait("idle countdown", Duration::from_secs(5), &|| {
        ctl.status(1).unwrap().status == Status::IdleCountdown
    });

    exchange(&client, &server);
    wait("active", Duration::from_secs(5), &|| {
        ctl.status(1).unwrap().active_inbound == 1
    });
    // Datagrams refresh the entry silently: it must keep counting for several timeouts.
    let lookups_before = ctl.stats().flow_lookups;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(250));
        exchange(&client, &server);
        let st = ctl.status(1).unwrap();
        assert_eq!(
            (st.status, st.active_inbound),
            (Status::Active, 1),
            "{st:?}"
        );
    }
    let last = Instant::now();
    let during = ctl.stats();
    assert!(
        during.flow_lookups > lookups_before,
        "the live flow was checked by lookups: {during:?}"
    );
    // The entry expires 2 s after the last datagram and is checked within 1.3 s of that
    // (a second because CTA_TIMEOUT is in whole seconds, and a 256 ms grid step): under
    // 3.3 s, plus slack for a loaded machine. Left to conntrack's garbage collector, the
    // end came later.
    wait("the flow's end", Duration::from_secs(5), &|| {
        ctl.status(1).unwrap().active_inbound == 0
    });
    let st = ctl.status(1).unwrap();
    assert_eq!(st.status, Status::IdleCountdown, "{st:?}");
    // The check that found the flow gone was a lookup: no walk of the table.
    let after = ctl.stats();
    assert!(after.flow_lookups > during.flow_lookups, "{after:?}");
    assert_eq!(after.dump_walks, during.dump_walks, "{after:?}");
    eprintln!(
        "the UDP flow's end was noticed {:?} after its last datagram (timeout 2 s)",
        last.elapsed()
    );
}
