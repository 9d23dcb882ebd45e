//! Compact storage of every tracked flow, for all instances in one table.
//!
//! Records live in one `Vec` (freed records are reused through a free list), found
//! through an open-addressing index of `(32-bit hash, record)` pairs, at most half full,
//! with linear probing and backward-shift deletion. Each record is on an intrusive
//! doubly linked list of its instance, so per-instance work (recount, explain,
//! unregister, resync sweep) touches only that instance's flows. A record a flow event
//! removes stays on that list as a spare for the instance's next new flow, so the
//! churn of flows touches no list neighbours (see [`FlowTable::remove_found`]).
//!
//! The parts of a flow shared by many flows (instance, guest-side addresses, NAT shape)
//! are interned in a small refcounted "shape" table; a record keeps the client address,
//! the ports, identity, state, hash and the low bits of the original destination: one
//! 64-byte cache line.

use std::net::{IpAddr, Ipv6Addr};

use super::fasthash::FastMap;

/// "No record / no link".
pub(crate) const NIL: u32 = u32::MAX;
/// TCP state not known yet (an UPDATE without protoinfo for an unknown flow): live.
pub(crate) const STATE_UNKNOWN: u8 = 0xff;
/// Record flag: counted in its instance's live qualifying total.
const F_COUNTED: u8 = 1;
/// Record flag: the record is on the free list.
const F_FREE: u8 = 2;
/// Record flag: the original destination is an IPv4(-mapped) address, so `odst32`
/// holds all of it and [`FlowTable::find`] need not read the shape.
const F_ODST_V4: u8 = 4;
/// Record flag: a spare. The flow was removed by an event, but the record stays on its
/// instance's list for the instance's next new flow (see [`FlowTable::remove_found`]).
const F_SPARE: u8 = 8;
/// Record flag: the flow's NEW event asked for the restore of its instance in Standby
/// (shown by explanations of a Standby instance).
const F_ASKED_WAKE: u8 = 16;
/// The upper 96 bits of an IPv4-mapped [`addr_bits`] value.
const V4_MAPPED_HIGH: u128 = 0xffff;

/// Canonical 128-bit form of an address: IPv4 as its mapped IPv6 form, so that
/// `a.b.c.d` and `::ffff:a.b.c.d` are the same key.
#[inline]
pub(crate) fn addr_bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => 0xffff_0000_0000 | u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address an [`addr_bits`] value stands for (IPv4 when mapped).
#[inline]
pub(crate) fn bits_addr(bits: u128) -> IpAddr {
    Ipv6Addr::from(bits).to_canonical()
}

/// One tracked flow. Cache-line aligned: every record access is a single line.
#[derive(Clone, Copy, Debug)]
#[repr(align(64))]
pub(crate) struct FlowRec {
    /// Original source (the client), as [`addr_bits`] in native byte order.
    pub remote: [u8; 16],
    /// `CTA_ID`.
    pub id: u32,
    /// Interned shape (instance, guest-side addresses).
    pub shape: u32,
    /// Previous record of the same instance.
    pub prev: u32,
    /// Next record of the same instance.
    pub next: u32,
    /// First seen, Unix seconds.
    pub first_seen_s: u32,
    /// Resync sequence at the last event or dump entry that mentioned the flow.
    pub touch: u32,
    /// The flow's 32-bit hash (its home slot), so the index never re-reads records.
    /// For a spare, the next spare of the same instance.
    pub hash: u32,
    /// Original source port.
    pub sport: u16,
    /// Original destination port.
    pub dport: u16,
    /// Reply source port.
    pub rsport: u16,
    /// Reply destination port.
    pub rdport: u16,
    /// Conntrack zone.
    pub zone: u16,
    /// IP protocol.
    pub proto: u8,
    /// TCP state number, or [`STATE_UNKNOWN`]; 0 for UDP.
    pub state: u8,
    /// `F_*` bits.
    pub flags: u8,
    /// Low 32 bits of the original destination (set by [`FlowTable::insert`]).
    pub odst32: u32,
}

impl FlowRec {
    #[inline]
    pub(crate) fn remote_bits(&self) -> u128 {
        u128::from_ne_bytes(self.remote)
    }

    /// A spare: no flow, kept on its instance's list for reuse.
    #[inline]
    pub(crate) fn is_spare(&self) -> bool {
        self.flags & F_SPARE != 0
    }

    /// The flow asked for its instance's restore (see [`FlowRec::set_asked_wake`]).
    #[inline]
    pub(crate) fn asked_wake(&self) -> bool {
        self.flags & F_ASKED_WAKE != 0
    }

    /// Marks the flow as one that asked for its instance's restore.
    #[inline]
    pub(crate) fn set_asked_wake(&mut self) {
        self.flags |= F_ASKED_WAKE;
    }

    /// Counted in its instance's live qualifying total.
    #[inline]
    pub(crate) fn counted(&self) -> bool {
        self.flags & F_COUNTED != 0
    }

    #[inline]
    pub(crate) fn set_counted(&mut self, counted: bool) {
        if counted {
            self.flags |= F_COUNTED;
        } else {
            self.flags &= !F_COUNTED;
        }
    }
}

/// The parts of a flow shared with many others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ShapeKey {
    /// Instance slot.
    pub inst: u32,
    /// Original destination (the guest, or a host address under DNAT).
    pub orig_dst: u128,
    /// Reply source (the guest when it is the responder).
    pub reply_src: u128,
    /// Reply destination when it is not the client (SNAT on the way in).
    pub reply_dst: Option<u128>,
    /// The guest is the original destination (else it is the reply source).
    pub guest_is_orig_dst: bool,
}

impl ShapeKey {
    /// The guest-side address.
    #[inline]
    pub(crate) fn guest(&self) -> u128 {
        if self.guest_is_orig_dst {
            self.orig_dst
        } else {
            self.reply_src
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct ShapeEntry {
    key: ShapeKey,
    refs: u32,
}

/// What identifies a flow: its original tuple, protocol, zone and id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Probe {
    pub remote: u128,
    pub orig_dst: u128,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub zone: u16,
    pub id: u32,
}

impl Probe {
    /// 32-bit hash of the identity; the index uses its low bits as the home slot.
    #[inline]
    pub(crate) fn hash32(&self) -> u32 {
        // Two 64-bit halves, one full 64x64->128 multiply, folded: every input bit
        // reaches the low bits the index uses.
        let a = (self.remote as u64)
            ^ ((self.remote >> 64) as u64).rotate_left(29)
            ^ (u64::from(self.id) << 32);
        let b = (self.orig_dst as u64)
            ^ ((self.orig_dst >> 64) as u64).rotate_left(17)
            ^ (u64::from(self.sport)
                | (u64::from(self.dport) << 16)
                | (u64::from(self.proto) << 32)
                | (u64::from(self.zone) << 40));
        let m = u128::from(a ^ 0x243f_6a88_85a3_08d3) * u128::from(b ^ 0x1319_8a2e_0370_7344);
        let h = (m as u64) ^ ((m >> 64) as u64);
        (h ^ (h >> 32)) as u32
    }
}

/// A record [`FlowTable::lookup_at`] found, and its position in the index (valid until
/// the index next changes).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Found {
    pub rec: u32,
    pos: usize,
}

/// Where a failed [`FlowTable::lookup`] ended: a free index position, valid until the
/// index next changes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Vacant {
    pos: usize,
    generation: u32,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    hash: u32,
    rec: u32,
}

const EMPTY: Slot = Slot { hash: 0, rec: NIL };

/// Every tracked flow of every instance.
#[derive(Debug)]
pub(crate) struct FlowTable {
    recs: Vec<FlowRec>,
    /// Freed records, linked through `next` (reused before the `Vec` grows).
    free_head: u32,
    free_count: u32,
    slots: Vec<Slot>,
    mask: usize,
    /// Bumped on every change to `slots`, so a stale [`Vacant`] is never used.
    generation: u32,
    shapes: Vec<ShapeEntry>,
    shape_free: Vec<u32>,
    shape_index: FastMap<ShapeKey, u32>,
    /// Per instance: the shape it used last (a hint, checked before use).
    last_shape: Vec<u32>,
    /// Per instance: the first record of its list.
    heads: Vec<u32>,
    /// Per instance: the top of its stack of spares, linked through `hash`.
    spares: Vec<u32>,
    /// Spares of all instances, at most [`FlowTable::spare_cap`].
    spare_count: u32,
}

impl Default for FlowTable {
    fn default() -> Self {
        Self {
            recs: Vec::new(),
            free_head: NIL,
            free_count: 0,
            slots: vec![EMPTY; 16],
            mask: 15,
            generation: 0,
            shapes: Vec::new(),
            shape_free: Vec::new(),
            shape_index: FastMap::default(),
            last_shape: Vec::new(),
            heads: Vec::new(),
            spares: Vec::new(),
            spare_count: 0,
        }
    }
}

impl FlowTable {
    /// Number of flows.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.recs.len() - self.free_count as usize - self.spare_count as usize
    }

    /// How many spares a removal may leave: a small share of the flows (so at most a
    /// sixteenth of the most the table held, or 64), so spares, which only their own
    /// instance reuses, never hold much of the storage.
    #[inline]
    fn spare_cap(&self) -> u32 {
        (self.len() / 16).max(64) as u32
    }

    /// Record `i`.
    #[inline]
    pub(crate) fn rec(&self, i: u32) -> &FlowRec {
        &self.recs[i as usize]
    }

    /// Record `i`, mutably.
    #[inline]
    pub(crate) fn rec_mut(&mut self, i: u32) -> &mut FlowRec {
        &mut self.recs[i as usize]
    }

    /// Shape `s`.
    #[inline]
    pub(crate) fn shape(&self, s: u32) -> &ShapeKey {
        &self.shapes[s as usize].key
    }

    /// First record of instance `inst`'s list (spares included).
    #[inline]
    pub(crate) fn head(&self, inst: u32) -> u32 {
        self.heads.get(inst as usize).copied().unwrap_or(NIL)
    }

    /// The record a new flow of instance `inst` will take if it has a spare, else the
    /// head of its list (which the new record is linked in front of); [`NIL`] if none.
    #[inline]
    pub(crate) fn insert_target(&self, inst: u32) -> u32 {
        match self.spares.get(inst as usize) {
            Some(&s) if s != NIL => s,
            _ => self.head(inst),
        }
    }

    /// Indices of instance `inst`'s records, head first.
    pub(crate) fn list(&self, inst: u32) -> impl Iterator<Item = u32> + '_ {
        let head = self.head(inst);
        std::iter::successors((head != NIL).then_some(head), |&i| {
            let next = self.recs[i as usize].next;
            (next != NIL).then_some(next)
        })
        .filter(|&i| !self.recs[i as usize].is_spare())
    }

    /// Every flow of every instance, in storage order: a sequential read, where walking
    /// each instance's list jumps around memory.
    pub(crate) fn all(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.recs.len() as u32)
            .filter(|&i| self.recs[i as usize].flags & (F_FREE | F_SPARE) == 0)
    }

    /// Removes every record of instance `inst`, spares included.
    pub(crate) fn clear_instance(&mut self, inst: u32) {
        loop {
            let head = self.head(inst);
            if head == NIL {
                break;
            }
            if self.recs[head as usize].flags & F_SPARE != 0 {
                self.unlink_and_free(head, inst as usize);
                self.spare_count -= 1;
            } else {
                self.remove(head);
            }
        }
        if let Some(s) = self.spares.get_mut(inst as usize) {
            *s = NIL;
        }
    }

    /// Reserves room for `additional` more flows.
    pub(crate) fn reserve(&mut self, additional: usize) {
        let need = self.len() + additional;
        self.recs.reserve(need.saturating_sub(self.recs.len()));
        if need * 2 > self.slots.len() {
            self.rehash((need * 2).next_power_of_two());
        }
    }

    /// Finds the record identified by `p` (with hash `h`).
    #[inline]
    pub(crate) fn find(&self, p: &Probe, h: u32) -> Option<u32> {
        self.lookup(p, h).ok()
    }

    /// Finds the record identified by `p` (with hash `h`), or else the free index
    /// position where the probe ended, which [`FlowTable::insert_shaped`] can take without
    /// probing again.
    #[inline]
    pub(crate) fn lookup(&self, p: &Probe, h: u32) -> Result<u32, Vacant> {
        self.lookup_at(p, h).map(|f| f.rec)
    }

    /// [`FlowTable::lookup`], also returning where in the index the record was found,
    /// so that [`FlowTable::remove_found`] need not probe again.
    #[inline(always)]
    pub(crate) fn lookup_at(&self, p: &Probe, h: u32) -> Result<Found, Vacant> {
        // Masking with the slice's own length lets the compiler drop the bounds check
        // (the length is a power of two, never zero).
        let slots = &self.slots[..];
        let mask = slots.len() - 1;
        let mut i = h as usize & mask;
        loop {
            let s = slots[i];
            if s.rec == NIL {
                return Err(Vacant {
                    pos: i,
                    generation: self.generation,
                });
            }
            if s.hash == h && self.matches(&self.recs[s.rec as usize], p) {
                return Ok(Found { rec: s.rec, pos: i });
            }
            i = (i + 1) & mask;
        }
    }

    #[inline(always)]
    fn matches(&self, r: &FlowRec, p: &Probe) -> bool {
        r.id == p.id
            && r.sport == p.sport
            && r.dport == p.dport
            && r.proto == p.proto
            && r.zone == p.zone
            && r.remote_bits() == p.remote
            && r.odst32 == p.orig_dst as u32
            && if r.flags & F_ODST_V4 != 0 {
                p.orig_dst >> 32 == V4_MAPPED_HIGH
            } else {
                self.shapes[r.shape as usize].key.orig_dst == p.orig_dst
            }
    }

    /// Loads the home slot of hash `h` so a later [`FlowTable::find`] hits the cache.
    /// Returns the first record on the probe chain with hash `h` (or [`NIL`]), which
    /// callers may warm in turn: a flow displaced from its home slot sits a few slots on,
    /// most often on the line just loaded.
    #[inline]
    pub(crate) fn warm_slot(&self, h: u32) -> u32 {
        let slots = &self.slots[..];
        let mask = slots.len() - 1;
        let mut i = h as usize & mask;
        for _ in 0..4 {
            let s = slots[i];
            if s.rec == NIL || s.hash == h {
                return s.rec;
            }
            i = (i + 1) & mask;
        }
        NIL
    }

    /// Loads record `i` (if any) so a later access hits the cache. Returns its list
    /// neighbours and its shape, which a removal will touch.
    #[inline]
    pub(crate) fn warm_rec(&self, i: u32) -> (u32, u32, u32) {
        match self.recs.get(i as usize) {
            Some(r) => std::hint::black_box((r.prev, r.next, r.shape)),
            None => (NIL, NIL, NIL),
        }
    }

    /// Loads shape `s` (if any), or with `s == NIL` the shape instance `inst` used last,
    /// which a new flow of the instance will most likely take a reference on.
    #[inline]
    pub(crate) fn warm_shape(&self, s: u32, inst: u32) {
        let s = if s == NIL {
            self.last_shape.get(inst as usize).copied().unwrap_or(NIL)
        } else {
            s
        };
        if let Some(e) = self.shapes.get(s as usize) {
            std::hint::black_box(e.refs);
        }
    }

    /// Interns `key`, taking a reference.
    #[inline]
    pub(crate) fn intern_shape(&mut self, key: ShapeKey) -> u32 {
        // Most flows of an instance share one shape: try the instance's last one first.
        let inst = key.inst as usize;
        if let Some(&s) = self.last_shape.get(inst)
            && s != NIL
        {
            let e = &mut self.shapes[s as usize];
            if e.refs > 0 && e.key == key {
                e.refs += 1;
                return s;
            }
        }
        if inst >= self.last_shape.len() {
            self.last_shape.resize(inst + 1, NIL);
        }
        let s = self.intern_slow(key);
        self.last_shape[inst] = s;
        s
    }

    #[cold]
    #[inline(never)]
    fn intern_slow(&mut self, key: ShapeKey) -> u32 {
        if let Some(&s) = self.shape_index.get(&key) {
            self.shapes[s as usize].refs += 1;
            return s;
        }
        let entry = ShapeEntry { key, refs: 1 };
        let s = match self.shape_free.pop() {
            Some(s) => {
                self.shapes[s as usize] = entry;
                s
            }
            None => {
                self.shapes.push(entry);
                (self.shapes.len() - 1) as u32
            }
        };
        self.shape_index.insert(key, s);
        s
    }

    fn release_shape(&mut self, s: u32) {
        let e = &mut self.shapes[s as usize];
        e.refs -= 1;
        if e.refs == 0 {
            let key = e.key;
            self.shape_index.remove(&key);
            self.shape_free.push(s);
        }
    }

    /// [`FlowTable::insert_at`] without a position.
    #[cfg(test)]
    pub(crate) fn insert(&mut self, rec: FlowRec, h: u32) -> u32 {
        self.insert_at(rec, h, None)
    }

    /// [`FlowTable::insert_shaped`], reading the shape key from the table.
    #[cfg(test)]
    pub(crate) fn insert_at(&mut self, rec: FlowRec, h: u32, vacant: Option<Vacant>) -> u32 {
        let key = *self.shape(rec.shape);
        self.insert_shaped(rec, &key, h, vacant)
    }

    /// Inserts `rec` (whose `shape` reference the caller took, with key `key`) with hash
    /// `h`: in place of a spare of its instance, or at the head of the instance's list.
    /// Returns its index. `vacant`, from a failed [`FlowTable::lookup`] of the same
    /// flow, saves probing again while the index is unchanged since; otherwise it is
    /// ignored.
    #[inline]
    pub(crate) fn insert_shaped(
        &mut self,
        mut rec: FlowRec,
        key: &ShapeKey,
        h: u32,
        vacant: Option<Vacant>,
    ) -> u32 {
        debug_assert!(self.shape(rec.shape) == key, "shape key of another shape");
        // At most half full: linear probing stays short, misses included.
        if (self.len() + 1) * 2 > self.slots.len() {
            self.rehash(self.slots.len() * 2);
        }
        let inst = key.inst as usize;
        rec.odst32 = key.orig_dst as u32;
        rec.flags &= !F_ODST_V4;
        if key.orig_dst >> 32 == V4_MAPPED_HIGH {
            rec.flags |= F_ODST_V4;
        }
        if inst >= self.heads.len() {
            self.heads.resize(inst + 1, NIL);
            self.spares.resize(inst + 1, NIL);
        }
        let spare = self.spares[inst];
        let idx = if spare != NIL {
            // A spare of the instance is on its list already: the list is unchanged,
            // so no other record is touched.
            let old = &self.recs[spare as usize];
            self.spares[inst] = old.hash;
            self.spare_count -= 1;
            rec.prev = old.prev;
            rec.next = old.next;
            spare
        } else {
            let idx = if self.free_head != NIL {
                let i = self.free_head;
                self.free_head = self.recs[i as usize].next;
                self.free_count -= 1;
                i
            } else {
                self.recs.len() as u32
            };
            rec.prev = NIL;
            rec.next = self.heads[inst];
            if rec.next != NIL {
                self.recs[rec.next as usize].prev = idx;
            }
            self.heads[inst] = idx;
            idx
        };
        rec.hash = h;
        if idx as usize == self.recs.len() {
            self.recs.push(rec);
        } else {
            self.recs[idx as usize] = rec;
        }
        let slot = Slot { hash: h, rec: idx };
        match vacant {
            Some(v) if v.generation == self.generation => {
                debug_assert!(self.slots[v.pos].rec == NIL, "vacant position taken");
                self.slots[v.pos] = slot;
                self.generation = self.generation.wrapping_add(1);
            }
            _ => self.place(slot),
        }
        idx
    }

    fn place(&mut self, slot: Slot) {
        self.generation = self.generation.wrapping_add(1);
        let mut i = slot.hash as usize & self.mask;
        while self.slots[i].rec != NIL {
            i = (i + 1) & self.mask;
        }
        self.slots[i] = slot;
    }

    fn rehash(&mut self, cap: usize) {
        let cap = cap.max(16);
        self.generation = self.generation.wrapping_add(1);
        self.slots = vec![EMPTY; cap];
        self.mask = cap - 1;
        for i in 0..self.recs.len() {
            let r = &self.recs[i];
            if r.flags & (F_FREE | F_SPARE) == 0 {
                let slot = Slot {
                    hash: r.hash,
                    rec: i as u32,
                };
                self.place(slot);
            }
        }
    }

    /// The probe identifying record `i`.
    pub(crate) fn probe_of(&self, i: u32) -> Probe {
        let r = &self.recs[i as usize];
        Probe {
            remote: r.remote_bits(),
            orig_dst: self.shapes[r.shape as usize].key.orig_dst,
            sport: r.sport,
            dport: r.dport,
            proto: r.proto,
            zone: r.zone,
            id: r.id,
        }
    }

    fn slot_of(&self, rec: u32) -> usize {
        let mut i = self.recs[rec as usize].hash as usize & self.mask;
        while self.slots[i].rec != rec {
            debug_assert!(self.slots[i].rec != NIL, "record missing from index");
            i = (i + 1) & self.mask;
        }
        i
    }

    /// Removes record `idx`; returns its instance and whether it was counted (see
    /// [`FlowRec::counted`]).
    pub(crate) fn remove(&mut self, idx: u32) -> (u32, bool) {
        let pos = self.slot_of(idx);
        self.remove_at(idx, pos, false)
    }

    /// Removes the record `f` names, found by a [`FlowTable::lookup_at`] with no change
    /// to the table since; returns its instance and whether it was counted.
    ///
    /// Flows come and go per instance, so the record is kept as a spare on its
    /// instance's list (while the table has fewer than [`FlowTable::spare_cap`]): the
    /// instance's next new flow takes it in place, and neither removal nor insertion
    /// touches a neighbour's record.
    #[inline]
    pub(crate) fn remove_found(&mut self, f: Found) -> (u32, bool) {
        debug_assert_eq!(self.slots[f.pos].rec, f.rec, "stale lookup");
        self.remove_at(f.rec, f.pos, true)
    }

    fn remove_at(&mut self, idx: u32, pos: usize, spare: bool) -> (u32, bool) {
        // Index: backward-shift deletion keeps every probe chain unbroken.
        self.generation = self.generation.wrapping_add(1);
        let mut hole = pos;
        let mut j = (hole + 1) & self.mask;
        loop {
            let s = self.slots[j];
            if s.rec == NIL {
                break;
            }
            let home = s.hash as usize & self.mask;
            // Move `s` into the hole unless its home lies cyclically in (hole, j].
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.slots[hole] = s;
                hole = j;
            }
            j = (j + 1) & self.mask;
        }
        self.slots[hole] = EMPTY;

        let rec = &self.recs[idx as usize];
        let (shape, counted) = (rec.shape, rec.counted());
        let inst = self.shapes[shape as usize].key.inst as usize;
        if spare && self.spare_count < self.spare_cap() {
            let r = &mut self.recs[idx as usize];
            r.flags = F_SPARE;
            r.hash = self.spares[inst];
            self.spares[inst] = idx;
            self.spare_count += 1;
        } else {
            self.unlink_and_free(idx, inst);
        }
        self.release_shape(shape);
        (inst as u32, counted)
    }

    /// Takes record `idx` off instance `inst`'s list and onto the free list.
    fn unlink_and_free(&mut self, idx: u32, inst: usize) {
        let rec = &self.recs[idx as usize];
        let (prev, next) = (rec.prev, rec.next);
        if prev != NIL {
            self.recs[prev as usize].next = next;
        } else {
            self.heads[inst] = next;
        }
        if next != NIL {
            self.recs[next as usize].prev = prev;
        }
        let slot = &mut self.recs[idx as usize];
        slot.flags = F_FREE;
        slot.next = self.free_head;
        self.free_head = idx;
        self.free_count += 1;
    }

    /// Bytes held by the table's own buffers (capacity, not length).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.recs.capacity() * size_of::<FlowRec>()
            + self.slots.capacity() * size_of::<Slot>()
            + self.shapes.capacity() * size_of::<ShapeEntry>()
            + self.heads.capacity() * 4
            + self.spares.capacity() * 4
            + self.last_shape.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(shape: u32, n: u32) -> FlowRec {
        FlowRec {
            remote: (0xffff_0a00_0000u128 + u128::from(n)).to_ne_bytes(),
            id: n,
            shape,
            prev: NIL,
            next: NIL,
            first_seen_s: 0,
            touch: 0,
            hash: 0,
            sport: (n % 60000) as u16,
            dport: 80,
            rsport: 80,
            rdport: 0,
            zone: 0,
            proto: 6,
            state: 3,
            flags: 0,
            odst32: 0,
        }
    }

    fn list(t: &FlowTable, inst: u32) -> Vec<u32> {
        let mut out: Vec<u32> = t.list(inst).map(|i| t.rec(i).id).collect();
        out.sort();
        out
    }

    #[test]
    fn ipv4_is_keyed_as_its_mapped_form() {
        let v4: IpAddr = "192.0.2.33".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.33".parse().unwrap();
        assert_eq!(addr_bits(v4), addr_bits(mapped));
        assert_eq!(bits_addr(addr_bits(v4)), v4);
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        assert_eq!(bits_addr(addr_bits(v6)), v6);
    }

    #[test]
    fn record_is_compact() {
        assert_eq!(size_of::<FlowRec>(), 64);
    }

    #[test]
    fn a_vacant_position_is_used_only_while_the_index_is_unchanged() {
        let mut t = FlowTable::default();
        let s = t.intern_shape(ShapeKey {
            inst: 0,
            orig_dst: 0xffff_c0a8_0001,
            reply_src: 0xffff_c0a8_0001,
            reply_dst: None,
            guest_is_orig_dst: true,
        });
        let probe = |t: &FlowTable, r: &FlowRec| Probe {
            remote: r.remote_bits(),
            orig_dst: t.shape(r.shape).orig_dst,
            sport: r.sport,
            dport: r.dport,
            proto: r.proto,
            zone: r.zone,
            id: r.id,
        };
        // All on one hash, so every insert extends the same probe chain.
        let (a, b) = (rec(s, 1), rec(s, 2));
        let (pa, pb) = (probe(&t, &a), probe(&t, &b));
        let va = t.lookup(&pa, 5).expect_err("absent");
        let vb = t.lookup(&pb, 5).expect_err("absent");
        let ia = t.insert_at(a, 5, Some(va));
        // `vb` names the position `a` just took: it must not be used.
        let ib = t.insert_at(b, 5, Some(vb));
        assert_eq!(t.find(&pa, 5), Some(ia));
        assert_eq!(t.find(&pb, 5), Some(ib));
        t.remove(ia);
        assert_eq!(t.find(&pa, 5), None);
        assert_eq!(t.find(&pb, 5), Some(ib));
    }

    #[test]
    fn destinations_sharing_their_low_32_bits_stay_distinct() {
        let mut t = FlowTable::default();
        let v4 = addr_bits("192.0.2.9".parse().unwrap());
        let v6a = addr_bits("2001:db8::c000:209".parse().unwrap());
        let v6b = addr_bits("2001:db8:1::c000:209".parse().unwrap());
        let mut probes = Vec::new();
        for (inst, dst) in [v4, v6a, v6b].into_iter().enumerate() {
            let s = t.intern_shape(ShapeKey {
                inst: inst as u32,
                orig_dst: dst,
                reply_src: dst,
                reply_dst: None,
                guest_is_orig_dst: true,
            });
            // Same client, ports and id: only the destination differs.
            let r = rec(s, 1);
            let p = Probe {
                remote: r.remote_bits(),
                orig_dst: dst,
                sport: r.sport,
                dport: r.dport,
                proto: r.proto,
                zone: r.zone,
                id: r.id,
            };
            // Forced to share one hash: the record comparison alone must tell them apart.
            let idx = t.insert(r, 7);
            probes.push((p, idx));
        }
        for (p, idx) in &probes {
            assert_eq!(t.find(p, 7), Some(*idx));
        }
        let mut stranger = probes[0].0;
        stranger.orig_dst = addr_bits("2001:db8:2::c000:209".parse().unwrap());
        assert_eq!(t.find(&stranger, 7), None);
    }

    /// Inserts flow `n` for instance `inst` (guest `192.168.0.inst`); returns its
    /// probe and record.
    fn add(t: &mut FlowTable, inst: u32, n: u32) -> (Probe, u32) {
        let guest = 0xffff_c0a8_0000 + u128::from(inst);
        let s = t.intern_shape(ShapeKey {
            inst,
            orig_dst: guest,
            reply_src: guest,
            reply_dst: None,
            guest_is_orig_dst: true,
        });
        let r = rec(s, n);
        let p = Probe {
            remote: r.remote_bits(),
            orig_dst: guest,
            sport: r.sport,
            dport: r.dport,
            proto: r.proto,
            zone: r.zone,
            id: r.id,
        };
        let idx = t.insert(r, p.hash32());
        (p, idx)
    }

    fn remove_by_event(t: &mut FlowTable, p: &Probe) {
        let f = t.lookup_at(p, p.hash32()).expect("present");
        t.remove_found(f);
    }

    #[test]
    fn a_record_removed_by_an_event_is_reused_in_place_by_its_instance_only() {
        let mut t = FlowTable::default();
        let (p1, _) = add(&mut t, 0, 1);
        let (p2, i2) = add(&mut t, 0, 2);
        add(&mut t, 0, 3);
        add(&mut t, 1, 9);
        remove_by_event(&mut t, &p2);
        assert_eq!(t.find(&p2, p2.hash32()), None);
        assert_eq!(list(&t, 0), vec![1, 3], "a spare is not listed");
        assert_eq!(t.len(), 3);
        // Another instance's new flow does not take it.
        let (_, j) = add(&mut t, 1, 10);
        assert_ne!(j, i2);
        // The instance's next flow takes it, and is found and listed.
        let (p4, i4) = add(&mut t, 0, 4);
        assert_eq!(i4, i2);
        assert_eq!(t.find(&p4, p4.hash32()), Some(i4));
        assert_eq!(list(&t, 0), vec![1, 3, 4]);
        assert_eq!(t.len(), 5);
        // Clearing the instance frees its spares too, for any instance to reuse.
        remove_by_event(&mut t, &p1);
        t.clear_instance(0);
        assert_eq!(list(&t, 0), Vec::<u32>::new());
        assert_eq!(t.len(), 2);
        let before = t.recs.len();
        add(&mut t, 1, 11);
        add(&mut t, 1, 12);
        assert_eq!(t.recs.len(), before, "freed records are reused");
        assert_eq!(list(&t, 1), vec![9, 10, 11, 12]);
    }

    #[test]
    fn spares_stay_a_small_share_of_the_table() {
        let mut t = FlowTable::default();
        let probes: Vec<Probe> = (0..2000).map(|n| add(&mut t, n % 3, n).0).collect();
        // A removal keeps a spare only under the cap of the moment: at most a
        // sixteenth of the most flows the table held (or 64).
        let cap = t.spare_cap();
        assert_eq!(cap, 2000 / 16);
        for p in &probes {
            remove_by_event(&mut t, p);
            assert!(t.spare_count <= cap);
        }
        assert_eq!(t.len(), 0);
        assert!(t.spare_count >= 64);
        for inst in 0..3 {
            assert_eq!(list(&t, inst), Vec::<u32>::new());
        }
        // Refilling reuses spares and freed records: the storage does not grow.
        let before = t.recs.len();
        for n in 0..2000 {
            add(&mut t, n % 3, n);
        }
        assert_eq!(t.recs.len(), before);
        assert_eq!(t.len(), 2000);
        assert_eq!(t.spare_count, 0);
    }

    #[test]
    fn insert_find_remove_keep_index_and_lists_consistent() {
        let mut t = FlowTable::default();
        let mut shapes = Vec::new();
        for inst in 0..3u32 {
            let key = ShapeKey {
                inst,
                orig_dst: 0xffff_c0a8_0000 + u128::from(inst),
                reply_src: 0xffff_c0a8_0000 + u128::from(inst),
                reply_dst: None,
                guest_is_orig_dst: true,
            };
            shapes.push(key);
        }
        let mut alive = std::collections::BTreeMap::new();
        for n in 0..3000u32 {
            let s = t.intern_shape(shapes[(n % 3) as usize]);
            let r = rec(s, n);
            let p = Probe {
                remote: r.remote_bits(),
                orig_dst: t.shape(s).orig_dst,
                sport: r.sport,
                dport: r.dport,
                proto: r.proto,
                zone: r.zone,
                id: r.id,
            };
            assert_eq!(t.find(&p, p.hash32()), None);
            let idx = t.insert(r, p.hash32());
            assert_eq!(t.find(&p, p.hash32()), Some(idx));
            alive.insert(n, p);
        }
        for n in (0..3000u32).filter(|n| n % 7 != 0) {
            let p = alive.remove(&n).unwrap();
            let idx = t.find(&p, p.hash32()).expect("present");
            t.remove(idx);
            assert_eq!(t.find(&p, p.hash32()), None);
        }
        for p in alive.values() {
            let idx = t.find(p, p.hash32()).expect("survivor present");
            assert_eq!(t.probe_of(idx), *p);
        }
        let mut want: Vec<Vec<u32>> = vec![vec![]; 3];
        for n in alive.keys() {
            want[(n % 3) as usize].push(*n);
        }
        for inst in 0..3 {
            assert_eq!(list(&t, inst), want[inst as usize]);
        }
        assert_eq!(t.len(), alive.len());
    }
}
