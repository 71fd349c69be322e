//! The benchmark guest (bench_guest.s) and the calibration of Count against instructions.
//!
//! Under QEMU's `-icount shift=0` every guest instruction takes the same virtual time and
//! Count advances at a fixed rate of that time, so a Count delta converts into an
//! instruction count with one factor. [`calibrate`] measures the factor on this CPU with a
//! loop whose instruction count is known exactly (interrupts off, so nothing else runs).

use super::cp0;
use super::irq::IrqGuard;
use core::arch::{asm, global_asm};

global_asm!(include_str!("bench_guest.s"));

extern "C" {
    static bench_guest_start: u8;
    static bench_guest_end: u8;
}

/// Guest physical address the image is linked for.
pub const LOAD_GPA: u64 = 0x1000;

/// The image bytes.
pub fn image() -> &'static [u8] {
    let start = &raw const bench_guest_start;
    let end = &raw const bench_guest_end;
    let len = end as usize - start as usize;
    // SAFETY: both symbols delimit the image in .rodata (bench_guest.s), which is part of
    // the firmware image for its whole lifetime and never written.
    unsafe { core::slice::from_raw_parts(start, len) }
}

/// Instructions in one iteration of the calibration loop (ADDIU, BNEZ, NOP delay slot).
const LOOP_INSNS: u64 = 3;

/// Runs a loop of `iterations * 3` instructions with interrupts off; returns the number of
/// instructions and the Count ticks it took.
pub fn calibrate(iterations: u32) -> (u64, u64) {
    let _irq = IrqGuard::new();
    let start = cp0::count();
    // SAFETY: a register-only countdown loop; it touches no memory and no stack.
    unsafe {
        asm!(
            ".set push",
            ".set noreorder",
            ".set noat",
            "1: addiu {n}, {n}, -1",
            "bnez {n}, 1b",
            "nop",
            ".set pop",
            n = inout(reg) u64::from(iterations) => _,
            options(nomem, nostack),
        );
    }
    let ticks = cp0::count().wrapping_sub(start);
    (u64::from(iterations) * LOOP_INSNS, u64::from(ticks))
}
