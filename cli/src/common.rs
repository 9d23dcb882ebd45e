//! What the subcommands share: value parsers, the kernel-mode controller they start, the
//! wait for the first dump, and output that stops quietly on a closed pipe.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use autostandby::controller::{Controller, ControllerConfig, ControllerError};
use autostandby::engine::{InstanceSpec, Lifecycle};
use autostandby::policy::{Policy, Protocols};

/// Why a command stopped.
#[derive(Debug)]
pub enum Failure {
    /// Worth telling the operator.
    Message(String),
    /// The arguments parse but do not fit together: told as a usage error.
    Usage(String),
    /// Whoever reads stdout went away (`autostandby watch | head -1`): stop quietly, as
    /// other Unix tools do.
    BrokenPipe,
}

impl From<String> for Failure {
    fn from(m: String) -> Self {
        Self::Message(m)
    }
}

/// Writes to stdout; a closed pipe becomes [`Failure::BrokenPipe`] rather than a panic.
pub fn write_out(args: std::fmt::Arguments<'_>) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => Failure::BrokenPipe,
            _ => Failure::Message(format!("writing to stdout: {e}")),
        })
}

/// `print!` through [`write_out`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::common::write_out(format_args!($($arg)*)) };
}

/// `println!` through [`write_out`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::common::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};

/// Parses `30s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (num, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| "not a duration (examples: 30s, 500ms, 2m)".to_string())?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("unknown unit {unit:?} (use ms, s, m or h)")),
    }
    .ok_or_else(|| "too large".to_string())?;
    if ms == 0 {
        return Err("must be positive".into());
    }
    Ok(Duration::from_millis(ms))
}

/// Parses one address; an IPv4-mapped IPv6 address is the IPv4 one, as in conntrack.
pub fn parse_ip(text: &str) -> Result<IpAddr, String> {
    text.trim()
        .parse::<IpAddr>()
        .map(|ip| ip.to_canonical())
        .map_err(|_| "not an IPv4 or IPv6 address".to_string())
}

/// Parses the one address of a command that takes a single one.
pub fn parse_one_ip(text: &str) -> Result<IpAddr, String> {
    if text.contains(',') {
        return Err("takes exactly one address".into());
    }
    parse_ip(text)
}

/// The namespace whose conntrack table is read.
#[derive(Debug, Clone, clap::Args)]
pub struct Netns {
    /// Network namespace to observe, by path (/run/netns/NAME, /proc/PID/ns/net);
    /// the current one when absent.
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
}

/// Starts a kernel-mode controller in `netns` with one instance per address, keyed by
/// its index in `ips`: running, TCP and UDP counting, `idle` as its idle timeout.
pub fn start(netns: &Netns, ips: &[IpAddr], idle: Duration) -> Result<Controller, String> {
    let mut config = ControllerConfig::kernel();
    config.netns = netns.netns.clone();
    let controller = Controller::new(config).map_err(|e| match e {
        ControllerError::Permission(m) => {
            format!("{m}\nrun as root (or with CAP_NET_ADMIN) to read conntrack")
        }
        other => other.to_string(),
    })?;
    let policy = Policy {
        enabled: true,
        idle_timeout_ms: u64::try_from(idle.as_millis()).unwrap_or(u64::MAX),
        ignore_source_cidrs: Vec::new(),
        ignore_destination_ports: Vec::new(),
        protocols: Protocols {
            tcp: true,
            udp: true,
        },
        wake_on_traffic: false,
        wake_source_cidrs: Vec::new(),
        min_uptime_ms: 0,
    };
    for (key, ip) in ips.iter().enumerate() {
        let spec = InstanceSpec {
            addresses: vec![*ip],
            policy: Some(policy.clone()),
            lifecycle: Lifecycle::Running,
            network_enabled: true,
            has_vgpu: false,
            runtime: Default::default(),
        };
        controller
            .register(key as u64, spec)
            .map_err(|e| format!("{ip}: {e}"))?;
    }
    Ok(controller)
}

/// A usage error unless every address of `ips` is distinct.
pub fn distinct(ips: &[IpAddr]) -> Result<(), Failure> {
    for (i, ip) in ips.iter().enumerate() {
        if ips[..i].contains(ip) {
            return Err(Failure::Usage(format!(
                "the address {ip} is given twice to '--ip'"
            )));
        }
    }
    Ok(())
}

/// Whether the library has read the flows of every one of `keys`: right after
/// registration it has not, until its first dump of their addresses has been applied
/// (status reason `resync_pending` until then).
pub fn flows_read(controller: &Controller, keys: &[u64]) -> bool {
    keys.iter()
        .all(|&k| controller.resync_pending(k).is_ok_and(|pending| !pending))
}

/// Waits up to `limit` for [`flows_read`]; false if it is still not so then.
pub fn wait_flows_read(controller: &Controller, keys: &[u64], limit: Duration) -> bool {
    let until = Instant::now() + limit;
    loop {
        if flows_read(controller, keys) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Milliseconds as seconds with one decimal, `-` for none.
pub fn fmt_ms(ms: Option<u64>) -> String {
    ms.map_or_else(|| "-".into(), |v| format!("{:.1}s", v as f64 / 1000.0))
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON number, or `null` for none.
pub fn json_opt(v: Option<u64>) -> String {
    v.map_or_else(|| "null".into(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("0s").unwrap_err().contains("positive"));
        assert!(parse_duration("3d").unwrap_err().contains("unit"));
        assert!(parse_duration("5x").unwrap_err().contains("unit"));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
        assert!(
            parse_duration("99999999999999999999h")
                .unwrap_err()
                .contains("duration")
        );
        assert!(
            parse_duration("9999999999999999h")
                .unwrap_err()
                .contains("large")
        );
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_ip("10.0.0.2"), Ok("10.0.0.2".parse().unwrap()));
        assert_eq!(parse_ip("::ffff:10.0.0.3"), Ok("10.0.0.3".parse().unwrap()));
        assert_eq!(parse_ip("fd00::1"), Ok("fd00::1".parse().unwrap()));
        assert!(parse_ip("10.0.0.300").is_err());
        assert!(
            parse_one_ip("10.0.0.2,10.0.0.3")
                .unwrap_err()
                .contains("one")
        );
        assert!(parse_one_ip("10.0.0.2").is_ok());
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        let b: IpAddr = "10.0.0.3".parse().unwrap();
        assert!(distinct(&[a, b]).is_ok());
        assert!(matches!(distinct(&[a, b, a]), Err(Failure::Usage(m)) if m.contains("twice")));
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
        assert_eq!(json_opt(None), "null");
        assert_eq!(json_opt(Some(3)), "3");
    }
}
