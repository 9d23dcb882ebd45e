//! Soak test (root): real connections against a kernel-mode controller, checked against
//! the truth the test knows from its own sockets.
//!
//! Two network namespaces (tests/conntrack_support): clients in A, the watched instance
//! in B at 10.231.0.2 and fd31::2 (TCP and UDP servers; 10.231.0.100:8080 is DNATed to
//! 10.231.0.2:80). For `SOAK_SECS` seconds (default 120) connections are opened and
//! closed at random (TCP over IPv4, IPv4 through DNAT and IPv6; UDP over IPv4 and IPv6),
//! with quiet spells long enough for the idle timeout to pass, event loss forced through
//! the event-socket failure hook and, on some restarts, a tiny receive buffer under a
//! burst, and controller restarts. Clock steps are not exercised: the system clock is
//! shared with the rest of the machine.
//!
//! The checker acts as the host: it answers every standby decision with begin_standby
//! and declines it (report FAILED). A violation is a standby decision, a `Proceed`, or a
//! `standby_requested`/`ready_for_standby` status while a connection that has been open
//! for at least `GRACE` (the time events take to arrive) is open. At the end it prints
//! the figures, and fails on any violation or when RSS or the fd count grew.
//!
//! `SOAK_SECS=1800 cargo run --release --example soak` (make soak).

#[path = "../tests/conntrack_support/mod.rs"]
mod conntrack_support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use autostandby::controller::{Controller, ControllerConfig};
use autostandby::engine::{BeginStandby, Decision, InstanceSpec, Reason, StandbyOutcome, Status};
use autostandby::policy::{Policy, Protocols};
use conntrack_support::{DNAT_ADDR, Pair, SERVER, SERVER6, ip, require_root};

const KEY: u64 = 1;
const IDLE_MS: u64 = 1_500;
/// How long a connection must have been open before the library must know it.
const GRACE: Duration = Duration::from_secs(1);
/// RSS may grow by this much over the run (allocator arenas, thread caches).
const RSS_SLACK_KIB: u64 = 16 * 1024;
/// The live heap may differ by this much between two moments with the same open
/// connections and one controller: buffers whose capacity grew to a burst's size.
const LIVE_HEAP_SLACK: u64 = 256 * 1024;

/// Counts live heap bytes; forwards to the system allocator.
struct Counting;

static LIVE: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call forwards to `System` with the caller's arguments unchanged; the
// counter is only arithmetic on the layout sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as u64, Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as u64, Relaxed);
        // SAFETY: `p` was allocated by `System` with `l` (every allocation goes there).
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`, and the caller's contract for `realloc`.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            LIVE.fetch_add(new as u64, Relaxed);
            LIVE.fetch_sub(l.size() as u64, Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Tcp4,
    Tcp4Dnat,
    Tcp6,
    Udp4,
    Udp6,
}
const KINDS: [Kind; 5] = [
    Kind::Tcp4,
    Kind::Tcp4Dnat,
    Kind::Tcp6,
    Kind::Udp4,
    Kind::Udp6,
];

/// An open client socket, held only to keep the connection open.
#[allow(dead_code)]
enum Sock {
    Tcp(TcpStream),
    Udp(UdpSocket),
}

struct Conn {
    opened: Instant,
    _sock: Sock,
}

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn spec() -> InstanceSpec {
    InstanceSpec {
        addresses: vec![ip(SERVER), ip(SERVER6)],
        policy: Some(Policy {
            enabled: true,
            idle_timeout_ms: IDLE_MS,
            protocols: Protocols {
                tcp: true,
                udp: true,
            },
            ..Policy::default()
        }),
        lifecycle: autostandby::engine::Lifecycle::Running,
        network_enabled: true,
        has_vgpu: false,
        runtime: Default::default(),
    }
}

fn start(pair: &Pair, tiny_rcvbuf: bool) -> Controller {
    let mut cfg = ControllerConfig::kernel();
    cfg.netns = Some(pair.b_path());
    if tiny_rcvbuf {
        cfg.rcvbuf_bytes = 4096;
    }
    let ctl = Controller::new(cfg).expect("kernel controller");
    ctl.register(KEY, spec()).expect("register");
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let s = ctl.status(KEY).unwrap();
        if !matches!(s.reason, Reason::ObserverError | Reason::ResyncPending) {
            return ctl;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the controller did not finish its first resync within 10 s");
}

/// Servers in namespace B: TCP on :80 (IPv4, IPv6) holding each connection until EOF,
/// UDP echo on :53.
fn serve(pair: &Pair) {
    for addr in [SERVER, SERVER6] {
        let sa = SocketAddr::new(ip(addr), 80);
        let l = pair.in_b(move || TcpListener::bind(sa));
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                });
            }
        });
        let sa = SocketAddr::new(ip(addr), 53);
        let u = pair.in_b(move || UdpSocket::bind(sa));
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = u.recv_from(&mut buf) {
                let _ = u.send_to(&buf[..n], from);
            }
        });
    }
}

fn open(pair: &Pair, kind: Kind) -> std::io::Result<Sock> {
    let t = Duration::from_secs(2);
    match kind {
        Kind::Tcp4 | Kind::Tcp4Dnat | Kind::Tcp6 => {
            let to = match kind {
                Kind::Tcp4 => SocketAddr::new(ip(SERVER), 80),
                Kind::Tcp4Dnat => SocketAddr::new(ip(DNAT_ADDR), 8080),
                _ => SocketAddr::new(ip(SERVER6), 80),
            };
            let mut s = pair.in_a(move || TcpStream::connect_timeout(&to, t));
            s.write_all(b"hello")?;
            Ok(Sock::Tcp(s))
        }
        Kind::Udp4 | Kind::Udp6 => {
            let (bind, to): (IpAddr, _) = match kind {
                Kind::Udp4 => (ip("0.0.0.0"), SocketAddr::new(ip(SERVER), 53)),
                _ => (ip("::"), SocketAddr::new(ip(SERVER6), 53)),
            };
            let u = pair.in_a(move || UdpSocket::bind(SocketAddr::new(bind, 0)));
            u.set_read_timeout(Some(t))?;
            u.send_to(b"ping", to)?;
            let mut buf = [0u8; 8];
            u.recv_from(&mut buf)?;
            Ok(Sock::Udp(u))
        }
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Live heap bytes once the controller's log buffer is drained, as a host drains it: a
/// full buffer holds up to `LOG_BUFFER_CAPACITY` records.
fn live_heap(ctl: &Controller) -> u64 {
    let mut records = Vec::new();
    ctl.drain_logs(&mut records, usize::MAX);
    drop(records);
    LIVE.load(Relaxed)
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[derive(Default)]
struct Figures {
    connections: [u64; 5],
    open_failures: u64,
    loss_episodes: u64,
    events_lost: u64,
    restarts: u64,
    decisions: u64,
    violations: u64,
}

/// Answers decisions as a host that always declines, and checks the status.
fn check(ctl: &Controller, conns: &[Conn], f: &mut Figures, decisions: &mut Vec<Decision>) {
    let now = Instant::now();
    let counted = conns.iter().filter(|c| now - c.opened >= GRACE).count();
    decisions.clear();
    ctl.poll_decisions(decisions, 64, Duration::ZERO).unwrap();
    for d in decisions.iter() {
        let Decision::Standby { key } = *d else {
            continue;
        };
        f.decisions += 1;
        if counted > 0 {
            f.violations += 1;
            eprintln!("soak: VIOLATION standby decision with {counted} connection(s) open");
        }
        if let Ok(BeginStandby::Proceed) = ctl.begin_standby(key) {
            if counted > 0 {
                f.violations += 1;
                eprintln!(
                    "soak: VIOLATION begin_standby proceeds with {counted} connection(s) open"
                );
            }
            ctl.report_standby(key, StandbyOutcome::Failed).unwrap();
        }
    }
    let s = ctl.status(KEY).unwrap();
    if counted > 0 && matches!(s.status, Status::StandbyRequested | Status::ReadyForStandby) {
        f.violations += 1;
        eprintln!(
            "soak: VIOLATION status {} ({}) with {counted} connection(s) open",
            s.status.as_str(),
            s.reason.as_str()
        );
    }
}

fn main() -> ExitCode {
    require_root();
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .map(|v| v.parse().expect("SOAK_SECS is a number of seconds"))
        .unwrap_or(120);
    let seed: u64 = std::env::var("SOAK_SEED")
        .ok()
        .map(|v| v.parse().expect("SOAK_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("soak: {secs} s, seed {seed}");
    let pair = Pair::new();
    // UDP flows end 2 s after their last packet, so quiet spells become idle quickly.
    pair.sysctl_b("net.netfilter.nf_conntrack_udp_timeout", "2");
    pair.sysctl_b("net.netfilter.nf_conntrack_udp_timeout_stream", "2");
    serve(&pair);
    let mut ctl = start(&pair, false);
    let mut rng = Rng(seed);
    let mut f = Figures::default();
    let mut conns: Vec<Conn> = Vec::new();
    let mut decisions = Vec::new();
    // Warm up (threads, allocator), then take the starting figures.
    for _ in 0..20 {
        let k = KINDS[rng.below(5) as usize];
        if let Ok(s) = open(&pair, k) {
            conns.push(Conn {
                opened: Instant::now(),
                _sock: s,
            });
        }
    }
    // A UDP flow whose expiry is then checked while a TCP connection keeps the instance
    // active (an idle one is confirmed by a dump instead): the query socket allocates
    // its lookup buffers on the first check and keeps them, as it keeps its dump buffer.
    conns.clear();
    for k in [Kind::Tcp4, Kind::Udp4] {
        conns.push(Conn {
            opened: Instant::now(),
            _sock: open(&pair, k).expect("warm-up connection"),
        });
    }
    let until = Instant::now() + Duration::from_secs(30);
    while ctl.stats().flow_lookups == 0 {
        assert!(
            Instant::now() < until,
            "no expiry lookup: {:?}",
            ctl.stats()
        );
        check(&ctl, &conns, &mut f, &mut decisions);
        std::thread::sleep(Duration::from_millis(20));
    }
    conns.clear();
    std::thread::sleep(Duration::from_millis(500));
    let (rss0, fds0, live0) = (rss_kib(), fds(), live_heap(&ctl));

    let start_at = Instant::now();
    let end = start_at + Duration::from_secs(secs);
    let mut next_loss = start_at + Duration::from_secs(7);
    let mut next_restart = start_at + Duration::from_secs(17);
    // Cycles of busy (5 s) and quiet (3 s, past the idle timeout) spells.
    let mut busy_until = start_at + Duration::from_secs(5);
    let mut quiet_until = busy_until + Duration::from_secs(7);
    while Instant::now() < end {
        let now = Instant::now();
        if now >= quiet_until {
            busy_until = now + Duration::from_millis(2_000 + rng.below(4_000));
            // Past the UDP timeout (2 s here), the library's expiry slack and the idle
            // timeout: the instance goes idle and the library decides.
            quiet_until = busy_until + Duration::from_millis(IDLE_MS + 5_000 + rng.below(2_000));
        }
        if now < busy_until {
            match rng.below(10) {
                0..=4 if conns.len() < 16 => {
                    let i = rng.below(5) as usize;
                    match open(&pair, KINDS[i]) {
                        Ok(s) => {
                            f.connections[i] += 1;
                            conns.push(Conn {
                                opened: Instant::now(),
                                _sock: s,
                            });
                        }
                        Err(_) => f.open_failures += 1,
                    }
                }
                5..=7 if !conns.is_empty() => {
                    let i = rng.below(conns.len() as u64) as usize;
                    conns.swap_remove(i);
                }
                _ => {}
            }
        } else {
            conns.clear();
        }
        if now >= next_loss {
            ctl.fail_event_socket_for_test(Duration::from_millis(200 + rng.below(1_500)))
                .unwrap();
            f.loss_episodes += 1;
            next_loss = now + Duration::from_millis(8_000 + rng.below(8_000));
        }
        if now >= next_restart {
            f.events_lost += ctl.stats().events_lost;
            drop(ctl);
            // Every other restart with a tiny receive buffer and a burst of connections
            // opened at once, so that the kernel drops events for real.
            let tiny = f.restarts % 2 == 1;
            ctl = start(&pair, tiny);
            f.restarts += 1;
            if tiny {
                for _ in 0..12 {
                    let i = rng.below(5) as usize;
                    if let Ok(s) = open(&pair, KINDS[i]) {
                        f.connections[i] += 1;
                        conns.push(Conn {
                            opened: Instant::now(),
                            _sock: s,
                        });
                    }
                }
            }
            next_restart = now + Duration::from_millis(15_000 + rng.below(15_000));
        }
        check(&ctl, &conns, &mut f, &mut decisions);
        std::thread::sleep(Duration::from_millis(10 + rng.below(30)));
    }
    conns.clear();
    f.events_lost += ctl.stats().events_lost;
    // Let server threads see EOF and exit before the closing figures.
    std::thread::sleep(Duration::from_millis(1_500));
    check(&ctl, &conns, &mut f, &mut decisions);
    let (rss1, fds1, live1) = (rss_kib(), fds(), live_heap(&ctl));
    drop(ctl);

    let total: u64 = f.connections.iter().sum();
    println!(
        "soak: connections {total} (tcp4 {}, tcp4-dnat {}, tcp6 {}, udp4 {}, udp6 {}; {} failed to open)",
        f.connections[0],
        f.connections[1],
        f.connections[2],
        f.connections[3],
        f.connections[4],
        f.open_failures
    );
    println!(
        "soak: loss episodes {} forced, {} events lost in the kernel; restarts {}; standby decisions {} (all declined); violations {}",
        f.loss_episodes, f.events_lost, f.restarts, f.decisions, f.violations
    );
    println!(
        "soak: live heap start {} KiB end {} KiB; rss start {rss0} KiB end {rss1} KiB; fds start {fds0} end {fds1}",
        live0 / 1024,
        live1 / 1024
    );
    let mut failures = Vec::new();
    if f.violations > 0 {
        failures.push(format!("{} violations", f.violations));
    }
    if live1 > live0 + LIVE_HEAP_SLACK {
        failures.push(format!("live heap grew by {} KiB", (live1 - live0) / 1024));
    }
    if rss1 > rss0 + RSS_SLACK_KIB {
        failures.push(format!("RSS grew by {} KiB", rss1 - rss0));
    }
    if fds1 > fds0 {
        failures.push(format!("fds grew from {fds0} to {fds1}"));
    }
    if f.decisions == 0 {
        failures.push("no standby decision in the quiet spells: the check saw nothing".into());
    }
    if total == 0 || f.connections.contains(&0) {
        failures.push("a connection kind never opened".into());
    }
    if failures.is_empty() {
        println!("soak: ok");
        ExitCode::SUCCESS
    } else {
        println!("soak: FAILED ({})", failures.join(", "));
        ExitCode::FAILURE
    }
}
