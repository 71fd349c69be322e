//! The test guest's address spaces: a small software page table (a list of linear regions)
//! and the TLB refill/invalid handling that loads the guest TLB from it.
//!
//! User regions belong to [`USER_ASID`]; the mapped kernel segment (0x6000_0000..) is
//! global. Every refill writes both pages of a pair (a page outside every region gets
//! V = 0), so a TLB invalid exception means a page that is not mapped at all, unless the
//! test deliberately planted an invalid entry.

use core::sync::atomic::{AtomicU64, Ordering};
use guest_rt::tlb::{self, TlbEntry};

/// ASID of the kernel (its mapped kernel segment is global, so this only matters for
/// keeping user entries out of the kernel's view).
pub const KERNEL_ASID: u8 = 1;
/// ASID of the user program.
pub const USER_ASID: u8 = 2;

/// Where the user program's code page is mapped.
pub const USER_CODE_VA: u64 = 0x0040_0000;
/// User data segment (the program's fixed data address).
pub const USER_DATA_VA: u64 = 0x1000_0000;
/// User data size: 16 pages.
pub const USER_DATA_BYTES: u64 = 0x1_0000;
/// User stack pages (one page pair just below the window's user-invisible boundary).
pub const USER_STACK_VA: u64 = 0x3fff_c000;
/// User stack size.
pub const USER_STACK_BYTES: u64 = 0x2000;
/// Start of the mapped kernel segment.
pub const KSEG2_VA: u64 = 0x6000_0000;

/// Guest RAM the user segments use, right after the image: data, then stack.
pub const USER_AREA_BYTES: u64 = USER_DATA_BYTES + USER_STACK_BYTES;

const PAGE: u64 = 0x1000;

/// One linear mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First virtual address (page aligned).
    pub va: u64,
    /// Length in bytes (page multiple).
    pub len: u64,
    /// Guest physical address of `va`.
    pub gpa: u64,
    /// `Some(asid)` for a user region, `None` for a global one.
    pub asid: Option<u8>,
    /// Whether stores are allowed (EntryLo.D).
    pub writable: bool,
}

impl Region {
    fn contains(&self, va: u64, asid: u8) -> bool {
        va >= self.va && va - self.va < self.len && self.asid.is_none_or(|a| a == asid)
    }

    fn entry_lo(&self, va: u64) -> u64 {
        let mut flags = tlb::LO_VALID | tlb::LO_CACHED;
        if self.writable {
            flags |= tlb::LO_DIRTY;
        }
        if self.asid.is_none() {
            flags |= tlb::LO_GLOBAL;
        }
        tlb::entry_lo(self.gpa + (va & !(PAGE - 1)) - self.va, flags)
    }
}

extern "C" {
    static testguest_user_prog: u8;
}

static KSEG2_GPA: AtomicU64 = AtomicU64::new(0);
static KSEG2_LEN: AtomicU64 = AtomicU64::new(0);

/// Maps `len` bytes at [`KSEG2_VA`] onto guest RAM at `gpa` (both page aligned).
pub fn set_kseg2(gpa: u64, len: u64) {
    KSEG2_GPA.store(gpa, Ordering::Relaxed);
    KSEG2_LEN.store(len, Ordering::Relaxed);
}

/// Guest physical address of the user data segment.
pub fn user_data_gpa() -> u64 {
    guest_rt::image_end_gpa()
}

/// The page table.
pub fn regions() -> [Region; 4] {
    let code_gpa = (&raw const testguest_user_prog as u64) & guest_rt::WINDOW_GPA_MASK;
    let user_data = user_data_gpa();
    [
        Region {
            va: USER_CODE_VA,
            len: PAGE,
            gpa: code_gpa,
            asid: Some(USER_ASID),
            writable: false,
        },
        Region {
            va: USER_DATA_VA,
            len: USER_DATA_BYTES,
            gpa: user_data,
            asid: Some(USER_ASID),
            writable: true,
        },
        Region {
            va: USER_STACK_VA,
            len: USER_STACK_BYTES,
            gpa: user_data + USER_DATA_BYTES,
            asid: Some(USER_ASID),
            writable: true,
        },
        Region {
            va: KSEG2_VA,
            len: KSEG2_LEN.load(Ordering::Relaxed),
            gpa: KSEG2_GPA.load(Ordering::Relaxed),
            asid: None,
            writable: true,
        },
    ]
}

/// The EntryLo of the page holding `va` in address space `asid`, or 0 if unmapped.
fn lookup(va: u64, asid: u8) -> u64 {
    regions()
        .iter()
        .find(|r| r.contains(va, asid))
        .map_or(0, |r| r.entry_lo(va))
}

/// The TLB entry for the page pair holding `va`, or `None` if neither page is mapped.
pub fn pair_entry(va: u64, asid: u8) -> Option<TlbEntry> {
    let even = va & !(2 * PAGE - 1);
    let mut lo0 = lookup(even, asid);
    let mut lo1 = lookup(even + PAGE, asid);
    if lo0 == 0 && lo1 == 0 {
        return None;
    }
    // The entry is global only if both halves say G: an unmapped half next to a global
    // page gets G (and V = 0) so the mapped half stays global.
    if (lo0 | lo1) & tlb::LO_GLOBAL != 0 {
        lo0 |= tlb::LO_GLOBAL;
        lo1 |= tlb::LO_GLOBAL;
    }
    Some(TlbEntry {
        hi: tlb::entry_hi(even, asid),
        lo0,
        lo1,
        page_mask: tlb::PAGE_MASK_4K,
    })
}

/// How a TLB exception was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// A new entry was written at a random index (refill).
    Random,
    /// An existing entry for the pair was rewritten in place (invalid).
    InPlace,
    /// The address is not mapped for this ASID.
    Unmapped,
}

/// Loads the translation of `va` for `asid` into the TLB: in place if the TLB already
/// holds an entry for the pair (so no duplicate can arise), else at a random index.
pub fn fill(va: u64, asid: u8) -> Fill {
    let Some(entry) = pair_entry(va, asid) else {
        return Fill::Unmapped;
    };
    match tlb::probe(entry.hi) {
        Some(index) => {
            // SAFETY: the entry maps exactly what the page table says; nothing borrowed is
            // remapped (the guest's Rust data lives in the window).
            unsafe { tlb::write_indexed(index, &entry) };
            Fill::InPlace
        }
        None => {
            // SAFETY: as above.
            unsafe { tlb::write_random(&entry) };
            Fill::Random
        }
    }
}
