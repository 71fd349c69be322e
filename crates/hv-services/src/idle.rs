//! Idle-page tracking: a per-page idle age from periodic aging passes, and a working-set
//! estimate per VM.
//!
//! MIPS has no hardware accessed bit: "young" is an attribute of the GPA entry, cleared by
//! [`Vm::age`] (the next access faults and the fast path makes the entry young again) and read
//! by [`Vm::test_age`]. Each [`IdleTracker::pass`] reads every page's young bit, then ages the
//! pages chunk by chunk. A page's idle age is the number of passes since it was last seen
//! young, saturating at [`MAX_AGE`]; it takes 4 bits per page. The working set is the
//! pages whose age is below the configured window: those touched in the last `window`
//! intervals.
//!
//! Reading and clearing are two steps: a page that was old when read, then touched before
//! its chunk is aged, has that young bit cleared unseen. A page in use is touched again and
//! seen at a later pass; a page touched exactly once in that stretch looks idle. Small
//! chunks keep the stretch short ([`IdleTracker::set_chunk_pages`]).

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use hv_core::fault::Vm;
use hv_core::frame_pool::FrameMemory;
use hv_core::host_mem::HostMemError;
use hv_core::memslot::BackingId;
use hv_core::shootdown::RemoteFlush;
use hv_core::table_frames::TableFrames;

/// Largest idle age (4 bits per page): "idle for at least this many passes".
pub const MAX_AGE: u8 = 15;
/// Pages aged by one `age` call by default (one flush of derived translations per chunk).
pub const AGE_CHUNK_PAGES: u64 = 64;

/// Errors from the idle tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleError {
    /// The window must be 1..=MAX_AGE passes.
    BadWindow,
    /// The memory core refused (a backing disappeared).
    Core(HostMemError),
}

impl fmt::Display for IdleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdleError::BadWindow => write!(f, "working-set window must be 1..={MAX_AGE} passes"),
            IdleError::Core(e) => write!(f, "memory core: {e}"),
        }
    }
}

impl From<HostMemError> for IdleError {
    fn from(e: HostMemError) -> Self {
        IdleError::Core(e)
    }
}

/// Idle ages of one backing object, two pages per byte.
#[derive(Debug, Clone)]
struct BackingAges {
    backing: BackingId,
    npages: u64,
    nibbles: Vec<u8>,
}

impl BackingAges {
    fn new(backing: BackingId, npages: u64) -> Self {
        Self {
            backing,
            npages,
            // A page never seen young starts fully idle.
            nibbles: vec![MAX_AGE << 4 | MAX_AGE; npages.div_ceil(2) as usize],
        }
    }

    fn get(&self, page: u64) -> u8 {
        let byte = self.nibbles[(page / 2) as usize];
        if page.is_multiple_of(2) {
            byte & 0xf
        } else {
            byte >> 4
        }
    }

    fn set(&mut self, page: u64, age: u8) {
        let byte = &mut self.nibbles[(page / 2) as usize];
        if page.is_multiple_of(2) {
            *byte = (*byte & 0xf0) | age;
        } else {
            *byte = (*byte & 0x0f) | (age << 4);
        }
    }
}

/// Working-set and idle statistics of one VM, after the latest pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleStats {
    /// Aging passes done.
    pub passes: u64,
    /// Pages tracked.
    pub pages: u64,
    /// Pages touched in the last `window` intervals.
    pub working_set: u64,
    /// The window, in passes.
    pub window: u8,
    /// Pages by idle age (index = age, the last bucket is "at least MAX_AGE").
    pub histogram: [u64; MAX_AGE as usize + 1],
}

/// Per-VM idle tracker.
#[derive(Debug, Clone)]
pub struct IdleTracker {
    backings: Vec<BackingAges>,
    window: u8,
    passes: u64,
    chunk_pages: u64,
}

impl IdleTracker {
    /// A tracker over every backing object `vm`'s memslots map now, with a working-set
    /// window of `window` passes. On a host memory layer shared by several VMs the other
    /// VMs' backings are not this VM's working set, so only the memslots count.
    pub fn new<T, M, R>(vm: &Vm<T, M, R>, window: u8) -> Result<Self, IdleError>
    where
        T: TableFrames,
        M: FrameMemory,
        R: RemoteFlush,
    {
        if window == 0 || window > MAX_AGE {
            return Err(IdleError::BadWindow);
        }
        let mut ids: Vec<BackingId> =
            vm.with_mmu(|mmu| mmu.slots.iter().map(|slot| slot.backing()).collect());
        ids.sort_unstable_by_key(|id| id.0);
        ids.dedup();
        let host = vm.host().lock();
        let mut backings = Vec::new();
        for id in ids {
            backings.push(BackingAges::new(id, host.backing_len(id)?));
        }
        Ok(Self {
            backings,
            window,
            passes: 0,
            chunk_pages: AGE_CHUNK_PAGES,
        })
    }

    /// Ages `pages` pages per `age` call (at least 1). Each call flushes the derived
    /// translations once, which on a host without inter-processor interrupts waits for
    /// every CPU running a guest to leave it; bigger chunks mean fewer waits, but a longer
    /// stretch between a page's `test_age` and its aging, in which a first access to an
    /// idle page is cleared unseen (it is seen again at its next access).
    pub fn set_chunk_pages(&mut self, pages: u64) {
        self.chunk_pages = pages.max(1);
    }

    /// The working-set window in passes.
    pub fn window(&self) -> u8 {
        self.window
    }

    /// Aging passes done.
    pub fn passes(&self) -> u64 {
        self.passes
    }

    /// One aging pass: every page's idle age is updated from its young bit, then the young
    /// bits are cleared so the next interval starts afresh.
    pub fn pass<T, M, R>(&mut self, vm: &Vm<T, M, R>) -> Result<(), IdleError>
    where
        T: TableFrames,
        M: FrameMemory,
        R: RemoteFlush,
    {
        for ages in &mut self.backings {
            let mut start = 0;
            while start < ages.npages {
                let end = (start + self.chunk_pages).min(ages.npages);
                for page in start..end {
                    let age = if vm.test_age(ages.backing, page)? {
                        0
                    } else {
                        ages.get(page).saturating_add(1).min(MAX_AGE)
                    };
                    ages.set(page, age);
                }
                vm.age(ages.backing, start..end)?;
                start = end;
            }
        }
        self.passes += 1;
        Ok(())
    }

    /// The idle age of a backing page (`None` if not tracked).
    pub fn age_of(&self, backing: BackingId, page: u64) -> Option<u8> {
        let ages = self.backings.iter().find(|a| a.backing == backing)?;
        (page < ages.npages).then(|| ages.get(page))
    }

    /// Every tracked page with its idle age: `(backing, page, age)`.
    pub fn ages(&self) -> impl Iterator<Item = (BackingId, u64, u8)> + '_ {
        self.backings
            .iter()
            .flat_map(|a| (0..a.npages).map(move |p| (a.backing, p, a.get(p))))
    }

    /// Pages of `backing` in `pages` touched in the last `window` intervals (pages outside
    /// the tracked backing count as not touched).
    pub fn working_set_in(&self, backing: BackingId, pages: Range<u64>) -> u64 {
        let Some(ages) = self.backings.iter().find(|a| a.backing == backing) else {
            return 0;
        };
        (pages.start..pages.end.min(ages.npages))
            .filter(|&p| ages.get(p) < self.window)
            .count() as u64
    }

    /// Pages tracked for this VM.
    pub fn pages(&self) -> u64 {
        self.backings.iter().map(|a| a.npages).sum()
    }

    /// The tracked backing objects.
    pub fn backings(&self) -> impl Iterator<Item = BackingId> + '_ {
        self.backings.iter().map(|a| a.backing)
    }

    /// Statistics after the latest pass.
    pub fn stats(&self) -> IdleStats {
        let mut histogram = [0u64; MAX_AGE as usize + 1];
        for (_, _, age) in self.ages() {
            histogram[usize::from(age)] += 1;
        }
        IdleStats {
            passes: self.passes,
            pages: histogram.iter().sum(),
            working_set: histogram[..usize::from(self.window)].iter().sum(),
            window: self.window,
            histogram,
        }
    }

    /// Bytes of per-page metadata (4 bits per page).
    pub fn metadata_bytes(&self) -> usize {
        self.backings.iter().map(|a| a.nibbles.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testvm::{self, gpa};

    #[test]
    fn window_is_checked() {
        let (vm, _) = testvm::vm(16, 8);
        assert_eq!(IdleTracker::new(&*vm, 0).err(), Some(IdleError::BadWindow));
        assert_eq!(
            IdleTracker::new(&*vm, MAX_AGE + 1).err(),
            Some(IdleError::BadWindow)
        );
        assert!(IdleError::BadWindow.to_string().contains("window"));
        assert!(IdleTracker::new(&*vm, MAX_AGE).is_ok());
    }

    #[test]
    fn ages_count_passes_since_last_touch_and_saturate() {
        let (vm, b) = testvm::vm(64, 5);
        let mut t = IdleTracker::new(&*vm, 2).unwrap();
        assert_eq!(t.metadata_bytes(), 3);
        for i in 0..5 {
            vm.map_page(gpa(i), false).unwrap();
        }
        t.pass(&*vm).unwrap();
        assert!((0..5).all(|i| t.age_of(b, i) == Some(0)));
        // Page 1 is touched every interval, page 3 once more, the others never again.
        for round in 1..=20u8 {
            vm.map_page(gpa(1), round % 2 == 0).unwrap();
            if round == 3 {
                vm.map_page(gpa(3), true).unwrap();
            }
            t.pass(&*vm).unwrap();
        }
        assert_eq!(t.age_of(b, 1), Some(0));
        assert_eq!(t.age_of(b, 3), Some(MAX_AGE), "17 passes ago, saturated");
        assert_eq!(t.age_of(b, 0), Some(MAX_AGE));
        assert_eq!(t.age_of(b, 5), None);
        let s = t.stats();
        assert_eq!((s.passes, s.pages, s.working_set), (21, 5, 1));
        assert_eq!(s.histogram[0], 1);
        assert_eq!(s.histogram[MAX_AGE as usize], 4);
        // Touched one pass ago: still in the 2-pass window; two passes ago: out of it.
        vm.map_page(gpa(4), false).unwrap();
        t.pass(&*vm).unwrap();
        t.pass(&*vm).unwrap();
        assert_eq!((t.age_of(b, 4), t.age_of(b, 1)), (Some(1), Some(2)));
        assert_eq!(t.stats().working_set, 1);
        vm.check_invariants().unwrap();
        testvm::teardown_clean(vm);
    }

    /// A guest with a known working set, touched at random within each interval, among
    /// pages touched only once: the estimate is within 5 % of the truth, and follows the
    /// working set when it moves.
    #[test]
    fn working_set_estimate_within_five_percent() {
        const RAM: u64 = 1024;
        let (vm, _) = testvm::vm(1200, RAM);
        let mut t = IdleTracker::new(&*vm, 4).unwrap();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..RAM {
            vm.map_page(gpa(i), true).unwrap();
        }
        let mut check = |t: &mut IdleTracker, set: std::ops::Range<u64>| {
            for _ in 0..8 {
                // Each interval touches every page of the set, in random order, with random
                // reads and writes, plus some repeats.
                let n = set.end - set.start;
                for k in 0..n + n / 4 {
                    let i = set.start + if k < n { k } else { rand() % n };
                    let j = set.start + (i - set.start + rand() % n) % n;
                    vm.map_page(gpa(j), rand() % 3 == 0).unwrap();
                    vm.map_page(gpa(i), false).unwrap();
                }
                t.pass(&*vm).unwrap();
            }
            let ws = t.stats().working_set as f64;
            let truth = (set.end - set.start) as f64;
            assert!(
                (ws - truth).abs() <= 0.05 * truth,
                "estimate {ws} for a working set of {truth}"
            );
        };
        check(&mut t, 100..400);
        check(&mut t, 600..1000);
        vm.check_invariants().unwrap();
        testvm::teardown_clean(vm);
    }

    /// VMs on one shared host layer: each tracker sees its own VM's backing only, and the
    /// working sets stay apart.
    #[test]
    fn trackers_on_a_shared_layer_track_their_own_vm() {
        let (host, vms) = testvm::shared_vms(256, 3, 32);
        let mut trackers: Vec<IdleTracker> = vms
            .iter()
            .map(|(vm, _)| IdleTracker::new(&**vm, 2).unwrap())
            .collect();
        for ((_, b), t) in vms.iter().zip(&trackers) {
            assert_eq!(t.backings().collect::<Vec<_>>(), [*b]);
            assert_eq!(t.pages(), 32);
        }
        // VM i touches pages 0..8 * (i + 1) every interval.
        for _ in 0..3 {
            for (i, (vm, _)) in vms.iter().enumerate() {
                for p in 0..8 * (i as u64 + 1) {
                    vm.map_page(gpa(p), p % 2 == 0).unwrap();
                }
            }
            for ((vm, _), t) in vms.iter().zip(&mut trackers) {
                t.pass(&**vm).unwrap();
            }
        }
        for (i, ((_, b), t)) in vms.iter().zip(&trackers).enumerate() {
            let want = 8 * (i as u64 + 1);
            assert_eq!(t.stats().working_set, want, "vm {i}");
            assert_eq!(t.working_set_in(*b, 0..4), 4);
            assert_eq!(t.working_set_in(*b, 4..100), want - 4);
            assert_eq!(t.working_set_in(BackingId(99), 0..4), 0);
        }
        drop(trackers);
        testvm::teardown_shared(host, vms);
    }

    /// The chunk size changes how often translations are flushed, not what a pass sees
    /// when nothing runs during it.
    #[test]
    fn chunk_size_does_not_change_the_ages() {
        let (vm, b) = testvm::vm(64, 40);
        let mut small = IdleTracker::new(&*vm, 2).unwrap();
        let mut whole = small.clone();
        small.set_chunk_pages(0);
        whole.set_chunk_pages(1 << 20);
        for round in 0..6u64 {
            for p in (0..40).filter(|p| (p + round) % 3 == 0) {
                vm.map_page(gpa(p), p % 2 == 0).unwrap();
            }
            // Both trackers read the same young bits: the first pass clears them, so the
            // second tracker reads them from a copy of the same touches.
            let touched: Vec<u64> = (0..40).filter(|&p| vm.test_age(b, p).unwrap()).collect();
            small.pass(&*vm).unwrap();
            for &p in &touched {
                vm.map_page(gpa(p), false).unwrap();
            }
            whole.pass(&*vm).unwrap();
        }
        let ages = |t: &IdleTracker| t.ages().map(|(_, _, a)| a).collect::<Vec<_>>();
        assert_eq!(ages(&small), ages(&whole));
        assert_eq!(small.stats(), whole.stats());
        assert!(small.stats().working_set > 0 && small.stats().working_set < 40);
        testvm::teardown_clean(vm);
    }
}
