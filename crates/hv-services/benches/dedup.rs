//! Dedup micro-benchmarks on the host. Prints `BENCH <name>=<value> <unit>` lines; run with
//! `cargo bench -p hv-services --bench dedup`. Each timing is the best of several rounds (other
//! processes only ever add time). The remote flush is a no-op: these measure the service and
//! the memory core, not the firmware's shootdown. Firmware figures under `-icount` come from
//! `tools/bench.sh` once the service runs inside the firmware.
//!
//! - `dedup_checksum_ns_per_page`: the page checksum over one resident 4 KiB page.
//! - `dedup_merge_ns`: merging one mapped page onto a stable frame (write-protect, byte
//!   compare, remap through `set_entry`, drop the old frame).
//! - `cow_break_ns`: a guest write fault on a merged page (copy, remap, install).
//! - `dedup_metadata_bytes_per_page`: the service's metadata after two full scans of a VM
//!   with mostly identical pages.

use std::hint::black_box;
use std::time::Instant;

use hv_core::addr::{Gfn, GfnRange, Hfn};
use hv_core::fault::Vm;
use hv_core::flush::FlushScope;
use hv_core::frame_pool::{FramePool, VecFrameMemory, FRAME_BYTES};
use hv_core::memslot::{BackingId, SlotFlags};
use hv_core::shootdown::RemoteFlush;
use hv_core::table_frames::ArenaTableFrames;
use hv_services::dedup::checksum::page_checksum;
use hv_services::dedup::{Dedup, DedupConfig, VmId};

const PAGES: u64 = 4096;
const ROUNDS: usize = 5;
const RAM_GFN: u64 = 0x1_0000;

struct NoRemoteCpus;

impl RemoteFlush for NoRemoteCpus {
    fn flush_remote(&self, scope: FlushScope) {
        black_box(scope);
    }
}

type BenchVm = Vm<ArenaTableFrames, VecFrameMemory, NoRemoteCpus>;

/// A VM whose pages all hold the same bytes, every page mapped writable and dirty.
fn identical_vm() -> (BenchVm, BackingId) {
    let base = Hfn::new(0x10_0000);
    let frames = PAGES as usize * 2 + 16;
    let vm = Vm::new(
        ArenaTableFrames::with_base(Hfn::new(0x100_0000)),
        FramePool::new(VecFrameMemory::new(base, frames), base, frames),
        NoRemoteCpus,
    )
    .unwrap();
    let b = vm.host().create_backing(PAGES).unwrap();
    let gfns = GfnRange::from_start_len(Gfn::new(RAM_GFN), PAGES).unwrap();
    vm.add_memslot(gfns, b, 0, SlotFlags::empty()).unwrap();
    let bytes: Vec<u8> = (0..FRAME_BYTES).map(|i| (i * 7 + 3) as u8).collect();
    for p in 0..PAGES {
        vm.host_write(b, p, 0, &bytes).unwrap();
        vm.map_page(Gfn::new(RAM_GFN + p).checked_addr().unwrap(), true)
            .unwrap();
    }
    (vm, b)
}

fn report(name: &str, best_ns: f64) {
    println!("BENCH {name}={best_ns:.1} ns");
}

fn main() {
    let (vm, b) = identical_vm();

    let mut best = f64::MAX;
    for _ in 0..ROUNDS {
        let st = vm.host().lock();
        let start = Instant::now();
        let mut acc = 0u64;
        for p in 0..PAGES {
            acc ^= st.with_page_contents(b, p, page_checksum).unwrap().unwrap();
        }
        black_box(acc);
        best = best.min(start.elapsed().as_nanos() as f64 / PAGES as f64);
    }
    report("dedup_checksum_ns_per_page", best);

    // Merge every page but 0 onto page 0's frame, timing each round on a fresh VM.
    let mut merge_best = f64::MAX;
    let mut cow_best = f64::MAX;
    for _ in 0..ROUNDS {
        let (vm, b) = identical_vm();
        let host = vm.host();
        let target = host.share_page(&vm, (b, 0)).unwrap().unwrap();
        let start = Instant::now();
        for p in 1..PAGES {
            assert!(host.merge_onto(&vm, (b, p), target).unwrap());
        }
        merge_best = merge_best.min(start.elapsed().as_nanos() as f64 / (PAGES - 1) as f64);
        let start = Instant::now();
        for p in 1..PAGES {
            vm.map_page(Gfn::new(RAM_GFN + p).checked_addr().unwrap(), true)
                .unwrap();
        }
        cow_best = cow_best.min(start.elapsed().as_nanos() as f64 / (PAGES - 1) as f64);
        host.release_frame(target).unwrap();
    }
    report("dedup_merge_ns", merge_best);
    report("cow_break_ns", cow_best);

    // Metadata after two full scans of a VM of identical pages.
    let (vm, b) = identical_vm();
    let mut dedup = Dedup::new(DedupConfig::default()).unwrap();
    dedup.add_vm(vm.host(), VmId(0), None, &[b]).unwrap();
    dedup.full_scans(vm.host(), &vm, 2).unwrap();
    let stats = dedup.stats(vm.host());
    assert_eq!(
        stats.pages_sharing + stats.pages_shared,
        PAGES,
        "every page merged"
    );
    println!(
        "BENCH dedup_metadata_bytes_per_page={} bytes",
        stats.metadata_bytes_per_page()
    );
}
