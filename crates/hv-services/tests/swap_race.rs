//! Std-thread race of the swap service against a guest writing through its cached
//! translations.
//!
//! As in `dedup_race.rs`, frame memory is an array of atomic words the "guest" stores into
//! straight through its software TLB, and remote flushes go through the quiescence tracker.
//! The guest's RAM is larger than the host pool: its faults find the pool empty and reclaim
//! (as the firmware's fault path does), while a services thread ages the pages and evicts
//! whenever free frames run low. Each page's content is its word 0. The guest checks every
//! load against its own record, and at the end every page must hold exactly what the guest
//! last stored: a store landing in a frame after its contents were copied out is lost.

mod race_harness;

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use hv_core::addr::{Gfn, GfnRange, Hfn};
use hv_core::fault::{FaultError, Vm};
use hv_core::frame_pool::{FramePool, FRAME_BYTES};
use hv_core::memslot::{BackingId, SlotFlags};
use hv_core::pte::entrylo;
use hv_core::shootdown::QuiescenceTracker;
use hv_core::table_frames::ArenaTableFrames;
use hv_services::idle::IdleTracker;
use hv_services::swap::store::{MemBackend, SharedSwap};
use hv_services::swap::{SwapConfig, SwapVm, Swapper};
use race_harness::{
    AtomicFrames, LeaveOnPanic, Progress, RaceVm, Rng, TlbEntry, YieldAt, BASE, QUIESCE_EVERY,
    SLACK,
};

const FRAMES: usize = 12;
const PAGES: u64 = 20;
const RAM_GFN: u64 = 0x100;
const GUEST_OPS: u64 = 6_000;
/// Guest operations per services step, so the two threads interleave on a loaded machine.
const OPS_PER_STEP: u64 = 4;
/// Fruitless reclaims in a row (each after a yield) before the guest's fault counts as hung.
const RECLAIM_PATIENCE: u32 = 100_000;

/// The swap service's state, shared by the services thread and the guest's faults.
struct Service {
    idle: IdleTracker,
    swapper: Swapper,
}

impl Service {
    fn reclaim(&mut self, vm: &RaceVm, want: usize) -> usize {
        let view = [SwapVm {
            vm,
            idle: &self.idle,
            reservation: 0,
        }];
        self.swapper.reclaim(want, &view, 0).unwrap()
    }
}

/// The guest: random loads and stores of word 0, through a software TLB.
fn guest(
    vm: &RaceVm,
    memory: &AtomicFrames,
    service: &Mutex<Service>,
    progress: &Progress,
) -> Vec<u64> {
    let tracker = vm.remote_flush();
    let _leave = LeaveOnPanic(tracker);
    let mut tlb: Vec<Option<TlbEntry>> = vec![None; PAGES as usize];
    let mut shadow = vec![0u64; PAGES as usize];
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let flush = |tlb: &mut Vec<Option<TlbEntry>>| tlb.iter_mut().for_each(|e| *e = None);
    tracker.enter_guest(0, || flush(&mut tlb)).unwrap();
    let mut op = 0;
    while op < GUEST_OPS {
        if op % QUIESCE_EVERY == 0 {
            tracker.quiescent_point(0, || flush(&mut tlb)).unwrap();
        }
        progress.ops.store(op, Ordering::Relaxed);
        if op > progress.passes.load(Ordering::Relaxed) * OPS_PER_STEP + SLACK {
            tracker.quiescent_point(0, || flush(&mut tlb)).unwrap();
            std::thread::yield_now();
            continue;
        }
        let page = rng.below(PAGES) as usize;
        let write = rng.below(2) == 0;
        match tlb[page] {
            Some(e) if e.writable || !write => {
                let word = memory.word(e.hfn, 0);
                if write {
                    let value = op + 1;
                    word.store(value, Ordering::Relaxed);
                    shadow[page] = value;
                } else {
                    assert_eq!(word.load(Ordering::Relaxed), shadow[page], "page {page}");
                }
                op += 1;
            }
            _ => {
                tracker.exit_guest(0).unwrap();
                let gfn = Gfn::new(RAM_GFN + page as u64);
                let mut fruitless = 0;
                let pair = loop {
                    match vm.map_page(gfn.checked_addr().unwrap(), write) {
                        Ok(pair) => break pair,
                        // The pool is empty: reclaim, as the firmware's fault path does.
                        // Nothing may be reclaimable for a moment: the services thread's own
                        // swap-out holds pages between copy and free (it yields there on
                        // purpose). It frees them soon; only a lasting drought is a hang.
                        Err(FaultError::OutOfMemory) => {
                            if service.lock().unwrap().reclaim(vm, 2) > 0 {
                                fruitless = 0;
                            } else {
                                fruitless += 1;
                                assert!(fruitless < RECLAIM_PATIENCE, "no progress");
                                std::thread::yield_now();
                            }
                        }
                        Err(e) => panic!("fault: {e}"),
                    }
                };
                let (even, odd) = pair;
                let pte = if gfn.is_odd() { odd } else { even };
                tlb[page] = Some(TlbEntry {
                    hfn: pte.hfn().unwrap(),
                    writable: pte.entrylo() & entrylo::D != 0,
                });
                tracker.enter_guest(0, || flush(&mut tlb)).unwrap();
            }
        }
    }
    tracker.exit_guest(0).unwrap();
    progress.done.store(true, Ordering::Release);
    shadow
}

fn word0(vm: &RaceVm, b: BackingId, page: u64) -> u64 {
    let mut word = [0u8; 8];
    vm.host().read(b, page, 0, &mut word).unwrap();
    u64::from_le_bytes(word)
}

#[test]
fn swap_outs_racing_guest_stores_never_lose_a_store() {
    let memory = AtomicFrames::new(FRAMES, YieldAt::AfterRead);
    let vm = Vm::new(
        ArenaTableFrames::with_base(Hfn::new(0x100_0000)),
        FramePool::new(memory.clone(), BASE, FRAMES),
        QuiescenceTracker::new(1),
    )
    .unwrap();
    let b = vm.host().create_backing(PAGES).unwrap();
    let gfns = GfnRange::from_start_len(Gfn::new(RAM_GFN), PAGES).unwrap();
    vm.add_memslot(gfns, b, 0, SlotFlags::empty()).unwrap();
    let pool = SharedSwap::new(MemBackend::new(1 << 20));
    assert!(vm.host().set_swap_store(Box::new(pool.clone())).is_ok());
    let service = Mutex::new(Service {
        idle: IdleTracker::new(&vm, 2).unwrap(),
        swapper: Swapper::new(SwapConfig {
            low_watermark: 4,
            high_watermark: 6,
            min_age: 0,
        })
        .unwrap(),
    });

    let progress = Progress::default();
    let shadow = std::thread::scope(|s| {
        let guest = s.spawn(|| guest(&vm, &memory, &service, &progress));
        let mut n = 0u64;
        while !progress.done.load(Ordering::Acquire) && !guest.is_finished() {
            if n * OPS_PER_STEP > progress.ops.load(Ordering::Relaxed) + SLACK {
                std::thread::yield_now();
                continue;
            }
            {
                let mut service = service.lock().unwrap();
                let Service { idle, swapper } = &mut *service;
                if n.is_multiple_of(8) {
                    idle.pass(&vm).unwrap();
                }
                let free = vm.host().lock().pool().free_count();
                let view = [SwapVm {
                    vm: &vm,
                    idle,
                    reservation: 0,
                }];
                swapper.balance(free, &view).unwrap();
            }
            // Beside the policy (which prefers pages the guest has not touched lately),
            // evict pages the guest is using right now, one and a run of two at a time.
            let page = (n * 7) % PAGES;
            if n.is_multiple_of(2) {
                vm.swap_out(b, page).unwrap();
            } else {
                vm.swap_out_range(b, page..(page + 2).min(PAGES)).unwrap();
            }
            n += 1;
            progress.passes.store(n, Ordering::Relaxed);
            if n.is_multiple_of(64) {
                vm.check_invariants().unwrap();
            }
        }
        guest.join().unwrap()
    });
    vm.check_invariants().unwrap();
    for (page, &want) in shadow.iter().enumerate() {
        assert_eq!(word0(&vm, b, page as u64), want, "page {page} lost a store");
        let mut rest = vec![0u8; FRAME_BYTES - 8];
        vm.host().read(b, page as u64, 8, &mut rest).unwrap();
        assert!(
            rest.iter().all(|&x| x == 0),
            "page {page} got a stray store"
        );
    }
    let c = vm.host().lock().swap_counters();
    let s = service.into_inner().unwrap().swapper.counters();
    println!(
        "swap written={} clean_reused={} read_back={} pressure={} reclaims={}",
        c.written, c.clean_reused, c.read_back, s.pressure_events, s.reclaims
    );
    assert!(
        c.written > 0 && c.read_back > 0 && s.pressure_events > 0,
        "the race was not exercised"
    );
    let (frames, pool_left) = vm.teardown();
    assert_eq!(frames.live_tables(), 0);
    assert_eq!(pool_left.allocated_count(), 0, "host frames leaked");
    assert_eq!(pool.stats().slots, 0, "swap slots leaked");
}
