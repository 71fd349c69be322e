//! The `sidebyside` scenario: the same workloads run bare-metal and as a guest, for
//! tools/bench.sh.
//!
//! Method: under `-icount shift=0` every instruction takes the same virtual time, so Count
//! ticks are proportional to instructions. One assembly driver (arch::sidebyside) runs each
//! workload in turn; its bytes run twice:
//! - bare: by this firmware on CPU 0 in kernel mode, interrupts off, its own refill vector
//!   at EBase, over a block of firmware frames seen through xkphys (no hypervisor in the
//!   path); Count is read at each mark by the driver itself;
//! - guest: as a 256 MiB mipsvisor guest, Count read by the host at each YIELD (so the
//!   guest's own Count virtualisation plays no part).
//!
//! A ratio is guest ticks over bare ticks for the same workload: host instructions per
//! guest instruction (the factor from Count to instructions cancels). The per-refill figure
//! compares TLB-missing loads with the same loads on one page, as the `bench` scenario does.

use super::vm::{ImageSource, Mark, VmOutcome, VmSpec};
use crate::arch::addr::phys_to_virt;
use crate::arch::{bench_guest, sidebyside as sbs};
use crate::mem::frame::FRAMES;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hv_core::addr::Hpa;

/// Calibration loop iterations (three instructions each).
const CALIBRATION_ITERATIONS: u32 = 1_000_000;
/// Guest RAM: the 256 MiB workload reads all of it.
const GUEST_RAM_BYTES: u64 = sbs::READ256_BYTES;
/// Count ticks the guest may take.
const GUEST_TIMEOUT_TICKS: u64 = 6_000_000_000;
/// Alignment of the bare block (the page table inside it must be 8 MiB aligned).
const BLOCK_ALIGN: u64 = 8 << 20;
/// Bare refills expected in the TLB-missing interval.
const TLB_LOADS: u64 = sbs::TLB_PAIRS as u64 * sbs::TLB_PASSES as u64;

/// The workloads reported: name, mark interval (ends at that mark).
const RATIOS: [(&str, usize); 5] = [
    ("ratio_compute", 1),
    ("ratio_read_32mib", 3),
    ("ratio_read_256mib", 6),
    ("ratio_first_touch", 4),
    ("ratio_guest_tlb_miss", 8),
];

/// Ticks of each interval between consecutive Count values.
fn intervals(counts: &[u32]) -> Vec<u64> {
    counts
        .windows(2)
        .map(|w| u64::from(w[1].wrapping_sub(w[0])))
        .collect()
}

/// `numerator / denominator` as text: four decimals below 10, one above (the bare side of
/// the large ratio is short enough for a Count tick of jitter to show in further digits).
fn ratio_text(numerator: u64, denominator: u64) -> String {
    let scaled =
        (u128::from(numerator) * 10_000 + u128::from(denominator) / 2) / u128::from(denominator);
    if scaled < 100_000 {
        format!("{}.{:04}", scaled / 10_000, scaled % 10_000)
    } else {
        let tenths = (scaled + 500) / 1000;
        format!("{}.{}", tenths / 10, tenths % 10)
    }
}

/// Runs the driver bare over a block of firmware frames; returns Count at each mark.
fn run_bare() -> Result<[u32; sbs::MARKS], String> {
    let frames = ((sbs::READ256_BYTES + BLOCK_ALIGN) / 4096) as usize;
    let block = FRAMES.lock().alloc_contiguous(frames).map_err(|e| {
        format!(
            "bare run: {} MiB of consecutive frames: {e} (run with --mem 1024)",
            frames / 256
        )
    })?;
    let first = block[0].hpa().raw();
    let base_pa = first.div_ceil(BLOCK_ALIGN) * BLOCK_ALIGN;
    let base_va = phys_to_virt(Hpa::new(base_pa));
    // [base_pa, base_pa + 256 MiB) lies inside `block`, which this function owns until it
    // frees it below, and only the bare run reaches it; base_pa, hence base_pa + PT_OFF, is
    // 8 MiB aligned.
    // SAFETY: run_bare's contract (an owned, unused, aligned block) holds, as above.
    let counts = unsafe { sbs::run_bare(base_va, base_pa) };
    let mut allocator = FRAMES.lock();
    for frame in block {
        allocator
            .free(frame)
            .map_err(|e| format!("bare run: freeing its block: {e}"))?;
    }
    Ok(counts)
}

/// The `sidebyside` scenario.
pub fn sidebyside(_info: &crate::scenario::BootInfo) -> Result<(), String> {
    if !sbs::refill_handlers_match() {
        return Err(String::from(
            "the bare refill vectors differ from the guest's handler",
        ));
    }
    let (insns, ticks) = bench_guest::calibrate(CALIBRATION_ITERATIONS);
    if ticks == 0 {
        return Err(String::from("Count did not advance during calibration"));
    }
    // Rounded to 1/100 as in the bench scenario, for figures identical run to run.
    let factor_milli = (insns * 100 + ticks / 2) / ticks * 10;

    let bare = intervals(&run_bare()?);

    let specs = [VmSpec::plain(
        String::from("sidebyside"),
        GUEST_RAM_BYTES,
        ImageSource::Flat {
            bytes: sbs::image(),
            gpa: sbs::LOAD_GPA,
        },
    )];
    let (vms, vcpus) = super::build_vms(&specs)?;
    super::run(&vms, vcpus, GUEST_TIMEOUT_TICKS);
    let vm = &vms[0];
    if vm.outcome() != Some(VmOutcome::Exited(0)) {
        return Err(format!("side-by-side guest ended with {:?}", vm.outcome()));
    }
    let marks = vm.marks();
    if marks.len() != sbs::MARKS {
        return Err(format!("{} marks from the side-by-side guest", marks.len()));
    }
    let counts: Vec<u32> = marks.iter().map(|m| m.count).collect();
    let guest = intervals(&counts);
    let refills = |m: &Mark| m.guest_tlb_refills;
    let miss_refills = refills(&marks[8]) - refills(&marks[7]);
    let base_refills = refills(&marks[9]) - refills(&marks[8]);
    if miss_refills != TLB_LOADS {
        return Err(format!(
            "{miss_refills} guest refills for {TLB_LOADS} TLB-missing loads"
        ));
    }

    let names = [
        "compute",
        "read_32mib_touch",
        "read_32mib",
        "first_touch",
        "read_256mib_touch",
        "read_256mib",
        "tlb_setup",
        "tlb_miss",
        "tlb_hit",
    ];
    for (index, name) in names.iter().enumerate() {
        if bare[index] == 0 {
            return Err(format!("bare {name}: Count did not advance"));
        }
        crate::println!(
            "STAT sbs_{name}_insns bare={} guest={}",
            bare[index] * factor_milli / 1000,
            guest[index] * factor_milli / 1000
        );
    }
    for (name, mark) in RATIOS {
        crate::println!(
            "BENCH {name}={} host_insns_per_guest_insn",
            ratio_text(guest[mark - 1], bare[mark - 1])
        );
    }
    let extra_refills = miss_refills - base_refills;
    // Rounded: the bare interval is short enough for a tick of jitter to matter.
    let per_refill = |ticks: &[u64]| {
        (ticks[7].saturating_sub(ticks[8]) * factor_milli / 1000 + extra_refills / 2)
            / extra_refills
    };
    crate::println!(
        "BENCH guest_tlb_refill_insns={} insns (host, per guest refill; avg over {extra_refills})",
        per_refill(&guest)
    );
    crate::println!(
        "BENCH bare_tlb_refill_insns={} insns (the same refill run natively)",
        per_refill(&bare)
    );
    Ok(())
}
