//! `autostandby recommend` against real connections: it observes from the first dump of
//! the address for the `--for` duration, then reports each candidate's standbys and
//! wakes. In network namespaces this test creates and always removes. Needs root: fails
//! loudly without it.

#[path = "../../tests/conntrack_support/mod.rs"]
mod conntrack_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use conntrack_support::*;

const BIN: &str = env!("CARGO_BIN_EXE_autostandby");

fn connect(pair: &Pair, listener: &TcpListener) -> (TcpStream, TcpStream) {
    let sa = SocketAddr::new(ip(SERVER), 80);
    let mut client = pair.in_a(move || TcpStream::connect_timeout(&sa, Duration::from_secs(5)));
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    server.read_exact(&mut b).unwrap();
    (client, server)
}

/// The numbers of the outcome object for `timeout_ms` in a `--json` line.
fn outcome(line: &str, timeout_ms: u64) -> (u64, u64) {
    let start = line
        .find(&format!("{{\"timeout_ms\":{timeout_ms},"))
        .unwrap_or_else(|| panic!("no candidate {timeout_ms} in {line}"));
    let obj = &line[start..start + line[start..].find('}').unwrap()];
    let num = |key: &str| -> u64 {
        let pat = format!("\"{key}\":");
        let at = obj.find(&pat).unwrap() + pat.len();
        let rest = &obj[at..];
        rest[..rest.find([',', '}']).unwrap_or(rest.len())]
            .parse()
            .unwrap()
    };
    (num("standbys"), num("wakes"))
}

#[test]
fn recommend_reports_the_gaps_of_scripted_traffic() {
    let pair = Pair::new();
    // The first connection predates the CLI's listener: with the default (2) its end
    // would send no event.
    pair.sysctl_b("net.netfilter.nf_conntrack_events", "1");
    let sa = SocketAddr::new(ip(SERVER), 80);
    let listener = pair.in_b(move || TcpListener::bind(sa));
    let first = connect(&pair, &listener);
    let mut child = Command::new(BIN)
        .args([
            "recommend",
            "--ip",
            SERVER,
            "--for",
            "12s",
            "--candidates",
            "1s,30s",
            "--json",
            "--netns",
        ])
        .arg(pair.b_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn autostandby recommend");
    // Observation begins once the first dump (which finds the open connection) is in.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("observing"), "{line}");
    // One 4-second gap, then a connection open until the CLI reports.
    first.0.shutdown(Shutdown::Both).unwrap();
    drop(first);
    std::thread::sleep(Duration::from_secs(4));
    let _second = connect(&pair, &listener);

    let out = child.wait_with_output().expect("wait for autostandby");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{:?}: {stdout}", out.status);
    let line = stdout.lines().next().unwrap_or_default();
    assert!(
        line.contains(&format!("\"address\":\"{SERVER}\"")),
        "{line}"
    );
    assert!(line.contains("\"gaps\":1,"), "{line}");
    assert!(line.contains("\"open_gap_ms\":null"), "{line}");
    assert_eq!(outcome(line, 1_000), (1, 1), "{line}");
    assert_eq!(outcome(line, 30_000), (0, 0), "{line}");
    // Twelve seconds allow no wake at one per 30 minutes: the candidate without one.
    assert!(line.contains("\"recommended_timeout_ms\":30000"), "{line}");
}
