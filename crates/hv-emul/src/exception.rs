//! Delivering exceptions to the guest's own handlers, as its CPU would.
//!
//! MIPS64 Volume III, "General Exception Processing" and "TLB Refill Exception": with
//! Status.EXL clear the CPU saves the restart address in EPC (the branch when the faulting
//! instruction sits in a delay slot, with Cause.BD set), then sets EXL, writes Cause.ExcCode
//! and jumps to the vector. With EXL already set, EPC and BD are left alone and even a TLB
//! refill goes to the general vector. Vector base: BEV ? 0xBFC0_0200 : EBase; offsets 0x000
//! (TLB refill), 0x080 (XTLB refill for a 64-bit segment), 0x200 (interrupt with Cause.IV)
//! and 0x180 (everything else). Under the mipsvisor layout ([`crate::abi`]) the KSEG0/KSEG1
//! addresses of these vectors are relocated into the guest's window.
//!
//! TLB exceptions also load BadVAddr, EntryHi.VPN2 (the ASID stays), Context.BadVPN2 and
//! XContext.R/BadVPN2; address errors load BadVAddr only.

use crate::abi::kseg0_address;
use crate::cp0::{Cause, Cp0, Cp0Reg, ExcCode, Status};
use crate::guest_tlb::Access;

/// Physical address of the bootstrap (BEV = 1) exception vector base.
const BEV_BASE_PHYS: u64 = 0x1fc0_0200;
/// Offset of the TLB refill vector.
pub const VECTOR_TLB_REFILL: u64 = 0x000;
/// Offset of the 64-bit TLB refill vector.
pub const VECTOR_XTLB_REFILL: u64 = 0x080;
/// Offset of the general exception vector.
pub const VECTOR_GENERAL: u64 = 0x180;
/// Offset of the special interrupt vector (Cause.IV = 1).
pub const VECTOR_INTERRUPT: u64 = 0x200;

/// An exception the hypervisor reflects into the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestException {
    /// An unmasked interrupt.
    Interrupt,
    /// No guest TLB entry matched.
    TlbRefill {
        /// The faulting address.
        bad_vaddr: u64,
        /// Load/fetch or store.
        access: Access,
    },
    /// A matching entry had V = 0.
    TlbInvalid {
        /// The faulting address.
        bad_vaddr: u64,
        /// Load/fetch or store.
        access: Access,
    },
    /// A store hit an entry with D = 0.
    TlbModified {
        /// The faulting address.
        bad_vaddr: u64,
    },
    /// Misaligned address or a segment the guest mode may not use.
    AddressError {
        /// The faulting address.
        bad_vaddr: u64,
        /// Load/fetch or store.
        access: Access,
    },
    /// SYSCALL.
    Syscall,
    /// BREAK.
    Break,
    /// An instruction the guest CPU does not implement.
    ReservedInstruction,
    /// A trap instruction (TEQ, TGEI, ...) whose condition held.
    Trap,
    /// Integer overflow (ADD, ADDI, SUB, DADD, ...).
    Overflow,
    /// A coprocessor instruction with the coprocessor disabled.
    CoprocessorUnusable {
        /// The coprocessor number (Cause.CE).
        unit: u8,
    },
    /// Machine check: a TLBWI/TLBWR would have created a duplicate TLB match (the write
    /// was not done). Delivery sets Status.TS.
    MachineCheck {
        /// The entry the write was aimed at (host-side report only).
        index: usize,
        /// The present entry it would have duplicated (host-side report only).
        conflict: usize,
    },
}

impl GuestException {
    /// The Cause.ExcCode this exception reports.
    pub fn exc_code(&self) -> ExcCode {
        match *self {
            GuestException::Interrupt => ExcCode::Int,
            GuestException::TlbRefill { access, .. }
            | GuestException::TlbInvalid { access, .. } => match access {
                Access::Load => ExcCode::TlbL,
                Access::Store => ExcCode::TlbS,
            },
            GuestException::TlbModified { .. } => ExcCode::Mod,
            GuestException::AddressError { access, .. } => match access {
                Access::Load => ExcCode::AdEL,
                Access::Store => ExcCode::AdES,
            },
            GuestException::Syscall => ExcCode::Sys,
            GuestException::Break => ExcCode::Bp,
            GuestException::ReservedInstruction => ExcCode::Ri,
            GuestException::Trap => ExcCode::Tr,
            GuestException::Overflow => ExcCode::Ov,
            GuestException::CoprocessorUnusable { .. } => ExcCode::CpU,
            GuestException::MachineCheck { .. } => ExcCode::MCheck,
        }
    }

    /// The address the exception reports in BadVAddr, if any.
    pub fn bad_vaddr(&self) -> Option<u64> {
        match *self {
            GuestException::TlbRefill { bad_vaddr, .. }
            | GuestException::TlbInvalid { bad_vaddr, .. }
            | GuestException::TlbModified { bad_vaddr }
            | GuestException::AddressError { bad_vaddr, .. } => Some(bad_vaddr),
            _ => None,
        }
    }

    /// Whether this is one of the TLB exceptions (which also load EntryHi and Context).
    pub fn is_tlb(&self) -> bool {
        matches!(
            self,
            GuestException::TlbRefill { .. }
                | GuestException::TlbInvalid { .. }
                | GuestException::TlbModified { .. }
        )
    }
}

/// Where the exception happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultSite {
    /// Address of the instruction that caused the exception (or, for an interrupt, of the
    /// next instruction to run).
    pub pc: u64,
    /// The instruction sits in a branch delay slot (the branch is at `pc - 4`).
    pub in_delay_slot: bool,
}

impl FaultSite {
    /// A site described the way the hardware reports it: `epc` is the branch when `bd`.
    pub fn from_epc(epc: u64, bd: bool) -> Self {
        FaultSite {
            pc: if bd { epc.wrapping_add(4) } else { epc },
            in_delay_slot: bd,
        }
    }

    /// The value EPC receives: the branch for a delay-slot instruction, else the instruction.
    pub fn restart_pc(&self) -> u64 {
        if self.in_delay_slot {
            self.pc.wrapping_sub(4)
        } else {
            self.pc
        }
    }
}

/// The guest's exception vector base under the mipsvisor layout.
pub fn vector_base(cp0: &Cp0) -> u64 {
    if cp0.status().contains(Status::BEV) {
        kseg0_address(BEV_BASE_PHYS)
    } else {
        kseg0_address(cp0.get(Cp0Reg::EBASE) & !0xfff)
    }
}

/// Whether `va` lies in a 64-bit segment that is enabled by Status.UX/SX/KX, so a refill for
/// it uses the XTLB vector. Addresses that are sign-extended 32-bit values are compatibility
/// segment addresses and never qualify.
fn uses_xtlb_vector(va: u64, status: Status) -> bool {
    if va as u32 as i32 as i64 as u64 == va {
        return false;
    }
    match va >> 62 {
        0 => status.contains(Status::UX),
        1 => status.contains(Status::SX),
        3 => status.contains(Status::KX),
        // xkphys is unmapped: no refill can come from it.
        _ => false,
    }
}

/// Delivers `exception` to the guest: updates its CP0 and returns the guest PC to continue
/// at (the handler's vector).
pub fn deliver(exception: GuestException, cp0: &mut Cp0, site: FaultSite) -> u64 {
    let status = cp0.status();
    let exl_was_set = status.contains(Status::EXL);
    let mut cause = cp0.cause();
    if !exl_was_set {
        cp0.set_raw(Cp0Reg::EPC, site.restart_pc());
        cause.set(Cause::BD, site.in_delay_slot);
    }
    let ce = match exception {
        GuestException::CoprocessorUnusable { unit } => unit & 3,
        _ => 0,
    };
    cp0.set_cause(cause.with_exception(exception.exc_code(), ce));
    let ts = if matches!(exception, GuestException::MachineCheck { .. }) {
        Status::TS
    } else {
        Status::empty()
    };
    cp0.set_status(status | Status::EXL | ts);

    if let Some(va) = exception.bad_vaddr() {
        cp0.set_raw(Cp0Reg::BAD_VADDR, va);
        if exception.is_tlb() {
            load_tlb_context(cp0, va);
        }
    }

    let offset = match exception {
        GuestException::TlbRefill { bad_vaddr, .. } if !exl_was_set => {
            if uses_xtlb_vector(bad_vaddr, status) {
                VECTOR_XTLB_REFILL
            } else {
                VECTOR_TLB_REFILL
            }
        }
        GuestException::Interrupt if cause.contains(Cause::IV) => VECTOR_INTERRUPT,
        _ => VECTOR_GENERAL,
    };
    vector_base(cp0) + offset
}

/// Delivers a pending, unmasked interrupt (see [`Cp0::interrupt_deliverable`]) to a guest
/// about to run the instruction at `pc`. Returns the handler address, or `None` when no
/// interrupt can be taken now.
pub fn deliver_pending_interrupt(cp0: &mut Cp0, pc: u64) -> Option<u64> {
    cp0.interrupt_deliverable().then(|| {
        let site = FaultSite {
            pc,
            in_delay_slot: false,
        };
        deliver(GuestException::Interrupt, cp0, site)
    })
}

/// Loads EntryHi.VPN2/R, Context.BadVPN2 and XContext.R/BadVPN2 from a faulting address.
fn load_tlb_context(cp0: &mut Cp0, va: u64) {
    const VPN2_R: u64 = 0xc000_00ff_ffff_e000;
    let entry_hi = (cp0.get(Cp0Reg::ENTRY_HI) & !VPN2_R) | (va & VPN2_R);
    cp0.set_raw(Cp0Reg::ENTRY_HI, entry_hi);

    // Context: BadVPN2 (22:4) = VA 31:13.
    const CONTEXT_BADVPN2: u64 = 0x7f_fff0;
    let context = (cp0.get(Cp0Reg::CONTEXT) & !CONTEXT_BADVPN2) | ((va >> 9) & CONTEXT_BADVPN2);
    cp0.set_raw(Cp0Reg::CONTEXT, context);

    // XContext: R (32:31) = VA 63:62, BadVPN2 (30:4) = VA 39:13.
    const XCONTEXT_R: u64 = 0x1_8000_0000;
    const XCONTEXT_BADVPN2: u64 = 0x7fff_fff0;
    let xcontext = (cp0.get(Cp0Reg::XCONTEXT) & !(XCONTEXT_R | XCONTEXT_BADVPN2))
        | ((va >> 62) << 31)
        | ((va >> 9) & XCONTEXT_BADVPN2);
    cp0.set_raw(Cp0Reg::XCONTEXT, xcontext);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cp0::{Cp0Config, GuestMode};

    /// A guest in user mode with BEV clear and EBase at guest KSEG0 0x8000_1000.
    fn running_user() -> Cp0 {
        let mut cp0 = Cp0::new(Cp0Config::default()).unwrap();
        let _ = cp0.mtc0(Cp0Reg::EBASE, 0x8000_1000);
        cp0.set_status(Status::UM | Status::IE);
        let _ = cp0.dmtc0(Cp0Reg::ENTRY_HI, 0x42);
        cp0
    }

    #[test]
    fn syscall_saves_epc_and_enters_kernel() {
        let mut cp0 = running_user();
        let pc = deliver(
            GuestException::Syscall,
            &mut cp0,
            FaultSite::from_epc(0x1000_0040, false),
        );
        assert_eq!(pc, 0x4000_1180);
        assert_eq!(cp0.get(Cp0Reg::EPC), 0x1000_0040);
        assert_eq!(cp0.cause().exc_code(), Some(ExcCode::Sys));
        assert!(!cp0.cause().contains(Cause::BD));
        assert!(cp0.status().contains(Status::EXL));
        assert_eq!(cp0.mode(), GuestMode::Kernel);
    }

    #[test]
    fn delay_slot_sets_bd_and_points_epc_at_branch() {
        let mut cp0 = running_user();
        let site = FaultSite {
            pc: 0x1000_0044,
            in_delay_slot: true,
        };
        let _ = deliver(GuestException::Break, &mut cp0, site);
        assert_eq!(cp0.get(Cp0Reg::EPC), 0x1000_0040);
        assert!(cp0.cause().contains(Cause::BD));
        assert_eq!(cp0.cause().exc_code(), Some(ExcCode::Bp));
        assert_eq!(FaultSite::from_epc(0x1000_0040, true), site);
    }

    #[test]
    fn nested_exception_keeps_epc_and_bd() {
        let mut cp0 = running_user();
        let _ = deliver(
            GuestException::Syscall,
            &mut cp0,
            FaultSite {
                pc: 0x1000_0044,
                in_delay_slot: true,
            },
        );
        let pc = deliver(
            GuestException::TlbRefill {
                bad_vaddr: 0x6000_0000,
                access: Access::Load,
            },
            &mut cp0,
            FaultSite::from_epc(0x4000_1190, false),
        );
        // EXL was set: refill goes to the general vector; EPC and BD are the first ones.
        assert_eq!(pc, 0x4000_1180);
        assert_eq!(cp0.get(Cp0Reg::EPC), 0x1000_0040);
        assert!(cp0.cause().contains(Cause::BD));
        assert_eq!(cp0.cause().exc_code(), Some(ExcCode::TlbL));
    }

    #[test]
    fn tlb_refill_loads_translation_context() {
        let mut cp0 = running_user();
        let _ = cp0.dmtc0(Cp0Reg::CONTEXT, 0xffff_ffff_c000_0000);
        let va = 0x1234_5678;
        let pc = deliver(
            GuestException::TlbRefill {
                bad_vaddr: va,
                access: Access::Store,
            },
            &mut cp0,
            FaultSite::from_epc(0x1000, false),
        );
        assert_eq!(pc, 0x4000_1000);
        assert_eq!(cp0.cause().exc_code(), Some(ExcCode::TlbS));
        assert_eq!(cp0.get(Cp0Reg::BAD_VADDR), va);
        // VPN2 from the address, ASID kept.
        assert_eq!(cp0.get(Cp0Reg::ENTRY_HI), 0x1234_4042);
        // Context: PTEBase kept, BadVPN2 = VA 31:13 at bits 22:4.
        assert_eq!(
            cp0.get(Cp0Reg::CONTEXT),
            0xffff_ffff_c000_0000 | (0x1234_5678 >> 13) << 4
        );
        assert_eq!(cp0.get(Cp0Reg::XCONTEXT), (0x1234_5678 >> 13) << 4);
    }

    #[test]
    fn tlb_invalid_and_modified_use_general_vector() {
        let mut cp0 = running_user();
        let pc = deliver(
            GuestException::TlbInvalid {
                bad_vaddr: 0x6000_3000,
                access: Access::Load,
            },
            &mut cp0,
            FaultSite::from_epc(0x6000_0000, false),
        );
        assert_eq!(pc, 0x4000_1180);
        assert_eq!(cp0.cause().exc_code(), Some(ExcCode::TlbL));
        let mut cp0 = running_user();
        let _ = deliver(
            GuestException::TlbModified {
                bad_vaddr: 0x6000_5004,
            },
            &mut cp0,
            FaultSite::from_epc(0, false),
        );
        assert_eq!(cp0.cause().exc_code(), Some(ExcCode::Mod));
        assert_eq!(cp0.get(Cp0Reg::ENTRY_HI), 0x6000_4042);
    }

    #[test]
    fn address_error_sets_only_bad_vaddr() {
        let mut cp0 = running_user();
        let pc = deliver(
            GuestException::AddressError {
                bad_vaddr: 0x4000_0001,
                access: Access::Store,
            },
            &mut cp0,
            FaultSite::from_epc(0x100, false),
        );
        assert_eq!(pc, 0x4000_1180);
        assert_eq!(cp0.cause().exc_code(), Some(ExcCode::AdES));
        assert_eq!(cp0.get(Cp0Reg::BAD_VADDR), 0x4000_0001);
        assert_eq!(cp0.get(Cp0Reg::ENTRY_HI), 0x42);
        assert_eq!(cp0.get(Cp0Reg::CONTEXT), 0);
    }

    #[test]
    fn bev_vectors_in_the_kseg1_window() {
        let mut cp0 = running_user();
        cp0.set_status(cp0.status() | Status::BEV);
        let pc = deliver(
            GuestException::TlbRefill {
                bad_vaddr: 0,
                access: Access::Load,
            },
            &mut cp0,
            FaultSite::from_epc(0, false),
        );
        assert_eq!(pc, 0x5fc0_0200);
        let mut cp0 = running_user();
        cp0.set_status(cp0.status() | Status::BEV);
        assert_eq!(
            deliver(
                GuestException::ReservedInstruction,
                &mut cp0,
                FaultSite::from_epc(0, false)
            ),
            0x5fc0_0380
        );
        assert_eq!(cp0.cause().exc_code(), Some(ExcCode::Ri));
    }

    #[test]
    fn coprocessor_unusable_reports_unit() {
        let mut cp0 = running_user();
        let _ = deliver(
            GuestException::CoprocessorUnusable { unit: 1 },
            &mut cp0,
            FaultSite::from_epc(0, false),
        );
        assert_eq!(cp0.cause().exc_code(), Some(ExcCode::CpU));
        assert_eq!(cp0.cause().ce(), 1);
        let mut cp0 = running_user();
        let _ = deliver(
            GuestException::CoprocessorUnusable { unit: 0 },
            &mut cp0,
            FaultSite::from_epc(0, false),
        );
        assert_eq!(cp0.cause().ce(), 0);
    }

    #[test]
    fn interrupt_vectors() {
        let mut cp0 = running_user();
        cp0.raise_timer();
        assert_eq!(
            deliver(
                GuestException::Interrupt,
                &mut cp0,
                FaultSite::from_epc(0x2000, false)
            ),
            0x4000_1180
        );
        assert_eq!(cp0.cause().exc_code(), Some(ExcCode::Int));
        assert!(cp0.cause().contains(Cause::TI));
        let mut cp0 = running_user();
        let _ = cp0.mtc0(Cp0Reg::CAUSE, Cause::IV.bits().into());
        assert_eq!(
            deliver(
                GuestException::Interrupt,
                &mut cp0,
                FaultSite::from_epc(0x2000, false)
            ),
            0x4000_1200
        );
    }

    #[test]
    fn pending_interrupt_delivery() {
        let mut cp0 = running_user();
        assert_eq!(deliver_pending_interrupt(&mut cp0, 0x3000), None);
        cp0.raise_timer();
        // IM7 is clear: still nothing.
        assert_eq!(deliver_pending_interrupt(&mut cp0, 0x3000), None);
        cp0.set_status(cp0.status() | Status::from_bits_retain(0x8000));
        assert_eq!(
            deliver_pending_interrupt(&mut cp0, 0x3000),
            Some(0x4000_1180)
        );
        assert_eq!(cp0.get(Cp0Reg::EPC), 0x3000);
        assert_eq!(cp0.cause().exc_code(), Some(ExcCode::Int));
        // EXL is now set: no nested interrupt.
        assert_eq!(deliver_pending_interrupt(&mut cp0, 0x4000_1180), None);
    }

    #[test]
    fn xtlb_vector_for_enabled_64_bit_segments() {
        let status = Status::UX;
        assert!(uses_xtlb_vector(0x1_0000_0000, status));
        assert!(!uses_xtlb_vector(0x1_0000_0000, Status::empty()));
        assert!(!uses_xtlb_vector(0x1000, status));
        assert!(!uses_xtlb_vector(0xffff_ffff_c000_0000, Status::KX));
        assert!(uses_xtlb_vector(0xc000_0000_0000_0000, Status::KX));
        let mut cp0 = running_user();
        cp0.set_status(cp0.status() | Status::UX);
        let pc = deliver(
            GuestException::TlbRefill {
                bad_vaddr: 0x1_0000_0000,
                access: Access::Load,
            },
            &mut cp0,
            FaultSite::from_epc(0, false),
        );
        assert_eq!(pc, 0x4000_1080);
        assert_eq!(cp0.get(Cp0Reg::XCONTEXT) >> 31 & 3, 0);
        assert_eq!(
            cp0.get(Cp0Reg::XCONTEXT) & 0x7fff_fff0,
            (0x1_0000_0000 >> 13) << 4
        );
    }
}
