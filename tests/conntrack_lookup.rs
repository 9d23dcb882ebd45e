//! Exact-tuple lookups (`CT_GET` of one entry) against a real conntrack table, in network
//! namespaces this test creates and always removes. Needs root: fails loudly without it.

mod conntrack_support;

use std::net::{IpAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use autostandby::conntrack::query::LOOKUP_BATCH;
use autostandby::conntrack::{EventSocket, LookupResult, LookupStats, QuerySocket, request};
use autostandby::flow::{EventKind, Flow, TcpState, Tuple, proto};
use conntrack_support::*;

const WAIT: Duration = Duration::from_secs(5);

/// Answers of one lookup call, by index, each checked to come exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Found(Flow),
    Gone,
    Failed(i32),
}

fn lookup(q: &mut QuerySocket, flows: &[Flow]) -> (Vec<Answer>, LookupStats) {
    let mut out: Vec<Option<Answer>> = vec![None; flows.len()];
    let stats = q
        .lookup_flows(flows, &mut |i, r| {
            assert!(out[i].is_none(), "flow {i} answered twice");
            out[i] = Some(match r {
                LookupResult::Found(f) => Answer::Found(*f),
                LookupResult::Gone => Answer::Gone,
                LookupResult::Failed(e) => Answer::Failed(e),
            });
        })
        .expect("lookup_flows");
    let out = out
        .into_iter()
        .enumerate()
        .map(|(i, a)| a.unwrap_or_else(|| panic!("flow {i} never answered")))
        .collect();
    (out, stats)
}

/// The entries of `addr` in namespace B's table, as a dump lists them.
fn dumped(q: &mut QuerySocket, addr: IpAddr) -> Vec<Flow> {
    let mut v = Vec::new();
    q.dump_addresses(&[addr], &mut |f| v.push(*f))
        .expect("dump_addresses");
    v
}

/// A UDP flow `client:cport -> server:sport` as ctnetlink inserts it.
fn udp_flow(client: &str, cport: u16, server: &str, sport: u16) -> Flow {
    Flow {
        protocol: proto::UDP,
        orig: Tuple::new(ip(client), cport, ip(server), sport),
        reply: Tuple::new(ip(server), sport, ip(client), cport),
        zone: 0,
        id: 0,
        tcp_state: None,
        status: 0,
        mark: 0,
        timeout_s: None,
    }
}

fn insert(q: &mut QuerySocket, flow: &Flow, timeout_s: u32) {
    let seq = q.alloc_seq();
    q.request_ack(&request::create(flow, timeout_s, true, seq))
        .expect("insert a conntrack entry");
}

#[test]
fn a_live_udp_entry_is_found_with_its_current_timeout() {
    let pair = Pair::new();
    pair.sysctl_b("net.netfilter.nf_conntrack_udp_timeout", "45");
    pair.sysctl_b("net.netfilter.nf_conntrack_udp_timeout_stream", "90");
    let server = pair.in_b(|| UdpSocket::bind((ip(SERVER), 5353)));
    let client = pair.in_a(|| UdpSocket::bind((ip(CLIENT), 0)));
    client.set_read_timeout(Some(WAIT)).unwrap();
    server.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 8];
    client.send_to(b"ping", (ip(SERVER), 5353)).unwrap();
    let (_, from) = server.recv_from(&mut buf).unwrap();
    server.send_to(b"pong", from).unwrap();
    client.recv_from(&mut buf).unwrap();

    let mut q = QuerySocket::open(&pair.config()).unwrap();
    let entries = dumped(&mut q, ip(SERVER));
    let entry = *entries
        .iter()
        .find(|f| f.protocol == proto::UDP && f.orig.dst_port == 5353)
        .expect("the UDP entry in the dump");
    let (answers, stats) = lookup(&mut q, &[entry]);
    let Answer::Found(found) = answers[0] else {
        panic!("{answers:?}");
    };
    assert_eq!(
        (found.orig, found.reply, found.id, found.zone),
        (entry.orig, entry.reply, entry.id, 0)
    );
    // One exchange leaves it unassured: the plain UDP timeout, counting down.
    let t = found.timeout_s.expect("CTA_TIMEOUT in the reply");
    assert!((40..=45).contains(&t), "timeout {t}");
    assert_eq!(
        (stats.found, stats.sends, stats.recvs),
        (1, 1, 1),
        "{stats:?}"
    );
    std::thread::sleep(Duration::from_millis(1_100));
    let (answers, _) = lookup(&mut q, &[entry]);
    let Answer::Found(later) = answers[0] else {
        panic!("{answers:?}");
    };
    assert!(later.timeout_s.unwrap() < t, "{later:?} after {t}");
}

#[test]
fn a_tcp_entry_is_found_with_its_state() {
    let pair = Pair::new();
    let listener = pair.in_b(|| TcpListener::bind((ip(SERVER), 8000)));
    let client = pair.in_a(|| TcpStream::connect((ip(SERVER), 8000)));
    let (_conn, _) = listener.accept().unwrap();
    let mut q = QuerySocket::open(&pair.config()).unwrap();
    let cport = client.local_addr().unwrap().port();
    let entry = Flow {
        id: 0,
        tcp_state: None,
        ..udp_flow(CLIENT, cport, SERVER, 8000)
    };
    let entry = Flow {
        protocol: proto::TCP,
        ..entry
    };
    let (answers, _) = lookup(&mut q, &[entry]);
    let Answer::Found(found) = answers[0] else {
        panic!("{answers:?}");
    };
    assert_eq!(found.protocol, proto::TCP);
    assert_eq!(found.orig, entry.orig);
    assert_eq!(found.tcp_state, Some(TcpState::ESTABLISHED));
    assert_ne!(found.id, 0, "a real conntrack id");
}

#[test]
fn an_entry_deleted_with_conntrack_d_is_gone() {
    let pair = Pair::new();
    let mut q = QuerySocket::open(&pair.config()).unwrap();
    let f = udp_flow(CLIENT, 41000, SERVER, 53);
    insert(&mut q, &f, 300);
    let (answers, _) = lookup(&mut q, &[f]);
    assert!(matches!(answers[0], Answer::Found(_)), "{answers:?}");
    let out = Command::new("ip")
        .args(["netns", "exec", &pair.b, "conntrack", "-D", "-p", "udp"])
        .args(["--orig-src", CLIENT, "--orig-dst", SERVER])
        .args(["--orig-port-src", "41000", "--orig-port-dst", "53"])
        .output()
        .expect("conntrack -D");
    assert!(out.status.success(), "{out:?}");
    let (answers, stats) = lookup(&mut q, &[f]);
    assert_eq!(answers, vec![Answer::Gone]);
    assert_eq!(stats.gone, 1);
}

#[test]
fn an_entry_whose_timeout_passed_is_gone_and_its_destroy_follows() {
    let pair = Pair::new();
    let mut events = EventSocket::open(&pair.config()).unwrap();
    let mut q = QuerySocket::open(&pair.config()).unwrap();
    let f = udp_flow(CLIENT, 42000, SERVER, 53);
    insert(&mut q, &f, 1);
    std::thread::sleep(Duration::from_millis(2_200));
    let (answers, _) = lookup(&mut q, &[f]);
    assert_eq!(answers, vec![Answer::Gone]);
    // The lookup reaped the entry (unless conntrack's collector got there first): either
    // way its DESTROY reaches the event socket.
    let evs = collect_until(&mut events, WAIT, |evs| {
        evs.iter()
            .any(|e| e.kind == EventKind::Destroy && e.flow.orig == f.orig)
    });
    assert!(
        evs.iter()
            .any(|e| e.kind == EventKind::Destroy && e.flow.orig == f.orig),
        "no DESTROY for the expired entry: {evs:?}"
    );
}

#[test]
fn a_batch_of_a_thousand_is_answered_completely_in_few_syscalls() {
    let pair = Pair::new();
    let mut q = QuerySocket::open(&pair.config()).unwrap();
    // 700 entries that exist and 300 that never did, interleaved.
    let flows: Vec<Flow> = (0..1000u16)
        .map(|i| udp_flow(CLIENT, 20_000 + i, SERVER, 53))
        .collect();
    for (i, f) in flows.iter().enumerate() {
        if i % 10 < 7 {
            insert(&mut q, f, 600);
        }
    }
    let started = Instant::now();
    let (answers, stats) = lookup(&mut q, &flows);
    let took = started.elapsed();
    for (i, (a, f)) in answers.iter().zip(&flows).enumerate() {
        if i % 10 < 7 {
            let Answer::Found(found) = a else {
                panic!("flow {i}: {a:?}");
            };
            assert_eq!(found.orig, f.orig, "flow {i}");
        } else {
            assert_eq!(*a, Answer::Gone, "flow {i}");
        }
    }
    assert_eq!(
        (stats.asked, stats.found, stats.gone, stats.failed),
        (1000, 700, 300, 0)
    );
    let batches = 1000u64.div_ceil(LOOKUP_BATCH as u64);
    assert_eq!(stats.sends, batches, "{stats:?}");
    assert!(stats.recvs <= 2 * batches, "{stats:?}");
    eprintln!("1,000 lookups in {took:?}: {stats:?}");
}

#[test]
fn a_non_default_zone_is_asked_for_its_own_entry() {
    let pair = Pair::new();
    let mut q = QuerySocket::open(&pair.config()).unwrap();
    let zoned = Flow {
        zone: 7,
        ..udp_flow(CLIENT, 43000, SERVER, 53)
    };
    insert(&mut q, &zoned, 300);
    let plain = Flow { zone: 0, ..zoned };
    let (answers, _) = lookup(&mut q, &[zoned, plain]);
    let Answer::Found(found) = answers[0] else {
        panic!("{answers:?}");
    };
    assert_eq!((found.orig, found.zone), (zoned.orig, 7));
    assert_eq!(answers[1], Answer::Gone, "zone 0 has no such entry");
}

#[test]
fn a_tuple_the_kernel_refuses_fails_alone() {
    let pair = Pair::new();
    let mut q = QuerySocket::open(&pair.config()).unwrap();
    let good = udp_flow(CLIENT, 44000, SERVER, 53);
    insert(&mut q, &good, 300);
    // Mixed families in one tuple: the kernel cannot parse it (EINVAL or similar).
    let mut bad = udp_flow(CLIENT, 44001, SERVER, 53);
    bad.orig.dst = ip(SERVER6);
    let (answers, stats) = lookup(&mut q, &[bad, good, bad]);
    assert!(
        matches!(answers[0], Answer::Failed(e) if e > 0),
        "{answers:?}"
    );
    assert_eq!((stats.failed, stats.found), (2, 1));
    assert!(matches!(answers[1], Answer::Found(_)), "{answers:?}");
    assert_eq!(answers[0], answers[2]);
}
