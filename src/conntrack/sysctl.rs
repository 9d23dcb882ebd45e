//! `net.netfilter.nf_conntrack_events`, per network namespace.
//!
//! `/proc/sys/net` shows the namespace of the thread that opens it, so the file is opened
//! from the namespace helper thread.

use std::path::Path;

use super::error::ConntrackError;
use super::netns;

const EVENTS_PATH: &str = "/proc/sys/net/netfilter/nf_conntrack_events";

/// Reads `nf_conntrack_events` in the namespace at `netns` (the caller's for `None`):
/// 0 off, 1 on for every new flow, 2 (the default) only for flows created while a
/// listener exists.
pub fn events_sysctl(netns: Option<&Path>) -> Result<u8, ConntrackError> {
    netns::run_in(netns, || {
        let text = std::fs::read_to_string(EVENTS_PATH)
            .map_err(|e| ConntrackError::io("read nf_conntrack_events", e))?;
        text.trim()
            .parse::<u8>()
            .map_err(|_| ConntrackError::Malformed("nf_conntrack_events is not a number"))
    })
}

/// Writes `nf_conntrack_events` in the namespace at `netns`.
pub(crate) fn set_events_sysctl(netns: Option<&Path>, value: u8) -> Result<(), ConntrackError> {
    if value > 2 {
        return Err(ConntrackError::Invalid(format!(
            "nf_conntrack_events must be 0, 1 or 2, not {value}"
        )));
    }
    netns::run_in(netns, || {
        std::fs::write(EVENTS_PATH, format!("{value}\n"))
            .map_err(|e| ConntrackError::io("write nf_conntrack_events", e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_values_are_refused_before_any_write() {
        let err = set_events_sysctl(None, 3).unwrap_err();
        assert!(matches!(err, ConntrackError::Invalid(_)));
    }
}
