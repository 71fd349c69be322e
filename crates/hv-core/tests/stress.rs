//! Std-thread stress test: vCPUs fault and use cached translations while the host swaps,
//! balloons, merges and ages the same pages, with remote flushes by quiescence.
//!
//! Each vCPU thread keeps a software "TLB" of the entries `map_page` returned, uses it for
//! guest accesses while inside the guest, and flushes it when the quiescence tracker asks.
//! Every use of a cached translation checks the frame's free epoch: a frame freed (and maybe
//! reused) while some CPU could still use a translation to it fails the test. The host thread
//! checks the cross-layer invariants as it goes; at the end every frame must come back.
#![cfg(not(loom))]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use common::{pool, range};
use hv_core::addr::{Gfn, Hfn};
use hv_core::fault::{FaultError, Vm};
use hv_core::flush::FlushScope;
use hv_core::memslot::{BackingId, SlotFlags, SlotId};
use hv_core::pte::entrylo;
use hv_core::shootdown::{QuiescenceTracker, RemoteFlush};
use hv_core::table_frames::ArenaTableFrames;

const PAGES: u64 = 8;
const BASE_GFN: u64 = 0x2000;
const VCPUS: usize = 2;
const HOST_OPS: u64 = 300_000;
/// vCPU operations (all vCPUs together) per host operation. The threads are paced against
/// each other so that they really interleave even on a loaded two-core machine.
const VCPU_OPS_PER_HOST_OP: u64 = 3;

/// Progress counters the threads pace themselves by.
#[derive(Default)]
struct Progress {
    vcpu_ops: AtomicU64,
    host_ops: AtomicU64,
    host_done: AtomicBool,
    vcpu_failed: AtomicBool,
}

/// Keeps a failing thread from hanging the others: a vCPU that panics leaves the guest (so
/// flush waits end) and says so; the host thread always reports that it is done.
struct Unwind<'a> {
    progress: &'a Progress,
    vcpu: Option<(&'a QuiescenceTracker, usize)>,
}

impl Drop for Unwind<'_> {
    fn drop(&mut self) {
        match self.vcpu {
            Some((tracker, cpu)) => {
                if std::thread::panicking() {
                    self.progress.vcpu_failed.store(true, Ordering::Release);
                }
                tracker.exit_guest(cpu).unwrap();
            }
            None => self.progress.host_done.store(true, Ordering::Release),
        }
    }
}

type StressVm = Vm<ArenaTableFrames, hv_core::frame_pool::VecFrameMemory, CountingTracker>;

/// The quiescence tracker, counting the remote flushes it is asked for.
struct CountingTracker {
    tracker: QuiescenceTracker,
    flushes: AtomicU64,
}

impl RemoteFlush for CountingTracker {
    fn flush_remote(&self, scope: FlushScope) {
        if scope == FlushScope::Nothing {
            return;
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
        // (Test builds use `host-yield`, so the wait yields to the acknowledging thread.)
        self.tracker.flush_remote(scope);
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Entries in each vCPU's direct-mapped software TLB (smaller than the page count, so
/// capacity misses keep the fault paths busy).
const TLB_SLOTS: usize = 4;

#[derive(Clone, Copy)]
struct TlbEntry {
    page: u64,
    hfn: Hfn,
    epoch: u64,
    writable_dirty: bool,
}

fn vcpu(vm: &StressVm, cpu: usize, seed: u64, progress: &Progress) -> (u64, u64) {
    let (mut faults, mut flushes) = (0u64, 0u64);
    let tracker = &vm.remote_flush().tracker;
    let _unwind = Unwind {
        progress,
        vcpu: Some((tracker, cpu)),
    };
    let epochs = vm.host().epochs();
    let mut tlb: Vec<Option<TlbEntry>> = vec![None; TLB_SLOTS];
    let mut rng = Rng(seed);
    let flush = |tlb: &mut Vec<Option<TlbEntry>>, flushes: &mut u64| {
        *flushes += 1;
        tlb.iter_mut().for_each(|e| *e = None)
    };
    tracker
        .enter_guest(cpu, || flush(&mut tlb, &mut flushes))
        .unwrap();
    // Run for as long as the host is still changing things, never far ahead of it.
    let mut i = 0u64;
    while !progress.host_done.load(Ordering::Acquire) {
        if progress.vcpu_ops.load(Ordering::Relaxed)
            > progress.host_ops.load(Ordering::Relaxed) * VCPU_OPS_PER_HOST_OP + 64
        {
            // Waiting is time spent in the guest: keep acknowledging flushes.
            tracker
                .quiescent_point(cpu, || flush(&mut tlb, &mut flushes))
                .unwrap();
            std::thread::yield_now();
            continue;
        }
        i += 1;
        let page = rng.below(PAGES);
        let write = rng.below(4) == 0;
        let slot = page as usize % TLB_SLOTS;
        match tlb[slot] {
            Some(e) if e.page == page && (!write || e.writable_dirty) => {
                // Guest access through the cached translation.
                assert_eq!(
                    epochs.epoch(e.hfn),
                    Some(e.epoch),
                    "cpu {cpu} used a translation of freed frame {:?}",
                    e.hfn
                );
            }
            _ => {
                // TLB miss / invalid / modified exception: leave the guest and fault.
                tracker.exit_guest(cpu).unwrap();
                faults += 1;
                let gfn = Gfn::new(BASE_GFN + page);
                match vm.map_page(gfn.checked_addr().unwrap(), write) {
                    Ok((even, odd)) => {
                        let pte = if gfn.is_odd() { odd } else { even };
                        let hfn = pte.hfn().expect("fault returns a present entry");
                        tlb[slot] = Some(TlbEntry {
                            page,
                            hfn,
                            epoch: epochs.epoch(hfn).unwrap(),
                            writable_dirty: pte.entrylo() & entrylo::D != 0,
                        });
                        assert!(!write || pte.is_dirty());
                    }
                    Err(FaultError::OutOfMemory | FaultError::ReadOnlyWrite) => {}
                    Err(e) => panic!("unexpected fault error {e:?}"),
                }
                tracker
                    .enter_guest(cpu, || flush(&mut tlb, &mut flushes))
                    .unwrap();
            }
        }
        if i.is_multiple_of(32) {
            tracker
                .quiescent_point(cpu, || flush(&mut tlb, &mut flushes))
                .unwrap();
        }
        progress.vcpu_ops.fetch_add(1, Ordering::Relaxed);
    }
    tracker.exit_guest(cpu).unwrap();
    println!("cpu {cpu}: {i} ops, {faults} faults, {flushes} local flushes");
    (faults, flushes)
}

fn host(vm: &StressVm, b: BackingId, slot: SlotId, progress: &Progress) {
    let _unwind = Unwind {
        progress,
        vcpu: None,
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut checks = 0;
    let mut changed = 0u64;
    for i in 0..HOST_OPS {
        while progress.vcpu_ops.load(Ordering::Relaxed) < i * VCPU_OPS_PER_HOST_OP {
            assert!(
                !progress.vcpu_failed.load(Ordering::Acquire),
                "a vCPU thread failed"
            );
            std::thread::yield_now();
        }
        let page = rng.below(PAGES);
        match rng.below(16) {
            0..=3 => {
                changed += u64::from(vm.swap_out(b, page).unwrap());
            }
            4 => {
                let end = (page + 1 + rng.below(4)).min(PAGES);
                vm.balloon(b, page..end).unwrap();
            }
            5..=8 => {
                changed += u64::from(vm.merge((b, page), (b, rng.below(PAGES))).unwrap());
            }
            9..=10 => {
                let end = (page + 1 + rng.below(8)).min(PAGES);
                vm.age(b, page..end).unwrap();
            }
            11..=12 => {
                vm.test_age(b, page).unwrap();
            }
            13 => {
                // Make the page differ from the zero pages (breaks sharing if shared).
                vm.host_write(b, page, 0, &[(i % 251) as u8 + 1]).unwrap();
            }
            14 => {
                vm.host_write(b, page, 0, &[0]).unwrap();
            }
            _ => {
                // Dirty-log harvest: re-cleans what it reports, racing the vCPUs' writes.
                vm.get_dirty_log(slot).unwrap();
            }
        }
        // Now and then the slot turns read-only for a while (vCPU stores then fail as MMIO).
        match i % 4096 {
            0 => vm.set_memslot_flags(slot, SlotFlags::LOG_DIRTY | SlotFlags::READ_ONLY),
            64 => vm.set_memslot_flags(slot, SlotFlags::LOG_DIRTY),
            _ => Ok(()),
        }
        .unwrap();
        if i.is_multiple_of(256) {
            vm.check_invariants().expect("invariants during the run");
            checks += 1;
        }
        progress.host_ops.fetch_add(1, Ordering::Relaxed);
    }
    assert!(checks > 0);
    println!(
        "host: {changed} swap-outs and merges, {} remote flushes",
        vm.remote_flush().flushes.load(Ordering::Relaxed)
    );
}

#[test]
fn vcpus_and_host_race_for_a_million_operations() {
    let start = Instant::now();
    let vm: Arc<StressVm> = Arc::new(
        Vm::new(
            ArenaTableFrames::with_base(Hfn::new(0x100_0000)),
            pool(PAGES as usize + 8),
            CountingTracker {
                tracker: QuiescenceTracker::new(VCPUS),
                flushes: AtomicU64::new(0),
            },
        )
        .unwrap(),
    );
    let b = vm.host().create_backing(PAGES).unwrap();
    let slot = vm
        .add_memslot(range(BASE_GFN, PAGES), b, 0, SlotFlags::LOG_DIRTY)
        .unwrap();
    let progress = Arc::new(Progress::default());
    let vcpus: Vec<_> = (0..VCPUS)
        .map(|cpu| {
            let (vm, progress) = (Arc::clone(&vm), Arc::clone(&progress));
            std::thread::spawn(move || vcpu(&vm, cpu, 0x1234_5678 + cpu as u64, &progress))
        })
        .collect();
    let host_thread = {
        let (vm, progress) = (Arc::clone(&vm), Arc::clone(&progress));
        std::thread::spawn(move || host(&vm, b, slot, &progress))
    };
    host_thread.join().expect("host thread panicked");
    let mut faults = 0;
    let mut flushes = 0;
    for t in vcpus {
        let (f, fl) = t.join().expect("vcpu thread panicked");
        faults += f;
        flushes += fl;
    }
    // The host paces the vCPUs as a group, so one thread may run most of the operations when
    // the machine is loaded: judge the contention over all vCPUs, not per thread.
    assert!(
        faults > 10_000 && flushes > 0,
        "too little contention: {faults} faults, {flushes} local flushes"
    );
    let total =
        progress.vcpu_ops.load(Ordering::Relaxed) + progress.host_ops.load(Ordering::Relaxed);
    assert!(total >= 1_000_000, "only {total} operations");
    vm.check_invariants().unwrap();
    let vm = Arc::try_unwrap(vm).expect("threads joined");
    let (frames, pool) = vm.teardown();
    assert_eq!(frames.live_tables(), 0);
    assert_eq!(pool.allocated_count(), 0);
    println!(
        "stress: {total} operations ({faults} faults, {flushes} local flushes) in {:.2} s",
        start.elapsed().as_secs_f64()
    );
}
