//! The side-by-side benchmark's code (sidebyside.s): the guest image, and the bare-metal
//! run of the same workload bytes by the firmware itself in kernel mode.
//!
//! The layout constants are shared with the assembly, so the guest and the bare run take
//! the same sizes and offsets from one place.

use super::{irq::IrqGuard, tlb};
use core::arch::global_asm;

/// Offset of the page table (8 MiB aligned: its directory goes into Context.PTEBase).
pub const PT_OFF: u64 = 0x80_0000;
/// Offset of the 32 MiB read region.
pub const READ32_OFF: u64 = 0x100_0000;
/// Size of the 32 MiB read region.
pub const READ32_BYTES: u64 = 32 << 20;
/// Steady-state passes over the 32 MiB region (after one touching pass).
pub const READ32_PASSES: u32 = 4;
/// Offset of the first-touch region.
pub const TOUCH_OFF: u64 = 0x400_0000;
/// Size of the first-touch region.
pub const TOUCH_BYTES: u64 = 32 << 20;
/// Size of the 256 MiB read region (from offset 0).
pub const READ256_BYTES: u64 = 256 << 20;
/// Steady-state passes over the 256 MiB region (after one touching pass).
pub const READ256_PASSES: u32 = 2;
/// Iterations of the compute loop (9 instructions each).
pub const COMPUTE_ITERATIONS: u32 = 4_000_000;
/// Page pairs the TLB workload maps and loads from (16 MiB: far more than a TLB holds).
pub const TLB_PAIRS: u32 = 2048;
/// Passes of the TLB workload over its pairs (each with its own ASID: 16 + 1, 32 + n and
/// 48 + n in sidebyside.s, hence fewer than 16).
pub const TLB_PASSES: u32 = 8;
const _: () = assert!(TLB_PASSES < 16);
/// Marks the driver takes (one before the first workload, one after each).
pub const MARKS: usize = 10;
/// Bytes of the refill handler (18 instructions).
const REFILL_BYTES: usize = 18 * 4;
/// Offset of the guest's vectors in its image.
const GUEST_VECTORS_OFF: usize = 0x1000;

global_asm!(
    include_str!("sidebyside.s"),
    pt_off = const PT_OFF,
    read32_off = const READ32_OFF,
    read32_bytes = const READ32_BYTES,
    read32_passes = const READ32_PASSES,
    touch_off = const TOUCH_OFF,
    touch_bytes = const TOUCH_BYTES,
    read256_bytes = const READ256_BYTES,
    read256_passes = const READ256_PASSES,
    compute_iterations = const COMPUTE_ITERATIONS,
    tlb_pairs = const TLB_PAIRS,
    tlb_passes = const TLB_PASSES,
);

extern "C" {
    static sbs_guest_start: u8;
    static sbs_guest_end: u8;
    static sbs_bare_vectors: u8;
    /// Runs `sbs_driver` bare (see sidebyside.s); `counts` receives [`MARKS`] Count values.
    fn sbs_bare_enter(base_va: u64, base_pa: u64, counts: *mut u32);
}

/// Guest physical address the image is linked for.
pub const LOAD_GPA: u64 = 0x1000;

/// The guest image bytes.
pub fn image() -> &'static [u8] {
    let start = &raw const sbs_guest_start;
    let end = &raw const sbs_guest_end;
    let len = end as usize - start as usize;
    // SAFETY: both symbols delimit the image in .text (sidebyside.s), which is part of the
    // firmware image for its whole lifetime and never written.
    unsafe { core::slice::from_raw_parts(start, len) }
}

/// Whether the bare run's refill vectors (TLB and XTLB) hold the very bytes of the guest's.
pub fn refill_handlers_match() -> bool {
    // sbs_bare_vectors starts a 4 KiB page of code in the image (sidebyside.s), never
    // written; both handlers lie inside it.
    let vectors = &raw const sbs_bare_vectors;
    // SAFETY: the range is image code that lives and stays unchanged for the whole run.
    let bare = unsafe { core::slice::from_raw_parts(vectors, 0x80 + REFILL_BYTES) };
    let guest = &image()[GUEST_VECTORS_OFF..GUEST_VECTORS_OFF + REFILL_BYTES];
    bare[..REFILL_BYTES] == *guest && bare[0x80..] == *guest
}

/// Runs the workloads bare on this CPU over the block at physical `base_pa`, seen at
/// `base_va` (cached, unmapped); returns Count at each mark.
///
/// # Safety
/// The block is RAM of at least `READ256_BYTES` bytes that the caller owns and that nothing
/// else uses during the call; `base_pa + PT_OFF` is 8 MiB aligned.
pub unsafe fn run_bare(base_va: u64, base_pa: u64) -> [u32; MARKS] {
    let mut counts = [0u32; MARKS];
    {
        let _irq = IrqGuard::new();
        // Interrupts are off, so nothing runs in between on this CPU; the workloads write only
        // the block (caller contract) and the TLB, whose non-wired entries are dropped below;
        // sbs_bare_enter restores every CP0 register it changes (EBase, Context, PageMask,
        // EntryHi).
        // SAFETY: the caller's block contract holds, and sbs_bare_enter follows the C ABI.
        unsafe { sbs_bare_enter(base_va, base_pa, counts.as_mut_ptr()) };
        // The run's entries map user addresses of the firmware's current ASID.
        tlb::flush_unwired();
    }
    counts
}
