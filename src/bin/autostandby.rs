//! `autostandby`: an operator tool that shows what libautostandby sees and would decide.
//!
//! It never acts on a VM: decisions are displayed, not executed.
//!
//! ```text
//! autostandby watch --ip ADDR[,ADDR...] [--idle 30s] [--netns PATH] [--json]
//! autostandby flows --ip ADDR [--netns PATH] [--json]
//! autostandby stats [--ip ADDR[,ADDR...]] [--for 2s] [--netns PATH] [--json]
//! ```

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use autostandby::controller::{Controller, ControllerConfig, ControllerError};
use autostandby::engine::{
    BeginStandby, Decision, InstanceSpec, Lifecycle, Reason, StandbyOutcome, Status, StatusSnapshot,
};
use autostandby::flow::TcpState;
use autostandby::policy::{Policy, Protocols};

const USAGE: &str = "\
usage:
  autostandby watch --ip ADDR[,ADDR...] [--idle 30s] [--netns PATH] [--json]
      live table of each address: status, reason, active flows, idle since, countdown
      and the decision the library would take (refreshed every second; resync_pending
      until the library has read the address's flows with a first dump)
  autostandby flows --ip ADDR [--netns PATH] [--json]
      the flows keeping ADDR awake, once that first dump is applied (waits up to 5s)
  autostandby stats [--ip ADDR[,ADDR...]] [--for 2s] [--netns PATH] [--json]
      observe for a while, then print the controller's counters

Reads the conntrack table of the network namespace (the current one by default); needs
root or CAP_NET_ADMIN. Never puts a VM into standby or wakes one.";

/// Why a command stopped.
#[derive(Debug)]
enum Failure {
    /// Worth telling the operator.
    Message(String),
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
fn write_out(args: std::fmt::Arguments<'_>) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => Failure::BrokenPipe,
            _ => Failure::Message(format!("writing to stdout: {e}")),
        })
}

macro_rules! out {
    ($($arg:tt)*) => { write_out(format_args!($($arg)*)) };
}

macro_rules! outln {
    ($($arg:tt)*) => { write_out(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Parsed command line.
#[derive(Debug, PartialEq)]
struct Args {
    command: Command,
    ips: Vec<IpAddr>,
    idle: Duration,
    duration: Duration,
    netns: Option<PathBuf>,
    json: bool,
}

#[derive(Debug, PartialEq, Clone, Copy)]
enum Command {
    Watch,
    Flows,
    Stats,
}

/// Parses `30s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (num, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {text:?} (examples: 30s, 500ms, 2m)"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => {
            return Err(format!(
                "invalid duration unit in {text:?} (use ms, s, m or h)"
            ));
        }
    }
    .ok_or_else(|| format!("duration {text:?} is too large"))?;
    if ms == 0 {
        return Err(format!("duration {text:?} must be positive"));
    }
    Ok(Duration::from_millis(ms))
}

fn parse_ips(text: &str) -> Result<Vec<IpAddr>, String> {
    text.split(',')
        .map(|s| {
            s.trim()
                .parse::<IpAddr>()
                .map(|ip| ip.to_canonical())
                .map_err(|_| format!("invalid IP address {s:?}"))
        })
        .collect()
}

fn parse_args(argv: &[String]) -> Result<Args, String> {
    let mut it = argv.iter();
    let command = match it.next().map(String::as_str) {
        Some("watch") => Command::Watch,
        Some("flows") => Command::Flows,
        Some("stats") => Command::Stats,
        Some(other) => return Err(format!("unknown command {other:?}")),
        None => return Err("missing command".into()),
    };
    let mut args = Args {
        command,
        ips: Vec::new(),
        idle: Duration::from_secs(30),
        duration: Duration::from_secs(2),
        netns: None,
        json: false,
    };
    while let Some(flag) = it.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (flag.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name {
            "--ip" => args.ips.extend(parse_ips(&value()?)?),
            "--idle" => args.idle = parse_duration(&value()?)?,
            "--for" => args.duration = parse_duration(&value()?)?,
            "--netns" => args.netns = Some(PathBuf::from(value()?)),
            "--json" if inline.is_none() => args.json = true,
            _ => return Err(format!("unknown flag {flag:?}")),
        }
    }
    if matches!(command, Command::Watch | Command::Flows) && args.ips.is_empty() {
        return Err("--ip is required".into());
    }
    if command == Command::Flows && args.ips.len() != 1 {
        return Err("flows takes exactly one --ip".into());
    }
    let mut seen = args.ips.clone();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() != args.ips.len() {
        return Err("an address is given twice".into());
    }
    Ok(args)
}

fn start(args: &Args) -> Result<Controller, String> {
    let mut config = ControllerConfig::kernel();
    config.netns = args.netns.clone();
    let controller = Controller::new(config).map_err(|e| match e {
        ControllerError::Permission(m) => {
            format!("{m}\nrun as root (or with CAP_NET_ADMIN) to read conntrack")
        }
        other => other.to_string(),
    })?;
    let policy = Policy {
        enabled: true,
        idle_timeout_ms: args.idle.as_millis() as u64,
        ignore_source_cidrs: Vec::new(),
        ignore_destination_ports: Vec::new(),
        protocols: Protocols {
            tcp: true,
            udp: true,
        },
        wake_on_traffic: false,
        min_uptime_ms: 0,
    };
    for (key, ip) in args.ips.iter().enumerate() {
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

/// How long `flows` waits for the library to read the address's flows.
const FLOWS_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the library has read the flows of every one of `keys`: right after
/// registration it has not, until its first dump of their addresses has been applied
/// (status reason `resync_pending` until then).
fn flows_read(controller: &Controller, keys: &[u64]) -> bool {
    keys.iter()
        .all(|&k| controller.resync_pending(k).is_ok_and(|pending| !pending))
}

/// Waits up to `limit` for [`flows_read`]; false if it is still not so then.
fn wait_flows_read(controller: &Controller, keys: &[u64], limit: Duration) -> bool {
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

fn fmt_ms(ms: Option<u64>) -> String {
    ms.map_or_else(|| "-".into(), |v| format!("{:.1}s", v as f64 / 1000.0))
}

fn fmt_age(now: u64, at: Option<u64>) -> String {
    at.map_or_else(
        || "-".into(),
        |t| format!("{}s ago", now.saturating_sub(t) / 1000),
    )
}

/// The decision the library would take now, in words, from its status alone. `decided`
/// says that a standby decision for the address was received and is still pending.
fn would(s: &StatusSnapshot, decided: bool) -> String {
    match s.status {
        Status::StandbyRequested if decided => "standby (decided)".into(),
        Status::IdleCountdown => format!("standby in {}", fmt_ms(s.countdown_remaining_ms)),
        Status::ReadyForStandby | Status::StandbyRequested => "standby".into(),
        _ => "none".into(),
    }
}

/// The state `watch` keeps between ticks: which addresses have a standby decision the
/// library is still waiting on. The tool never puts a VM into standby, so a decision is
/// left pending while the library still wants the standby, and declined once it no
/// longer does (activity, a hold): the library then counts down afresh and decides
/// again, and every tick shows the library's current status.
struct Watcher {
    keys: usize,
    pending: Vec<bool>,
    decisions: Vec<Decision>,
}

impl Watcher {
    fn new(keys: usize) -> Self {
        Self {
            keys,
            pending: vec![false; keys],
            decisions: Vec::new(),
        }
    }

    /// Takes the decisions made since the last tick and returns, for each address, its
    /// status and the decision it would take now.
    fn tick(&mut self, controller: &Controller) -> Result<Vec<(StatusSnapshot, String)>, String> {
        self.decisions.clear();
        controller
            .poll_decisions(&mut self.decisions, 1024, Duration::ZERO)
            .map_err(|e| e.to_string())?;
        for d in &self.decisions {
            if let Decision::Standby { key } = d
                && let Some(p) = self.pending.get_mut(*key as usize)
            {
                *p = true;
            }
        }
        let mut rows = Vec::with_capacity(self.keys);
        for key in 0..self.keys {
            let mut s = controller.status(key as u64).map_err(|e| e.to_string())?;
            if self.pending[key] && s.status != Status::StandbyRequested {
                // Cancelled by the library: answer it, so that it frees the standby slot
                // and can decide again.
                if let Ok(BeginStandby::Proceed) = controller.begin_standby(key as u64) {
                    controller
                        .report_standby(key as u64, StandbyOutcome::Failed)
                        .map_err(|e| e.to_string())?;
                }
                self.pending[key] = false;
                s = controller.status(key as u64).map_err(|e| e.to_string())?;
            }
            let decision = would(&s, self.pending[key]);
            rows.push((s, decision));
        }
        Ok(rows)
    }
}

fn json_str(s: &str) -> String {
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

fn json_opt(v: Option<u64>) -> String {
    v.map_or_else(|| "null".into(), |v| v.to_string())
}

fn watch(args: &Args) -> Result<(), Failure> {
    let controller = start(args)?;
    // No wait for the first dump: the first table says `resync_pending` while it runs.
    let mut watcher = Watcher::new(args.ips.len());
    loop {
        let rows = watcher.tick(&controller)?;
        let now = controller.now();
        if !args.json {
            // Clear the screen and home the cursor, as watch(1) does.
            out!("\x1b[2J\x1b[H")?;
            outln!(
                "{:<40} {:<18} {:<28} {:>6} {:>10} {:>10}  WOULD",
                "ADDRESS",
                "STATUS",
                "REASON",
                "FLOWS",
                "IDLE",
                "COUNTDOWN"
            )?;
        }
        for (ip, (s, decision)) in args.ips.iter().zip(&rows) {
            if args.json {
                outln!(
                    "{{\"time_ms\":{now},\"address\":{},\"status\":{},\"reason\":{},\"active_inbound\":{},\"idle_since_ms\":{},\"countdown_remaining_ms\":{},\"would\":{}}}",
                    json_str(&ip.to_string()),
                    json_str(s.status.as_str()),
                    json_str(s.reason.as_str()),
                    s.active_inbound,
                    json_opt(s.idle_since),
                    json_opt(s.countdown_remaining_ms),
                    json_str(decision)
                )?;
            } else {
                outln!(
                    "{:<40} {:<18} {:<28} {:>6} {:>10} {:>10}  {}",
                    ip.to_string(),
                    s.status.as_str(),
                    s.reason.as_str(),
                    s.active_inbound,
                    fmt_age(now, s.idle_since),
                    fmt_ms(s.countdown_remaining_ms),
                    decision
                )?;
            }
        }
        // Once a second; sooner when an address was waiting for its flows to be read, so
        // that the truth follows `resync_pending` as soon as it is known.
        let waiting: Vec<u64> = rows
            .iter()
            .enumerate()
            .filter(|(_, (s, _))| s.reason == Reason::ResyncPending)
            .map(|(k, _)| k as u64)
            .collect();
        if waiting.is_empty() {
            std::thread::sleep(Duration::from_secs(1));
        } else {
            wait_flows_read(&controller, &waiting, Duration::from_secs(1));
        }
    }
}

fn flows(args: &Args) -> Result<(), Failure> {
    let controller = start(args)?;
    // Reading before the first dump of the address has been applied would show the
    // flows its events happened to report since registration: usually none.
    if !wait_flows_read(&controller, &[0], FLOWS_READ_TIMEOUT) {
        let why = controller
            .status(0)
            .map(|s| format!("status {}, reason {}", s.status.as_str(), s.reason.as_str()))
            .unwrap_or_else(|e| e.to_string());
        return Err(Failure::Message(format!(
            "the flows of {} were not read within {}s ({why}): the conntrack dump did not complete",
            args.ips[0],
            FLOWS_READ_TIMEOUT.as_secs()
        )));
    }
    let mut flows = Vec::new();
    controller
        .explain(0, &mut flows)
        .map_err(|e| e.to_string())?;
    let proto = |p: u8| match p {
        6 => "tcp".to_string(),
        17 => "udp".to_string(),
        n => n.to_string(),
    };
    let state = |s: Option<TcpState>| s.map_or("-", TcpState::name);
    if !args.json {
        outln!("{} flow(s) keeping {} awake", flows.len(), args.ips[0])?;
    }
    for f in &flows {
        let orig = format!(
            "{} -> {}",
            std::net::SocketAddr::new(f.orig.src, f.orig.src_port),
            std::net::SocketAddr::new(f.orig.dst, f.orig.dst_port)
        );
        if args.json {
            outln!(
                "{{\"protocol\":{},\"orig\":{},\"reply_src\":{},\"tcp_state\":{},\"age_ms\":{}}}",
                json_str(&proto(f.protocol)),
                json_str(&orig),
                json_str(&std::net::SocketAddr::new(f.reply.src, f.reply.src_port).to_string()),
                json_str(state(f.tcp_state)),
                f.age_ms
            )?;
        } else {
            outln!(
                "  {:<4} {orig:<60} {:<12} seen {}",
                proto(f.protocol),
                state(f.tcp_state),
                fmt_ms(Some(f.age_ms))
            )?;
        }
    }
    Ok(())
}

fn stats(args: &Args) -> Result<(), Failure> {
    let controller = start(args)?;
    std::thread::sleep(args.duration);
    let s = controller.stats();
    let rows: [(&str, u64); 19] = [
        ("instances", s.engine.instances),
        ("tracked_flows", s.engine.tracked_flows),
        ("flow_events", s.engine.flow_events),
        ("flow_events_unmatched", s.engine.flow_events_unmatched),
        ("standby_decisions", s.engine.standby_decisions),
        ("wake_decisions", s.engine.wake_decisions),
        ("standby_in_flight", s.engine.standby_in_flight),
        ("standby_queued", s.engine.standby_queued),
        ("resyncs", s.engine.resyncs),
        ("dump_walks", s.dump_walks),
        ("flow_lookups", s.flow_lookups),
        ("periodic_checks", s.periodic_checks),
        ("confirm_lead_ms", s.confirm_lead_ms),
        ("events_read", s.events_read),
        ("event_wakeups", s.event_wakeups),
        ("events_lost", s.events_lost),
        ("observer_errors", s.observer_errors),
        ("decisions_pending", s.decisions_pending),
        ("log_records_dropped", s.log_records_dropped),
    ];
    if args.json {
        let body: Vec<String> = rows.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        outln!("{{{}}}", body.join(","))?;
    } else {
        for (k, v) in rows {
            outln!("{k:<24} {v}")?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() || argv.iter().any(|a| a == "-h" || a == "--help") {
        if let Err(Failure::Message(e)) = outln!("{USAGE}") {
            eprintln!("autostandby: {e}");
        }
        return if argv.is_empty() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("autostandby: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match args.command {
        Command::Watch => watch(&args),
        Command::Flows => flows(&args),
        Command::Stats => stats(&args),
    };
    match result {
        Ok(()) | Err(Failure::BrokenPipe) => ExitCode::SUCCESS,
        Err(Failure::Message(e)) => {
            eprintln!("autostandby: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Args, String> {
        parse_args(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("3d").unwrap_err().contains("unit"));
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn flags() {
        let a = args("watch --ip 10.0.0.2,::ffff:10.0.0.3,fd00::1 --idle=5s --json").unwrap();
        assert_eq!(a.command, Command::Watch);
        assert_eq!(a.ips.len(), 3);
        assert_eq!(a.ips[1], "10.0.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(a.idle, Duration::from_secs(5));
        assert!(a.json);
        assert!(args("watch").unwrap_err().contains("--ip is required"));
        assert!(
            args("watch --ip 10.0.0.300")
                .unwrap_err()
                .contains("invalid IP")
        );
        assert!(
            args("watch --ip 10.0.0.2 --idle")
                .unwrap_err()
                .contains("needs a value")
        );
        assert!(
            args("watch --ip 10.0.0.2 --bogus")
                .unwrap_err()
                .contains("unknown flag")
        );
        assert!(
            args("flows --ip 10.0.0.2,10.0.0.3")
                .unwrap_err()
                .contains("exactly one")
        );
        assert!(
            args("watch --ip 10.0.0.2,10.0.0.2")
                .unwrap_err()
                .contains("twice")
        );
        assert!(args("frobnicate").unwrap_err().contains("unknown command"));
        let s = args("stats --for 1s --netns /run/netns/x").unwrap();
        assert_eq!(s.duration, Duration::from_secs(1));
        assert_eq!(s.netns, Some(PathBuf::from("/run/netns/x")));
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
    /// One manual controller watching 10.0.0.2 with a 10 s idle timeout.
    fn manual_watch() -> (Controller, Watcher) {
        use autostandby::controller::ControllerConfig;
        let c = Controller::new(ControllerConfig::manual(1_700_000_000_000)).unwrap();
        let spec = InstanceSpec {
            addresses: vec!["10.0.0.2".parse().unwrap()],
            policy: Some(Policy {
                enabled: true,
                idle_timeout_ms: 10_000,
                ..Policy::default()
            }),
            lifecycle: Lifecycle::Running,
            network_enabled: true,
            has_vgpu: false,
            runtime: Default::default(),
        };
        c.register(0, spec).unwrap();
        (c, Watcher::new(1))
    }

    fn flow_event(kind: autostandby::flow::EventKind) -> autostandby::flow::FlowEvent {
        use autostandby::flow::{Flow, FlowEvent, Tuple, proto};
        let client: IpAddr = "192.0.2.10".parse().unwrap();
        let guest: IpAddr = "10.0.0.2".parse().unwrap();
        FlowEvent {
            kind,
            flow: Flow {
                protocol: proto::TCP,
                orig: Tuple::new(client, 40_000, guest, 22),
                reply: Tuple::new(guest, 22, client, 40_000),
                zone: 0,
                id: 7,
                tcp_state: Some(TcpState::ESTABLISHED),
                status: 0,
                mark: 0,
                timeout_s: None,
            },
        }
    }

    fn shown(c: &Controller, w: &mut Watcher) -> (Status, String) {
        let rows = w.tick(c).unwrap();
        (rows[0].0.status, rows[0].1.clone())
    }

    #[test]
    fn watch_shows_the_truth_after_a_decision() {
        use autostandby::flow::EventKind;
        let (c, mut w) = manual_watch();
        let (status, would) = shown(&c, &mut w);
        assert_eq!(status, Status::IdleCountdown);
        assert!(would.starts_with("standby in"), "{would}");

        c.advance_clock(10_001).unwrap();
        let (status, would) = shown(&c, &mut w);
        assert_eq!(status, Status::StandbyRequested);
        assert_eq!(would, "standby (decided)");

        // A connection arrives: the address is active again, whatever was decided.
        c.ingest(&[flow_event(EventKind::New)]).unwrap();
        for _ in 0..3 {
            let (status, would) = shown(&c, &mut w);
            assert_eq!(status, Status::Active);
            assert_eq!(would, "none");
        }

        // It closes: a fresh countdown, then a fresh decision.
        c.ingest(&[flow_event(EventKind::Destroy)]).unwrap();
        let (status, would) = shown(&c, &mut w);
        assert_eq!(status, Status::IdleCountdown);
        assert!(would.starts_with("standby in"), "{would}");
        c.advance_clock(10_001).unwrap();
        let (status, would) = shown(&c, &mut w);
        assert_eq!(status, Status::StandbyRequested);
        assert_eq!(would, "standby (decided)");
    }

    #[test]
    fn would_follows_the_status() {
        let (c, _) = manual_watch();
        let mut s = c.status(0).unwrap();
        s.status = Status::Active;
        assert_eq!(would(&s, true), "none");
        s.status = Status::StandbyRequested;
        assert_eq!(would(&s, true), "standby (decided)");
        assert_eq!(would(&s, false), "standby");
    }
}
