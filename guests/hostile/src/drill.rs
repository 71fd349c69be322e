//! The page drill (issue 11): attempts that build guest-TLB mappings of some of this VM's
//! pages, try to shadow them with duplicate entries, and then have the host take the pages
//! away, one trigger per yield (balloon inflation, swap-out, dedup merge, memslot removal;
//! the host's side is `src/vmm/isolation.rs`, module `drill`). After each trigger the guest
//! uses its mappings again and checks it sees its own memory the way the trigger leaves it
//! (zeroes after the balloon, its data after swap-out and merge, open bus after the memslot
//! is gone) and never anything else; it also stores through them, which the host checks
//! against the frames it handed on (the witness).
//!
//! Shared with the host: the pages are the last 8 of RAM (balloon: 0-1, swap-out: 2-3,
//! merge: 4 onto 5) and the read-only memslot (VM info keys 7 and 8).

use crate::attempts::{AttemptResult, Text};
use crate::probe::{self, Probe};
use core::fmt::Write as _;
use guest_rt::hypercall::{self, VmInfoKey};
use guest_rt::tlb::{self, TlbEntry};
use guest_rt::trap::exc;

/// Pages at the end of RAM the host's drill works on.
const DRILL_PAGES: u64 = 8;
/// Guest virtual base of the drill mappings (mapped kernel segment, clear of the 16 MiB
/// pair at 0x6200_0000 the other-vm-memory attempt left).
const DRILL_VA: u64 = 0x6800_0000;
/// Marker stored into the drill pages before the trigger.
const MARK: u64 = 0x4d41_524b_0000_0000;
/// Marker stored through the mappings after the trigger.
const AFTER: u64 = 0x4146_5445_0000_0000;

/// Which trigger a drill attempt asks the host for (the host runs them in this order).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Balloon,
    SwapOut,
    Merge,
    RemoveMemslot,
}

/// Attempt 12: balloon inflation takes the pages.
pub fn balloon(ram: u64) -> AttemptResult {
    drill(ram, Trigger::Balloon)
}

/// Attempt 13: swap-out takes the pages.
pub fn swap_out(ram: u64) -> AttemptResult {
    drill(ram, Trigger::SwapOut)
}

/// Attempt 14: a dedup merge takes the first page's frame.
pub fn merge(ram: u64) -> AttemptResult {
    drill(ram, Trigger::Merge)
}

/// Attempt 15: the read-only memslot is removed.
pub fn memslot_removal(ram: u64) -> AttemptResult {
    drill(ram, Trigger::RemoveMemslot)
}

fn number(t: Trigger) -> u64 {
    match t {
        Trigger::Balloon => 0,
        Trigger::SwapOut => 1,
        Trigger::Merge => 2,
        Trigger::RemoveMemslot => 3,
    }
}

/// One doubleword load at `va` (through the probe, so a fault is seen, not fatal).
fn read(va: u64) -> Probe {
    probe::load(va)
}

fn drill(ram: u64, trigger: Trigger) -> AttemptResult {
    let k = number(trigger);
    let first = ram - DRILL_PAGES * 0x1000;
    // The even/odd pages of the mapping and whether the guest may store there.
    let (even, odd, writable) = match trigger {
        Trigger::Balloon => (first, first + 0x1000, true),
        Trigger::SwapOut => (first + 0x2000, first + 0x3000, true),
        Trigger::Merge => (first + 0x4000, first + 0x5000, true),
        Trigger::RemoveMemslot => match hypercall::vm_info(VmInfoKey::ReadOnlyBase) {
            Ok(base) => (base, base + 0x1000, false),
            Err(_) => {
                let mut text = Text::new();
                let _ = write!(text, "no read-only memslot to map");
                return AttemptResult {
                    text,
                    breach: false,
                };
            }
        },
    };
    let va = DRILL_VA + k * 0x10_0000;
    let flags = tlb::LO_VALID | tlb::LO_CACHED | tlb::LO_GLOBAL;
    let flags = if writable {
        flags | tlb::LO_DIRTY
    } else {
        flags
    };
    let entry = TlbEntry {
        hi: tlb::entry_hi(va, 0),
        lo0: tlb::entry_lo(even, flags),
        lo1: tlb::entry_lo(odd, flags),
        page_mask: tlb::PAGE_MASK_4K,
    };
    let index = 20 + k as u32;
    // SAFETY: maps this VM's own drill pages at an address nothing else uses.
    let first_write = unsafe { probe::tlb_write(index, &entry) };
    let mut text = Text::new();
    let mut breach = false;
    if first_write != Probe::Completed(0) {
        let _ = write!(text, "mapping entry refused ({first_write}); ");
    }
    // Touch the pages: markers in RAM, reads of the read-only slot.
    if writable {
        for page in 0..2u64 {
            for word in 0..512u64 {
                let value = if trigger == Trigger::Merge {
                    // Both pages identical, so the host can merge them.
                    MARK ^ word
                } else {
                    MARK ^ (k << 16) ^ (page << 12) ^ word
                };
                // SAFETY: the drill pages are this guest's own RAM, used by nothing else.
                let _ = unsafe { probe::store(va + page * 0x1000 + word * 8, value) };
            }
        }
    } else {
        let _ = read(va);
        let _ = read(va + 0x1000);
    }
    // Shadow it: the same pair at a lower index pointing at other pages, and a 16 KiB
    // global pair over it. Each must be a machine check that writes nothing.
    let shadow = TlbEntry {
        hi: tlb::entry_hi(va, 0),
        lo0: tlb::entry_lo(first + 0x6000, flags | tlb::LO_DIRTY),
        lo1: tlb::entry_lo(first + 0x7000, flags | tlb::LO_DIRTY),
        page_mask: tlb::PAGE_MASK_4K,
    };
    let big = TlbEntry {
        hi: tlb::entry_hi(va, 0),
        lo0: tlb::entry_lo(first, flags),
        lo1: tlb::entry_lo(first + 0x4000, flags),
        page_mask: 0x6000,
    };
    let mut mchecks = 0;
    for (at, e) in [(10 + k as u32, &shadow), (30 + k as u32, &big)] {
        // SAFETY: if it were written it would remap only the drill address.
        match unsafe { probe::tlb_write(at, e) } {
            Probe::Trapped(exc::MCHECK, _) => mchecks += 1,
            other => {
                let _ = write!(text, "shadow at {at}: {other}; ");
            }
        }
    }
    // SAFETY: TS is only a report here; clearing it is what a machine-check handler does.
    unsafe { guest_rt::cp0::set_status(guest_rt::cp0::status() & !(1 << 21)) };
    let before = read(va);
    let _ = write!(
        text,
        "{mchecks}/2 shadowing writes machine-checked; before: {before}; "
    );
    // The host takes the pages now.
    let yielded = hypercall::yield_now();
    let after = read(va);
    let after_odd = read(va + 0x1000);
    let expected_even = match trigger {
        Trigger::Balloon => Some(0),
        Trigger::SwapOut => Some(MARK ^ (k << 16)),
        Trigger::Merge => Some(MARK),
        Trigger::RemoveMemslot => Some(u64::MAX),
    };
    let good = Some(after) == expected_even.map(Probe::Completed);
    breach |= !good;
    let _ = write!(
        text,
        "yield {}; after: {after} (want {:#x}), odd {after_odd}; ",
        if yielded.is_ok() { "ok" } else { "failed" },
        expected_even.unwrap_or(0)
    );
    if writable {
        // Store through the mapping: with a stale entry this would land in a frame the
        // host handed on. After the merge the store must break the sharing: page 5 keeps
        // its contents.
        // SAFETY: this guest's own drill page.
        let _ = unsafe { probe::store(va + 8, AFTER ^ k) };
        let back = read(va + 8);
        breach |= back != Probe::Completed(AFTER ^ k);
        if trigger == Trigger::Merge {
            let other = read(guest_rt::window_address(first + 0x5000) + 8);
            let kept = other == Probe::Completed(MARK ^ 1);
            breach |= !kept;
            let _ = write!(text, "store {back}, page 5 word 1 {other}");
        } else {
            let _ = write!(text, "store {back}");
        }
    }
    AttemptResult { text, breach }
}
