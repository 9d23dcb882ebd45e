//! The `--json` output of `watch`, `flows` and `stats` against its documentation
//! (docs/cli-json.md): every object has exactly the documented fields, in the documented
//! order, with the documented types. Against real conntrack entries in network
//! namespaces this test creates and always removes. Needs root: fails loudly without it.

#[path = "../../tests/conntrack_support/mod.rs"]
mod conntrack_support;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use conntrack_support::*;
use serde_json::{Map, Value};

const BIN: &str = env!("CARGO_BIN_EXE_autostandby");
const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cli-json.md");
/// Live connections to `SERVER`.
const FLOWS: usize = 2;

/// A documented field: its name and type (`string`, `integer`, `integer|null`,
/// `boolean`).
#[derive(Debug)]
struct Field {
    name: String,
    ty: String,
}

/// The field table of section `## {section}` of the documentation.
fn documented(section: &str) -> Vec<Field> {
    let doc = std::fs::read_to_string(DOC).expect("read docs/cli-json.md");
    let heading = format!("## {section}");
    let body = doc
        .split("\n## ")
        .map(|s| s.trim_start_matches("## "))
        .find(|s| s.lines().next() == Some(heading.trim_start_matches("## ")))
        .unwrap_or_else(|| panic!("no section {heading:?} in the documentation"));
    let fields: Vec<Field> = body
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            // `\|` inside a cell is a literal bar.
            let cells: Vec<String> = l
                .replace("\\|", "\u{0}")
                .split('|')
                .map(|c| c.trim().replace('\u{0}', "|"))
                .collect();
            Field {
                name: cells[1].trim_matches('`').to_string(),
                ty: cells[2].clone(),
            }
        })
        .collect();
    assert!(!fields.is_empty(), "no field table under {heading:?}");
    fields
}

/// Checks one output line against the documented fields.
fn check(section: &str, fields: &[Field], line: &str) -> Map<String, Value> {
    let v: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{section}: not JSON ({e}): {line}"));
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{section}: not an object: {line}"))
        .clone();
    let names: Vec<&str> = obj.keys().map(String::as_str).collect();
    let want: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, want, "{section}: fields of {line}");
    for f in fields {
        let value = &obj[&f.name];
        let ok = match f.ty.as_str() {
            "string" => value.is_string(),
            "integer" => value.is_u64(),
            "integer|null" => value.is_u64() || value.is_null(),
            "number" => value.is_number(),
            "array" => value.is_array(),
            "boolean" => value.is_boolean(),
            other => panic!("{section}: undocumented type {other:?} of {}", f.name),
        };
        assert!(ok, "{section}: {} is {value}, documented {}", f.name, f.ty);
    }
    obj
}

/// `FLOWS` established TCP connections from namespace A to `SERVER:80` in B.
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

/// Runs the CLI to its end; its stdout lines.
fn lines_of_run(args: &[&str], pair: &Pair) -> Vec<String> {
    let out = Command::new(BIN)
        .args(args)
        .arg("--netns")
        .arg(pair.b_path())
        .output()
        .expect("run autostandby");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {:?}: {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_owned).collect()
}

/// Kills the child on drop, also when an assertion fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn json_output_matches_its_documentation() {
    let pair = Pair::new();
    // Connections that predate the CLI: with the default (2) they would send no events.
    pair.sysctl_b("net.netfilter.nf_conntrack_events", "1");
    let _conns = connections(&pair);

    // flows: one object per live connection.
    let fields = documented("flows");
    let lines = lines_of_run(&["flows", "--json", "--ip", SERVER], &pair);
    assert_eq!(lines.len(), FLOWS, "{lines:#?}");
    for l in &lines {
        let obj = check("flows", &fields, l);
        assert_eq!(obj["protocol"], "tcp", "{l}");
        assert_eq!(obj["tcp_state"], "ESTABLISHED", "{l}");
        assert_eq!(obj["reply_src"], format!("{SERVER}:80"), "{l}");
    }

    // stats: one object.
    let fields = documented("stats");
    let lines = lines_of_run(
        &[
            "stats",
            "--json",
            "--for",
            "1s",
            "--ip",
            &format!("{SERVER},{OTHER}"),
        ],
        &pair,
    );
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let obj = check("stats", &fields, &lines[0]);
    assert_eq!(obj["instances"], 2, "{}", lines[0]);

    // recommend: one object per address, and one per candidate within it.
    let fields = documented("recommend");
    let candidate_fields = documented("recommend candidates");
    let lines = lines_of_run(
        &[
            "recommend",
            "--json",
            "--for",
            "1s",
            "--candidates",
            "100ms,1s",
            "--ip",
            &format!("{SERVER},{OTHER}"),
        ],
        &pair,
    );
    assert_eq!(lines.len(), 2, "{lines:#?}");
    for l in &lines {
        let obj = check("recommend", &fields, l);
        let candidates = obj["candidates"].as_array().unwrap();
        assert_eq!(candidates.len(), 2, "{l}");
        for c in candidates {
            check("recommend candidates", &candidate_fields, &c.to_string());
        }
    }

    // watch: lines for a busy address (SERVER) and an idle one (OTHER), until each has
    // shown its state after the first dump: an integer where the other has null.
    let fields = documented("watch");
    let child = Command::new(BIN)
        .args([
            "watch",
            "--json",
            "--ip",
            &format!("{SERVER},{OTHER}"),
            "--netns",
        ])
        .arg(pair.b_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn autostandby watch");
    let mut child = Killed(child);
    let out = child.0.stdout.take().expect("stdout");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let limit = Duration::from_secs(20);
    let end = Instant::now() + limit;
    let (mut busy, mut idle) = (false, false);
    let mut seen = Vec::new();
    while !(busy && idle) {
        let line = match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => panic!("watch: not within {limit:?}: {seen:#?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("watch exited: {seen:#?}"),
        };
        let obj = check("watch", &fields, &line);
        match (obj["address"].as_str(), obj["status"].as_str()) {
            (Some(SERVER), Some("active")) if obj["active_inbound"] == FLOWS => busy = true,
            (Some(OTHER), Some("idle_countdown")) => {
                assert!(obj["idle_since_ms"].is_u64(), "{line}");
                assert!(obj["countdown_remaining_ms"].is_u64(), "{line}");
                idle = true;
            }
            _ => {}
        }
        seen.push(line);
    }
}

/// The metric names of the Go controller, from go/metrics.go.
fn go_metric_names() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../go/metrics.go");
    let go = std::fs::read_to_string(path).expect("read go/metrics.go");
    let names: Vec<String> = go
        .split('"')
        .filter(|s| s.starts_with("hypeman_auto_standby_"))
        .map(str::to_owned)
        .collect();
    assert!(names.len() >= 6, "metric names in go/metrics.go: {names:?}");
    names
}

#[test]
fn prometheus_output_uses_the_go_controllers_names() {
    let pair = Pair::new();
    pair.sysctl_b("net.netfilter.nf_conntrack_events", "1");
    let _conns = connections(&pair);
    let lines = lines_of_run(
        &[
            "stats",
            "--prometheus",
            "--for",
            "1s",
            "--ip",
            &format!("{SERVER},{OTHER}"),
        ],
        &pair,
    );
    let go = go_metric_names();
    let samples: Vec<(&str, u64)> = lines
        .iter()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l}"));
            (series, value.parse().unwrap_or_else(|_| panic!("{l}")))
        })
        .collect();
    for l in lines.iter().filter(|l| l.starts_with("# TYPE ")) {
        let name = l.split(' ').nth(2).expect(l);
        assert!(
            name.starts_with("autostandby_") || go.iter().any(|g| g == name),
            "{name} is neither the library's nor one of go/metrics.go's"
        );
    }
    let value = |series: &str| {
        samples
            .iter()
            .find(|(s, _)| *s == series)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {series} in {lines:#?}"))
    };
    // SERVER has the connections, OTHER none.
    assert_eq!(
        value("hypeman_auto_standby_tracked_instances_total{phase=\"active\"}"),
        1
    );
    assert_eq!(
        value("hypeman_auto_standby_tracked_instances_total{phase=\"idle_countdown\"}"),
        1
    );
    assert_eq!(
        value("hypeman_auto_standby_active_connections_total"),
        FLOWS as u64
    );
    assert_eq!(
        value("autostandby_instances_by_status{status=\"active\"}"),
        1
    );
    assert_eq!(value("autostandby_instances"), 2);
    assert_eq!(value("autostandby_tracked_flows"), FLOWS as u64);
    value("hypeman_auto_standby_conntrack_events_total{result=\"received\"}");
    value("hypeman_auto_standby_conntrack_events_lost_total");
}
