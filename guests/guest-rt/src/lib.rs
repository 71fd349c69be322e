//! Runtime shared by the mipsvisor test guests (built for the guest ABI of
//! docs/guest-abi.md): start-up code, hypercalls, console, CP0 and TLB access, exception
//! vectors and user-mode entry.
//!
//! A guest binary is `#![no_std] #![no_main]`, links with guests/guest.ld and names its
//! main function with [`entry!`]; the value main returns becomes the VM's exit status.
//! A panic prints `GUEST PANIC ...` and exits with status 101.

#![no_std]
#![feature(asm_experimental_arch)]

pub mod console;
pub mod cp0;
pub mod hypercall;
pub mod tlb;
pub mod trap;
pub mod user;

use core::arch::global_asm;
use core::panic::PanicInfo;

global_asm!(include_str!("start.s"));

/// Exit status of a panicking guest.
pub const PANIC_EXIT_STATUS: u64 = 101;

/// Names the guest's main function, `fn() -> u64`; its result is the exit status.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        /// Called by `_start` once .bss is clear and a stack exists.
        #[no_mangle]
        pub extern "C" fn guest_main() -> ! {
            let main: fn() -> u64 = $main;
            $crate::hypercall::exit(main())
        }
    };
}

extern "C" {
    static __image_end: u8;
}

/// Guest physical address of the first byte after the image, its stacks included
/// (page aligned): RAM from here up is free for the guest to use.
pub fn image_end_gpa() -> u64 {
    (&raw const __image_end as u64) & WINDOW_GPA_MASK
}

/// Start of the KSEG0/KSEG1 window: GPA 0 is at this address.
pub const WINDOW_BASE: u64 = 0x4000_0000;
/// Mask giving the GPA of a window address.
pub const WINDOW_GPA_MASK: u64 = 0x1fff_ffff;
/// Size of the window (GPAs reachable without the TLB).
pub const WINDOW_BYTES: u64 = 0x2000_0000;

/// The window address of guest physical address `gpa` (below [`WINDOW_BYTES`]).
pub const fn window_address(gpa: u64) -> u64 {
    WINDOW_BASE + (gpa & WINDOW_GPA_MASK)
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    match info.location() {
        Some(loc) => println!(
            "GUEST PANIC at {}:{}: {}",
            loc.file(),
            loc.line(),
            info.message()
        ),
        None => println!("GUEST PANIC: {}", info.message()),
    }
    hypercall::exit(PANIC_EXIT_STATUS)
}
