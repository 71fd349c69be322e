//! Std-thread race of the dedup scanner against a guest writing through its cached
//! translations.
//!
//! Frame memory is an array of atomic words shared with the vCPU thread, so the guest stores
//! straight into whatever frame its software TLB names, without any lock, the way real guest
//! stores do. Remote flushes go through the quiescence tracker. Each page's content is
//! decided by its word 0 (the rest stays zero), so pages are often identical and get merged,
//! and the guest's next store must fault and land in a private copy. The guest checks every
//! load against its own record, and at the end every page must hold exactly what the guest
//! last stored: a store lost in a merged-away frame, or landing in a shared frame, fails.

mod race_harness;

use std::sync::atomic::Ordering;

use hv_core::addr::{Gfn, GfnRange, Hfn};
use hv_core::fault::Vm;
use hv_core::frame_pool::{FramePool, FRAME_BYTES};
use hv_core::memslot::SlotFlags;
use hv_core::pte::entrylo;
use hv_core::shootdown::QuiescenceTracker;
use hv_core::table_frames::ArenaTableFrames;
use hv_services::dedup::{Dedup, DedupConfig, VmId};
use race_harness::{
    AtomicFrames, LeaveOnPanic, Progress, RaceVm, Rng, TlbEntry, YieldAt, BASE, QUIESCE_EVERY,
    SLACK,
};

const FRAMES: usize = 48;
const PAGES: u64 = 16;
const RAM_GFN: u64 = 0x100;
const GUEST_OPS: u64 = 20_000;
/// Guest operations per scanner pass, so the two threads interleave on a loaded machine.
const OPS_PER_PASS: u64 = 4;

/// The guest: random loads and stores of word 0, through a software TLB.
fn guest(vm: &RaceVm, memory: &AtomicFrames, progress: &Progress) -> Vec<u64> {
    let tracker = vm.remote_flush();
    let _leave = LeaveOnPanic(tracker);
    let mut tlb: Vec<Option<TlbEntry>> = vec![None; PAGES as usize];
    let mut shadow = vec![0u64; PAGES as usize];
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let flush = |tlb: &mut Vec<Option<TlbEntry>>| tlb.iter_mut().for_each(|e| *e = None);
    tracker.enter_guest(0, || flush(&mut tlb)).unwrap();
    let mut op = 0;
    while op < GUEST_OPS {
        // Like a real CPU, the guest runs on for a while before it notices a flush request.
        if op % QUIESCE_EVERY == 0 {
            tracker.quiescent_point(0, || flush(&mut tlb)).unwrap();
        }
        progress.ops.store(op, Ordering::Relaxed);
        if op > progress.passes.load(Ordering::Relaxed) * OPS_PER_PASS + SLACK {
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
                    // Four contents only, so pages are often identical.
                    let value = rng.below(4);
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
                let (even, odd) = vm.map_page(gfn.checked_addr().unwrap(), write).unwrap();
                let pte = if gfn.is_odd() { odd } else { even };
                // Installed before entry, so that a flush requested since the fault resolved
                // (while this CPU was out of the guest) drops it again.
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

#[test]
fn merges_racing_guest_stores_never_lose_or_leak_a_store() {
    let memory = AtomicFrames::new(FRAMES, YieldAt::AfterCompare);
    let vm = Vm::new(
        ArenaTableFrames::with_base(Hfn::new(0x100_0000)),
        FramePool::new(memory.clone(), BASE, FRAMES),
        QuiescenceTracker::new(1),
    )
    .unwrap();
    let b = vm.host().create_backing(PAGES).unwrap();
    let gfns = GfnRange::from_start_len(Gfn::new(RAM_GFN), PAGES).unwrap();
    vm.add_memslot(gfns, b, 0, SlotFlags::empty()).unwrap();
    let mut dedup = Dedup::new(DedupConfig {
        pages_per_pass: 4,
        ..DedupConfig::default()
    })
    .unwrap();
    dedup.add_vm(vm.host(), VmId(0), None, &[b]).unwrap();

    let progress = Progress::default();
    let shadow = std::thread::scope(|s| {
        let guest = s.spawn(|| guest(&vm, &memory, &progress));
        let mut n = 0u64;
        while !progress.done.load(Ordering::Acquire) && !guest.is_finished() {
            if n * OPS_PER_PASS > progress.ops.load(Ordering::Relaxed) + SLACK {
                std::thread::yield_now();
                continue;
            }
            dedup.scan_pass(vm.host(), &vm).unwrap();
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
        let mut word = [0u8; 8];
        vm.host().read(b, page as u64, 0, &mut word).unwrap();
        assert_eq!(u64::from_le_bytes(word), want, "page {page} lost a store");
        let mut rest = vec![0u8; FRAME_BYTES - 8];
        vm.host().read(b, page as u64, 8, &mut rest).unwrap();
        assert!(
            rest.iter().all(|&x| x == 0),
            "page {page} got a stray store"
        );
    }
    let stats = dedup.stats(vm.host());
    println!(
        "merges={} cow_breaks={} full_scans={} merge_failures={}",
        stats.merges, stats.cow_breaks, stats.full_scans, stats.merge_failures
    );
    assert!(
        stats.merges > 0 && stats.cow_breaks > 0,
        "the race was not exercised: {stats:?}"
    );
    dedup.release_all(vm.host()).unwrap();
    let (frames, pool) = vm.teardown();
    assert_eq!(frames.live_tables(), 0);
    assert_eq!(pool.allocated_count(), 0, "host frames leaked");
}
