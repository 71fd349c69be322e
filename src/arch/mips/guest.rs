//! Running guest code: the register context, `run_guest` (guest.s), and the root-TLB
//! operations on guest mappings (host ASIDs 1..=255, never global).
//!
//! A guest runs in host user mode with Status.UX set, so its addresses (all below
//! 0x8000_0000) lie in xuseg and every TLB miss comes to the XTLB refill vector. Any
//! exception from user mode ends [`run_guest`], which then returns with the exit registers in
//! the context; the caller (the vCPU loop) decides what to do and calls it again.

use super::cp0::{self, EntryLo, Status};
use super::percpu;
use super::tlb::TlbWindow;
use core::arch::global_asm;
use core::mem::offset_of;

/// Guest registers and exit state, shared with guest.s (layout fixed by the offsets below).
#[repr(C)]
#[derive(Debug, Clone)]
pub struct GuestContext {
    /// General registers by number ($0 reads as 0), k0/k1 included.
    pub gpr: [u64; 32],
    /// HI.
    pub hi: u64,
    /// LO.
    pub lo: u64,
    /// Entry: where the guest resumes. Exit: EPC of the exception.
    pub pc: u64,
    /// Status to ERET with (user mode, EXL, UX, IE and the host's interrupt mask).
    pub entry_status: u64,
    /// EntryHi to run with (the host ASID of the guest's current mode).
    pub entry_hi: u64,
    /// Status at the exit.
    pub exit_status: u64,
    /// Cause at the exit.
    pub exit_cause: u64,
    /// BadVAddr at the exit.
    pub exit_bad_vaddr: u64,
    /// Which vector the exit came through ([`EXIT_GENERAL`], [`EXIT_REFILL`] or
    /// [`EXIT_DEBUG`]).
    pub exit_kind: u64,
    /// Host s0..s7, s8, gp, sp, ra and Status, saved by `run_guest`.
    host: [u64; 13],
    /// The fast lane's handler (`fast_trampoline`), called by guest.s with the context and
    /// the exit kind; 0 back means served.
    fast_handler: u64,
    /// The [`FastLane`] that owns this context, while it runs.
    fast_arg: u64,
    _pad: u64,
}

/// Something that runs a guest and serves its TLB exceptions in the fast lane (guest.s): on
/// the exception path itself, with EXL set, interrupts off, the guest's caller-saved
/// registers parked in the per-CPU area and its ASID still in EntryHi.
pub trait FastLane {
    /// The register context to run.
    fn context(&mut self) -> &mut GuestContext;

    /// Serves the guest TLB exception being taken (`refill`: it came through the refill
    /// vector), reading Cause and BadVAddr with [`exit_cause_now`] / [`exit_bad_vaddr_now`].
    /// True: served, the guest resumes at once. False: the exit goes the general way. It
    /// must not fault, must not touch the context, and must not wait for anything another
    /// CPU may hold while it waits for this CPU's guest to exit.
    fn serve_tlb_exception(&mut self, refill: bool) -> bool;
}

/// guest.s calls this with the context [`enter_with_fast_lane`] ran.
///
/// # Safety
/// `ctx.fast_arg` must point at the `V` suspended inside `enter_with_fast_lane`.
unsafe extern "C" fn fast_trampoline<V: FastLane>(ctx: *mut GuestContext, kind: u64) -> u64 {
    // SAFETY: per the contract the lane is alive and its owner is suspended in run_guest
    // until this returns; serve_tlb_exception does not touch the context.
    let lane = unsafe { &mut *((*ctx).fast_arg as *mut V) };
    u64::from(!lane.serve_tlb_exception(kind == EXIT_REFILL))
}

/// Exit through the general exception vector.
pub const EXIT_GENERAL: u64 = 0;
/// Exit through the (X)TLB refill vector.
pub const EXIT_REFILL: u64 = 1;
/// Exit through the debug-exit vector: the guest executed SDBBP (the exit Cause is stale).
pub const EXIT_DEBUG: u64 = 2;

impl GuestContext {
    /// A context with every register zero, starting at `pc`.
    pub const fn new(pc: u64) -> Self {
        Self {
            gpr: [0; 32],
            hi: 0,
            lo: 0,
            pc,
            entry_status: 0,
            entry_hi: 0,
            exit_status: 0,
            exit_cause: 0,
            exit_bad_vaddr: 0,
            exit_kind: 0,
            host: [0; 13],
            fast_handler: 0,
            fast_arg: 0,
            _pad: 0,
        }
    }
}

extern "C" {
    fn run_guest(ctx: *mut GuestContext);
}

global_asm!(
    include_str!("guest.s"),
    ctx_word = const percpu::word_va_offset(percpu::WORD_GUEST_CTX),
    fast_save = const percpu::word_va_offset(percpu::WORD_FAST_SAVE),
    fast_kind = const percpu::word_va_offset(percpu::WORD_FAST_KIND),
    fast_stack = const percpu::word_va_offset(percpu::WORD_FAST_STACK),
    off_fast_handler = const offset_of!(GuestContext, fast_handler),
    off_hi = const offset_of!(GuestContext, hi),
    off_lo = const offset_of!(GuestContext, lo),
    off_pc = const offset_of!(GuestContext, pc),
    off_entry_status = const offset_of!(GuestContext, entry_status),
    off_entry_hi = const offset_of!(GuestContext, entry_hi),
    off_exit_status = const offset_of!(GuestContext, exit_status),
    off_exit_cause = const offset_of!(GuestContext, exit_cause),
    off_exit_bad_vaddr = const offset_of!(GuestContext, exit_bad_vaddr),
    off_exit_kind = const offset_of!(GuestContext, exit_kind),
    off_host = const offset_of!(GuestContext, host),
    kind_general = const EXIT_GENERAL,
    kind_refill = const EXIT_REFILL,
    kind_debug = const EXIT_DEBUG,
);

const _: () = assert!(offset_of!(GuestContext, hi) == 256);

/// Status bits a guest never runs with: kernel/supervisor mode selection, ERL, BEV, and
/// the coprocessor enables (CU0 makes COP0 instructions trap, CU1 off: no FPU).
const GUEST_STATUS_CLEAR: u32 = Status::KSU_MASK.bits()
    | Status::EXL.bits()
    | Status::ERL.bits()
    | Status::BEV.bits()
    | Status::CU0.bits()
    | Status::CU1.bits()
    | Status::IE.bits();

/// The Status a guest runs with: the host's interrupt mask and 64-bit segment enables, user
/// mode, UX (xuseg, so n64 code works), IE (host interrupts preempt the guest) and EXL for
/// the ERET.
pub fn guest_entry_status() -> u64 {
    let host = Status::read().bits();
    let status = (host & !GUEST_STATUS_CLEAR)
        | Status::KSU_USER.bits()
        | Status::UX.bits()
        | Status::EXL.bits()
        | Status::IE.bits();
    u64::from(status)
}

/// Runs the guest of `lane`'s context on this CPU until its next exception that the fast
/// lane does not serve.
///
/// `entry_status` must come from [`guest_entry_status`] and `entry_hi` must carry an ASID in
/// 1..=255 whose root-TLB entries were all built from this guest's translations.
pub fn enter_with_fast_lane<V: FastLane>(lane: &mut V) {
    let this: *mut V = lane;
    // `this` comes from the exclusive borrow, not used again until run_guest returns; the
    // context pointer and the trampoline's lane pointer both derive from it. The guest runs
    // in user mode with the ASID in entry_hi: it reaches only root-TLB entries of that ASID,
    // built from copies of this VM's GPA entries; every exception comes back through
    // guest.s or is served by the lane in between.
    // SAFETY: run_guest saves and restores every callee-saved register, sp, gp, ra and
    // Status (an ordinary extern "C" call to Rust), and the pointers are valid (above).
    unsafe {
        let ctx: *mut GuestContext = (*this).context();
        debug_assert!((*ctx).entry_status & u64::from(Status::KSU_USER.bits()) != 0);
        debug_assert!((*ctx).entry_hi & 0xff != 0);
        let trampoline: unsafe extern "C" fn(*mut GuestContext, u64) -> u64 = fast_trampoline::<V>;
        (*ctx).fast_handler = trampoline as usize as u64;
        (*ctx).fast_arg = this as u64;
        run_guest(ctx);
    }
}

/// The CPU this code runs on (for the guest ASID bookkeeping).
pub fn this_cpu() -> usize {
    super::cpu_id()
}

/// Even/odd page pair base of a guest virtual address (EntryHi.VPN2).
const PAIR_MASK: u64 = !0x1fff;

/// Empties this CPU's refill cache (with a whole-TLB flush).
pub fn refill_cache_clear() {
    percpu::refill_cache_clear();
}

/// Refills the vector tried from `cpu`'s cache (hits and misses).
pub fn refill_cache_attempts(cpu: usize) -> u64 {
    percpu::refill_cache_attempts(cpu)
}

/// Writes the root-TLB half for guest page `gva` under `asid` with EntryLo value `lo`, and
/// the other half with `buddy` if given, else keeping the other half of an existing entry
/// for the same pair (G forced off in both).
/// `known_absent`: the root TLB holds no entry for the pair (a refill for it is being
/// taken right now), so the probe is skipped.
pub fn install_guest_page(gva: u64, asid: u8, lo: u64, buddy: Option<u64>, known_absent: bool) {
    let lo = EntryLo::from_bits_retain(lo).difference(EntryLo::G);
    let buddy = buddy.map(|b| EntryLo::from_bits_retain(b).difference(EntryLo::G));
    let entry_hi = (gva & PAIR_MASK) | u64::from(asid);
    let odd = gva & 0x1000 != 0;
    let mut window = TlbWindow::open();
    let existing = if known_absent {
        None
    } else {
        window.probe(entry_hi)
    };
    let other = match (buddy, existing) {
        (Some(buddy), _) => buddy,
        (None, Some(index)) => {
            let (old0, old1) = window.read_indexed(index);
            if odd {
                old0
            } else {
                old1
            }
        }
        (None, None) => EntryLo::empty(),
    };
    let (lo0, lo1) = if odd { (other, lo) } else { (lo, other) };
    match existing {
        Some(index) => window.write_indexed(index, entry_hi, lo0, lo1),
        None => window.write_random(entry_hi, lo0, lo1),
    }
    percpu::refill_cache_insert(entry_hi, lo0.bits(), lo1.bits());
}

/// Removes the marked halves (`[even, odd]`) of the root-TLB pair for guest virtual
/// `pair_va` under `asid` from this CPU's root TLB and refill cache, wherever either holds
/// it. The caller decides which (hv_emul::derived); this only executes the drop. Returns
/// whether the root TLB held the pair.
pub fn drop_guest_pair(asid: u8, pair_va: u64, halves: [bool; 2]) -> bool {
    let entry_hi = (pair_va & PAIR_MASK) | u64::from(asid);
    let mut window = TlbWindow::open();
    let found = window.probe(entry_hi);
    if let Some(index) = found {
        let (lo0, lo1) = window.read_indexed(index);
        let kept = [lo0, lo1].map(|lo| lo.difference(EntryLo::G));
        let kept = [0, 1].map(|h| if halves[h] { EntryLo::empty() } else { kept[h] });
        if kept.iter().all(|lo| !lo.contains(EntryLo::V)) {
            window.invalidate_indexed(index);
        } else {
            window.write_indexed(index, entry_hi, kept[0], kept[1]);
        }
    }
    drop(window);
    percpu::refill_cache_drop_halves(entry_hi, halves);
    found.is_some()
}

/// Copies a guest register file (32 doublewords) with straight-line loads and stores; the
/// generic memcpy the compiler calls for it costs about 160 instructions, this 64, and the
/// general exit path copies twice per exit.
pub fn copy_gprs(dst: &mut [u64; 32], src: &[u64; 32]) {
    // SAFETY: reads exactly the 256 bytes of `src` and writes exactly those of `dst`, two
    // distinct arrays (one shared and one exclusive borrow); no stack use.
    unsafe {
        core::arch::asm!(
            ".set push",
            ".set noat",
            ".irp n, 0,16,32,48,64,80,96,112,128,144,160,176,192,208,224,240",
            "ld {a}, \\n({src})",
            "ld {b}, \\n+8({src})",
            "sd {a}, \\n({dst})",
            "sd {b}, \\n+8({dst})",
            ".endr",
            ".set pop",
            src = in(reg) src.as_ptr(),
            dst = in(reg) dst.as_mut_ptr(),
            a = out(reg) _,
            b = out(reg) _,
            options(nostack, preserves_flags),
        );
    }
}

/// Cause of the exception being handled (for a fast handler).
pub fn exit_cause_now() -> u64 {
    u64::from(cp0::cause_raw())
}

/// BadVAddr of the exception being handled (for a fast handler).
pub fn exit_bad_vaddr_now() -> u64 {
    cp0::bad_vaddr()
}

/// Reads Count (the host timer) for guest Count emulation.
pub fn host_count() -> u32 {
    cp0::count()
}
