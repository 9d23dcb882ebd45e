//! The `autostandby` CLI against real conntrack entries that exist before it starts: it
//! reports nothing about an address (no flow count, no countdown) before its first dump
//! of that address has been applied. In network namespaces this test creates and always
//! removes. Needs root: fails loudly without it.

#[path = "../../tests/conntrack_support/mod.rs"]
mod conntrack_support;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use conntrack_support::*;

const BIN: &str = env!("CARGO_BIN_EXE_autostandby");
/// Live connections to the watched address.
const FLOWS: usize = 10;

/// `FLOWS` established TCP connections from namespace A to `SERVER:80` in B, both ends.
fn connections(pair: &Pair) -> Vec<(TcpStream, TcpStream)> {
    let sa = SocketAddr::new(ip(SERVER), 80);
    let listener = pair.in_b(move || TcpListener::bind(sa));
    (0..FLOWS)
        .map(|_| {
            let client = pair.in_a(move || TcpStream::connect_timeout(&sa, Duration::from_secs(2)));
            let (server, _) = listener.accept().expect("accept");
            (client, server)
        })
        .collect()
}

/// The value of `"key":` in one line of `--json` output (strings unquoted).
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let pat = format!("\"{key}\":");
    let start = line
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + pat.len();
    let rest = &line[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim_matches('"')
}

/// Stdout lines of `child`, read on a thread so that a wait can time out.
fn lines_of(child: &mut Child) -> Receiver<String> {
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Kills the child on drop, also when an assertion fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads lines until `want` holds for one; every line before it must pass `before`.
fn until(
    rx: &Receiver<String>,
    limit: Duration,
    what: &str,
    want: impl Fn(&str) -> bool,
    before: impl Fn(&str) -> bool,
) -> String {
    let end = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if want(&line) => return line,
            Ok(line) => {
                assert!(
                    before(&line),
                    "{what}: unexpected line {line}\nafter {seen:#?}"
                );
                seen.push(line);
            }
            Err(RecvTimeoutError::Timeout) => panic!("{what}: not within {limit:?}; saw {seen:#?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("{what}: the CLI exited; saw {seen:#?}"),
        }
    }
}

#[test]
fn flows_reports_every_live_flow_on_every_run() {
    let pair = Pair::new();
    let _conns = connections(&pair);
    let netns = pair.b_path();
    let mut counts = Vec::new();
    for _ in 0..5 {
        let out = Command::new(BIN)
            .args(["flows", "--ip", SERVER, "--netns"])
            .arg(&netns)
            .output()
            .expect("run autostandby flows");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{:?}: {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let first = stdout.lines().next().unwrap_or_default();
        let n: usize = first
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected output: {stdout}"));
        // One line per flow, after the count.
        assert_eq!(stdout.lines().count(), n + 1, "{stdout}");
        counts.push(n);
    }
    assert_eq!(counts, vec![FLOWS; 5], "flow counts of 5 runs");
}

#[test]
fn watch_says_resync_pending_first_then_active_then_counts_down() {
    let pair = Pair::new();
    // The connections predate the CLI's conntrack listener: with the default (2) they
    // would send no events at all, and only the periodic check a minute later would
    // see them close.
    pair.sysctl_b("net.netfilter.nf_conntrack_events", "1");
    let conns = connections(&pair);
    let child = Command::new(BIN)
        .args([
            "watch", "--ip", SERVER, "--idle", "60s", "--json", "--netns",
        ])
        .arg(pair.b_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn autostandby watch");
    let mut child = Killed(child);
    let rx = lines_of(&mut child.0);

    let first = until(
        &rx,
        Duration::from_secs(10),
        "the first line",
        |_| true,
        |_| true,
    );
    // Normally `resync_pending`; on a loaded machine the CLI may print its first line
    // only after the dump, and then it is the connections. Never a countdown.
    assert!(
        matches!(
            field(&first, "reason"),
            "resync_pending" | "active_inbound_connections"
        ),
        "{first}"
    );
    assert_eq!(field(&first, "status"), "active", "{first}");
    assert_eq!(field(&first, "countdown_remaining_ms"), "null", "{first}");
    assert_eq!(field(&first, "would"), "none", "{first}");

    // Then the truth: the ten connections, and never a countdown before them.
    let active = if field(&first, "reason") == "active_inbound_connections" {
        first
    } else {
        until(
            &rx,
            Duration::from_secs(10),
            "the connections",
            |l| field(l, "reason") == "active_inbound_connections",
            |l| field(l, "reason") == "resync_pending" && field(l, "status") == "active",
        )
    };
    assert_eq!(
        field(&active, "active_inbound"),
        FLOWS.to_string(),
        "{active}"
    );

    // Closed: a countdown of the whole idle timeout starts.
    drop(conns);
    let counting = until(
        &rx,
        Duration::from_secs(15),
        "the countdown",
        |l| field(l, "status") == "idle_countdown",
        |l| field(l, "status") == "active",
    );
    assert_eq!(
        field(&counting, "reason"),
        "idle_timeout_not_elapsed",
        "{counting}"
    );
    assert_eq!(field(&counting, "active_inbound"), "0", "{counting}");
    let left: u64 = field(&counting, "countdown_remaining_ms")
        .parse()
        .expect(&counting);
    assert!((50_000..=60_000).contains(&left), "{counting}");
}
