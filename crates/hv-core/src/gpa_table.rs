//! The per-VM GPA table: a multi-level radix table from guest frames to [`GpaPte`]s.
//!
//! Shape: each table is one page of 8-byte entries ([`TABLE_ENTRIES`]), indexed by
//! [`INDEX_BITS`] bits of the guest frame number; [`LEVELS`] levels are chosen so the table
//! reaches at least [`MIN_GPA_BITS`] bits of guest physical address (4 KiB pages: 3 levels of
//! 512 entries = 39 bits). Everything is derived from `addr::PAGE_SHIFT`, so 16 KiB pages
//! only change the constants.
//!
//! Directory entries hold the child table's host physical address with bit 0 set
//! ([`DIR_PRESENT`]); zero means "no child". Leaf entries are [`GpaPte`] words, zero meaning
//! not present. Because children are named by host frame, the firmware's refill code can walk
//! the table physically; all frame-to-memory access goes through [`TableFrames`].
//!
//! Rules kept by every operation:
//! - the root is allocated once and lives until [`GpaTable::destroy`];
//! - a non-root table exists only while it holds at least one entry: unmapping frees tables
//!   that become empty;
//! - out of memory is an error that leaves the table exactly as it was;
//! - every change returns a [`FlushToken`] naming the guest frames whose derived translations
//!   may grant more than the new entry (see [`GpaPte::flush_needed_for`] for the rule); it is
//!   empty when no entry with V set lost V/D or changed PFN/cache attribute.
//!
//! Ranges are half-open [`GfnRange`]s. Range operations clip to the table's reach (nothing can
//! be mapped beyond it); `set` beyond the reach is an error.

use core::fmt;

use crate::addr::{Gfn, GfnRange, Hfn, RangeError, PAGE_OFFSET_MASK, PAGE_SHIFT};
use crate::flush::FlushToken;
use crate::pte::{GpaPte, HwBits, PteError};
use crate::table_frames::{OutOfMemory, TableFrames, TablePage, TABLE_ENTRIES};

/// Guest frame bits consumed by one table level.
pub const INDEX_BITS: u32 = PAGE_SHIFT - 3;
/// The guest physical address width the table must at least cover.
pub const MIN_GPA_BITS: u32 = 39;
/// Number of table levels (root included).
pub const LEVELS: u32 = (MIN_GPA_BITS - PAGE_SHIFT).div_ceil(INDEX_BITS);
/// Guest frame number bits the table resolves.
pub const GFN_BITS: u32 = LEVELS * INDEX_BITS;
/// Guest physical address bits the table reaches (>= `MIN_GPA_BITS`).
pub const GPA_BITS: u32 = GFN_BITS + PAGE_SHIFT;
/// One past the highest guest frame the table can map.
pub const GFN_LIMIT: Gfn = Gfn::new(1 << GFN_BITS);
/// Bit marking a directory entry as pointing at a child table.
pub const DIR_PRESENT: u64 = 1;

const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
// A table must be exactly one page of 8-byte entries.
const _: () = assert!(TABLE_ENTRIES == 1 << INDEX_BITS);
// Enough levels to reach MIN_GPA_BITS, and not one more.
const _: () = assert!(GPA_BITS >= MIN_GPA_BITS && GPA_BITS - INDEX_BITS < MIN_GPA_BITS);

/// Errors from GPA table operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpaTableError {
    /// The guest frame lies at or above [`GFN_LIMIT`].
    BeyondReach(Gfn),
    /// No frame for a needed table; the table is unchanged.
    OutOfMemory,
    /// A byte range given by the caller was malformed.
    Range(RangeError),
}

impl fmt::Display for GpaTableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpaTableError::BeyondReach(gfn) => write!(
                f,
                "guest frame {gfn} is beyond the GPA table's {GPA_BITS}-bit reach"
            ),
            GpaTableError::OutOfMemory => f.write_str("out of memory for a GPA table page"),
            GpaTableError::Range(e) => write!(f, "bad guest range: {e}"),
        }
    }
}

impl From<OutOfMemory> for GpaTableError {
    fn from(_: OutOfMemory) -> Self {
        GpaTableError::OutOfMemory
    }
}

impl From<RangeError> for GpaTableError {
    fn from(e: RangeError) -> Self {
        GpaTableError::Range(e)
    }
}

/// A broken structural invariant found by [`GpaTable::check_invariants`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableInvariantError {
    /// A leaf word is not a valid entry.
    BadPte(Gfn, PteError),
    /// A directory word has stray low bits.
    BadDirEntry {
        /// The table holding it.
        table: Hfn,
        /// Its index.
        index: usize,
    },
    /// A non-root table holds no entries (it should have been freed).
    EmptyTable(Hfn),
    /// The cached counts disagree with the tables.
    CountMismatch,
}

impl fmt::Display for TableInvariantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableInvariantError::BadPte(gfn, e) => write!(f, "entry for {gfn}: {e}"),
            TableInvariantError::BadDirEntry { table, index } => {
                write!(f, "directory entry {index} of table {table} is malformed")
            }
            TableInvariantError::EmptyTable(t) => write!(f, "empty table {t} was not freed"),
            TableInvariantError::CountMismatch => f.write_str("cached counts disagree"),
        }
    }
}

/// The outcome of [`GpaTable::update`] on a present entry.
#[must_use = "carries a FlushToken"]
#[derive(Debug)]
pub struct PteUpdate {
    /// The entry before.
    pub old: GpaPte,
    /// The entry after.
    pub new: GpaPte,
    /// What to invalidate.
    pub flush: FlushToken,
}

/// A GPA table. Owns its table frames (allocated from the [`TableFrames`] passed to each call,
/// which must always be the same source) but cannot free them on drop: call
/// [`GpaTable::destroy`].
#[derive(Debug)]
pub struct GpaTable {
    root: Hfn,
    tables: usize,
    present: u64,
}

/// Accumulates what a range walk did.
struct WalkStats {
    flush_lo: u64,
    flush_hi: u64,
    present_removed: u64,
    any_young: bool,
}

impl WalkStats {
    fn new() -> Self {
        WalkStats {
            flush_lo: u64::MAX,
            flush_hi: 0,
            present_removed: 0,
            any_young: false,
        }
    }

    fn note_flush(&mut self, gfn: u64) {
        self.flush_lo = self.flush_lo.min(gfn);
        self.flush_hi = self.flush_hi.max(gfn + 1);
    }

    fn token(&self) -> FlushToken {
        match GfnRange::new(Gfn::new(self.flush_lo), Gfn::new(self.flush_hi)) {
            Ok(range) => FlushToken::range(range),
            Err(_) => FlushToken::none(),
        }
    }
}

const fn level_shift(level: u32) -> u32 {
    level * INDEX_BITS
}

const fn index_at(gfn: u64, level: u32) -> usize {
    // Masked to INDEX_BITS (< 16) bits, so it fits any usize.
    ((gfn >> level_shift(level)) & INDEX_MASK) as usize
}

fn dir_entry(child: Hfn) -> u64 {
    (child.raw() << PAGE_SHIFT) | DIR_PRESENT
}

fn dir_child(entry: u64) -> Hfn {
    Hfn::new(entry >> PAGE_SHIFT)
}

/// `range` clipped to the table's reach as raw `start..end`, or `None` if nothing is left.
/// Whether every entry of `table` is zero, after a walk changed entries `first..=last`.
/// Looks next to that range and at both ends first: a table emptied page by page, in either
/// direction, still has a neighbour in use until its last page goes, so the full scan (512
/// loads) runs only when the table is (nearly) empty or sparse.
fn table_is_empty(table: &TablePage, first: usize, last: usize) -> bool {
    let near = [first.wrapping_sub(1), last + 1, 0, TABLE_ENTRIES - 1];
    if near.iter().any(|&i| table.get(i).is_some_and(|&e| e != 0)) {
        return false;
    }
    table.iter().all(|&e| e == 0)
}

fn clip(range: GfnRange) -> Option<(u64, u64)> {
    let start = range.start().raw();
    let end = range.end().raw().min(GFN_LIMIT.raw());
    (start < end).then_some((start, end))
}

impl GpaTable {
    /// An empty table (allocates the root).
    pub fn new(frames: &mut impl TableFrames) -> Result<Self, OutOfMemory> {
        let root = frames.alloc_table()?;
        Ok(GpaTable {
            root,
            tables: 1,
            present: 0,
        })
    }

    /// The root table's frame (for the firmware's refill walker).
    pub fn root(&self) -> Hfn {
        self.root
    }

    /// Number of table frames in use, root included.
    pub fn table_count(&self) -> usize {
        self.tables
    }

    /// Number of present entries.
    pub fn present_count(&self) -> u64 {
        self.present
    }

    /// The entry for `gfn`, if present. Never allocates; frames beyond the reach are absent.
    pub fn lookup(&self, gfn: Gfn, frames: &impl TableFrames) -> Option<GpaPte> {
        let (leaf, index) = self.find_leaf(gfn, frames)?;
        let raw = frames.table(leaf)[index];
        (raw != 0).then(|| GpaPte::from_table_word(raw))
    }

    /// The even/odd pair of entries one MIPS TLB entry maps for the pair holding `gfn`
    /// (EntryLo0 is the even frame). Absent entries are [`GpaPte::NONE`].
    pub fn pair(&self, gfn: Gfn, frames: &impl TableFrames) -> (GpaPte, GpaPte) {
        let even = gfn.pair_base();
        // Both halves share a leaf table: TABLE_ENTRIES is even and the pair is aligned.
        match self.find_leaf(even, frames) {
            None => (GpaPte::NONE, GpaPte::NONE),
            Some((leaf, index)) => {
                let t = frames.table(leaf);
                (
                    GpaPte::from_table_word(t[index]),
                    GpaPte::from_table_word(t[index + 1]),
                )
            }
        }
    }

    /// Maps (or replaces) the entry for `gfn`, allocating tables as needed. A not-present
    /// `pte` unmaps the page instead (freeing tables that become empty).
    ///
    /// Errors: [`GpaTableError::BeyondReach`]; [`GpaTableError::OutOfMemory`] with the table
    /// unchanged.
    pub fn set(
        &mut self,
        gfn: Gfn,
        pte: GpaPte,
        frames: &mut impl TableFrames,
    ) -> Result<FlushToken, GpaTableError> {
        self.replace(gfn, pte, frames).map(|(_, flush)| flush)
    }

    /// Like [`GpaTable::set`], also returning the entry it replaced ([`GpaPte::NONE`] if none),
    /// e.g. to learn which host frame the page no longer maps.
    pub fn replace(
        &mut self,
        gfn: Gfn,
        pte: GpaPte,
        frames: &mut impl TableFrames,
    ) -> Result<(GpaPte, FlushToken), GpaTableError> {
        if gfn >= GFN_LIMIT {
            return Err(GpaTableError::BeyondReach(gfn));
        }
        if !pte.is_present() {
            let old = self.lookup(gfn, frames).unwrap_or(GpaPte::NONE);
            let range = GfnRange::single(gfn)?;
            return Ok((old, self.unmap_range(range, frames)));
        }
        let g = gfn.raw();
        // Walk down as far as tables exist.
        let mut table = self.root;
        let mut level = LEVELS - 1;
        while level > 0 {
            let entry = frames.table(table)[index_at(g, level)];
            if entry == 0 {
                break;
            }
            table = dir_child(entry);
            level -= 1;
        }
        // `level` tables are missing (one per level below the one we stopped at). Allocate them
        // all before touching anything, so failure leaves the table as it was.
        let mut fresh = [Hfn::new(0); LEVELS as usize];
        let missing = level as usize;
        for i in 0..missing {
            match frames.alloc_table() {
                Ok(hfn) => fresh[i] = hfn,
                Err(OutOfMemory) => {
                    for &hfn in &fresh[..i] {
                        frames.free_table(hfn);
                    }
                    return Err(GpaTableError::OutOfMemory);
                }
            }
        }
        for &child in &fresh[..missing] {
            frames.table_mut(table)[index_at(g, level)] = dir_entry(child);
            table = child;
            level -= 1;
        }
        self.tables += missing;
        let slot = &mut frames.table_mut(table)[index_at(g, 0)];
        let old = GpaPte::from_table_word(*slot);
        *slot = pte.raw();
        if !old.is_present() {
            self.present += 1;
        }
        let flush = if old.flush_needed_for(pte) {
            FlushToken::gfn(gfn)
        } else {
            FlushToken::none()
        };
        Ok((old, flush))
    }

    /// Applies `f` to the present entry for `gfn` in place (the fault fast path). Never
    /// allocates. Returns `None` if the entry is not present. If `f` returns a not-present
    /// entry the page is unmapped.
    pub fn update(
        &mut self,
        gfn: Gfn,
        frames: &mut impl TableFrames,
        f: impl FnOnce(GpaPte) -> GpaPte,
    ) -> Option<PteUpdate> {
        let (leaf, index) = self.find_leaf(gfn, frames)?;
        let old = GpaPte::from_table_word(frames.table(leaf)[index]);
        if !old.is_present() {
            return None;
        }
        let new = f(old);
        let flush = if new.is_present() {
            frames.table_mut(leaf)[index] = new.raw();
            if old.flush_needed_for(new) {
                FlushToken::gfn(gfn)
            } else {
                FlushToken::none()
            }
        } else {
            // gfn is below the reach, so the single range exists.
            self.unmap_range(GfnRange::single(gfn).ok()?, frames)
        };
        Some(PteUpdate { old, new, flush })
    }

    /// The fault fast path's table work in one walk: makes the present entry for `gfn` young
    /// (and dirty if `write`) and returns the even/odd pair holding it, updated. `None`, with
    /// nothing changed, if the entry is absent or `write` is asked of an entry that does not
    /// permit it. Only bits are gained, so no derived translation needs a flush.
    pub fn touch(
        &mut self,
        gfn: Gfn,
        frames: &mut impl TableFrames,
        write: bool,
    ) -> Option<(GpaPte, GpaPte)> {
        let (leaf, index) = self.find_leaf(gfn, frames)?;
        let table = frames.table_mut(leaf);
        let old = GpaPte::from_table_word(table[index]);
        if !old.is_present() || (write && !old.is_writable()) {
            return None;
        }
        let new = if write {
            old.mkyoung().mkdirty()
        } else {
            old.mkyoung()
        };
        debug_assert!(!old.flush_needed_for(new));
        table[index] = new.raw();
        // Both halves share a leaf table: TABLE_ENTRIES is even and the pair is aligned.
        let even = index & !1;
        Some((
            GpaPte::from_table_word(table[even]),
            GpaPte::from_table_word(table[even + 1]),
        ))
    }

    /// Removes every entry in `range`, freeing tables that become empty.
    pub fn unmap_range(&mut self, range: GfnRange, frames: &mut impl TableFrames) -> FlushToken {
        let stats = self.walk_range(range, frames, true, |_| GpaPte::NONE);
        stats.token()
    }

    /// Ages every entry in `range`. Returns whether any was young, and the flush.
    pub fn mkold_range(
        &mut self,
        range: GfnRange,
        frames: &mut impl TableFrames,
    ) -> (bool, FlushToken) {
        let stats = self.walk_range(range, frames, false, GpaPte::mkold);
        (stats.any_young, stats.token())
    }

    /// Cleans every entry in `range` (the next store to each faults and can be logged).
    pub fn mkclean_range(&mut self, range: GfnRange, frames: &mut impl TableFrames) -> FlushToken {
        self.walk_range(range, frames, false, GpaPte::mkclean)
            .token()
    }

    /// Revokes write permission on every entry in `range`.
    pub fn wrprotect_range(
        &mut self,
        range: GfnRange,
        frames: &mut impl TableFrames,
    ) -> FlushToken {
        self.walk_range(range, frames, false, GpaPte::wrprotect)
            .token()
    }

    /// Calls `f` for every present entry in `range`, in guest frame order.
    pub fn for_each_present(
        &self,
        range: GfnRange,
        frames: &impl TableFrames,
        mut f: impl FnMut(Gfn, GpaPte),
    ) {
        if let Some((start, end)) = clip(range) {
            Self::visit(frames, self.root, LEVELS - 1, 0, start, end, &mut f);
        }
    }

    /// Frees every table, root included. The returned token asks for a full flush if any entry
    /// could still be cached (had V set).
    pub fn destroy(self, frames: &mut impl TableFrames) -> FlushToken {
        let any_valid = Self::free_subtree(frames, self.root, LEVELS - 1);
        if any_valid {
            FlushToken::all()
        } else {
            FlushToken::none()
        }
    }

    /// Walks the whole table checking every structural invariant (entries valid, directory
    /// words well formed, no empty non-root table, counts right). For tests and debugging.
    pub fn check_invariants(&self, frames: &impl TableFrames) -> Result<(), TableInvariantError> {
        let mut tables = 0usize;
        let mut present = 0u64;
        Self::check_subtree(
            frames,
            self.root,
            LEVELS - 1,
            0,
            true,
            &mut tables,
            &mut present,
        )?;
        if tables != self.tables || present != self.present {
            return Err(TableInvariantError::CountMismatch);
        }
        Ok(())
    }

    fn find_leaf(&self, gfn: Gfn, frames: &impl TableFrames) -> Option<(Hfn, usize)> {
        if gfn >= GFN_LIMIT {
            return None;
        }
        let g = gfn.raw();
        let mut table = self.root;
        for level in (1..LEVELS).rev() {
            let entry = frames.table(table)[index_at(g, level)];
            if entry == 0 {
                return None;
            }
            table = dir_child(entry);
        }
        Some((table, index_at(g, 0)))
    }

    /// Applies `op` to every present entry in `range`. With `prune`, frees tables left empty.
    fn walk_range(
        &mut self,
        range: GfnRange,
        frames: &mut impl TableFrames,
        prune: bool,
        mut op: impl FnMut(GpaPte) -> GpaPte,
    ) -> WalkStats {
        let mut stats = WalkStats::new();
        if let Some((start, end)) = clip(range) {
            let mut freed = 0usize;
            Self::walk_table(
                frames,
                self.root,
                LEVELS - 1,
                0,
                start,
                end,
                prune,
                &mut op,
                &mut stats,
                &mut freed,
            );
            self.tables -= freed;
            self.present -= stats.present_removed;
        }
        stats
    }

    /// Recursive step of `walk_range` over the table at `level` whose first frame is `base`.
    /// Returns whether the table is now empty (only computed with `prune`).
    #[allow(clippy::too_many_arguments)]
    fn walk_table(
        frames: &mut impl TableFrames,
        table: Hfn,
        level: u32,
        base: u64,
        start: u64,
        end: u64,
        prune: bool,
        op: &mut impl FnMut(GpaPte) -> GpaPte,
        stats: &mut WalkStats,
        freed: &mut usize,
    ) -> bool {
        let shift = level_shift(level);
        // start < end, and both lie in this table's span, so these indexes are in 0..ENTRIES.
        let first = index_at(start.max(base), level);
        let last = index_at(end.min(base + (1 << (shift + INDEX_BITS))) - 1, level);
        if level == 0 {
            let leaf = frames.table_mut(table);
            for (i, slot) in leaf.iter_mut().enumerate().take(last + 1).skip(first) {
                if *slot == 0 {
                    continue;
                }
                let old = GpaPte::from_table_word(*slot);
                let new = op(old);
                let gfn = base + i as u64;
                stats.any_young |= old.is_young();
                if old.flush_needed_for(new) {
                    stats.note_flush(gfn);
                }
                if !new.is_present() {
                    stats.present_removed += 1;
                }
                *slot = new.raw();
            }
        } else {
            for i in first..=last {
                let entry = frames.table(table)[i];
                if entry == 0 {
                    continue;
                }
                let child = dir_child(entry);
                let child_base = base + ((i as u64) << shift);
                let child_empty = Self::walk_table(
                    frames,
                    child,
                    level - 1,
                    child_base,
                    start,
                    end,
                    prune,
                    op,
                    stats,
                    freed,
                );
                if child_empty {
                    frames.table_mut(table)[i] = 0;
                    frames.free_table(child);
                    *freed += 1;
                }
            }
        }
        prune && table_is_empty(frames.table(table), first, last)
    }

    fn visit(
        frames: &impl TableFrames,
        table: Hfn,
        level: u32,
        base: u64,
        start: u64,
        end: u64,
        f: &mut impl FnMut(Gfn, GpaPte),
    ) {
        let shift = level_shift(level);
        let first = index_at(start.max(base), level);
        let last = index_at(end.min(base + (1 << (shift + INDEX_BITS))) - 1, level);
        for i in first..=last {
            let entry = frames.table(table)[i];
            if entry == 0 {
                continue;
            }
            let here = base + ((i as u64) << shift);
            if level == 0 {
                f(Gfn::new(here), GpaPte::from_table_word(entry));
            } else {
                Self::visit(frames, dir_child(entry), level - 1, here, start, end, f);
            }
        }
    }

    /// Frees `table` and everything below it; returns whether any leaf had V set.
    fn free_subtree(frames: &mut impl TableFrames, table: Hfn, level: u32) -> bool {
        let mut any_valid = false;
        for i in 0..TABLE_ENTRIES {
            let entry = frames.table(table)[i];
            if entry == 0 {
                continue;
            }
            if level == 0 {
                any_valid |= entry & HwBits::VALID.bits() != 0;
            } else {
                any_valid |= Self::free_subtree(frames, dir_child(entry), level - 1);
            }
        }
        frames.free_table(table);
        any_valid
    }

    fn check_subtree(
        frames: &impl TableFrames,
        table: Hfn,
        level: u32,
        base: u64,
        is_root: bool,
        tables: &mut usize,
        present: &mut u64,
    ) -> Result<(), TableInvariantError> {
        *tables += 1;
        let mut used = 0usize;
        for i in 0..TABLE_ENTRIES {
            let entry = frames.table(table)[i];
            if entry == 0 {
                continue;
            }
            used += 1;
            let here = base + ((i as u64) << level_shift(level));
            if level == 0 {
                GpaPte::from_raw(entry)
                    .map_err(|e| TableInvariantError::BadPte(Gfn::new(here), e))?;
                *present += 1;
            } else {
                if entry & PAGE_OFFSET_MASK != DIR_PRESENT {
                    return Err(TableInvariantError::BadDirEntry { table, index: i });
                }
                Self::check_subtree(
                    frames,
                    dir_child(entry),
                    level - 1,
                    here,
                    false,
                    tables,
                    present,
                )?;
            }
        }
        if used == 0 && !is_root {
            return Err(TableInvariantError::EmptyTable(table));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flush::FlushScope;
    use crate::pte::Cca;
    use crate::table_frames::ArenaTableFrames;

    fn pte(hfn: u64) -> GpaPte {
        GpaPte::present(Hfn::new(hfn), Cca::CACHED_NONCOHERENT).unwrap()
    }

    fn r(a: u64, b: u64) -> GfnRange {
        GfnRange::new(Gfn::new(a), Gfn::new(b)).unwrap()
    }

    fn setup() -> (GpaTable, ArenaTableFrames) {
        let mut frames = ArenaTableFrames::new();
        let table = GpaTable::new(&mut frames).unwrap();
        (table, frames)
    }

    fn teardown(table: GpaTable, mut frames: ArenaTableFrames) {
        table.check_invariants(&frames).unwrap();
        let _ = table.destroy(&mut frames).defer();
        assert_eq!(frames.live_tables(), 0, "every table frame freed");
    }

    /// Entries per table, and the frames one middle-level entry spans.
    const E: u64 = TABLE_ENTRIES as u64;
    const MID: u64 = 1 << (2 * INDEX_BITS);

    #[test]
    fn geometry() {
        assert_eq!(GFN_LIMIT, Gfn::new(1 << GFN_BITS));
        if PAGE_SHIFT == 12 {
            assert_eq!((INDEX_BITS, LEVELS, GPA_BITS), (9, 3, 39));
        }
    }

    #[test]
    fn map_lookup_replace() {
        let (mut t, mut f) = setup();
        assert_eq!(t.lookup(Gfn::new(5), &f), None);
        assert!(t.set(Gfn::new(5), pte(100), &mut f).unwrap().is_empty());
        assert_eq!(t.lookup(Gfn::new(5), &f), Some(pte(100)));
        assert_eq!(t.lookup(Gfn::new(4), &f), None);
        assert_eq!(t.lookup(Gfn::new(6), &f), None);
        assert_eq!(t.table_count(), 3);
        assert_eq!(t.present_count(), 1);
        // Replacing an old entry needs no flush; replacing a young one does.
        assert!(t.set(Gfn::new(5), pte(101), &mut f).unwrap().is_empty());
        t.set(Gfn::new(5), pte(101).mkyoung(), &mut f)
            .unwrap()
            .defer();
        let tok = t.set(Gfn::new(5), pte(102), &mut f).unwrap();
        assert_eq!(tok.defer(), FlushScope::Gfns(r(5, 6)));
        assert_eq!(t.present_count(), 1);
        teardown(t, f);
    }

    #[test]
    fn touch_makes_young_and_dirty_in_one_walk() {
        let (mut t, mut f) = setup();
        assert_eq!(t.touch(Gfn::new(7), &mut f, false), None);
        t.set(Gfn::new(7), pte(200).mkwrite(), &mut f)
            .unwrap()
            .defer();
        t.set(Gfn::new(6), pte(300), &mut f).unwrap().defer();
        // A read: young only; the pair comes back with the even half first.
        let (even, odd) = t.touch(Gfn::new(7), &mut f, false).unwrap();
        assert_eq!(even, pte(300));
        assert!(odd.is_young() && !odd.is_dirty());
        assert_eq!(t.lookup(Gfn::new(7), &f), Some(odd));
        // A write to a write-permitted page: dirty too, with D set.
        let (_, odd) = t.touch(Gfn::new(7), &mut f, true).unwrap();
        assert!(odd.is_young() && odd.is_dirty());
        assert_eq!(odd, pte(200).mkwrite().mkyoung().mkdirty());
        // A write the entry does not permit changes nothing.
        assert_eq!(t.touch(Gfn::new(6), &mut f, true), None);
        assert_eq!(t.lookup(Gfn::new(6), &f), Some(pte(300)));
        // An absent neighbour in a present leaf.
        assert_eq!(t.touch(Gfn::new(8), &mut f, false), None);
        teardown(t, f);
    }

    #[test]
    fn frames_at_table_boundaries() {
        let (mut t, mut f) = setup();
        let last = GFN_LIMIT.raw() - 1;
        let gfns = [0, E - 1, E, E + 1, MID - 1, MID, last];
        for (i, &g) in gfns.iter().enumerate() {
            t.set(Gfn::new(g), pte(1000 + i as u64), &mut f)
                .unwrap()
                .defer();
        }
        for (i, &g) in gfns.iter().enumerate() {
            assert_eq!(t.lookup(Gfn::new(g), &f), Some(pte(1000 + i as u64)));
        }
        let mut seen = alloc::vec::Vec::new();
        t.for_each_present(r(0, GFN_LIMIT.raw()), &f, |g, p| seen.push((g.raw(), p)));
        assert_eq!(seen.len(), gfns.len());
        assert!(seen.iter().zip(gfns).all(|(s, g)| s.0 == g));
        t.check_invariants(&f).unwrap();
        teardown(t, f);
    }

    #[test]
    fn beyond_reach_is_an_error() {
        let (mut t, mut f) = setup();
        assert_eq!(
            t.set(GFN_LIMIT, pte(1), &mut f),
            Err(GpaTableError::BeyondReach(GFN_LIMIT))
        );
        assert_eq!(
            t.set(Gfn::new(u64::MAX), pte(1), &mut f),
            Err(GpaTableError::BeyondReach(Gfn::new(u64::MAX)))
        );
        assert_eq!(t.lookup(GFN_LIMIT, &f), None);
        assert_eq!(t.table_count(), 1);
        // Range ops clip instead.
        assert!(t.unmap_range(r(0, u64::MAX), &mut f).is_empty());
        teardown(t, f);
    }

    #[test]
    fn unmapping_page_by_page_frees_a_table_only_with_its_last_entry() {
        // Ascending, descending and scattered orders over two leaf tables; the emptiness
        // check looks at neighbours first, so each order exercises a different early exit.
        let orders: [Vec<u64>; 3] = [
            (0..2 * E).collect(),
            (0..2 * E).rev().collect(),
            (0..2 * E).map(|i| (i * 389) % (2 * E)).collect(),
        ];
        for order in orders {
            let (mut t, mut f) = setup();
            for g in 0..2 * E {
                t.set(Gfn::new(g), pte(100 + g), &mut f).unwrap().defer();
            }
            let full = f.live_tables();
            let mut left = [E, E];
            for &g in &order {
                let _ = t.unmap_range(r(g, g + 1), &mut f).defer();
                left[(g / E) as usize] -= 1;
                let leaves = left.iter().filter(|&&n| n > 0).count();
                // Root, middle and top tables stay while any leaf does.
                let expected = if leaves == 0 { 1 } else { full - 2 + leaves };
                assert_eq!(f.live_tables(), expected, "after unmapping {g}");
                t.check_invariants(&f).unwrap();
            }
            teardown(t, f);
        }
    }

    #[test]
    fn unmap_range_is_half_open_and_frees_empty_tables() {
        let (mut t, mut f) = setup();
        for g in E - 12..2 * E + 76 {
            t.set(Gfn::new(g), pte(g).mkyoung(), &mut f)
                .unwrap()
                .defer();
        }
        // Leaf tables for 0..E, E..2E, 2E..3E, plus one middle table and the root.
        assert_eq!(t.table_count(), 5);
        let tok = t.unmap_range(r(E, 2 * E), &mut f);
        assert_eq!(tok.defer(), FlushScope::Gfns(r(E, 2 * E)));
        assert_eq!(t.lookup(Gfn::new(E - 1), &f), Some(pte(E - 1).mkyoung()));
        assert_eq!(t.lookup(Gfn::new(E), &f), None);
        assert_eq!(t.lookup(Gfn::new(2 * E - 1), &f), None);
        assert_eq!(t.lookup(Gfn::new(2 * E), &f), Some(pte(2 * E).mkyoung()));
        assert_eq!(t.table_count(), 4, "the emptied leaf table is freed");
        assert_eq!(f.live_tables(), 4);
        t.check_invariants(&f).unwrap();
        // Partial unmap keeps the partly used table.
        t.unmap_range(r(2 * E, 2 * E + 1), &mut f).defer();
        assert_eq!(t.table_count(), 4);
        t.unmap_range(r(0, 4 * E), &mut f).defer();
        assert_eq!(t.table_count(), 1, "only the root stays");
        assert_eq!(t.present_count(), 0);
        teardown(t, f);
    }

    #[test]
    fn unmapping_old_entries_needs_no_flush() {
        let (mut t, mut f) = setup();
        for g in 0..8 {
            let p = if g == 3 { pte(g).mkyoung() } else { pte(g) };
            t.set(Gfn::new(g), p, &mut f).unwrap().defer();
        }
        assert!(t.unmap_range(r(4, 8), &mut f).is_empty());
        assert_eq!(
            t.unmap_range(r(0, 4), &mut f).defer(),
            FlushScope::Gfns(r(3, 4))
        );
        teardown(t, f);
    }

    #[test]
    fn mkold_reports_young_and_flushes_them() {
        let (mut t, mut f) = setup();
        t.set(Gfn::new(10), pte(1), &mut f).unwrap().defer();
        t.set(Gfn::new(20), pte(2).mkyoung(), &mut f)
            .unwrap()
            .defer();
        let (young, tok) = t.mkold_range(r(0, 15), &mut f);
        assert!(!young);
        assert!(tok.is_empty());
        let (young, tok) = t.mkold_range(r(0, 100), &mut f);
        assert!(young);
        assert_eq!(tok.defer(), FlushScope::Gfns(r(20, 21)));
        assert!(!t.lookup(Gfn::new(20), &f).unwrap().is_young());
        let (young, tok) = t.mkold_range(r(0, 100), &mut f);
        assert!(!young && tok.is_empty());
        teardown(t, f);
    }

    #[test]
    fn mkclean_and_wrprotect_ranges() {
        let (mut t, mut f) = setup();
        let dirty = pte(7).mkwrite().mkyoung().mkdirty();
        for g in 0..4 {
            t.set(Gfn::new(g), dirty, &mut f).unwrap().defer();
        }
        let tok = t.mkclean_range(r(1, 3), &mut f);
        assert_eq!(tok.defer(), FlushScope::Gfns(r(1, 3)));
        assert_eq!(t.lookup(Gfn::new(0), &f), Some(dirty));
        assert_eq!(t.lookup(Gfn::new(1), &f), Some(dirty.mkclean()));
        assert_eq!(t.lookup(Gfn::new(3), &f), Some(dirty));
        // Write-protecting a clean young page changes no hardware bit; a dirty one loses D.
        let tok = t.wrprotect_range(r(0, 4), &mut f);
        assert_eq!(tok.defer(), FlushScope::Gfns(r(0, 4)));
        let tok = t.wrprotect_range(r(1, 3), &mut f);
        assert!(tok.is_empty());
        for g in 0..4 {
            assert!(!t.lookup(Gfn::new(g), &f).unwrap().is_writable());
        }
        assert!(t.lookup(Gfn::new(0), &f).unwrap().is_dirty());
        teardown(t, f);
    }

    #[test]
    fn buddy_pair() {
        let (mut t, mut f) = setup();
        assert_eq!(t.pair(Gfn::new(9), &f), (GpaPte::NONE, GpaPte::NONE));
        t.set(Gfn::new(9), pte(90), &mut f).unwrap().defer();
        assert_eq!(t.pair(Gfn::new(9), &f), (GpaPte::NONE, pte(90)));
        assert_eq!(t.pair(Gfn::new(8), &f), (GpaPte::NONE, pte(90)));
        t.set(Gfn::new(8), pte(80), &mut f).unwrap().defer();
        assert_eq!(t.pair(Gfn::new(9), &f), (pte(80), pte(90)));
        // The pair at a leaf-table end stays within one table.
        t.set(Gfn::new(E - 1), pte(5), &mut f).unwrap().defer();
        assert_eq!(t.pair(Gfn::new(E - 2), &f), (GpaPte::NONE, pte(5)));
        assert_eq!(t.pair(Gfn::new(E), &f), (GpaPte::NONE, GpaPte::NONE));
        assert_eq!(
            t.pair(GFN_LIMIT, &f),
            (GpaPte::NONE, GpaPte::NONE),
            "beyond reach is empty"
        );
        teardown(t, f);
    }

    #[test]
    fn update_fast_path() {
        let (mut t, mut f) = setup();
        assert!(t.update(Gfn::new(3), &mut f, GpaPte::mkyoung).is_none());
        t.set(Gfn::new(3), pte(3).mkwrite(), &mut f)
            .unwrap()
            .defer();
        assert!(t.update(Gfn::new(2), &mut f, GpaPte::mkyoung).is_none());
        let u = t
            .update(Gfn::new(3), &mut f, |p| p.mkyoung().mkdirty())
            .unwrap();
        assert_eq!(u.old, pte(3).mkwrite());
        assert_eq!(u.new, pte(3).mkwrite().mkyoung().mkdirty());
        assert!(u.flush.is_empty(), "gaining V and D needs no flush");
        assert_eq!(t.lookup(Gfn::new(3), &f), Some(u.new));
        let u = t.update(Gfn::new(3), &mut f, GpaPte::mkclean).unwrap();
        assert_eq!(u.flush.defer(), FlushScope::Gfns(r(3, 4)));
        // Returning NONE unmaps and frees the tables.
        let u = t.update(Gfn::new(3), &mut f, |_| GpaPte::NONE).unwrap();
        u.flush.defer();
        assert_eq!(t.lookup(Gfn::new(3), &f), None);
        assert_eq!(t.table_count(), 1);
        teardown(t, f);
    }

    #[test]
    fn replace_returns_the_old_entry() {
        let (mut t, mut f) = setup();
        let (old, tok) = t.replace(Gfn::new(3), pte(30), &mut f).unwrap();
        assert_eq!(old, GpaPte::NONE);
        assert!(tok.is_empty());
        let (old, tok) = t.replace(Gfn::new(3), pte(31).mkyoung(), &mut f).unwrap();
        assert_eq!(old, pte(30));
        assert!(tok.is_empty());
        let (old, tok) = t.replace(Gfn::new(3), GpaPte::NONE, &mut f).unwrap();
        assert_eq!(old, pte(31).mkyoung());
        assert_eq!(tok.defer(), FlushScope::Gfns(r(3, 4)));
        assert_eq!(t.table_count(), 1);
        assert_eq!(
            t.replace(GFN_LIMIT, pte(1), &mut f).err(),
            Some(GpaTableError::BeyondReach(GFN_LIMIT))
        );
        teardown(t, f);
    }

    #[test]
    fn set_none_unmaps() {
        let (mut t, mut f) = setup();
        t.set(Gfn::new(3), pte(3).mkyoung(), &mut f)
            .unwrap()
            .defer();
        let tok = t.set(Gfn::new(3), GpaPte::NONE, &mut f).unwrap();
        assert_eq!(tok.defer(), FlushScope::Gfns(r(3, 4)));
        assert_eq!(t.table_count(), 1);
        assert!(t.set(Gfn::new(4), GpaPte::NONE, &mut f).unwrap().is_empty());
        assert_eq!(t.table_count(), 1, "unmapping nothing allocates nothing");
        teardown(t, f);
    }

    #[test]
    fn out_of_memory_at_every_allocation_point_leaves_table_unchanged() {
        // Mapping a frame in an empty subtree needs two tables (middle + leaf); fail each.
        for fail in 0..2u64 {
            let (mut t, mut f) = setup();
            t.set(Gfn::new(1), pte(1), &mut f).unwrap().defer();
            let live = f.live_tables();
            let tables = t.table_count();
            f.fail_allocation(Some(f.allocation_attempts() + fail));
            let far = Gfn::new(MID);
            assert_eq!(t.set(far, pte(2), &mut f), Err(GpaTableError::OutOfMemory));
            assert_eq!(f.live_tables(), live, "nothing leaked");
            assert_eq!(t.table_count(), tables);
            assert_eq!(t.lookup(far, &f), None);
            assert_eq!(t.lookup(Gfn::new(1), &f), Some(pte(1)));
            t.check_invariants(&f).unwrap();
            // And it works once memory is back.
            t.set(far, pte(2), &mut f).unwrap().defer();
            assert_eq!(t.lookup(far, &f), Some(pte(2)));
            teardown(t, f);
        }
        let mut f = ArenaTableFrames::new();
        f.fail_allocation(Some(0));
        assert_eq!(GpaTable::new(&mut f).err(), Some(OutOfMemory));
        assert_eq!(f.live_tables(), 0);
    }

    #[test]
    fn failure_at_each_allocation_of_a_workload() {
        let gfns = [0, 1, E, MID, MID + E, GFN_LIMIT.raw() - 1, 5 * MID + 3];
        let run = |f: &mut ArenaTableFrames| -> Option<(GpaTable, Option<usize>)> {
            let mut t = GpaTable::new(f).ok()?;
            let mut failed = None;
            for (i, &g) in gfns.iter().enumerate() {
                let (live, count) = (f.live_tables(), t.table_count());
                match t.set(Gfn::new(g), pte(i as u64), f) {
                    Ok(tok) => {
                        tok.defer();
                    }
                    Err(e) => {
                        assert_eq!(e, GpaTableError::OutOfMemory);
                        assert!(failed.is_none(), "only one injected failure");
                        assert_eq!((f.live_tables(), t.table_count()), (live, count));
                        assert_eq!(t.lookup(Gfn::new(g), f), None);
                        failed = Some(i);
                    }
                }
                t.check_invariants(f).unwrap();
            }
            Some((t, failed))
        };
        let mut f = ArenaTableFrames::new();
        let (t, failed) = run(&mut f).unwrap();
        assert_eq!(failed, None);
        let total = f.allocation_attempts();
        teardown(t, f);
        assert!(
            total > gfns.len() as u64,
            "workload allocates middle tables too"
        );
        for fail_at in 0..total {
            let mut f = ArenaTableFrames::new();
            f.fail_allocation(Some(fail_at));
            let Some((t, failed)) = run(&mut f) else {
                assert_eq!(fail_at, 0, "only the root allocation can fail new()");
                assert_eq!(f.live_tables(), 0);
                continue;
            };
            let failed = failed.expect("the injected failure hit a set");
            for (i, &g) in gfns.iter().enumerate() {
                let want = (i != failed).then(|| pte(i as u64));
                assert_eq!(t.lookup(Gfn::new(g), &f), want);
            }
            teardown(t, f);
        }
    }

    #[test]
    fn destroy_asks_full_flush_only_if_something_was_valid() {
        let (mut t, mut f) = setup();
        t.set(Gfn::new(1), pte(1), &mut f).unwrap().defer();
        assert!(t.destroy(&mut f).is_empty());
        assert_eq!(f.live_tables(), 0);
        let mut t = GpaTable::new(&mut f).unwrap();
        t.set(Gfn::new(MID), pte(1).mkyoung(), &mut f)
            .unwrap()
            .defer();
        assert_eq!(t.destroy(&mut f).defer(), FlushScope::All);
        assert_eq!(f.live_tables(), 0);
    }

    #[test]
    fn invariant_checker_catches_corruption() {
        let (mut t, mut f) = setup();
        t.set(Gfn::new(1), pte(1), &mut f).unwrap().defer();
        // Find the leaf and plant a V bit without ACCESSED.
        let (leaf, idx) = t.find_leaf(Gfn::new(1), &f).unwrap();
        f.table_mut(leaf)[idx] |= HwBits::VALID.bits();
        assert_eq!(
            t.check_invariants(&f),
            Err(TableInvariantError::BadPte(
                Gfn::new(1),
                PteError::ValidMismatch
            ))
        );
        f.table_mut(leaf)[idx] = 0;
        assert_eq!(
            t.check_invariants(&f),
            Err(TableInvariantError::EmptyTable(leaf))
        );
        f.table_mut(leaf)[idx] = pte(1).raw();
        f.table_mut(t.root())[0] |= 2;
        assert_eq!(
            t.check_invariants(&f),
            Err(TableInvariantError::BadDirEntry {
                table: t.root(),
                index: 0
            })
        );
        f.table_mut(t.root())[0] &= !2;
        t.check_invariants(&f).unwrap();
        teardown(t, f);
    }
}
