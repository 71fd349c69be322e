//! MIPS64 Release 2 instruction decoding: a 32-bit word becomes an [`Insn`].
//!
//! Only what the hypervisor has to understand is decoded: COP0 operations (they trap in guest
//! kernel mode because the guest runs in host user mode), HYPCALL, CACHE, RDHWR,
//! SYSCALL/BREAK, the plain loads and stores a device access can be made of, and every branch
//! or jump that can hold an instruction in its delay slot. Everything else, including words
//! whose must-be-zero fields are not zero, is [`Insn::Unknown`]; decoding never fails.
//!
//! Field layout (MIPS64 Architecture Volume II, "Instruction Formats"): opcode 31:26, rs 25:21,
//! rt 20:16, rd 15:11, sa 10:6, funct 5:0, immediate 15:0, jump index 25:0.

use crate::cp0::Cp0Reg;
use crate::regs::Gpr;

/// Opcode field values (Volume II, table "MIPS64 Encoding of the Opcode Field").
mod op {
    pub const SPECIAL: u32 = 0x00;
    pub const REGIMM: u32 = 0x01;
    pub const J: u32 = 0x02;
    pub const JAL: u32 = 0x03;
    pub const BEQ: u32 = 0x04;
    pub const BNE: u32 = 0x05;
    pub const BLEZ: u32 = 0x06;
    pub const BGTZ: u32 = 0x07;
    pub const COP0: u32 = 0x10;
    pub const SPECIAL2: u32 = 0x1c;
    pub const BEQL: u32 = 0x14;
    pub const BNEL: u32 = 0x15;
    pub const BLEZL: u32 = 0x16;
    pub const BGTZL: u32 = 0x17;
    pub const SPECIAL3: u32 = 0x1f;
    pub const LB: u32 = 0x20;
    pub const LH: u32 = 0x21;
    pub const LW: u32 = 0x23;
    pub const LBU: u32 = 0x24;
    pub const LHU: u32 = 0x25;
    pub const LWU: u32 = 0x27;
    pub const SB: u32 = 0x28;
    pub const SH: u32 = 0x29;
    pub const SW: u32 = 0x2b;
    pub const CACHE: u32 = 0x2f;
    pub const LD: u32 = 0x37;
    pub const SD: u32 = 0x3f;
}

/// SPECIAL function field values.
mod special {
    pub const JR: u32 = 0x08;
    pub const JALR: u32 = 0x09;
    pub const SYSCALL: u32 = 0x0c;
    pub const BREAK: u32 = 0x0d;
}

/// COP0 rs field values (Volume II, "COP0 Encoding of rs Field").
mod cop0_rs {
    pub const MF: u32 = 0x00;
    pub const DMF: u32 = 0x01;
    pub const MT: u32 = 0x04;
    pub const DMT: u32 = 0x05;
    pub const MFMC0: u32 = 0x0b;
}

/// COP0 function field values when CO (bit 25) is set.
mod cop0_co {
    pub const TLBR: u32 = 0x01;
    pub const TLBWI: u32 = 0x02;
    pub const TLBWR: u32 = 0x06;
    pub const TLBP: u32 = 0x08;
    pub const ERET: u32 = 0x18;
    pub const WAIT: u32 = 0x20;
    pub const HYPCALL: u32 = 0x28;
}

/// SPECIAL2 function value of SDBBP (EJTAG software debug breakpoint).
const SPECIAL2_SDBBP: u32 = 0x3f;

/// SPECIAL3 function value of RDHWR.
const SPECIAL3_RDHWR: u32 = 0x3b;

/// Access width of a load or store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    /// 1 byte.
    Byte,
    /// 2 bytes.
    Half,
    /// 4 bytes.
    Word,
    /// 8 bytes.
    Double,
}

impl Width {
    /// The access size in bytes; also the required alignment.
    pub const fn bytes(self) -> u64 {
        match self {
            Width::Byte => 1,
            Width::Half => 2,
            Width::Word => 4,
            Width::Double => 8,
        }
    }

    /// Mask of the bits an access of this width carries.
    pub const fn value_mask(self) -> u64 {
        match self {
            Width::Double => u64::MAX,
            w => (1u64 << (w.bytes() * 8)) - 1,
        }
    }
}

/// A plain load or store: `rt <-> width bytes at GPR[base] + offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemAccess {
    /// Base address register.
    pub base: Gpr,
    /// Data register (destination of a load, source of a store).
    pub rt: Gpr,
    /// Signed byte offset added to the base.
    pub offset: i16,
    /// Access width.
    pub width: Width,
    /// Whether a load sign-extends (LB/LH/LW/LD) or zero-extends (LBU/LHU/LWU). False for stores.
    pub signed: bool,
}

/// Condition tested by a conditional branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchCond {
    /// `rs == rt` (BEQ, BEQL).
    Eq,
    /// `rs != rt` (BNE, BNEL).
    Ne,
    /// `rs <= 0` signed (BLEZ, BLEZL).
    Lez,
    /// `rs > 0` signed (BGTZ, BGTZL).
    Gtz,
    /// `rs < 0` signed (BLTZ, BLTZL, BLTZAL, BLTZALL).
    Ltz,
    /// `rs >= 0` signed (BGEZ, BGEZL, BGEZAL, BGEZALL).
    Gez,
}

/// A PC-relative conditional branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CondBranch {
    /// The condition.
    pub cond: BranchCond,
    /// First operand.
    pub rs: Gpr,
    /// Second operand (`$zero` for the one-operand conditions).
    pub rt: Gpr,
    /// Signed offset in instructions, relative to the delay slot.
    pub offset: i16,
    /// Branch-likely: the delay slot is nullified when the branch is not taken.
    pub likely: bool,
    /// Writes the return address (branch + 8) to `$ra` (BLTZAL/BGEZAL and their likely forms).
    pub link: bool,
}

/// A decoded instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insn {
    /// `MFC0 rt, reg`: 32-bit read of a CP0 register, sign-extended.
    Mfc0 {
        /// Destination GPR.
        rt: Gpr,
        /// Source CP0 register.
        reg: Cp0Reg,
    },
    /// `DMFC0 rt, reg`: 64-bit read of a CP0 register.
    Dmfc0 {
        /// Destination GPR.
        rt: Gpr,
        /// Source CP0 register.
        reg: Cp0Reg,
    },
    /// `MTC0 rt, reg`: 32-bit write of a CP0 register.
    Mtc0 {
        /// Source GPR.
        rt: Gpr,
        /// Destination CP0 register.
        reg: Cp0Reg,
    },
    /// `DMTC0 rt, reg`: 64-bit write of a CP0 register.
    Dmtc0 {
        /// Source GPR.
        rt: Gpr,
        /// Destination CP0 register.
        reg: Cp0Reg,
    },
    /// `DI rt`: Status to rt, then clear Status.IE.
    Di {
        /// Receives the old Status.
        rt: Gpr,
    },
    /// `EI rt`: Status to rt, then set Status.IE.
    Ei {
        /// Receives the old Status.
        rt: Gpr,
    },
    /// `TLBR`: read the TLB entry at Index.
    Tlbr,
    /// `TLBWI`: write the TLB entry at Index.
    Tlbwi,
    /// `TLBWR`: write the TLB entry at Random.
    Tlbwr,
    /// `TLBP`: probe the TLB for EntryHi.
    Tlbp,
    /// `ERET`: return from exception or error.
    Eret,
    /// `WAIT`: idle until an interrupt.
    Wait,
    /// `HYPCALL code` (VZ ASE encoding, 0x42000028 with a 10-bit code in bits 20:11).
    Hypcall {
        /// The code field; the mipsvisor ABI passes the call number in a register instead.
        code: u16,
    },
    /// `CACHE op, offset(base)`.
    Cache {
        /// The 5-bit cache operation.
        op: u8,
        /// Base register.
        base: Gpr,
        /// Signed byte offset.
        offset: i16,
    },
    /// `RDHWR rt, rd`: read hardware register `rd`.
    Rdhwr {
        /// Destination GPR.
        rt: Gpr,
        /// Hardware register number.
        rd: u8,
    },
    /// `SYSCALL code`.
    Syscall {
        /// The 20-bit code field.
        code: u32,
    },
    /// `BREAK code`.
    Break {
        /// The 20-bit code field.
        code: u32,
    },
    /// `SDBBP code`: EJTAG software debug breakpoint. It does not trap to the general
    /// vector on the host: the host CPU enters debug mode, and the firmware's debug vector
    /// turns it into a guest exit.
    Sdbbp {
        /// The 20-bit code field.
        code: u32,
    },
    /// LB/LBU/LH/LHU/LW/LWU/LD.
    Load(MemAccess),
    /// SB/SH/SW/SD.
    Store(MemAccess),
    /// BEQ/BNE/BLEZ/BGTZ, the REGIMM branches, and their likely and linking forms.
    Branch(CondBranch),
    /// `J`/`JAL` to a 256 MiB-region target.
    Jump {
        /// The 26-bit instruction index.
        index: u32,
        /// JAL: write the return address to `$ra`.
        link: bool,
    },
    /// `JR rs` / `JALR rd, rs`.
    JumpReg {
        /// Register holding the target.
        rs: Gpr,
        /// JALR: the register that receives the return address.
        link: Option<Gpr>,
    },
    /// Anything else.
    Unknown(u32),
}

impl Insn {
    /// Whether this instruction has a delay slot.
    pub const fn has_delay_slot(&self) -> bool {
        matches!(
            self,
            Insn::Branch(_) | Insn::Jump { .. } | Insn::JumpReg { .. }
        )
    }
}

const fn rs_field(word: u32) -> u32 {
    (word >> 21) & 0x1f
}

const fn rt_field(word: u32) -> u32 {
    (word >> 16) & 0x1f
}

const fn rd_field(word: u32) -> u32 {
    (word >> 11) & 0x1f
}

const fn imm16(word: u32) -> i16 {
    word as u16 as i16
}

/// Decodes one instruction word. Never panics; unrecognised words give [`Insn::Unknown`].
pub fn decode(word: u32) -> Insn {
    let opcode = word >> 26;
    let decoded = match opcode {
        op::SPECIAL => decode_special(word),
        op::REGIMM => decode_regimm(word),
        op::J | op::JAL => Some(Insn::Jump {
            index: word & 0x03ff_ffff,
            link: opcode == op::JAL,
        }),
        op::BEQ | op::BNE | op::BEQL | op::BNEL => {
            let cond = if opcode == op::BEQ || opcode == op::BEQL {
                BranchCond::Eq
            } else {
                BranchCond::Ne
            };
            Some(cond_branch(
                word,
                cond,
                rt_field(word),
                opcode >= op::BEQL,
                false,
            ))
        }
        op::BLEZ | op::BGTZ | op::BLEZL | op::BGTZL => {
            let cond = if opcode == op::BLEZ || opcode == op::BLEZL {
                BranchCond::Lez
            } else {
                BranchCond::Gtz
            };
            // rt must be zero (Volume II, BLEZ/BGTZ); other values are not these branches.
            (rt_field(word) == 0).then(|| cond_branch(word, cond, 0, opcode >= op::BLEZL, false))
        }
        op::COP0 => decode_cop0(word),
        op::SPECIAL2 => (word & 0x3f == SPECIAL2_SDBBP).then_some(Insn::Sdbbp {
            code: (word >> 6) & 0xf_ffff,
        }),
        op::SPECIAL3 => decode_special3(word),
        op::CACHE => Some(Insn::Cache {
            op: rt_field(word) as u8,
            base: Gpr::from_field(rs_field(word)),
            offset: imm16(word),
        }),
        _ => decode_mem(word, opcode),
    };
    decoded.unwrap_or(Insn::Unknown(word))
}

fn cond_branch(word: u32, cond: BranchCond, rt: u32, likely: bool, link: bool) -> Insn {
    Insn::Branch(CondBranch {
        cond,
        rs: Gpr::from_field(rs_field(word)),
        rt: Gpr::from_field(rt),
        offset: imm16(word),
        likely,
        link,
    })
}

fn decode_special(word: u32) -> Option<Insn> {
    let rs = Gpr::from_field(rs_field(word));
    match word & 0x3f {
        // JR: rt and rd must be zero; bits 10:6 are the hint (JR.HB sets bit 10).
        special::JR if word & 0x001f_f800 == 0 => Some(Insn::JumpReg { rs, link: None }),
        // JALR: rt must be zero; bits 10:6 are the hint.
        special::JALR if rt_field(word) == 0 => Some(Insn::JumpReg {
            rs,
            link: Some(Gpr::from_field(rd_field(word))),
        }),
        special::SYSCALL => Some(Insn::Syscall {
            code: (word >> 6) & 0xf_ffff,
        }),
        special::BREAK => Some(Insn::Break {
            code: (word >> 6) & 0xf_ffff,
        }),
        _ => None,
    }
}

fn decode_regimm(word: u32) -> Option<Insn> {
    // REGIMM rt field: bit 4 = link, bit 1 = likely, bit 0 = GEZ (vs LTZ); bits 3:2 zero.
    let selector = rt_field(word);
    if selector & 0b01100 != 0 {
        return None;
    }
    let cond = if selector & 1 != 0 {
        BranchCond::Gez
    } else {
        BranchCond::Ltz
    };
    Some(cond_branch(
        word,
        cond,
        0,
        selector & 0b00010 != 0,
        selector & 0b10000 != 0,
    ))
}

fn decode_cop0(word: u32) -> Option<Insn> {
    if word & (1 << 25) != 0 {
        return decode_cop0_co(word);
    }
    let rt = Gpr::from_field(rt_field(word));
    let reg = Cp0Reg::new(rd_field(word) as u8, (word & 7) as u8);
    // Bits 10:3 must be zero for the move instructions.
    let moves_ok = word & 0x7f8 == 0;
    match rs_field(word) {
        cop0_rs::MF if moves_ok => Some(Insn::Mfc0 { rt, reg }),
        cop0_rs::DMF if moves_ok => Some(Insn::Dmfc0 { rt, reg }),
        cop0_rs::MT if moves_ok => Some(Insn::Mtc0 { rt, reg }),
        cop0_rs::DMT if moves_ok => Some(Insn::Dmtc0 { rt, reg }),
        // MFMC0: rd = 12, bits 10:6 and 4:0 zero, bit 5 selects EI.
        cop0_rs::MFMC0 if word & 0xffdf == 0x6000 => Some(if word & 0x20 != 0 {
            Insn::Ei { rt }
        } else {
            Insn::Di { rt }
        }),
        _ => None,
    }
}

fn decode_cop0_co(word: u32) -> Option<Insn> {
    let funct = word & 0x3f;
    // The TLB operations and ERET have no operand bits at all.
    let exact = word & 0x01ff_ffc0 == 0;
    match funct {
        cop0_co::TLBR if exact => Some(Insn::Tlbr),
        cop0_co::TLBWI if exact => Some(Insn::Tlbwi),
        cop0_co::TLBWR if exact => Some(Insn::Tlbwr),
        cop0_co::TLBP if exact => Some(Insn::Tlbp),
        cop0_co::ERET if exact => Some(Insn::Eret),
        // WAIT: bits 24:6 are an implementation-dependent code and are ignored.
        cop0_co::WAIT => Some(Insn::Wait),
        // HYPCALL: bits 24:21 and 10:6 zero, code in 20:11.
        cop0_co::HYPCALL if word & 0x01e0_07c0 == 0 => Some(Insn::Hypcall {
            code: ((word >> 11) & 0x3ff) as u16,
        }),
        _ => None,
    }
}

fn decode_special3(word: u32) -> Option<Insn> {
    // RDHWR: rs and bits 10:6 zero in Release 2.
    (word & 0x3f == SPECIAL3_RDHWR && word & 0x03e0_07c0 == 0).then(|| Insn::Rdhwr {
        rt: Gpr::from_field(rt_field(word)),
        rd: rd_field(word) as u8,
    })
}

fn decode_mem(word: u32, opcode: u32) -> Option<Insn> {
    let (width, signed, store) = match opcode {
        op::LB => (Width::Byte, true, false),
        op::LBU => (Width::Byte, false, false),
        op::LH => (Width::Half, true, false),
        op::LHU => (Width::Half, false, false),
        op::LW => (Width::Word, true, false),
        op::LWU => (Width::Word, false, false),
        op::LD => (Width::Double, true, false),
        op::SB => (Width::Byte, false, true),
        op::SH => (Width::Half, false, true),
        op::SW => (Width::Word, false, true),
        op::SD => (Width::Double, false, true),
        _ => return None,
    };
    let access = MemAccess {
        base: Gpr::from_field(rs_field(word)),
        rt: Gpr::from_field(rt_field(word)),
        offset: imm16(word),
        width,
        signed,
    };
    Some(if store {
        Insn::Store(access)
    } else {
        Insn::Load(access)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected words were worked out from the field layout and cross-checked against GNU as
    // (`-march=mips64r2 -mvirt`) output.

    fn g(n: u32) -> Gpr {
        Gpr::from_field(n)
    }

    #[test]
    fn cop0_moves() {
        let cases = [
            (
                0x4008_6000,
                Insn::Mfc0 {
                    rt: g(8),
                    reg: Cp0Reg::STATUS,
                },
            ),
            (
                0x4089_7000,
                Insn::Mtc0 {
                    rt: g(9),
                    reg: Cp0Reg::EPC,
                },
            ),
            (
                0x402a_5000,
                Insn::Dmfc0 {
                    rt: g(10),
                    reg: Cp0Reg::ENTRY_HI,
                },
            ),
            (
                0x40ab_1000,
                Insn::Dmtc0 {
                    rt: g(11),
                    reg: Cp0Reg::ENTRY_LO0,
                },
            ),
            (
                0x4002_7801,
                Insn::Mfc0 {
                    rt: g(2),
                    reg: Cp0Reg::EBASE,
                },
            ),
            (
                0x4083_8005,
                Insn::Mtc0 {
                    rt: g(3),
                    reg: Cp0Reg::CONFIG5,
                },
            ),
        ];
        for (word, insn) in cases {
            assert_eq!(decode(word), insn, "{word:#x}");
        }
    }

    #[test]
    fn cop0_moves_with_nonzero_reserved_bits_are_unknown() {
        assert_eq!(decode(0x4008_6008), Insn::Unknown(0x4008_6008));
        assert_eq!(decode(0x4089_7400), Insn::Unknown(0x4089_7400));
    }

    #[test]
    fn cop0_operations() {
        assert_eq!(decode(0x4200_0001), Insn::Tlbr);
        assert_eq!(decode(0x4200_0002), Insn::Tlbwi);
        assert_eq!(decode(0x4200_0006), Insn::Tlbwr);
        assert_eq!(decode(0x4200_0008), Insn::Tlbp);
        assert_eq!(decode(0x4200_0018), Insn::Eret);
        assert_eq!(decode(0x4200_0020), Insn::Wait);
        assert_eq!(decode(0x4212_3460), Insn::Wait);
        assert_eq!(decode(0x4168_6000), Insn::Di { rt: g(8) });
        assert_eq!(decode(0x4160_6020), Insn::Ei { rt: g(0) });
        // ERET with a stray bit, and DERET (EJTAG only), are not decoded.
        assert_eq!(decode(0x4200_0058), Insn::Unknown(0x4200_0058));
        assert_eq!(decode(0x4200_001f), Insn::Unknown(0x4200_001f));
    }

    #[test]
    fn hypcall_and_its_code() {
        assert_eq!(decode(0x4200_0028), Insn::Hypcall { code: 0 });
        assert_eq!(decode(0x4200_2828), Insn::Hypcall { code: 5 });
        assert_eq!(decode(0x421f_f828), Insn::Hypcall { code: 0x3ff });
        // Bits 24:21 set: not a HYPCALL.
        assert_eq!(decode(0x4220_0028), Insn::Unknown(0x4220_0028));
    }

    #[test]
    fn cache_rdhwr_syscall_break() {
        assert_eq!(
            decode(0xbc99_0010),
            Insn::Cache {
                op: 0x19,
                base: g(4),
                offset: 16
            }
        );
        assert_eq!(
            decode(0xbfa0_fffc),
            Insn::Cache {
                op: 0,
                base: g(29),
                offset: -4
            }
        );
        assert_eq!(decode(0x7c03_e83b), Insn::Rdhwr { rt: g(3), rd: 29 });
        assert_eq!(decode(0x7c02_103b), Insn::Rdhwr { rt: g(2), rd: 2 });
        assert_eq!(decode(0x0000_000c), Insn::Syscall { code: 0 });
        assert_eq!(decode(0x0004_8d0c), Insn::Syscall { code: 0x1234 });
        assert_eq!(decode(0x0000_000d), Insn::Break { code: 0 });
        assert_eq!(decode(0x0007_000d), Insn::Break { code: 7 << 10 });
        assert_eq!(decode(0x7000_003f), Insn::Sdbbp { code: 0 });
        assert_eq!(decode(0x7000_007f), Insn::Sdbbp { code: 1 });
        assert_eq!(decode(0x73ff_ffff), Insn::Sdbbp { code: 0xf_ffff });
        // Other SPECIAL2 functions (MUL, CLZ, ...) are not SDBBP.
        assert_eq!(decode(0x7000_0002), Insn::Unknown(0x7000_0002));
        assert_eq!(decode(0x7000_003e), Insn::Unknown(0x7000_003e));
    }

    #[test]
    fn loads_and_stores() {
        let load = |base, rt, offset, width, signed| {
            Insn::Load(MemAccess {
                base: g(base),
                rt: g(rt),
                offset,
                width,
                signed,
            })
        };
        let store = |base, rt, offset, width| {
            Insn::Store(MemAccess {
                base: g(base),
                rt: g(rt),
                offset,
                width,
                signed: false,
            })
        };
        let cases = [
            (0x8062_ffff, load(3, 2, -1, Width::Byte, true)),
            (0x90a4_0004, load(5, 4, 4, Width::Byte, false)),
            (0x84e6_0008, load(7, 6, 8, Width::Half, true)),
            (0x9528_0010, load(9, 8, 16, Width::Half, false)),
            (0x8d6a_0020, load(11, 10, 32, Width::Word, true)),
            (0x9dac_ffe0, load(13, 12, -32, Width::Word, false)),
            (0xddee_7ff8, load(15, 14, 0x7ff8, Width::Double, true)),
            (0xa230_0001, store(17, 16, 1, Width::Byte)),
            (0xa672_0002, store(19, 18, 2, Width::Half)),
            (0xaeb4_0004, store(21, 20, 4, Width::Word)),
            (0xfef6_fff8, store(23, 22, -8, Width::Double)),
        ];
        for (word, insn) in cases {
            assert_eq!(decode(word), insn, "{word:#x}");
        }
    }

    #[test]
    fn unaligned_and_atomic_accesses_are_not_decoded() {
        // LWL, LL, SC, LDL: not plain accesses, so not MMIO candidates.
        for word in [0x8862_0000u32, 0xc062_0000, 0xe062_0000, 0x6862_0000] {
            assert_eq!(decode(word), Insn::Unknown(word));
        }
    }

    #[test]
    fn conditional_branches() {
        let br = |cond, rs, rt, offset, likely, link| {
            Insn::Branch(CondBranch {
                cond,
                rs: g(rs),
                rt: g(rt),
                offset,
                likely,
                link,
            })
        };
        use BranchCond::*;
        let cases = [
            (0x1085_ffff, br(Eq, 4, 5, -1, false, false)),
            (0x14c7_fffe, br(Ne, 6, 7, -2, false, false)),
            (0x1900_fffd, br(Lez, 8, 0, -3, false, false)),
            (0x1d20_fffc, br(Gtz, 9, 0, -4, false, false)),
            (0x5085_fffb, br(Eq, 4, 5, -5, true, false)),
            (0x54c7_fffa, br(Ne, 6, 7, -6, true, false)),
            (0x5900_fff9, br(Lez, 8, 0, -7, true, false)),
            (0x5d20_fff8, br(Gtz, 9, 0, -8, true, false)),
            (0x0540_fff7, br(Ltz, 10, 0, -9, false, false)),
            (0x0561_fff6, br(Gez, 11, 0, -10, false, false)),
            (0x0582_fff5, br(Ltz, 12, 0, -11, true, false)),
            (0x05a3_fff4, br(Gez, 13, 0, -12, true, false)),
            (0x05d0_fff3, br(Ltz, 14, 0, -13, false, true)),
            (0x05f1_fff2, br(Gez, 15, 0, -14, false, true)),
            (0x0612_fff1, br(Ltz, 16, 0, -15, true, true)),
            (0x0633_fff0, br(Gez, 17, 0, -16, true, true)),
        ];
        for (word, insn) in cases {
            assert_eq!(decode(word), insn, "{word:#x}");
            assert!(insn.has_delay_slot());
        }
        // BLEZ with rt != 0 and REGIMM traps (TGEI, rt = 8) are not branches.
        assert_eq!(decode(0x1905_0001), Insn::Unknown(0x1905_0001));
        assert_eq!(decode(0x0548_0001), Insn::Unknown(0x0548_0001));
    }

    #[test]
    fn jumps() {
        assert_eq!(
            decode(0x0848_d15a),
            Insn::Jump {
                index: 0x0048_d15a,
                link: false
            }
        );
        assert_eq!(
            decode(0x0fff_ffff),
            Insn::Jump {
                index: 0x03ff_ffff,
                link: true
            }
        );
        assert_eq!(
            decode(0x03e0_0008),
            Insn::JumpReg {
                rs: Gpr::RA,
                link: None
            }
        );
        assert_eq!(
            decode(0x03e0_0408),
            Insn::JumpReg {
                rs: Gpr::RA,
                link: None
            }
        );
        assert_eq!(
            decode(0x0320_f809),
            Insn::JumpReg {
                rs: g(25),
                link: Some(Gpr::RA)
            }
        );
        assert_eq!(
            decode(0x00a0_2009),
            Insn::JumpReg {
                rs: g(5),
                link: Some(g(4))
            }
        );
        // JR with rd set is not JR.
        assert_eq!(decode(0x03e0_0808), Insn::Unknown(0x03e0_0808));
        assert!(!decode(0x4200_0018).has_delay_slot());
    }

    #[test]
    fn width_masks() {
        assert_eq!(Width::Byte.value_mask(), 0xff);
        assert_eq!(Width::Half.value_mask(), 0xffff);
        assert_eq!(Width::Word.value_mask(), 0xffff_ffff);
        assert_eq!(Width::Double.value_mask(), u64::MAX);
    }
}
