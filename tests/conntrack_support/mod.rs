//! Shared fixture of the conntrack integration tests: two network namespaces joined by a
//! veth pair, with an nft `ct state` rule in the server namespace so conntrack tracks
//! there. Everything is removed on drop, also when a test fails.
#![allow(dead_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use autostandby::conntrack::{ConntrackError, EventSocket, ObserverConfig, netns};
use autostandby::engine::{InstanceSpec, Lifecycle};
use autostandby::flow::FlowEvent;
use autostandby::policy::Policy;

/// Client address (namespace A).
pub const CLIENT: &str = "10.231.0.1";
/// First server address (namespace B).
pub const SERVER: &str = "10.231.0.2";
/// Second server address (namespace B): the "foreign" instance.
pub const OTHER: &str = "10.231.0.3";
/// Host-side address DNATed to `SERVER:80` (port 8080).
pub const DNAT_ADDR: &str = "10.231.0.100";
/// IPv6 client and server.
pub const CLIENT6: &str = "fd31::1";
/// See [`CLIENT6`].
pub const SERVER6: &str = "fd31::2";

static COUNTER: AtomicU32 = AtomicU32::new(0);

#[path = "../root_check/mod.rs"]
mod root_check;

/// Returns when the tests run as root; fails them in CI and, elsewhere, stops the test
/// binary with a "needs root" message (tests/root_check).
pub fn require_root() {
    root_check::require_root("network namespaces, nft, ctnetlink");
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces: A (client) and B (servers, tracked by conntrack).
pub struct Pair {
    /// Name of namespace A.
    pub a: String,
    /// Name of namespace B.
    pub b: String,
}

impl Pair {
    /// Creates the namespaces, veth, addresses and the nft table.
    pub fn new() -> Self {
        require_root();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("as-conntrack-{}-{n}", std::process::id());
        let pair = Pair {
            a: format!("{base}-a"),
            b: format!("{base}-b"),
        };
        run(Command::new("ip").args(["netns", "add", &pair.a]));
        run(Command::new("ip").args(["netns", "add", &pair.b]));
        run(Command::new("ip").args([
            "-n", &pair.a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns",
            &pair.b,
        ]));
        for (ns, dev, addrs) in [
            (
                &pair.a,
                "va",
                vec![format!("{CLIENT}/24"), format!("{CLIENT6}/64")],
            ),
            (
                &pair.b,
                "vb",
                vec![
                    format!("{SERVER}/24"),
                    format!("{OTHER}/24"),
                    format!("{DNAT_ADDR}/32"),
                    format!("{SERVER6}/64"),
                ],
            ),
        ] {
            for addr in addrs {
                let mut args = vec!["-n", ns.as_str(), "addr", "add", addr.as_str(), "dev", dev];
                if addr.contains(':') {
                    args.push("nodad");
                }
                run(Command::new("ip").args(&args));
            }
            run(Command::new("ip").args(["-n", ns, "link", "set", dev, "up"]));
            run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]));
        }
        pair.nft_b(&format!(
            "table inet as_conntrack {{
               chain input {{ type filter hook input priority 0; ct state established,related accept; }}
               chain prerouting {{ type nat hook prerouting priority -100;
                 ip daddr {DNAT_ADDR} tcp dport 8080 dnat ip to {SERVER}:80; }}
             }}"
        ));
        // Short TIME_WAIT so expiry (and the DESTROY a dump triggers) comes quickly.
        pair.sysctl_b("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "1");
        pair
    }

    /// `/run/netns/<B>`.
    pub fn b_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.b))
    }

    /// `/run/netns/<A>`.
    pub fn a_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.a))
    }

    /// Loads an nft ruleset into namespace B.
    pub fn nft_b(&self, ruleset: &str) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.b, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn nft");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ruleset.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Sets a sysctl in namespace B.
    pub fn sysctl_b(&self, key: &str, value: &str) {
        // Written from a thread inside B: /proc/sys/net shows the namespace of the
        // thread that opens it (and this needs no sysctl binary).
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_owned();
        self.in_b(move || std::fs::write(&path, value));
    }

    /// Observer configuration for namespace B.
    pub fn config(&self) -> ObserverConfig {
        ObserverConfig {
            netns: Some(self.b_path()),
            ..ObserverConfig::default()
        }
    }

    /// Runs `f` in namespace A.
    pub fn in_a<T: Send>(&self, f: impl FnOnce() -> std::io::Result<T> + Send) -> T {
        netns::run_in(Some(&self.a_path()), || {
            f().map_err(|e| ConntrackError::io("in netns A", e))
        })
        .expect("run in namespace A")
    }

    /// Runs `f` in namespace B.
    pub fn in_b<T: Send>(&self, f: impl FnOnce() -> std::io::Result<T> + Send) -> T {
        netns::run_in(Some(&self.b_path()), || {
            f().map_err(|e| ConntrackError::io("in netns B", e))
        })
        .expect("run in namespace B")
    }

    /// The `conntrack -L` lines of namespace B (an independent view of the table).
    pub fn conntrack_list_b(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.b, "conntrack", "-L"])
            .output()
            .expect("conntrack -L");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Deleting a namespace removes its veth end, nft tables and conntrack entries.
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Reads events until `done` says so or `timeout` passes; returns all events read.
pub fn collect_until(
    sock: &mut EventSocket,
    timeout: Duration,
    mut done: impl FnMut(&[FlowEvent]) -> bool,
) -> Vec<FlowEvent> {
    let deadline = Instant::now() + timeout;
    let mut events = Vec::new();
    loop {
        if done(&events) {
            return events;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return events;
        }
        sock.wait_readable(left.min(Duration::from_millis(100)))
            .expect("poll");
        let batch = sock
            .recv_batch(&mut |ev| events.push(*ev))
            .expect("recv_batch");
        assert!(!batch.lost(), "unexpected event loss: {batch:?}");
    }
}

/// Parses an address.
pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A running instance at `addr` with an enabled policy of `idle_timeout_ms` and the
/// defaults otherwise (TCP only, nothing ignored, no minimum uptime).
pub fn running_instance(addr: IpAddr, idle_timeout_ms: u64) -> InstanceSpec {
    InstanceSpec {
        addresses: vec![addr],
        policy: Some(Policy {
            enabled: true,
            idle_timeout_ms,
            ..Policy::default()
        }),
        lifecycle: Lifecycle::Running,
        network_enabled: true,
        has_vgpu: false,
        runtime: Default::default(),
    }
}
