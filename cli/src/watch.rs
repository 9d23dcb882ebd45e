//! `autostandby watch`: a live table of each address, refreshed every second.

use std::net::IpAddr;
use std::time::Duration;

use autostandby::controller::Controller;
use autostandby::engine::{BeginStandby, Decision, Reason, StandbyOutcome, Status, StatusSnapshot};

use crate::common::{
    Failure, Netns, distinct, fmt_ms, json_opt, json_str, out, outln, parse_duration, parse_ip,
    start, wait_flows_read,
};

/// Live table of each address: status, reason, active flows, idle since, countdown and
/// the decision the library would take.
///
/// Refreshed every second; `resync_pending` until the library has read the address's
/// flows with a first dump. With --json, one JSON object per address and tick
/// (docs/cli-json.md).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Addresses to watch, comma-separated or repeated.
    #[arg(long = "ip", value_name = "ADDR", value_delimiter = ',', value_parser = parse_ip, required = true)]
    pub ips: Vec<IpAddr>,
    /// Idle timeout of the policy the addresses are watched with (ms, s, m, h; a bare
    /// number is seconds).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub idle: Duration,
    #[command(flatten)]
    pub netns: Netns,
    /// One JSON object per line instead of the table.
    #[arg(long)]
    pub json: bool,
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

/// One `--json` line: the fields of docs/cli-json.md, section `watch`.
fn json_line(now: u64, ip: &IpAddr, s: &StatusSnapshot, decision: &str) -> String {
    format!(
        "{{\"time_ms\":{now},\"address\":{},\"status\":{},\"reason\":{},\"active_inbound\":{},\"idle_since_ms\":{},\"countdown_remaining_ms\":{},\"would\":{}}}",
        json_str(&ip.to_string()),
        json_str(s.status.as_str()),
        json_str(s.reason.as_str()),
        s.active_inbound,
        json_opt(s.idle_since),
        json_opt(s.countdown_remaining_ms),
        json_str(decision)
    )
}

/// Runs until interrupted or until stdout closes.
pub fn run(args: &Args) -> Result<(), Failure> {
    distinct(&args.ips)?;
    let controller = start(&args.netns, &args.ips, args.idle)?;
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
                outln!("{}", json_line(now, ip, s, decision))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use autostandby::controller::ControllerConfig;
    use autostandby::engine::{InstanceSpec, Lifecycle};
    use autostandby::flow::TcpState;
    use autostandby::policy::Policy;

    /// One manual controller watching 10.0.0.2 with a 10 s idle timeout.
    fn manual_watch() -> (Controller, Watcher) {
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

    #[test]
    fn a_json_line_is_one_object() {
        let (c, _) = manual_watch();
        let s = c.status(0).unwrap();
        let line = json_line(5, &"10.0.0.2".parse().unwrap(), &s, "none");
        assert!(
            line.starts_with("{\"time_ms\":5,\"address\":\"10.0.0.2\","),
            "{line}"
        );
        assert!(line.ends_with(",\"would\":\"none\"}"), "{line}");
    }
}
