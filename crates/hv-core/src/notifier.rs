//! The MMU-notifier protocol: how changes to host backing reach a VM's GPA table.
//!
//! The host memory layer ([`crate::host_mem`]) calls an [`MmuNotifier`] around every change to
//! a backing entry, the way Linux's mm calls KVM's MMU notifiers around changes to a process's
//! page tables. The VM implements it ([`crate::fault::Vm`]) with the table-side hooks here:
//!
//! - `invalidate_range_start`/`_end` bracket a change that removes frames (swap-out, balloon,
//!   teardown). Start raises the in-progress count and unmaps the GPA range; end bumps the
//!   sequence number and then drops the count.
//! - `set_entry` replaces the frame behind one page (a merge onto a shared frame, a
//!   copy-on-write installing a private copy), keeping the guest's young/dirty state.
//! - `clear_young` ages a range and reports whether any page was young; `test_young` reports
//!   whether one page is young without changing it.
//!
//! # Sequence/count protocol
//!
//! [`NotifierSeq`] holds the two counters. Both are written only under the VM's MMU lock. The
//! fault slow path snapshots `seq` *without* the lock (Acquire), resolves the backing page
//! outside the lock, then retakes the lock and retries if `count != 0` (an invalidation is
//! between start and end: the host may be about to drop the frame it just resolved) or if `seq`
//! moved (an invalidation or `set_entry` completed since the snapshot, so the resolved frame
//! may be stale). Writers bump `seq` *before* dropping `count` (both Release), so a reader
//! under the lock can never see the count back at zero without the new sequence number.
//! Any invalidation that starts after the fault installs its entry finds the entry in the table
//! (same lock) and removes it before the host frees anything.

use core::ops::Range;

use crate::flush::FlushToken;
use crate::gpa_table::GpaTable;
use crate::memslot::{BackingId, Memslots};
use crate::pte::GpaPte;
use crate::sync::{AtomicU64, Ordering};
use crate::table_frames::TableFrames;

use crate::addr::Hfn;

/// The host's new entry for one backing page, as passed to [`MmuNotifier::set_entry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostEntry {
    /// The frame now backing the page.
    pub hfn: Hfn,
    /// Whether the host lets the page be written through this mapping (false for a shared
    /// frame that must be copied on write).
    pub writable: bool,
    /// Whether the host considers the new frame's contents dirty (a fresh copy is).
    pub dirty: bool,
}

/// Receiver of host-memory change notifications; implemented by the VM.
///
/// Every caller holds the host memory layer's lock across a start/end pair, and calls these
/// without holding the VM's MMU lock (lock order: host memory, then MMU).
pub trait MmuNotifier {
    /// `pages` of `backing` are about to change: remove their guest mappings and flush derived
    /// translations everywhere before returning, so the caller may free the old frames.
    fn invalidate_range_start(&self, backing: BackingId, pages: Range<u64>);
    /// The change announced by the matching start is complete.
    fn invalidate_range_end(&self, backing: BackingId, pages: Range<u64>);
    /// The frame behind `page` of `backing` is being replaced by `entry`. When this returns
    /// no CPU uses the old frame through the guest mapping any more.
    fn set_entry(&self, backing: BackingId, page: u64, entry: HostEntry);
    /// Ages `pages` of `backing` (flushing derived translations); returns whether any was
    /// young.
    fn clear_young(&self, backing: BackingId, pages: Range<u64>) -> bool;
    /// Whether `page` of `backing` is young in the guest mapping; changes nothing.
    fn test_young(&self, backing: BackingId, page: u64) -> bool;
}

/// The notifier of host memory that no guest maps: every change has nothing to invalidate and
/// no page is young. For host-side users that run without a VM (tests of the host layer and
/// of the services on it).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoGuestMappings;

impl MmuNotifier for NoGuestMappings {
    fn invalidate_range_start(&self, _: BackingId, _: Range<u64>) {}
    fn invalidate_range_end(&self, _: BackingId, _: Range<u64>) {}
    fn set_entry(&self, _: BackingId, _: u64, _: HostEntry) {}
    fn clear_young(&self, _: BackingId, _: Range<u64>) -> bool {
        false
    }
    fn test_young(&self, _: BackingId, _: u64) -> bool {
        false
    }
}

/// The invalidation sequence number and in-progress count of one VM.
#[derive(Debug)]
pub struct NotifierSeq {
    seq: AtomicU64,
    count: AtomicU64,
}

impl Default for NotifierSeq {
    fn default() -> Self {
        Self::new()
    }
}

impl NotifierSeq {
    /// Sequence 0, nothing in progress.
    pub fn new() -> Self {
        Self {
            seq: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Snapshot of the sequence number, taken by the fault slow path before it resolves the
    /// backing page (no lock needed).
    pub fn snapshot(&self) -> u64 {
        // Acquire: pairs with the Release increments in `end`/`bump`, so reads of host state
        // made after this load cannot be satisfied from before the change that produced the
        // value read. (Our host layer also takes its own lock, which orders them again.)
        self.seq.load(Ordering::Acquire)
    }

    /// Marks an invalidation in progress. Caller must hold the MMU lock.
    pub fn start(&self) {
        // Relaxed: readers of `count` hold the MMU lock, which orders them with us.
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Ends an invalidation: bumps the sequence number, then drops the count. Caller must hold
    /// the MMU lock.
    pub fn end(&self) {
        self.seq.fetch_add(1, Ordering::Release);
        let before = self.count.fetch_sub(1, Ordering::Release);
        assert!(before > 0, "invalidate_range_end without a start");
    }

    /// Bumps the sequence number for a change that is complete at once (`set_entry`, memslot
    /// changes). Caller must hold the MMU lock.
    pub fn bump(&self) {
        self.seq.fetch_add(1, Ordering::Release);
    }

    /// Whether a fault that snapshotted `seq` must retry. Caller must hold the MMU lock.
    pub fn must_retry(&self, snapshot: u64) -> bool {
        // Relaxed is enough: every write happened under the lock we hold.
        self.count.load(Ordering::Relaxed) != 0 || self.seq.load(Ordering::Relaxed) != snapshot
    }

    /// Invalidations currently between start and end.
    pub fn in_progress(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The current sequence number.
    pub fn current(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }
}

/// Unmaps every guest mapping of `pages` of `backing`. Caller must hold the MMU lock.
pub fn unmap_backing(
    table: &mut GpaTable,
    frames: &mut impl TableFrames,
    slots: &Memslots,
    backing: BackingId,
    pages: Range<u64>,
) -> FlushToken {
    let mut flush = FlushToken::none();
    for (_, range) in slots.find_by_backing(backing, pages) {
        flush.merge_in(table.unmap_range(range, frames));
    }
    flush
}

/// The entry `set_entry` installs over a present `old` entry in a slot with the given
/// properties.
///
/// The guest's access state is kept (young stays young, old stays old). Two rules are applied
/// *independently* (Linux chained them with `else if`, which left read-only logged slots
/// writable): a page the guest has not dirtied since it was last cleaned stays clean when the
/// slot logs dirty pages, so its next guest store still faults and is logged; and nothing in
/// a read-only slot is writable.
pub fn set_entry_pte(
    old: GpaPte,
    entry: HostEntry,
    logs_dirty: bool,
    read_only: bool,
) -> Option<GpaPte> {
    let mut new = old.with_hfn(entry.hfn).ok()?;
    new = if entry.writable {
        new.mkwrite()
    } else {
        new.wrprotect()
    };
    if entry.dirty {
        new = new.mkdirty();
    }
    if logs_dirty && !old.is_dirty() {
        new = new.mkclean();
    }
    if read_only {
        new = new.wrprotect();
    }
    Some(new)
}

/// Replaces the frame behind `page` of `backing` wherever it is mapped. Entries that are not
/// present stay absent (the next guest access faults the new frame in). Caller must hold the
/// MMU lock.
pub fn set_entry_locked(
    table: &mut GpaTable,
    frames: &mut impl TableFrames,
    slots: &Memslots,
    backing: BackingId,
    page: u64,
    entry: HostEntry,
) -> FlushToken {
    let mut flush = FlushToken::none();
    let Some(end) = page.checked_add(1) else {
        return flush;
    };
    for (id, range) in slots.find_by_backing(backing, page..end) {
        let gfn = range.start();
        let Some(slot) = slots.get(id) else { continue };
        let (logs_dirty, read_only) = (slot.logs_dirty(), slot.is_read_only());
        let update = table.update(gfn, frames, |old| {
            // A frame the PTE format cannot hold cannot be mapped: unmap instead, which is
            // always safe (the next fault reports the problem).
            set_entry_pte(old, entry, logs_dirty, read_only).unwrap_or(GpaPte::NONE)
        });
        if let Some(update) = update {
            flush.merge_in(update.flush);
        }
    }
    flush
}

/// Ages every guest mapping of `pages` of `backing`; returns whether any was young. Caller
/// must hold the MMU lock.
pub fn clear_young_locked(
    table: &mut GpaTable,
    frames: &mut impl TableFrames,
    slots: &Memslots,
    backing: BackingId,
    pages: Range<u64>,
) -> (bool, FlushToken) {
    let mut young = false;
    let mut flush = FlushToken::none();
    for (_, range) in slots.find_by_backing(backing, pages) {
        let (y, f) = table.mkold_range(range, frames);
        young |= y;
        flush.merge_in(f);
    }
    (young, flush)
}

/// Whether `page` of `backing` is young in any guest mapping: exactly one page per slot (Linux
/// passed an empty range here and so always answered "old"). Caller must hold the MMU lock.
pub fn test_young_locked(
    table: &GpaTable,
    frames: &impl TableFrames,
    slots: &Memslots,
    backing: BackingId,
    page: u64,
) -> bool {
    let Some(end) = page.checked_add(1) else {
        return false;
    };
    slots.find_by_backing(backing, page..end).any(|(_, range)| {
        table
            .lookup(range.start(), frames)
            .is_some_and(|p| p.is_young())
    })
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::pte::{entrylo, Cca};

    fn mapped(young: bool, dirty: bool, writable: bool) -> GpaPte {
        let mut p = GpaPte::present(Hfn::new(0x50), Cca::CACHED_NONCOHERENT).unwrap();
        if writable {
            p = p.mkwrite();
        }
        if young {
            p = p.mkyoung();
        }
        if dirty {
            p = p.mkdirty();
        }
        p
    }

    const COPY: HostEntry = HostEntry {
        hfn: Hfn::new(0x60),
        writable: true,
        dirty: true,
    };

    #[test]
    fn set_entry_rules_apply_independently() {
        let clean = mapped(true, false, false);
        // Plain slot: the host's dirty copy arrives dirty and writable.
        let p = set_entry_pte(clean, COPY, false, false).unwrap();
        assert!(p.is_dirty() && p.is_writable() && p.is_young());
        assert_eq!(p.hfn(), Some(Hfn::new(0x60)));
        // Logged slot: stays clean so the guest's first store is logged.
        let p = set_entry_pte(clean, COPY, true, false).unwrap();
        assert!(!p.is_dirty() && p.is_writable());
        // Read-only slot: never writable.
        let p = set_entry_pte(clean, COPY, false, true).unwrap();
        assert!(!p.is_writable() && p.entrylo() & entrylo::D == 0);
        // Both: clean AND write-protected (Linux's else-if gave clean but writable).
        let p = set_entry_pte(clean, COPY, true, true).unwrap();
        assert!(!p.is_dirty() && !p.is_writable());
        // A page the guest already dirtied stays dirty in a logged slot.
        let p = set_entry_pte(mapped(true, true, true), COPY, true, false).unwrap();
        assert!(p.is_dirty());
        // Old pages stay old; a shared (non-writable) entry write-protects.
        let shared = HostEntry {
            writable: false,
            dirty: false,
            ..COPY
        };
        let p = set_entry_pte(mapped(false, true, true), shared, false, false).unwrap();
        assert!(!p.is_young() && !p.is_writable() && p.is_dirty());
        assert_eq!(p.check(), Ok(()));
    }

    #[test]
    fn set_entry_flushes_when_hardware_bits_are_lost_or_changed() {
        let young_dirty = mapped(true, true, true);
        let shared = HostEntry {
            hfn: Hfn::new(0x50),
            writable: false,
            dirty: false,
        };
        // Same frame, D lost: flush.
        let p = set_entry_pte(young_dirty, shared, false, false).unwrap();
        assert!(young_dirty.flush_needed_for(p));
        // Frame changed: flush.
        let p = set_entry_pte(mapped(true, false, false), COPY, true, false).unwrap();
        assert!(mapped(true, false, false).flush_needed_for(p));
        // Old entry (V clear): nothing derived can exist.
        let old = mapped(false, true, true);
        let p = set_entry_pte(old, COPY, false, false).unwrap();
        assert!(!old.flush_needed_for(p));
    }

    #[test]
    fn sequence_protocol() {
        let s = NotifierSeq::new();
        let snap = s.snapshot();
        assert!(!s.must_retry(snap));
        s.start();
        assert!(s.must_retry(snap), "invalidation in progress");
        assert_eq!(s.in_progress(), 1);
        s.end();
        assert!(s.must_retry(snap), "sequence moved");
        let snap = s.snapshot();
        assert!(!s.must_retry(snap));
        s.bump();
        assert!(s.must_retry(snap));
        assert_eq!(s.current(), 2);
    }

    #[test]
    #[should_panic(expected = "without a start")]
    fn unbalanced_end_is_a_bug() {
        NotifierSeq::new().end();
    }
}
