//! Trapping instructions in branch delay slots (delay_slot.s): emulated MFC0 after a taken
//! branch, a not-taken branch and a JALR, and a TLB refill on a load in a delay slot.

use crate::paging;
use core::arch::global_asm;
use guest_rt::{cp0, tlb, window_address};

global_asm!(include_str!("delay_slot.s"));

extern "C" {
    fn testguest_ds_mfc0_taken() -> u64;
    fn testguest_ds_mfc0_not_taken() -> u64;
    fn testguest_ds_mfc0_jalr() -> u64;
    fn testguest_ds_load_taken(addr: u64) -> u64;
}

/// Runs every case; `scratch_gpa` is a page of guest RAM that [`paging::KSEG2_VA`] maps
/// (the memory test's first page, not yet in use).
pub fn run(scratch_gpa: u64) -> Result<(), &'static str> {
    let status = u64::from(cp0::status()) as i32 as i64 as u64;
    // SAFETY: the asm functions follow the n64 calling convention and touch only their
    // own registers and stack slot.
    let (taken, not_taken, jalr) = unsafe {
        (
            testguest_ds_mfc0_taken(),
            testguest_ds_mfc0_not_taken(),
            testguest_ds_mfc0_jalr(),
        )
    };
    if taken != status {
        return Err("MFC0 in the delay slot of a taken branch");
    }
    if not_taken != status {
        return Err("MFC0 in the delay slot of a branch not taken");
    }
    if jalr != status {
        return Err("MFC0 in the delay slot of a JALR");
    }

    const MARK: u64 = 0x0d51_0750_0d51_0750;
    let offset = 0x1008;
    let marked = window_address(scratch_gpa + offset) as *mut u64;
    // SAFETY: scratch_gpa's page is guest RAM nothing else uses yet (see `run`'s caller).
    unsafe { marked.write_volatile(MARK) };
    // No entry for the pair may be in the TLB, so the load really refills.
    // SAFETY: the kernel segment holds no live references; refills restore what is used.
    unsafe { tlb::invalidate_all() };
    tlb::set_asid(paging::KERNEL_ASID);
    // SAFETY: the address is mapped by the page table onto `marked`.
    let loaded = unsafe { testguest_ds_load_taken(paging::KSEG2_VA + offset) };
    if loaded != MARK {
        guest_rt::println!("testguest: delay-slot load read {loaded:#x}");
        return Err("TLB refill of a load in a delay slot");
    }
    Ok(())
}
