//! `autostandby recommend`: observe addresses for a while, then print what candidate
//! idle timeouts would have done over their idle gaps, and the timeout the rule picks.

use std::net::IpAddr;
use std::time::Duration;

use autostandby::engine::{RecommendQuery, Recommendation};

use crate::common::{
    Failure, Netns, distinct, json_opt, json_str, outln, parse_duration, parse_ip, start,
    wait_flows_read,
};

/// The idle timeout the observed instances are registered with: the longest a policy
/// allows, so that no standby countdown, confirmation dump or decision happens while the
/// tool only watches.
const OBSERVE_IDLE_TIMEOUT: Duration = Duration::from_millis(30 * 24 * 3_600_000);

/// How long to wait for the first dump of the addresses, after which observing begins.
const FLOWS_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Observe addresses for a while, then print what candidate idle timeouts would have
/// done over their idle gaps.
///
/// For each candidate (default 30s, 1m, 2m, 5m, 10m, 15m, 30m, 1h): the standbys and
/// wakes it would have caused and the share of time in standby; and the shortest with at
/// most one wake per N minutes observed. --json prints one object per address
/// (docs/cli-json.md).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Addresses to observe, comma-separated or repeated.
    #[arg(long = "ip", value_name = "ADDR", value_delimiter = ',', value_parser = parse_ip, required = true)]
    pub ips: Vec<IpAddr>,
    /// How long to observe (ms, s, m, h; a bare number is seconds).
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Duration,
    /// Candidate idle timeouts, comma-separated (the library's defaults when absent).
    #[arg(long, value_name = "DURATION", value_delimiter = ',', value_parser = parse_duration)]
    pub candidates: Vec<Duration>,
    /// The rule's N: the recommendation wakes at most once per N minutes observed
    /// (the library's default, 30, when absent).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub minutes_per_wake: Option<u32>,
    #[command(flatten)]
    pub netns: Netns,
    /// One JSON object per address instead of the tables.
    #[arg(long)]
    pub json: bool,
}

/// `1h30m`, `57m40s`, `30s`, `250ms`: the largest units that say `ms` exactly.
fn fmt_span(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let (h, m, s, rest) = (
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1_000 % 60,
        ms % 1_000,
    );
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if rest > 0 {
        out.push_str(&format!("{s}.{rest:03}s"));
    } else if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// Observes the addresses for `--for`, then prints one table (or one JSON object) per
/// address.
pub fn run(args: &Args) -> Result<(), Failure> {
    distinct(&args.ips)?;
    let query = RecommendQuery {
        candidates_ms: args
            .candidates
            .iter()
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .collect(),
        minutes_per_wake: args.minutes_per_wake.unwrap_or(0),
    };
    let (ips, duration, json) = (&args.ips, args.duration, args.json);
    let controller = start(&args.netns, ips, OBSERVE_IDLE_TIMEOUT)?;
    // Observation starts when the library has read the addresses' flows: the whole
    // `duration` is then observed.
    let keys: Vec<u64> = (0..ips.len() as u64).collect();
    if !wait_flows_read(&controller, &keys, FLOWS_READ_TIMEOUT) {
        return Err(Failure::Message(format!(
            "the flows of the addresses were not read within {}s: the conntrack dump did not complete",
            FLOWS_READ_TIMEOUT.as_secs()
        )));
    }
    eprintln!(
        "autostandby: observing {} address(es) for {}",
        ips.len(),
        fmt_span(duration.as_millis() as u64)
    );
    std::thread::sleep(duration);
    for (key, ip) in ips.iter().enumerate() {
        let r = controller
            .recommend(key as u64, &query)
            .map_err(|e| format!("{ip}: {e}"))?;
        if json {
            outln!("{}", to_json(ip, &r))?;
        } else {
            print_table(ip, &r)?;
        }
    }
    Ok(())
}

/// One line of JSON for `ip`'s answer.
fn to_json(ip: &IpAddr, r: &Recommendation) -> String {
    let rows: Vec<String> = r
        .outcomes
        .iter()
        .map(|o| {
            format!(
                "{{\"timeout_ms\":{},\"standbys\":{},\"wakes\":{},\"standby_ms\":{},\"standby_fraction\":{:.6},\"exact\":{}}}",
                o.timeout_ms, o.standbys, o.wakes, o.standby_ms, o.standby_fraction, o.exact
            )
        })
        .collect();
    format!(
        "{{\"address\":{},\"observed_since_ms\":{},\"observed_ms\":{},\"gaps\":{},\"open_gap_ms\":{},\"minutes_per_wake\":{},\"recommended_timeout_ms\":{},\"candidates\":[{}]}}",
        json_str(&ip.to_string()),
        json_opt(r.observed_since),
        r.observed_ms,
        r.gaps,
        json_opt(r.open_gap_ms),
        r.minutes_per_wake,
        json_opt(r.recommended_timeout_ms),
        rows.join(",")
    )
}

fn print_table(ip: &IpAddr, r: &Recommendation) -> Result<(), Failure> {
    let open = r.open_gap_ms.map_or_else(String::new, |g| {
        format!(", idle for the last {}", fmt_span(g))
    });
    if r.observed_since.is_none() {
        outln!("{ip}: its flows were never read (no conntrack dump completed); nothing observed")?;
        return Ok(());
    }
    outln!(
        "{ip}: observed {}, {} idle gap(s) ended{open}",
        fmt_span(r.observed_ms),
        r.gaps
    )?;
    outln!(
        "  {:>10} {:>9} {:>7} {:>12} {:>8}",
        "TIMEOUT",
        "STANDBYS",
        "WAKES",
        "IN STANDBY",
        "OF TIME"
    )?;
    let mut estimated = false;
    for o in &r.outcomes {
        let mark = if o.exact { " " } else { "~" };
        estimated |= !o.exact;
        outln!(
            "  {:>10} {:>9} {:>7} {:>12} {:>7.1}%{mark}",
            fmt_span(o.timeout_ms),
            o.standbys,
            o.wakes,
            fmt_span(o.standby_ms),
            o.standby_fraction * 100.0
        )?;
    }
    if estimated {
        outln!("  ~ estimated: some idle gaps fall in the histogram bucket this timeout splits")?;
    }
    let per = match r.minutes_per_wake {
        1 => "minute".to_owned(),
        n => format!("{n} minutes"),
    };
    match r.recommended_timeout_ms {
        Some(t) => outln!(
            "  recommended idle timeout: {} (the shortest with at most one wake per {per} observed)",
            fmt_span(t)
        )?,
        None => {
            outln!("  no recommendation: every candidate wakes more than once per {per} observed")?
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use autostandby::engine::TimeoutOutcome;

    #[test]
    fn spans() {
        assert_eq!(fmt_span(250), "250ms");
        assert_eq!(fmt_span(30_000), "30s");
        assert_eq!(fmt_span(60_000), "1m");
        assert_eq!(fmt_span(3_460_000), "57m40s");
        assert_eq!(fmt_span(5_400_000), "1h30m");
        assert_eq!(fmt_span(1_500), "1.500s");
    }

    #[test]
    fn json_has_every_field() {
        let r = Recommendation {
            observed_since: Some(5),
            observed_ms: 60_000,
            gaps: 1,
            open_gap_ms: None,
            minutes_per_wake: 30,
            outcomes: vec![TimeoutOutcome {
                timeout_ms: 30_000,
                standbys: 1,
                wakes: 1,
                standby_ms: 15_000,
                standby_fraction: 0.25,
                exact: true,
            }],
            recommended_timeout_ms: None,
        };
        assert_eq!(
            to_json(&"10.0.0.2".parse().unwrap(), &r),
            "{\"address\":\"10.0.0.2\",\"observed_since_ms\":5,\"observed_ms\":60000,\"gaps\":1,\"open_gap_ms\":null,\"minutes_per_wake\":30,\"recommended_timeout_ms\":null,\"candidates\":[{\"timeout_ms\":30000,\"standbys\":1,\"wakes\":1,\"standby_ms\":15000,\"standby_fraction\":0.250000,\"exact\":true}]}"
        );
    }
}
