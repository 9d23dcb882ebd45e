//! Holding packets for instances in Standby: their neighbour entries are removed once
//! they are in Standby, so the first packets of a wake wait in the kernel's neighbour
//! queue instead of being lost (see [`crate::conntrack::neigh`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use crate::conntrack::ConntrackError;
use crate::conntrack::neigh::NeighbourSocket;
use crate::engine::{InstanceKey, Lifecycle};

/// The rtnetlink socket and the addresses of every registered instance.
#[derive(Debug)]
pub(crate) struct PacketHold {
    sock: NeighbourSocket,
    addrs: HashMap<InstanceKey, Vec<IpAddr>>,
}

impl PacketHold {
    pub(crate) fn open(netns: Option<&Path>) -> Result<Self, ConntrackError> {
        Ok(Self {
            sock: NeighbourSocket::open(netns)?,
            addrs: HashMap::new(),
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

    pub(crate) fn forget(&mut self, key: InstanceKey) {
        self.addrs.remove(&key);
    }

    /// Removes `key`'s neighbour entries. Failures only cost the held packets, never a
    /// standby, so they are logged and not returned.
    pub(crate) fn release(&mut self, key: InstanceKey) {
        let Some(addrs) = self.addrs.get(&key) else {
            return;
        };
        match self.sock.remove(addrs) {
            Ok(report) => {
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
