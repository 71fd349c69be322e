//! Exception entry, the typed Cause decode and the one exception dispatcher.
//!
//! vectors.s saves the full register state into a [`TrapFrame`] and calls [`trap_entry`].
//! [`handle_exception`] decodes Cause into a [`TrapCause`] (ExcCode, BD, IP, CE) and calls
//! one named handler per cause; the guest (trap-and-emulate) work adds its handlers to the
//! same `match`. Anything without a handler is an unexpected exception: a full report
//! (EPC, BadVAddr, decoded Cause, registers), then the run fails.
//!
//! Handlers run with Status.EXL set (interrupts off). A second exception inside a handler
//! would leave EPC stale, so it is detected and reported instead of being resumed.

use super::cp0::{self, Cause, Status};
use super::{cpu_id, timer, tlb, MAX_CPUS};
use core::arch::global_asm;
use core::fmt;
use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

/// Register state saved on exception entry. Layout shared with vectors.s.
#[repr(C)]
#[derive(Debug, Clone)]
pub struct TrapFrame {
    /// General registers by number ($0 is always 0; $26/$27 (k0/k1) are not saved).
    pub gpr: [u64; 32],
    /// HI.
    pub hi: u64,
    /// LO.
    pub lo: u64,
    /// EPC: where ERET resumes. Handlers that skip an instruction advance it.
    pub epc: u64,
    /// Status at entry (EXL set); written back before ERET.
    pub status: u64,
    /// Cause at entry.
    pub cause: u64,
    /// BadVAddr at entry.
    pub bad_vaddr: u64,
    /// Which vector was taken ([`TrapKind`]).
    pub kind: u64,
    /// Keeps the frame a multiple of 16 bytes (n64 stack alignment).
    _pad: u64,
}

/// Which exception vector delivered the exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapKind {
    /// EBase + 0x180 (and 0x200).
    General,
    /// TLB refill: EBase + 0x000 or the XTLB refill vector at + 0x080.
    Refill,
    /// Cache error, EBase + 0x100.
    CacheError,
}

const KIND_GENERAL: u64 = 0;
const KIND_REFILL: u64 = 1;
const KIND_CACHE_ERROR: u64 = 2;

impl TrapKind {
    fn from_raw(raw: u64) -> Self {
        match raw {
            KIND_REFILL => Self::Refill,
            KIND_CACHE_ERROR => Self::CacheError,
            _ => Self::General,
        }
    }
}

/// Kernel stack top of each CPU, used by vectors.s for exceptions from user mode.
static KSTACK_TOP: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

global_asm!(
    include_str!("vectors.s"),
    frame_size = const size_of::<TrapFrame>(),
    off_hi = const offset_of!(TrapFrame, hi),
    off_lo = const offset_of!(TrapFrame, lo),
    off_epc = const offset_of!(TrapFrame, epc),
    off_status = const offset_of!(TrapFrame, status),
    off_cause = const offset_of!(TrapFrame, cause),
    off_badvaddr = const offset_of!(TrapFrame, bad_vaddr),
    off_kind = const offset_of!(TrapFrame, kind),
    kind_general = const KIND_GENERAL,
    kind_refill = const KIND_REFILL,
    kind_cache_error = const KIND_CACHE_ERROR,
    debug_exit_offset = const super::debug_vector::DEBUG_EXIT_OFFSET,
    kstack_top = sym KSTACK_TOP,
    trap_entry = sym trap_entry,
    slot_offset_mask = const super::percpu::SLOT_OFFSET_MASK,
    attempts = const super::percpu::word_va_offset(super::percpu::WORD_ATTEMPTS),
    slot_tag = const super::percpu::slot_field_va_offset(0),
    slot_lo0 = const super::percpu::slot_field_va_offset(8),
    slot_lo1 = const super::percpu::slot_field_va_offset(12),
);

const _: () = assert!(size_of::<TrapFrame>().is_multiple_of(16));
const _: () = assert!(offset_of!(TrapFrame, hi) == 256);

/// Records the kernel stack top of `cpu` (boot.s passes it in).
pub fn set_kernel_stack(cpu: usize, top: u64) {
    KSTACK_TOP[cpu].store(top, Ordering::Relaxed);
}

/// Exception codes, Cause bits 6:2 (PRA table 9.34 "Cause Register ExcCode Field").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExcCode {
    /// 0 Int: interrupt.
    Interrupt,
    /// 1 Mod: store to a TLB entry with D clear.
    TlbModified,
    /// 2 TLBL: TLB miss or invalid entry on load or fetch.
    TlbLoad,
    /// 3 TLBS: TLB miss or invalid entry on store.
    TlbStore,
    /// 4 AdEL: address error on load or fetch.
    AddressErrorLoad,
    /// 5 AdES: address error on store.
    AddressErrorStore,
    /// 6 IBE: bus error on fetch.
    BusErrorFetch,
    /// 7 DBE: bus error on data access.
    BusErrorData,
    /// 8 Sys: SYSCALL.
    Syscall,
    /// 9 Bp: BREAK.
    Breakpoint,
    /// 10 RI: reserved instruction.
    ReservedInstruction,
    /// 11 CpU: coprocessor unusable (CE says which).
    CoprocessorUnusable,
    /// 12 Ov: integer overflow.
    Overflow,
    /// 13 Tr: trap instruction.
    Trap,
    /// 15 FPE: floating point.
    FloatingPoint,
    /// 19 TLBRI: read inhibit.
    TlbReadInhibit,
    /// 20 TLBXI: execute inhibit.
    TlbExecuteInhibit,
    /// 23 WATCH.
    Watch,
    /// 24 MCheck: machine check (e.g. duplicate TLB match).
    MachineCheck,
    /// 27 GE: guest exit (VZ only).
    GuestExit,
    /// 30 CacheErr (debug mode cache error encoding).
    CacheError,
    /// Any other code.
    Other(u8),
}

impl ExcCode {
    /// Decodes the 5-bit ExcCode field.
    pub fn from_raw(raw: u8) -> Self {
        match raw {
            0 => Self::Interrupt,
            1 => Self::TlbModified,
            2 => Self::TlbLoad,
            3 => Self::TlbStore,
            4 => Self::AddressErrorLoad,
            5 => Self::AddressErrorStore,
            6 => Self::BusErrorFetch,
            7 => Self::BusErrorData,
            8 => Self::Syscall,
            9 => Self::Breakpoint,
            10 => Self::ReservedInstruction,
            11 => Self::CoprocessorUnusable,
            12 => Self::Overflow,
            13 => Self::Trap,
            15 => Self::FloatingPoint,
            19 => Self::TlbReadInhibit,
            20 => Self::TlbExecuteInhibit,
            23 => Self::Watch,
            24 => Self::MachineCheck,
            27 => Self::GuestExit,
            30 => Self::CacheError,
            other => Self::Other(other),
        }
    }

    /// The raw 5-bit code.
    pub fn raw(self) -> u8 {
        match self {
            Self::Interrupt => 0,
            Self::TlbModified => 1,
            Self::TlbLoad => 2,
            Self::TlbStore => 3,
            Self::AddressErrorLoad => 4,
            Self::AddressErrorStore => 5,
            Self::BusErrorFetch => 6,
            Self::BusErrorData => 7,
            Self::Syscall => 8,
            Self::Breakpoint => 9,
            Self::ReservedInstruction => 10,
            Self::CoprocessorUnusable => 11,
            Self::Overflow => 12,
            Self::Trap => 13,
            Self::FloatingPoint => 15,
            Self::TlbReadInhibit => 19,
            Self::TlbExecuteInhibit => 20,
            Self::Watch => 23,
            Self::MachineCheck => 24,
            Self::GuestExit => 27,
            Self::CacheError => 30,
            Self::Other(raw) => raw,
        }
    }

    /// The manual's mnemonic.
    pub fn mnemonic(self) -> &'static str {
        match self {
            Self::Interrupt => "Int",
            Self::TlbModified => "Mod",
            Self::TlbLoad => "TLBL",
            Self::TlbStore => "TLBS",
            Self::AddressErrorLoad => "AdEL",
            Self::AddressErrorStore => "AdES",
            Self::BusErrorFetch => "IBE",
            Self::BusErrorData => "DBE",
            Self::Syscall => "Sys",
            Self::Breakpoint => "Bp",
            Self::ReservedInstruction => "RI",
            Self::CoprocessorUnusable => "CpU",
            Self::Overflow => "Ov",
            Self::Trap => "Tr",
            Self::FloatingPoint => "FPE",
            Self::TlbReadInhibit => "TLBRI",
            Self::TlbExecuteInhibit => "TLBXI",
            Self::Watch => "WATCH",
            Self::MachineCheck => "MCheck",
            Self::GuestExit => "GE",
            Self::CacheError => "CacheErr",
            Self::Other(_) => "reserved",
        }
    }
}

/// Cause decoded into typed parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrapCause {
    /// Exception code.
    pub code: ExcCode,
    /// The faulting instruction sits in a branch delay slot (EPC points at the branch).
    pub branch_delay: bool,
    /// Pending interrupt lines IP7..IP0.
    pub pending: u8,
    /// Coprocessor number for Coprocessor Unusable.
    pub coprocessor: u8,
    /// Timer interrupt pending (Cause.TI).
    pub timer_pending: bool,
}

impl From<Cause> for TrapCause {
    fn from(cause: Cause) -> Self {
        Self {
            code: ExcCode::from_raw(cause.exc_code_raw()),
            branch_delay: cause.contains(Cause::BD),
            pending: cause.pending(),
            coprocessor: cause.coprocessor(),
            timer_pending: cause.contains(Cause::TI),
        }
    }
}

impl fmt::Display for TrapCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ExcCode={} ({}) BD={} IP={:#04x} CE={} TI={}",
            self.code.raw(),
            self.code.mnemonic(),
            u8::from(self.branch_delay),
            self.pending,
            self.coprocessor,
            u8::from(self.timer_pending)
        )
    }
}

/// What a handler decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitAction {
    /// Return to the interrupted code (EPC as the handler left it).
    Resume,
    /// Nobody expected this exception: report it and fail the run.
    Unexpected(&'static str),
}

/// Whether this CPU is inside a handler right now (nested-exception detection).
static IN_HANDLER: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// Called by vectors.s with the saved frame; returns to the restore path.
extern "C" fn trap_entry(frame: &mut TrapFrame) {
    let cpu = cpu_id();
    if IN_HANDLER[cpu].swap(true, Ordering::Relaxed) {
        report_unexpected(
            frame,
            "exception inside an exception handler (EPC is stale)",
        );
    }
    match handle_exception(frame) {
        ExitAction::Resume => {}
        ExitAction::Unexpected(why) => report_unexpected(frame, why),
    }
    IN_HANDLER[cpu].store(false, Ordering::Relaxed);
}

/// The exception dispatcher: decodes Cause and calls the handler for it.
pub fn handle_exception(frame: &mut TrapFrame) -> ExitAction {
    let cause = TrapCause::from(Cause::from_bits_retain(frame.cause as u32));
    match (TrapKind::from_raw(frame.kind), cause.code) {
        (TrapKind::CacheError, _) => ExitAction::Unexpected("cache error"),
        (_, ExcCode::Interrupt) => handle_interrupt(frame, cause),
        (TrapKind::Refill, ExcCode::TlbLoad | ExcCode::TlbStore) => handle_tlb_refill(frame, cause),
        (_, ExcCode::AddressErrorLoad | ExcCode::AddressErrorStore) => {
            handle_address_error(frame, cause)
        }
        (_, ExcCode::Breakpoint) => handle_breakpoint(frame, cause),
        _ => ExitAction::Unexpected("no handler for this exception"),
    }
}

/// Interrupt: the CP0 timer is the only source the firmware unmasks.
fn handle_interrupt(_frame: &mut TrapFrame, cause: TrapCause) -> ExitAction {
    timer::handle_interrupt(cause);
    // A line that went quiet between the exception and now is harmless; nothing else is
    // unmasked, so any other pending bit is left for the next pass.
    ExitAction::Resume
}

/// TLB refill: served from this CPU's kernel window (see tlb.rs).
fn handle_tlb_refill(frame: &mut TrapFrame, _cause: TrapCause) -> ExitAction {
    if tlb::refill_from_window(frame.bad_vaddr) {
        ExitAction::Resume
    } else {
        ExitAction::Unexpected("TLB refill for an address nothing maps")
    }
}

/// Address error: only expected ones (see [`expect_fault`]) are resumed.
fn handle_address_error(frame: &mut TrapFrame, cause: TrapCause) -> ExitAction {
    take_expected_fault(frame, cause)
}

/// Breakpoint: only expected ones (see [`expect_fault`]) are resumed.
fn handle_breakpoint(frame: &mut TrapFrame, cause: TrapCause) -> ExitAction {
    take_expected_fault(frame, cause)
}

/// An exception that code asked for with [`expect_fault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultRecord {
    /// Address of the faulting instruction.
    pub epc: u64,
    /// BadVAddr at the time.
    pub bad_vaddr: u64,
}

/// Per-CPU slot of an armed expectation.
struct ExpectSlot {
    /// ExcCode + 1 of the exception expected next, 0 = none.
    armed: AtomicU8,
    /// Set by the handler when it took the expected exception.
    hit: AtomicBool,
    epc: AtomicU64,
    bad_vaddr: AtomicU64,
}

static EXPECT: [ExpectSlot; MAX_CPUS] = [const {
    ExpectSlot {
        armed: AtomicU8::new(0),
        hit: AtomicBool::new(false),
        epc: AtomicU64::new(0),
        bad_vaddr: AtomicU64::new(0),
    }
}; MAX_CPUS];

/// Runs `f` expecting it to raise exactly one `code` exception at a non-delay-slot
/// instruction; the handler records it and resumes after the instruction. Returns `f`'s
/// result and the record if the exception happened.
pub fn expect_fault<R>(code: ExcCode, f: impl FnOnce() -> R) -> (R, Option<FaultRecord>) {
    let slot = &EXPECT[cpu_id()];
    slot.hit.store(false, Ordering::Relaxed);
    slot.armed.store(code.raw() + 1, Ordering::Relaxed);
    // Compiler fence: the arming stores must precede the faulting instruction in `f`
    // (same CPU, so no hardware barrier is needed).
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
    let result = f();
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
    slot.armed.store(0, Ordering::Relaxed);
    let record = slot.hit.load(Ordering::Relaxed).then(|| FaultRecord {
        epc: slot.epc.load(Ordering::Relaxed),
        bad_vaddr: slot.bad_vaddr.load(Ordering::Relaxed),
    });
    (result, record)
}

fn take_expected_fault(frame: &mut TrapFrame, cause: TrapCause) -> ExitAction {
    let slot = &EXPECT[cpu_id()];
    if slot.armed.load(Ordering::Relaxed) != cause.code.raw() + 1 {
        return ExitAction::Unexpected("no handler expected this exception here");
    }
    if cause.branch_delay {
        return ExitAction::Unexpected("expected exception hit a branch delay slot");
    }
    slot.armed.store(0, Ordering::Relaxed);
    slot.epc.store(frame.epc, Ordering::Relaxed);
    slot.bad_vaddr.store(frame.bad_vaddr, Ordering::Relaxed);
    slot.hit.store(true, Ordering::Relaxed);
    // Skip the faulting instruction (not in a delay slot, so it is simply the next word).
    frame.epc = frame.epc.wrapping_add(4);
    ExitAction::Resume
}

/// n64 register names by number.
const GPR_NAMES: [&str; 32] = [
    "zero", "at", "v0", "v1", "a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "t0", "t1", "t2",
    "t3", "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "t8", "t9", "k0", "k1", "gp", "sp", "s8",
    "ra",
];

impl fmt::Display for TrapFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for row in 0..8 {
            for col in 0..4 {
                let reg = row * 4 + col;
                write!(f, " {:>4}={:016x}", GPR_NAMES[reg], self.gpr[reg])?;
            }
            writeln!(f)?;
        }
        writeln!(f, "   hi={:016x}   lo={:016x}", self.hi, self.lo)
    }
}

/// Prints everything known about an exception nobody handles, then fails the run.
fn report_unexpected(frame: &TrapFrame, why: &str) -> ! {
    let cause = TrapCause::from(Cause::from_bits_retain(frame.cause as u32));
    let kind = TrapKind::from_raw(frame.kind);
    let mut out = crate::console::panic_writer();
    use core::fmt::Write;
    let _ = writeln!(
        out,
        "UNEXPECTED EXCEPTION on cpu{}: {} ({:?} vector): {}",
        cpu_id(),
        cause.code.mnemonic(),
        kind,
        why
    );
    let _ = writeln!(
        out,
        "  EPC={:#018x} BadVAddr={:#018x} Status={:#010x} Cause={:#010x}",
        frame.epc, frame.bad_vaddr, frame.status as u32, frame.cause as u32
    );
    let _ = writeln!(out, "  Cause: {cause}");
    if kind == TrapKind::CacheError {
        let _ = writeln!(out, "  ErrorEPC={:#018x}", cp0::error_epc());
    }
    let status = Status::from_bits_retain(frame.status as u32);
    let _ = writeln!(
        out,
        "  mode={} EXL={} ERL={} IE={}",
        if status.intersects(Status::KSU_MASK) {
            "user/supervisor"
        } else {
            "kernel"
        },
        u8::from(status.contains(Status::EXL)),
        u8::from(status.contains(Status::ERL)),
        u8::from(status.contains(Status::IE))
    );
    let _ = write!(out, "{frame}");
    drop(out);
    crate::scenario::abort_run(
        crate::scenario::ExitCode::UnexpectedException,
        format_args!(
            "unexpected exception {} at EPC={:#x} BadVAddr={:#x}",
            cause.code.mnemonic(),
            frame.epc,
            frame.bad_vaddr
        ),
    )
}
