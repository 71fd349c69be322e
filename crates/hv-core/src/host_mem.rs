//! The host memory layer: what backs each page of guest RAM (our stand-in for Linux's HVAs).
//!
//! A VM's RAM is one or more *backing objects* ([`BackingId`]); memslots map guest frames onto
//! page ranges of them. Each backing page is in one [`PageState`]: never touched (reads as
//! zero), resident in a private frame, resident in a frame shared read-only with other pages
//! (after a merge of identical pages), swapped out, or ballooned (given back to the host).
//! Frames come from a reference-counted [`FramePool`].
//!
//! Every change to a backing entry goes through an [`MmuNotifier`] before any frame is
//! released: removals are bracketed by `invalidate_range_start`/`_end`, replacements go
//! through `set_entry`. The layer's own lock is held across each whole change, and it is
//! always taken *before* the VM's MMU lock, never while holding it.
//!
//! [`HostMem::resolve`] is the fault slow path's "get user page": it makes the page resident
//! (allocating, zero-filling, swapping in or breaking sharing as needed) and returns the frame
//! with an extra reference, which the caller drops with [`HostMem::release`] once it has
//! installed (or abandoned) the mapping.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use crate::accounts::{
    AccountId, AccountSpec, AccountUsage, AdmitError, MemAccounts, Refusal, GENERAL,
};
use crate::addr::Hfn;
use crate::frame_pool::{FrameEpochs, FrameMemory, FramePool, PoolError, FRAME_BYTES};
use crate::memslot::BackingId;
use crate::notifier::{HostEntry, MmuNotifier};
use crate::swap_store::{PlainSwap, SwapStore, SwapStoreError};
use crate::sync::{Mutex, MutexGuard};

/// Index of a saved page in the swap store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwapSlot(pub u32);

/// State of one backing page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageState {
    /// Never touched: reads as zero, no frame yet.
    NotTouched,
    /// Resident in a frame this page owns (one reference).
    Private(Hfn),
    /// Resident in a frame shared read-only with other pages (one reference per page).
    Shared(Hfn),
    /// Contents saved in the swap store; no frame.
    SwappedOut(SwapSlot),
    /// Given back to the host; reads as zero when touched again.
    Ballooned,
}

impl PageState {
    /// The frame, if resident.
    pub fn frame(self) -> Option<Hfn> {
        match self {
            PageState::Private(h) | PageState::Shared(h) => Some(h),
            _ => None,
        }
    }
}

/// Errors from the host memory layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostMemError {
    /// No backing object with this id.
    NoSuchBacking,
    /// The page index is past the end of the backing object.
    PageOutOfRange,
    /// The page range is empty or reversed.
    EmptyRange,
    /// No frame (or no swap store) could be allocated.
    OutOfMemory,
    /// The operation needs a resident page.
    NotResident,
    /// A byte range does not fit inside one page.
    BadOffset,
    /// The swap store could not read a saved page back.
    SwapIo,
    /// The page's memory account may not take another frame (see [`crate::accounts`]).
    Refused(Refusal),
}

impl fmt::Display for HostMemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostMemError::NoSuchBacking => "no such backing object",
            HostMemError::PageOutOfRange => "page index beyond the backing object",
            HostMemError::EmptyRange => "empty page range",
            HostMemError::OutOfMemory => "out of host memory",
            HostMemError::NotResident => "page is not resident",
            HostMemError::BadOffset => "byte range does not fit in a page",
            HostMemError::SwapIo => "swap store could not read a saved page back",
            HostMemError::Refused(why) => return write!(f, "frame refused: {why}"),
        })
    }
}

impl From<PoolError> for HostMemError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Exhausted => HostMemError::OutOfMemory,
            PoolError::BadOffset => HostMemError::BadOffset,
            // The layer only passes frames it holds references to.
            PoolError::BadFrame | PoolError::NotAllocated | PoolError::RefcountOverflow => {
                panic!("host memory layer broke a frame invariant: {e}")
            }
        }
    }
}

/// A frame returned by [`HostMem::resolve`], holding one reference until released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "release the frame's reference with HostMem::release"]
pub struct Resolved {
    /// The frame now backing the page.
    pub hfn: Hfn,
    /// Whether the page may be mapped writable (private to this page).
    pub writable: bool,
}

impl From<SwapStoreError> for HostMemError {
    fn from(e: SwapStoreError) -> Self {
        match e {
            SwapStoreError::Full => HostMemError::OutOfMemory,
            SwapStoreError::Io => HostMemError::SwapIo,
        }
    }
}

/// Swap traffic counters of one layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwapCounters {
    /// Pages written to the swap store.
    pub written: u64,
    /// Pages swapped out without writing: clean, their copy still in the store.
    pub clean_reused: u64,
    /// Pages read back in.
    pub read_back: u64,
}

/// Everything behind the layer's lock.
pub struct HostState<M> {
    pool: FramePool<M>,
    backings: Vec<Option<Vec<PageState>>>,
    swap: Box<dyn SwapStore>,
    /// Resident private pages whose contents still equal their swap copy (only with a store
    /// that keeps clean copies); such pages are mapped read-only until written.
    clean_copies: BTreeMap<(u32, u64), SwapSlot>,
    swap_counters: SwapCounters,
    cow_breaks: u64,
    /// Per-VM limits and reservations in the pool.
    accounts: MemAccounts,
    /// The account of each backing object (same index as `backings`).
    backing_accounts: Vec<AccountId>,
}

impl<M> fmt::Debug for HostState<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostState")
            .field("pool", &self.pool)
            .field("backings", &self.backings.len())
            .field("swap_counters", &self.swap_counters)
            .field("cow_breaks", &self.cow_breaks)
            .finish()
    }
}

impl<M: FrameMemory> HostState<M> {
    /// The frame pool.
    pub fn pool(&self) -> &FramePool<M> {
        &self.pool
    }

    /// The frame pool, for fail injection in tests.
    pub fn pool_mut(&mut self) -> &mut FramePool<M> {
        &mut self.pool
    }

    /// The state of one backing page.
    pub fn page(&self, backing: BackingId, page: u64) -> Result<PageState, HostMemError> {
        let pages = self.pages(backing)?;
        let index = usize::try_from(page).map_err(|_| HostMemError::PageOutOfRange)?;
        pages
            .get(index)
            .copied()
            .ok_or(HostMemError::PageOutOfRange)
    }

    /// Number of pages in a backing object.
    pub fn backing_len(&self, backing: BackingId) -> Result<u64, HostMemError> {
        Ok(self.pages(backing)?.len() as u64)
    }

    /// Ids of every live backing object.
    pub fn backing_ids(&self) -> impl Iterator<Item = BackingId> + '_ {
        self.backings
            .iter()
            .enumerate()
            .filter(|(_, b)| b.is_some())
            .map(|(i, _)| BackingId(i as u32))
    }

    /// Every page state of a backing object.
    pub fn pages_of(&self, backing: BackingId) -> Result<&[PageState], HostMemError> {
        Ok(self.pages(backing)?)
    }

    /// Runs `f` over the bytes of a resident page (`None` if it has no frame).
    pub fn with_page_contents<X>(
        &self,
        backing: BackingId,
        page: u64,
        f: impl FnOnce(&[u8]) -> X,
    ) -> Result<Option<X>, HostMemError> {
        match self.page(backing, page)?.frame() {
            Some(hfn) => Ok(Some(self.pool.with_contents(hfn, f)?)),
            None => Ok(None),
        }
    }

    /// The memory accounts of the pool.
    pub fn accounts(&self) -> &MemAccounts {
        &self.accounts
    }

    /// The figures of one account.
    pub fn account_usage(&self, id: AccountId) -> Option<AccountUsage> {
        self.accounts.usage(id)
    }

    /// The account a backing object is charged to.
    pub fn account_of(&self, backing: BackingId) -> Result<AccountId, HostMemError> {
        self.pages(backing)?;
        Ok(self.backing_accounts[backing.0 as usize])
    }

    /// Whether `backing`'s account may take another frame now (counted when refused).
    fn check_charge(&mut self, backing: BackingId) -> Result<(), HostMemError> {
        let account = self.backing_accounts[backing.0 as usize];
        let free = self.pool.free_count() as u64;
        self.accounts
            .check(account, free)
            .map_err(HostMemError::Refused)
    }

    /// Writes that broke sharing of a shared frame so far (copies and last-sharer takeovers).
    pub fn cow_breaks(&self) -> u64 {
        self.cow_breaks
    }

    /// Number of pages in the swap store (including clean copies of resident pages).
    pub fn swapped_pages(&self) -> usize {
        self.swap.slots_in_use()
    }

    /// Swap traffic so far.
    pub fn swap_counters(&self) -> SwapCounters {
        self.swap_counters
    }

    /// Resident pages whose swap copy is still valid (they hold a store slot each, so
    /// `swapped_pages() - clean_copy_count()` pages are out of memory now).
    pub fn clean_copy_count(&self) -> usize {
        self.clean_copies.len()
    }

    /// Whether a resident page still has a clean copy in the swap store.
    pub fn has_clean_copy(&self, backing: BackingId, page: u64) -> bool {
        self.clean_copies.contains_key(&(backing.0, page))
    }

    fn pages(&self, backing: BackingId) -> Result<&Vec<PageState>, HostMemError> {
        self.backings
            .get(backing.0 as usize)
            .and_then(Option::as_ref)
            .ok_or(HostMemError::NoSuchBacking)
    }

    fn check_range(&self, backing: BackingId, pages: &Range<u64>) -> Result<(), HostMemError> {
        if pages.start >= pages.end {
            return Err(HostMemError::EmptyRange);
        }
        if pages.end > self.backing_len(backing)? {
            return Err(HostMemError::PageOutOfRange);
        }
        Ok(())
    }

    fn set_page(&mut self, backing: BackingId, page: u64, state: PageState) {
        // Most layers keep no clean copies: skip the map search (every page state change
        // comes through here, a balloon run once per page).
        let copy = if self.clean_copies.is_empty() {
            None
        } else {
            self.clean_copies.remove(&(backing.0, page))
        };
        if let Some(slot) = copy {
            // The copy survives only as the page's own swapped-out state.
            if state != PageState::SwappedOut(slot) {
                self.swap.free(slot);
            }
        }
        let pages = self.backings[backing.0 as usize]
            .as_mut()
            .expect("checked backing");
        let old = core::mem::replace(&mut pages[page as usize], state);
        // The account is charged one page per page holding a frame.
        let account = self.backing_accounts[backing.0 as usize];
        match (old.frame().is_some(), state.frame().is_some()) {
            (false, true) => self.accounts.charge(account),
            (true, false) => self.accounts.uncharge(account),
            _ => {}
        }
    }

    /// Drops whatever a page holds (frame reference or swap copy) and sets `state`.
    /// Caller must have unmapped the page from every guest and flushed.
    fn drop_page(&mut self, backing: BackingId, page: u64, state: PageState) {
        match self.page(backing, page).expect("checked page") {
            PageState::Private(h) | PageState::Shared(h) => {
                self.pool.put(h).expect("page held a reference");
            }
            PageState::SwappedOut(slot) => self.swap.free(slot),
            PageState::NotTouched | PageState::Ballooned => {}
        }
        self.set_page(backing, page, state);
    }

    /// The slot holding `page`'s contents: its clean copy if it has one, else a new copy.
    fn save_to_swap(
        &mut self,
        backing: BackingId,
        page: u64,
        hfn: Hfn,
    ) -> Result<SwapSlot, HostMemError> {
        if let Some(&slot) = self.clean_copies.get(&(backing.0, page)) {
            self.swap_counters.clean_reused += 1;
            return Ok(slot);
        }
        let mut copy = page_buffer()?;
        self.pool.read(hfn, 0, &mut copy)?;
        let slot = self.swap.store(&copy)?;
        self.swap_counters.written += 1;
        Ok(slot)
    }
}

/// A heap buffer of one frame (frames are too big for small firmware stacks).
fn page_buffer() -> Result<Vec<u8>, HostMemError> {
    let mut buf = Vec::new();
    buf.try_reserve_exact(FRAME_BYTES)
        .map_err(|_| HostMemError::OutOfMemory)?;
    buf.resize(FRAME_BYTES, 0);
    Ok(buf)
}

/// The host memory layer of one VM (or of several VMs sharing a pool).
pub struct HostMem<M> {
    state: Mutex<HostState<M>>,
    epochs: Arc<FrameEpochs>,
}

impl<M> fmt::Debug for HostMem<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HostMem { .. }")
    }
}

impl<M: FrameMemory> HostMem<M> {
    /// A layer allocating frames from `pool`, with no backing objects yet.
    pub fn new(pool: FramePool<M>) -> Self {
        let epochs = pool.epochs();
        let accounts = MemAccounts::new(pool.capacity() as u64);
        Self {
            state: Mutex::new(HostState {
                pool,
                backings: Vec::new(),
                swap: Box::new(PlainSwap::new()),
                clean_copies: BTreeMap::new(),
                swap_counters: SwapCounters::default(),
                cow_breaks: 0,
                accounts,
                backing_accounts: Vec::new(),
            }),
            epochs,
        }
    }

    /// Takes the layer's lock (for inspection; lock order: this before the MMU lock).
    pub fn lock(&self) -> MutexGuard<'_, HostState<M>> {
        self.state.lock()
    }

    /// The frames' free epochs, readable without any lock.
    pub fn epochs(&self) -> &FrameEpochs {
        &self.epochs
    }

    /// Replaces the swap store (default: [`PlainSwap`]). Refused, returning the store, while
    /// any page is in the current one.
    pub fn set_swap_store(&self, store: Box<dyn SwapStore>) -> Result<(), Box<dyn SwapStore>> {
        let mut st = self.state.lock();
        if st.swap.slots_in_use() != 0 {
            return Err(store);
        }
        st.swap = store;
        Ok(())
    }

    /// Consumes the layer, returning its pool (to check that every frame came back).
    pub fn into_pool(self) -> FramePool<M> {
        self.state.into_inner().pool
    }

    /// A new backing object of `npages` untouched pages, charged to the general account.
    pub fn create_backing(&self, npages: u64) -> Result<BackingId, HostMemError> {
        self.create_backing_in(npages, GENERAL)
    }

    /// Admits a memory account (a VM's limit and reservation, in pages); refused when its
    /// reservation does not fit the pool (see [`crate::accounts`]).
    pub fn admit_account(&self, spec: AccountSpec) -> Result<AccountId, AdmitError> {
        self.state.lock().accounts.admit(spec)
    }

    /// Closes an account: no more frames for its pages, its reservation back to the pool.
    pub fn close_account(&self, id: AccountId) {
        self.state.lock().accounts.close(id);
    }

    /// Removes an account whose pages hold no frame any more; returns whether it was.
    pub fn remove_account(&self, id: AccountId) -> bool {
        self.state.lock().accounts.remove(id)
    }

    /// A new backing object of `npages` untouched pages, charged to `account`.
    pub fn create_backing_in(
        &self,
        npages: u64,
        account: AccountId,
    ) -> Result<BackingId, HostMemError> {
        let len = usize::try_from(npages).map_err(|_| HostMemError::OutOfMemory)?;
        let mut pages = Vec::new();
        pages
            .try_reserve_exact(len)
            .map_err(|_| HostMemError::OutOfMemory)?;
        pages.resize(len, PageState::NotTouched);
        let mut st = self.state.lock();
        let id = u32::try_from(st.backings.len()).map_err(|_| HostMemError::OutOfMemory)?;
        if st.accounts.usage(account).is_none() {
            return Err(HostMemError::Refused(Refusal::NoSuchAccount));
        }
        st.backings
            .try_reserve(1)
            .map_err(|_| HostMemError::OutOfMemory)?;
        st.backing_accounts
            .try_reserve(1)
            .map_err(|_| HostMemError::OutOfMemory)?;
        st.backings.push(Some(pages));
        st.backing_accounts.push(account);
        Ok(BackingId(id))
    }

    /// Makes `page` resident and returns its frame with an extra reference. A write breaks
    /// sharing (copy, then `set_entry` the private copy). Untouched and ballooned pages get a
    /// zeroed private frame; swapped-out pages are read back in.
    pub fn resolve(
        &self,
        notifier: &(impl MmuNotifier + ?Sized),
        backing: BackingId,
        page: u64,
        write: bool,
    ) -> Result<Resolved, HostMemError> {
        let mut st = self.state.lock();
        let resolved = match st.page(backing, page)? {
            PageState::Private(hfn) => {
                // A page with a clean swap copy stays read-only until written; the write that
                // gets here makes the copy stale.
                let clean = st.clean_copies.contains_key(&(backing.0, page));
                if clean && write {
                    let slot = st.clean_copies.remove(&(backing.0, page)).expect("present");
                    st.swap.free(slot);
                }
                Resolved {
                    hfn,
                    writable: write || !clean,
                }
            }
            PageState::Shared(hfn) if !write => Resolved {
                hfn,
                writable: false,
            },
            PageState::Shared(last) if st.pool.refcount(last) == 1 => {
                // The last sharer (nobody else, not even an in-flight fault, holds the frame):
                // take the frame itself instead of copying it.
                notifier.set_entry(
                    backing,
                    page,
                    HostEntry {
                        hfn: last,
                        writable: true,
                        dirty: true,
                    },
                );
                st.set_page(backing, page, PageState::Private(last));
                st.cow_breaks += 1;
                Resolved {
                    hfn: last,
                    writable: true,
                }
            }
            PageState::Shared(shared) => {
                let copy = st.pool.alloc()?;
                st.pool.copy(copy, shared)?;
                // The guest mapping must move to the copy before this page's reference to the
                // shared frame is dropped.
                notifier.set_entry(
                    backing,
                    page,
                    HostEntry {
                        hfn: copy,
                        writable: true,
                        dirty: true,
                    },
                );
                st.set_page(backing, page, PageState::Private(copy));
                st.pool.put(shared)?;
                st.cow_breaks += 1;
                Resolved {
                    hfn: copy,
                    writable: true,
                }
            }
            PageState::NotTouched | PageState::Ballooned => {
                st.check_charge(backing)?;
                let hfn = st.pool.alloc_zeroed()?;
                st.set_page(backing, page, PageState::Private(hfn));
                Resolved {
                    hfn,
                    writable: true,
                }
            }
            PageState::SwappedOut(slot) => {
                st.check_charge(backing)?;
                let mut saved = page_buffer()?;
                st.swap.load(slot, &mut saved)?;
                let hfn = st.pool.alloc()?;
                st.pool.write(hfn, 0, &saved)?;
                st.swap_counters.read_back += 1;
                let keep = !write && st.swap.keeps_clean_copies();
                if keep {
                    // set_page frees a page's old slot unless it is recorded as clean.
                    st.set_page(backing, page, PageState::Private(hfn));
                    st.clean_copies.insert((backing.0, page), slot);
                } else {
                    st.swap.free(slot);
                    st.set_page(backing, page, PageState::Private(hfn));
                }
                Resolved {
                    hfn,
                    writable: !keep,
                }
            }
        };
        // Becoming resident needs no notification: no guest mapping of this page can exist
        // while it has no frame (removal unmapped it).
        st.pool.get(resolved.hfn)?;
        Ok(resolved)
    }

    /// Drops the reference [`HostMem::resolve`] returned.
    pub fn release(&self, resolved: Resolved) {
        let mut st = self.state.lock();
        st.pool
            .put(resolved.hfn)
            .expect("released frame holds the resolve reference");
    }

    /// Frees the swap copies of up to `max` resident clean pages (when the store is full):
    /// those pages stay resident and correct, their next write simply finds no copy to
    /// drop, and evicting them later writes them out again. Changes no guest mapping.
    /// Returns how many copies were freed.
    pub fn drop_clean_copies(&self, max: usize) -> usize {
        let mut st = self.state.lock();
        let mut dropped = 0;
        while dropped < max {
            let Some((_, slot)) = st.clean_copies.pop_first() else {
                break;
            };
            st.swap.free(slot);
            dropped += 1;
        }
        dropped
    }

    /// Writes host-side data into a page (the VMM writing guest RAM through its own mapping):
    /// resolves it for writing, then copies `data` in.
    pub fn write(
        &self,
        notifier: &(impl MmuNotifier + ?Sized),
        backing: BackingId,
        page: u64,
        offset: usize,
        data: &[u8],
    ) -> Result<(), HostMemError> {
        match offset.checked_add(data.len()) {
            Some(end) if end <= FRAME_BYTES => {}
            _ => return Err(HostMemError::BadOffset),
        }
        loop {
            let resolved = self.resolve(notifier, backing, page, true)?;
            let mut st = self.state.lock();
            // Our reference keeps the frame from being freed or reused, but between `resolve`
            // and this lock a merge, swap-out or balloon may have moved the page off it:
            // writing then would be lost (or seen by sharers). Write only while the page
            // still owns the frame privately; otherwise resolve again.
            let still_ours = st.page(backing, page)? == PageState::Private(resolved.hfn);
            let result = still_ours.then(|| st.pool.write(resolved.hfn, offset, data));
            st.pool.put(resolved.hfn).expect("resolve reference");
            if let Some(result) = result {
                return result.map_err(HostMemError::from);
            }
        }
    }

    /// Reads a page's current contents (zeroes if it has no frame or swap copy).
    pub fn read(
        &self,
        backing: BackingId,
        page: u64,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<(), HostMemError> {
        match offset.checked_add(buf.len()) {
            Some(end) if end <= FRAME_BYTES => {}
            _ => return Err(HostMemError::BadOffset),
        }
        let mut st = self.state.lock();
        match st.page(backing, page)? {
            PageState::Private(h) | PageState::Shared(h) => st.pool.read(h, offset, buf)?,
            PageState::SwappedOut(slot) => {
                let mut saved = page_buffer()?;
                st.swap.load(slot, &mut saved)?;
                buf.copy_from_slice(&saved[offset..offset + buf.len()]);
            }
            PageState::NotTouched | PageState::Ballooned => buf.fill(0),
        }
        Ok(())
    }

    /// Saves a resident page to the swap store and frees its frame reference. Returns whether
    /// the page was resident (others are left alone).
    pub fn swap_out(
        &self,
        notifier: &(impl MmuNotifier + ?Sized),
        backing: BackingId,
        page: u64,
    ) -> Result<bool, HostMemError> {
        let mut st = self.state.lock();
        let Some(hfn) = st.page(backing, page)?.frame() else {
            return Ok(false);
        };
        // Unmap (and wait for every CPU to drop its translations) before copying: a guest
        // store through a still-valid writable translation after the copy would be lost
        // with the frame. A fault meanwhile waits for this lock, then reads the page back.
        let pages = page..page + 1;
        notifier.invalidate_range_start(backing, pages.clone());
        let saved = st.save_to_swap(backing, page, hfn);
        if let Ok(slot) = saved {
            st.drop_page(backing, page, PageState::SwappedOut(slot));
        }
        // On failure the page stays resident; its next access maps it again.
        notifier.invalidate_range_end(backing, pages);
        saved.map(|_| true)
    }

    /// Swaps out every resident page of `pages` with one invalidation over the range (one
    /// flush of derived translations instead of one per page). The range is unmapped before
    /// any page is copied (see [`HostMem::swap_out`]); if the store fills, the pages from
    /// the one that did not fit on stay resident (they fault back in without a copy).
    /// Returns how many pages went out; `OutOfMemory` only when none could.
    pub fn swap_out_range(
        &self,
        notifier: &(impl MmuNotifier + ?Sized),
        backing: BackingId,
        pages: Range<u64>,
    ) -> Result<u64, HostMemError> {
        let mut st = self.state.lock();
        st.check_range(backing, &pages)?;
        if !st.pages(backing)?[pages.start as usize..pages.end as usize]
            .iter()
            .any(|p| p.frame().is_some())
        {
            return Ok(0);
        }
        notifier.invalidate_range_start(backing, pages.clone());
        let mut out = 0;
        let mut full = None;
        for page in pages.clone() {
            let Some(hfn) = st.page(backing, page)?.frame() else {
                continue;
            };
            match st.save_to_swap(backing, page, hfn) {
                Ok(slot) => {
                    st.drop_page(backing, page, PageState::SwappedOut(slot));
                    out += 1;
                }
                Err(e) => {
                    full = Some(e);
                    break;
                }
            }
        }
        notifier.invalidate_range_end(backing, pages);
        match full {
            Some(e) if out == 0 => Err(e),
            _ => Ok(out),
        }
    }

    /// Gives `pages` back to the host (balloon inflation): every frame and swap copy is
    /// dropped and the pages read as zero afterwards.
    pub fn balloon(
        &self,
        notifier: &(impl MmuNotifier + ?Sized),
        backing: BackingId,
        pages: Range<u64>,
    ) -> Result<(), HostMemError> {
        let mut st = self.state.lock();
        st.check_range(backing, &pages)?;
        notifier.invalidate_range_start(backing, pages.clone());
        for page in pages.clone() {
            st.drop_page(backing, page, PageState::Ballooned);
        }
        notifier.invalidate_range_end(backing, pages);
        Ok(())
    }

    /// Merges two resident pages with identical contents onto one shared frame (the frame of
    /// `(to, to_page)`), the way a same-page merger would. Returns whether a merge happened
    /// (false if either page is not resident, they differ, or they already share a frame).
    pub fn merge(
        &self,
        notifier: &(impl MmuNotifier + ?Sized),
        from: (BackingId, u64),
        to: (BackingId, u64),
    ) -> Result<bool, HostMemError> {
        let mut st = self.state.lock();
        let (Some(from_hfn), Some(to_hfn)) = (
            st.page(from.0, from.1)?.frame(),
            st.page(to.0, to.1)?.frame(),
        ) else {
            return Ok(false);
        };
        if from == to || from_hfn == to_hfn {
            return Ok(false);
        }
        // Write-protect both pages before comparing: a guest store through a writable
        // translation could otherwise land between the comparison and the remap (lost, or
        // seen by the other sharer). Any store from now on faults and waits for our lock.
        write_protect(notifier, to, to_hfn);
        write_protect(notifier, from, from_hfn);
        if !st.pool.same_contents(from_hfn, to_hfn)? {
            // Both stay private; their next store faults once and gets write access back.
            return Ok(false);
        }
        let shared = HostEntry {
            hfn: to_hfn,
            writable: false,
            dirty: false,
        };
        st.set_page(to.0, to.1, PageState::Shared(to_hfn));
        st.pool.get(to_hfn)?;
        notifier.set_entry(from.0, from.1, shared);
        st.set_page(from.0, from.1, PageState::Shared(to_hfn));
        st.pool.put(from_hfn)?;
        Ok(true)
    }

    /// Makes a resident page shared read-only in place and takes one extra reference to its
    /// frame for the caller (a same-page merger's stable frame). Returns the frame, or `None`
    /// if the page is not resident. The caller must never write the frame and drops its
    /// reference with [`HostMem::release_frame`]; while it holds it, no write fault can take
    /// the frame back as private, so the frame stays a valid target for
    /// [`HostMem::merge_onto`].
    pub fn share_page(
        &self,
        notifier: &(impl MmuNotifier + ?Sized),
        page: (BackingId, u64),
    ) -> Result<Option<Hfn>, HostMemError> {
        let mut st = self.state.lock();
        let hfn = match st.page(page.0, page.1)? {
            PageState::Shared(hfn) => hfn,
            PageState::Private(hfn) => {
                write_protect(notifier, page, hfn);
                st.set_page(page.0, page.1, PageState::Shared(hfn));
                hfn
            }
            _ => return Ok(None),
        };
        st.pool.get(hfn)?;
        Ok(Some(hfn))
    }

    /// Merges a resident page onto `target`, a shared frame the caller holds a reference to
    /// (from [`HostMem::share_page`]), if their bytes are equal. The page is write-protected
    /// before the comparison, so a concurrent guest store either lands before it (and the
    /// comparison sees it) or faults and copies afterwards. Returns whether the page now
    /// shares `target` because of this call.
    pub fn merge_onto(
        &self,
        notifier: &(impl MmuNotifier + ?Sized),
        page: (BackingId, u64),
        target: Hfn,
    ) -> Result<bool, HostMemError> {
        let mut st = self.state.lock();
        let Some(old) = st.page(page.0, page.1)?.frame() else {
            return Ok(false);
        };
        if old == target {
            return Ok(false);
        }
        write_protect(notifier, page, old);
        if !st.pool.same_contents(old, target)? {
            return Ok(false);
        }
        notifier.set_entry(
            page.0,
            page.1,
            HostEntry {
                hfn: target,
                writable: false,
                dirty: false,
            },
        );
        st.set_page(page.0, page.1, PageState::Shared(target));
        st.pool.get(target)?;
        st.pool.put(old)?;
        Ok(true)
    }

    /// Drops a reference taken by [`HostMem::share_page`] (freeing the frame if no page
    /// shares it any more).
    pub fn release_frame(&self, hfn: Hfn) -> Result<(), HostMemError> {
        self.state.lock().pool.put(hfn).map_err(|e| match e {
            PoolError::BadFrame | PoolError::NotAllocated => HostMemError::NotResident,
            other => HostMemError::from(other),
        })?;
        Ok(())
    }

    /// Ages `pages` in the guest mappings; returns whether any was young.
    pub fn age(
        &self,
        notifier: &(impl MmuNotifier + ?Sized),
        backing: BackingId,
        pages: Range<u64>,
    ) -> Result<bool, HostMemError> {
        let st = self.state.lock();
        st.check_range(backing, &pages)?;
        Ok(notifier.clear_young(backing, pages))
    }

    /// Whether `page` is young in the guest mappings (changes nothing).
    pub fn test_age(
        &self,
        notifier: &(impl MmuNotifier + ?Sized),
        backing: BackingId,
        page: u64,
    ) -> Result<bool, HostMemError> {
        let st = self.state.lock();
        st.page(backing, page)?;
        Ok(notifier.test_young(backing, page))
    }

    /// Frees every page of a backing object and the object itself. Memslots still naming
    /// it fault with an error afterwards.
    pub fn remove_backing(
        &self,
        notifier: &(impl MmuNotifier + ?Sized),
        backing: BackingId,
    ) -> Result<(), HostMemError> {
        let mut st = self.state.lock();
        let len = st.backing_len(backing)?;
        if len > 0 {
            notifier.invalidate_range_start(backing, 0..len);
            for page in 0..len {
                st.drop_page(backing, page, PageState::NotTouched);
            }
            notifier.invalidate_range_end(backing, 0..len);
        }
        st.backings[backing.0 as usize] = None;
        Ok(())
    }
}

/// Takes write access away from every guest mapping of `page` (still on frame `hfn`).
fn write_protect(notifier: &(impl MmuNotifier + ?Sized), page: (BackingId, u64), hfn: Hfn) {
    notifier.set_entry(
        page.0,
        page.1,
        HostEntry {
            hfn,
            writable: false,
            dirty: false,
        },
    );
}

/// How many references each frame gets from the page states `states` (for invariant checks).
pub(crate) fn expected_refcounts(states: &[PageState]) -> Vec<(Hfn, u32)> {
    let mut counts: Vec<(Hfn, u32)> = vec![];
    for h in states.iter().filter_map(|s| s.frame()) {
        match counts.iter_mut().find(|(f, _)| *f == h) {
            Some((_, n)) => *n += 1,
            None => counts.push((h, 1)),
        }
    }
    counts
}
