//! Conntrack observer against the real kernel, in namespaces the tests create (root).

mod conntrack_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use autostandby::conntrack::{
    EventSocket, EventsSysctl, FilterSupport, QuerySocket, events_sysctl, request,
};
use autostandby::flow::{EventKind, Family, Flow, FlowEvent, TcpState, proto};
use conntrack_support::*;

const WAIT: Duration = Duration::from_secs(5);

fn listen(pair: &Pair, addr: &str, port: u16) -> TcpListener {
    let sa = SocketAddr::new(ip(addr), port);
    pair.in_b(move || TcpListener::bind(sa))
}

fn connect(pair: &Pair, addr: &str, port: u16) -> TcpStream {
    let sa = SocketAddr::new(ip(addr), port);
    pair.in_a(move || TcpStream::connect_timeout(&sa, Duration::from_secs(2)))
}

/// One request/response exchange, then the client closes first.
fn exchange_and_close(pair: &Pair, listener: &TcpListener, addr: &str, port: u16) -> u16 {
    let mut c = connect(pair, addr, port);
    let client_port = c.local_addr().unwrap().port();
    let (mut s, _) = listener.accept().unwrap();
    c.write_all(&[7u8; 200]).unwrap();
    let mut buf = [0u8; 200];
    s.read_exact(&mut buf).unwrap();
    drop(c);
    // The server sees EOF and closes its side.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    drop(s);
    client_port
}

fn of_port(events: &[FlowEvent], port: u16) -> Vec<FlowEvent> {
    events
        .iter()
        .filter(|e| e.flow.orig.src_port == port)
        .copied()
        .collect()
}

#[test]
fn tcp_new_updates_and_destroy_carry_tuples_and_states() {
    let pair = Pair::new();
    let mut ev = EventSocket::open(&pair.config()).unwrap();
    // The whole lifecycle, intermediate states included.
    ev.set_state_filter(false).unwrap();
    let mut q = QuerySocket::open(&pair.config()).unwrap();
    assert!(
        ev.effective_rcvbuf() >= 16 << 20,
        "rcvbuf {}",
        ev.effective_rcvbuf()
    );
    let l = listen(&pair, SERVER, 80);
    let port = exchange_and_close(&pair, &l, SERVER, 80);

    let events = collect_until(&mut ev, WAIT, |evs| {
        of_port(evs, port).iter().any(|e| {
            e.flow
                .tcp_state
                .is_some_and(|s| s == TcpState::TIME_WAIT || s == TcpState::CLOSE)
        })
    });
    let mine = of_port(&events, port);
    let first = mine.first().expect("events for the connection");
    assert_eq!(first.kind, EventKind::New, "{mine:?}");
    assert_eq!(first.flow.protocol, proto::TCP);
    assert_eq!(first.flow.orig.src, ip(CLIENT));
    assert_eq!(first.flow.orig.dst, ip(SERVER));
    assert_eq!(first.flow.orig.dst_port, 80);
    assert_eq!(first.flow.reply.src, ip(SERVER));
    assert_eq!(first.flow.reply.src_port, 80);
    assert_eq!(first.flow.reply.dst_port, port);
    assert_eq!(first.flow.tcp_state, Some(TcpState::SYN_SENT));
    assert_ne!(first.flow.id, 0);
    let states: Vec<TcpState> = mine.iter().filter_map(|e| e.flow.tcp_state).collect();
    assert!(states.contains(&TcpState::ESTABLISHED), "{states:?}");
    assert!(
        mine[1..].iter().all(|e| e.kind == EventKind::Update),
        "{mine:?}"
    );
    assert!(mine.iter().all(|e| e.flow.key() == first.flow.key()));

    // TIME_WAIT lasts 1 s here; a dump reaps expired entries, which sends the DESTROY.
    std::thread::sleep(Duration::from_millis(1500));
    let destroyed = collect_until(&mut ev, WAIT, |evs| {
        q.dump(Family::V4, &mut |_| {}).unwrap();
        of_port(evs, port)
            .iter()
            .any(|e| e.kind == EventKind::Destroy)
    });
    let d = of_port(&destroyed, port)
        .into_iter()
        .find(|e| e.kind == EventKind::Destroy)
        .unwrap();
    assert_eq!(d.flow.key(), first.flow.key());
    let s = ev.stats();
    assert_eq!((s.malformed, s.drops, s.enobufs), (0, 0, 0));
}

#[test]
fn kernel_filtered_dump_finds_only_the_asked_address() {
    let pair = Pair::new();
    let mut q = QuerySocket::open(&pair.config()).unwrap();
    // Opening costs no walk: the first filtered dump finds out.
    assert_eq!(q.filter_support(), FilterSupport::Untried);
    let l2 = listen(&pair, SERVER, 80);
    let l3 = listen(&pair, OTHER, 80);
    let c2 = connect(&pair, SERVER, 80);
    let c3 = connect(&pair, OTHER, 80);
    let (_s2, _) = l2.accept().unwrap();
    let (_s3, _) = l3.accept().unwrap();

    let mut seen = Vec::new();
    let stats = q
        .dump_addresses(&[ip(SERVER)], &mut |f| seen.push(*f))
        .unwrap();
    assert!(stats.kernel_filtered);
    assert_eq!(
        q.filter_support(),
        FilterSupport::Kernel,
        "CTA_FILTER not applied by this kernel"
    );
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].orig.src_port, c2.local_addr().unwrap().port());
    assert_eq!(seen[0].tcp_state, Some(TcpState::ESTABLISHED));
    // By default one walk (reply source), and only the matching entry crossed over.
    assert_eq!((stats.walks, stats.received), (1, 1), "{stats:?}");

    // With the original destination too: two walks, same answer here (no flow is
    // dialled to SERVER and answered by another host); the second walk recognises the
    // entry as already reported.
    q.set_match_orig_destination(true);
    let mut two_walks = Vec::new();
    let st = q
        .dump_addresses(&[ip(SERVER)], &mut |f| two_walks.push(*f))
        .unwrap();
    // Compared by identity here and below: the remaining timeouts tick between dumps.
    let keys = |v: &[Flow]| v.iter().map(Flow::key).collect::<Vec<_>>();
    assert_eq!((st.walks, st.received), (2, 2));
    assert_eq!(keys(&two_walks), keys(&seen));
    q.set_match_orig_destination(false);

    // Many addresses (a periodic reconcile of every instance): one combined full dump
    // filtered in userspace instead of two kernel walks per address.
    let mut many = vec![ip(SERVER)];
    many.extend((10..20).map(|i| ip(&format!("10.231.0.{i}"))));
    let mut combined = Vec::new();
    let st = q.dump_addresses(&many, &mut |f| combined.push(*f)).unwrap();
    assert_eq!((st.walks, st.kernel_filtered), (1, false), "{st:?}");
    assert_eq!(keys(&combined), keys(&seen));

    let mut none = 0;
    q.dump_addresses(&[ip("10.231.0.77")], &mut |_| none += 1)
        .unwrap();
    assert_eq!(none, 0);

    // The userspace fallback gives the same answer.
    q.force_userspace_filter();
    let mut again = Vec::new();
    let stats = q
        .dump_addresses(&[ip(SERVER)], &mut |f| again.push(*f))
        .unwrap();
    assert!(!stats.kernel_filtered);
    assert_eq!(keys(&again), keys(&seen));
    let mut all = 0;
    q.dump(Family::V4, &mut |_| all += 1).unwrap();
    assert_eq!(all, 2);
    drop(c3);
}

#[test]
fn a_flow_from_before_the_observer_is_found_by_a_dump() {
    let pair = Pair::new();
    let l = listen(&pair, SERVER, 80);
    let c = connect(&pair, SERVER, 80);
    let (_s, _) = l.accept().unwrap();
    // Only now does the observer start.
    let ev = EventSocket::open(&pair.config()).unwrap();
    assert_eq!(
        ev.events_sysctl(),
        2,
        "a new namespace starts with nf_conntrack_events=2"
    );
    let mut q = QuerySocket::open(&pair.config()).unwrap();
    let mut found = Vec::new();
    q.dump_addresses(&[ip(SERVER)], &mut |f| found.push(*f))
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].orig.src_port, c.local_addr().unwrap().port());
    assert_eq!(found[0].tcp_state, Some(TcpState::ESTABLISHED));
    drop(c);
    drop(_s);
    // After the close, a reconcile dump no longer reports it live (retried: the FIN
    // exchange may still be in flight on a loaded machine).
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut after = Vec::new();
        q.dump_addresses(&[ip(SERVER)], &mut |f| after.push(*f))
            .unwrap();
        if after
            .iter()
            .all(|f| f.tcp_state.is_some_and(TcpState::is_finished))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still live: {after:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn events_sysctl_can_be_set_per_namespace() {
    let pair = Pair::new();
    let host_before = events_sysctl(None).unwrap();
    assert_eq!(events_sysctl(Some(&pair.b_path())).unwrap(), 2);
    let mut cfg = pair.config();
    cfg.events_sysctl = EventsSysctl::SetOne;
    let ev = EventSocket::open(&cfg).unwrap();
    assert_eq!(ev.events_sysctl(), 1);
    assert_eq!(events_sysctl(Some(&pair.b_path())).unwrap(), 1);
    assert_eq!(
        events_sysctl(None).unwrap(),
        host_before,
        "the host's value must not change"
    );
}

#[test]
fn a_mark_change_is_an_update_that_keeps_the_flow_live() {
    let pair = Pair::new();
    let mut ev = EventSocket::open(&pair.config()).unwrap();
    // To see ESTABLISHED; the state filter goes back on below.
    ev.set_state_filter(false).unwrap();
    let mut q = QuerySocket::open(&pair.config()).unwrap();
    let l = listen(&pair, SERVER, 80);
    let c = connect(&pair, SERVER, 80);
    let (_s, _) = l.accept().unwrap();
    let port = c.local_addr().unwrap().port();
    let established = collect_until(&mut ev, WAIT, |evs| {
        of_port(evs, port)
            .iter()
            .any(|e| e.flow.tcp_state == Some(TcpState::ESTABLISHED))
    });
    let flow = of_port(&established, port).last().unwrap().flow;

    // Through ctnetlink: CT_NEW without NLM_F_CREATE on the existing entry.
    let seq = q.alloc_seq();
    q.request_ack(&request::set_mark(&flow.orig, flow.protocol, 42, seq))
        .unwrap();
    let evs = collect_until(&mut ev, WAIT, |evs| {
        of_port(evs, port).iter().any(|e| e.flow.mark == 42)
    });
    let upd = of_port(&evs, port)
        .into_iter()
        .find(|e| e.flow.mark == 42)
        .unwrap();
    assert_eq!(upd.kind, EventKind::Update);
    assert!(
        !upd.flow.tcp_state.is_some_and(TcpState::is_finished),
        "{upd:?}"
    );

    // From the ruleset on a data packet: an UPDATE that carries no TCP state at all.
    // Inserted before the accept rule, so it runs on every packet. It passes the state
    // filter (the engine stores an unknown flow on one as live), unlike the ctnetlink
    // change above, which reports the state (ESTABLISHED) along with the mark.
    ev.set_state_filter(true).unwrap();
    pair.nft_b("insert rule inet as_conntrack input tcp dport 80 meta length > 150 ct mark set 43");
    let mut c = c;
    c.write_all(&[1u8; 300]).unwrap();
    let evs = collect_until(&mut ev, WAIT, |evs| {
        of_port(evs, port).iter().any(|e| e.flow.mark == 43)
    });
    let upd = of_port(&evs, port)
        .into_iter()
        .find(|e| e.flow.mark == 43)
        .unwrap();
    assert_eq!(upd.kind, EventKind::Update);
    assert_eq!(
        upd.flow.tcp_state, None,
        "a mark-only UPDATE has no CTA_PROTOINFO: {upd:?}"
    );
    let mut live = Vec::new();
    q.dump_addresses(&[ip(SERVER)], &mut |f| live.push(*f))
        .unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].tcp_state, Some(TcpState::ESTABLISHED));
    assert_eq!(live[0].mark, 43);
}

#[test]
fn the_bpf_filter_drops_foreign_events_in_the_kernel() {
    let pair = Pair::new();
    let mut filtered = EventSocket::open(&pair.config()).unwrap();
    // The address part alone: the state part is tested on its own.
    filtered.set_state_filter(false).unwrap();
    filtered
        .set_address_filter(&[ip(SERVER), ip(SERVER6)])
        .unwrap();
    let mut all = EventSocket::open(&pair.config()).unwrap();
    all.set_state_filter(false).unwrap();
    let l2 = listen(&pair, SERVER, 80);
    let l3 = listen(&pair, OTHER, 80);
    let mut ports = (Vec::new(), Vec::new());
    for _ in 0..10 {
        ports.0.push(exchange_and_close(&pair, &l2, SERVER, 80));
        ports.1.push(exchange_and_close(&pair, &l3, OTHER, 80));
    }
    let done = |evs: &[FlowEvent], p: &[u16]| {
        p.iter().all(|port| {
            of_port(evs, *port)
                .iter()
                .any(|e| e.flow.tcp_state == Some(TcpState::TIME_WAIT))
        })
    };
    let everything = collect_until(&mut all, WAIT, |evs| {
        done(evs, &ports.0) && done(evs, &ports.1)
    });
    let mine = collect_until(&mut filtered, WAIT, |evs| done(evs, &ports.0));
    let foreign_total = everything
        .iter()
        .filter(|e| e.flow.reply.src == ip(OTHER))
        .count();
    assert!(
        foreign_total >= 30,
        "the unfiltered socket saw the foreign flows: {foreign_total}"
    );
    assert!(
        mine.iter().all(|e| e.flow.reply.src == ip(SERVER)),
        "foreign event passed the filter"
    );
    // DESTROYs come late (garbage collection), so the two sockets may stop reading on
    // either side of one: compare everything before them.
    let live = |evs: &[FlowEvent], addr: &str| {
        evs.iter()
            .filter(|e| e.kind != EventKind::Destroy && e.flow.reply.src == ip(addr))
            .count()
    };
    assert_eq!(live(&mine, SERVER), live(&everything, SERVER));
    // Nothing foreign was queued, read or parsed: the socket's message counter equals
    // the events for our address.
    let s = filtered.stats();
    assert_eq!(s.messages as usize, mine.len(), "{s:?}");
    assert_eq!((s.drops, s.enobufs), (0, 0));

    // Re-attaching with the other address swaps what passes.
    filtered.set_address_filter(&[ip(OTHER)]).unwrap();
    let p3 = exchange_and_close(&pair, &l3, OTHER, 80);
    let p2 = exchange_and_close(&pair, &l2, SERVER, 80);
    let next = collect_until(&mut filtered, WAIT, |evs| done(evs, &[p3]));
    assert!(!of_port(&next, p3).is_empty());
    assert!(of_port(&next, p2).is_empty());
}

#[test]
fn ipv6_flows_are_observed_and_dumped() {
    let pair = Pair::new();
    let mut ev = EventSocket::open(&pair.config()).unwrap();
    ev.set_address_filter(&[ip(SERVER6)]).unwrap();
    let mut q = QuerySocket::open(&pair.config()).unwrap();
    let l = listen(&pair, SERVER6, 80);
    let c = connect(&pair, SERVER6, 80);
    let (_s, _) = l.accept().unwrap();
    let port = c.local_addr().unwrap().port();
    let evs = collect_until(&mut ev, WAIT, |evs| {
        of_port(evs, port)
            .iter()
            .any(|e| e.flow.tcp_state == Some(TcpState::ESTABLISHED))
    });
    let first = of_port(&evs, port)[0];
    assert_eq!(first.kind, EventKind::New);
    assert_eq!(first.flow.family(), Family::V6);
    assert_eq!(first.flow.orig.src, ip(CLIENT6));
    assert_eq!(first.flow.reply.src, ip(SERVER6));
    let mut dumped = Vec::new();
    q.dump(Family::V6, &mut |f| dumped.push(*f)).unwrap();
    assert!(dumped.iter().any(|f| f.orig.src_port == port));
    let mut filtered = Vec::new();
    q.dump_addresses(&[ip(SERVER6)], &mut |f| filtered.push(*f))
        .unwrap();
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0].key(), first.flow.key());
}

#[test]
fn udp_flows_are_observed() {
    let pair = Pair::new();
    let mut ev = EventSocket::open(&pair.config()).unwrap();
    let server = pair.in_b(|| UdpSocket::bind((ip(SERVER), 5353)));
    let client = pair.in_a(|| UdpSocket::bind((ip(CLIENT), 0)));
    client.send_to(b"ping", (ip(SERVER), 5353)).unwrap();
    let mut buf = [0u8; 16];
    let (_, from) = server.recv_from(&mut buf).unwrap();
    server.send_to(b"pong", from).unwrap();
    client.recv_from(&mut buf).unwrap();
    let port = client.local_addr().unwrap().port();
    let evs = collect_until(&mut ev, WAIT, |evs| of_port(evs, port).len() >= 2);
    let mine = of_port(&evs, port);
    assert_eq!(mine[0].kind, EventKind::New);
    assert_eq!(mine[0].flow.protocol, proto::UDP);
    assert_eq!(mine[0].flow.orig.dst_port, 5353);
    assert_eq!(mine[0].flow.tcp_state, None);
    // The reply marks it SEEN_REPLY (status bit 1).
    assert!(
        mine[1..]
            .iter()
            .any(|e| e.kind == EventKind::Update && e.flow.status & 0x2 != 0)
    );
}

#[test]
fn a_dnat_port_forward_is_attributed_to_the_guest() {
    let pair = Pair::new();
    let mut ev = EventSocket::open(&pair.config()).unwrap();
    ev.set_address_filter(&[ip(SERVER)]).unwrap();
    let mut q = QuerySocket::open(&pair.config()).unwrap();
    let l = listen(&pair, SERVER, 80);
    let c = connect(&pair, DNAT_ADDR, 8080);
    let (_s, _) = l.accept().unwrap();
    let port = c.local_addr().unwrap().port();
    let evs = collect_until(&mut ev, WAIT, |evs| !of_port(evs, port).is_empty());
    let first = of_port(&evs, port)[0];
    assert_eq!(first.flow.orig.dst, ip(DNAT_ADDR));
    assert_eq!(first.flow.orig.dst_port, 8080);
    assert_eq!(
        first.flow.reply.src,
        ip(SERVER),
        "the reply source is the guest"
    );
    assert_eq!(first.flow.reply.src_port, 80);
    let mut dumped = Vec::new();
    q.dump_addresses(&[ip(SERVER)], &mut |f| dumped.push(*f))
        .unwrap();
    assert_eq!(dumped.len(), 1);
    assert_eq!(dumped[0].orig.dst, ip(DNAT_ADDR));
    // Asked by the dialled address, the original-destination walk finds it; the reply
    // source alone (the default) does not.
    q.set_match_orig_destination(true);
    let mut by_dialled = Vec::new();
    let st = q
        .dump_addresses(&[ip(DNAT_ADDR)], &mut |f| by_dialled.push(*f))
        .unwrap();
    assert!(st.kernel_filtered);
    let keys = |v: &[Flow]| v.iter().map(Flow::key).collect::<Vec<_>>();
    assert_eq!(keys(&by_dialled), keys(&dumped));
    q.set_match_orig_destination(false);
    let mut reply_only = 0;
    q.dump_addresses(&[ip(DNAT_ADDR)], &mut |_| reply_only += 1)
        .unwrap();
    assert_eq!(reply_only, 0);
}

/// `sport` of the original direction of every TCP entry to `dst` in `conntrack -L`.
fn kernel_ports(pair: &Pair, dst: &str) -> std::collections::BTreeMap<u16, String> {
    pair.conntrack_list_b()
        .iter()
        .filter(|l| l.starts_with("tcp") && l.contains(&format!(" dst={dst} ")))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let sport = f
                .iter()
                .find_map(|w| w.strip_prefix("sport="))
                .unwrap()
                .parse()
                .unwrap();
            (sport, f[3].to_owned())
        })
        .collect()
}

#[test]
fn a_reader_stall_that_overflows_a_small_buffer_is_detected_and_a_dump_restores_the_table() {
    let pair = Pair::new();
    // Keep closed flows in the table so the kernel's view is stable while compared.
    pair.sysctl_b("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "120");
    let mut cfg = pair.config();
    cfg.rcvbuf_bytes = 64 * 1024;
    let mut ev = EventSocket::open(&cfg).unwrap();
    assert!(
        ev.effective_rcvbuf() < 256 * 1024,
        "{}",
        ev.effective_rcvbuf()
    );
    let mut q = QuerySocket::open(&pair.config()).unwrap();
    let l = listen(&pair, SERVER, 80);
    // The reader stalls while ~150 connections (about 1,000 events) happen.
    let mut open = Vec::new();
    for i in 0..150 {
        let c = connect(&pair, SERVER, 80);
        let (s, _) = l.accept().unwrap();
        if i % 3 == 0 {
            open.push((c, s)); // a third stay established
        } else {
            drop(c);
            drop(s);
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut seen = 0u64;
    let mut total = autostandby::conntrack::RecvBatch::default();
    loop {
        let b = ev.recv_batch(&mut |_| seen += 1).unwrap();
        total.drops += b.drops;
        total.enobufs += b.enobufs;
        if b.messages == 0 && !b.more {
            break;
        }
    }
    assert!(total.drops > 0, "the kernel dropped events: {total:?}");
    assert!(total.enobufs >= 1, "ENOBUFS was reported: {total:?}");
    assert!(
        seen < 150 * 5,
        "only part of the events fit the buffer: {seen}"
    );
    assert!(ev.stats().loss_episodes >= 1);

    // The resync: a targeted dump equals the kernel's table (conntrack -L).
    let mut dumped = std::collections::BTreeMap::new();
    q.dump_addresses(&[ip(SERVER)], &mut |f| {
        dumped.insert(f.orig.src_port, f.tcp_state.unwrap().name().to_owned());
    })
    .unwrap();
    let kernel = kernel_ports(&pair, SERVER);
    assert_eq!(dumped.len(), 150);
    assert_eq!(dumped, kernel);
    let live = dumped.values().filter(|s| *s == "ESTABLISHED").count();
    assert_eq!(live, open.len());
}
