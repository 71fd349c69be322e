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

/// SDBBP with code 0: `SPECIAL2` opcode, function 0x3f, code in bits 25:6.
const SDBBP: u32 = 0x7000_003f;
/// SDBBP with code 1, the form QEMU's semihosting (UHI) takes for a host call.
const SDBBP_UHI: u32 = 0x7000_007f;
/// UHI operation number of `exit` (in `$25`).
const UHI_EXIT: u64 = 1;

/// SDBBP (EJTAG software debug breakpoint). The guest CPU has no EJTAG, so the hypervisor
/// must reflect it as a Reserved Instruction exception.
pub fn debug_breakpoint() -> Probe {
    let before = exceptions();
    // SAFETY: SDBBP only raises an exception, which the handler steps over.
    unsafe {
        asm!(
            ".set push\n.set noreorder\n.word {w}\nnop\n.set pop",
            w = const SDBBP,
            options(nostack)
        );
    }
    outcome(before, 0)
}

/// SDBBP code 1 with the UHI exit request (`$25` = 1, `$4` = `status`) loaded: if the host
/// CPU's semihosting took it, the whole machine would stop with `status`.
pub fn debug_breakpoint_uhi_exit(status: u64) -> Probe {
    let before = exceptions();
    // SAFETY: as for `debug_breakpoint`; $25 and $4 are inputs only.
    unsafe {
        asm!(
            ".set push\n.set noreorder\n.word {w}\nnop\n.set pop",
            w = const SDBBP_UHI,
            in("$25") UHI_EXIT,
            in("$4") status,
            options(nostack)
        );
    }
    outcome(before, 0)
}

/// SDBBP in the delay slot of a taken branch: the exception must come back with Cause.BD
/// and EPC at the branch, so stepping over both (EPC + 8) lands after the slot.
pub fn debug_breakpoint_in_delay_slot() -> Probe {
    let before = exceptions();
    // SAFETY: as for `debug_breakpoint`; the branch only skips to the label.
    unsafe {
        asm!(
            ".set push\n.set noreorder\nb 1f\n.word {w}\n1: nop\n.set pop",
            w = const SDBBP,
            options(nostack)
        );
    }
    outcome(before, 0)
}

/// TLBWI of `entry` at `index`: `Completed(0)` if written, `Trapped` if the write raised an
/// exception (a machine check for a duplicate match; the handler steps over the TLBWI).
///
/// # Safety
/// As for `guest_rt::tlb::write_indexed`: the entry must not remap memory in use.
pub unsafe fn tlb_write(index: u32, entry: &guest_rt::tlb::TlbEntry) -> Probe {
    let before = exceptions();
    // SAFETY: the caller's contract.
    unsafe { guest_rt::tlb::write_indexed(index, entry) };
    outcome(before, 0)
}
