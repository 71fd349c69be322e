//! Typed access to the CP0 (system control coprocessor) registers this firmware uses.
//!
//! Every MFC0/MTC0 of the firmware lives in this file. Reads are safe: they have no side
//! effect on memory. Writes are `unsafe fn`s because a wrong value can break translation,
//! exception delivery or interrupt masking for the whole CPU; each lists what its caller
//! must guarantee. Field layouts follow the MIPS64 Privileged Resource Architecture (PRA,
//! MD00091), chapter 9; the section is cited at each register.

use bitflags::bitflags;
use core::arch::asm;

// The register allocator may hand $1 ($at) to an operand; `.set noat` in the templates
// tells the assembler that is intended (none of them expands into a macro that needs $at).

/// Reads a 32-bit CP0 register `$REG, SEL` (MFC0 sign-extends; the high half is dropped).
#[inline(always)]
fn read32<const REG: u32, const SEL: u32>() -> u32 {
    let value: u64;
    // SAFETY: MFC0 only copies a CP0 register into a GPR.
    unsafe {
        // nomem: touches no memory; nostack: no stack use.
        asm!(".set push\n.set noat\nmfc0 {0}, ${reg}, {sel}\n.set pop", out(reg) value, reg = const REG, sel = const SEL,
             options(nomem, nostack));
    }
    value as u32
}

/// Reads a 64-bit CP0 register `$REG, SEL` with DMFC0.
#[inline(always)]
fn read64<const REG: u32, const SEL: u32>() -> u64 {
    let value: u64;
    // SAFETY: DMFC0 only copies a CP0 register into a GPR.
    unsafe {
        // nomem: touches no memory; nostack: no stack use.
        asm!(".set push\n.set noat\ndmfc0 {0}, ${reg}, {sel}\n.set pop", out(reg) value, reg = const REG, sel = const SEL,
             options(nomem, nostack));
    }
    value
}

/// Writes a 32-bit CP0 register.
///
/// # Safety
/// The caller guarantees the value is valid for the register and that the change cannot
/// break code that runs afterwards (translation, exception base, interrupt state).
#[inline(always)]
unsafe fn write32<const REG: u32, const SEL: u32>(value: u32) {
    // SAFETY: the caller upholds this function's contract; MTC0 itself only writes CP0.
    unsafe {
        // No `nomem`: a CP0 write can change how later memory accesses behave, so the
        // compiler must not move memory accesses across it. nostack: no stack use.
        asm!(".set push\n.set noat\nmtc0 {0}, ${reg}, {sel}\n.set pop", in(reg) value as i32 as i64, reg = const REG,
             sel = const SEL, options(nostack));
    }
}

/// Writes a 64-bit CP0 register with DMTC0.
///
/// # Safety
/// As for [`write32`].
#[inline(always)]
unsafe fn write64<const REG: u32, const SEL: u32>(value: u64) {
    // SAFETY: the caller upholds this function's contract; DMTC0 itself only writes CP0.
    unsafe {
        // No `nomem` (ordering against memory matters, see write32); nostack: no stack use.
        asm!(".set push\n.set noat\ndmtc0 {0}, ${reg}, {sel}\n.set pop", in(reg) value, reg = const REG, sel = const SEL,
             options(nostack));
    }
}

/// Execution hazard barrier: makes earlier CP0 writes visible to later instructions.
#[inline(always)]
pub fn ehb() {
    // SAFETY: EHB only stalls until CP0 hazards clear.
    unsafe {
        // No `nomem`: it orders CP0 effects against later accesses. nostack: no stack use.
        asm!("ehb", options(nostack));
    }
}

bitflags! {
    /// Status (CP0 12,0), PRA 9.30.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Status: u32 {
        /// Global interrupt enable.
        const IE = 1 << 0;
        /// Exception level: set by hardware on an exception.
        const EXL = 1 << 1;
        /// Error level: set on reset, NMI and cache errors.
        const ERL = 1 << 2;
        /// KSU = supervisor.
        const KSU_SUPERVISOR = 1 << 3;
        /// KSU = user.
        const KSU_USER = 1 << 4;
        /// 64-bit user segment (xuseg) enabled.
        const UX = 1 << 5;
        /// 64-bit supervisor segments enabled.
        const SX = 1 << 6;
        /// 64-bit kernel segments (xkphys, xkseg) enabled.
        const KX = 1 << 7;
        /// Interrupt mask bits IM0..IM7 (IM7 is the timer on Malta).
        const IM0 = 1 << 8;
        /// Interrupt mask IM1.
        const IM1 = 1 << 9;
        /// Interrupt mask IM2 (Malta: i8259 behind the PIIX4).
        const IM2 = 1 << 10;
        /// Interrupt mask IM3.
        const IM3 = 1 << 11;
        /// Interrupt mask IM4.
        const IM4 = 1 << 12;
        /// Interrupt mask IM5.
        const IM5 = 1 << 13;
        /// Interrupt mask IM6.
        const IM6 = 1 << 14;
        /// Interrupt mask IM7.
        const IM7 = 1 << 15;
        /// Bootstrap exception vectors (in the boot ROM) selected.
        const BEV = 1 << 22;
        /// Coprocessor 0 usable in user mode.
        const CU0 = 1 << 28;
        /// Coprocessor 1 (FPU) usable.
        const CU1 = 1 << 29;
        // Keep bits we do not name when reading and writing back.
        const _ = !0;
    }
}

impl Status {
    /// Both KSU bits: the privilege mode field.
    pub const KSU_MASK: Status = Status::KSU_SUPERVISOR.union(Status::KSU_USER);
    /// Reads Status.
    pub fn read() -> Self {
        Self::from_bits_retain(read32::<12, 0>())
    }

    /// Writes Status and clears the hazard.
    ///
    /// # Safety
    /// The new value must keep the CPU in a mode the running code can execute in (kernel
    /// mode, EXL/ERL as the caller expects) and must only unmask interrupts whose handlers
    /// are ready.
    pub unsafe fn write(self) {
        // SAFETY: forwarded caller contract.
        unsafe { write32::<12, 0>(self.bits()) };
        ehb();
    }
}

bitflags! {
    /// Cause (CP0 13,0), PRA 9.31. ExcCode, CE and IP are fields, see the methods.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Cause: u32 {
        /// The exception hit an instruction in a branch delay slot (EPC = the branch).
        const BD = 1 << 31;
        /// Timer interrupt pending (R2).
        const TI = 1 << 30;
        /// Disable Count (R2).
        const DC = 1 << 27;
        /// Performance counter interrupt pending (R2).
        const PCI = 1 << 26;
        /// Use the special interrupt vector (EBase + 0x200).
        const IV = 1 << 23;
        /// Software interrupt 0 request.
        const IP0 = 1 << 8;
        /// Software interrupt 1 request.
        const IP1 = 1 << 9;
        const _ = !0;
    }
}

impl Cause {
    /// The raw 5-bit exception code (bits 6:2).
    pub fn exc_code_raw(self) -> u8 {
        ((self.bits() >> 2) & 0x1f) as u8
    }

    /// Pending interrupt lines IP7..IP0 (bits 15:8).
    pub fn pending(self) -> u8 {
        ((self.bits() >> 8) & 0xff) as u8
    }

    /// Coprocessor number of a Coprocessor Unusable exception (bits 29:28).
    pub fn coprocessor(self) -> u8 {
        ((self.bits() >> 28) & 0x3) as u8
    }
}

/// PRId (CP0 15,0), PRA 9.37: company, processor and revision.
pub fn prid() -> u32 {
    read32::<15, 0>()
}

/// EBase (CP0 15,1), PRA 9.38.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EBase(u32);

impl EBase {
    /// Writable ExceptionBase bits 29:12; bits 31:30 are fixed to 0b10 (KSEG0/KSEG1).
    pub const BASE_MASK: u32 = 0x3fff_f000;

    /// Reads EBase.
    pub fn read() -> Self {
        Self(read32::<15, 1>())
    }

    /// CPUNum (bits 9:0): which CPU of the system this is.
    pub fn cpu_num(self) -> usize {
        (self.0 & 0x3ff) as usize
    }
}

/// IntCtl (CP0 12,1), PRA 9.32 (R2): which IP line the timer interrupt uses.
pub fn timer_ip_line() -> u8 {
    let ipti = (read32::<12, 1>() >> 29) as u8;
    // IPTI names IP2..IP7; a pre-R2 or unset value means the classic IP7.
    if (2..=7).contains(&ipti) {
        ipti
    } else {
        7
    }
}

/// Count (CP0 9,0), PRA 9.20: free-running cycle counter.
pub fn count() -> u32 {
    read32::<9, 0>()
}

/// Writes Compare (CP0 11,0), PRA 9.28; this also acknowledges the timer interrupt.
pub fn set_compare(value: u32) {
    // SAFETY: Compare only decides when the timer interrupt fires; a stray timer interrupt
    // is handled (and counted) by the interrupt handler, so no value can break anything.
    unsafe { write32::<11, 0>(value) };
    ehb();
}

/// Reads ErrorEPC (CP0 30,0), where cache errors and resets leave the PC.
pub fn error_epc() -> u64 {
    read64::<30, 0>()
}

/// Config (CP0 16,0), PRA 9.41.
pub fn config0() -> u32 {
    read32::<16, 0>()
}

/// Config1 (CP0 16,1), PRA 9.42: TLB size and L1 cache geometry.
pub fn config1() -> u32 {
    read32::<16, 1>()
}

/// Config2 (CP0 16,2), PRA 9.43: L2 cache geometry; 0 when Config1.M is clear.
pub fn config2() -> u32 {
    if config1() & (1 << 31) != 0 {
        read32::<16, 2>()
    } else {
        0
    }
}

/// Config3 (CP0 16,3), PRA 9.44: ASE presence (VZ, RXI, ...); 0 when absent.
pub fn config3() -> u32 {
    if config2() & (1 << 31) != 0 {
        read32::<16, 3>()
    } else {
        0
    }
}

/// Config4 (CP0 16,4), PRA 9.45: extended TLB size; 0 when absent.
pub fn config4() -> u32 {
    if config3() & (1 << 31) != 0 {
        read32::<16, 4>()
    } else {
        0
    }
}

/// Kernel-segment cache coherency attribute (Config.K0, bits 2:0).
pub fn kseg0_cca() -> u8 {
    (config0() & 0x7) as u8
}

/// BadVAddr (CP0 8,0): the address of the last TLB or address-error exception.
pub fn bad_vaddr() -> u64 {
    read64::<8, 0>()
}

/// Cause (CP0 13,0) as a raw word.
pub fn cause_raw() -> u32 {
    read32::<13, 0>()
}

/// EntryHi (CP0 10,0): VPN2 and ASID of the entry being written or probed.
pub fn entry_hi() -> u64 {
    read64::<10, 0>()
}

/// EntryLo0 (CP0 2,0): the even half of the entry last read with TLBR.
pub fn entry_lo0() -> u64 {
    read64::<2, 0>()
}

/// EntryLo1 (CP0 3,0): the odd half of the entry last read with TLBR.
pub fn entry_lo1() -> u64 {
    read64::<3, 0>()
}

/// PageMask (CP0 5,0).
pub fn page_mask() -> u64 {
    read64::<5, 0>()
}

/// Index (CP0 0,0): probe result (bit 31 = no match) or the entry to write.
pub fn index() -> u32 {
    read32::<0, 0>()
}

/// Writes the TLB staging registers: EntryHi, EntryLo0, EntryLo1 and PageMask.
///
/// # Safety
/// Only the TLB instructions read these; the caller runs with interrupts off (or EXL set)
/// and must restore EntryHi's ASID before returning to code that depends on it.
pub unsafe fn set_tlb_staging(entry_hi: u64, entry_lo0: u64, entry_lo1: u64, page_mask: u64) {
    // SAFETY: forwarded caller contract.
    unsafe {
        write64::<10, 0>(entry_hi);
        write64::<2, 0>(entry_lo0);
        write64::<3, 0>(entry_lo1);
        write64::<5, 0>(page_mask);
    }
    ehb();
}

/// Writes EntryHi only (restoring the ASID after TLB work).
///
/// # Safety
/// As for [`set_tlb_staging`].
pub unsafe fn set_entry_hi(value: u64) {
    // SAFETY: forwarded caller contract.
    unsafe { write64::<10, 0>(value) };
    ehb();
}

/// Writes PageMask only.
///
/// # Safety
/// As for [`set_tlb_staging`].
pub unsafe fn set_page_mask(value: u64) {
    // SAFETY: forwarded caller contract.
    unsafe { write64::<5, 0>(value) };
    ehb();
}

/// Writes Index (the entry TLBWI writes).
///
/// # Safety
/// As for [`set_tlb_staging`]; the index must be below the TLB size.
pub unsafe fn set_index(value: u32) {
    // SAFETY: forwarded caller contract.
    unsafe { write32::<0, 0>(value) };
    ehb();
}

/// Writes Context (CP0 4,0); only PTEBase (bits 63:23) is writable, BadVPN2 is the
/// hardware's.
///
/// # Safety
/// The XTLB refill vector relies on PTEBase being 0 (percpu.rs); nothing else reads it.
pub unsafe fn set_context(value: u64) {
    // SAFETY: forwarded caller contract.
    unsafe { write64::<4, 0>(value) };
    ehb();
}

/// Writes Wired (CP0 6,0): entries below it are never replaced by TLBWR.
///
/// # Safety
/// As for [`set_tlb_staging`].
pub unsafe fn set_wired(value: u32) {
    // SAFETY: forwarded caller contract.
    unsafe { write32::<6, 0>(value) };
    ehb();
}

bitflags! {
    /// EntryLo0/EntryLo1 flag bits, PRA 9.7. PFN (bits 53:6) and C (5:3) are fields.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct EntryLo: u64 {
        /// Global: ignore the ASID when matching.
        const G = 1 << 0;
        /// Valid.
        const V = 1 << 1;
        /// Dirty: writes allowed.
        const D = 1 << 2;
        const _ = !0;
    }
}

impl EntryLo {
    /// An EntryLo value mapping the 4 KiB frame at physical address `pa` with cache
    /// attribute `cca` and the given flag bits.
    pub fn for_frame(pa: u64, cca: u8, flags: EntryLo) -> Self {
        let pfn = (pa >> 12) << 6;
        Self::from_bits_retain(pfn | (u64::from(cca & 7) << 3)) | flags
    }
}
