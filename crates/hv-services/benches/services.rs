//! Host timings of the balloon, idle tracking and swap services (`cargo bench -p hv-services
//! --bench services`). Prints `BENCH name=value unit` lines; the -icount instruction counts
//! on the firmware come from tools/bench.sh.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use hv_core::addr::{Gfn, GfnRange, Hfn};
use hv_core::fault::Vm;
use hv_core::flush::FlushScope;
use hv_core::frame_pool::{FramePool, VecFrameMemory};
use hv_core::memslot::{BackingId, SlotFlags};
use hv_core::shootdown::RemoteFlush;
use hv_core::table_frames::ArenaTableFrames;
use hv_devices::virtio_balloon::BalloonHooks;
use hv_services::balloon::VmBalloon;
use hv_services::idle::IdleTracker;
use hv_services::swap::store::{MemBackend, SharedSwap};

struct NoRemote;

impl RemoteFlush for NoRemote {
    fn flush_remote(&self, _scope: FlushScope) {}
}

type BenchVm = Vm<ArenaTableFrames, VecFrameMemory, NoRemote>;

const PAGES: u64 = 4096;
const RAM_GFN: u64 = 0x1000;
const ROUNDS: u32 = 5;

fn vm() -> (Arc<BenchVm>, BackingId) {
    let base = Hfn::new(0x10_0000);
    let frames = PAGES as usize + 16;
    let pool = FramePool::new(VecFrameMemory::new(base, frames), base, frames);
    let vm = Vm::new(ArenaTableFrames::new(), pool, NoRemote).expect("root table");
    let b = vm.host().create_backing(PAGES).unwrap();
    let gfns = GfnRange::from_start_len(Gfn::new(RAM_GFN), PAGES).unwrap();
    vm.add_memslot(gfns, b, 0, SlotFlags::empty()).unwrap();
    (Arc::new(vm), b)
}

fn gpa(page: u64) -> hv_core::addr::Gpa {
    Gfn::new(RAM_GFN + page).checked_addr().unwrap()
}

/// Every page faulted in for writing and filled with compressible text.
fn touch_all(vm: &BenchVm, b: BackingId) {
    for page in 0..PAGES {
        vm.map_page(gpa(page), true).unwrap();
        let text: Vec<u8> = (0..4096)
            .map(|i| b"guest page text "[i % 16] ^ page as u8)
            .collect();
        vm.host_write(b, page, 0, &text).unwrap();
    }
}

/// Best of `ROUNDS` runs of `f` (setup excluded), in ns per page.
fn best_ns_per_page(mut f: impl FnMut() -> f64) -> f64 {
    (0..ROUNDS).map(|_| f()).fold(f64::INFINITY, f64::min)
}

fn main() {
    let inflate = best_ns_per_page(|| {
        let (vm, b) = vm();
        touch_all(&vm, b);
        let mut hooks = VmBalloon::new(vm.clone());
        let start = Instant::now();
        for page in 0..PAGES {
            hooks.inflate(Gfn::new(RAM_GFN + page)).unwrap();
        }
        let ns = start.elapsed().as_nanos() as f64 / PAGES as f64;
        assert_eq!(hooks.counters().frames_returned, PAGES);
        ns
    });
    println!("BENCH balloon_inflate_ns_per_page={inflate:.0} ns");

    let idle = best_ns_per_page(|| {
        let (vm, b) = vm();
        touch_all(&vm, b);
        let mut t = IdleTracker::new(&*vm, 4).unwrap();
        let start = Instant::now();
        t.pass(&*vm).unwrap();
        let ns = start.elapsed().as_nanos() as f64 / PAGES as f64;
        black_box(t.stats());
        ns
    });
    println!("BENCH idle_pass_ns_per_page={idle:.0} ns");

    let mut swap_in_best = f64::INFINITY;
    let mut clean_best = f64::INFINITY;
    let mut ratio = 0.0;
    let swap_out = best_ns_per_page(|| {
        let (vm, b) = vm();
        let pool = SharedSwap::new(MemBackend::new(64 << 20));
        assert!(vm.host().set_swap_store(Box::new(pool.clone())).is_ok());
        touch_all(&vm, b);
        let start = Instant::now();
        for page in 0..PAGES {
            assert!(vm.swap_out(b, page).unwrap());
        }
        let out = start.elapsed().as_nanos() as f64 / PAGES as f64;
        ratio = pool.stats().stored_bytes as f64 / (PAGES * 4096) as f64;
        let start = Instant::now();
        for page in 0..PAGES {
            black_box(vm.map_page(gpa(page), false).unwrap());
        }
        swap_in_best = swap_in_best.min(start.elapsed().as_nanos() as f64 / PAGES as f64);
        // Read back but not written: evicting again writes nothing.
        let start = Instant::now();
        for page in 0..PAGES {
            assert!(vm.swap_out(b, page).unwrap());
        }
        clean_best = clean_best.min(start.elapsed().as_nanos() as f64 / PAGES as f64);
        assert_eq!(vm.host().lock().swap_counters().clean_reused, PAGES);
        out
    });
    println!("BENCH swap_out_ns={swap_out:.0} ns");
    println!("BENCH swap_in_ns={swap_in_best:.0} ns");
    println!("BENCH swap_out_clean_ns={clean_best:.0} ns");
    println!("BENCH swap_compressed_ratio={ratio:.3} bytes_per_byte");
}
