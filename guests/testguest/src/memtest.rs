//! The memory test: fills guest RAM with patterns and verifies it, through the KSEG0 window
//! and through the mapped kernel segment (guest TLB), round after round.

use crate::paging;
use core::fmt;
use guest_patterns::{round_seed, Checksum, Mismatch, Pattern, Verifier};
use guest_rt::hypercall::{self, VmInfoKey};
use guest_rt::{println, tlb};

/// Granule of the tested range: a TLB page pair.
const GRANULE: u64 = 0x2000;
/// The smallest range worth testing.
const MIN_TEST_BYTES: u64 = 0x1_0000;

/// Why no test plan could be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanError {
    /// RAM ends before (or too soon after) the image and the user area.
    RamTooSmall {
        /// RAM size from VM info.
        ram: u64,
        /// First GPA the test could use.
        first_free: u64,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::RamTooSmall { ram, first_free } => write!(
                f,
                "RAM of {ram:#x} bytes leaves less than {MIN_TEST_BYTES:#x} above GPA {first_free:#x}"
            ),
        }
    }
}

/// What to test.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// First tested GPA.
    pub base_gpa: u64,
    /// Bytes tested.
    pub bytes: u64,
    /// Leading bytes of the range also seen through the mapped kernel segment.
    pub kseg2_bytes: u64,
    /// Rounds.
    pub rounds: u64,
    /// VM number (part of every seed).
    pub vm: u64,
}

impl Plan {
    /// Everything from after the user area to the end of RAM (or VM info key 5's size),
    /// VM info key 6's rounds (or the default).
    pub fn new(ram: u64, vm: u64) -> Result<Plan, PlanError> {
        let first_free = paging::user_data_gpa() + paging::USER_AREA_BYTES;
        let base_gpa = first_free.next_multiple_of(GRANULE);
        let end = ram.min(guest_rt::WINDOW_BYTES) & !(GRANULE - 1);
        if end < base_gpa + MIN_TEST_BYTES {
            return Err(PlanError::RamTooSmall { ram, first_free });
        }
        let available = end - base_gpa;
        let bytes = match hypercall::vm_info(VmInfoKey::TestBytes) {
            Ok(b) if b >= MIN_TEST_BYTES => b.min(available) & !(GRANULE - 1),
            _ => available,
        };
        let rounds = match hypercall::vm_info(VmInfoKey::TestRounds) {
            Ok(r) if r > 0 => r.min(64),
            _ => crate::DEFAULT_ROUNDS,
        };
        let kseg2_bytes = crate::KSEG2_MAX_BYTES.min(bytes / 2) & !(GRANULE - 1);
        Ok(Plan {
            base_gpa,
            bytes,
            kseg2_bytes,
            rounds,
            vm,
        })
    }
}

/// What the test found.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// Bytes tested per round.
    pub bytes: u64,
    /// Rounds run.
    pub rounds: u64,
    /// Words that did not verify, over all rounds and both views.
    pub mismatches: u64,
    /// The first of them.
    pub first: Option<Mismatch>,
    /// Checksum of every word read back through the window.
    pub checksum: Checksum,
}

/// Address of GPA `gpa` in the view: the mapped kernel segment for the leading
/// `kseg2_bytes`, else the window.
fn view_address(plan: &Plan, gpa: u64, through_kseg2: bool) -> u64 {
    if through_kseg2 {
        paging::KSEG2_VA + (gpa - plan.base_gpa)
    } else {
        guest_rt::window_address(gpa)
    }
}

fn fill(plan: &Plan, verifier: &Verifier, start: u64, end: u64, through_kseg2: bool) {
    let mut gpa = start;
    while gpa < end {
        let p = view_address(plan, gpa, through_kseg2) as *mut u64;
        // SAFETY: [start, end) lies in guest RAM above the image and the user area (Plan),
        // which nothing else uses; the kernel-segment view maps exactly that RAM.
        unsafe { p.write_volatile(verifier.expected(gpa / 8)) };
        gpa += 8;
    }
}

fn verify(plan: &Plan, verifier: &mut Verifier, start: u64, end: u64, through_kseg2: bool) {
    let mut gpa = start;
    while gpa < end {
        let p = view_address(plan, gpa, through_kseg2) as *const u64;
        // SAFETY: as in `fill`.
        let word = unsafe { p.read_volatile() };
        verifier.check(gpa / 8, word);
        gpa += 8;
    }
}

/// Plants an invalid global entry for the first kernel-segment page pair, so the first
/// access takes a TLB invalid exception (general vector) rather than a refill.
fn plant_invalid_entry() {
    let entry = tlb::TlbEntry {
        hi: tlb::entry_hi(paging::KSEG2_VA, paging::KERNEL_ASID),
        lo0: tlb::LO_GLOBAL,
        lo1: tlb::LO_GLOBAL,
        page_mask: tlb::PAGE_MASK_4K,
    };
    if let Some(index) = tlb::probe(entry.hi) {
        // SAFETY: makes the pair invalid; the handler revalidates it on the next access.
        unsafe { tlb::write_indexed(index, &entry) };
    } else {
        // SAFETY: as above; no entry for the pair exists, so no duplicate arises.
        unsafe { tlb::write_random(&entry) };
    }
}

/// Writes a sentinel entry at index 0 and sets Wired = 1, so TLBWR (every refill) must
/// leave it alone; returns the entry.
fn wire_sentinel() -> tlb::TlbEntry {
    let entry = tlb::TlbEntry {
        hi: tlb::entry_hi(0x7f00_0000, paging::KERNEL_ASID),
        lo0: tlb::entry_lo(0, tlb::LO_CACHED),
        lo1: tlb::entry_lo(0x1000, tlb::LO_CACHED),
        page_mask: tlb::PAGE_MASK_4K,
    };
    // SAFETY: the entry is invalid (V = 0) at an address nothing uses; Wired only restricts
    // where TLBWR writes.
    unsafe {
        if let Some(index) = tlb::probe(entry.hi) {
            // Never leave a duplicate of the sentinel's VPN2 behind.
            tlb::write_indexed(
                index,
                &tlb::TlbEntry {
                    hi: tlb::entry_hi(0x4000_0000 + u64::from(index) * 0x2000, 0),
                    lo0: 0,
                    lo1: 0,
                    page_mask: 0,
                },
            );
        }
        tlb::write_indexed(0, &entry);
        guest_rt::cp0::write32::<6, 0>(1);
    }
    tlb::set_asid(paging::KERNEL_ASID);
    entry
}

/// Runs every round of `plan`.
pub fn run(plan: &Plan) -> Report {
    paging::set_kseg2(plan.base_gpa, plan.kseg2_bytes);
    println!(
        "testguest: memory test GPA {:#x}..{:#x} ({} KiB, first {} KiB also via {:#x}), {} rounds",
        plan.base_gpa,
        plan.base_gpa + plan.bytes,
        plan.bytes >> 10,
        plan.kseg2_bytes >> 10,
        paging::KSEG2_VA,
        plan.rounds
    );
    let mut report = Report {
        bytes: plan.bytes,
        rounds: plan.rounds,
        mismatches: 0,
        first: None,
        checksum: Checksum::new(),
    };
    let split = plan.base_gpa + plan.kseg2_bytes;
    let end = plan.base_gpa + plan.bytes;
    let wired = wire_sentinel();
    let invalids_before = crate::tlb_invalids();
    let kernel_faults_before = crate::kernel_tlb_faults();
    for round in 0..plan.rounds {
        let pattern = Pattern::for_round(round);
        let mut verifier = Verifier::new(pattern, round_seed(plan.vm, round));
        if round == 0 {
            plant_invalid_entry();
        }
        fill(plan, &verifier, plan.base_gpa, split, true);
        fill(plan, &verifier, split, end, false);
        // Everything back through the window (what went in through the TLB must be at the
        // GPA the page table names), then the mapped part once more through the TLB.
        verify(plan, &mut verifier, plan.base_gpa, end, false);
        let mut again = Verifier::new(pattern, round_seed(plan.vm, round));
        verify(plan, &mut again, plan.base_gpa, split, true);
        for v in [&verifier, &again] {
            report.mismatches += v.mismatches();
            if report.first.is_none() {
                report.first = v.first_mismatch();
            }
        }
        report.checksum.combine(verifier.checksum());
        println!(
            "testguest: round {round} {pattern}: {} words, {} bad",
            verifier.words() + again.words(),
            verifier.mismatches() + again.mismatches()
        );
    }
    if plan.kseg2_bytes > 0 && crate::kernel_tlb_faults() == kernel_faults_before {
        println!("testguest: FAIL the mapped kernel segment took no TLB exception");
        report.mismatches += 1;
    }
    // Hundreds of TLBWR refills later the wired entry must still be there.
    let still = tlb::read(0);
    tlb::set_asid(paging::KERNEL_ASID);
    // SAFETY: Wired back to 0; the sentinel maps nothing anybody uses.
    unsafe { guest_rt::cp0::write32::<6, 0>(0) };
    if still != wired {
        println!("testguest: FAIL TLBWR replaced the wired entry 0: now {still:x?}");
        report.mismatches += 1;
    }
    if plan.kseg2_bytes > 0 && crate::tlb_invalids() == invalids_before {
        println!("testguest: FAIL the planted invalid entry raised no TLB invalid exception");
        report.mismatches += 1;
    }
    report
}
