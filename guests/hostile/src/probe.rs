//! Single faulting instructions the hostile guest's exception handler can step over.
//!
//! Each probe is one instruction in its own inline asm block with `.set noreorder`, so it
//! never sits in a branch delay slot and "skip 4 bytes" is always the right recovery. The
//! handler counts every exception; a probe compares the count before and after.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};
use guest_rt::trap::{exc, TrapFrame, TrapInfo};

static EXCEPTIONS: AtomicU64 = AtomicU64::new(0);
static LAST_CODE: AtomicU64 = AtomicU64::new(0);
static LAST_BAD_VADDR: AtomicU64 = AtomicU64::new(0);

/// What a value register holds when the load that should have filled it trapped.
pub const UNTOUCHED: u64 = 0x5afe_5afe_5afe_5afe;

/// The hostile guest's only exception handler: record and step over.
pub fn handle_exception(frame: &mut TrapFrame, info: &TrapInfo) {
    if info.exc_code() == exc::INT {
        // No interrupt is ever unmasked; if one arrives anyway, just return.
        return;
    }
    EXCEPTIONS.fetch_add(1, Ordering::Relaxed);
    LAST_CODE.store(info.exc_code().into(), Ordering::Relaxed);
    LAST_BAD_VADDR.store(info.bad_vaddr, Ordering::Relaxed);
    frame.skip_instruction(info.cause);
}

/// Exceptions taken so far.
pub fn exceptions() -> u64 {
    EXCEPTIONS.load(Ordering::Relaxed)
}

/// How one probe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The instruction completed (a load returns its value).
    Completed(u64),
    /// An exception was reflected to the guest: ExcCode and BadVAddr.
    Trapped(u32, u64),
}

impl core::fmt::Display for Probe {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Probe::Completed(v) => write!(f, "done {v:#x}"),
            Probe::Trapped(code, bad) => {
                write!(f, "trapped {} @{bad:#x}", exc::name(code))
            }
        }
    }
}

fn outcome(before: u64, value: u64) -> Probe {
    if exceptions() == before {
        Probe::Completed(value)
    } else {
        Probe::Trapped(
            LAST_CODE.load(Ordering::Relaxed) as u32,
            LAST_BAD_VADDR.load(Ordering::Relaxed),
        )
    }
}

/// LD from `addr`.
pub fn load(addr: u64) -> Probe {
    let before = exceptions();
    let mut value = UNTOUCHED;
    // SAFETY: a load changes nothing in memory; if it traps, the handler steps over it and
    // `value` keeps UNTOUCHED.
    unsafe {
        // No `nomem`: the handler updates the counters in memory.
        asm!(".set push\n.set noreorder\nld {v}, 0({a})\nnop\n.set pop",
             a = in(reg) addr, v = inout(reg) value, options(nostack));
    }
    outcome(before, value)
}

/// SD of `value` to `addr`.
///
/// # Safety
/// `addr` must not be memory this guest's Rust code uses (it is meant for addresses that
/// must not be writable at all).
pub unsafe fn store(addr: u64, value: u64) -> Probe {
    let before = exceptions();
    // SAFETY: the caller guarantees the target is not this guest's live memory.
    unsafe {
        asm!(".set push\n.set noreorder\nsd {v}, 0({a})\nnop\n.set pop",
             a = in(reg) addr, v = in(reg) value, options(nostack));
    }
    outcome(before, 0)
}

/// CACHE op 0x15 (Hit_Writeback_Invalidate_D) on `addr`.
pub fn cache_writeback_invalidate(addr: u64) -> Probe {
    let before = exceptions();
    // SAFETY: under the guest ABI CACHE does nothing visible; on any address it either does
    // that or traps, and the handler steps over it.
    unsafe {
        asm!(".set push\n.set noreorder\ncache 0x15, 0({a})\nnop\n.set pop",
             a = in(reg) addr, options(nostack));
    }
    outcome(before, 0)
}

/// BREAK.
pub fn breakpoint() -> Probe {
    let before = exceptions();
    // SAFETY: BREAK only raises an exception, which the handler steps over.
    unsafe {
        asm!(
            ".set push\n.set noreorder\nbreak\nnop\n.set pop",
            options(nostack)
        );
    }
    outcome(before, 0)
}

/// TEQ $0, $0: an unconditional trap.
pub fn trap_always() -> Probe {
    let before = exceptions();
    // SAFETY: as for `breakpoint`.
    unsafe {
        asm!(
            ".set push\n.set noreorder\nteq $0, $0\nnop\n.set pop",
            options(nostack)
        );
    }
    outcome(before, 0)
}

/// SYSCALL from guest kernel mode (reflected to the guest's own vector).
pub fn syscall() -> Probe {
    let before = exceptions();
    // SAFETY: as for `breakpoint`.
    unsafe {
        asm!(
            ".set push\n.set noreorder\nsyscall\nnop\n.set pop",
            options(nostack)
        );
    }
    outcome(before, 0)
}
