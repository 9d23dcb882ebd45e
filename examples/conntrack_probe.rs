//! Measurement and capture tool for the conntrack observer, driven by
//! `benches/conntrack.sh` (root). Subcommands:
//!
//! - `insert COUNT`: fills the current namespace's table with COUNT established TCP
//!   entries from 10.200.0.0/16 to 10.250.0.1:80, through batched ctnetlink requests;
//! - `dump [REPEAT]`: dumps and classifies the IPv4 table, prints entries and seconds;
//! - `filtered ADDR [REPEAT] [--orig-destination-too]`: the kernel-filtered dump of one address;
//! - `events --expect-new N [--filter ADDR]... [--all-states] [--idle-ms MS] [--linger-us US]`:
//!   reads events (lingering US after each wake-up, default 2000; with `--all-states`,
//!   also the TCP state changes the kernel filter drops by default) until N NEW
//!   were seen (or the stream is idle, or `--max-ms` passed), prints counts, loss and
//!   CPU per event;
//! - `load --server-netns PATH --to ADDR:PORT[,ADDR:PORT] --count N --conc C`: runs
//!   servers in the given namespace and N short connections from this one;
//! - `capture OUT`: writes captured events and dump entries as a corpus of
//!   length-prefixed messages.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use autostandby::conntrack::{
    ConntrackError, EventSocket, ObserverConfig, QuerySocket, netns, parse, request, socket, wire,
};
use autostandby::flow::{EventKind, Family, Flow, TcpState, Tuple};

fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn arg_after(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<(), ConntrackError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("insert") => insert(args.get(1).and_then(|v| v.parse().ok()).unwrap_or(200_000)),
        Some("dump") => dump(
            None,
            args.get(1).and_then(|v| v.parse().ok()).unwrap_or(1),
            false,
        ),
        Some("filtered") => dump(
            Some(args.get(1).expect("address").parse().expect("address")),
            args.get(2).and_then(|v| v.parse().ok()).unwrap_or(1),
            args.iter().any(|a| a == "--orig-destination-too"),
        ),
        Some("events") => events(&args),
        Some("load") => load(&args),
        Some("capture") => capture(args.get(1).expect("output file")),
        _ => {
            eprintln!("usage: conntrack_probe insert|dump|filtered|events|load|capture ...");
            std::process::exit(2);
        }
    }
}

fn insert(count: u32) -> Result<(), ConntrackError> {
    let mut q = QuerySocket::open(&ObserverConfig::default())?;
    let dst: IpAddr = "10.250.0.1".parse().unwrap();
    let start = Instant::now();
    let mut batch = Vec::with_capacity(64 * 1024);
    for i in 0..count {
        let src = IpAddr::from(std::net::Ipv4Addr::from(
            0x0ac8_0000 + (i / 50_000) * 256 * 256 + i % 50_000 / 1000 * 256 + i % 1000 / 4,
        ));
        let sport = 1024 + (i % 60_000) as u16;
        let flow = Flow {
            protocol: 6,
            orig: Tuple::new(src, sport, dst, 80),
            reply: Tuple::new(dst, 80, src, sport),
            zone: 0,
            id: 0,
            tcp_state: Some(TcpState::ESTABLISHED),
            status: 0,
            mark: 0,
            timeout_s: None,
        };
        let seq = q.alloc_seq();
        batch.extend_from_slice(&request::create(&flow, 3600, false, seq));
        if batch.len() > 60 * 1024 {
            q.send_raw(&batch)?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        q.send_raw(&batch)?;
    }
    let mut n = 0u64;
    q.dump(Family::V4, &mut |_| n += 1)?;
    println!(
        "inserted={count} table_v4={n} seconds={:.3}",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn dump(filter: Option<IpAddr>, repeat: u32, orig_too: bool) -> Result<(), ConntrackError> {
    let mut q = QuerySocket::open(&ObserverConfig::default())?;
    q.set_match_orig_destination(orig_too);
    let mut best = f64::MAX;
    let (mut live, mut finished, mut total) = (0u64, 0u64, 0u64);
    for _ in 0..repeat.max(1) {
        (live, finished, total) = (0, 0, 0);
        let start = Instant::now();
        let mut classify = |f: &Flow| {
            total += 1;
            if f.tcp_state.is_some_and(TcpState::is_finished) {
                finished += 1;
            } else {
                live += 1;
            }
        };
        match filter {
            Some(addr) => q.dump_addresses(&[addr], &mut classify)?,
            None => q.dump(Family::V4, &mut classify)?,
        };
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!("entries={total} live={live} finished={finished} seconds={best:.4}");
    Ok(())
}

fn events(args: &[String]) -> Result<(), ConntrackError> {
    let expect: u64 = arg_after(args, "--expect-new")
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    let idle = Duration::from_millis(
        arg_after(args, "--idle-ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(3000),
    );
    let max = Duration::from_millis(
        arg_after(args, "--max-ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(120_000),
    );
    let linger = Duration::from_micros(
        arg_after(args, "--linger-us")
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000),
    );
    let filters: Vec<IpAddr> = args
        .windows(2)
        .filter(|w| w[0] == "--filter")
        .map(|w| w[1].parse().expect("address"))
        .collect();
    let mut cfg = ObserverConfig::default();
    if let Some(bytes) = arg_after(args, "--rcvbuf").and_then(|v| v.parse().ok()) {
        cfg.rcvbuf_bytes = bytes;
    }
    let mut ev = EventSocket::open(&cfg)?;
    if args.iter().any(|a| a == "--all-states") {
        ev.set_state_filter(false)?;
    }
    if !filters.is_empty() {
        ev.set_address_filter(&filters)?;
    }
    // Tell the driver we are subscribed.
    println!("ready rcvbuf={}", ev.effective_rcvbuf());
    std::io::stdout().flush().ok();
    let (mut new, mut upd, mut del) = (0u64, 0u64, 0u64);
    let mut first: Option<Instant> = None;
    let cpu0 = thread_cpu_ns();
    let mut last = Instant::now();
    let began = Instant::now();
    while new < expect && began.elapsed() < max {
        if !ev.wait_batch(Duration::from_millis(100), linger)? {
            if first.is_some() && last.elapsed() > idle {
                break;
            }
            continue;
        }
        let b = ev.recv_batch(&mut |e| match e.kind {
            EventKind::New => new += 1,
            EventKind::Update => upd += 1,
            EventKind::Destroy => del += 1,
        })?;
        if b.messages > 0 {
            first.get_or_insert_with(Instant::now);
            last = Instant::now();
        }
    }
    let cpu = thread_cpu_ns().saturating_sub(cpu0);
    let s = ev.stats();
    let events = new + upd + del;
    println!(
        "events={events} new={new} update={upd} destroy={del} drops={} enobufs={} syscalls={} cpu_ms={:.1} ns_per_event={:.0} seconds={:.3}",
        s.drops,
        s.enobufs,
        s.syscalls,
        cpu as f64 / 1e6,
        if events > 0 {
            cpu as f64 / events as f64
        } else {
            0.0
        },
        first.map(|f| (last - f).as_secs_f64()).unwrap_or(0.0)
    );
    Ok(())
}

fn load(args: &[String]) -> Result<(), ConntrackError> {
    let server_ns = PathBuf::from(arg_after(args, "--server-netns").expect("--server-netns"));
    let targets: Vec<SocketAddr> = arg_after(args, "--to")
        .expect("--to")
        .split(',')
        .map(|t| t.parse().expect("ADDR:PORT"))
        .collect();
    let count: u64 = arg_after(args, "--count")
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let conc: u64 = arg_after(args, "--conc")
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    for t in &targets {
        let t = *t;
        let l = netns::run_in(Some(&server_ns), || {
            TcpListener::bind(t).map_err(|e| ConntrackError::io("bind server", e))
        })?;
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                drop(s);
            }
        });
    }
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..conc)
        .map(|_| {
            let next = next.clone();
            let targets = targets.clone();
            std::thread::spawn(move || {
                let mut failed = 0u64;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return failed;
                    }
                    match TcpStream::connect(targets[i as usize % targets.len()]) {
                        Ok(mut c) => {
                            let _ = c.read(&mut [0u8; 1]);
                        }
                        Err(_) => failed += 1,
                    }
                }
            })
        })
        .collect();
    let failed: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    println!(
        "connections={count} failed={failed} seconds={:.3}",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Captures up to 64 events from the current namespace (generate traffic meanwhile),
/// then one IPv4 and one IPv6 dump, and writes every message as `u32 LE length` + bytes.
fn capture(out: &str) -> Result<(), ConntrackError> {
    let sock = socket::open_netfilter()?;
    for g in [1, 2, 3] {
        sock.add_membership(g)
            .map_err(|e| ConntrackError::io("subscribe", e))?;
    }
    println!("ready");
    std::io::stdout().flush().ok();
    let mut corpus = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut n = 0;
    sock.set_non_blocking(true).ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    while n < 64 && Instant::now() < deadline {
        match sock.recv(&mut &mut buf[..], 0) {
            Ok(len) => {
                for m in parse::messages(&buf[..len]).flatten() {
                    corpus.extend_from_slice(&(m.bytes.len() as u32).to_le_bytes());
                    corpus.extend_from_slice(m.bytes);
                    n += 1;
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    sock.set_non_blocking(false).ok();
    for family in [Family::V4, Family::V6] {
        sock.send(&request::dump(family, 99), 0)
            .map_err(|e| ConntrackError::io("send", e))?;
        'dump: loop {
            let len = socket::recv_blocking(&sock, &mut buf)?;
            for m in parse::messages(&buf[..len]).flatten() {
                if m.msg_type == wire::NLMSG_DONE || m.msg_type == wire::NLMSG_ERROR {
                    break 'dump;
                }
                corpus.extend_from_slice(&(m.bytes.len() as u32).to_le_bytes());
                corpus.extend_from_slice(m.bytes);
            }
        }
    }
    std::fs::write(out, &corpus).map_err(|e| ConntrackError::io("write corpus", e))?;
    println!("captured {n} events, {} bytes", corpus.len());
    Ok(())
}
