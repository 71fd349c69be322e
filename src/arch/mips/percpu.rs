//! Each CPU's fast-lane page pair: the root refill cache and the exit path's scratch words,
//! reached from the exception vectors at one fixed kernel address on every CPU.
//!
//! Wired TLB entry 0 of each CPU maps [`PERCPU_VA`] (the top 32 KiB of kseg3: a pair of
//! 16 KiB pages, global, never replaced by TLBWR) onto that CPU's own [`PerCpuArea`]. Addresses there are within a 16-bit
//! offset of zero, so the vectors reach a slot as `offset(k1)` with k1 holding only the slot
//! offset, and a header word as `offset($zero)`: no base register to compute. The guest runs
//! in user mode, where kseg3 is an address error, so it can never touch the area.
//!
//! Rust code reaches the same memory through the KSEG0 address of [`PERCPU`]; the area is
//! 32 KiB aligned, so both addresses agree in bits 14:12 and a virtually indexed data cache
//! of up to 32 KiB per way cannot hold two copies of a line.

use super::cp0::{self, EntryLo};
use super::{addr, cpu_id, tlb, MAX_CPUS};
use core::sync::atomic::{AtomicU64, Ordering};

/// Where every CPU sees its own area (kseg3: mapped, kernel only).
pub const PERCPU_VA: u64 = 0xffff_ffff_ffff_8000;
/// Bytes of each of the two pages.
const PAGE_BYTES: usize = 16 << 10;
/// PageMask of the wired entry (16 KiB pages).
const PAGE_MASK_16K: u64 = 0x6000;
/// Slots of the refill cache (the even page). Enough that a guest's code and a 4 MiB
/// working set do not evict each other.
pub const REFILL_SLOTS: usize = 1024;
/// Bytes per slot: the tag (EntryHi), then EntryLo0 and EntryLo1 as 32-bit words.
pub const SLOT_BYTES: usize = 16;
/// Mask giving the slot offset from Context (BadVPN2 = VA[31:13] at bits 22:4).
pub const SLOT_OFFSET_MASK: u64 = ((REFILL_SLOTS * SLOT_BYTES) as u64 - 1) & !0xf;
/// Words of the odd page.
const HEADER_WORDS: usize = PAGE_BYTES / 8;

/// Header word: refill-cache attempts (hits and misses) of the XTLB vector.
pub const WORD_ATTEMPTS: usize = HEADER_WORDS - 1;
/// Header word: the GuestContext this CPU runs or last ran (guest.s).
pub const WORD_GUEST_CTX: usize = HEADER_WORDS - 2;
/// Header word: the fast lane's stack top (a KSEG0 address inside this area).
pub const WORD_FAST_STACK: usize = HEADER_WORDS - 3;
/// Header word: which vector the fast lane was entered from (guest.rs EXIT_*).
pub const WORD_FAST_KIND: usize = HEADER_WORDS - 4;
/// Header words: the guest registers the fast lane saves (GPR `n` at word `n`; HI, LO at
/// 32, 33).
pub const WORD_FAST_SAVE: usize = HEADER_WORDS - 64;
/// Header words below this one are the fast lane's stack.
const FAST_STACK_WORDS_END: usize = WORD_FAST_SAVE;

/// Offset from zero (as the vectors address it) of a slot field, `field` bytes into slot 0.
pub const fn slot_field_va_offset(field: usize) -> i64 {
    field as i64 - 2 * PAGE_BYTES as i64
}

/// Offset from zero (as the vectors address it) of header word `word`.
pub const fn word_va_offset(word: usize) -> i64 {
    (word * 8) as i64 - PAGE_BYTES as i64
}

/// One CPU's area: the even page is the refill cache, the odd page the header words.
#[repr(C, align(32768))]
pub struct PerCpuArea {
    /// Slot `i`: `[tag, lo0 | lo1 << 32]`; tag 0 is empty (no guest EntryHi is 0: guest
    /// ASIDs start at 1).
    slots: [[AtomicU64; 2]; REFILL_SLOTS],
    /// Header words (the `WORD_*` constants).
    words: [AtomicU64; HEADER_WORDS],
}

const _: () = assert!(core::mem::size_of::<PerCpuArea>() == 2 * PAGE_BYTES);
const _: () = assert!(REFILL_SLOTS * SLOT_BYTES == PAGE_BYTES);

/// The areas, one per CPU.
pub static PERCPU: [PerCpuArea; MAX_CPUS] = [const {
    PerCpuArea {
        slots: [const { [const { AtomicU64::new(0) }, const { AtomicU64::new(0) }] }; REFILL_SLOTS],
        words: [const { AtomicU64::new(0) }; HEADER_WORDS],
    }
}; MAX_CPUS];

/// Maps this CPU's area at [`PERCPU_VA`] with wired TLB entry 0 and clears Context.PTEBase
/// (the refill vector uses Context as a plain slot offset). Runs once per CPU at boot, after
/// the TLB flush and before anything can take a TLB refill.
pub fn install() {
    let area = &PERCPU[cpu_id()];
    let pa = addr::kseg0_to_phys(area as *const PerCpuArea as u64).raw();
    let flags = EntryLo::V | EntryLo::D | EntryLo::G;
    let cca = cp0::kseg0_cca();
    tlb::set_wired_entry(
        0,
        PERCPU_VA,
        EntryLo::for_frame(pa, cca, flags),
        EntryLo::for_frame(pa + PAGE_BYTES as u64, cca, flags),
        PAGE_MASK_16K,
    );
    // SAFETY: nothing reads Context but the refill vector, which wants PTEBase = 0.
    unsafe { cp0::set_context(0) };
    let stack_top = area.words[FAST_STACK_WORDS_END..].as_ptr() as u64;
    area.words[WORD_FAST_STACK].store(stack_top, Ordering::Relaxed);
}

/// This CPU's area.
fn local() -> &'static PerCpuArea {
    &PERCPU[cpu_id()]
}

/// Whether `lo` can live in a 32-bit slot word (the vector loads it with LW, which
/// sign-extends): bits 63:31 clear.
fn fits_slot(lo: u64) -> bool {
    lo >> 31 == 0
}

fn slot_of(entry_hi: u64) -> &'static [AtomicU64; 2] {
    &local().slots[((entry_hi >> 13) as usize) % REFILL_SLOTS]
}

/// Remembers root entry `entry_hi` -> (`lo0`, `lo1`) in this CPU's refill cache (or forgets
/// what the slot held for it, when the values do not fit a slot).
pub fn refill_cache_insert(entry_hi: u64, lo0: u64, lo1: u64) {
    let slot = slot_of(entry_hi);
    // Tag last and cleared first: the vector runs only between guest entries on this CPU,
    // never during this update, but keep the slot consistent at every step anyway.
    slot[0].store(0, Ordering::Relaxed);
    if fits_slot(lo0) && fits_slot(lo1) {
        slot[1].store(lo0 | lo1 << 32, Ordering::Relaxed);
        slot[0].store(entry_hi, Ordering::Relaxed);
    }
}

/// Empties this CPU's refill cache (with a whole-TLB flush).
pub fn refill_cache_clear() {
    for slot in &local().slots {
        slot[0].store(0, Ordering::Relaxed);
    }
}

/// Clears the marked halves (`[even, odd]`) of the refill-cache slot of `entry_hi`, if it
/// holds that entry (emptied when no valid half is left).
pub fn refill_cache_drop_halves(entry_hi: u64, halves: [bool; 2]) {
    let slot = slot_of(entry_hi);
    if slot[0].load(Ordering::Relaxed) != entry_hi {
        return;
    }
    let los = slot[1].load(Ordering::Relaxed);
    let mut lo = [los & 0xffff_ffff, los >> 32];
    for (half, drop) in halves.iter().enumerate() {
        if *drop {
            lo[half] = 0;
        }
    }
    // Tag first: the slot is never seen half-updated (see refill_cache_insert).
    slot[0].store(0, Ordering::Relaxed);
    if (lo[0] | lo[1]) & EntryLo::V.bits() != 0 {
        slot[1].store(lo[0] | lo[1] << 32, Ordering::Relaxed);
        slot[0].store(entry_hi, Ordering::Relaxed);
    }
}

/// Refills the XTLB vector tried from `cpu`'s cache (hits and misses).
pub fn refill_cache_attempts(cpu: usize) -> u64 {
    PERCPU[cpu].words[WORD_ATTEMPTS].load(Ordering::Relaxed)
}
