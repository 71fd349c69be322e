//! Dirty logging: a bitmap per logged memslot, and get-and-clear that re-arms tracking.
//!
//! While a slot logs dirty pages its entries start clean (the slot update cleans them), so the
//! first guest store to each page raises TLB Modified; the fault path makes the entry dirty and
//! sets the page's bit with [`Memslots::mark_dirty`]. [`Memslots::get_and_clear_dirty`] hands
//! out the bits set so far, clears them, and cleans exactly those pages in the GPA table so
//! their next store is logged again.
//!
//! Ordering: the caller must apply the returned flush before copying the reported pages. A
//! store that hits a still-cached D=1 translation between the snapshot and the flush lands in
//! a page that is already in this snapshot, so the copy made after the flush sees it; every
//! store after the flush faults and is logged in the next round.

use alloc::vec::Vec;

use crate::addr::{Gfn, GfnRange};
use crate::flush::FlushToken;
use crate::gpa_table::GpaTable;
use crate::memslot::{MemslotError, Memslots, SlotId};
use crate::table_frames::{OutOfMemory, TableFrames};

const WORD_BITS: u64 = u64::BITS as u64;

/// One bit per page of a slot, indexed by page offset in the slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyBitmap {
    npages: u64,
    words: Vec<u64>,
}

impl DirtyBitmap {
    /// An all-clear bitmap for `npages` pages; fails if the words cannot be allocated.
    pub fn new(npages: u64) -> Result<Self, OutOfMemory> {
        let nwords = usize::try_from(npages.div_ceil(WORD_BITS)).map_err(|_| OutOfMemory)?;
        let mut words = Vec::new();
        words.try_reserve_exact(nwords).map_err(|_| OutOfMemory)?;
        words.resize(nwords, 0);
        Ok(DirtyBitmap { npages, words })
    }

    /// Number of pages covered.
    pub fn npages(&self) -> u64 {
        self.npages
    }

    /// Sets the bit of page `offset`; returns whether it was newly set.
    /// Panics if `offset` is out of range (callers index by a gfn already found in the slot).
    pub fn mark(&mut self, offset: u64) -> bool {
        assert!(offset < self.npages, "dirty bit {offset} beyond the slot");
        let (word, bit) = Self::split(offset);
        let was = self.words[word] & bit != 0;
        self.words[word] |= bit;
        !was
    }

    /// Whether page `offset` is marked (false beyond the end).
    pub fn is_set(&self, offset: u64) -> bool {
        if offset >= self.npages {
            return false;
        }
        let (word, bit) = Self::split(offset);
        self.words[word] & bit != 0
    }

    /// Number of marked pages.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// The raw words (bit `i % 64` of word `i / 64` is page `i`), e.g. for copying to a user.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Page offsets of the marked pages, ascending.
    pub fn iter_set(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let base = i as u64 * WORD_BITS;
            let mut rest = w;
            core::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let bit = u64::from(rest.trailing_zeros());
                rest &= rest - 1;
                Some(base + bit)
            })
        })
    }

    /// Maximal runs of marked pages as half-open offset ranges, ascending.
    pub fn runs(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut set = self.iter_set().peekable();
        core::iter::from_fn(move || {
            let start = set.next()?;
            let mut end = start + 1;
            while set.peek() == Some(&end) {
                set.next();
                end += 1;
            }
            Some((start, end))
        })
    }

    /// Copies the bits out and clears them.
    pub fn take(&mut self) -> Result<DirtyBitmap, OutOfMemory> {
        let mut copy = DirtyBitmap::new(self.npages)?;
        core::mem::swap(&mut copy.words, &mut self.words);
        Ok(copy)
    }

    fn split(offset: u64) -> (usize, u64) {
        // offset < npages and words holds npages bits, so the word index fits in usize.
        ((offset / WORD_BITS) as usize, 1 << (offset % WORD_BITS))
    }
}

/// The dirty pages of one slot since the previous get-and-clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtySnapshot {
    /// The slot's first guest frame when the snapshot was taken.
    pub base: Gfn,
    /// The bits, by page offset in the slot.
    pub bits: DirtyBitmap,
}

impl DirtySnapshot {
    /// The dirty guest frames, ascending.
    pub fn gfns(&self) -> impl Iterator<Item = Gfn> + '_ {
        let base = self.base.raw();
        self.bits.iter_set().map(move |o| Gfn::new(base + o))
    }
}

impl Memslots {
    /// Takes and clears `id`'s dirty bits and cleans the reported pages in `table`, so their
    /// next store faults and is logged again. Apply the returned flush before reading the
    /// reported pages.
    ///
    /// Errors: [`MemslotError::NoSuchSlot`], [`MemslotError::NotLogging`],
    /// [`MemslotError::OutOfMemory`] (nothing changed).
    pub fn get_and_clear_dirty(
        &mut self,
        id: SlotId,
        table: &mut GpaTable,
        frames: &mut impl TableFrames,
    ) -> Result<(DirtySnapshot, FlushToken), MemslotError> {
        let i = self.index_of(id)?;
        let slot = &mut self.slots[i];
        let base = slot.gfns().start();
        let bitmap = slot.dirty.as_mut().ok_or(MemslotError::NotLogging(id))?;
        let bits = bitmap.take()?;
        let mut flush = FlushToken::none();
        for (start, end) in bits.runs() {
            // Offsets lie inside the slot, whose range was checked not to overflow.
            let run = GfnRange::new(Gfn::new(base.raw() + start), Gfn::new(base.raw() + end))
                .expect("dirty run inside the slot");
            flush.merge_in(table.mkclean_range(run, frames));
        }
        Ok((DirtySnapshot { base, bits }, flush))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Hfn;
    use crate::flush::FlushScope;
    use crate::memslot::{BackingId, SlotFlags};
    use crate::pte::{Cca, GpaPte};
    use crate::table_frames::ArenaTableFrames;

    #[test]
    fn bitmap_basics_and_edges() {
        let mut b = DirtyBitmap::new(130).unwrap();
        assert_eq!(b.words().len(), 3);
        assert!(b.mark(0));
        assert!(!b.mark(0), "second mark is not new");
        assert!(b.mark(63));
        assert!(b.mark(64));
        assert!(b.mark(129));
        assert!(!b.is_set(130));
        assert_eq!(b.count(), 4);
        assert_eq!(b.iter_set().collect::<Vec<_>>(), [0, 63, 64, 129]);
        assert_eq!(b.runs().collect::<Vec<_>>(), [(0, 1), (63, 65), (129, 130)]);
        let snap = b.take().unwrap();
        assert_eq!(snap.count(), 4);
        assert_eq!(b.count(), 0);
        assert_eq!(b.npages(), 130);
    }

    #[test]
    fn impossible_bitmap_is_out_of_memory_not_a_panic() {
        assert_eq!(DirtyBitmap::new(u64::MAX), Err(OutOfMemory));
    }

    #[test]
    #[should_panic(expected = "beyond the slot")]
    fn marking_past_the_end_is_a_bug() {
        DirtyBitmap::new(10).unwrap().mark(10);
    }

    #[test]
    fn get_and_clear_reports_and_recleans() {
        let mut frames = ArenaTableFrames::new();
        let mut table = GpaTable::new(&mut frames).unwrap();
        let mut slots = Memslots::new();
        let id = slots
            .insert(
                GfnRange::new(Gfn::new(1000), Gfn::new(1200)).unwrap(),
                BackingId(0),
                0,
                SlotFlags::LOG_DIRTY,
            )
            .unwrap();
        let writable = |g: u64| {
            GpaPte::present(Hfn::new(g), Cca::CACHED_NONCOHERENT)
                .unwrap()
                .mkwrite()
                .mkyoung()
        };
        // Map the whole slot writable-but-clean, then "write" a few pages as the fast path does.
        for g in 1000..1200 {
            table
                .set(Gfn::new(g), writable(g), &mut frames)
                .unwrap()
                .defer();
        }
        for g in [1003, 1004, 1005, 1100, 1199] {
            let u = table
                .update(Gfn::new(g), &mut frames, GpaPte::mkdirty)
                .unwrap();
            assert!(u.flush.is_empty());
            assert!(slots.mark_dirty(Gfn::new(g)));
        }
        let (snap, flush) = slots
            .get_and_clear_dirty(id, &mut table, &mut frames)
            .unwrap();
        let gfns: Vec<_> = snap.gfns().map(Gfn::raw).collect();
        assert_eq!(gfns, [1003, 1004, 1005, 1100, 1199]);
        assert_eq!(
            flush.defer(),
            FlushScope::Gfns(GfnRange::new(Gfn::new(1003), Gfn::new(1200)).unwrap())
        );
        for g in 1000..1200 {
            let pte = table.lookup(Gfn::new(g), &frames).unwrap();
            assert!(!pte.is_dirty(), "page {g} clean again");
            assert!(pte.is_writable());
        }
        // Nothing new: empty snapshot, no flush.
        let (snap, flush) = slots
            .get_and_clear_dirty(id, &mut table, &mut frames)
            .unwrap();
        assert_eq!(snap.bits.count(), 0);
        assert!(flush.is_empty());
        let _ = table.destroy(&mut frames).defer();
    }

    #[test]
    fn get_and_clear_errors() {
        let mut frames = ArenaTableFrames::new();
        let mut table = GpaTable::new(&mut frames).unwrap();
        let mut slots = Memslots::new();
        let id = slots
            .insert(
                GfnRange::new(Gfn::new(0), Gfn::new(8)).unwrap(),
                BackingId(0),
                0,
                SlotFlags::empty(),
            )
            .unwrap();
        assert_eq!(
            slots.get_and_clear_dirty(id, &mut table, &mut frames).err(),
            Some(MemslotError::NotLogging(id))
        );
        slots
            .remove(id)
            .unwrap()
            .1
            .apply(&mut table, &mut frames)
            .defer();
        assert_eq!(
            slots.get_and_clear_dirty(id, &mut table, &mut frames).err(),
            Some(MemslotError::NoSuchSlot(id))
        );
        let _ = table.destroy(&mut frames).defer();
    }
}
