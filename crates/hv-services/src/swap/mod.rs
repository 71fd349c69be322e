//! Compressed swap: when free host frames fall below a watermark, the coldest pages of VMs
//! above their reservation are evicted into a compressed pool, and faulted back in on access.
//!
//! Eviction goes through [`Vm::swap_out`], which saves the page to the VM's swap store
//! ([`store::SharedSwap`] over a [`store::SwapBackend`]), unmaps it through the notifier and
//! drops its frame. The fault slow path reads it back. A page read back keeps its copy while
//! it stays unwritten (the memory core maps it read-only until the first write), so evicting
//! it again writes nothing: that is the dirty tracking that decides what must be written out.
//!
//! [`policy::select_victims`] chooses the pages from the idle ages of [`IdleTracker`]; only
//! private pages are candidates (evicting one sharer of a merged frame frees nothing).

pub mod policy;
pub mod store;

use alloc::vec::Vec;
use core::fmt;

use hv_core::fault::Vm;
use hv_core::frame_pool::FrameMemory;
use hv_core::host_mem::{HostMemError, PageState};
use hv_core::notifier::MmuNotifier;
use hv_core::shootdown::RemoteFlush;
use hv_core::table_frames::TableFrames;

use crate::idle::IdleTracker;
use policy::{select_victims, Candidate, VmUsage};

/// Longest run of consecutive pages evicted with one invalidation.
const MAX_RUN_PAGES: u64 = 64;
/// Clean copies freed at a time when the store is full.
const CLEAN_COPIES_DROPPED: usize = 64;

/// Errors from the swap service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwapError {
    /// The watermarks are inconsistent (low above high).
    BadWatermarks,
    /// The memory core refused an eviction for another reason than a full pool.
    Core(HostMemError),
}

impl fmt::Display for SwapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SwapError::BadWatermarks => f.write_str("swap low watermark above the high one"),
            SwapError::Core(e) => write!(f, "memory core: {e}"),
        }
    }
}

/// When and how much to evict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwapConfig {
    /// Evict when fewer frames than this are free.
    pub low_watermark: usize,
    /// Then evict until this many are free (or nothing more may go).
    pub high_watermark: usize,
    /// Pages younger than this (idle age) are never evicted.
    pub min_age: u8,
}

/// Counters of the swap service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwapperCounters {
    /// Balance calls that found free frames below the low watermark.
    pub pressure_events: u64,
    /// Pages evicted.
    pub evicted: u64,
    /// Evictions refused because the swap pool was full.
    pub pool_full: u64,
    /// Reclaim runs (from `balance` under pressure, or asked for directly).
    pub reclaims: u64,
    /// Swap copies of resident clean pages freed to make room in a full store.
    pub clean_copies_dropped: u64,
}

/// One VM as the swap service sees it.
#[derive(Debug)]
pub struct SwapVm<'a, T, M, R> {
    /// The VM.
    pub vm: &'a Vm<T, M, R>,
    /// Its idle ages (from the latest pass).
    pub idle: &'a IdleTracker,
    /// Resident pages it always keeps.
    pub reservation: u64,
}

/// The swap service.
#[derive(Debug)]
pub struct Swapper {
    config: SwapConfig,
    counters: SwapperCounters,
}

impl Swapper {
    /// A service with `config`.
    pub fn new(config: SwapConfig) -> Result<Self, SwapError> {
        if config.low_watermark > config.high_watermark {
            return Err(SwapError::BadWatermarks);
        }
        Ok(Self {
            config,
            counters: SwapperCounters::default(),
        })
    }

    /// The counters.
    pub fn counters(&self) -> SwapperCounters {
        self.counters
    }

    /// The configuration.
    pub fn config(&self) -> SwapConfig {
        self.config
    }

    /// With `free_frames` host frames free, evicts pages of `vms` if that is below the low
    /// watermark, up to the high watermark. Returns the frames freed.
    pub fn balance<T, M, R>(
        &mut self,
        free_frames: usize,
        vms: &[SwapVm<'_, T, M, R>],
    ) -> Result<usize, SwapError>
    where
        T: TableFrames,
        M: FrameMemory,
        R: RemoteFlush,
    {
        if free_frames >= self.config.low_watermark {
            return Ok(0);
        }
        self.counters.pressure_events += 1;
        let want = self.config.high_watermark - free_frames;
        self.reclaim(want, vms, self.config.min_age)
    }

    /// Evicts up to `want` pages of `vms` whatever the watermarks, none younger than
    /// `min_age` (a fault that found no free frame asks with 0: any progress beats stopping
    /// the guest). Returns the frames freed.
    pub fn reclaim<T, M, R>(
        &mut self,
        want: usize,
        vms: &[SwapVm<'_, T, M, R>],
        min_age: u8,
    ) -> Result<usize, SwapError>
    where
        T: TableFrames,
        M: FrameMemory,
        R: RemoteFlush,
    {
        if want == 0 {
            return Ok(0);
        }
        self.counters.reclaims += 1;
        let mut usage = Vec::with_capacity(vms.len());
        // Within one age, pages whose swap copy is still valid go first: evicting them
        // writes nothing.
        let mut clean = Vec::new();
        let mut dirty = Vec::new();
        for (index, v) in vms.iter().enumerate() {
            let host = v.vm.host().lock();
            let mut resident = 0;
            for (backing, page, age) in v.idle.ages() {
                match host.page(backing, page) {
                    Ok(PageState::Private(_)) => {
                        resident += 1;
                        // Young now means touched since the last pass: a page faulted in
                        // (swapped back) since then still carries the age it had while
                        // out, and evicting it at once would thrash.
                        let age = if v.vm.test_young(backing, page) {
                            0
                        } else {
                            age
                        };
                        let c = Candidate {
                            vm: index,
                            backing,
                            page,
                            age,
                        };
                        if host.has_clean_copy(backing, page) {
                            clean.push(c);
                        } else {
                            dirty.push(c);
                        }
                    }
                    Ok(PageState::Shared(_)) => resident += 1,
                    _ => {}
                }
            }
            usage.push(VmUsage {
                resident,
                reservation: v.reservation,
            });
        }
        let mut freed = 0;
        let candidates = clean.into_iter().chain(dirty);
        // Consecutive pages of one backing go out together: one flush per run instead of
        // one per page (each flush waits for every CPU in a guest to leave it).
        let mut victims = select_victims(&usage, candidates, want, min_age);
        victims.sort_unstable_by_key(|c| (c.vm, c.backing.0, c.page));
        let mut next = 0;
        while next < victims.len() {
            let first = victims[next];
            let mut end = first.page + 1;
            next += 1;
            while next < victims.len()
                && (victims[next].vm, victims[next].backing) == (first.vm, first.backing)
                && victims[next].page == end
                && end - first.page < MAX_RUN_PAGES
            {
                end += 1;
                next += 1;
            }
            let vm = vms[first.vm].vm;
            let mut result = vm.swap_out_range(first.backing, first.page..end);
            if result == Err(HostMemError::OutOfMemory) {
                // The store is full: the copies of resident clean pages are the room to
                // take back (they only spare a rewrite), then the run goes out.
                let dropped = vm.host().drop_clean_copies(CLEAN_COPIES_DROPPED);
                self.counters.clean_copies_dropped += dropped as u64;
                if dropped > 0 {
                    result = vm.swap_out_range(first.backing, first.page..end);
                }
            }
            match result {
                // Pages that became non-resident meanwhile (ballooned, already out) and the
                // tail of a run that filled the store are not counted.
                Ok(out) => {
                    freed += out as usize;
                    self.counters.evicted += out;
                }
                Err(HostMemError::OutOfMemory) => {
                    self.counters.pool_full += 1;
                    break;
                }
                Err(e) => return Err(SwapError::Core(e)),
            }
        }
        Ok(freed)
    }
}

#[cfg(test)]
mod tests {
    use super::store::{MemBackend, SharedSwap};
    use super::*;
    use crate::testvm::{self, gpa, guest_read, TestVm};
    use alloc::boxed::Box;
    use alloc::sync::Arc;
    use hv_core::fault::FaultError;
    use hv_core::memslot::BackingId;

    /// Contents of page `page` of VM `vm` at `version`: mostly compressible text, every fifth
    /// page noise (stored raw).
    fn contents(vm: usize, page: u64, version: u32) -> Vec<u8> {
        let mut x = (vm as u64) << 40 | page << 8 | u64::from(version) | 1;
        (0..4096)
            .map(|i| {
                if page.is_multiple_of(5) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                } else {
                    let tag = [vm as u8, page as u8, version as u8, b'-'];
                    tag[i % 4]
                }
            })
            .collect()
    }

    fn guest_write(vm: &TestVm, b: BackingId, page: u64, data: &[u8]) {
        vm.map_page(gpa(page), true).unwrap();
        vm.host_write(b, page, 0, data).unwrap();
    }

    /// Three guests of 64 pages each under a host budget of 120 frames: they write, read
    /// back and rewrite all their memory in waves, with aging and balancing between chunks.
    #[test]
    fn overcommitted_guests_keep_their_memory_byte_exact() {
        const VMS: usize = 3;
        const RAM: u64 = 64;
        const BUDGET: usize = 120;
        const CHUNK: u64 = 8;
        let pool = SharedSwap::new(MemBackend::new(4 << 20));
        let vms: Vec<(Arc<TestVm>, BackingId)> = (0..VMS)
            .map(|_| {
                let (vm, b) = testvm::vm(RAM as usize + 8, RAM);
                assert!(vm.host().set_swap_store(Box::new(pool.clone())).is_ok());
                (vm, b)
            })
            .collect();
        let mut idle: Vec<IdleTracker> = vms
            .iter()
            .map(|(vm, _)| IdleTracker::new(&**vm, 4).unwrap())
            .collect();
        let mut swapper = Swapper::new(SwapConfig {
            low_watermark: 16,
            high_watermark: 32,
            min_age: 0,
        })
        .unwrap();
        let allocated = |vms: &[(Arc<TestVm>, BackingId)]| -> usize {
            vms.iter()
                .map(|(vm, _)| vm.host().lock().pool().allocated_count())
                .sum()
        };
        let mut versions = [[0u32; RAM as usize]; VMS];
        let mut most = 0;
        // Wave 0 writes everything; 1 verifies and rewrites the odd pages; 2 and 3 verify.
        for wave in 0..4 {
            for start in (0..RAM).step_by(CHUNK as usize) {
                for (v, (vm, b)) in vms.iter().enumerate() {
                    for page in start..start + CHUNK {
                        let version = &mut versions[v][page as usize];
                        if wave > 0 {
                            let got = guest_read(vm, *b, page);
                            assert!(
                                got == contents(v, page, *version),
                                "vm {v} page {page} wave {wave}"
                            );
                        }
                        if wave == 0 || (wave == 1 && page % 2 == 1) {
                            *version += 1;
                            guest_write(vm, *b, page, &contents(v, page, *version));
                        }
                    }
                }
                most = most.max(allocated(&vms));
                for (t, (vm, _)) in idle.iter_mut().zip(&vms) {
                    t.pass(&**vm).unwrap();
                }
                let views: Vec<SwapVm<'_, _, _, _>> = vms
                    .iter()
                    .zip(&idle)
                    .map(|((vm, _), t)| SwapVm {
                        vm: &**vm,
                        idle: t,
                        reservation: 8,
                    })
                    .collect();
                let free = BUDGET.saturating_sub(allocated(&vms));
                swapper.balance(free, &views).unwrap();
                assert!(
                    allocated(&vms) + 16 <= BUDGET,
                    "balance left {} frames in use",
                    allocated(&vms)
                );
            }
        }
        assert!(most <= BUDGET, "peak {most} within one chunk of the budget");
        let c = swapper.counters();
        assert!(c.evicted > 0 && c.pressure_events > 0 && c.pool_full == 0);
        let mut written = 0;
        let mut clean = 0;
        for (vm, _) in &vms {
            let sc = vm.host().lock().swap_counters();
            assert!(sc.read_back > 0);
            written += sc.written;
            clean += sc.clean_reused;
            vm.check_invariants().unwrap();
        }
        assert!(
            clean > 0,
            "clean pages were evicted again without rewriting"
        );
        assert_eq!(written + clean, c.evicted);
        let stats = pool.stats();
        assert!(stats.raw_pages > 0);
        assert!(
            stats.stored_bytes < stats.slots * 4096 / 2,
            "{stats:?}: the text pages compress"
        );
        for (vm, _) in vms {
            testvm::teardown_clean(vm);
        }
        assert_eq!(pool.stats().slots, 0, "every swap slot freed at teardown");
        assert_eq!(pool.stats().stored_bytes, 0);
    }

    /// Among pages of the same age, clean ones (copy still in the pool) go first.
    #[test]
    fn clean_pages_are_evicted_before_dirty_ones() {
        let (vm, b) = testvm::vm(16, 4);
        let pool = SharedSwap::new(MemBackend::new(1 << 20));
        assert!(vm.host().set_swap_store(Box::new(pool.clone())).is_ok());
        for page in 0..4 {
            guest_write(&vm, b, page, &contents(0, page + 1, 1));
        }
        for page in 2..4 {
            vm.swap_out(b, page).unwrap();
            guest_read(&vm, b, page);
        }
        let mut idle = IdleTracker::new(&*vm, 2).unwrap();
        idle.pass(&*vm).unwrap();
        assert!((0..4).all(|p| idle.age_of(b, p) == Some(0)));
        let mut swapper = Swapper::new(SwapConfig {
            low_watermark: 13,
            high_watermark: 14,
            min_age: 0,
        })
        .unwrap();
        let view = [SwapVm {
            vm: &*vm,
            idle: &idle,
            reservation: 0,
        }];
        assert_eq!(swapper.balance(12, &view), Ok(2));
        let host = vm.host().lock();
        assert!(matches!(host.page(b, 2), Ok(PageState::SwappedOut(_))));
        assert!(matches!(host.page(b, 3), Ok(PageState::SwappedOut(_))));
        assert!(matches!(host.page(b, 0), Ok(PageState::Private(_))));
        let c = host.swap_counters();
        assert_eq!((c.written, c.clean_reused), (2, 2));
        drop(host);
        // Enough free frames: nothing happens.
        assert_eq!(swapper.balance(13, &view), Ok(0));
        assert_eq!(swapper.counters().pressure_events, 1);
        testvm::teardown_clean(vm);
    }

    /// A VM whose own pool is smaller than its RAM: a fault that finds no frame runs the
    /// swapper and retries.
    #[test]
    fn fault_out_of_memory_swaps_and_retries() {
        const RAM: u64 = 64;
        let (vm, b) = testvm::vm(40, RAM);
        let pool = SharedSwap::new(MemBackend::new(1 << 20));
        assert!(vm.host().set_swap_store(Box::new(pool.clone())).is_ok());
        let mut idle = IdleTracker::new(&*vm, 2).unwrap();
        let mut swapper = Swapper::new(SwapConfig {
            low_watermark: 4,
            high_watermark: 8,
            min_age: 0,
        })
        .unwrap();
        let mut retries = 0;
        let mut touch = |page: u64, write: bool, idle: &mut IdleTracker| loop {
            match vm.map_page(gpa(page), write) {
                Ok(_) => return,
                Err(FaultError::OutOfMemory) => {
                    retries += 1;
                    idle.pass(&*vm).unwrap();
                    let free = vm.host().lock().pool().free_count();
                    let view = [SwapVm {
                        vm: &*vm,
                        idle: &*idle,
                        reservation: 0,
                    }];
                    assert!(swapper.balance(free, &view).unwrap() > 0);
                }
                Err(e) => panic!("fault: {e}"),
            }
        };
        for round in 0..3u8 {
            for page in 0..RAM {
                touch(page, true, &mut idle);
                vm.host_write(b, page, 0, &[round ^ page as u8; 64])
                    .unwrap();
            }
            for page in 0..RAM {
                touch(page, false, &mut idle);
                let mut got = [0u8; 64];
                vm.host().read(b, page, 0, &mut got).unwrap();
                assert_eq!(got, [round ^ page as u8; 64], "page {page}");
            }
        }
        assert!(retries > 0);
        assert!(SwapError::BadWatermarks.to_string().contains("watermark"));
        assert_eq!(
            Swapper::new(SwapConfig {
                low_watermark: 9,
                high_watermark: 8,
                min_age: 0
            })
            .err(),
            Some(SwapError::BadWatermarks)
        );
        testvm::teardown_clean(vm);
        assert_eq!(pool.stats().slots, 0);
    }

    /// Three VMs on one shared host pool (the firmware's layout), the pool in host frames:
    /// pressure evicts the coldest pages across VMs, never a VM's hot pages while colder ones
    /// exist, never below a reservation; a fault that finds the pool empty reclaims and
    /// retries; every byte comes back and every frame and swap chunk is freed at the end.
    #[test]
    fn shared_pool_evicts_coldest_across_vms_within_reservations() {
        use super::store::FrameBackend;
        use hv_core::addr::Hfn;
        use hv_core::frame_pool::VecFrameMemory;
        const RAM: u64 = 48;
        const POOL: usize = 100;
        let (host, vms) = testvm::shared_vms(POOL, 3, RAM);
        let area = Hfn::new(0x9_0000);
        let backend = FrameBackend::new(VecFrameMemory::new(area, 64), area, 64).unwrap();
        let pool = SharedSwap::new(backend);
        assert!(host.set_swap_store(Box::new(pool.clone())).is_ok());
        let mut idle: Vec<IdleTracker> = vms
            .iter()
            .map(|(vm, _)| IdleTracker::new(&**vm, 2).unwrap())
            .collect();
        let reservations = [8u64, 8, 40];
        let mut swapper = Swapper::new(SwapConfig {
            low_watermark: 40,
            high_watermark: 50,
            min_age: 1,
        })
        .unwrap();
        let free = || host.lock().pool().free_count();
        let resident = |b: BackingId| {
            let st = host.lock();
            (0..RAM)
                .filter(|&p| st.page(b, p).unwrap().frame().is_some())
                .count() as u64
        };
        let mut direct = 0;
        // A guest access; an empty pool runs an urgent reclaim and retries, as the
        // firmware's fault path does.
        let touch = |v: usize,
                     page: u64,
                     write: bool,
                     idle: &[IdleTracker],
                     swapper: &mut Swapper,
                     direct: &mut u32| loop {
            match vms[v].0.map_page(gpa(page), write) {
                Ok(_) => return,
                Err(FaultError::OutOfMemory) => {
                    *direct += 1;
                    let views: Vec<SwapVm<'_, _, _, _>> = vms
                        .iter()
                        .zip(idle)
                        .zip(reservations)
                        .map(|(((vm, _), t), reservation)| SwapVm {
                            vm: &**vm,
                            idle: t,
                            reservation,
                        })
                        .collect();
                    assert!(swapper.reclaim(4, &views, 0).unwrap() > 0, "progress");
                }
                Err(e) => panic!("fault: {e}"),
            }
        };
        for (v, (_, b)) in vms.iter().enumerate() {
            for page in 0..RAM {
                touch(v, page, true, &idle, &mut swapper, &mut direct);
                vms[v]
                    .0
                    .host_write(*b, page, 0, &contents(v, page, 1))
                    .unwrap();
            }
        }
        assert!(direct > 0, "144 pages of RAM over a 100-frame pool");
        // VM 0 keeps pages 0..12 hot for three intervals; everything else goes cold.
        for _ in 0..3 {
            for page in 0..12 {
                touch(0, page, false, &idle, &mut swapper, &mut direct);
            }
            for (t, (vm, _)) in idle.iter_mut().zip(&vms) {
                t.pass(&**vm).unwrap();
            }
        }
        let before: Vec<u64> = vms.iter().map(|(_, b)| resident(*b)).collect();
        let views: Vec<SwapVm<'_, _, _, _>> = vms
            .iter()
            .zip(&idle)
            .zip(reservations)
            .map(|(((vm, _), t), reservation)| SwapVm {
                vm: &**vm,
                idle: t,
                reservation,
            })
            .collect();
        let freed = swapper.balance(free(), &views).unwrap();
        drop(views);
        assert!(freed > 0);
        // The high watermark (50 free) is out of reach: VM 0's resident pages are all hot
        // (age 0, below min_age), VMs 1 and 2 go down to their reservations and no further.
        let after: Vec<u64> = vms.iter().map(|(_, b)| resident(*b)).collect();
        assert_eq!(before, [12, 40, 48]);
        assert_eq!(after, [12, 8, 40]);
        assert_eq!((freed, free()), (40, 40));
        for page in 0..12 {
            assert_eq!(idle[0].age_of(vms[0].1, page), Some(0));
            assert!(resident(vms[0].1) >= 12);
            let st = host.lock();
            assert!(
                matches!(st.page(vms[0].1, page), Ok(PageState::Private(_))),
                "hot page {page} of VM 0 stayed"
            );
        }
        for (v, (_, b)) in vms.iter().enumerate() {
            let now = resident(*b);
            assert!(
                now >= reservations[v].min(before[v]),
                "vm {v}: {now} resident, reservation {}",
                reservations[v]
            );
        }
        // Everything reads back byte-exact, through swap-ins that themselves need reclaim.
        for round in 0..2 {
            for (v, (vm, b)) in vms.iter().enumerate() {
                for page in 0..RAM {
                    touch(v, page, false, &idle, &mut swapper, &mut direct);
                    let mut got = vec![0; 4096];
                    vm.host().read(*b, page, 0, &mut got).unwrap();
                    assert!(
                        got == contents(v, page, 1),
                        "vm {v} page {page} round {round}"
                    );
                }
            }
        }
        {
            // Slots minus clean copies is exactly the pages out of memory now.
            let st = host.lock();
            let out = vms
                .iter()
                .flat_map(|(_, b)| st.pages_of(*b).unwrap())
                .filter(|s| matches!(s, PageState::SwappedOut(_)))
                .count();
            assert!(out > 0 && st.clean_copy_count() > 0);
            assert_eq!(st.swapped_pages() - st.clean_copy_count(), out);
        }
        let c = host.lock().swap_counters();
        assert!(c.read_back > 0 && c.written > 0);
        assert!(
            c.clean_reused > 0,
            "pages read back and evicted again were not rewritten"
        );
        assert_eq!(swapper.counters().pool_full, 0);
        drop(idle);
        testvm::teardown_shared(host, vms);
        assert_eq!(pool.stats().slots, 0);
        assert_eq!(
            pool.stats().stored_bytes,
            0,
            "every chunk of the swap area freed"
        );
    }

    /// A store that fills up with clean copies of pages read back gives those copies up
    /// before it refuses an eviction: the guest keeps running and loses nothing.
    #[test]
    fn a_full_store_gives_up_clean_copies_before_refusing() {
        use super::store::FrameBackend;
        use hv_core::addr::Hfn;
        use hv_core::frame_pool::VecFrameMemory;
        const RAM: u64 = 32;
        let (vm, b) = testvm::vm(24, RAM);
        let area = Hfn::new(0x9_0000);
        // Room for 12 incompressible pages: fewer than pages out plus clean copies.
        let backend = FrameBackend::new(VecFrameMemory::new(area, 12), area, 12).unwrap();
        let pool = SharedSwap::new(backend);
        assert!(vm.host().set_swap_store(Box::new(pool.clone())).is_ok());
        let mut idle = IdleTracker::new(&*vm, 2).unwrap();
        let mut swapper = Swapper::new(SwapConfig {
            low_watermark: 2,
            high_watermark: 4,
            min_age: 0,
        })
        .unwrap();
        // Every page of version 1 is noise (page % 5 == 0 in `contents` for page * 5).
        let data = |page: u64| contents(7, page * 5, 1);
        for round in 0..4 {
            for page in 0..RAM {
                loop {
                    match vm.map_page(gpa(page), round == 0) {
                        Ok(_) => break,
                        // A full pool without reservations is refused as committed.
                        Err(FaultError::OutOfMemory | FaultError::Refused(_)) => {
                            idle.pass(&*vm).unwrap();
                            let view = [SwapVm {
                                vm: &*vm,
                                idle: &idle,
                                reservation: 0,
                            }];
                            assert!(swapper.reclaim(4, &view, 0).unwrap() > 0, "progress");
                        }
                        Err(e) => panic!("fault: {e}"),
                    }
                }
                if round == 0 {
                    vm.host_write(b, page, 0, &data(page)).unwrap();
                } else {
                    let mut got = vec![0; 4096];
                    vm.host().read(b, page, 0, &mut got).unwrap();
                    assert!(got == data(page), "page {page} round {round}");
                }
            }
        }
        let c = swapper.counters();
        assert_eq!(c.pool_full, 0);
        assert!(c.clean_copies_dropped > 0, "{c:?}");
        assert_eq!(pool.stats().raw_pages, pool.stats().slots);
        vm.check_invariants().unwrap();
        testvm::teardown_clean(vm);
        assert_eq!(pool.stats().slots, 0);
    }
}
