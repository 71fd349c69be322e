//! Where GPA-table pages come from: the only place a host frame number becomes memory.
//!
//! The GPA table links child tables by host frame number, so the firmware's TLB-refill code can
//! walk it physically. Turning an [`Hfn`] into a `&[u64; N]` needs a physical-to-virtual step
//! (KSEG0/xkphys, `unsafe`), which lives in the firmware's [`TableFrames`] implementation; this
//! crate stays `forbid(unsafe_code)`. Host tests use [`ArenaTableFrames`], a safe arena with
//! failure injection so every allocation point can be made to fail.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;

use crate::addr::{Hfn, PAGE_SIZE};

/// Entries in one table page (8-byte entries filling one page).
pub const TABLE_ENTRIES: usize = (PAGE_SIZE / 8) as usize;

/// One table page.
pub type TablePage = [u64; TABLE_ENTRIES];

/// No frame was available for a new table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfMemory;

impl fmt::Display for OutOfMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("out of memory for a page-table frame")
    }
}

/// A source of page-table frames.
///
/// Contract: `alloc_table` returns a frame whose contents are all zero and that nothing else
/// uses until `free_table`; `table`/`table_mut` are only called with frames currently allocated
/// from this source (anything else is a broken invariant and may panic).
pub trait TableFrames {
    /// A fresh all-zero table frame, or [`OutOfMemory`].
    fn alloc_table(&mut self) -> Result<Hfn, OutOfMemory>;
    /// Returns a frame obtained from `alloc_table`.
    fn free_table(&mut self, hfn: Hfn);
    /// The contents of an allocated table frame.
    fn table(&self, hfn: Hfn) -> &TablePage;
    /// The contents of an allocated table frame, for writing.
    fn table_mut(&mut self, hfn: Hfn) -> &mut TablePage;
}

/// Host-side [`TableFrames`]: table pages in a `Vec`, frame numbers starting at a base.
///
/// Failure injection: [`ArenaTableFrames::fail_allocation`] makes the allocation with a given
/// sequence number fail, [`ArenaTableFrames::set_limit`] caps the number of live tables.
#[derive(Debug)]
pub struct ArenaTableFrames {
    base: Hfn,
    pages: Vec<Option<Box<TablePage>>>,
    free_slots: Vec<usize>,
    live: usize,
    allocations: u64,
    fail_at: Option<u64>,
    limit: Option<usize>,
}

impl ArenaTableFrames {
    /// An empty arena handing out frame numbers from `0x100` up (not from zero, so a stray zero
    /// frame number in a table is never mistaken for a real table).
    pub fn new() -> Self {
        Self::with_base(Hfn::new(0x100))
    }

    /// An empty arena handing out frame numbers from `base` up.
    pub fn with_base(base: Hfn) -> Self {
        ArenaTableFrames {
            base,
            pages: Vec::new(),
            free_slots: Vec::new(),
            live: 0,
            allocations: 0,
            fail_at: None,
            limit: None,
        }
    }

    /// Number of tables currently allocated.
    pub fn live_tables(&self) -> usize {
        self.live
    }

    /// Number of allocation attempts so far (including failed ones); the sequence number the
    /// next attempt will get.
    pub fn allocation_attempts(&self) -> u64 {
        self.allocations
    }

    /// Makes allocation attempt number `seq` (as counted by `allocation_attempts`) fail;
    /// `None` disarms.
    pub fn fail_allocation(&mut self, seq: Option<u64>) {
        self.fail_at = seq;
    }

    /// Caps the number of live tables (`None`: unlimited).
    pub fn set_limit(&mut self, limit: Option<usize>) {
        self.limit = limit;
    }

    /// Whether `hfn` is a currently allocated table.
    pub fn is_live(&self, hfn: Hfn) -> bool {
        self.slot(hfn)
            .is_some_and(|i| self.pages.get(i).is_some_and(Option::is_some))
    }

    fn slot(&self, hfn: Hfn) -> Option<usize> {
        let off = hfn.checked_distance_from(self.base)?;
        usize::try_from(off).ok()
    }

    fn live_slot(&self, hfn: Hfn) -> usize {
        match self.slot(hfn) {
            Some(i) if self.pages.get(i).is_some_and(Option::is_some) => i,
            _ => panic!("{hfn:?} is not a live table frame of this arena"),
        }
    }
}

impl Default for ArenaTableFrames {
    fn default() -> Self {
        Self::new()
    }
}

impl TableFrames for ArenaTableFrames {
    fn alloc_table(&mut self) -> Result<Hfn, OutOfMemory> {
        let seq = self.allocations;
        self.allocations += 1;
        if self.fail_at == Some(seq) || self.limit.is_some_and(|l| self.live >= l) {
            return Err(OutOfMemory);
        }
        let page = Box::new([0u64; TABLE_ENTRIES]);
        let slot = match self.free_slots.pop() {
            Some(i) => {
                self.pages[i] = Some(page);
                i
            }
            None => {
                self.pages.push(Some(page));
                self.pages.len() - 1
            }
        };
        self.live += 1;
        // The slot index is below the Vec length, so it fits in u64 and above the base.
        Ok(self
            .base
            .checked_add(slot as u64)
            .expect("arena frame numbers overflow"))
    }

    fn free_table(&mut self, hfn: Hfn) {
        let i = self.live_slot(hfn);
        self.pages[i] = None;
        self.free_slots.push(i);
        self.live -= 1;
    }

    fn table(&self, hfn: Hfn) -> &TablePage {
        let i = self.live_slot(hfn);
        self.pages[i].as_deref().expect("live slot")
    }

    fn table_mut(&mut self, hfn: Hfn) -> &mut TablePage {
        let i = self.live_slot(hfn);
        self.pages[i].as_deref_mut().expect("live slot")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_one_page_of_entries() {
        assert_eq!(TABLE_ENTRIES * 8, PAGE_SIZE as usize);
    }

    #[test]
    fn alloc_gives_zeroed_distinct_frames_and_reuses_freed() {
        let mut a = ArenaTableFrames::new();
        let t1 = a.alloc_table().unwrap();
        let t2 = a.alloc_table().unwrap();
        assert_ne!(t1, t2);
        assert_eq!(a.live_tables(), 2);
        a.table_mut(t1)[5] = 42;
        assert_eq!(a.table(t1)[5], 42);
        assert!(a.table(t2).iter().all(|&e| e == 0));
        a.free_table(t1);
        assert!(!a.is_live(t1));
        assert_eq!(a.live_tables(), 1);
        let t3 = a.alloc_table().unwrap();
        assert_eq!(t3, t1, "freed frame is reused");
        assert!(
            a.table(t3).iter().all(|&e| e == 0),
            "reused frame is zeroed"
        );
    }

    #[test]
    fn injected_failure_hits_exactly_one_attempt() {
        let mut a = ArenaTableFrames::new();
        a.fail_allocation(Some(1));
        assert!(a.alloc_table().is_ok());
        assert_eq!(a.alloc_table(), Err(OutOfMemory));
        assert!(a.alloc_table().is_ok());
        assert_eq!(a.live_tables(), 2);
        assert_eq!(a.allocation_attempts(), 3);
    }

    #[test]
    fn limit_caps_live_tables() {
        let mut a = ArenaTableFrames::new();
        a.set_limit(Some(1));
        let t = a.alloc_table().unwrap();
        assert_eq!(a.alloc_table(), Err(OutOfMemory));
        a.free_table(t);
        assert!(a.alloc_table().is_ok());
    }

    #[test]
    #[should_panic(expected = "not a live table frame")]
    fn double_free_is_caught() {
        let mut a = ArenaTableFrames::new();
        let t = a.alloc_table().unwrap();
        a.free_table(t);
        a.free_table(t);
    }

    #[test]
    #[should_panic(expected = "not a live table frame")]
    fn foreign_frame_is_caught() {
        let a = ArenaTableFrames::new();
        let _ = a.table(Hfn::new(1));
    }
}
