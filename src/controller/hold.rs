//! Holding packets for instances in Standby: their neighbour entries are removed once
//! they are in Standby, so the first packets of a wake wait in the kernel's neighbour
//! queue instead of being lost (see [`crate::conntrack::neigh`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use crate::conntrack::ConntrackError;
use crate::conntrack::neigh::NeighbourSocket;
use crate::conntrack::solicit::{Family, SolicitTuning};
use crate::engine::{InstanceKey, Lifecycle};

/// The rtnetlink socket and the addresses of every registered instance.
#[derive(Debug)]
pub(crate) struct PacketHold {
    sock: NeighbourSocket,
    addrs: HashMap<InstanceKey, Vec<IpAddr>>,
    /// Raises `mcast_solicit` on the devices reaching held instances; `None` leaves
    /// the devices' settings alone.
    tuning: Option<SolicitTuning>,
    window_ms: u64,
}

impl PacketHold {
    /// Opens the rtnetlink socket in `netns` and restores device settings an earlier
    /// controller of the namespace left changed (see [`SolicitTuning`]), also when this
    /// one has no `window_ms` of its own.
    pub(crate) fn open(
        netns: Option<&Path>,
        window_ms: u64,
        state_dir: &Path,
    ) -> Result<Self, ConntrackError> {
        let tuning = SolicitTuning::open(netns, state_dir)?;
        Ok(Self {
            sock: NeighbourSocket::open(netns)?,
            addrs: HashMap::new(),
            tuning: (window_ms > 0).then_some(tuning),
            window_ms,
        })
    }

    /// Records `key`'s addresses. An instance registered in Standby (after a restart of
    /// the host process, say) has its entries removed: one learnt since, or left by a
    /// crash between its standby and the removal, would send its first packets to a
    /// device nobody reads.
    pub(crate) fn set(&mut self, key: InstanceKey, addrs: &[IpAddr], lifecycle: Lifecycle) {
        self.addrs.insert(key, addrs.to_vec());
        if lifecycle == Lifecycle::Standby {
            self.release(key);
        }
    }

    /// Forgets `key`; once no instance is left, device settings are put back.
    pub(crate) fn forget(&mut self, key: InstanceKey) {
        self.addrs.remove(&key);
        if self.addrs.is_empty()
            && let Some(t) = &mut self.tuning
        {
            t.restore_all();
        }
    }

    /// Removes `key`'s neighbour entries. Failures only cost the held packets, never a
    /// standby, so they are logged and not returned.
    pub(crate) fn release(&mut self, key: InstanceKey) {
        let Some(addrs) = self.addrs.get(&key) else {
            return;
        };
        match self.sock.remove(addrs) {
            Ok(report) => {
                if let Some(t) = &mut self.tuning {
                    for e in report.removed.iter().chain(&report.resolving) {
                        let family = match e.addr {
                            IpAddr::V4(_) => Family::V4,
                            IpAddr::V6(_) => Family::V6,
                        };
                        if let Err(err) = t.ensure(family, e.ifindex, self.window_ms) {
                            tracing::warn!(key, error = %err, "could not lengthen address resolution for held packets");
                        }
                    }
                }
                if !report.removed.is_empty() {
                    tracing::info!(
                        key,
                        removed = report.removed.len(),
                        "neighbour entries removed: packets for the instance wait in the neighbour queue until it is restored"
                    );
                }
                for e in &report.static_kept {
                    tracing::warn!(
                        key,
                        addr = %e.addr,
                        ifindex = e.ifindex,
                        "static neighbour entry left in place: packets to it are not held while the instance is in Standby"
                    );
                }
            }
            Err(err) => tracing::warn!(key, error = %err, "could not remove neighbour entries"),
        }
    }
}
