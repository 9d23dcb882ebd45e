//! The process of the filter-scale benchmark (`benches/filter_scale.sh`, root): in the
//! current network namespace, opens `--listeners` event sockets with the address filter
//! of `--mode`, then creates `--events` conntrack entries for foreign addresses (none of
//! them registered, all outside the registered ranges) and measures the CPU time of the
//! creating thread. The kernel runs each listener's filter on each event in that
//! thread's context (the netlink broadcast of the create request), so the time includes
//! the filters. With `--v6-every K`, one entry in K is IPv6. Prints one `key=value` line.
//!
//! Modes: `none` (no listener: the cost of creating entries alone), `state` (the state
//! part only: every foreign event is queued), `exact100` (100 IPv4 addresses, exact),
//! `fleet` (10,000 IPv4 and 2,000 IPv6 addresses, in prefix form).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use autostandby::conntrack::{
    EventSocket, EventsSysctl, ObserverConfig, QuerySocket, bpf, request,
};
use autostandby::flow::{Flow, TcpState, Tuple, proto};

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_owned())
}

fn addresses(mode: &str) -> Option<Vec<IpAddr>> {
    let v4 = |i: u32| IpAddr::V4(Ipv4Addr::from(0x0a28_0000 + i)); // 10.40.0.0
    let v6 = |i: u128| IpAddr::V6(Ipv6Addr::from((0xfd40_u128 << 112) + i)); // fd40::
    match mode {
        "none" | "state" => None,
        "exact100" => Some((0..100).map(v4).collect()),
        "fleet" => Some((0..10_000).map(v4).chain((0..2_000).map(v6)).collect()),
        other => panic!("unknown mode {other}"),
    }
}

/// The `i`th foreign entry: one in `v6_every` IPv6 (none with 0).
fn foreign(i: u32, v6_every: u32) -> Flow {
    let (client, server): (IpAddr, IpAddr) = if v6_every > 0 && i % v6_every == v6_every - 1 {
        (
            IpAddr::V6(Ipv6Addr::from((0x2001_0db8_u128 << 96) | 1)),
            IpAddr::V6(Ipv6Addr::from(
                (0x2001_0db8_0002_u128 << 80) | u128::from(i),
            )),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i)), // 198.18.0.0/15
        )
    };
    Flow {
        protocol: proto::TCP,
        orig: Tuple::new(client, 10_000 + (i % 50_000) as u16, server, 80),
        reply: Tuple::new(server, 80, client, 10_000 + (i % 50_000) as u16),
        zone: 0,
        id: 0,
        tcp_state: Some(TcpState::ESTABLISHED),
        status: 0,
        mark: 0,
        timeout_s: None,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = arg(&args, "--mode", "fleet");
    let events: u32 = arg(&args, "--events", "20000").parse().expect("--events");
    let listeners: usize = arg(&args, "--listeners", "1").parse().expect("--listeners");
    let v6_every: u32 = arg(&args, "--v6-every", "0").parse().expect("--v6-every");
    let cfg = ObserverConfig {
        events_sysctl: EventsSysctl::SetOne,
        ..ObserverConfig::default()
    };
    let addrs = addresses(&mode);
    let mut socks = Vec::new();
    if mode != "none" {
        for _ in 0..listeners {
            let mut s = EventSocket::open(&cfg).expect("event socket");
            if let Some(a) = &addrs {
                s.set_address_filter(a).expect("address filter");
            }
            socks.push(s);
        }
    }
    let form = socks.first().and_then(|s| s.address_filter_form());
    let insns = match &addrs {
        Some(a) => bpf::event_filter(Some(a)).len(),
        None => bpf::state_filter().len(),
    };
    let mut query = QuerySocket::open(&cfg).expect("query socket");
    let flows: Vec<_> = (0..events).map(|i| foreign(i, v6_every)).collect();
    let reqs: Vec<Vec<u8>> = flows
        .iter()
        .map(|f| {
            let seq = query.alloc_seq();
            request::create(f, 600, true, seq)
        })
        .collect();
    let t0 = thread_cpu_ns();
    let wall = std::time::Instant::now();
    for r in &reqs {
        query.request_ack(r).expect("create");
    }
    let cpu = thread_cpu_ns() - t0;
    let wall = wall.elapsed();
    let mut read = 0u64;
    let mut drops = 0u64;
    for s in &mut socks {
        loop {
            let b = s.recv_batch(&mut |_| read += 1).expect("read");
            drops += b.drops;
            if !b.more {
                break;
            }
        }
    }
    let form = form.map_or_else(|| "-".to_owned(), |f| f.to_string().replace(' ', "_"));
    println!(
        "mode={mode} listeners={listeners} v6_every={v6_every} events={events} cpu_ns={cpu} cpu_ns_per_event={:.0} wall_ms={} insns={insns} events_read={read} drops={drops} form={form}",
        cpu as f64 / f64::from(events),
        wall.as_millis()
    );
}
