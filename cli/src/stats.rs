//! `autostandby stats`: observe for a while, then print the controller's counters, as
//! text, JSON or Prometheus text exposition.

use std::net::IpAddr;
use std::time::Duration;

use autostandby::controller::{Controller, ControllerStats};
use autostandby::engine::Status;

use crate::common::{
    Failure, Netns, distinct, json_str, outln, parse_duration, parse_ip, start, wait_flows_read,
};

/// Observe for a while, then print the controller's counters.
///
/// With --ip, the addresses are registered as instances (and counted by status in
/// --prometheus). --json prints one JSON object (docs/cli-json.md); --prometheus the
/// Prometheus text exposition with the metric names of the Go controller
/// (hypeman_auto_standby_*) and the library's other counters (autostandby_*).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Addresses to register as instances, comma-separated or repeated.
    #[arg(long = "ip", value_name = "ADDR", value_delimiter = ',', value_parser = parse_ip)]
    pub ips: Vec<IpAddr>,
    /// How long to observe before printing (ms, s, m, h; a bare number is seconds).
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration, default_value = "2s")]
    pub duration: Duration,
    /// Idle timeout of the policy the addresses are registered with.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub idle: Duration,
    #[command(flatten)]
    pub netns: Netns,
    /// One JSON object instead of the text lines.
    #[arg(long, conflicts_with = "prometheus")]
    pub json: bool,
    /// Prometheus text exposition format (version 0.0.4).
    #[arg(long)]
    pub prometheus: bool,
}

/// A value of the stats output.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Value {
    Count(u64),
    Flag(bool),
}

/// Whether a value only grows (a Prometheus counter) or goes up and down (a gauge).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Counter,
    Gauge,
}

/// One line of the stats output: its name (the JSON field), kind, value and meaning.
struct Row {
    name: &'static str,
    kind: Kind,
    value: Value,
    help: &'static str,
}

/// Every field of the stats output, in its order: the first 18 are those of the first
/// releases, in their order; later ones are appended.
fn rows(s: &ControllerStats) -> Vec<Row> {
    use Kind::{Counter, Gauge};
    use Value::{Count, Flag};
    let e = &s.engine;
    let row = |name, kind, value, help| Row {
        name,
        kind,
        value,
        help,
    };
    vec![
        row(
            "instances",
            Gauge,
            Count(e.instances),
            "Registered instances",
        ),
        row(
            "tracked_flows",
            Gauge,
            Count(e.tracked_flows),
            "Flows tracked",
        ),
        row(
            "flow_events",
            Counter,
            Count(e.flow_events),
            "Flow events applied",
        ),
        row(
            "flow_events_unmatched",
            Counter,
            Count(e.flow_events_unmatched),
            "Flow events for no registered address",
        ),
        row(
            "standby_decisions",
            Counter,
            Count(e.standby_decisions),
            "Standby decisions emitted",
        ),
        row(
            "wake_decisions",
            Counter,
            Count(e.wake_decisions),
            "Wake decisions emitted",
        ),
        row(
            "standby_in_flight",
            Gauge,
            Count(e.standby_in_flight),
            "Standbys emitted and not yet reported",
        ),
        row(
            "standby_queued",
            Gauge,
            Count(e.standby_queued),
            "Standbys due and waiting for a free slot",
        ),
        row("resyncs", Counter, Count(e.resyncs), "Resyncs completed"),
        row(
            "dump_walks",
            Counter,
            Count(s.dump_walks),
            "Conntrack table walks asked for",
        ),
        row(
            "flow_lookups",
            Counter,
            Count(s.flow_lookups),
            "Flows looked up by exact tuple",
        ),
        row(
            "confirm_lead_ms",
            Gauge,
            Count(s.confirm_lead_ms),
            "How long before a deadline the confirmation is asked for, in milliseconds",
        ),
        row(
            "events_read",
            Counter,
            Count(s.events_read),
            "Flow events read from the event socket",
        ),
        row(
            "event_wakeups",
            Counter,
            Count(s.event_wakeups),
            "Wake-ups that read the event socket",
        ),
        row(
            "events_lost",
            Counter,
            Count(s.events_lost),
            "Times events were lost",
        ),
        row(
            "observer_errors",
            Counter,
            Count(s.observer_errors),
            "Observer failures",
        ),
        row(
            "decisions_pending",
            Gauge,
            Count(s.decisions_pending),
            "Decisions queued and not yet polled",
        ),
        row(
            "log_records_dropped",
            Counter,
            Count(s.log_records_dropped),
            "Log records dropped on a full buffer",
        ),
        row(
            "suspect_ends",
            Counter,
            Count(e.suspect_ends),
            "TCP entries destroyed in a live state",
        ),
        row(
            "wake_failures",
            Counter,
            Count(e.wake_failures),
            "Restores reported failed",
        ),
        row(
            "lookups",
            Counter,
            Count(e.lookups),
            "Expiry lookups finished",
        ),
        row(
            "lookup_gone",
            Counter,
            Count(e.lookup_gone),
            "Flows expiry lookups found gone",
        ),
        row(
            "decisions_merged",
            Counter,
            Count(s.decisions_merged),
            "Decisions merged into one already waiting",
        ),
        row(
            "observer_failed",
            Gauge,
            Flag(s.observer_failed),
            "The observer is failed now",
        ),
        row(
            "conntrack_events_off",
            Gauge,
            Flag(s.conntrack_events_off),
            "net.netfilter.nf_conntrack_events was 0 at its last read",
        ),
        row(
            "periodic_checks",
            Counter,
            Count(s.periodic_checks),
            "Periodic checks of the tracked flows by exact-tuple lookups",
        ),
    ]
}

impl Value {
    fn json(self) -> String {
        match self {
            Self::Count(n) => n.to_string(),
            Self::Flag(b) => b.to_string(),
        }
    }

    fn number(self) -> u64 {
        match self {
            Self::Count(n) => n,
            Self::Flag(b) => u64::from(b),
        }
    }
}

/// What the CLI knows of the instances it registered: their statuses and flows.
#[derive(Debug, Default, PartialEq)]
struct Instances {
    /// Count per status, in the order of [`STATUSES`].
    by_status: [u64; STATUSES.len()],
    /// The same, by hypeman's phase, in the order of [`PHASES`].
    by_phase: [u64; PHASES.len()],
    /// Counted inbound flows, summed.
    active_inbound: u64,
}

/// Every status, as the library names them.
const STATUSES: [Status; 8] = [
    Status::Unsupported,
    Status::Disabled,
    Status::Ineligible,
    Status::Active,
    Status::IdleCountdown,
    Status::ReadyForStandby,
    Status::StandbyRequested,
    Status::Error,
];

/// hypeman's phases of `tracked_instances_total`.
const PHASES: [&str; 4] = [
    "active",
    "idle_countdown",
    "ready_for_standby",
    "ineligible",
];

/// The phase of a status, as the Go controller maps it (go/metrics.go `phaseOf`).
fn phase_of(status: Status, active_inbound: u64) -> &'static str {
    match status {
        Status::Active => "active",
        Status::IdleCountdown => "idle_countdown",
        Status::ReadyForStandby | Status::StandbyRequested => "ready_for_standby",
        Status::Error if active_inbound > 0 => "active",
        Status::Error => "idle_countdown",
        Status::Unsupported | Status::Disabled | Status::Ineligible => "ineligible",
    }
}

fn instances(controller: &Controller, count: usize) -> Result<Instances, String> {
    let mut out = Instances::default();
    for key in 0..count as u64 {
        let s = controller.status(key).map_err(|e| e.to_string())?;
        if let Some(i) = STATUSES.iter().position(|&st| st == s.status) {
            out.by_status[i] += 1;
        }
        let phase = phase_of(s.status, u64::from(s.active_inbound));
        if let Some(i) = PHASES.iter().position(|&p| p == phase) {
            out.by_phase[i] += 1;
        }
        out.active_inbound += u64::from(s.active_inbound);
    }
    Ok(out)
}

/// Prometheus text exposition: the Go controller's metrics that the CLI can know (it
/// runs no standby and no restore, so attempts, errors of those and resync durations
/// are not there), then the library's own.
fn prometheus(s: &ControllerStats, inst: &Instances) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let one = |v: u64| [(String::new(), v)];
    family(
        "hypeman_auto_standby_conntrack_events_total",
        "counter",
        "Conntrack flow events received by the library",
        &[("{result=\"received\"}".to_string(), s.engine.flow_events)],
    );
    family(
        "hypeman_auto_standby_conntrack_events_lost_total",
        "counter",
        "Times conntrack events were lost (answered with a resync)",
        &one(s.events_lost),
    );
    let phases: Vec<(String, u64)> = PHASES
        .iter()
        .zip(inst.by_phase)
        .map(|(p, n)| (format!("{{phase={}}}", json_str(p)), n))
        .collect();
    family(
        "hypeman_auto_standby_tracked_instances_total",
        "gauge",
        "Tracked instances by auto-standby phase",
        &phases,
    );
    family(
        "hypeman_auto_standby_active_connections_total",
        "gauge",
        "Qualifying inbound connections across instances",
        &one(inst.active_inbound),
    );
    family(
        "hypeman_auto_standby_standby_in_flight",
        "gauge",
        "Standby operations executing",
        &one(s.engine.standby_in_flight),
    );
    family(
        "hypeman_auto_standby_standby_queued",
        "gauge",
        "Standby operations waiting for a worker",
        &one(s.engine.standby_queued),
    );
    let statuses: Vec<(String, u64)> = STATUSES
        .iter()
        .zip(inst.by_status)
        .map(|(st, n)| (format!("{{status={}}}", json_str(st.as_str())), n))
        .collect();
    family(
        "autostandby_instances_by_status",
        "gauge",
        "Instances the CLI registered, by library status",
        &statuses,
    );
    for r in rows(s) {
        let (name, kind) = match r.kind {
            Kind::Counter => (format!("autostandby_{}_total", r.name), "counter"),
            Kind::Gauge => (format!("autostandby_{}", r.name), "gauge"),
        };
        family(&name, kind, r.help, &one(r.value.number()));
    }
    out
}

/// How much longer than `--for` stats waits for the first dump of the addresses.
const FIRST_DUMP_GRACE: Duration = Duration::from_secs(5);

/// Observes for `--for` (and until the first dump of the addresses is applied, up to
/// [`FIRST_DUMP_GRACE`] more), then prints.
pub fn run(args: &Args) -> Result<(), Failure> {
    distinct(&args.ips)?;
    let controller = start(&args.netns, &args.ips, args.idle)?;
    std::thread::sleep(args.duration);
    // Per-instance figures mean little before the first dump of the addresses (every
    // one `active`/`resync_pending`, no flow): on a slow host, give it a little longer.
    let keys: Vec<u64> = (0..args.ips.len() as u64).collect();
    wait_flows_read(&controller, &keys, FIRST_DUMP_GRACE);
    let s = controller.stats();
    if args.prometheus {
        let inst = instances(&controller, args.ips.len())?;
        crate::common::out!("{}", prometheus(&s, &inst))?;
    } else if args.json {
        let body: Vec<String> = rows(&s)
            .iter()
            .map(|r| format!("{}:{}", json_str(r.name), r.value.json()))
            .collect();
        outln!("{{{}}}", body.join(","))?;
    } else {
        for r in rows(&s) {
            outln!("{:<24} {}", r.name, r.value.json())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_status_is_listed_once_and_has_a_phase() {
        let names: HashSet<&str> = STATUSES.iter().map(|s| s.as_str()).collect();
        assert_eq!(names.len(), STATUSES.len());
        for st in STATUSES {
            assert!(PHASES.contains(&phase_of(st, 0)), "{st:?}");
            assert!(PHASES.contains(&phase_of(st, 1)), "{st:?}");
        }
        assert_eq!(phase_of(Status::Error, 2), "active");
        assert_eq!(phase_of(Status::Error, 0), "idle_countdown");
        assert_eq!(phase_of(Status::StandbyRequested, 0), "ready_for_standby");
    }

    #[test]
    fn row_names_are_unique() {
        let s = ControllerStats::default();
        let names: HashSet<&str> = rows(&s).iter().map(|r| r.name).collect();
        assert_eq!(names.len(), rows(&s).len());
    }

    #[test]
    fn prometheus_exposition_is_well_formed() {
        let mut s = ControllerStats::default();
        s.engine.flow_events = 42;
        s.events_lost = 3;
        s.engine.standby_in_flight = 1;
        s.conntrack_events_off = true;
        let mut inst = Instances {
            active_inbound: 5,
            ..Default::default()
        };
        inst.by_status[3] = 2; // active
        inst.by_phase[0] = 2;
        let text = prometheus(&s, &inst);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines.contains(&"hypeman_auto_standby_conntrack_events_total{result=\"received\"} 42")
        );
        assert!(lines.contains(&"hypeman_auto_standby_conntrack_events_lost_total 3"));
        assert!(
            lines.contains(&"hypeman_auto_standby_tracked_instances_total{phase=\"active\"} 2")
        );
        assert!(
            lines.contains(&"hypeman_auto_standby_tracked_instances_total{phase=\"ineligible\"} 0")
        );
        assert!(lines.contains(&"hypeman_auto_standby_active_connections_total 5"));
        assert!(lines.contains(&"hypeman_auto_standby_standby_in_flight 1"));
        assert!(lines.contains(&"autostandby_instances_by_status{status=\"active\"} 2"));
        assert!(lines.contains(&"autostandby_flow_events_total 42"));
        assert!(lines.contains(&"autostandby_conntrack_events_off 1"));
        assert!(lines.contains(&"# TYPE autostandby_confirm_lead_ms gauge"));
        // Every family: HELP, then TYPE, then its samples; each name once.
        let mut families = HashSet::new();
        let mut current = "";
        for (i, l) in lines.iter().enumerate() {
            if let Some(rest) = l.strip_prefix("# HELP ") {
                current = rest.split(' ').next().unwrap();
                assert!(families.insert(current), "{current} twice");
                let ty = lines[i + 1];
                assert!(ty.starts_with(&format!("# TYPE {current} ")), "{ty}");
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                assert_eq!(name, current, "{l}");
                let value = l.rsplit(' ').next().unwrap();
                assert!(value.parse::<u64>().is_ok(), "{l}");
            }
        }
    }
}
