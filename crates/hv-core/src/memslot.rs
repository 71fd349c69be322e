//! Memslots: the VM's guest-physical RAM ranges and the host backing behind each.
//!
//! A slot maps a half-open range of guest frames onto consecutive pages of a host backing
//! object (identified by [`BackingId`], managed by the host memory layer), starting at a page
//! offset into it. Slots never overlap in guest frames; two slots may alias the same backing
//! pages. Flags: [`SlotFlags::READ_ONLY`] (guest stores become MMIO) and
//! [`SlotFlags::LOG_DIRTY`] (first writes are recorded in the slot's dirty bitmap).
//!
//! Changing slots changes what the GPA table may hold, so every change that could leave stale
//! entries returns a must-use [`SlotUpdate`] saying what to do to the slot's old range:
//! - remove / move: unmap the old range (its entries point at the old backing layout);
//! - dirty logging switched on: clean the range, so each page's next store faults and is logged;
//! - read-only switched on: write-protect the range.
//!
//! Inserting needs nothing: no entry can exist where no slot was (the fault path only maps
//! inside slots, and removal unmaps). Turning flags off needs nothing either: pages regain write
//! permission or stop being logged through the ordinary fault path.

use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use bitflags::bitflags;

use crate::addr::{Gfn, GfnRange, Gpa, RangeError, PAGE_OFFSET_MASK, PAGE_SHIFT};
use crate::dirty_log::DirtyBitmap;
use crate::flush::FlushToken;
use crate::gpa_table::{GpaTable, GFN_LIMIT};
use crate::table_frames::{OutOfMemory, TableFrames};

/// Most slots a VM may have.
pub const MAX_SLOTS: usize = 256;

bitflags! {
    /// Per-slot flags.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct SlotFlags: u32 {
        /// Guest writes are refused (emulated as MMIO stores); entries are never writable.
        const READ_ONLY = 1 << 0;
        /// First writes to each page are recorded in the slot's dirty bitmap.
        const LOG_DIRTY = 1 << 1;
    }
}

/// Names a slot for its whole life (ids are never reused within one [`Memslots`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotId(u32);

impl SlotId {
    /// The raw id.
    pub const fn raw(self) -> u32 {
        self.0
    }
}

impl fmt::Display for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slot {}", self.0)
    }
}

/// Names a host backing object (one VM RAM object of the host memory layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackingId(pub u32);

/// Errors from slot changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemslotError {
    /// A byte range was malformed (unaligned, overflowing or empty).
    Range(RangeError),
    /// The guest range reaches beyond what the GPA table can map.
    BeyondReach,
    /// The backing page range `offset + npages` overflows.
    BackingOverflow,
    /// The guest range overlaps an existing slot.
    Overlap(SlotId),
    /// No slot with this id.
    NoSuchSlot(SlotId),
    /// The slot does not log dirty pages.
    NotLogging(SlotId),
    /// Already [`MAX_SLOTS`] slots.
    TooManySlots,
    /// No memory for a dirty bitmap or the slot list.
    OutOfMemory,
}

impl fmt::Display for MemslotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemslotError::Range(e) => write!(f, "bad slot range: {e}"),
            MemslotError::BeyondReach => {
                f.write_str("slot reaches beyond the GPA table's address range")
            }
            MemslotError::BackingOverflow => f.write_str("backing page range overflows"),
            MemslotError::Overlap(id) => write!(f, "guest range overlaps {id}"),
            MemslotError::NoSuchSlot(id) => write!(f, "no such memslot: {id}"),
            MemslotError::NotLogging(id) => write!(f, "{id} does not log dirty pages"),
            MemslotError::TooManySlots => write!(f, "too many memslots (max {MAX_SLOTS})"),
            MemslotError::OutOfMemory => f.write_str("out of memory for memslot bookkeeping"),
        }
    }
}

impl From<RangeError> for MemslotError {
    fn from(e: RangeError) -> Self {
        MemslotError::Range(e)
    }
}

impl From<OutOfMemory> for MemslotError {
    fn from(_: OutOfMemory) -> Self {
        MemslotError::OutOfMemory
    }
}

/// One memslot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memslot {
    id: SlotId,
    gfns: GfnRange,
    backing: BackingId,
    backing_start: u64,
    flags: SlotFlags,
    pub(crate) dirty: Option<DirtyBitmap>,
}

impl Memslot {
    /// The slot's id.
    pub fn id(&self) -> SlotId {
        self.id
    }

    /// The guest frames it covers.
    pub fn gfns(&self) -> GfnRange {
        self.gfns
    }

    /// The backing object.
    pub fn backing(&self) -> BackingId {
        self.backing
    }

    /// The backing pages it covers (half-open page indexes).
    pub fn backing_pages(&self) -> Range<u64> {
        // Checked at insert: start + npages does not overflow.
        self.backing_start..self.backing_start + self.gfns.npages()
    }

    /// The flags.
    pub fn flags(&self) -> SlotFlags {
        self.flags
    }

    /// Whether guest writes are refused.
    pub fn is_read_only(&self) -> bool {
        self.flags.contains(SlotFlags::READ_ONLY)
    }

    /// Whether dirty logging is on.
    pub fn logs_dirty(&self) -> bool {
        self.flags.contains(SlotFlags::LOG_DIRTY)
    }

    /// The backing page behind `gfn`, if the slot covers it.
    pub fn backing_page_of(&self, gfn: Gfn) -> Option<u64> {
        let offset = gfn.checked_distance_from(self.gfns.start())?;
        (offset < self.gfns.npages()).then(|| self.backing_start + offset)
    }

    /// The guest frame at which backing page `page` appears, if the slot covers it.
    pub fn gfn_of_backing_page(&self, page: u64) -> Option<Gfn> {
        let offset = page.checked_sub(self.backing_start)?;
        (offset < self.gfns.npages()).then(|| Gfn::new(self.gfns.start().raw() + offset))
    }

    /// The dirty bitmap (indexed by page offset in the slot), while logging.
    pub fn dirty_bitmap(&self) -> Option<&DirtyBitmap> {
        self.dirty.as_ref()
    }
}

/// What a slot change requires of the GPA table over the slot's (old) range.
#[must_use = "the GPA table may hold stale entries until this is applied"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotUpdate {
    range: GfnRange,
    unmap: bool,
    wrprotect: bool,
    mkclean: bool,
}

impl SlotUpdate {
    fn new(range: GfnRange) -> Self {
        SlotUpdate {
            range,
            unmap: false,
            wrprotect: false,
            mkclean: false,
        }
    }

    /// The guest range concerned.
    pub fn range(&self) -> GfnRange {
        self.range
    }

    /// Whether the range must be unmapped.
    pub fn needs_unmap(&self) -> bool {
        self.unmap
    }

    /// Whether the range must be write-protected.
    pub fn needs_wrprotect(&self) -> bool {
        self.wrprotect
    }

    /// Whether the range must be cleaned.
    pub fn needs_mkclean(&self) -> bool {
        self.mkclean
    }

    /// Whether nothing is required.
    pub fn is_nothing(&self) -> bool {
        !(self.unmap || self.wrprotect || self.mkclean)
    }

    /// Performs the required table changes; returns the combined flush.
    pub fn apply(self, table: &mut GpaTable, frames: &mut impl TableFrames) -> FlushToken {
        if self.unmap {
            return table.unmap_range(self.range, frames);
        }
        let mut flush = FlushToken::none();
        if self.wrprotect {
            flush.merge_in(table.wrprotect_range(self.range, frames));
        }
        if self.mkclean {
            flush.merge_in(table.mkclean_range(self.range, frames));
        }
        flush
    }
}

/// The VM's set of memslots, kept sorted by guest frame.
#[derive(Debug, Default, Clone)]
pub struct Memslots {
    pub(crate) slots: Vec<Memslot>,
    next_id: u32,
}

impl Memslots {
    /// No slots.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are no slots.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// All slots in guest frame order.
    pub fn iter(&self) -> impl Iterator<Item = &Memslot> + '_ {
        self.slots.iter()
    }

    /// Adds a slot mapping `gfns` onto backing pages `backing_start..` of `backing`.
    ///
    /// Errors: [`MemslotError::BeyondReach`], [`MemslotError::BackingOverflow`],
    /// [`MemslotError::Overlap`], [`MemslotError::TooManySlots`], [`MemslotError::OutOfMemory`]
    /// (dirty bitmap). Nothing changes on error.
    pub fn insert(
        &mut self,
        gfns: GfnRange,
        backing: BackingId,
        backing_start: u64,
        flags: SlotFlags,
    ) -> Result<SlotId, MemslotError> {
        if self.slots.len() >= MAX_SLOTS {
            return Err(MemslotError::TooManySlots);
        }
        Self::check_reach(gfns)?;
        backing_start
            .checked_add(gfns.npages())
            .ok_or(MemslotError::BackingOverflow)?;
        let at = self.place(gfns, None)?;
        let dirty = if flags.contains(SlotFlags::LOG_DIRTY) {
            Some(DirtyBitmap::new(gfns.npages())?)
        } else {
            None
        };
        self.slots
            .try_reserve(1)
            .map_err(|_| MemslotError::OutOfMemory)?;
        let id = SlotId(self.next_id);
        self.next_id += 1;
        self.slots.insert(
            at,
            Memslot {
                id,
                gfns,
                backing,
                backing_start,
                flags,
                dirty,
            },
        );
        Ok(id)
    }

    /// [`Memslots::insert`] from byte values, as a VMM's "set memory region" call gives them:
    /// `size_bytes` of guest physical memory at `start`, backed from byte `backing_offset_bytes`
    /// of `backing`. All three must be page aligned ([`RangeError::Unaligned`]).
    pub fn insert_gpa(
        &mut self,
        start: Gpa,
        size_bytes: u64,
        backing: BackingId,
        backing_offset_bytes: u64,
        flags: SlotFlags,
    ) -> Result<SlotId, MemslotError> {
        let gfns = GfnRange::from_gpa_len(start, size_bytes)?;
        if backing_offset_bytes & PAGE_OFFSET_MASK != 0 {
            return Err(MemslotError::Range(RangeError::Unaligned));
        }
        self.insert(gfns, backing, backing_offset_bytes >> PAGE_SHIFT, flags)
    }

    /// Removes a slot; the update unmaps its range.
    pub fn remove(&mut self, id: SlotId) -> Result<(Memslot, SlotUpdate), MemslotError> {
        let i = self.index_of(id)?;
        let slot = self.slots.remove(i);
        let mut update = SlotUpdate::new(slot.gfns);
        update.unmap = true;
        Ok((slot, update))
    }

    /// Moves a slot to start at `new_start` (same size, backing and flags; the dirty bitmap is
    /// kept since it is indexed by slot offset). The update unmaps the old range.
    pub fn move_to(&mut self, id: SlotId, new_start: Gfn) -> Result<SlotUpdate, MemslotError> {
        let i = self.index_of(id)?;
        let old = self.slots[i].gfns;
        let new = GfnRange::from_start_len(new_start, old.npages())?;
        Self::check_reach(new)?;
        self.place(new, Some(id))?;
        let mut slot = self.slots.remove(i);
        slot.gfns = new;
        let at = self.slots.partition_point(|s| s.gfns.start() < new.start());
        self.slots.insert(at, slot);
        let mut update = SlotUpdate::new(old);
        update.unmap = true;
        Ok(update)
    }

    /// Replaces a slot's flags. Switching logging on starts an empty bitmap and asks to clean the
    /// range; switching read-only on asks to write-protect it; switching logging off drops the
    /// bitmap.
    pub fn set_flags(&mut self, id: SlotId, flags: SlotFlags) -> Result<SlotUpdate, MemslotError> {
        let i = self.index_of(id)?;
        let slot = &mut self.slots[i];
        let old = slot.flags;
        let mut update = SlotUpdate::new(slot.gfns);
        let logging_on =
            flags.contains(SlotFlags::LOG_DIRTY) && !old.contains(SlotFlags::LOG_DIRTY);
        // Allocate before changing anything, so failure leaves the slot as it was.
        let bitmap = if logging_on {
            Some(DirtyBitmap::new(slot.gfns.npages())?)
        } else {
            None
        };
        if logging_on {
            slot.dirty = bitmap;
            update.mkclean = true;
        }
        if !flags.contains(SlotFlags::LOG_DIRTY) {
            slot.dirty = None;
        }
        // Independent of the logging change (the Linux else-if mistake).
        if flags.contains(SlotFlags::READ_ONLY) && !old.contains(SlotFlags::READ_ONLY) {
            update.wrprotect = true;
        }
        slot.flags = flags;
        Ok(update)
    }

    /// The slot with this id.
    pub fn get(&self, id: SlotId) -> Option<&Memslot> {
        self.slots.iter().find(|s| s.id == id)
    }

    /// The slot covering `gfn`.
    pub fn find(&self, gfn: Gfn) -> Option<&Memslot> {
        let i = self.slots.partition_point(|s| s.gfns.end() <= gfn);
        self.slots.get(i).filter(|s| s.gfns.contains(gfn))
    }

    /// Every place backing pages `pages` (half-open) of `backing` appear in guest physical
    /// memory: `(slot, guest frames)` for each slot mapping part of them.
    pub fn find_by_backing(
        &self,
        backing: BackingId,
        pages: Range<u64>,
    ) -> impl Iterator<Item = (SlotId, GfnRange)> + '_ {
        self.slots.iter().filter_map(move |s| {
            if s.backing != backing {
                return None;
            }
            let have = s.backing_pages();
            let start = have.start.max(pages.start);
            let end = have.end.min(pages.end);
            if start >= end {
                return None;
            }
            let first = s.gfn_of_backing_page(start)?;
            let range = GfnRange::from_start_len(first, end - start).ok()?;
            Some((s.id, range))
        })
    }

    /// Records a write to `gfn` in its slot's dirty bitmap. Returns whether the slot logs dirty
    /// pages (false also when no slot covers `gfn`).
    pub fn mark_dirty(&mut self, gfn: Gfn) -> bool {
        let i = self.slots.partition_point(|s| s.gfns.end() <= gfn);
        match self.slots.get_mut(i) {
            Some(slot) if slot.gfns.contains(gfn) => match slot.dirty.as_mut() {
                Some(bitmap) => {
                    let offset = gfn.raw() - slot.gfns.start().raw();
                    bitmap.mark(offset);
                    true
                }
                None => false,
            },
            _ => false,
        }
    }

    pub(crate) fn index_of(&self, id: SlotId) -> Result<usize, MemslotError> {
        self.slots
            .iter()
            .position(|s| s.id == id)
            .ok_or(MemslotError::NoSuchSlot(id))
    }

    fn check_reach(gfns: GfnRange) -> Result<(), MemslotError> {
        if gfns.end() > GFN_LIMIT {
            return Err(MemslotError::BeyondReach);
        }
        Ok(())
    }

    /// Where `gfns` would go in the sorted list, or the slot it overlaps (ignoring `except`).
    fn place(&self, gfns: GfnRange, except: Option<SlotId>) -> Result<usize, MemslotError> {
        if let Some(s) = self
            .slots
            .iter()
            .find(|s| Some(s.id) != except && s.gfns.overlaps(&gfns))
        {
            return Err(MemslotError::Overlap(s.id));
        }
        Ok(self
            .slots
            .partition_point(|s| s.gfns.start() < gfns.start()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{Hfn, PAGE_SIZE};
    use crate::flush::FlushScope;
    use crate::pte::{Cca, GpaPte};
    use crate::table_frames::ArenaTableFrames;

    fn r(a: u64, b: u64) -> GfnRange {
        GfnRange::new(Gfn::new(a), Gfn::new(b)).unwrap()
    }

    const B: BackingId = BackingId(1);

    #[test]
    fn insert_find_and_order() {
        let mut m = Memslots::new();
        let hi = m.insert(r(100, 200), B, 0, SlotFlags::empty()).unwrap();
        let lo = m.insert(r(0, 16), B, 500, SlotFlags::READ_ONLY).unwrap();
        assert_ne!(hi, lo);
        assert_eq!(m.len(), 2);
        let order: Vec<_> = m.iter().map(Memslot::id).collect();
        assert_eq!(order, [lo, hi]);
        assert_eq!(m.find(Gfn::new(0)).map(Memslot::id), Some(lo));
        assert_eq!(m.find(Gfn::new(15)).map(Memslot::id), Some(lo));
        assert!(m.find(Gfn::new(16)).is_none(), "end is exclusive");
        assert!(m.find(Gfn::new(99)).is_none());
        assert_eq!(m.find(Gfn::new(100)).map(Memslot::id), Some(hi));
        assert_eq!(m.find(Gfn::new(199)).map(Memslot::id), Some(hi));
        assert!(m.find(Gfn::new(200)).is_none());
        let s = m.get(lo).unwrap();
        assert!(s.is_read_only() && !s.logs_dirty());
        assert_eq!(s.backing_page_of(Gfn::new(3)), Some(503));
        assert_eq!(s.backing_page_of(Gfn::new(16)), None);
        assert_eq!(s.gfn_of_backing_page(515), Some(Gfn::new(15)));
        assert_eq!(s.gfn_of_backing_page(516), None);
        assert_eq!(s.gfn_of_backing_page(499), None);
    }

    #[test]
    fn bad_input_is_rejected() {
        let mut m = Memslots::new();
        let a = m.insert(r(10, 20), B, 0, SlotFlags::empty()).unwrap();
        assert_eq!(
            m.insert(r(19, 30), B, 0, SlotFlags::empty()),
            Err(MemslotError::Overlap(a))
        );
        assert_eq!(
            m.insert(r(0, 11), B, 0, SlotFlags::empty()),
            Err(MemslotError::Overlap(a))
        );
        assert_eq!(
            m.insert(r(0, 100), B, 0, SlotFlags::empty()),
            Err(MemslotError::Overlap(a))
        );
        // Touching ranges are fine.
        m.insert(r(0, 10), B, 0, SlotFlags::empty()).unwrap();
        m.insert(r(20, 21), B, 0, SlotFlags::empty()).unwrap();
        assert_eq!(
            m.insert(r(30, GFN_LIMIT.raw() + 1), B, 0, SlotFlags::empty()),
            Err(MemslotError::BeyondReach)
        );
        assert_eq!(
            m.insert(r(30, 40), B, u64::MAX - 5, SlotFlags::empty()),
            Err(MemslotError::BackingOverflow)
        );
        let missing = SlotId(999);
        assert_eq!(
            m.remove(missing).err(),
            Some(MemslotError::NoSuchSlot(missing))
        );
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn byte_level_insert_checks_alignment() {
        let mut m = Memslots::new();
        let ps = PAGE_SIZE;
        let id = m
            .insert_gpa(Gpa::new(16 * ps), 4 * ps, B, 2 * ps, SlotFlags::empty())
            .unwrap();
        let s = m.get(id).unwrap();
        assert_eq!(s.gfns(), r(16, 20));
        assert_eq!(s.backing_pages(), 2..6);
        let unaligned = Err(MemslotError::Range(RangeError::Unaligned));
        let e = SlotFlags::empty();
        assert_eq!(m.insert_gpa(Gpa::new(ps + 1), ps, B, 0, e), unaligned);
        assert_eq!(m.insert_gpa(Gpa::new(ps), ps / 2, B, 0, e), unaligned);
        assert_eq!(m.insert_gpa(Gpa::new(ps), ps, B, 8, e), unaligned);
        assert_eq!(
            m.insert_gpa(Gpa::new(ps), 0, B, 0, e),
            Err(MemslotError::Range(RangeError::Empty))
        );
        assert_eq!(
            m.insert_gpa(Gpa::new(!(ps - 1)), 2 * ps, B, 0, e),
            Err(MemslotError::Range(RangeError::Overflow))
        );
        assert_eq!(
            m.insert_gpa(Gpa::new(17 * ps), ps, B, 0, e),
            Err(MemslotError::Overlap(id))
        );
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn slot_limit() {
        let mut m = Memslots::new();
        for i in 0..MAX_SLOTS as u64 {
            m.insert(r(i, i + 1), B, 0, SlotFlags::empty()).unwrap();
        }
        assert_eq!(
            m.insert(r(10_000, 10_001), B, 0, SlotFlags::empty()),
            Err(MemslotError::TooManySlots)
        );
    }

    #[test]
    fn remove_and_move_unmap_the_old_range() {
        let mut frames = ArenaTableFrames::new();
        let mut table = GpaTable::new(&mut frames).unwrap();
        let mut m = Memslots::new();
        let a = m.insert(r(0, 8), B, 0, SlotFlags::empty()).unwrap();
        let b = m.insert(r(8, 16), B, 8, SlotFlags::empty()).unwrap();
        for g in 0..16 {
            let pte = GpaPte::present(Hfn::new(g), Cca::CACHED_NONCOHERENT)
                .unwrap()
                .mkyoung();
            table.set(Gfn::new(g), pte, &mut frames).unwrap().defer();
        }
        // Moving onto the other slot fails and changes nothing.
        assert_eq!(m.move_to(a, Gfn::new(4)), Err(MemslotError::Overlap(b)));
        // Moving within its own old range is allowed.
        let up = m.move_to(a, Gfn::new(100)).unwrap();
        assert!(up.needs_unmap());
        assert_eq!(up.range(), r(0, 8));
        assert_eq!(
            up.apply(&mut table, &mut frames).defer(),
            FlushScope::Gfns(r(0, 8))
        );
        assert_eq!(table.lookup(Gfn::new(7), &frames), None);
        assert!(table.lookup(Gfn::new(8), &frames).is_some());
        assert_eq!(m.find(Gfn::new(100)).map(Memslot::id), Some(a));
        assert!(m.find(Gfn::new(0)).is_none());
        let up = m.move_to(a, Gfn::new(98)).unwrap();
        up.apply(&mut table, &mut frames).defer();
        assert_eq!(m.get(a).unwrap().gfns(), r(98, 106));
        assert_eq!(
            m.move_to(a, Gfn::new(GFN_LIMIT.raw() - 4)),
            Err(MemslotError::BeyondReach)
        );
        assert_eq!(
            m.move_to(a, Gfn::new(u64::MAX - 2)),
            Err(MemslotError::Range(RangeError::Overflow))
        );
        let (slot, up) = m.remove(b).unwrap();
        assert_eq!(slot.gfns(), r(8, 16));
        assert_eq!(
            up.apply(&mut table, &mut frames).defer(),
            FlushScope::Gfns(r(8, 16))
        );
        assert_eq!(table.present_count(), 0);
        assert!(m.find(Gfn::new(8)).is_none());
        table.check_invariants(&frames).unwrap();
        let _ = table.destroy(&mut frames).defer();
        assert_eq!(frames.live_tables(), 0);
    }

    #[test]
    fn flag_changes_ask_for_the_right_table_work() {
        let mut m = Memslots::new();
        let a = m.insert(r(0, 4), B, 0, SlotFlags::empty()).unwrap();
        let up = m.set_flags(a, SlotFlags::LOG_DIRTY).unwrap();
        assert!(up.needs_mkclean() && !up.needs_wrprotect() && !up.needs_unmap());
        assert!(m.get(a).unwrap().dirty_bitmap().is_some());
        // Already logging: nothing more.
        assert!(m.set_flags(a, SlotFlags::LOG_DIRTY).unwrap().is_nothing());
        // Read-only on while logging: write-protect, independently of logging.
        let up = m
            .set_flags(a, SlotFlags::LOG_DIRTY | SlotFlags::READ_ONLY)
            .unwrap();
        assert!(up.needs_wrprotect() && !up.needs_mkclean());
        // Both switched on at once: both actions.
        let b = m.insert(r(10, 12), B, 0, SlotFlags::empty()).unwrap();
        let up = m
            .set_flags(b, SlotFlags::LOG_DIRTY | SlotFlags::READ_ONLY)
            .unwrap();
        assert!(up.needs_wrprotect() && up.needs_mkclean());
        // Turning things off needs nothing, and drops the bitmap.
        assert!(m.set_flags(a, SlotFlags::empty()).unwrap().is_nothing());
        assert!(m.get(a).unwrap().dirty_bitmap().is_none());
    }

    #[test]
    fn read_only_and_logged_slot_ends_write_protected_and_clean() {
        // The Linux else-if left such pages writable; here both rules apply.
        let mut frames = ArenaTableFrames::new();
        let mut table = GpaTable::new(&mut frames).unwrap();
        let mut m = Memslots::new();
        let a = m.insert(r(0, 2), B, 0, SlotFlags::empty()).unwrap();
        let pte = GpaPte::present(Hfn::new(5), Cca::CACHED_NONCOHERENT)
            .unwrap()
            .mkwrite()
            .mkyoung()
            .mkdirty();
        table.set(Gfn::new(1), pte, &mut frames).unwrap().defer();
        let up = m
            .set_flags(a, SlotFlags::LOG_DIRTY | SlotFlags::READ_ONLY)
            .unwrap();
        let tok = up.apply(&mut table, &mut frames);
        assert_eq!(tok.defer(), FlushScope::Gfns(r(1, 2)));
        let now = table.lookup(Gfn::new(1), &frames).unwrap();
        assert!(!now.is_writable() && !now.is_dirty());
        assert_eq!(now.entrylo() & crate::pte::entrylo::D, 0);
        let _ = table.destroy(&mut frames).defer();
    }

    #[test]
    fn lookup_by_backing_range() {
        let mut m = Memslots::new();
        // Backing 1 pages 0..10 at gfn 100, pages 5..15 again at gfn 300 (alias);
        // backing 2 pages 0..10 at gfn 500.
        let a = m.insert(r(100, 110), B, 0, SlotFlags::empty()).unwrap();
        let b = m.insert(r(300, 310), B, 5, SlotFlags::empty()).unwrap();
        let c = m
            .insert(r(500, 510), BackingId(2), 0, SlotFlags::empty())
            .unwrap();
        let hits: Vec<_> = m.find_by_backing(B, 8..12).collect();
        assert_eq!(hits, [(a, r(108, 110)), (b, r(303, 307))]);
        let hits: Vec<_> = m.find_by_backing(B, 10..15).collect();
        assert_eq!(hits, [(b, r(305, 310))], "page 10 is past slot a's end");
        let hits: Vec<_> = m.find_by_backing(B, 15..20).collect();
        assert!(hits.is_empty());
        let hits: Vec<_> = m.find_by_backing(B, 3..3).collect();
        assert!(hits.is_empty(), "empty backing range hits nothing");
        let hits: Vec<_> = m.find_by_backing(BackingId(2), 0..1).collect();
        assert_eq!(hits, [(c, r(500, 501))]);
    }

    #[test]
    fn mark_dirty_only_in_logged_slots() {
        let mut m = Memslots::new();
        let a = m.insert(r(0, 100), B, 0, SlotFlags::LOG_DIRTY).unwrap();
        m.insert(r(100, 200), B, 0, SlotFlags::empty()).unwrap();
        assert!(m.mark_dirty(Gfn::new(99)));
        assert!(m.mark_dirty(Gfn::new(0)));
        assert!(!m.mark_dirty(Gfn::new(100)));
        assert!(!m.mark_dirty(Gfn::new(1000)));
        let bm = m.get(a).unwrap().dirty_bitmap().unwrap();
        assert!(bm.is_set(0) && bm.is_set(99) && !bm.is_set(50));
        assert_eq!(bm.count(), 2);
    }
}
