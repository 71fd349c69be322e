//! The guest's own exception handling: vectors, the saved register frame and dispatch to
//! one handler installed by the guest.
//!
//! [`install`] points EBase at `guest_rt_vectors` and clears Status.BEV and ERL, so from
//! then on exceptions reach the guest's vectors (docs/guest-abi.md, section 3). Handlers run
//! with Status.EXL set, on the trap stack, and must not fault: an exception taken with EXL
//! set does not update EPC, so the interrupted context could not be resumed. A nested
//! exception is therefore reported and ends the VM.

use crate::{cp0, hypercall, println};
use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// Size of [`TrapFrame`] in bytes (a multiple of 16, the n64 stack alignment).
pub const FRAME_SIZE: usize = 288;

/// Which vector an exception came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vector {
    /// EBase + 0x000 (or + 0x080): TLB refill taken with EXL clear.
    TlbRefill,
    /// EBase + 0x180: every other exception (and interrupts without Cause.IV).
    General,
    /// EBase + 0x200: interrupts with Cause.IV set.
    Interrupt,
}

/// Registers saved at exception entry; the handler may change any of them, including EPC.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    /// GPRs by number ($0 is unused; $26/$27 are not preserved, as on hardware).
    pub regs: [u64; 32],
    /// HI.
    pub hi: u64,
    /// LO.
    pub lo: u64,
    /// Where the interrupted code resumes (copied back to EPC before ERET).
    pub epc: u64,
    /// Vector number as stored by the entry code (0 refill, 1 general, 2 interrupt).
    kind: u64,
}

const _: () = assert!(core::mem::size_of::<TrapFrame>() == FRAME_SIZE);

impl TrapFrame {
    /// The vector the exception came through.
    pub fn vector(&self) -> Vector {
        match self.kind {
            0 => Vector::TlbRefill,
            2 => Vector::Interrupt,
            _ => Vector::General,
        }
    }

    /// Skips the faulting instruction (and, when it sat in a branch delay slot, the
    /// branch: the branch is not re-run, so its outcome is lost; handlers use this only for
    /// instructions they place outside delay slots).
    pub fn skip_instruction(&mut self, cause: u32) {
        self.epc += if cause & cp0::CAUSE_BD != 0 { 8 } else { 4 };
    }
}

/// What the hypervisor and the hardware reported about an exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrapInfo {
    /// Cause at entry.
    pub cause: u32,
    /// Status at entry (EXL set).
    pub status: u32,
    /// BadVAddr at entry (meaningful for TLB and address errors).
    pub bad_vaddr: u64,
    /// The vector used.
    pub vector: Vector,
}

impl TrapInfo {
    /// Cause.ExcCode.
    pub fn exc_code(&self) -> u32 {
        cp0::exc_code(self.cause)
    }

    /// Whether the interrupted code ran in user mode.
    pub fn from_user(&self) -> bool {
        self.status & cp0::STATUS_KSU_MASK == cp0::STATUS_KSU_USER
    }
}

/// Exception codes (Cause.ExcCode) a guest can see.
pub mod exc {
    /// Interrupt.
    pub const INT: u32 = 0;
    /// TLB modified.
    pub const MOD: u32 = 1;
    /// TLB refill or invalid, load or fetch.
    pub const TLBL: u32 = 2;
    /// TLB refill or invalid, store.
    pub const TLBS: u32 = 3;
    /// Address error, load or fetch.
    pub const ADEL: u32 = 4;
    /// Address error, store.
    pub const ADES: u32 = 5;
    /// Bus error, fetch.
    pub const IBE: u32 = 6;
    /// Bus error, data.
    pub const DBE: u32 = 7;
    /// Syscall.
    pub const SYS: u32 = 8;
    /// Breakpoint.
    pub const BP: u32 = 9;
    /// Reserved instruction.
    pub const RI: u32 = 10;
    /// Coprocessor unusable.
    pub const CPU: u32 = 11;
    /// Integer overflow.
    pub const OV: u32 = 12;
    /// Trap.
    pub const TR: u32 = 13;
    /// Machine check (a TLB write that would duplicate a match).
    pub const MCHECK: u32 = 24;

    /// A short name for an exception code.
    pub fn name(code: u32) -> &'static str {
        match code {
            INT => "Int",
            MOD => "Mod",
            TLBL => "TLBL",
            TLBS => "TLBS",
            ADEL => "AdEL",
            ADES => "AdES",
            IBE => "IBE",
            DBE => "DBE",
            SYS => "Sys",
            BP => "Bp",
            RI => "RI",
            CPU => "CpU",
            OV => "Ov",
            TR => "Tr",
            MCHECK => "MCheck",
            _ => "other",
        }
    }
}

/// A guest exception handler.
pub type Handler = fn(&mut TrapFrame, &TrapInfo);

static HANDLER: AtomicUsize = AtomicUsize::new(0);
static DEPTH: AtomicU32 = AtomicU32::new(0);

global_asm!(
    include_str!("vectors.s"),
    frame_size = const FRAME_SIZE,
    hi_off = const 32 * 8,
    lo_off = const 33 * 8,
    epc_off = const 34 * 8,
    kind_off = const 35 * 8,
);

extern "C" {
    static guest_rt_vectors: u8;
}

/// Address of the vector block (the value written to EBase).
pub fn vectors_address() -> u64 {
    &raw const guest_rt_vectors as u64
}

/// Installs `handler`, points EBase at the guest's vectors and clears BEV and ERL.
///
/// Interrupts stay as they were (off after reset); the caller enables the ones it handles.
pub fn install(handler: Handler) {
    HANDLER.store(handler as usize, Ordering::Relaxed);
    let base = vectors_address();
    // SAFETY: BEV is still set (or, on a re-install, the same vectors are in place), so
    // EBase does not yet decide where exceptions go; the new base holds our vectors.
    unsafe { cp0::write32::<15, 1>(base as u32) };
    let status = cp0::status();
    // SAFETY: EBase now points at valid vectors, so BEV may go; clearing ERL leaves the
    // reset state the way a kernel does once its vectors are in place.
    unsafe { cp0::set_status(status & !(cp0::STATUS_BEV | cp0::STATUS_ERL)) };
}

/// Called by vectors.s with the saved frame.
#[no_mangle]
extern "C" fn guest_rt_trap(frame: &mut TrapFrame) {
    let info = TrapInfo {
        cause: cp0::cause(),
        status: cp0::status(),
        bad_vaddr: cp0::bad_vaddr(),
        vector: frame.vector(),
    };
    if DEPTH.fetch_add(1, Ordering::Relaxed) != 0 {
        println!(
            "GUEST FATAL nested exception {} epc={:#x} badvaddr={:#x}",
            exc::name(info.exc_code()),
            frame.epc,
            info.bad_vaddr
        );
        hypercall::exit(126);
    }
    match HANDLER.load(Ordering::Relaxed) {
        0 => unexpected(frame, &info),
        raw => {
            // SAFETY: HANDLER only ever holds 0 or a `Handler` stored by `install`.
            let handler: Handler = unsafe { core::mem::transmute::<usize, Handler>(raw) };
            handler(frame, &info);
        }
    }
    DEPTH.fetch_sub(1, Ordering::Relaxed);
}

/// Reports an exception nobody handles and ends the VM with status 125.
pub fn unexpected(frame: &TrapFrame, info: &TrapInfo) -> ! {
    println!(
        "GUEST FATAL unexpected exception {} ({}) epc={:#x} badvaddr={:#x} cause={:#x} status={:#x}",
        exc::name(info.exc_code()),
        info.exc_code(),
        frame.epc,
        info.bad_vaddr,
        info.cause,
        info.status
    );
    hypercall::exit(125)
}
