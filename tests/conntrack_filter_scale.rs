//! The event filter at a fleet's scale, against the real kernel: 10,000 IPv4 and 2,000
//! IPv6 addresses do not fit one program exactly, so they are compared as covering
//! prefixes; events of foreign addresses must still never reach the socket, and every
//! event of a registered address must.

mod conntrack_support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use autostandby::conntrack::bpf::FamilyForm;
use autostandby::conntrack::{EventSocket, QuerySocket, request};
use autostandby::flow::{EventKind, Flow, TcpState, Tuple, proto};
use conntrack_support::*;

/// First registered IPv4 address: 10.40.0.0 (10,000 of them, to 10.40.39.15).
const V4_BASE: u32 = 0x0a28_0000;
/// First registered IPv6 address: fd40:: (2,000 of them, to fd40::7cf).
const V6_BASE: u128 = 0xfd40_u128 << 112;

fn v4(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(V4_BASE + i))
}

fn v6(i: u128) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(V6_BASE + i))
}

/// A TCP entry from `client` to `dialled`, answered by `server` (DNAT when they differ).
fn entry(client: IpAddr, dialled: IpAddr, server: IpAddr, port: u16) -> Flow {
    Flow {
        protocol: proto::TCP,
        orig: Tuple::new(client, port, dialled, 80),
        reply: Tuple::new(server, 80, client, port),
        zone: 0,
        id: 0,
        tcp_state: Some(TcpState::ESTABLISHED),
        status: 0,
        mark: 0,
        timeout_s: None,
    }
}

#[test]
fn fleet_scale_filter_drops_every_foreign_event_and_keeps_registered_ones() {
    let pair = Pair::new();
    let cfg = pair.config();
    let mut addrs: Vec<IpAddr> = (0..10_000).map(v4).collect();
    addrs.extend((0..2_000).map(v6));
    let mut sock = EventSocket::open(&cfg).expect("event socket");
    sock.set_address_filter(&addrs)
        .expect("any number of addresses is accepted");
    let form = sock.address_filter_form().expect("a form");
    assert!(
        matches!(form.v4, FamilyForm::Prefixes { addresses: 10_000, prefixes } if prefixes <= 8),
        "{form}"
    );
    assert!(
        matches!(form.v6, FamilyForm::Prefixes { addresses: 2_000, prefixes } if prefixes <= 8),
        "{form}"
    );
    let mut query = QuerySocket::open(&cfg).expect("query socket");

    let c4: IpAddr = ip("192.0.2.10");
    let c6: IpAddr = ip("2001:db8:1::10");
    // Foreign: outside the prefixes, just past either end of both ranges, and as DNAT
    // both ways round with foreign addresses only.
    let mut foreign = Vec::new();
    for (i, d) in [
        ip("198.18.0.1"),
        ip("10.41.0.1"),
        ip("10.39.255.255"),
        v4(10_000),
        v4(16_383),
        ip("172.16.40.0"),
    ]
    .into_iter()
    .enumerate()
    {
        foreign.push(entry(c4, d, d, 20_000 + i as u16));
    }
    for (i, d) in [
        ip("2001:db8:2::1"),
        ip("fd41::1"),
        v6(2_000),
        ip("fd3f:ffff::ffff"),
    ]
    .into_iter()
    .enumerate()
    {
        foreign.push(entry(c6, d, d, 21_000 + i as u16));
    }
    for i in 0..200u32 {
        let d = IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i)); // 198.18.0.0/15
        foreign.push(entry(c4, d, d, 22_000 + i as u16));
    }
    foreign.push(entry(c4, ip("203.0.113.5"), ip("198.51.100.7"), 23_000));
    // Registered: first, last, middle of each range; as the original destination and,
    // under DNAT, as the reply source only.
    let registered = [
        entry(c4, v4(0), v4(0), 30_000),
        entry(c4, v4(9_999), v4(9_999), 30_001),
        entry(c4, v4(5_432), v4(5_432), 30_002),
        entry(c4, ip("203.0.113.6"), v4(777), 30_003),
        entry(c6, v6(0), v6(0), 30_004),
        entry(c6, v6(1_999), v6(1_999), 30_005),
        entry(c6, ip("2001:db8:3::1"), v6(1_000), 30_006),
    ];
    // The registered ones last, so that reading until they are all seen also waits out
    // the foreign ones sent before.
    for f in &foreign {
        let seq = query.alloc_seq();
        query
            .request_ack(&request::create(f, 600, true, seq))
            .expect("create a foreign entry");
    }
    for f in &registered {
        let seq = query.alloc_seq();
        query
            .request_ack(&request::create(f, 600, true, seq))
            .expect("create a registered entry");
    }
    let events = collect_until(&mut sock, Duration::from_secs(5), |evs| {
        evs.len() >= registered.len()
    });
    // Anything still queued (nothing should be) is read too.
    std::thread::sleep(Duration::from_millis(200));
    let mut events = events;
    sock.recv_batch(&mut |ev| events.push(*ev)).expect("read");

    let is_registered = |f: &Flow| {
        addrs.contains(&f.orig.dst.to_canonical()) || addrs.contains(&f.reply.src.to_canonical())
    };
    let foreign_read: Vec<_> = events.iter().filter(|e| !is_registered(&e.flow)).collect();
    assert!(
        foreign_read.is_empty(),
        "{} foreign events read: {foreign_read:?}",
        foreign_read.len()
    );
    for r in &registered {
        assert!(
            events
                .iter()
                .any(|e| e.kind == EventKind::New && e.flow.orig == r.orig),
            "no NEW for {:?} ({} events read)",
            r.orig,
            events.len()
        );
    }
    assert_eq!(events.len(), registered.len(), "{events:?}");
    // The foreign entries exist: the filter, not the kernel, kept their events away.
    let listed = pair.conntrack_list_b();
    assert!(
        listed.len() >= foreign.len() + registered.len(),
        "{} entries listed",
        listed.len()
    );
}
