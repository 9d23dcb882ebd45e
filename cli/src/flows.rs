//! `autostandby flows`: the flows keeping one address awake.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use autostandby::engine::KeptAwakeBy;
use autostandby::flow::TcpState;

use crate::common::{
    Failure, Netns, fmt_ms, json_str, outln, parse_one_ip, start, wait_flows_read,
};

/// How long `flows` waits for the library to read the address's flows.
const FLOWS_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The flows keeping ADDR awake, once the library's first dump of it is applied (waits
/// up to 5s).
///
/// A count line, then one line per flow; with --json, one JSON object per flow and no
/// count line (docs/cli-json.md).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The address whose flows are shown (one).
    #[arg(long, value_name = "ADDR", value_parser = parse_one_ip, required = true)]
    pub ip: IpAddr,
    #[command(flatten)]
    pub netns: Netns,
    /// One JSON object per flow instead of the text lines.
    #[arg(long)]
    pub json: bool,
}

fn proto(p: u8) -> String {
    match p {
        6 => "tcp".to_string(),
        17 => "udp".to_string(),
        n => n.to_string(),
    }
}

fn state(s: Option<TcpState>) -> &'static str {
    s.map_or("-", TcpState::name)
}

fn orig(f: &KeptAwakeBy) -> String {
    format!(
        "{} -> {}",
        SocketAddr::new(f.orig.src, f.orig.src_port),
        SocketAddr::new(f.orig.dst, f.orig.dst_port)
    )
}

/// One `--json` line: the fields of docs/cli-json.md, section `flows`.
fn json_line(f: &KeptAwakeBy) -> String {
    format!(
        "{{\"protocol\":{},\"orig\":{},\"reply_src\":{},\"tcp_state\":{},\"age_ms\":{}}}",
        json_str(&proto(f.protocol)),
        json_str(&orig(f)),
        json_str(&SocketAddr::new(f.reply.src, f.reply.src_port).to_string()),
        json_str(state(f.tcp_state)),
        f.age_ms
    )
}

/// Prints the flows once they are known.
pub fn run(args: &Args) -> Result<(), Failure> {
    // The idle timeout plays no part in which flows count.
    let controller = start(&args.netns, &[args.ip], Duration::from_secs(30))?;
    // Reading before the first dump of the address has been applied would show the
    // flows its events happened to report since registration: usually none.
    if !wait_flows_read(&controller, &[0], FLOWS_READ_TIMEOUT) {
        let why = controller
            .status(0)
            .map(|s| format!("status {}, reason {}", s.status.as_str(), s.reason.as_str()))
            .unwrap_or_else(|e| e.to_string());
        return Err(Failure::Message(format!(
            "the flows of {} were not read within {}s ({why}): the conntrack dump did not complete",
            args.ip,
            FLOWS_READ_TIMEOUT.as_secs()
        )));
    }
    let mut flows = Vec::new();
    controller
        .explain(0, &mut flows)
        .map_err(|e| e.to_string())?;
    if !args.json {
        outln!("{} flow(s) keeping {} awake", flows.len(), args.ip)?;
    }
    for f in &flows {
        if args.json {
            outln!("{}", json_line(f))?;
        } else {
            outln!(
                "  {:<4} {:<60} {:<12} seen {}",
                proto(f.protocol),
                orig(f),
                state(f.tcp_state),
                fmt_ms(Some(f.age_ms))
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_and_states_in_words() {
        assert_eq!(proto(6), "tcp");
        assert_eq!(proto(17), "udp");
        assert_eq!(proto(1), "1");
        assert_eq!(state(None), "-");
    }
}
