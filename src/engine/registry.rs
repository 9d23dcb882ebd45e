//! Instance slots and their lifecycle: register, update, unregister, and the key and
//! address indexes that find an instance.

use std::net::IpAddr;

use super::flows::addr_bits;
use super::instance::{Inst, Phase};
use super::{
    Decision, Engine, EngineError, InstanceKey, InstanceSpec, Lifecycle, ObserverRequest, Reason,
    UnixMillis,
};
use crate::policy::Policy;

impl Engine {
    #[inline]
    pub(super) fn inst(&self, slot: u32) -> &Inst {
        self.insts[slot as usize].as_ref().expect("live slot")
    }

    #[inline]
    pub(super) fn inst_mut(&mut self, slot: u32) -> &mut Inst {
        self.insts[slot as usize].as_mut().expect("live slot")
    }

    pub(super) fn slot(&self, key: InstanceKey) -> Result<u32, EngineError> {
        self.by_key.get(key).ok_or(EngineError::NotFound(key))
    }

    /// Every registered slot, sorted so that walks over all instances (and the decisions
    /// they emit) are deterministic.
    pub(super) fn live_slots(&self) -> Vec<u32> {
        // The slot vector in order: sorted without a sort.
        self.insts
            .iter()
            .enumerate()
            .filter(|(_, i)| i.is_some())
            .map(|(s, _)| s as u32)
            .collect()
    }

    /// Remembers the latest `now` seen, for calls that carry none (`resync_flow`).
    #[inline]
    pub(super) fn see(&mut self, now: UnixMillis) {
        self.last_now = self.last_now.max(now);
    }

    fn check_addresses(&self, slot: Option<u32>, addrs: &[IpAddr]) -> Result<(), EngineError> {
        for a in addrs {
            if let Some(owner) = self.by_addr.get(addr_bits(*a))
                && Some(owner) != slot
            {
                return Err(EngineError::AddressInUse {
                    addr: *a,
                    owner: self.inst(owner).key,
                });
            }
        }
        Ok(())
    }

    pub(super) fn do_register(
        &mut self,
        key: InstanceKey,
        spec: InstanceSpec,
        now: UnixMillis,
    ) -> Result<(), EngineError> {
        self.see(now);
        if self.by_key.contains_key(key) {
            return Err(EngineError::AlreadyRegistered(key));
        }
        let spec = normalise_spec(spec)?;
        self.check_addresses(None, &spec.addresses)?;
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.insts.push_empty();
                (self.insts.len() - 1) as u32
            }
        };
        let mut inst = Inst::new(key, spec, now);
        // Flows of an instance registered while events are known lost, or while a full
        // resync runs, are unknown until that resync finishes.
        if let Some(seq) = self.all_lost_seq {
            inst.lost_seq = Some(seq);
            inst.resync_requested = self.all_resync_requested;
        } else if let Some(r) = self.resyncs.iter().find(|r| r.scope.is_none()) {
            inst.lost_seq = Some(r.id);
            inst.resync_requested = true;
        }
        if self.config.pending_until_first_resync && !inst.spec.addresses.is_empty() {
            // A resync open now began before these addresses were in its dump.
            inst.unsynced_seq = Some(self.next_resync);
        }
        for a in &inst.spec.addresses {
            self.by_addr.insert(addr_bits(*a), slot);
            self.note_address(addr_bits(*a), true);
        }
        if !inst.spec.addresses.is_empty() {
            self.addr_gen += 1;
        }
        self.insts[slot as usize] = Some(inst);
        self.by_key.insert(key, slot);
        self.refresh(slot, now);
        if self.inst(slot).unsynced_seq.is_none() {
            self.history_start(slot, now);
        }
        Ok(())
    }

    pub(super) fn do_update(
        &mut self,
        key: InstanceKey,
        spec: InstanceSpec,
        now: UnixMillis,
    ) -> Result<(), EngineError> {
        self.see(now);
        let slot = self.slot(key)?;
        let spec = normalise_spec(spec)?;
        self.check_addresses(Some(slot), &spec.addresses)?;

        let old_addrs = std::mem::take(&mut self.inst_mut(slot).spec.addresses);
        let removed: Vec<u128> = old_addrs
            .iter()
            .filter(|a| !spec.addresses.contains(a))
            .map(|a| addr_bits(*a))
            .collect();
        let gained = spec.addresses.iter().any(|a| !old_addrs.contains(a));
        let changed = !removed.is_empty() || gained;
        for b in &removed {
            self.by_addr.remove(*b);
            self.note_address(*b, false);
        }
        for a in &spec.addresses {
            self.by_addr.insert(addr_bits(*a), slot);
            if !old_addrs.contains(a) {
                self.note_address(addr_bits(*a), true);
            }
        }
        if changed {
            self.addr_gen += 1;
        }

        {
            let inst = self.inst_mut(slot);
            let was_running = inst.spec.lifecycle == Lifecycle::Running;
            match spec.lifecycle {
                Lifecycle::Running if !was_running => inst.running_since = Some(now),
                Lifecycle::Running => {}
                _ => inst.running_since = None,
            }
            if spec.lifecycle != Lifecycle::Standby {
                inst.clear_wake_failures();
            }
            // The persisted runtime in an update is the host's copy of what we told it;
            // our own record of it is newer, so only the rest of the spec is taken.
            let runtime = inst.spec.runtime;
            inst.spec = spec;
            inst.spec.runtime = runtime;
            inst.spec_changed();
        }
        if self.inst(slot).spec.lifecycle != Lifecycle::Standby {
            self.end_wake(slot);
        } else {
            self.dequeue_wake_if_barred(slot);
        }
        if gained && self.config.pending_until_first_resync {
            // The flows of a new address are unknown until a resync that begins from
            // now on; losing an address leaves the others' flows known.
            let seq = self.next_resync;
            self.inst_mut(slot).unsynced_seq = Some(seq);
        }

        if !removed.is_empty() {
            let stale = self.collect(slot, |t, r| removed.contains(&t.shape(r.shape).guest()));
            for p in stale {
                self.remove_probe(&p, now);
            }
        }
        self.recount(slot);
        self.cancel_standby(slot, Reason::IdleTimeoutNotElapsed);
        self.refresh(slot, now);
        // Give the cancelled standby a reason that matches the new state.
        let reason = self.status_of(slot, now).reason;
        let inst = self.inst_mut(slot);
        if inst.phase == Phase::EmittedCancelled {
            inst.cancel_reason = reason;
        }
        Ok(())
    }

    pub(super) fn do_unregister(
        &mut self,
        key: InstanceKey,
        now: UnixMillis,
    ) -> Result<(), EngineError> {
        self.see(now);
        let slot = self.slot(key)?;
        self.remove_instance(slot, now);
        Ok(())
    }

    pub(super) fn remove_instance(&mut self, slot: u32, now: UnixMillis) {
        self.flows.clear_instance(slot);
        self.end_wake(slot);
        let inst = self.insts[slot as usize].take().expect("live slot");
        self.by_key.remove(inst.key);
        for a in &inst.spec.addresses {
            self.by_addr.remove(addr_bits(*a));
            self.note_address(addr_bits(*a), false);
        }
        if !inst.spec.addresses.is_empty() {
            self.addr_gen += 1;
        }
        self.deadlines.remove(slot);
        self.free_slots.push(slot);
        let key = inst.key;
        // Undrained decisions about it are void; keep the coalescing index right.
        self.decisions.retain(|d| match d {
            Decision::Standby { key: k }
            | Decision::PersistRuntime { key: k, .. }
            | Decision::Wake { key: k, .. }
            | Decision::Confirm { key: k } => *k != key,
        });
        let epoch = self.drain_epoch;
        for i in 0..self.decisions.len() {
            if let Decision::PersistRuntime { key: k, .. } = self.decisions[i]
                && let Some(s) = self.by_key.get(k)
            {
                let other = self.inst_mut(s);
                other.persist_idx = i as u32;
                other.persist_epoch = epoch;
            }
        }
        self.requests
            .retain(|r| *r != ObserverRequest::Confirm(key));
        if inst.phase == Phase::Queued {
            self.queued -= 1;
        }
        if inst.phase.holds_slot() {
            self.free_slot(now);
        }
    }
}

/// Validates the policy and canonicalises the addresses (IPv4-mapped as IPv4, each once),
/// so that every later comparison is between canonical forms.
fn normalise_spec(mut spec: InstanceSpec) -> Result<InstanceSpec, EngineError> {
    spec.policy = spec.policy.map(Policy::normalized).transpose()?;
    let mut addrs: Vec<IpAddr> = Vec::with_capacity(spec.addresses.len());
    for a in spec.addresses.iter().map(|a| a.to_canonical()) {
        let broadcast = matches!(a, IpAddr::V4(v4) if v4.is_broadcast());
        if a.is_unspecified() || a.is_loopback() || a.is_multicast() || broadcast {
            return Err(EngineError::InvalidAddress(a));
        }
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    spec.addresses = addrs;
    Ok(spec)
}
