//! Trap-and-emulate: what a trapping guest instruction does to the guest's state.
//!
//! The firmware calls [`emulate`] with the instruction that trapped (a COP0 operation or
//! HYPCALL raising Coprocessor Unusable, RDHWR raising Reserved Instruction, or a load/store
//! that hit no memslot) and the guest's state. The outcome says what happened and what the
//! host still has to do; guest-visible effects (registers, CP0, guest TLB, PC, exceptions
//! reflected to the guest) are already applied.
//!
//! Delay slots: when Cause.BD was set the trapping instruction is in the delay slot of the
//! branch at `cpu.pc` ([`TrapInfo::branch`]). The branch is resolved on the registers as they
//! were before the delay slot ran, its link is written first, then the instruction is
//! emulated, then the PC goes to the branch outcome. If the instruction raises a guest
//! exception instead, the link write is undone and the exception gets EPC = branch, BD = 1,
//! so the guest restarts the whole branch, as on hardware.

use hv_core::addr::{Gpa, Gva};

use crate::abi::translate;
use crate::branch::resolve_branch;
use crate::branch::BranchError;
use crate::cp0::{
    Cp0, Cp0Config, Cp0Effect, Cp0Error, Cp0Reg, GuestMode, Status, CACHE_LINE_BYTES,
};
use crate::decode::{decode, Insn, MemAccess, Width};
use crate::exception::{deliver, FaultSite, GuestException};
use crate::guest_tlb::{Access, GuestTlb, TlbOpError, TlbWrite};
use crate::hypercall::{self, Hypercall, HypercallError};
use crate::regs::{sign_extend32, Gpr, Gprs};

/// Count resolution reported by RDHWR CCRes: Count ticks once per two cycles.
pub const GUEST_CC_RES: u64 = 2;

/// The full architectural state of one guest vCPU that emulation touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestCpu {
    /// General-purpose registers.
    pub gprs: Gprs,
    /// The guest PC (on entry to [`emulate`]: the EPC of the trap).
    pub pc: u64,
    /// Coprocessor 0.
    pub cp0: Cp0,
    /// The software TLB.
    pub tlb: GuestTlb,
}

impl GuestCpu {
    /// A vCPU in reset state at `pc`.
    pub fn new(config: Cp0Config, pc: u64) -> Result<Self, Cp0Error> {
        let cp0 = Cp0::new(config)?;
        let tlb = GuestTlb::new(&cp0);
        Ok(GuestCpu {
            gprs: Gprs::new(),
            pc,
            cp0,
            tlb,
        })
    }
}

/// Facts about the trap that the guest state does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TrapInfo {
    /// `Some(branch word)` when Cause.BD was set: the trapping instruction is at
    /// `cpu.pc + 4`, in the delay slot of this branch at `cpu.pc`.
    pub branch: Option<u32>,
    /// The guest's Count right now, derived by the host from its timer.
    pub guest_count: u32,
}

/// Load or store half of an MMIO request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmioKind {
    /// A load into `rt`, sign- or zero-extended from the access width.
    Load {
        /// Destination register.
        rt: Gpr,
        /// Sign-extend (LB/LH/LW/LD) rather than zero-extend.
        signed: bool,
    },
    /// A store of `value` (already truncated to the access width).
    Store {
        /// The bytes to write, in the low bits.
        value: u64,
    },
}

/// A device access the firmware must perform, then finish with [`complete_mmio`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioReq {
    /// The guest virtual address accessed.
    pub gva: Gva,
    /// Its guest physical address (by the guest's own translation).
    pub gpa: Gpa,
    /// Access width.
    pub width: Width,
    /// Load or store.
    pub kind: MmioKind,
    /// Where the guest continues once the access is done.
    pub next_pc: u64,
}

/// A guest operation that did nothing, for the firmware's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// TLBR/TLBWI/TLBWR with an index beyond the TLB (architecturally undefined).
    TlbIndex(TlbOpError),
    /// A hypercall that was refused; the error code is already in `$v0`.
    Hypercall(HypercallError),
}

/// What the host has to do after an instruction was emulated to completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAction {
    /// Nothing.
    None,
    /// A CP0 write with a host-visible effect.
    Cp0(Cp0Effect),
    /// A guest TLB entry was replaced: drop mappings derived from the old one's range and the
    /// new one's.
    TlbWrite(TlbWrite),
    /// A CACHE operation, done as a no-op for the guest; the host may perform the matching
    /// maintenance (e.g. SYNCI on the address) where real caches need it.
    Cache {
        /// The 5-bit cache operation.
        op: u8,
        /// The effective address.
        gva: Gva,
    },
    /// Something ignored or refused (counted by the caller).
    Ignored(Ignored),
}

/// Why the vCPU stops for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaltReason {
    /// WAIT with every interrupt masked in Status.IM: nothing can ever wake the vCPU.
    WaitForever,
}

/// Why emulation failed (a host-side inconsistency, not a guest error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmulError {
    /// Cause.BD was set but the word at EPC is not a branch.
    Branch(BranchError),
    /// The trapping instruction is in the nullified delay slot of a not-taken likely branch.
    NullifiedDelaySlot,
    /// The instruction never traps to the hypervisor (a branch outside a delay slot).
    NotTrapping(u32),
}

impl core::fmt::Display for EmulError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EmulError::Branch(e) => write!(f, "{e}"),
            EmulError::NullifiedDelaySlot => f.write_str("trap in a nullified delay slot"),
            EmulError::NotTrapping(w) => write!(f, "instruction {w:#010x} cannot trap"),
        }
    }
}

/// The result of [`emulate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum EmulOutcome {
    /// Emulated; the PC is advanced (branch delay slots included).
    Done(HostAction),
    /// A device access: perform it, then call [`complete_mmio`]. The PC is not advanced yet.
    Mmio(MmioReq),
    /// The guest was given this exception (already delivered: CP0 and PC point at its handler).
    Injected(GuestException),
    /// A valid hypercall; the PC is advanced. Perform it and put the result in `$v0` with
    /// [`hypercall::set_result`].
    Hypercall(Hypercall),
    /// WAIT: the PC is advanced; idle the vCPU until an interrupt in Status.IM is pending.
    Wait,
    /// The vCPU can never continue.
    Halt(HaltReason),
    /// The host's view of the trap is inconsistent; the guest state is unchanged.
    Fail(EmulError),
}

/// How one instruction ended, before the PC is settled.
enum Step {
    Next(EmulOutcome),
    JumpTo(u64, HostAction),
    Mmio(Gva, Gpa, MemAccess, MmioKind),
    Raise(GuestException),
    Fail(EmulError),
}

/// Emulates `word`, the instruction that trapped, on `cpu`.
pub fn emulate(word: u32, cpu: &mut GuestCpu, trap: &TrapInfo) -> EmulOutcome {
    let site = FaultSite::from_epc(cpu.pc, trap.branch.is_some());
    let mut link_undo = None;
    let next_pc = match trap.branch {
        None => cpu.pc.wrapping_add(4),
        Some(branch) => match resolve_branch(branch, &cpu.gprs, cpu.pc) {
            Err(e) => return EmulOutcome::Fail(EmulError::Branch(e)),
            Ok(r) if r.nullified_slot => return EmulOutcome::Fail(EmulError::NullifiedDelaySlot),
            Ok(r) => {
                if let Some((reg, value)) = r.link {
                    link_undo = Some((reg, cpu.gprs.get(reg)));
                    cpu.gprs.set(reg, value);
                }
                r.next_pc
            }
        },
    };
    let undo_link = |cpu: &mut GuestCpu| {
        if let Some((reg, value)) = link_undo {
            cpu.gprs.set(reg, value);
        }
    };
    match execute(word, decode(word), cpu, trap, site) {
        Step::Next(outcome) => {
            cpu.pc = next_pc;
            outcome
        }
        Step::JumpTo(target, action) => {
            cpu.pc = target;
            EmulOutcome::Done(action)
        }
        Step::Mmio(gva, gpa, access, kind) => EmulOutcome::Mmio(MmioReq {
            gva,
            gpa,
            width: access.width,
            kind,
            next_pc,
        }),
        Step::Raise(exception) => {
            undo_link(cpu);
            cpu.pc = deliver(exception, &mut cpu.cp0, site);
            EmulOutcome::Injected(exception)
        }
        Step::Fail(e) => {
            undo_link(cpu);
            EmulOutcome::Fail(e)
        }
    }
}

/// Finishes an MMIO request: a load's `value` goes to its register (extended from the access
/// width), and the guest moves on to `req.next_pc`.
pub fn complete_mmio(cpu: &mut GuestCpu, req: &MmioReq, value: u64) {
    if let MmioKind::Load { rt, signed } = req.kind {
        let bits = req.width.bytes() * 8;
        let raw = value & req.width.value_mask();
        let extended = if signed && bits < 64 {
            // Shift the sign bit to bit 63 and back (bits is 8, 16 or 32 here).
            (((raw << (64 - bits)) as i64) >> (64 - bits)) as u64
        } else {
            raw
        };
        cpu.gprs.set(rt, extended);
    }
    cpu.pc = req.next_pc;
}

fn done(action: HostAction) -> Step {
    Step::Next(EmulOutcome::Done(action))
}

fn cp0_done(effect: Cp0Effect) -> Step {
    done(match effect {
        Cp0Effect::None => HostAction::None,
        effect => HostAction::Cp0(effect),
    })
}

fn is_privileged(insn: &Insn) -> bool {
    matches!(
        insn,
        Insn::Mfc0 { .. }
            | Insn::Dmfc0 { .. }
            | Insn::Mtc0 { .. }
            | Insn::Dmtc0 { .. }
            | Insn::Di { .. }
            | Insn::Ei { .. }
            | Insn::Tlbr
            | Insn::Tlbwi
            | Insn::Tlbwr
            | Insn::Tlbp
            | Insn::Eret
            | Insn::Wait
            | Insn::Hypcall { .. }
            | Insn::Cache { .. }
    )
}

fn execute(word: u32, insn: Insn, cpu: &mut GuestCpu, trap: &TrapInfo, site: FaultSite) -> Step {
    // Every COP0-class instruction, CACHE and HYPCALL needs kernel mode or Status.CU0.
    if is_privileged(&insn) && !cpu.cp0.cp0_usable() {
        return Step::Raise(GuestException::CoprocessorUnusable { unit: 0 });
    }
    match insn {
        Insn::Mfc0 { rt, reg } | Insn::Dmfc0 { rt, reg } => {
            if reg == Cp0Reg::COUNT {
                cpu.cp0.set_raw(Cp0Reg::COUNT, u64::from(trap.guest_count));
            }
            let value = if matches!(insn, Insn::Mfc0 { .. }) {
                cpu.cp0.mfc0(reg)
            } else {
                cpu.cp0.dmfc0(reg)
            };
            cpu.gprs.set(rt, value);
            done(HostAction::None)
        }
        Insn::Mtc0 { rt, reg } => cp0_done(cpu.cp0.mtc0(reg, cpu.gprs.get(rt))),
        Insn::Dmtc0 { rt, reg } => cp0_done(cpu.cp0.dmtc0(reg, cpu.gprs.get(rt))),
        Insn::Di { rt } | Insn::Ei { rt } => {
            let old = cpu.cp0.status();
            cpu.gprs.set(rt, sign_extend32(u64::from(old.bits())));
            let mut new = old;
            new.set(Status::IE, matches!(insn, Insn::Ei { .. }));
            cpu.cp0.set_status(new);
            cp0_done(if new == old {
                Cp0Effect::None
            } else {
                Cp0Effect::StatusChanged { old, new }
            })
        }
        Insn::Tlbp => {
            cpu.tlb.probe(&mut cpu.cp0);
            done(HostAction::None)
        }
        Insn::Tlbr => match cpu.tlb.read(&mut cpu.cp0) {
            Ok(effect) => cp0_done(effect),
            Err(e) => done(HostAction::Ignored(Ignored::TlbIndex(e))),
        },
        Insn::Tlbwi | Insn::Tlbwr => {
            let written = if insn == Insn::Tlbwi {
                cpu.tlb.write_indexed(&cpu.cp0)
            } else {
                cpu.tlb.write_random(&mut cpu.cp0)
            };
            match written {
                Ok(w) => done(HostAction::TlbWrite(w)),
                // A duplicate match: the write did nothing; the guest takes a machine check.
                Err(TlbOpError::MachineCheck { index, conflict }) => {
                    Step::Raise(GuestException::MachineCheck { index, conflict })
                }
                Err(e) => done(HostAction::Ignored(Ignored::TlbIndex(e))),
            }
        }
        // ERET in a delay slot is unpredictable; refuse it as the simplest safe choice.
        Insn::Eret if site.in_delay_slot => Step::Raise(GuestException::ReservedInstruction),
        Insn::Eret => eret(&mut cpu.cp0),
        Insn::Wait => {
            if cpu.cp0.status().interrupt_mask() == 0 {
                Step::Next(EmulOutcome::Halt(HaltReason::WaitForever))
            } else {
                Step::Next(EmulOutcome::Wait)
            }
        }
        Insn::Hypcall { code } => match hypercall::parse(code, &cpu.gprs) {
            Ok(call) => Step::Next(EmulOutcome::Hypercall(call)),
            Err(e) => {
                hypercall::set_result(&mut cpu.gprs, Err(e));
                done(HostAction::Ignored(Ignored::Hypercall(e)))
            }
        },
        Insn::Cache { op, base, offset } => done(HostAction::Cache {
            op,
            gva: Gva::new(effective_address(&cpu.gprs, base, offset)),
        }),
        Insn::Rdhwr { rt, rd } => match rdhwr(&cpu.cp0, rd, trap.guest_count) {
            Some(value) => {
                cpu.gprs.set(rt, value);
                done(HostAction::None)
            }
            None => Step::Raise(GuestException::ReservedInstruction),
        },
        Insn::Syscall { .. } => Step::Raise(GuestException::Syscall),
        Insn::Break { .. } => Step::Raise(GuestException::Break),
        // The guest CPU has no EJTAG (Config1.EP = 0): SDBBP is a reserved instruction.
        Insn::Sdbbp { .. } => Step::Raise(GuestException::ReservedInstruction),
        Insn::Load(access) => mmio(cpu, access, Access::Load),
        Insn::Store(access) => mmio(cpu, access, Access::Store),
        Insn::Branch(_) | Insn::Jump { .. } | Insn::JumpReg { .. } => {
            Step::Fail(EmulError::NotTrapping(word))
        }
        Insn::Unknown(_) => Step::Raise(GuestException::ReservedInstruction),
    }
}

fn effective_address(gprs: &Gprs, base: Gpr, offset: i16) -> u64 {
    gprs.get(base).wrapping_add(i64::from(offset) as u64)
}

/// ERET: back to ErrorEPC clearing ERL, or to EPC clearing EXL (Volume II, ERET).
fn eret(cp0: &mut Cp0) -> Step {
    let old = cp0.status();
    let (target, new) = if old.contains(Status::ERL) {
        (cp0.get(Cp0Reg::ERROR_EPC), old - Status::ERL)
    } else {
        (cp0.get(Cp0Reg::EPC), old - Status::EXL)
    };
    cp0.set_status(new);
    let action = if new == old {
        HostAction::None
    } else {
        HostAction::Cp0(Cp0Effect::StatusChanged { old, new })
    };
    Step::JumpTo(target, action)
}

/// RDHWR: the value of hardware register `rd`, or `None` when the guest may not read it
/// (Reserved Instruction). Guest user mode needs the matching HWREna bit (or Status.CU0).
fn rdhwr(cp0: &Cp0, rd: u8, guest_count: u32) -> Option<u64> {
    const ULR: u8 = 29;
    let enable_bit = match rd {
        0..=3 => rd,
        ULR => ULR,
        _ => return None,
    };
    let enabled = cp0.get(Cp0Reg::HWRENA) & (1 << enable_bit) != 0;
    if cp0.mode() == GuestMode::User && !cp0.status().contains(Status::CU0) && !enabled {
        return None;
    }
    Some(match rd {
        0 => u64::from(cp0.cpu_num()),
        1 => CACHE_LINE_BYTES,
        2 => sign_extend32(u64::from(guest_count)),
        3 => GUEST_CC_RES,
        _ => cp0.get(Cp0Reg::USER_LOCAL),
    })
}

fn mmio(cpu: &GuestCpu, access: MemAccess, kind: Access) -> Step {
    let va = effective_address(&cpu.gprs, access.base, access.offset);
    if va & (access.width.bytes() - 1) != 0 {
        return Step::Raise(GuestException::AddressError {
            bad_vaddr: va,
            access: kind,
        });
    }
    let gva = Gva::new(va);
    let cp0 = &cpu.cp0;
    let gpa = match translate(gva, cp0.mode(), cp0.asid(), &cpu.tlb, kind) {
        Ok(gpa) => gpa,
        Err(exception) => return Step::Raise(exception),
    };
    let mmio_kind = match kind {
        Access::Load => MmioKind::Load {
            rt: access.rt,
            signed: access.signed,
        },
        Access::Store => MmioKind::Store {
            value: cpu.gprs.get(access.rt) & access.width.value_mask(),
        },
    };
    Step::Mmio(gva, gpa, access, mmio_kind)
}

#[cfg(test)]
#[path = "emulate_tests.rs"]
mod tests;
