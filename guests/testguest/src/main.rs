//! The mipsvisor test guest (issue 5, part 8).
//!
//! A small guest kernel that exercises the trap-and-emulate machinery as a real kernel
//! would: it installs its own exception vectors, manages its own guest TLB (TLBWI, TLBWR,
//! TLBP, TLBR; refills for the user segment and the mapped kernel segment), runs a user
//! program through its own page mappings (ERET to user, SYSCALL back, forbidden accesses
//! reflected to it), takes timer interrupts from Compare, and fills and verifies its RAM
//! with patterns through the KSEG0 window and the mapped kernel segment. It prints a
//! checksum of everything it read back and exits 0 only if every check passed.
//!
//! Parameters come from VM info: RAM size (key 3), VM number (4), and, where the hypervisor
//! offers them, the bytes to test (5) and the number of rounds (6).

#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod delay_slot;
mod memtest;
mod paging;
mod user;

use core::sync::atomic::{AtomicU64, Ordering};
use guest_rt::hypercall::{self, VmInfoKey};
use guest_rt::trap::{self, exc, TrapFrame, TrapInfo, Vector};
use guest_rt::{cp0, println, tlb};

guest_rt::entry!(main);

/// Exit statuses (besides guest-rt's 101 panic, 125 unexpected and 126 nested exception).
mod status {
    pub const PASS: u64 = 0;
    pub const MEMORY: u64 = 1;
    pub const SETUP: u64 = 2;
    pub const USER: u64 = 3;
    pub const TIMER: u64 = 4;
    pub const TLB: u64 = 5;
    pub const DELAY_SLOT: u64 = 6;
}

/// Count ticks between timer interrupts.
const TIMER_TICKS: u32 = 200_000;
/// Timer interrupts to see before the memory test.
const TIMER_MIN_INTERRUPTS: u64 = 3;
/// Rounds of the memory test unless VM info key 6 says otherwise.
const DEFAULT_ROUNDS: u64 = 2;
/// Most of the tested RAM seen through the mapped kernel segment in each round.
const KSEG2_MAX_BYTES: u64 = 2 << 20;

static TIMER_INTERRUPTS: AtomicU64 = AtomicU64::new(0);
/// Interrupts that came through EBase + 0x200 (Cause.IV set).
static VECTORED_INTERRUPTS: AtomicU64 = AtomicU64::new(0);
static REFILLS: AtomicU64 = AtomicU64::new(0);
static TLB_INVALIDS: AtomicU64 = AtomicU64::new(0);
static KERNEL_TLB_FAULTS: AtomicU64 = AtomicU64::new(0);

fn main() -> u64 {
    let Ok(ram) = hypercall::vm_info(VmInfoKey::RamBytes) else {
        println!("testguest: FAIL no RAM size from VM info");
        return status::SETUP;
    };
    let vm = hypercall::vm_info(VmInfoKey::VmNumber).unwrap_or(0);
    let abi = hypercall::vm_info(VmInfoKey::AbiVersion).unwrap_or(0);
    println!(
        "testguest: vm {vm} abi {abi} ram {} KiB, image ends at GPA {:#x}",
        ram >> 10,
        guest_rt::image_end_gpa()
    );

    trap::install(handle_exception);
    if let Err(why) = check_vectors() {
        println!("testguest: FAIL vectors: {why}");
        return status::SETUP;
    }
    if let Err(why) = check_tlb_instructions() {
        println!("testguest: FAIL TLB instructions: {why}");
        return status::TLB;
    }
    if let Err(why) = start_timer() {
        println!("testguest: FAIL timer: {why}");
        return status::TIMER;
    }
    println!(
        "testguest: vectors at {:#x}, {} TLB entries, {} timer interrupts",
        trap::vectors_address(),
        tlb::size(),
        TIMER_INTERRUPTS.load(Ordering::Relaxed)
    );

    if let Err(why) = user::run_all() {
        println!("testguest: FAIL user mode: {why}");
        return status::USER;
    }

    let plan = match memtest::Plan::new(ram, vm) {
        Ok(plan) => plan,
        Err(why) => {
            println!("testguest: FAIL memory plan: {why}");
            return status::SETUP;
        }
    };
    paging::set_kseg2(plan.base_gpa, plan.kseg2_bytes);
    if let Err(why) = delay_slot::run(plan.base_gpa) {
        println!("testguest: FAIL delay slot: {why}");
        return status::DELAY_SLOT;
    }
    let report = memtest::run(&plan);

    // Interrupts off before the final report: the counters stay put while printed.
    cp0::interrupts_off();
    let ticks = TIMER_INTERRUPTS.load(Ordering::Relaxed);
    println!(
        "testguest: tlb refills {} invalid {} timer interrupts {} ({} via EBase+0x200)",
        REFILLS.load(Ordering::Relaxed),
        TLB_INVALIDS.load(Ordering::Relaxed),
        ticks,
        VECTORED_INTERRUPTS.load(Ordering::Relaxed)
    );
    if report.mismatches != 0 {
        println!(
            "testguest: FAIL memory: {} bad words, first {}",
            report.mismatches,
            report.first.map_or(0, |m| m.index * 8)
        );
        if let Some(m) = report.first {
            println!("testguest: first mismatch {m}");
        }
        return status::MEMORY;
    }
    println!(
        "testguest: CHECKSUM {:#018x} bytes {} rounds {}",
        report.checksum.value(),
        report.bytes,
        report.rounds
    );
    println!("testguest: PASS");
    status::PASS
}

/// EBase must read back as the vector block, BEV and ERL must be clear.
fn check_vectors() -> Result<(), &'static str> {
    let base = trap::vectors_address() & 0x1fff_f000;
    if u64::from(cp0::ebase()) & 0x1fff_f000 != base {
        return Err("EBase does not hold the vector address");
    }
    if cp0::status() & (cp0::STATUS_BEV | cp0::STATUS_ERL) != 0 {
        return Err("Status.BEV or ERL still set");
    }
    Ok(())
}

/// Writes an entry with TLBWI, finds it with TLBP, reads it back with TLBR, and clears the
/// TLB. Runs before anything is mapped.
fn check_tlb_instructions() -> Result<(), &'static str> {
    if tlb::size() < 16 {
        return Err("fewer than 16 TLB entries");
    }
    // SAFETY: nothing is mapped yet; all guest code and data live in the window.
    unsafe {
        cp0::write32::<6, 0>(0); // Wired
        tlb::invalidate_all();
    }
    tlb::set_asid(paging::KERNEL_ASID);
    let entry = tlb::TlbEntry {
        hi: tlb::entry_hi(0x7000_0000, paging::KERNEL_ASID),
        lo0: tlb::entry_lo(0x0020_0000, tlb::LO_VALID | tlb::LO_CACHED),
        lo1: tlb::entry_lo(0x0020_1000, tlb::LO_VALID | tlb::LO_DIRTY | tlb::LO_CACHED),
        page_mask: tlb::PAGE_MASK_4K,
    };
    const INDEX: u32 = 7;
    // SAFETY: 0x7000_0000 is not used by anything; the entry is removed below.
    unsafe { tlb::write_indexed(INDEX, &entry) };
    let found = tlb::probe(entry.hi);
    let read = tlb::read(INDEX);
    let missing = tlb::probe(tlb::entry_hi(0x7000_2000, paging::KERNEL_ASID));
    // SAFETY: as above; restores the invalid state and the kernel ASID.
    unsafe { tlb::invalidate_all() };
    tlb::set_asid(paging::KERNEL_ASID);
    if found != Some(INDEX) {
        return Err("TLBP did not find the entry TLBWI wrote");
    }
    if read != entry {
        println!("testguest: wrote {entry:x?}, TLBR read {read:x?}");
        return Err("TLBR did not read back what TLBWI wrote");
    }
    if missing.is_some() {
        return Err("TLBP found an entry that was never written");
    }
    Ok(())
}

/// Enables the Compare interrupt and waits for the first ones: polling with a bound for
/// the first (so a missing timer is reported, not a hang), then with WAIT.
fn start_timer() -> Result<(), &'static str> {
    cp0::arm_timer(TIMER_TICKS);
    let status = cp0::status();
    // SAFETY: handle_exception handles IP7; no other interrupt line is unmasked.
    unsafe { cp0::set_status((status & !cp0::STATUS_IM_MASK) | cp0::STATUS_IM7 | cp0::STATUS_IE) };
    let start = cp0::count();
    while TIMER_INTERRUPTS.load(Ordering::Relaxed) == 0 {
        if cp0::count().wrapping_sub(start) > 100 * TIMER_TICKS {
            return Err("no timer interrupt within 100 periods of Count");
        }
    }
    while TIMER_INTERRUPTS.load(Ordering::Relaxed) < TIMER_MIN_INTERRUPTS {
        cp0::wait();
    }
    if VECTORED_INTERRUPTS.load(Ordering::Relaxed) != 0 {
        return Err("an interrupt used the +0x200 vector while Cause.IV was clear");
    }
    // From now on interrupts use the special vector at EBase + 0x200 (Cause.IV).
    // SAFETY: the vector block has an entry at +0x200 that handles them like +0x180.
    unsafe { cp0::write32::<13, 0>(cp0::cause() | cp0::CAUSE_IV) };
    while VECTORED_INTERRUPTS.load(Ordering::Relaxed) == 0 {
        cp0::wait();
    }
    Ok(())
}

/// The one exception handler of the test guest.
fn handle_exception(frame: &mut TrapFrame, info: &TrapInfo) {
    match info.exc_code() {
        exc::INT => handle_interrupt(frame, info),
        exc::TLBL | exc::TLBS => handle_tlb_miss(frame, info),
        _ if info.from_user() => user::handle_user_exception(frame, info),
        _ => trap::unexpected(frame, info),
    }
}

fn handle_interrupt(frame: &TrapFrame, info: &TrapInfo) {
    let pending = info.cause & info.status & cp0::STATUS_IM_MASK;
    if pending & cp0::CAUSE_IP7 == 0 {
        trap::unexpected(frame, info);
    }
    TIMER_INTERRUPTS.fetch_add(1, Ordering::Relaxed);
    if info.vector == Vector::Interrupt {
        VECTORED_INTERRUPTS.fetch_add(1, Ordering::Relaxed);
    }
    // From Count, not from the old Compare, and checked after the write (arm_timer): after
    // a preemption a deadline may already lie in the past, and the next interrupt would
    // only come after Count wrapped.
    cp0::arm_timer(TIMER_TICKS);
}

fn handle_tlb_miss(frame: &mut TrapFrame, info: &TrapInfo) {
    let asid = (cp0::entry_hi() & 0xff) as u8;
    match paging::fill(info.bad_vaddr, asid) {
        paging::Fill::Unmapped if info.from_user() => user::handle_user_exception(frame, info),
        paging::Fill::Unmapped => trap::unexpected(frame, info),
        filled => {
            match info.vector {
                Vector::TlbRefill => REFILLS.fetch_add(1, Ordering::Relaxed),
                _ => TLB_INVALIDS.fetch_add(1, Ordering::Relaxed),
            };
            if !info.from_user() {
                KERNEL_TLB_FAULTS.fetch_add(1, Ordering::Relaxed);
            }
            // A refill never finds an entry for the pair (that is what made it a refill);
            // an invalid-entry exception always does.
            let expected = match info.vector {
                Vector::TlbRefill => paging::Fill::Random,
                _ => paging::Fill::InPlace,
            };
            if filled != expected {
                println!(
                    "testguest: FAIL {:?} at {:#x} via {:?}: TLBP disagrees",
                    filled, info.bad_vaddr, info.vector
                );
                hypercall::exit(status::TLB);
            }
        }
    }
}

/// Kernel-mode TLB exceptions so far (refills and invalids of the mapped kernel segment).
pub fn kernel_tlb_faults() -> u64 {
    KERNEL_TLB_FAULTS.load(Ordering::Relaxed)
}

/// TLB invalid exceptions so far.
pub fn tlb_invalids() -> u64 {
    TLB_INVALIDS.load(Ordering::Relaxed)
}
