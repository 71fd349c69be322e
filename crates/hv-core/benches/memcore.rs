//! VM-level micro-benchmarks: fault fast path, fault slow path, aging per page.
//!
//! Prints `BENCH <name>=<value> ns` lines. Run with `cargo bench -p hv-core --bench memcore`.
//! Each figure is the best of several rounds (noise from other processes on a shared machine
//! only ever adds time). The remote flush is a no-op here: these measure the memory core,
//! not the firmware's shootdown.
//!
//! - `fault_fast`: `map_page` read of a present, young page (lock, lookup, update, pair).
//! - `fault_fast_old_to_young`: `map_page` read of a present page that was aged (includes
//!   setting V; the aging itself is not timed).
//! - `fault_slow_resident`: `map_page` of an unmapped page whose backing frame is resident
//!   (sequence snapshot, slot lookup, resolve, install).
//! - `fault_slow_first_touch`: `map_page` of a never-touched page (adds frame allocation and
//!   zero-filling 4 KiB).
//! - `age_range_per_page`: `age` over a range of young mapped pages, per page.
//! - `frame_alloc_zeroed`: the frame pool's allocate + zero-fill alone, for scale (most of
//!   `fault_slow_first_touch` is writing 4 KiB of zeroes into cold memory).

use std::hint::black_box;
use std::time::Instant;

use hv_core::addr::{Gfn, GfnRange, Hfn};
use hv_core::fault::Vm;
use hv_core::flush::FlushScope;
use hv_core::frame_pool::{FramePool, VecFrameMemory};
use hv_core::memslot::SlotFlags;
use hv_core::shootdown::RemoteFlush;
use hv_core::table_frames::ArenaTableFrames;

const PAGES: u64 = 1 << 14;
const ROUNDS: usize = 5;
const BASE_GFN: u64 = 0x1_0000;

#[derive(Debug)]
struct NoRemoteCpus;

impl RemoteFlush for NoRemoteCpus {
    fn flush_remote(&self, scope: FlushScope) {
        black_box(scope);
    }
}

type BenchVm = Vm<ArenaTableFrames, VecFrameMemory, NoRemoteCpus>;

fn new_vm() -> (
    BenchVm,
    hv_core::memslot::BackingId,
    hv_core::memslot::SlotId,
) {
    let base = Hfn::new(0x10_0000);
    let nframes = PAGES as usize;
    let vm = Vm::new(
        ArenaTableFrames::with_base(Hfn::new(0x100_0000)),
        FramePool::new(VecFrameMemory::new(base, nframes), base, nframes),
        NoRemoteCpus,
    )
    .expect("bench VM");
    // Touch every host frame once so the OS has mapped the arena: first-touch figures should
    // measure our allocation and zero-fill, not the host kernel's demand paging.
    {
        let mut host = vm.host().lock();
        let pool = host.pool_mut();
        let frames: Vec<Hfn> = (0..nframes).map(|_| pool.alloc().expect("frame")).collect();
        for &hfn in &frames {
            pool.write(hfn, 0, &[1]).expect("touch");
        }
        for hfn in frames {
            pool.put(hfn).expect("free");
        }
    }
    let b = vm.host().create_backing(PAGES).expect("backing");
    let slot = vm
        .add_memslot(slots_range(), b, 0, SlotFlags::empty())
        .expect("slot");
    (vm, b, slot)
}

fn slots_range() -> GfnRange {
    GfnRange::from_start_len(Gfn::new(BASE_GFN), PAGES).expect("bench range")
}

fn fault_all(vm: &BenchVm, write: bool) -> f64 {
    let start = Instant::now();
    for i in 0..PAGES {
        let gpa = Gfn::new(BASE_GFN + i).checked_addr().expect("gpa");
        black_box(vm.map_page(gpa, write).expect("bench fault"));
    }
    start.elapsed().as_nanos() as f64 / PAGES as f64
}

fn report(name: &str, samples: &[f64]) {
    let best = samples.iter().copied().fold(f64::INFINITY, f64::min);
    println!("BENCH {name}={best:.1} ns");
}

fn main() {
    let mut first_touch = Vec::new();
    let mut slow_resident = Vec::new();
    let mut fast = Vec::new();
    let mut old_to_young = Vec::new();
    let mut age = Vec::new();
    let mut zeroed = Vec::new();
    for _ in 0..ROUNDS {
        let (vm, b, slot) = new_vm();
        {
            let mut host = vm.host().lock();
            let pool = host.pool_mut();
            let start = Instant::now();
            let frames: Vec<Hfn> = (0..PAGES)
                .map(|_| pool.alloc_zeroed().expect("frame"))
                .collect();
            zeroed.push(start.elapsed().as_nanos() as f64 / PAGES as f64);
            for hfn in frames {
                pool.put(hfn).expect("free");
            }
        }
        first_touch.push(fault_all(&vm, false));
        fast.push(fault_all(&vm, false));

        let start = Instant::now();
        black_box(vm.age(b, 0..PAGES).expect("age"));
        age.push(start.elapsed().as_nanos() as f64 / PAGES as f64);
        old_to_young.push(fault_all(&vm, false));

        // Re-adding the slot leaves the backing resident but the table empty.
        vm.remove_memslot(slot).expect("remove");
        vm.add_memslot(slots_range(), b, 0, SlotFlags::empty())
            .expect("re-add");
        slow_resident.push(fault_all(&vm, false));

        let (frames, pool) = vm.teardown();
        assert_eq!(frames.live_tables(), 0);
        assert_eq!(pool.allocated_count(), 0);
    }
    report("fault_fast", &fast);
    report("fault_fast_old_to_young", &old_to_young);
    report("fault_slow_resident", &slow_resident);
    report("fault_slow_first_touch", &first_touch);
    report("age_range_per_page", &age);
    report("frame_alloc_zeroed", &zeroed);
}
