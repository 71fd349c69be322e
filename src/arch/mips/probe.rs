//! Single instructions that raise a chosen exception, for self-tests and benchmarks.
//!
//! Each is meant to run inside [`super::trap::expect_fault`], whose handler skips the
//! faulting instruction. Outside it they end the run with an unexpected-exception report,
//! which is also safe.

use core::arch::asm;

/// Executes `BREAK` (Breakpoint exception).
pub fn breakpoint() {
    // SAFETY: BREAK only raises an exception; the handler either skips it or ends the run.
    unsafe {
        // No `nomem`: the handler records the exception in memory the caller reads.
        // nostack: no stack use.
        asm!("break 7", options(nostack));
    }
}

/// An address in the 64-bit address hole: xuseg (bits 63:62 = 0) above any implemented
/// SEGBITS. No MIPS64 implementation maps it, so any access raises Address Error (PRA 4.3).
/// (A misaligned load is not a portable trigger: QEMU's Loongson-3 models allow it.)
pub const ADDRESS_HOLE: u64 = 0x3fff_ffff_ffff_fff8;

/// Loads from [`ADDRESS_HOLE`]: Address Error on load (AdEL). Returns the destination
/// register after the (skipped) load: `sentinel` if the load did not happen.
pub fn load_from_address_hole(sentinel: u64) -> u64 {
    let mut value = sentinel;
    // SAFETY: the address is in the architectural address hole, so the load cannot reach
    // memory; it raises AdEL, which the armed handler skips (or which ends the run).
    unsafe {
        // readonly: may only read memory; nostack: no stack use. `.set noat`: see cp0.rs.
        asm!(".set push\n.set noat\nld {value}, 0({address})\n.set pop",
             address = in(reg) ADDRESS_HOLE, value = inout(reg) value,
             options(readonly, nostack));
    }
    value
}

/// Reads the 64-bit word at `va` (a mapped kernel address).
///
/// # Safety
/// `va` must be 8-byte aligned and either mapped to memory the caller owns, or the caller
/// must expect the resulting exception.
pub unsafe fn read_mapped(va: u64) -> u64 {
    // SAFETY: forwarded caller contract.
    unsafe { core::ptr::read_volatile(va as *const u64) }
}
