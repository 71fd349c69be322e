//! The per-VM MMU object and the guest page-fault handler (`map_page`).
//!
//! A [`Vm`] ties together the VM's GPA table, memslots (with dirty logs) and table frames
//! behind one MMU lock, the notifier sequence/count, the host memory layer (its own lock), and
//! the remote-flush interface. Lock order: host memory layer, then MMU lock; the MMU lock is
//! never held while calling into the host layer or waiting for a remote flush.
//!
//! # Frame references
//!
//! The GPA table holds **no** long-term reference on the frames it maps, as in Linux with
//! `SYNC_MMU`: the notifier protocol keeps it coherent instead. A backing page owns one
//! reference to its frame, and every change that drops that reference first removes or
//! replaces the guest mappings and waits for the remote flush. So at every moment when no
//! invalidation is in progress, each present entry names exactly the frame its backing page
//! holds, which therefore has a nonzero count. [`Vm::check_invariants`] checks exactly that,
//! and [`Vm::teardown`] shows every count returns to zero.
//!
//! # Fault paths
//!
//! The fast path runs entirely under the MMU lock and never consults the host: a present entry
//! is made young, and on a write made dirty if it is write-permitted (an entry that is not
//! write-permitted needs the slow path: a shared page to copy, or a read-only slot). It needs
//! no sequence check, because an invalidation removes entries under the same lock.
//!
//! The slow path snapshots the notifier sequence, looks up the memslot, resolves the backing
//! page *outside* the MMU lock (it may allocate, zero-fill, swap in or copy a shared page, and
//! may itself notify), then retakes the lock and starts again if an invalidation is in progress
//! or completed meanwhile; so it never installs a frame that the backing page no longer holds.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use crate::addr::{Gfn, GfnRange, Gpa, Hfn};
use crate::dirty_log::DirtySnapshot;
use crate::flush::FlushToken;
use crate::frame_pool::{FrameMemory, FramePool};
use crate::gpa_table::{GpaTable, GpaTableError, GFN_LIMIT};
use crate::host_mem::{expected_refcounts, HostMem, HostMemError, HostState, PageState};
use crate::memslot::{BackingId, MemslotError, Memslots, SlotFlags, SlotId, SlotUpdate};
use crate::notifier::{self, HostEntry, MmuNotifier, NotifierSeq};
use crate::pte::{Cca, GpaPte};
use crate::shootdown::{RemoteFlush, RemoteInvalidator};
use crate::sync::Mutex;
use crate::table_frames::{OutOfMemory, TableFrames};

/// Why a guest access could not be mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultError {
    /// No memslot covers the address: emulate the access as MMIO.
    NoMemslot,
    /// A store to a read-only memslot: emulate it as an MMIO store.
    ReadOnlyWrite,
    /// No host frame or table frame could be allocated.
    OutOfMemory,
    /// The address is beyond what the GPA table can map.
    BeyondReach,
    /// The memslot names a backing object (or page) that does not exist.
    BadBacking,
    /// The VM's memory account may not take another frame (limit or committed pool).
    Refused(crate::accounts::Refusal),
}

impl fmt::Display for FaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultError::NoMemslot => "no memslot at this guest address",
            FaultError::ReadOnlyWrite => "write to a read-only memslot",
            FaultError::OutOfMemory => "out of memory",
            FaultError::BeyondReach => "guest address beyond the GPA table's reach",
            FaultError::BadBacking => "memslot backing does not exist",
            FaultError::Refused(why) => return write!(f, "no frame: {why}"),
        })
    }
}

impl From<HostMemError> for FaultError {
    fn from(e: HostMemError) -> Self {
        match e {
            HostMemError::OutOfMemory => FaultError::OutOfMemory,
            HostMemError::Refused(why) => FaultError::Refused(why),
            _ => FaultError::BadBacking,
        }
    }
}

/// Errors from VM setup and memslot changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmError {
    /// The memslot change was refused.
    Memslot(MemslotError),
    /// The backing object does not exist or is too small for the slot.
    Backing(HostMemError),
    /// No table frame for the GPA table root.
    OutOfMemory,
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmError::Memslot(e) => write!(f, "memslot: {e}"),
            VmError::Backing(e) => write!(f, "backing: {e}"),
            VmError::OutOfMemory => f.write_str("out of memory"),
        }
    }
}

impl From<MemslotError> for VmError {
    fn from(e: MemslotError) -> Self {
        VmError::Memslot(e)
    }
}

impl From<HostMemError> for VmError {
    fn from(e: HostMemError) -> Self {
        VmError::Backing(e)
    }
}

/// A broken cross-layer invariant found by [`Vm::check_invariants`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvariantViolation {
    /// The GPA table's own structure is broken.
    Table,
    /// An invalidation is still in progress although no host change is.
    CountNotZero,
    /// A present entry outside every memslot.
    EntryWithoutSlot(Gfn),
    /// A present entry naming a frame its backing page does not hold (stale or freed).
    StaleFrame(Gfn),
    /// A write-permitted entry for a shared page or in a read-only slot.
    WritableNotPrivate(Gfn),
    /// A frame has fewer references than the pages holding it.
    Refcount,
    /// A dirty entry in a logging slot whose dirty bit is not set.
    DirtyNotLogged(Gfn),
}

/// What the MMU lock protects.
#[derive(Debug)]
pub struct MmuState<T> {
    /// The GPA table.
    pub table: GpaTable,
    /// The frames its tables live in.
    pub frames: T,
    /// The memslots, with their dirty bitmaps.
    pub slots: Memslots,
}

/// One VM's memory: GPA table, memslots, host memory layer and notifier protocol.
pub struct Vm<T, M, R> {
    mmu: Mutex<MmuState<T>>,
    seq: NotifierSeq,
    /// Shared with other VMs when they may share frames (a dedup trust group).
    host: Arc<HostMem<M>>,
    flush: R,
    cca: Cca,
}

impl<T, M, R> fmt::Debug for Vm<T, M, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm").field("seq", &self.seq).finish()
    }
}

/// The even/odd entry pair one MIPS TLB entry maps (EntryLo0 is the even page).
pub type PtePair = (GpaPte, GpaPte);

impl<T: TableFrames, M: FrameMemory, R: RemoteFlush> Vm<T, M, R> {
    /// A VM with an empty GPA table (root from `frames`), guest RAM from `pool`, and derived
    /// translations flushed through `flush`. Guest RAM is mapped cacheable non-coherent.
    pub fn new(frames: T, pool: FramePool<M>, flush: R) -> Result<Self, VmError> {
        Self::with_host(frames, Arc::new(HostMem::new(pool)), flush)
    }

    /// A VM whose guest RAM lives in `host`, a host memory layer other VMs may share (so a
    /// same-page merger can share frames between them). Each backing object must be mapped
    /// by one VM only, and host-side changes to a shared layer must notify the VM owning the
    /// backing; tear such a VM down with [`Vm::detach`].
    pub fn with_host(mut frames: T, host: Arc<HostMem<M>>, flush: R) -> Result<Self, VmError> {
        let table = GpaTable::new(&mut frames).map_err(|OutOfMemory| VmError::OutOfMemory)?;
        Ok(Self {
            mmu: Mutex::new(MmuState {
                table,
                frames,
                slots: Memslots::new(),
            }),
            seq: NotifierSeq::new(),
            host,
            flush,
            cca: Cca::CACHED_NONCOHERENT,
        })
    }

    /// The host memory layer.
    pub fn host(&self) -> &HostMem<M> {
        &self.host
    }

    /// The remote-flush implementation the VM was built with.
    pub fn remote_flush(&self) -> &R {
        &self.flush
    }

    /// The notifier sequence/count.
    pub fn notifier_seq(&self) -> &NotifierSeq {
        &self.seq
    }

    /// Runs `f` with the MMU lock held (inspection and tests).
    pub fn with_mmu<X>(&self, f: impl FnOnce(&mut MmuState<T>) -> X) -> X {
        f(&mut self.mmu.lock())
    }

    fn apply(&self, flush: FlushToken) {
        flush.apply(&mut RemoteInvalidator(&self.flush));
    }

    /// The entry for `gpa`'s frame, if present.
    pub fn lookup(&self, gpa: Gpa) -> Option<GpaPte> {
        let mmu = self.mmu.lock();
        mmu.table.lookup(gpa.frame(), &mmu.frames)
    }

    // ---- memslots -------------------------------------------------------------------------

    /// Adds a memslot mapping `gfns` onto pages `backing_start..` of `backing`.
    pub fn add_memslot(
        &self,
        gfns: GfnRange,
        backing: BackingId,
        backing_start: u64,
        flags: SlotFlags,
    ) -> Result<SlotId, VmError> {
        let host = self.host.lock();
        let end = backing_start
            .checked_add(gfns.npages())
            .ok_or(VmError::Memslot(MemslotError::BackingOverflow))?;
        if end > host.backing_len(backing)? {
            return Err(VmError::Backing(HostMemError::PageOutOfRange));
        }
        let mut mmu = self.mmu.lock();
        // A new slot only adds translations; no fault can hold a stale view of it.
        Ok(mmu.slots.insert(gfns, backing, backing_start, flags)?)
    }

    fn update_slot(
        &self,
        f: impl FnOnce(&mut Memslots) -> Result<SlotUpdate, MemslotError>,
    ) -> Result<(), VmError> {
        let flush = {
            let mut mmu = self.mmu.lock();
            let st = &mut *mmu;
            let update = f(&mut st.slots)?;
            // Faults that looked up the old slot must not install from it.
            self.seq.bump();
            update.apply(&mut st.table, &mut st.frames)
        };
        self.apply(flush);
        Ok(())
    }

    /// Removes a memslot, unmapping its range.
    pub fn remove_memslot(&self, id: SlotId) -> Result<(), VmError> {
        self.update_slot(|slots| slots.remove(id).map(|(_, update)| update))
    }

    /// Moves a memslot to start at `new_start`, unmapping its old range.
    pub fn move_memslot(&self, id: SlotId, new_start: Gfn) -> Result<(), VmError> {
        self.update_slot(|slots| slots.move_to(id, new_start))
    }

    /// Changes a memslot's flags (cleaning when logging starts, write-protecting when it
    /// becomes read-only).
    pub fn set_memslot_flags(&self, id: SlotId, flags: SlotFlags) -> Result<(), VmError> {
        self.update_slot(|slots| slots.set_flags(id, flags))
    }

    /// Takes and clears a logging slot's dirty bitmap, re-cleaning the reported pages.
    pub fn get_dirty_log(&self, id: SlotId) -> Result<DirtySnapshot, VmError> {
        let (snapshot, flush) = {
            let mut mmu = self.mmu.lock();
            let st = &mut *mmu;
            st.slots
                .get_and_clear_dirty(id, &mut st.table, &mut st.frames)?
        };
        self.apply(flush);
        Ok(snapshot)
    }

    // ---- faults ---------------------------------------------------------------------------

    /// Handles a guest access to `gpa` that missed or hit a not-valid / not-dirty entry:
    /// returns the even/odd entry pair to load into the TLB or shadow tables.
    pub fn map_page(&self, gpa: Gpa, write: bool) -> Result<PtePair, FaultError> {
        let gfn = gpa.frame();
        if gfn >= GFN_LIMIT {
            return Err(FaultError::BeyondReach);
        }
        if let Some(pair) = self.map_page_fast(gfn, write) {
            return Ok(pair);
        }
        self.map_page_slow(gfn, write)
    }

    /// The fault handler's fast path alone: a present entry is made young (and dirty, on a
    /// write it permits) and its pair returned; `None` when only the slow path can help. It
    /// never calls into the host layer and never waits for a remote flush, so it may run
    /// where waiting could deadlock (on a CPU's exception path while its guest still counts
    /// as running for the quiescence tracker).
    pub fn map_page_resident(&self, gpa: Gpa, write: bool) -> Option<PtePair> {
        let gfn = gpa.frame();
        if gfn >= GFN_LIMIT {
            return None;
        }
        self.map_page_fast(gfn, write)
    }

    /// The fast path: only a present entry, only under the MMU lock.
    fn map_page_fast(&self, gfn: Gfn, write: bool) -> Option<PtePair> {
        let mut mmu = self.mmu.lock();
        let st = &mut *mmu;
        // Absent, or a write the entry does not permit (a shared page to copy, a read-only
        // slot): the slow path decides. Only bits are gained here, so nothing needs a flush.
        let pair = st.table.touch(gfn, &mut st.frames, write)?;
        if write {
            st.slots.mark_dirty(gfn);
        }
        Some(pair)
    }

    /// The slow path: resolve the backing page outside the lock, install under the lock if
    /// no invalidation intervened. Like Linux there is no retry bound: every retry follows an
    /// invalidation that made progress, so only a continuous stream of them on this VM can
    /// delay the fault.
    fn map_page_slow(&self, gfn: Gfn, write: bool) -> Result<PtePair, FaultError> {
        loop {
            let snapshot = self.seq.snapshot();
            let (backing, page, read_only) = {
                let mmu = self.mmu.lock();
                let slot = mmu.slots.find(gfn).ok_or(FaultError::NoMemslot)?;
                let page = slot.backing_page_of(gfn).ok_or(FaultError::BadBacking)?;
                (slot.backing(), page, slot.is_read_only())
            };
            if write && read_only {
                return Err(FaultError::ReadOnlyWrite);
            }
            let resolved = self.host.resolve(self, backing, page, write)?;
            let installed = {
                let mut mmu = self.mmu.lock();
                if self.seq.must_retry(snapshot) {
                    None
                } else {
                    let st = &mut *mmu;
                    Some(self.install(
                        st,
                        gfn,
                        resolved.hfn,
                        resolved.writable && !read_only,
                        write,
                    ))
                }
            };
            self.host.release(resolved);
            match installed {
                None => continue,
                Some(Err(e)) => return Err(e),
                Some(Ok((pair, flush))) => {
                    self.apply(flush);
                    return Ok(pair);
                }
            }
        }
    }

    /// Installs a young entry for `hfn` (dirty if `write`). Caller holds the MMU lock and has
    /// checked the sequence number.
    fn install(
        &self,
        st: &mut MmuState<T>,
        gfn: Gfn,
        hfn: Hfn,
        writable: bool,
        write: bool,
    ) -> Result<(PtePair, FlushToken), FaultError> {
        let mut pte = GpaPte::present(hfn, self.cca)
            .map_err(|_| FaultError::BadBacking)?
            .mkyoung();
        if writable {
            // Write-permitted but clean on a read fault: the first store costs one fast fault,
            // which keeps dirty tracking exact.
            pte = pte.mkwrite();
        }
        if write {
            pte = pte.mkdirty();
        }
        let flush = st
            .table
            .set(gfn, pte, &mut st.frames)
            .map_err(|e| match e {
                GpaTableError::OutOfMemory => FaultError::OutOfMemory,
                _ => FaultError::BeyondReach,
            })?;
        if write {
            st.slots.mark_dirty(gfn);
        }
        Ok((st.table.pair(gfn, &st.frames), flush))
    }

    // ---- host-side operations, each through the notifier ---------------------------------

    /// Swaps a backing page out (see [`HostMem::swap_out`]).
    pub fn swap_out(&self, backing: BackingId, page: u64) -> Result<bool, HostMemError> {
        self.host.swap_out(self, backing, page)
    }

    /// Swaps out the resident pages of a range with one invalidation (see
    /// [`HostMem::swap_out_range`]).
    pub fn swap_out_range(
        &self,
        backing: BackingId,
        pages: Range<u64>,
    ) -> Result<u64, HostMemError> {
        self.host.swap_out_range(self, backing, pages)
    }

    /// Balloons backing pages (see [`HostMem::balloon`]).
    pub fn balloon(&self, backing: BackingId, pages: Range<u64>) -> Result<(), HostMemError> {
        self.host.balloon(self, backing, pages)
    }

    /// Merges two identical pages (see [`HostMem::merge`]).
    pub fn merge(
        &self,
        from: (BackingId, u64),
        to: (BackingId, u64),
    ) -> Result<bool, HostMemError> {
        self.host.merge(self, from, to)
    }

    /// Ages backing pages; returns whether any was young (see [`HostMem::age`]).
    pub fn age(&self, backing: BackingId, pages: Range<u64>) -> Result<bool, HostMemError> {
        self.host.age(self, backing, pages)
    }

    /// Whether a backing page is young (see [`HostMem::test_age`]).
    pub fn test_age(&self, backing: BackingId, page: u64) -> Result<bool, HostMemError> {
        self.host.test_age(self, backing, page)
    }

    /// Host-side write into a backing page (see [`HostMem::write`]).
    pub fn host_write(
        &self,
        backing: BackingId,
        page: u64,
        offset: usize,
        data: &[u8],
    ) -> Result<(), HostMemError> {
        self.host.write(self, backing, page, offset, data)
    }

    // ---- checks and teardown --------------------------------------------------------------

    /// Checks every cross-layer invariant (takes both locks, so nothing is in flight):
    /// each present entry lies in a memslot and names the frame its backing page holds now;
    /// write-permitted entries are private pages in writable slots; dirty entries in logging
    /// slots are logged; every frame has at least as many references as pages holding it.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let host = self.host.lock();
        let mmu = self.mmu.lock();
        mmu.table
            .check_invariants(&mmu.frames)
            .map_err(|_| InvariantViolation::Table)?;
        if self.seq.in_progress() != 0 {
            return Err(InvariantViolation::CountNotZero);
        }
        let mut result = Ok(());
        let everything = GfnRange::new(Gfn::new(0), GFN_LIMIT).expect("non-empty reach");
        mmu.table
            .for_each_present(everything, &mmu.frames, |gfn, pte| {
                if result.is_err() {
                    return;
                }
                result = Self::check_entry(&host, &mmu.slots, gfn, pte);
            });
        result?;
        let mut states = Vec::new();
        for id in host.backing_ids() {
            states.extend_from_slice(host.pages_of(id).expect("live backing"));
        }
        for (hfn, refs) in expected_refcounts(&states) {
            if host.pool().refcount(hfn) < refs {
                return Err(InvariantViolation::Refcount);
            }
        }
        Ok(())
    }

    fn check_entry(
        host: &HostState<M>,
        slots: &Memslots,
        gfn: Gfn,
        pte: GpaPte,
    ) -> Result<(), InvariantViolation> {
        let slot = slots
            .find(gfn)
            .ok_or(InvariantViolation::EntryWithoutSlot(gfn))?;
        let page = slot
            .backing_page_of(gfn)
            .ok_or(InvariantViolation::EntryWithoutSlot(gfn))?;
        let state = host
            .page(slot.backing(), page)
            .map_err(|_| InvariantViolation::StaleFrame(gfn))?;
        if state.frame() != pte.hfn() || pte.hfn().is_none_or(|h| host.pool().refcount(h) == 0) {
            return Err(InvariantViolation::StaleFrame(gfn));
        }
        if pte.is_writable() && (slot.is_read_only() || !matches!(state, PageState::Private(_))) {
            return Err(InvariantViolation::WritableNotPrivate(gfn));
        }
        if pte.is_dirty() && pte.is_writable() {
            if let Some(bits) = slot.dirty_bitmap() {
                if !bits.is_set(gfn.raw() - slot.gfns().start().raw()) {
                    return Err(InvariantViolation::DirtyNotLogged(gfn));
                }
            }
        }
        Ok(())
    }

    /// Tears the VM down: frees every backing page (through the notifier) and every table
    /// frame. Returns the table-frame source and the frame pool so the caller can check that
    /// everything came back.
    pub fn teardown(self) -> (T, FramePool<M>) {
        let ids: Vec<BackingId> = self.host.lock().backing_ids().collect();
        for id in ids {
            self.host
                .remove_backing(&self, id)
                .expect("listed backing exists");
        }
        let Vm {
            mmu, host, flush, ..
        } = self;
        let MmuState {
            table, mut frames, ..
        } = mmu.into_inner();
        table
            .destroy(&mut frames)
            .apply(&mut RemoteInvalidator(&flush));
        let host = Arc::try_unwrap(host)
            .unwrap_or_else(|_| panic!("teardown of a VM on a shared host layer: use detach"));
        (frames, host.into_pool())
    }

    /// Tears down a VM on a shared host layer (see [`Vm::with_host`]): frees the backing
    /// objects its memslots name (through the notifier) and every table frame, and returns
    /// the table-frame source. The layer, with the other VMs' backings, stays.
    pub fn detach(self) -> T {
        let mut ids: Vec<BackingId> = self
            .mmu
            .lock()
            .slots
            .iter()
            .map(|slot| slot.backing())
            .collect();
        ids.sort_unstable_by_key(|id| id.0);
        ids.dedup();
        for id in ids {
            // A backing another path already removed is fine to skip.
            let _ = self.host.remove_backing(&self, id);
        }
        let Vm { mmu, flush, .. } = self;
        let MmuState {
            table, mut frames, ..
        } = mmu.into_inner();
        table
            .destroy(&mut frames)
            .apply(&mut RemoteInvalidator(&flush));
        frames
    }
}

impl<T: TableFrames, M: FrameMemory, R: RemoteFlush> MmuNotifier for Vm<T, M, R> {
    fn invalidate_range_start(&self, backing: BackingId, pages: Range<u64>) {
        let flush = {
            let mut mmu = self.mmu.lock();
            let st = &mut *mmu;
            self.seq.start();
            notifier::unmap_backing(&mut st.table, &mut st.frames, &st.slots, backing, pages)
        };
        // Waits for every CPU: the caller frees frames as soon as this returns.
        self.apply(flush);
    }

    fn invalidate_range_end(&self, _backing: BackingId, _pages: Range<u64>) {
        let _mmu = self.mmu.lock();
        self.seq.end();
    }

    fn set_entry(&self, backing: BackingId, page: u64, entry: HostEntry) {
        let flush = {
            let mut mmu = self.mmu.lock();
            let st = &mut *mmu;
            self.seq.bump();
            notifier::set_entry_locked(
                &mut st.table,
                &mut st.frames,
                &st.slots,
                backing,
                page,
                entry,
            )
        };
        self.apply(flush);
    }

    fn clear_young(&self, backing: BackingId, pages: Range<u64>) -> bool {
        let (young, flush) = {
            let mut mmu = self.mmu.lock();
            let st = &mut *mmu;
            notifier::clear_young_locked(&mut st.table, &mut st.frames, &st.slots, backing, pages)
        };
        self.apply(flush);
        young
    }

    fn test_young(&self, backing: BackingId, page: u64) -> bool {
        let mmu = self.mmu.lock();
        notifier::test_young_locked(&mmu.table, &mmu.frames, &mmu.slots, backing, page)
    }
}
