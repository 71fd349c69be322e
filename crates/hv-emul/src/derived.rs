//! The derived translations of one vCPU: every root-TLB and refill-cache entry the host
//! built for it, recorded with what it was built from (guest frame and host frame).
//!
//! The host copies guest translations into hardware: a root-TLB pair (and the refill cache's
//! copy of it) for an 8 KiB pair of guest virtual pages, under one of the vCPU's two host
//! ASIDs ([`HostSpace`]). A guest access that hits such an entry never reaches the memory
//! core, so each entry must go as soon as what it was built from changes. Deciding that by
//! translating the entry's address again through the guest's *current* TLB is wrong: the
//! guest may have changed its TLB since, and then the entry names a frame nobody checks.
//! [`DerivedSet`] keeps the answer instead:
//!
//! **Invariant.** Every derived entry the host holds under the vCPU's current host ASIDs has
//! a record here: its space, its guest page, the GFN and the HFN it was built from. The set
//! may hold more (entries the root TLB has evicted since), never less.
//!
//! The caller keeps it by these rules (the firmware's vCPU loop, `src/vmm/vcpu.rs`):
//! - record every half *before* it is installed; a record that evicts another pair
//!   ([`DerivedSet::record`] returns it) means that pair is dropped from the host first;
//! - an invalidation of a GFN range drops exactly the pairs [`DerivedSet::drop_gfns`] hands
//!   back, whatever the guest TLB says now;
//! - a guest TLB write drops what [`DerivedSet::drop_va_range`] hands back for the range of
//!   the entry replaced *and* of the entry written (an entry that now shadows another, or a
//!   new match for a page, changes what the guest would translate);
//! - fresh host ASIDs empty the set ([`DerivedSet::clear`]): entries under the old ones can
//!   never be matched again (asid.rs flushes the whole TLB before an ASID is reused). This
//!   happens on every migration and guest ASID change, so it costs O(1): a generation
//!   number moves on and slots of older generations count as empty.
//!
//! The set is 4-way set-associative over a caller-provided slot array (no allocation, so the
//! fast lane can record on the exception path), sized a power of two. Four ways, because a
//! direct-mapped set let a guest loop's code pair and its data pair evict each other on
//! every access (each eviction drops a live root entry, which then faults straight back).

use hv_core::addr::{Gfn, GfnRange, Hfn};

/// Slots the firmware gives each vCPU: twice the refill cache's 1024 pairs would be more
/// than the root TLB and the cache can hold together; 1024 keeps a vCPU's set at 40 KiB.
pub const DEFAULT_SLOTS: usize = 1024;

/// Ways per set.
pub const WAYS: usize = 4;

/// Bytes of guest virtual space one root-TLB pair covers (two 4 KiB pages).
pub const PAIR_BYTES: u64 = 0x2000;
const PAIR_MASK: u64 = !(PAIR_BYTES - 1);
/// Pair addresses are below 2^40 (root EntryHi.VPN2 of a user address); the generation
/// lives above them.
const VA_BITS: u64 = 40;
const VA_MASK: u64 = (1 << VA_BITS) - 1;
/// Generations wrap at 2^24 (then the slots are really emptied).
const GENERATION_LIMIT: u32 = 1 << (64 - VA_BITS);
const TAG_USED: u64 = 1 << 0;
const TAG_USER: u64 = 1 << 1;
const TAG_HALF0: u64 = 1 << 2;
const TAG_HALF1: u64 = 1 << 3;

/// Which of the vCPU's two host ASIDs an entry lives under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostSpace {
    /// The ASID the guest runs with in its kernel mode.
    Kernel,
    /// The ASID the guest runs with in its user mode.
    User,
}

/// What one derived half was built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source {
    /// The guest frame the guest's translation named.
    pub gfn: Gfn,
    /// The host frame the memory core's GPA entry held for it.
    pub hfn: Hfn,
}

/// One slot of the set (opaque; the caller only provides the storage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DerivedSlot {
    /// Generation (bits 63:40; the set's when the slot was filled, an older one: the slot
    /// is empty) | pair address | which halves are recorded | space | used.
    tag: u64,
    halves: [Source; 2],
}

impl DerivedSlot {
    /// An unused slot.
    pub const EMPTY: DerivedSlot = DerivedSlot {
        tag: 0,
        halves: [Source {
            gfn: Gfn::new(0),
            hfn: Hfn::new(0),
        }; 2],
    };

    fn space(&self) -> HostSpace {
        if self.tag & TAG_USER != 0 {
            HostSpace::User
        } else {
            HostSpace::Kernel
        }
    }

    fn pair_va(&self) -> u64 {
        self.tag & PAIR_MASK & VA_MASK
    }

    fn has_half(&self, half: usize) -> bool {
        self.tag & half_bit(half) != 0
    }

    fn drop_pair(&self) -> DropPair {
        DropPair {
            space: self.space(),
            pair_va: self.pair_va(),
            halves: [self.has_half(0), self.has_half(1)],
        }
    }
}

fn half_bit(half: usize) -> u64 {
    if half == 0 {
        TAG_HALF0
    } else {
        TAG_HALF1
    }
}

/// The tag of a live slot of `generation` for the pair, halves not set.
fn key(space: HostSpace, pair_va: u64, generation: u32) -> u64 {
    debug_assert!(
        pair_va <= VA_MASK,
        "pair address {pair_va:#x} beyond 40 bits"
    );
    let user = if space == HostSpace::User {
        TAG_USER
    } else {
        0
    };
    u64::from(generation) << VA_BITS | (pair_va & VA_MASK) | TAG_USED | user
}

/// A root-TLB pair the host must drop (and its refill-cache copy): the halves marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DropPair {
    /// Host ASID it lives under.
    pub space: HostSpace,
    /// Guest virtual address of the pair (8 KiB aligned; the root EntryHi's VPN2).
    pub pair_va: u64,
    /// Which halves (even, odd page) to drop.
    pub halves: [bool; 2],
}

/// The slot array has an unusable size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadSlotCount(pub usize);

impl core::fmt::Display for BadSlotCount {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "derived-set slot count {} is not a power of two >= 2",
            self.0
        )
    }
}

/// The derived translations of one vCPU (see the module notes).
#[derive(Debug, Clone)]
pub struct DerivedSet<S> {
    slots: S,
    pairs: usize,
    /// Picks the way a full set gives up (turns over on every eviction).
    victim: usize,
    /// Slots of this generation are live; [`DerivedSet::clear`] moves it on.
    generation: u32,
    /// log2 of the number of sets, and that number minus one.
    set_bits: u32,
    set_mask: usize,
}

impl<S: AsRef<[DerivedSlot]> + AsMut<[DerivedSlot]>> DerivedSet<S> {
    /// An empty set over `slots` (emptied here), whose length must be a power of two of at
    /// least two sets of [`WAYS`].
    pub fn new(slots: S) -> Result<Self, BadSlotCount> {
        let n = slots.as_ref().len();
        if n < 2 * WAYS || !n.is_power_of_two() {
            return Err(BadSlotCount(n));
        }
        let sets = n / WAYS;
        let mut set = DerivedSet {
            slots,
            pairs: 0,
            victim: 0,
            generation: 1,
            set_bits: sets.trailing_zeros(),
            set_mask: sets - 1,
        };
        set.slots.as_mut().fill(DerivedSlot::EMPTY);
        Ok(set)
    }

    /// Forgets every record (the vCPU took fresh host ASIDs): O(1), except once every 2^24
    /// calls, when the generation wraps and the slots are really emptied.
    pub fn clear(&mut self) {
        self.generation += 1;
        if self.generation == GENERATION_LIMIT {
            self.slots.as_mut().fill(DerivedSlot::EMPTY);
            self.generation = 1;
        }
        self.pairs = 0;
    }

    #[inline(always)]
    fn live(&self, slot: &DerivedSlot) -> bool {
        // Generation 0 is never current, and an empty slot's tag is 0.
        slot.tag >> VA_BITS == u64::from(self.generation)
    }

    /// Pairs recorded.
    pub fn pairs(&self) -> usize {
        self.pairs
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.as_ref().len()
    }

    /// The first slot of a pair's set: its VPN2 folded onto itself, so the pairs of one
    /// aligned block of `sets` pairs never share a set, and blocks that differ only above it
    /// (the guest's KSEG0 window and KSEG2 aliases of a frame) are spread differently.
    /// User-space pairs are spread by half.
    #[inline(always)]
    fn set_base(&self, space: HostSpace, pair_va: u64) -> usize {
        let bits = self.set_bits;
        let vpn2 = pair_va / PAIR_BYTES;
        let folded = (vpn2 ^ (vpn2 >> bits) ^ (vpn2 >> (2 * bits))) as usize;
        let spread = if space == HostSpace::User {
            self.set_mask.div_ceil(2)
        } else {
            0
        };
        ((folded ^ spread) & self.set_mask) * WAYS
    }

    /// The slot holding the pair if recorded (`Ok`), else a free slot of its set if any
    /// (`Err(Some)`), in one pass over the set's ways.
    #[inline(always)]
    fn find_or_free(&self, space: HostSpace, pair_va: u64) -> Result<usize, Option<usize>> {
        let base = self.set_base(space, pair_va);
        let want = key(space, pair_va, self.generation);
        let mut free = None;
        for (way, slot) in self.slots.as_ref()[base..base + WAYS].iter().enumerate() {
            if !self.live(slot) {
                free = free.or(Some(base + way));
            } else if slot.tag & !(TAG_HALF0 | TAG_HALF1) == want {
                return Ok(base + way);
            }
        }
        Err(free)
    }

    /// The slot holding the pair, if recorded.
    fn find(&self, space: HostSpace, pair_va: u64) -> Option<usize> {
        self.find_or_free(space, pair_va).ok()
    }

    /// Records that the half of `page_va`'s pair holding it, under `space`, is (about to be)
    /// installed from `source`. If the pair's set was full, another pair is forgotten and
    /// returned: the caller drops it from the host before installing.
    #[must_use = "an evicted pair must be dropped from the host"]
    pub fn record(&mut self, space: HostSpace, page_va: u64, source: Source) -> Option<DropPair> {
        let mut halves = [None; 2];
        halves[((page_va / (PAIR_BYTES / 2)) & 1) as usize] = Some(source);
        self.record_pair(space, page_va, halves)
    }

    /// [`DerivedSet::record`] for both halves of `pair_va`'s pair at once (`None`: that half
    /// is not being installed), with one lookup.
    #[must_use = "an evicted pair must be dropped from the host"]
    pub fn record_pair(
        &mut self,
        space: HostSpace,
        pair_va: u64,
        halves: [Option<Source>; 2],
    ) -> Option<DropPair> {
        let pair_va = pair_va & PAIR_MASK;
        let mut evicted = None;
        let index = match self.find_or_free(space, pair_va) {
            Ok(index) => index,
            Err(free) => {
                let index = match free {
                    Some(index) => {
                        self.pairs += 1;
                        index
                    }
                    None => {
                        self.victim = (self.victim + 1) % WAYS;
                        let index = self.set_base(space, pair_va) + self.victim;
                        evicted = Some(self.slots.as_ref()[index].drop_pair());
                        index
                    }
                };
                let tag = key(space, pair_va, self.generation);
                let slot = &mut self.slots.as_mut()[index];
                *slot = DerivedSlot::EMPTY;
                slot.tag = tag;
                index
            }
        };
        let slot = &mut self.slots.as_mut()[index];
        for (half, source) in halves.into_iter().enumerate() {
            if let Some(source) = source {
                slot.tag |= half_bit(half);
                slot.halves[half] = source;
            }
        }
        evicted
    }

    /// What the half holding `page_va` under `space` was built from, if recorded.
    pub fn get(&self, space: HostSpace, page_va: u64) -> Option<Source> {
        let pair_va = page_va & PAIR_MASK;
        let half = ((page_va / (PAIR_BYTES / 2)) & 1) as usize;
        let slot = &self.slots.as_ref()[self.find(space, pair_va)?];
        slot.has_half(half).then_some(slot.halves[half])
    }

    /// Every recorded half: space, guest page address, source.
    pub fn iter(&self) -> impl Iterator<Item = (HostSpace, u64, Source)> + '_ {
        self.slots
            .as_ref()
            .iter()
            .filter(|s| self.live(s))
            .flat_map(|s| {
                (0..2)
                    .filter(move |&h| s.has_half(h))
                    .map(move |h| (s.space(), s.pair_va() + h as u64 * 0x1000, s.halves[h]))
            })
    }

    /// Whether any recorded half was built from host frame `hfn`.
    pub fn holds_hfn(&self, hfn: Hfn) -> bool {
        self.iter().any(|(_, _, source)| source.hfn == hfn)
    }

    /// Forgets every half built from a frame of `range` and hands each affected pair to
    /// `drop` (only those halves marked). Returns the number of halves dropped.
    pub fn drop_gfns(&mut self, range: &GfnRange, mut drop: impl FnMut(DropPair)) -> usize {
        let mut dropped = 0;
        let generation = u64::from(self.generation);
        let live = |s: &DerivedSlot| s.tag >> VA_BITS == generation;
        for slot in self.slots.as_mut().iter_mut().filter(|s| live(s)) {
            let mut halves = [false; 2];
            for (half, hit) in halves.iter_mut().enumerate() {
                if slot.has_half(half) && range.contains(slot.halves[half].gfn) {
                    *hit = true;
                    slot.tag &= !half_bit(half);
                    dropped += 1;
                }
            }
            if halves.iter().any(|&h| h) {
                drop(DropPair {
                    space: slot.space(),
                    pair_va: slot.pair_va(),
                    halves,
                });
                if !slot.has_half(0) && !slot.has_half(1) {
                    *slot = DerivedSlot::EMPTY;
                    self.pairs -= 1;
                }
            }
        }
        dropped
    }

    /// Forgets every pair (both spaces) overlapping guest virtual `[start, end)` and hands
    /// each to `drop`. Returns the number of halves dropped.
    pub fn drop_va_range(&mut self, start: u64, end: u64, mut drop: impl FnMut(DropPair)) -> usize {
        if end <= start {
            return 0;
        }
        let first = start & PAIR_MASK;
        let pairs = (end - first).div_ceil(PAIR_BYTES);
        let mut dropped = 0;
        let mut take = |slot: &mut DerivedSlot, pairs_left: &mut usize| {
            let pair = slot.drop_pair();
            dropped += pair.halves.iter().filter(|&&h| h).count();
            drop(pair);
            *slot = DerivedSlot::EMPTY;
            *pairs_left -= 1;
        };
        if pairs.saturating_mul(2 * WAYS as u64) <= self.capacity() as u64 {
            // A small range: look up each of its pairs in both spaces.
            for n in 0..pairs {
                let pair_va = first + n * PAIR_BYTES;
                for space in [HostSpace::Kernel, HostSpace::User] {
                    if let Some(index) = self.find(space, pair_va) {
                        take(&mut self.slots.as_mut()[index], &mut self.pairs);
                    }
                }
            }
        } else {
            // A large page: scanning every slot is cheaper than every pair of it.
            let generation = u64::from(self.generation);
            for slot in self.slots.as_mut().iter_mut() {
                let live = slot.tag >> VA_BITS == generation;
                if live && slot.pair_va() < end && slot.pair_va() + PAIR_BYTES > start {
                    take(slot, &mut self.pairs);
                }
            }
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(gfn: u64, hfn: u64) -> Source {
        Source {
            gfn: Gfn::new(gfn),
            hfn: Hfn::new(hfn),
        }
    }

    fn set(n: usize) -> DerivedSet<Vec<DerivedSlot>> {
        DerivedSet::new(vec![DerivedSlot::EMPTY; n]).unwrap()
    }

    #[test]
    fn slot_count_must_be_a_power_of_two() {
        assert_eq!(
            DerivedSet::new(vec![DerivedSlot::EMPTY; 12]).err(),
            Some(BadSlotCount(12))
        );
        assert!(DerivedSet::new(vec![DerivedSlot::EMPTY; 4]).is_err());
    }

    #[test]
    fn record_get_and_drop_by_gfn() {
        let mut s = set(16);
        assert_eq!(s.record(HostSpace::Kernel, 0x6000_0000, src(5, 50)), None);
        assert_eq!(s.record(HostSpace::Kernel, 0x6000_1000, src(9, 90)), None);
        assert_eq!(s.pairs(), 1);
        assert_eq!(s.get(HostSpace::Kernel, 0x6000_1234), Some(src(9, 90)));
        assert_eq!(s.get(HostSpace::User, 0x6000_1000), None);
        let mut drops = Vec::new();
        let n = s.drop_gfns(&GfnRange::single(Gfn::new(9)).unwrap(), |d| drops.push(d));
        assert_eq!(n, 1);
        assert_eq!(
            drops,
            [DropPair {
                space: HostSpace::Kernel,
                pair_va: 0x6000_0000,
                halves: [false, true]
            }]
        );
        assert_eq!(s.get(HostSpace::Kernel, 0x6000_1000), None);
        assert_eq!(s.get(HostSpace::Kernel, 0x6000_0000), Some(src(5, 50)));
        let _ = s.drop_gfns(&GfnRange::single(Gfn::new(5)).unwrap(), |_| {});
        assert_eq!(s.pairs(), 0);
    }

    #[test]
    fn a_colliding_pair_evicts_the_occupant() {
        let mut s = set(8);
        // Five pairs of one set (two sets of four ways): the fifth evicts one of the others.
        let same_set: Vec<u64> = (1..256u64)
            .map(|n| n * PAIR_BYTES)
            .filter(|&va| s.set_base(HostSpace::Kernel, va) == 0)
            .take(5)
            .collect();
        for (n, &va) in same_set[..4].iter().enumerate() {
            assert_eq!(
                s.record(HostSpace::Kernel, va, src(n as u64, n as u64)),
                None
            );
        }
        let evicted = s
            .record(HostSpace::Kernel, same_set[4], src(9, 9))
            .expect("a full set evicts");
        assert!(same_set[..4].contains(&evicted.pair_va));
        assert_eq!(evicted.halves, [true, false]);
        assert_eq!(s.get(HostSpace::Kernel, evicted.pair_va), None);
        assert_eq!(s.pairs(), 4);
        assert!(s.holds_hfn(Hfn::new(9)));
    }

    #[test]
    fn clear_forgets_everything_at_once() {
        let mut s = set(16);
        let _ = s.record(HostSpace::Kernel, 0x6000_0000, src(5, 50));
        let _ = s.record(HostSpace::User, 0x1000, src(6, 60));
        s.clear();
        assert_eq!(s.pairs(), 0);
        assert_eq!(s.iter().count(), 0);
        assert_eq!(s.get(HostSpace::Kernel, 0x6000_0000), None);
        assert_eq!(
            s.drop_gfns(&GfnRange::single(Gfn::new(5)).unwrap(), |_| {}),
            0
        );
        // Slots of the old generation are free again: four pairs of one set, no eviction.
        let same_set: Vec<u64> = (0..4096u64)
            .map(|n| n * PAIR_BYTES)
            .filter(|&va| {
                s.set_base(HostSpace::Kernel, va) == s.set_base(HostSpace::Kernel, 0x6000_0000)
            })
            .take(4)
            .collect();
        for (n, &va) in same_set.iter().enumerate() {
            assert_eq!(
                s.record(HostSpace::Kernel, va, src(n as u64, n as u64)),
                None
            );
        }
        // Wrapping the generation really empties the slots.
        s.generation = GENERATION_LIMIT - 1;
        s.clear();
        assert_eq!(s.generation, 1);
        assert_eq!(s.iter().count(), 0);
    }

    #[test]
    fn contiguous_pairs_and_window_aliases_do_not_collide() {
        let s = set(1024);
        let mut seen = std::collections::HashSet::new();
        for n in 0..256u64 {
            assert!(seen.insert(s.set_base(HostSpace::Kernel, 0x4000_0000 + n * PAIR_BYTES)));
        }
        for n in 0..256u64 {
            let window = 0x4000_0000 + n * PAIR_BYTES;
            assert_ne!(
                s.set_base(HostSpace::Kernel, window),
                s.set_base(HostSpace::Kernel, window + 0x2000_0000)
            );
        }
    }

    #[test]
    fn va_range_drops_both_spaces_small_and_large() {
        let mut s = set(256);
        let _ = s.record(HostSpace::Kernel, 0x10_0000, src(1, 1));
        let _ = s.record(HostSpace::User, 0x10_1000, src(2, 2));
        let _ = s.record(HostSpace::User, 0x10_2000, src(3, 3));
        let mut drops = 0;
        assert_eq!(s.drop_va_range(0x10_0000, 0x10_2000, |_| drops += 1), 2);
        assert_eq!(drops, 2);
        assert_eq!(s.get(HostSpace::User, 0x10_2000), Some(src(3, 3)));
        // 16 MiB: more pairs than slots, scanned.
        let _ = s.record(HostSpace::Kernel, 0x6080_0000, src(4, 4));
        assert_eq!(s.drop_va_range(0x6000_0000, 0x6100_0000, |_| {}), 1);
        assert_eq!(s.pairs(), 1);
        assert_eq!(s.drop_va_range(5, 5, |_| {}), 0);
    }
}
