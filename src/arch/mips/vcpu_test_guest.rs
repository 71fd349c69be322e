//! The vCPU self-test guest: a small flat image in assembly (vcpu_test_guest.s) that checks
//! the trap-and-emulate paths stage by stage, embedded in the firmware's read-only data.

use core::arch::global_asm;

global_asm!(include_str!("vcpu_test_guest.s"));

extern "C" {
    static vcpu_test_guest_start: u8;
    static vcpu_test_guest_end: u8;
}

/// Guest physical address the image is linked for.
pub const LOAD_GPA: u64 = 0x1000;

/// The image bytes.
pub fn image() -> &'static [u8] {
    let start = &raw const vcpu_test_guest_start;
    let end = &raw const vcpu_test_guest_end;
    let len = end as usize - start as usize;
    // SAFETY: both symbols delimit the image in .rodata (vcpu_test_guest.s), which is part
    // of the firmware image for its whole lifetime and never written.
    unsafe { core::slice::from_raw_parts(start, len) }
}
