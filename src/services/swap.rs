//! Compressed swap in the firmware: when the shared guest pool runs low, the coldest pages
//! of VMs above their reservation go to an LZ4-compressed store in a swap area of host
//! frames outside the pool, and come back through the fault slow path.
//!
//! - The store: `hv_services::swap::store::CompressedSwap` over a `FrameBackend` (256-byte
//!   chunks of the swap area), installed once on the shared host layer, so every VM's
//!   swapped pages live in one area.
//! - Background: each services round compares the pool's free frames with the low
//!   watermark and, below it, evicts up to the high watermark (`Swapper::balance`), pages
//!   idle for at least one pass first (ages from `idle.rs`).
//! - Direct reclaim: a guest fault that finds no free frame calls [`reclaim_for_fault`],
//!   which evicts a batch at any age (the coldest still first) and lets the guest retry.
//! - Dirty tracking is the memory core's: a page read back keeps its swap copy and is
//!   mapped read-only until written, so evicting it again writes nothing (counted as
//!   `swap_outs_clean`); a written page gets a new copy.

use super::idle;
use super::{Hook, HookOutcome, RoundContext, SharedHost};
use crate::arch::guest_mem::FwFrameMemory;
use crate::vmm::vm::Vm;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt::{self, Write};
use hv_core::addr::PAGE_SIZE;
use hv_core::host_mem::PageState;
use hv_core::swap_store::PlainSwap;
use hv_services::swap::store::{FrameBackend, SharedSwap};
use hv_services::swap::{SwapConfig, SwapVm, Swapper};
use spin::Mutex;

/// Pages a direct reclaim evicts at least (one scan of the ages serves many faults).
const DIRECT_RECLAIM_BATCH: usize = 64;

/// How swap runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwapSetup {
    /// Frames of the swap area (outside the guest pool).
    pub area_frames: usize,
    /// Free pool frames below which the round evicts.
    pub low_watermark: usize,
    /// Free pool frames the round evicts up to.
    pub high_watermark: usize,
    /// Each VM keeps this share of its RAM resident, in per mille.
    pub reserve_permille: u32,
}

/// Counters of the direct (fault-time) reclaim.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectCounters {
    /// Faults that found the pool empty and reclaimed.
    pub reclaims: u64,
    /// Pages they evicted.
    pub pages: u64,
    /// Reclaims that freed nothing (the fault then fails).
    pub failures: u64,
}

/// The swap service's state.
struct SwapService {
    swapper: Swapper,
    pool: SharedSwap<FrameBackend<FwFrameMemory>>,
    /// Resident pages each VM keeps, by VM id.
    reservations: Vec<(usize, u64)>,
    area_bytes: usize,
    direct: DirectCounters,
}

static SWAP: Mutex<Option<SwapService>> = Mutex::new(None);
/// The pool installed on the host layer, kept after `stop` until [`release`].
static INSTALLED: Mutex<Option<SharedSwap<FrameBackend<FwFrameMemory>>>> = Mutex::new(None);

/// Sets up the swap area, installs the compressed store on `host` and registers the
/// balance with the services round. Idle tracking must run (the victims come from its ages).
pub fn start(host: &Arc<SharedHost>, vms: &[Arc<Vm>], setup: SwapSetup) -> Result<(), String> {
    if !idle::running() {
        return Err(String::from("swap needs idle tracking (the page ages)"));
    }
    let swapper = Swapper::new(SwapConfig {
        low_watermark: setup.low_watermark,
        high_watermark: setup.high_watermark,
        min_age: 1,
    })
    .map_err(|e| format!("swap: {e}"))?;
    let area = FwFrameMemory::allocate(setup.area_frames)
        .map_err(|e| format!("swap area of {} frames: {e}", setup.area_frames))?;
    let (base, frames) = (area.base(), area.len());
    let backend = FrameBackend::new(area, base, frames).map_err(|e| format!("swap area: {e}"))?;
    let area_bytes = backend.capacity_bytes();
    let pool = SharedSwap::new(backend);
    host.set_swap_store(Box::new(pool.clone()))
        .map_err(|_| String::from("swap: the host layer already holds swapped pages"))?;
    // A VM keeps at least its layout reservation (`mem-reservation-mib`) resident.
    let reservations = vms
        .iter()
        .map(|vm| {
            let pages = vm.ram_bytes / PAGE_SIZE;
            let share = pages * u64::from(setup.reserve_permille) / 1000;
            let layout = hv_devices::vmconfig::MemShare::pages(vm.mem.reservation_mib);
            (vm.id, share.max(layout))
        })
        .collect();
    *INSTALLED.lock() = Some(pool.clone());
    *SWAP.lock() = Some(SwapService {
        swapper,
        pool,
        reservations,
        area_bytes,
        direct: DirectCounters::default(),
    });
    super::register(Hook {
        name: "swap",
        round,
        stop,
    });
    super::view::register(super::view::ConsoleHandlers {
        swap: Some(write_report),
        ..Default::default()
    });
    crate::log!(
        "swap: area of {frames} frames ({} MiB) from {base}, watermarks {}..{} free frames, reservation {} per mille of RAM",
        frames / 256,
        setup.low_watermark,
        setup.high_watermark,
        setup.reserve_permille
    );
    Ok(())
}

/// Evicts up to `want` pages of `vms`, none younger than `min_age`, or only balances
/// (`want == None`): the shared part of the round and of direct reclaim. Lock order: the
/// idle lock, then this one.
fn evict(
    host: &SharedHost,
    vms: &[Arc<Vm>],
    want: Option<usize>,
    min_age: u8,
) -> Result<usize, String> {
    idle::with_trackers(|trackers| {
        let Some(trackers) = trackers else {
            return Ok(0);
        };
        let mut slot = SWAP.lock();
        let Some(service) = slot.as_mut() else {
            return Ok(0);
        };
        let views: Vec<SwapVm<'_, _, _, _>> = trackers
            .iter()
            .filter_map(|entry| {
                let vm = vms.iter().find(|vm| vm.id == entry.vm_id)?;
                let reservation = service
                    .reservations
                    .iter()
                    .find(|(id, _)| *id == entry.vm_id)
                    .map_or(0, |&(_, pages)| pages);
                Some(SwapVm {
                    vm: &*vm.memory,
                    idle: &entry.tracker,
                    reservation,
                })
            })
            .collect();
        let freed = match want {
            None => {
                let free = host.lock().pool().free_count();
                service.swapper.balance(free, &views)
            }
            Some(want) => service.swapper.reclaim(want, &views, min_age),
        }
        .map_err(|e| format!("swap: {e}"))?;
        Ok(freed)
    })
}

/// Pages out of memory now: pages held in the swap store, less the clean copies it keeps
/// of pages that are back in memory.
fn pages_out(host: &SharedHost) -> u64 {
    let st = host.lock();
    st.swapped_pages().saturating_sub(st.clean_copy_count()) as u64
}

/// Frames the compressed store's chunks fill now (the swap area is host RAM too).
fn store_frames(pool: &SharedSwap<FrameBackend<FwFrameMemory>>) -> u64 {
    pool.stats().stored_bytes.div_ceil(PAGE_SIZE)
}

/// What swap saves now, net (`hv_services::savings`): pages out of memory less the frames
/// of the store holding them, clean copies included; 0 while no store is installed. Lock
/// order: the host layer alone, then the store alone.
pub fn net_saved_pages(host: &SharedHost) -> i64 {
    let Some(pool) = INSTALLED.lock().clone() else {
        return 0;
    };
    pages_out(host) as i64 - store_frames(&pool) as i64
}

/// The services round: balance against the watermarks.
fn round(context: &RoundContext<'_>) -> HookOutcome {
    match evict(context.host, context.vms, None, 0) {
        Ok(freed) => HookOutcome { changed: freed > 0 },
        Err(why) => {
            crate::log!("{why}");
            HookOutcome::default()
        }
    }
}

/// A guest fault found the pool empty: evicts a batch of the coldest pages of any age
/// (at least [`DIRECT_RECLAIM_BATCH`], or up to the high watermark) so the fault can be
/// retried. Returns whether anything was freed (`false` when swap is off).
pub fn reclaim_for_fault() -> bool {
    let want = {
        let slot = SWAP.lock();
        let Some(service) = slot.as_ref() else {
            return false;
        };
        service
            .swapper
            .config()
            .high_watermark
            .max(DIRECT_RECLAIM_BATCH)
    };
    let host = super::host();
    let vms = super::vms();
    let result = evict(host, &vms, Some(want), 0);
    let mut slot = SWAP.lock();
    let Some(service) = slot.as_mut() else {
        return false;
    };
    service.direct.reclaims += 1;
    match result {
        Ok(freed) if freed > 0 => {
            service.direct.pages += freed as u64;
            true
        }
        Ok(_) => {
            service.direct.failures += 1;
            false
        }
        Err(why) => {
            service.direct.failures += 1;
            crate::log!("{why}");
            false
        }
    }
}

/// The memory core refused a frame and `payer` pays: evicts a batch of `payer`'s coldest
/// pages (any age, never below its reservation). Returns whether anything was freed
/// (`false` when swap is off).
pub fn reclaim_from(payer: &Arc<Vm>) -> bool {
    if SWAP.lock().is_none() {
        return false;
    }
    let host = super::host();
    let only = [payer.clone()];
    match evict(host, &only, Some(DIRECT_RECLAIM_BATCH), 0) {
        Ok(freed) => freed > 0,
        Err(why) => {
            crate::log!("{why}");
            false
        }
    }
}

/// Ends the background work; the store stays installed until the VMs are gone.
fn stop(_host: &Arc<SharedHost>) {}

/// After every VM was torn down: takes the store off the host layer and gives the swap
/// area back. Returns the slots still held (swap slots leaked; 0 when all is well).
pub fn release(host: &SharedHost) -> u64 {
    *SWAP.lock() = None;
    let Some(pool) = INSTALLED.lock().take() else {
        return 0;
    };
    let left = pool.stats().slots;
    if left == 0 && host.set_swap_store(Box::new(PlainSwap::new())).is_err() {
        crate::log!("swap: the host layer still holds swapped pages");
    }
    left
}

/// Writes the service's figures (the console's `swap`).
pub fn write_report(out: &mut dyn Write) -> fmt::Result {
    let slot = SWAP.lock();
    let Some(service) = slot.as_ref() else {
        return writeln!(out, "swap is not running");
    };
    let c = service.swapper.counters();
    let p = service.pool.stats();
    let host = super::host();
    let host_counters = host.lock().swap_counters();
    let out_now = pages_out(host);
    writeln!(
        out,
        "swap: {out_now} pages out, {} saved net; outs {} ({} clean, no rewrite), ins {}; pressure {} times, direct reclaim {} ({} failed)",
        out_now as i64 - store_frames(&service.pool) as i64,
        host_counters.written + host_counters.clean_reused,
        host_counters.clean_reused,
        host_counters.read_back,
        c.pressure_events,
        service.direct.reclaims,
        service.direct.failures
    )?;
    writeln!(
        out,
        "  area {} KiB: {} KiB used by {} slots, {} KiB of pages ({} raw, {} zero)",
        service.area_bytes / 1024,
        p.stored_bytes / 1024,
        p.slots,
        p.payload_bytes / 1024,
        p.raw_pages,
        p.zero_pages
    )
}

/// Prints the STAT lines.
pub fn print_stats() {
    // Pages out per VM, from the page states (the counters are the shared layer's).
    // Lock order: idle, then this service, then the host layer.
    let per_vm: Vec<(String, usize)> = idle::with_trackers(|trackers| {
        let host = super::host().lock();
        trackers
            .unwrap_or_default()
            .iter()
            .map(|entry| {
                let out = entry
                    .tracker
                    .backings()
                    .filter_map(|b| host.pages_of(b).ok())
                    .flatten()
                    .filter(|p| matches!(p, PageState::SwappedOut(_)))
                    .count();
                (entry.name.clone(), out)
            })
            .collect()
    });
    for (name, out) in &per_vm {
        crate::println!("STAT swap_{name}_pages_out={out}");
    }
    let slot = SWAP.lock();
    let Some(service) = slot.as_ref() else {
        return;
    };
    let c = service.swapper.counters();
    let p = service.pool.stats();
    let h = super::host().lock().swap_counters();
    crate::println!("STAT swap_outs={}", h.written + h.clean_reused);
    crate::println!("STAT swap_outs_written={}", h.written);
    crate::println!("STAT swap_outs_clean={}", h.clean_reused);
    crate::println!("STAT swap_ins={}", h.read_back);
    crate::println!("STAT swap_pressure_events={}", c.pressure_events);
    crate::println!("STAT swap_evicted={}", c.evicted);
    crate::println!("STAT swap_pool_full={}", c.pool_full);
    crate::println!("STAT swap_direct_reclaims={}", service.direct.reclaims);
    crate::println!("STAT swap_direct_reclaim_pages={}", service.direct.pages);
    crate::println!(
        "STAT swap_direct_reclaim_failures={}",
        service.direct.failures
    );
    crate::println!("STAT swap_slots={}", p.slots);
    crate::println!("STAT swap_compressed_bytes={}", p.payload_bytes);
    crate::println!("STAT swap_pool_bytes={}", p.stored_bytes);
    crate::println!("STAT swap_area_bytes={}", service.area_bytes);
    crate::println!("STAT swap_raw_pages={}", p.raw_pages);
    crate::println!("STAT swap_zero_pages={}", p.zero_pages);
    crate::println!("STAT swap_stores={}", p.stores);
    crate::println!("STAT swap_loads={}", p.loads);
    crate::println!("STAT swap_clean_copies_dropped={}", c.clean_copies_dropped);
    // What swap saves is `swap_saved_pages` (services::finish): these two minus one another.
    crate::println!("STAT swap_pages_out={}", pages_out(super::host()));
    crate::println!("STAT swap_store_frames={}", store_frames(&service.pool));
}
