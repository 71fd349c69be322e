//! Where execution resumes after an instruction in a branch delay slot was emulated.
//!
//! When a trapping instruction sits in a delay slot, the hardware sets Cause.BD and points EPC
//! at the branch, not at the trapping instruction. After emulating the delay-slot instruction
//! the hypervisor must finish the branch itself: evaluate its condition on the registers as
//! they were before the delay slot ran, write the link register, and continue at the target
//! or after the delay slot. This module does the evaluation as a pure function; the caller
//! applies the link write *before* emulating the delay-slot instruction (a delay-slot write to
//! the same register must win, as on hardware).
//!
//! Semantics from MIPS64 Volume II (BEQ ... JALR): a branch target is the delay slot address
//! plus the sign-extended offset shifted left by two; J/JAL keep the upper bits of the delay
//! slot address and replace bits 27:0; links are branch + 8. A not-taken branch-likely nullifies
//! its delay slot, which the hardware then never executes, so a trap in that slot cannot
//! happen; the function still answers (`nullified_slot`) so the caller can refuse.

use crate::decode::{decode, BranchCond, CondBranch, Insn};
use crate::regs::{Gpr, Gprs};

/// The result of completing a branch whose delay slot was emulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BranchResolution {
    /// Where the guest continues after the delay slot.
    pub next_pc: u64,
    /// The return address written by a linking branch or jump: (register, value).
    pub link: Option<(Gpr, u64)>,
    /// The branch is a likely branch that is not taken: its delay slot must not execute.
    pub nullified_slot: bool,
}

/// Why a branch could not be resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchError {
    /// The word at EPC is not a branch or jump although Cause.BD was set.
    NotABranch(u32),
}

impl core::fmt::Display for BranchError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BranchError::NotABranch(word) => {
                write!(f, "word {word:#010x} at EPC is not a branch (Cause.BD set)")
            }
        }
    }
}

/// Resolves the branch `word` found at `epc`, with the guest registers `gprs` as they were
/// when the delay-slot instruction trapped.
pub fn resolve_branch(word: u32, gprs: &Gprs, epc: u64) -> Result<BranchResolution, BranchError> {
    resolve_insn(&decode(word), gprs, epc).ok_or(BranchError::NotABranch(word))
}

/// As [`resolve_branch`] for an already decoded instruction; `None` if it is not a branch.
pub fn resolve_insn(insn: &Insn, gprs: &Gprs, epc: u64) -> Option<BranchResolution> {
    let delay_slot = epc.wrapping_add(4);
    let after_slot = epc.wrapping_add(8);
    let resolution = match *insn {
        Insn::Branch(branch) => {
            let taken = condition_holds(&branch, gprs);
            let target = delay_slot.wrapping_add((i64::from(branch.offset) << 2) as u64);
            BranchResolution {
                next_pc: if taken { target } else { after_slot },
                // The REGIMM linking branches write $ra whether or not they are taken.
                link: branch.link.then_some((Gpr::RA, after_slot)),
                nullified_slot: branch.likely && !taken,
            }
        }
        Insn::Jump { index, link } => BranchResolution {
            next_pc: (delay_slot & !0x0fff_ffff) | u64::from(index) << 2,
            link: link.then_some((Gpr::RA, after_slot)),
            nullified_slot: false,
        },
        Insn::JumpReg { rs, link } => BranchResolution {
            // The target is read before the link is written (JALR with rd == rs is
            // unpredictable on hardware; reading first is the natural order).
            next_pc: gprs.get(rs),
            link: link.map(|rd| (rd, after_slot)),
            nullified_slot: false,
        },
        _ => return None,
    };
    Some(resolution)
}

fn condition_holds(branch: &CondBranch, gprs: &Gprs) -> bool {
    let rs = gprs.get(branch.rs) as i64;
    let rt = gprs.get(branch.rt) as i64;
    match branch.cond {
        BranchCond::Eq => rs == rt,
        BranchCond::Ne => rs != rt,
        BranchCond::Lez => rs <= 0,
        BranchCond::Gtz => rs > 0,
        BranchCond::Ltz => rs < 0,
        BranchCond::Gez => rs >= 0,
    }
}

/// Applies a resolution's link write to `gprs` (writes to `$zero` are dropped).
pub fn apply_link(resolution: &BranchResolution, gprs: &mut Gprs) {
    if let Some((reg, value)) = resolution.link {
        gprs.set(reg, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EPC: u64 = 0x4000_1000;

    fn regs(pairs: &[(u32, u64)]) -> Gprs {
        let mut gprs = Gprs::new();
        for &(reg, value) in pairs {
            gprs.set(Gpr::from_field(reg), value);
        }
        gprs
    }

    fn resolve(word: u32, gprs: &Gprs) -> BranchResolution {
        resolve_branch(word, gprs, EPC).unwrap()
    }

    // beq a0, a1, +16 instructions: 0x1085_0010.
    const BEQ_A0_A1_16: u32 = 0x1085_0010;

    #[test]
    fn beq_taken_and_not_taken() {
        let taken = resolve(BEQ_A0_A1_16, &regs(&[(4, 7), (5, 7)]));
        assert_eq!(taken.next_pc, EPC + 4 + 64);
        assert_eq!(taken.link, None);
        let not_taken = resolve(BEQ_A0_A1_16, &regs(&[(4, 7), (5, 8)]));
        assert_eq!(not_taken.next_pc, EPC + 8);
        assert!(!not_taken.nullified_slot);
    }

    #[test]
    fn backward_branch() {
        // bne a2, a3, -2 instructions: 0x14c7_fffe.
        let r = resolve(0x14c7_fffe, &regs(&[(6, 1)]));
        assert_eq!(r.next_pc, EPC + 4 - 8);
    }

    #[test]
    fn signed_comparisons_use_all_64_bits() {
        // blez a4, +2: 0x1900_0002; bgtz a5, +2: 0x1d20_0002.
        assert_eq!(resolve(0x1900_0002, &regs(&[(8, 0)])).next_pc, EPC + 12);
        assert_eq!(
            resolve(0x1900_0002, &regs(&[(8, u64::MAX)])).next_pc,
            EPC + 12
        );
        assert_eq!(resolve(0x1900_0002, &regs(&[(8, 1)])).next_pc, EPC + 8);
        assert_eq!(resolve(0x1d20_0002, &regs(&[(9, 1)])).next_pc, EPC + 12);
        assert_eq!(resolve(0x1d20_0002, &regs(&[(9, 0)])).next_pc, EPC + 8);
        // 0x8000_0000 zero-extended is positive in 64 bits.
        assert_eq!(
            resolve(0x1d20_0002, &regs(&[(9, 0x8000_0000)])).next_pc,
            EPC + 12
        );
        // bltz a6, +2: 0x0540_0002; bgez a7, +2: 0x0561_0002.
        assert_eq!(
            resolve(0x0540_0002, &regs(&[(10, 1 << 63)])).next_pc,
            EPC + 12
        );
        assert_eq!(resolve(0x0540_0002, &regs(&[(10, 0)])).next_pc, EPC + 8);
        assert_eq!(resolve(0x0561_0002, &regs(&[(11, 0)])).next_pc, EPC + 12);
        assert_eq!(
            resolve(0x0561_0002, &regs(&[(11, 1 << 63)])).next_pc,
            EPC + 8
        );
    }

    #[test]
    fn blez_with_zero_register_is_always_taken() {
        // blez zero, +3 acts as an unconditional branch.
        assert_eq!(resolve(0x1800_0003, &Gprs::new()).next_pc, EPC + 16);
    }

    #[test]
    fn likely_branches_nullify_only_when_not_taken() {
        // beql a0, a1, +16: 0x5085_0010.
        let taken = resolve(0x5085_0010, &regs(&[(4, 3), (5, 3)]));
        assert_eq!((taken.next_pc, taken.nullified_slot), (EPC + 68, false));
        let not_taken = resolve(0x5085_0010, &regs(&[(4, 3)]));
        assert_eq!(
            (not_taken.next_pc, not_taken.nullified_slot),
            (EPC + 8, true)
        );
    }

    #[test]
    fn regimm_links_whether_taken_or_not() {
        // bltzal t2, +4: 0x05d0_0004; bgezall s1, +4: 0x0633_0004.
        let taken = resolve(0x05d0_0004, &regs(&[(14, u64::MAX)]));
        assert_eq!(taken.next_pc, EPC + 20);
        assert_eq!(taken.link, Some((Gpr::RA, EPC + 8)));
        let not_taken = resolve(0x05d0_0004, &regs(&[(14, 5)]));
        assert_eq!(not_taken.next_pc, EPC + 8);
        assert_eq!(not_taken.link, Some((Gpr::RA, EPC + 8)));
        let likely = resolve(0x0633_0004, &regs(&[(17, 1 << 63)]));
        assert!(likely.nullified_slot);
        assert_eq!(likely.link, Some((Gpr::RA, EPC + 8)));
    }

    #[test]
    fn j_and_jal_use_the_delay_slot_region() {
        // j 0x1234568: index 0x48d15a.
        let r = resolve(0x0848_d15a, &Gprs::new());
        assert_eq!(r.next_pc, 0x4123_4568);
        assert_eq!(r.link, None);
        // jal with index 0x3ff_ffff from the last word of a 256 MiB region: the delay slot
        // is already in the next region, whose bits 63:28 the target keeps.
        let epc = 0x4fff_fffc;
        let r = resolve_branch(0x0fff_ffff, &Gprs::new(), epc).unwrap();
        assert_eq!(r.next_pc, 0x5fff_fffc);
        assert_eq!(r.link, Some((Gpr::RA, epc + 8)));
    }

    #[test]
    fn jr_and_jalr() {
        let gprs = regs(&[(31, 0x4000_2000), (25, 0x6000_0040), (5, 0x1234)]);
        assert_eq!(resolve(0x03e0_0008, &gprs).next_pc, 0x4000_2000);
        let jalr = resolve(0x0320_f809, &gprs);
        assert_eq!(jalr.next_pc, 0x6000_0040);
        assert_eq!(jalr.link, Some((Gpr::RA, EPC + 8)));
        // jalr a0, a1
        let jalr = resolve(0x00a0_2009, &gprs);
        assert_eq!(jalr.next_pc, 0x1234);
        assert_eq!(jalr.link, Some((Gpr::A0, EPC + 8)));
    }

    #[test]
    fn link_application_and_zero_register() {
        let mut gprs = Gprs::new();
        // jalr zero, t9 links to $zero, which stays 0.
        let r = resolve(0x0320_0009, &regs(&[(25, 8)]));
        apply_link(&r, &mut gprs);
        assert_eq!(gprs.get(Gpr::ZERO), 0);
        let r = resolve(0x0fff_ffff, &gprs);
        apply_link(&r, &mut gprs);
        assert_eq!(gprs.get(Gpr::RA), EPC + 8);
    }

    #[test]
    fn non_branches_are_errors() {
        assert_eq!(
            resolve_branch(0x4200_0018, &Gprs::new(), EPC),
            Err(BranchError::NotABranch(0x4200_0018))
        );
    }

    #[test]
    fn wraps_at_the_top_of_the_address_space() {
        let r = resolve_branch(0x1000_ffff, &Gprs::new(), 0).unwrap();
        assert_eq!(r.next_pc, 0);
        let r = resolve_branch(0x1000_0001, &Gprs::new(), u64::MAX - 3).unwrap();
        assert_eq!(r.next_pc, 4);
    }

    proptest! {
        /// Conditional branches continue either at the target or right after the delay slot.
        #[test]
        fn conditional_branch_lands_on_target_or_fallthrough(
            word: u32, a: u64, b: u64, epc in any::<u64>().prop_map(|v| v & !3),
        ) {
            let gprs = Gprs::from_array([a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b,
                                         b, a, b, a, b, a, b, a, b, a, b, a, b, a, b, a]);
            if let Insn::Branch(branch) = decode(word) {
                let r = resolve_branch(word, &gprs, epc).unwrap();
                let target = epc.wrapping_add(4).wrapping_add((i64::from(branch.offset) * 4) as u64);
                prop_assert!(r.next_pc == target || r.next_pc == epc.wrapping_add(8));
                prop_assert_eq!(r.nullified_slot, branch.likely && r.next_pc != target
                    && target != epc.wrapping_add(8));
            }
        }
    }
}
