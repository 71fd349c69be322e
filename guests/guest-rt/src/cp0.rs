//! CP0 accessors for a guest kernel.
//!
//! Under trap-and-emulate every one of these instructions traps to the hypervisor, which
//! emulates it against the guest's software CP0 (docs/guest-abi.md, section 6): that is
//! what the test guests exercise. Reads are safe (no memory effect). Writes are `unsafe`
//! because a wrong value can move the exception vectors, unmask interrupts or change
//! translation under running code.

use core::arch::asm;

/// Index (0, 0).
pub const INDEX: (u32, u32) = (0, 0);
/// Random (1, 0).
pub const RANDOM: (u32, u32) = (1, 0);
/// EntryLo0 (2, 0).
pub const ENTRY_LO0: (u32, u32) = (2, 0);
/// EntryLo1 (3, 0).
pub const ENTRY_LO1: (u32, u32) = (3, 0);
/// PageMask (5, 0).
pub const PAGE_MASK: (u32, u32) = (5, 0);
/// Wired (6, 0).
pub const WIRED: (u32, u32) = (6, 0);
/// BadVAddr (8, 0).
pub const BAD_VADDR: (u32, u32) = (8, 0);
/// Count (9, 0).
pub const COUNT: (u32, u32) = (9, 0);
/// EntryHi (10, 0).
pub const ENTRY_HI: (u32, u32) = (10, 0);
/// Compare (11, 0).
pub const COMPARE: (u32, u32) = (11, 0);
/// Status (12, 0).
pub const STATUS: (u32, u32) = (12, 0);
/// Cause (13, 0).
pub const CAUSE: (u32, u32) = (13, 0);
/// EPC (14, 0).
pub const EPC: (u32, u32) = (14, 0);
/// PRId (15, 0).
pub const PRID: (u32, u32) = (15, 0);
/// EBase (15, 1).
pub const EBASE: (u32, u32) = (15, 1);
/// Config (16, 0).
pub const CONFIG: (u32, u32) = (16, 0);
/// Config1 (16, 1).
pub const CONFIG1: (u32, u32) = (16, 1);

/// Status.IE: interrupts enabled.
pub const STATUS_IE: u32 = 1 << 0;
/// Status.EXL: exception level.
pub const STATUS_EXL: u32 = 1 << 1;
/// Status.ERL: error level (set at reset).
pub const STATUS_ERL: u32 = 1 << 2;
/// Status.KSU field (bits 4:3).
pub const STATUS_KSU_MASK: u32 = 3 << 3;
/// Status.KSU = user.
pub const STATUS_KSU_USER: u32 = 2 << 3;
/// Status.IM field (bits 15:8).
pub const STATUS_IM_MASK: u32 = 0xff << 8;
/// Status.IM7: the timer interrupt line.
pub const STATUS_IM7: u32 = 1 << 15;
/// Status.BEV: bootstrap exception vectors.
pub const STATUS_BEV: u32 = 1 << 22;
/// Status.CU0.
pub const STATUS_CU0: u32 = 1 << 28;

/// Cause.TI: timer interrupt pending.
pub const CAUSE_TI: u32 = 1 << 30;
/// Cause.BD: the exception hit a branch delay slot.
pub const CAUSE_BD: u32 = 1 << 31;
/// Cause.IV: interrupts use the special vector (EBase + 0x200).
pub const CAUSE_IV: u32 = 1 << 23;
/// Cause.IP7 (timer).
pub const CAUSE_IP7: u32 = 1 << 15;

/// Cause.ExcCode (bits 6:2).
pub const fn exc_code(cause: u32) -> u32 {
    (cause >> 2) & 0x1f
}

/// Cause.CE (bits 29:28): the coprocessor of a Coprocessor Unusable exception.
pub const fn coprocessor_error(cause: u32) -> u32 {
    (cause >> 28) & 3
}

/// Reads a 32-bit CP0 register `(reg, sel)` with MFC0 (sign-extended by hardware).
#[inline(always)]
pub fn read32<const REG: u32, const SEL: u32>() -> u32 {
    let value: u64;
    // SAFETY: MFC0 copies a CP0 register into a GPR and nothing else.
    unsafe {
        // nomem: no memory access; nostack: no stack use. `.set noat` lets the register
        // allocator pick $at without an assembler warning (no macro here needs it).
        asm!(".set push\n.set noat\nmfc0 {0}, ${r}, {s}\n.set pop",
             out(reg) value, r = const REG, s = const SEL, options(nomem, nostack));
    }
    value as u32
}

/// Reads a 64-bit CP0 register `(reg, sel)` with DMFC0.
#[inline(always)]
pub fn read64<const REG: u32, const SEL: u32>() -> u64 {
    let value: u64;
    // SAFETY: DMFC0 copies a CP0 register into a GPR and nothing else.
    unsafe {
        // Options as in `read32`.
        asm!(".set push\n.set noat\ndmfc0 {0}, ${r}, {s}\n.set pop",
             out(reg) value, r = const REG, s = const SEL, options(nomem, nostack));
    }
    value
}

/// Writes a 32-bit CP0 register with MTC0, followed by EHB.
///
/// # Safety
/// The caller guarantees that the new value cannot break the code that runs next
/// (exception vectors, interrupt masking, translation of live addresses).
#[inline(always)]
pub unsafe fn write32<const REG: u32, const SEL: u32>(value: u32) {
    // SAFETY: the caller upholds the contract; MTC0 itself writes only CP0.
    unsafe {
        // No `nomem`: a CP0 write can change how later memory accesses translate or when
        // interrupts arrive, so the compiler must not move memory accesses across it.
        asm!(".set push\n.set noat\nmtc0 {0}, ${r}, {s}\nehb\n.set pop",
             in(reg) value as i32 as i64, r = const REG, s = const SEL, options(nostack));
    }
}

/// Writes a 64-bit CP0 register with DMTC0, followed by EHB.
///
/// # Safety
/// As for [`write32`].
#[inline(always)]
pub unsafe fn write64<const REG: u32, const SEL: u32>(value: u64) {
    // SAFETY: the caller upholds the contract; DMTC0 itself writes only CP0.
    unsafe {
        // No `nomem`, for the reason given in `write32`.
        asm!(".set push\n.set noat\ndmtc0 {0}, ${r}, {s}\nehb\n.set pop",
             in(reg) value, r = const REG, s = const SEL, options(nostack));
    }
}

/// Status.
#[inline(always)]
pub fn status() -> u32 {
    read32::<12, 0>()
}

/// Writes Status.
///
/// # Safety
/// As for [`write32`]: in particular clearing BEV needs valid vectors at EBase, and setting
/// IE needs a handler for every unmasked interrupt.
#[inline(always)]
pub unsafe fn set_status(value: u32) {
    // SAFETY: forwarded contract.
    unsafe { write32::<12, 0>(value) }
}

/// Cause.
#[inline(always)]
pub fn cause() -> u32 {
    read32::<13, 0>()
}

/// EPC.
#[inline(always)]
pub fn epc() -> u64 {
    read64::<14, 0>()
}

/// BadVAddr.
#[inline(always)]
pub fn bad_vaddr() -> u64 {
    read64::<8, 0>()
}

/// Count.
#[inline(always)]
pub fn count() -> u32 {
    read32::<9, 0>()
}

/// Compare.
#[inline(always)]
pub fn compare() -> u32 {
    read32::<11, 0>()
}

/// Writes Compare, which also acknowledges a pending timer interrupt.
pub fn set_compare(value: u32) {
    // SAFETY: Compare only decides when the next timer interrupt is raised; it cannot
    // affect memory or control flow unless interrupts are unmasked, which is separate.
    unsafe { write32::<11, 0>(value) }
}

/// EntryHi.
#[inline(always)]
pub fn entry_hi() -> u64 {
    read64::<10, 0>()
}

/// EBase.
#[inline(always)]
pub fn ebase() -> u32 {
    read32::<15, 1>()
}

/// Disables interrupts (clears Status.IE) and returns the previous Status.
pub fn interrupts_off() -> u32 {
    let old = status();
    // SAFETY: clearing IE only masks interrupts.
    unsafe { set_status(old & !STATUS_IE) };
    old
}

/// WAIT: the vCPU idles until an interrupt enabled in Status.IM is pending (whether or not
/// Status.IE is set, docs/guest-abi.md section 4).
pub fn wait() {
    // SAFETY: WAIT only stalls the CPU.
    unsafe {
        // No `nomem`: interrupt handlers change memory while we wait. nostack.
        asm!("wait", options(nostack));
    }
}

/// Arms the timer `ticks` Count ticks from now and makes sure the deadline is still ahead
/// after the write: a vCPU can be preempted between reading Count and writing Compare,
/// and a Compare that Count has already passed would fire only after Count wraps (2^32
/// ticks later). Returns the Compare value written.
pub fn arm_timer(ticks: u32) -> u32 {
    loop {
        let target = count().wrapping_add(ticks);
        set_compare(target);
        // Still ahead (as a signed distance) once written: done. Otherwise retry, which
        // also acknowledges any interrupt the late write raised.
        if (target.wrapping_sub(count()) as i32) > 0 {
            return target;
        }
    }
}
