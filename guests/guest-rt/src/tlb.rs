//! The guest's own TLB: entry values and the TLBWI/TLBWR/TLBP/TLBR instructions.
//!
//! Under trap-and-emulate these act on the hypervisor's software guest TLB (64 entries,
//! EntryLo PFNs are guest physical frame numbers). Each function writes the CP0 staging
//! registers and runs the instruction with interrupts left as they are; callers that can
//! be interrupted by code that also touches the TLB must mask interrupts themselves.

use crate::cp0;
use core::arch::asm;

/// EntryLo.G: global (ignores the ASID).
pub const LO_GLOBAL: u64 = 1 << 0;
/// EntryLo.V: valid.
pub const LO_VALID: u64 = 1 << 1;
/// EntryLo.D: dirty, i.e. writable.
pub const LO_DIRTY: u64 = 1 << 2;
/// EntryLo.C = 3: cacheable non-coherent.
pub const LO_CACHED: u64 = 3 << 3;

/// PageMask of 4 KiB pages.
pub const PAGE_MASK_4K: u64 = 0;
/// PageMask of 16 MiB pages.
pub const PAGE_MASK_16M: u64 = 0x01ff_e000;

/// Index.P: set by TLBP when no entry matched.
const INDEX_PROBE_FAILED: u32 = 1 << 31;

/// An EntryLo value mapping guest physical address `gpa` (page aligned) with `flags`.
pub const fn entry_lo(gpa: u64, flags: u64) -> u64 {
    ((gpa >> 12) << 6) | flags
}

/// The EntryHi value of `vaddr` (its page pair) and `asid`.
pub const fn entry_hi(vaddr: u64, asid: u8) -> u64 {
    (vaddr & !0x1fff) | asid as u64
}

/// One TLB entry as the staging registers hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlbEntry {
    /// EntryHi: VPN2 and ASID.
    pub hi: u64,
    /// EntryLo0: the even page.
    pub lo0: u64,
    /// EntryLo1: the odd page.
    pub lo1: u64,
    /// PageMask.
    pub page_mask: u64,
}

impl TlbEntry {
    fn stage(&self) {
        // SAFETY: the staging registers only matter to the next TLB instruction, which the
        // caller chose to run.
        unsafe {
            cp0::write64::<10, 0>(self.hi);
            cp0::write64::<2, 0>(self.lo0);
            cp0::write64::<3, 0>(self.lo1);
            cp0::write64::<5, 0>(self.page_mask);
        }
    }
}

/// Runs one TLB instruction given by its mnemonic.
macro_rules! tlb_op {
    ($op:literal) => {
        // SAFETY: the caller of the enclosing function takes responsibility for what the
        // new translation maps (see each function's contract).
        unsafe {
            // No `nomem`: translations change under later memory accesses. nostack.
            asm!(concat!($op, "\nehb"), options(nostack));
        }
    };
}

/// Writes `entry` at `index` (TLBWI).
///
/// # Safety
/// The entry must not change the translation of memory that live Rust references use
/// (this guest's code and data live in the unmapped window, so only mapped data matters).
pub unsafe fn write_indexed(index: u32, entry: &TlbEntry) {
    entry.stage();
    // SAFETY: Index only selects the entry that TLBWI writes.
    unsafe { cp0::write32::<0, 0>(index) };
    tlb_op!("tlbwi");
}

/// Writes `entry` at a random index between Wired and the top (TLBWR).
///
/// # Safety
/// As for [`write_indexed`]; in addition any non-wired entry may be replaced.
pub unsafe fn write_random(entry: &TlbEntry) {
    entry.stage();
    tlb_op!("tlbwr");
}

/// Looks up EntryHi `hi` (VPN2 and ASID) with TLBP: the matching index, if any.
pub fn probe(hi: u64) -> Option<u32> {
    // SAFETY: EntryHi's ASID also selects the current address space; callers probe with
    // the ASID they are running with (or restore it) before touching mapped memory.
    unsafe { cp0::write64::<10, 0>(hi) };
    // SAFETY: TLBP only writes Index.
    unsafe {
        // nomem: TLBP changes no translation and touches no memory. nostack.
        asm!("tlbp\nehb", options(nomem, nostack));
    }
    let index = cp0::read32::<0, 0>();
    (index & INDEX_PROBE_FAILED == 0).then_some(index)
}

/// Reads entry `index` with TLBR. EntryHi (and so the current ASID) is overwritten with
/// the entry's; the caller restores it if it matters.
pub fn read(index: u32) -> TlbEntry {
    // SAFETY: Index selects the entry TLBR reads; nothing else changes.
    unsafe { cp0::write32::<0, 0>(index) };
    // SAFETY: TLBR only loads the staging registers.
    unsafe {
        // nomem: no memory access. nostack.
        asm!("tlbr\nehb", options(nomem, nostack));
    }
    TlbEntry {
        hi: cp0::read64::<10, 0>(),
        lo0: cp0::read64::<2, 0>(),
        lo1: cp0::read64::<3, 0>(),
        page_mask: cp0::read64::<5, 0>(),
    }
}

/// Number of entries, from Config1.MMUSize-1.
pub fn size() -> u32 {
    ((cp0::read32::<16, 1>() >> 25) & 0x3f) + 1
}

/// Sets the ASID field of EntryHi (the current address space).
pub fn set_asid(asid: u8) {
    let hi = (cp0::entry_hi() & !0xff) | asid as u64;
    // SAFETY: the guest's own code and data live in the unmapped window, which the ASID
    // does not affect; mapped data is reached only through the new ASID from now on.
    unsafe { cp0::write64::<10, 0>(hi) };
}

/// Invalidates every entry: distinct VPN2s in the unmapped window (never looked up there
/// since the window bypasses the TLB) with V = 0.
///
/// # Safety
/// Mapped memory must not be in use by live references.
pub unsafe fn invalidate_all() {
    let old_hi = cp0::entry_hi();
    for index in 0..size() {
        let unused = TlbEntry {
            hi: entry_hi(0x4000_0000 + (index as u64) * 0x2000, 0),
            lo0: 0,
            lo1: 0,
            page_mask: PAGE_MASK_4K,
        };
        // SAFETY: the caller guarantees nothing mapped is in use.
        unsafe { write_indexed(index, &unused) };
    }
    // SAFETY: restores the ASID the caller ran with.
    unsafe { cp0::write64::<10, 0>(old_hi) };
}
