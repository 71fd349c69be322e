//! The EJTAG debug exception vector: a stub for 0xbfc00480 that turns a debug exception
//! (a guest's SDBBP) into an ordinary exit through the firmware's vectors.
//!
//! The stub (debug_vector.s) lives in its own output section of the image; tools/build-fw.sh
//! extracts it to `out/ejtag-vector.bin` and qemu-run.sh loads that at physical 0x1fc00480,
//! QEMU's boot ROM, which the firmware cannot write itself (Malta maps a read-only copy of
//! the flash there). [`owned`] checks at run time that the boot ROM holds this stub; without
//! it a guest SDBBP would send the CPU into QEMU's boot loader.

use core::arch::global_asm;

/// Offset from EBase of the debug-exit vector the stub jumps to (vectors.s).
pub const DEBUG_EXIT_OFFSET: u64 = 0x280;
/// Where the CPU fetches the debug exception handler (EJTAG ProbEn = 0), KSEG1.
const DEBUG_VECTOR: u64 = 0xffff_ffff_bfc0_0480;
/// Room for the stub before QEMU's boot loader data at 0xbfc00500.
const STUB_ROOM: usize = 0x80;

global_asm!(
    include_str!("debug_vector.s"),
    debug_offset = const DEBUG_EXIT_OFFSET,
);

extern "C" {
    static ejtag_vector_start: u32;
    static ejtag_vector_end: u32;
}

/// The stub's instruction words as linked into the image.
fn stub() -> &'static [u32] {
    let start = &raw const ejtag_vector_start;
    let end = &raw const ejtag_vector_end;
    let words = (end as usize - start as usize) / 4;
    assert!(words * 4 <= STUB_ROOM, "EJTAG stub larger than its slot");
    // SAFETY: both symbols delimit the stub's words in the read-only text of the image.
    unsafe { core::slice::from_raw_parts(start, words) }
}

/// Whether the debug vector in the boot ROM holds this firmware's stub, so a debug exception
/// comes back as a guest exit.
pub fn owned() -> bool {
    stub().iter().enumerate().all(|(i, &word)| {
        let at = (DEBUG_VECTOR + 4 * i as u64) as *const u32;
        // SAFETY: KSEG1 boot ROM, always mapped on Malta and free of side effects to read.
        unsafe { core::ptr::read_volatile(at) == word }
    })
}
