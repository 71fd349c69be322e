//! Sorting a host exception taken while a guest ran into what the hypervisor does next.
//!
//! The firmware's exception entry saves the guest state and reads the host Cause, EPC and
//! BadVAddr; [`classify_exit`] turns those into one [`ExitAction`], so the dispatcher is a
//! single `match` over named cases. The guest runs in host user mode, so host ExcCodes mean:
//!
//! - Coprocessor Unusable with CE = 0: a COP0 instruction, CACHE or HYPCALL: emulate it.
//!   With CE = 1..3: the guest has no FPU or coprocessor 2/3, so the guest gets the same
//!   exception.
//! - Reserved Instruction: RDHWR (emulate); for any other word [`crate::emulate::emulate`]
//!   reflects it.
//! - SYSCALL, BREAK, trap, overflow: the guest's own business: reflect them.
//! - TLB load/store/modified and address errors: a guest memory access that the host could not
//!   satisfy directly; resolve it through the guest's translation and the memory core.
//! - Interrupt: a host interrupt (timer, IPI, device); the guest is not involved.
//! - Anything else (bus errors, watch, machine check, cache error, reserved codes) stops the
//!   VM: none of them can be caused legitimately by a guest in this design.
//!
//! SDBBP is the one instruction that does not come through the exception vectors: the host
//! CPU enters debug mode and the firmware's EJTAG stub returns it as a "debug" exit with only
//! the restart address. [`locate_debug_breakpoint`] finds the SDBBP (and whether it sits in
//! a delay slot) from the code, after which it is emulated like a trapping instruction.

use hv_core::addr::Gva;

use crate::cp0::{Cause, ExcCode};
use crate::decode::{decode, Insn};
use crate::exception::GuestException;
use crate::guest_tlb::Access;

/// What the host saw when it left the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostTrap {
    /// Host Cause register.
    pub cause: Cause,
    /// Host EPC (the branch when Cause.BD is set).
    pub epc: u64,
    /// Host BadVAddr (meaningful for TLB and address-error exceptions).
    pub bad_vaddr: u64,
}

/// What the hypervisor does about a guest exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitAction {
    /// Fetch the word at EPC (and EPC + 4 when `in_delay_slot`) and call `emulate`.
    Emulate {
        /// Cause.BD was set.
        in_delay_slot: bool,
    },
    /// Deliver this exception to the guest (with `FaultSite::from_epc(epc, bd)`).
    Reflect(GuestException),
    /// A guest memory access faulted: translate `gva` with the guest's MMU, then map the
    /// page, emulate the access as MMIO, or reflect the guest's own exception.
    MemoryFault {
        /// The faulting guest virtual address.
        gva: Gva,
        /// Load/fetch or store.
        access: Access,
        /// A store hit a present but read-only host mapping (host TLB Modified).
        write_protect: bool,
    },
    /// A host interrupt arrived; handle it, then resume or reschedule the guest.
    HostInterrupt,
    /// Stop the VM: the exception cannot come from a guest in this design.
    Fatal(FatalExit),
}

/// Why a guest exit stops the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatalExit {
    /// A known exception code the design does not expect from a guest.
    Unexpected(ExcCode),
    /// A reserved or unmodelled ExcCode value.
    UnknownCode(u8),
}

impl core::fmt::Display for FatalExit {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FatalExit::Unexpected(code) => write!(f, "unexpected guest exit {code:?}"),
            FatalExit::UnknownCode(bits) => write!(f, "guest exit with reserved ExcCode {bits}"),
        }
    }
}

/// Classifies a host exception taken from guest context.
pub fn classify_exit(trap: &HostTrap) -> ExitAction {
    let in_delay_slot = trap.cause.contains(Cause::BD);
    let fault = |access, write_protect| ExitAction::MemoryFault {
        gva: Gva::new(trap.bad_vaddr),
        access,
        write_protect,
    };
    let Some(code) = trap.cause.exc_code() else {
        return ExitAction::Fatal(FatalExit::UnknownCode(trap.cause.exc_code_bits()));
    };
    match code {
        ExcCode::Int => ExitAction::HostInterrupt,
        ExcCode::CpU if trap.cause.ce() == 0 => ExitAction::Emulate { in_delay_slot },
        ExcCode::CpU => ExitAction::Reflect(GuestException::CoprocessorUnusable {
            unit: trap.cause.ce(),
        }),
        ExcCode::Ri => ExitAction::Emulate { in_delay_slot },
        ExcCode::Sys => ExitAction::Reflect(GuestException::Syscall),
        ExcCode::Bp => ExitAction::Reflect(GuestException::Break),
        ExcCode::Tr => ExitAction::Reflect(GuestException::Trap),
        ExcCode::Ov => ExitAction::Reflect(GuestException::Overflow),
        ExcCode::TlbL | ExcCode::AdEL => fault(Access::Load, false),
        ExcCode::TlbS | ExcCode::AdES => fault(Access::Store, false),
        ExcCode::Mod => fault(Access::Store, true),
        other => ExitAction::Fatal(FatalExit::Unexpected(other)),
    }
}

/// Where the SDBBP behind a debug-mode exit sits (the host's debug vector reports only the
/// restart address, the branch when SDBBP is in a delay slot; the host Cause is stale).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebugBreakpoint {
    /// SDBBP is in the delay slot of the branch at the restart address.
    pub in_delay_slot: bool,
}

/// Why a debug-mode exit does not point at an SDBBP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebugExitError {
    /// Neither the word at the restart address nor a branch's delay slot is an SDBBP.
    NoSdbbp {
        /// The word at the restart address.
        at_epc: u32,
    },
}

impl core::fmt::Display for DebugExitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DebugExitError::NoSdbbp { at_epc } => write!(
                f,
                "debug exception with no SDBBP at the restart address (word {at_epc:#010x})"
            ),
        }
    }
}

/// Locates the SDBBP of a debug-mode exit from the word at the restart address and, when that
/// is a branch or jump, the word in its delay slot (`fetch_next` is called only then). An
/// SDBBP is not a branch, so the two cases cannot be confused. The caller then emulates the
/// SDBBP like any trapping instruction (the guest gets a Reserved Instruction exception).
pub fn locate_debug_breakpoint(
    at_epc: u32,
    fetch_next: impl FnOnce() -> Option<u32>,
) -> Result<DebugBreakpoint, DebugExitError> {
    let first = decode(at_epc);
    if matches!(first, Insn::Sdbbp { .. }) {
        return Ok(DebugBreakpoint {
            in_delay_slot: false,
        });
    }
    if first.has_delay_slot() && matches!(fetch_next().map(decode), Some(Insn::Sdbbp { .. })) {
        return Ok(DebugBreakpoint {
            in_delay_slot: true,
        });
    }
    Err(DebugExitError::NoSdbbp { at_epc })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trap(code: ExcCode, ce: u8, bd: bool) -> HostTrap {
        let mut cause = Cause::empty().with_exception(code, ce);
        cause.set(Cause::BD, bd);
        HostTrap {
            cause,
            epc: 0x4000_0000,
            bad_vaddr: 0x6000_1234,
        }
    }

    #[test]
    fn coprocessor_unusable_splits_on_ce() {
        assert_eq!(
            classify_exit(&trap(ExcCode::CpU, 0, true)),
            ExitAction::Emulate {
                in_delay_slot: true
            }
        );
        assert_eq!(
            classify_exit(&trap(ExcCode::CpU, 1, false)),
            ExitAction::Reflect(GuestException::CoprocessorUnusable { unit: 1 })
        );
        assert_eq!(
            classify_exit(&trap(ExcCode::Ri, 0, false)),
            ExitAction::Emulate {
                in_delay_slot: false
            }
        );
    }

    #[test]
    fn guest_exceptions_are_reflected() {
        for (code, exc) in [
            (ExcCode::Sys, GuestException::Syscall),
            (ExcCode::Bp, GuestException::Break),
            (ExcCode::Tr, GuestException::Trap),
            (ExcCode::Ov, GuestException::Overflow),
        ] {
            assert_eq!(
                classify_exit(&trap(code, 0, false)),
                ExitAction::Reflect(exc)
            );
            assert_eq!(exc.exc_code(), code);
        }
    }

    #[test]
    fn memory_faults_carry_address_and_access() {
        let gva = Gva::new(0x6000_1234);
        for (code, access, write_protect) in [
            (ExcCode::TlbL, Access::Load, false),
            (ExcCode::AdEL, Access::Load, false),
            (ExcCode::TlbS, Access::Store, false),
            (ExcCode::AdES, Access::Store, false),
            (ExcCode::Mod, Access::Store, true),
        ] {
            assert_eq!(
                classify_exit(&trap(code, 0, false)),
                ExitAction::MemoryFault {
                    gva,
                    access,
                    write_protect
                }
            );
        }
    }

    #[test]
    fn interrupts_and_fatal_exits() {
        assert_eq!(
            classify_exit(&trap(ExcCode::Int, 0, false)),
            ExitAction::HostInterrupt
        );
        for code in [
            ExcCode::Ibe,
            ExcCode::Dbe,
            ExcCode::MCheck,
            ExcCode::CacheErr,
            ExcCode::Watch,
        ] {
            assert_eq!(
                classify_exit(&trap(code, 0, false)),
                ExitAction::Fatal(FatalExit::Unexpected(code))
            );
        }
        let reserved = HostTrap {
            cause: Cause::from_bits_retain(14 << 2),
            epc: 0,
            bad_vaddr: 0,
        };
        assert_eq!(
            classify_exit(&reserved),
            ExitAction::Fatal(FatalExit::UnknownCode(14))
        );
    }

    const SDBBP: u32 = 0x7000_003f;
    const BEQ_TAKEN: u32 = 0x1000_0004;
    const JR_RA: u32 = 0x03e0_0008;
    const NOP: u32 = 0;

    #[test]
    fn debug_breakpoint_at_the_restart_address() {
        let mut fetched = false;
        let found = locate_debug_breakpoint(SDBBP | (1 << 6), || {
            fetched = true;
            None
        });
        assert_eq!(
            found,
            Ok(DebugBreakpoint {
                in_delay_slot: false
            })
        );
        assert!(!fetched, "no need to read the next word");
    }

    #[test]
    fn debug_breakpoint_in_a_delay_slot() {
        for branch in [BEQ_TAKEN, JR_RA] {
            assert_eq!(
                locate_debug_breakpoint(branch, || Some(SDBBP)),
                Ok(DebugBreakpoint {
                    in_delay_slot: true
                })
            );
        }
    }

    #[test]
    fn debug_exit_without_sdbbp_is_an_error() {
        // A branch whose slot is something else, a plain word, an unreadable slot.
        assert_eq!(
            locate_debug_breakpoint(BEQ_TAKEN, || Some(NOP)),
            Err(DebugExitError::NoSdbbp { at_epc: BEQ_TAKEN })
        );
        assert_eq!(
            locate_debug_breakpoint(NOP, || Some(SDBBP)),
            Err(DebugExitError::NoSdbbp { at_epc: NOP })
        );
        assert_eq!(
            locate_debug_breakpoint(JR_RA, || None),
            Err(DebugExitError::NoSdbbp { at_epc: JR_RA })
        );
    }
}
