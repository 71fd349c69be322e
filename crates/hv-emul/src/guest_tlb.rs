//! The guest's software TLB and its TLBP/TLBR/TLBWI/TLBWR semantics.
//!
//! Each entry maps an even/odd pair of pages: EntryHi's VPN2 (plus R) under the entry's
//! PageMask, an ASID unless the entry is global, and one EntryLo per half. Matching follows
//! MIPS64 Volume III, "TLB Address Translation": an entry matches a virtual address when the
//! VPN2 bits not covered by its mask are equal and it is global or carries the current ASID.
//! Entries never written since reset are absent (they match nothing), so a guest that does
//! not initialise its TLB sees refills rather than stale junk.
//!
//! **Overlapping entries.** Two entries that could match the same address (their VPN2
//! ranges overlap under the larger of their page masks, and one is global or both carry the
//! same ASID; valid halves or not, as the hardware compares them) are a machine check on
//! real CPUs, raised by the TLBWI/TLBWR that would create the duplicate. This model does the
//! same: such a write is refused with [`TlbOpError::MachineCheck`] and changes nothing (not
//! the TLB, not Random), the emulator reflects a Machine Check exception (ExcCode 24, EPC at
//! the TLB write) and sets Status.TS; the TLB keeps working (TS is a report here; the guest
//! may clear it). So the TLB never holds two entries for one address, and [`GuestTlb::find`]
//! (lowest index first) is unambiguous. The host's copies of guest translations do not rely
//! on this: they are tracked by what they were built from (`derived.rs`).
//!
//! Nothing here reaches the host: translations found give guest *physical* addresses, which
//! the memory core then resolves through the VM's memslots.

use hv_core::addr::{Gpa, Gva};

use crate::cp0::{Cp0, Cp0Effect, Cp0Reg, MAX_TLB_ENTRIES};

/// EntryHi bits compared on lookup: R (63:62) and VPN2 (39:13).
const VPN2_R_MASK: u64 = 0xc000_00ff_ffff_e000;
/// EntryLo.G.
pub const ENTRY_LO_G: u64 = 1 << 0;
/// EntryLo.V.
pub const ENTRY_LO_V: u64 = 1 << 1;
/// EntryLo.D (writable).
pub const ENTRY_LO_D: u64 = 1 << 2;
/// Index.P: set by TLBP when no entry matched.
pub const INDEX_P: u64 = 1 << 31;
/// EntryLo.PFN field mask after shifting right by 6 (36-bit physical addresses).
const PFN_MASK: u64 = 0xff_ffff;

/// One guest TLB entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TlbEntry {
    /// The PageMask the entry was written with (Mask field only).
    pub page_mask: u64,
    /// R, VPN2 (bits under the mask cleared) and ASID.
    pub entry_hi: u64,
    /// EntryLo0 and EntryLo1 without their G bits.
    pub entry_lo: [u64; 2],
    /// Global: ignore the ASID (the AND of both EntryLo G bits at write time).
    pub global: bool,
    /// Written since reset.
    pub present: bool,
}

impl TlbEntry {
    /// Bytes mapped by one half of the pair (4 KiB for PageMask 0).
    pub fn page_size(&self) -> u64 {
        ((self.page_mask | 0x1fff) + 1) >> 1
    }

    /// The virtual range `[start, end)` the whole pair covers, for derived-mapping flushes.
    pub fn va_range(&self) -> (u64, u64) {
        let start = self.entry_hi & VPN2_R_MASK;
        (start, start.wrapping_add(self.page_size() * 2))
    }

    /// The entry's ASID.
    pub fn asid(&self) -> u8 {
        self.entry_hi as u8
    }

    /// The guest physical address of `va` through this entry (which must match it) and
    /// whether its half allows stores; `None` if that half is not valid.
    pub fn translate_half(&self, va: u64) -> Option<(Gpa, bool)> {
        let page_size = self.page_size();
        let lo = self.entry_lo[usize::from(va & page_size != 0)];
        if lo & ENTRY_LO_V == 0 {
            return None;
        }
        let frame_base = ((lo >> 6) & PFN_MASK) << 12;
        let offset_mask = page_size - 1;
        Some((
            Gpa::new((frame_base & !offset_mask) | (va & offset_mask)),
            lo & ENTRY_LO_D != 0,
        ))
    }

    /// Whether this entry and `other` could both match one address (see the module notes):
    /// both present, VPN2 equal above the larger mask, and global or the same ASID.
    pub fn overlaps(&self, other: &TlbEntry) -> bool {
        let compare = VPN2_R_MASK & !(self.page_mask | other.page_mask);
        self.present
            && other.present
            && (self.entry_hi & compare) == (other.entry_hi & compare)
            && (self.global || other.global || self.asid() == other.asid())
    }

    /// Whether this entry translates `va` for `asid`.
    pub fn matches(&self, va: u64, asid: u8) -> bool {
        let compare = VPN2_R_MASK & !self.page_mask;
        self.present
            && (self.entry_hi & compare) == (va & compare)
            && (self.global || self.asid() == asid)
    }
}

/// Kind of access being translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Instruction fetch or load.
    Load,
    /// Store.
    Store,
}

/// A successful guest translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlbHit {
    /// The matching entry's index.
    pub index: usize,
    /// The EntryLo of the half holding the address (G bit included).
    pub entry_lo: u64,
    /// The translated guest physical address.
    pub gpa: Gpa,
    /// Size of the page holding the address.
    pub page_size: u64,
    /// EntryLo.D: the guest allows writes.
    pub dirty: bool,
}

/// Why a guest translation failed; each maps to the guest exception to deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlbFault {
    /// No entry matched: TLB refill.
    Refill,
    /// An entry matched but its half has V = 0: TLB invalid.
    Invalid,
    /// A store hit a valid half with D = 0: TLB modified.
    Modified,
}

impl core::fmt::Display for TlbFault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            TlbFault::Refill => "guest TLB refill",
            TlbFault::Invalid => "guest TLB invalid",
            TlbFault::Modified => "guest TLB modified",
        })
    }
}

/// Errors of the TLB instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlbOpError {
    /// Index (or the Random choice) is not below the TLB size; the operation did nothing.
    IndexOutOfRange(u64),
    /// The write would have made entry `index` a duplicate match of entry `conflict`: a
    /// machine check; the operation did nothing.
    MachineCheck {
        /// Index the write was aimed at.
        index: usize,
        /// The present entry it overlaps.
        conflict: usize,
    },
}

impl core::fmt::Display for TlbOpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TlbOpError::IndexOutOfRange(i) => write!(f, "guest TLB index {i} out of range"),
            TlbOpError::MachineCheck { index, conflict } => write!(
                f,
                "guest TLB write to entry {index} would duplicate entry {conflict}'s match"
            ),
        }
    }
}

/// The result of TLBWI/TLBWR: the caller drops any derived mapping of `old` or `new`'s range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct TlbWrite {
    /// Index written.
    pub index: usize,
    /// The entry that was replaced.
    pub old: TlbEntry,
    /// The entry now in place.
    pub new: TlbEntry,
}

impl TlbWrite {
    /// The guest virtual ranges whose translation the write may have changed: the replaced
    /// entry's (if it was present) and the new one's.
    pub fn changed_ranges(&self) -> [Option<(u64, u64)>; 2] {
        [
            self.old.present.then(|| self.old.va_range()),
            Some(self.new.va_range()),
        ]
    }
}

/// The software guest TLB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestTlb {
    entries: [TlbEntry; MAX_TLB_ENTRIES],
    size: usize,
}

impl GuestTlb {
    /// An empty TLB with the size the guest's CP0 reports.
    pub fn new(cp0: &Cp0) -> Self {
        GuestTlb {
            entries: [TlbEntry::default(); MAX_TLB_ENTRIES],
            size: cp0.tlb_entries(),
        }
    }

    /// Number of entries.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The entry at `index`, if in range.
    pub fn entry(&self, index: usize) -> Option<&TlbEntry> {
        self.entries[..self.size].get(index)
    }

    /// Index of the first entry matching `va` under `asid`.
    pub fn find(&self, va: u64, asid: u8) -> Option<usize> {
        self.entries[..self.size]
            .iter()
            .position(|e| e.matches(va, asid))
    }

    /// Translates guest virtual address `gva` for `asid`.
    pub fn lookup(&self, gva: Gva, asid: u8, access: Access) -> Result<TlbHit, TlbFault> {
        let va = gva.raw();
        let index = self.find(va, asid).ok_or(TlbFault::Refill)?;
        let entry = &self.entries[index];
        let page_size = entry.page_size();
        let odd = va & page_size != 0;
        let lo = entry.entry_lo[usize::from(odd)];
        if lo & ENTRY_LO_V == 0 {
            return Err(TlbFault::Invalid);
        }
        let dirty = lo & ENTRY_LO_D != 0;
        if access == Access::Store && !dirty {
            return Err(TlbFault::Modified);
        }
        let frame_base = ((lo >> 6) & PFN_MASK) << 12;
        let offset_mask = page_size - 1;
        Ok(TlbHit {
            index,
            entry_lo: lo | if entry.global { ENTRY_LO_G } else { 0 },
            gpa: Gpa::new((frame_base & !offset_mask) | (va & offset_mask)),
            page_size,
            dirty,
        })
    }

    /// TLBP: looks up EntryHi (VPN2 and ASID) and sets Index to the match, or Index.P.
    pub fn probe(&self, cp0: &mut Cp0) {
        let hi = cp0.get(Cp0Reg::ENTRY_HI);
        let index = match self.find(hi, hi as u8) {
            Some(i) => i as u64,
            // Index bits are unpredictable on a miss; keep them.
            None => INDEX_P | cp0.get(Cp0Reg::INDEX),
        };
        cp0.set_raw(Cp0Reg::INDEX, index);
    }

    /// TLBR: loads the entry at Index into EntryHi, EntryLo0/1 and PageMask. The ASID may
    /// change, which the returned effect reports.
    pub fn read(&self, cp0: &mut Cp0) -> Result<Cp0Effect, TlbOpError> {
        let index = self.checked_index(cp0.get(Cp0Reg::INDEX) & cp0.tlb_index_mask())?;
        let entry = self.entries[index];
        let old_asid = cp0.asid();
        let g = if entry.global { ENTRY_LO_G } else { 0 };
        cp0.set_raw(Cp0Reg::ENTRY_HI, entry.entry_hi);
        cp0.set_raw(Cp0Reg::ENTRY_LO0, entry.entry_lo[0] | g);
        cp0.set_raw(Cp0Reg::ENTRY_LO1, entry.entry_lo[1] | g);
        cp0.set_raw(Cp0Reg::PAGE_MASK, entry.page_mask);
        Ok(if entry.asid() != old_asid {
            Cp0Effect::AsidChanged {
                old: old_asid,
                new: entry.asid(),
            }
        } else {
            Cp0Effect::None
        })
    }

    /// TLBWI: writes EntryHi, EntryLo0/1 and PageMask to the entry at Index.
    pub fn write_indexed(&mut self, cp0: &Cp0) -> Result<TlbWrite, TlbOpError> {
        let index = self.checked_index(cp0.get(Cp0Reg::INDEX) & cp0.tlb_index_mask())?;
        self.write_at(index, cp0)
    }

    /// TLBWR: writes the entry at Random, then moves Random on (downwards from size - 1 to
    /// Wired, then back to the top), so consecutive TLBWRs spread over the unwired entries.
    pub fn write_random(&mut self, cp0: &mut Cp0) -> Result<TlbWrite, TlbOpError> {
        let top = self.size as u64 - 1;
        let wired = cp0.get(Cp0Reg::WIRED);
        let random = cp0.get(Cp0Reg::RANDOM);
        // Wired >= size is undefined architecturally; fall back to the top entry.
        let index = if wired > top || random > top || random < wired {
            top
        } else {
            random
        };
        let next = if index <= wired || index == 0 {
            top
        } else {
            index - 1
        };
        let index = self.checked_index(index)?;
        let written = self.write_at(index, cp0)?;
        cp0.set_raw(Cp0Reg::RANDOM, next);
        Ok(written)
    }

    fn checked_index(&self, index: u64) -> Result<usize, TlbOpError> {
        usize::try_from(index)
            .ok()
            .filter(|&i| i < self.size)
            .ok_or(TlbOpError::IndexOutOfRange(index))
    }

    fn write_at(&mut self, index: usize, cp0: &Cp0) -> Result<TlbWrite, TlbOpError> {
        let page_mask = cp0.get(Cp0Reg::PAGE_MASK);
        let lo0 = cp0.get(Cp0Reg::ENTRY_LO0);
        let lo1 = cp0.get(Cp0Reg::ENTRY_LO1);
        let hi = cp0.get(Cp0Reg::ENTRY_HI);
        let new = TlbEntry {
            page_mask,
            entry_hi: (hi & VPN2_R_MASK & !page_mask) | (hi & 0xff),
            entry_lo: [lo0 & !ENTRY_LO_G, lo1 & !ENTRY_LO_G],
            global: lo0 & lo1 & ENTRY_LO_G != 0,
            present: true,
        };
        if let Some(conflict) =
            (0..self.size).find(|&i| i != index && self.entries[i].overlaps(&new))
        {
            return Err(TlbOpError::MachineCheck { index, conflict });
        }
        let old = core::mem::replace(&mut self.entries[index], new);
        Ok(TlbWrite { index, old, new })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cp0::Cp0Config;

    fn setup(entries: usize) -> (Cp0, GuestTlb) {
        let cp0 = Cp0::new(Cp0Config {
            tlb_entries: entries,
            ..Cp0Config::default()
        })
        .unwrap();
        let tlb = GuestTlb::new(&cp0);
        (cp0, tlb)
    }

    /// EntryLo for a page frame with C = 3 and the given D, V, G bits.
    fn lo(pfn: u64, d: bool, v: bool, g: bool) -> u64 {
        pfn << 6 | 3 << 3 | u64::from(d) << 2 | u64::from(v) << 1 | u64::from(g)
    }

    fn write(
        cp0: &mut Cp0,
        tlb: &mut GuestTlb,
        index: u64,
        hi: u64,
        lo0: u64,
        lo1: u64,
        mask: u64,
    ) {
        let _ = cp0.dmtc0(Cp0Reg::ENTRY_HI, hi);
        let _ = cp0.dmtc0(Cp0Reg::ENTRY_LO0, lo0);
        let _ = cp0.dmtc0(Cp0Reg::ENTRY_LO1, lo1);
        let _ = cp0.mtc0(Cp0Reg::PAGE_MASK, mask);
        let _ = cp0.mtc0(Cp0Reg::INDEX, index);
        let _ = tlb.write_indexed(cp0).unwrap();
    }

    #[test]
    fn empty_tlb_misses() {
        let (_, tlb) = setup(64);
        assert_eq!(
            tlb.lookup(Gva::new(0), 0, Access::Load),
            Err(TlbFault::Refill)
        );
    }

    #[test]
    fn four_kib_pair_even_and_odd() {
        let (mut cp0, mut tlb) = setup(64);
        write(
            &mut cp0,
            &mut tlb,
            3,
            0x6000_0000 | 7,
            lo(0x100, true, true, false),
            lo(0x200, false, true, false),
            0,
        );
        let even = tlb.lookup(Gva::new(0x6000_0123), 7, Access::Store).unwrap();
        assert_eq!(even.gpa, Gpa::new(0x10_0123));
        assert_eq!(even.index, 3);
        assert_eq!(even.page_size, 0x1000);
        let odd = tlb.lookup(Gva::new(0x6000_1456), 7, Access::Load).unwrap();
        assert_eq!(odd.gpa, Gpa::new(0x20_0456));
        assert!(!odd.dirty);
        // A store to the clean odd page is a TLB Modified.
        assert_eq!(
            tlb.lookup(Gva::new(0x6000_1456), 7, Access::Store),
            Err(TlbFault::Modified)
        );
        // Other ASID: miss. Next pair: miss.
        assert_eq!(
            tlb.lookup(Gva::new(0x6000_0123), 8, Access::Load),
            Err(TlbFault::Refill)
        );
        assert_eq!(
            tlb.lookup(Gva::new(0x6000_2000), 7, Access::Load),
            Err(TlbFault::Refill)
        );
    }

    #[test]
    fn invalid_half() {
        let (mut cp0, mut tlb) = setup(64);
        write(
            &mut cp0,
            &mut tlb,
            0,
            0x2000,
            lo(5, true, true, false),
            lo(6, true, false, false),
            0,
        );
        assert!(tlb.lookup(Gva::new(0x2000), 0, Access::Load).is_ok());
        assert_eq!(
            tlb.lookup(Gva::new(0x3000), 0, Access::Load),
            Err(TlbFault::Invalid)
        );
    }

    #[test]
    fn global_needs_both_g_bits() {
        let (mut cp0, mut tlb) = setup(64);
        write(
            &mut cp0,
            &mut tlb,
            0,
            0x4000 | 1,
            lo(1, true, true, true),
            lo(2, true, true, true),
            0,
        );
        write(
            &mut cp0,
            &mut tlb,
            1,
            0x8000 | 1,
            lo(3, true, true, true),
            lo(4, true, true, false),
            0,
        );
        assert!(tlb.lookup(Gva::new(0x4000), 99, Access::Load).is_ok());
        assert_eq!(
            tlb.lookup(Gva::new(0x8000), 99, Access::Load),
            Err(TlbFault::Refill)
        );
        assert!(tlb.lookup(Gva::new(0x8000), 1, Access::Load).is_ok());
        // TLBR gives G in both EntryLo registers for the global entry.
        let _ = cp0.mtc0(Cp0Reg::INDEX, 0);
        let _ = tlb.read(&mut cp0).unwrap();
        assert_eq!(cp0.get(Cp0Reg::ENTRY_LO0) & ENTRY_LO_G, 1);
        assert_eq!(cp0.get(Cp0Reg::ENTRY_LO1) & ENTRY_LO_G, 1);
        let _ = cp0.mtc0(Cp0Reg::INDEX, 1);
        let _ = tlb.read(&mut cp0).unwrap();
        assert_eq!(cp0.get(Cp0Reg::ENTRY_LO0) & ENTRY_LO_G, 0);
    }

    #[test]
    fn large_pages() {
        // 16 KiB pages (PageMask 0x6000): the pair covers 32 KiB.
        let (mut cp0, mut tlb) = setup(64);
        write(
            &mut cp0,
            &mut tlb,
            0,
            0x6001_0000,
            lo(0x400, true, true, false),
            lo(0x800, true, true, false),
            0x6000,
        );
        let hit = tlb.lookup(Gva::new(0x6001_3ffc), 0, Access::Load).unwrap();
        assert_eq!((hit.gpa, hit.page_size), (Gpa::new(0x40_3ffc), 0x4000));
        let hit = tlb.lookup(Gva::new(0x6001_4010), 0, Access::Load).unwrap();
        assert_eq!(hit.gpa, Gpa::new(0x80_0010));
        assert_eq!(
            tlb.lookup(Gva::new(0x6001_8000), 0, Access::Load),
            Err(TlbFault::Refill)
        );
        // 1 MiB pages (0x1fe000), EntryHi VPN2 bits under the mask are ignored and cleared.
        write(
            &mut cp0,
            &mut tlb,
            1,
            0x6020_6000,
            lo(0x1000, true, true, false),
            lo(0x1100, true, true, false),
            0x1f_e000,
        );
        assert_eq!(tlb.entry(1).unwrap().entry_hi, 0x6020_0000);
        assert_eq!(tlb.entry(1).unwrap().va_range(), (0x6020_0000, 0x6040_0000));
        let hit = tlb.lookup(Gva::new(0x6031_2345), 0, Access::Load).unwrap();
        assert_eq!(hit.gpa, Gpa::new(0x110_0000 + 0x1_2345));
        // PFN bits under the page size are ignored, as on hardware.
        write(
            &mut cp0,
            &mut tlb,
            2,
            0x6100_0000,
            lo(0x1003, true, true, false),
            0,
            0x1f_e000,
        );
        let hit = tlb.lookup(Gva::new(0x6100_0010), 0, Access::Load).unwrap();
        assert_eq!(hit.gpa, Gpa::new(0x100_0010));
    }

    #[test]
    fn probe_hit_and_miss() {
        let (mut cp0, mut tlb) = setup(64);
        write(
            &mut cp0,
            &mut tlb,
            9,
            0x6000_4000 | 3,
            lo(1, true, true, false),
            0,
            0,
        );
        let _ = cp0.dmtc0(Cp0Reg::ENTRY_HI, 0x6000_4000 | 3);
        tlb.probe(&mut cp0);
        assert_eq!(cp0.get(Cp0Reg::INDEX), 9);
        let _ = cp0.dmtc0(Cp0Reg::ENTRY_HI, 0x6000_4000 | 4);
        tlb.probe(&mut cp0);
        assert_eq!(cp0.get(Cp0Reg::INDEX) & INDEX_P, INDEX_P);
    }

    #[test]
    fn read_reports_asid_change() {
        let (mut cp0, mut tlb) = setup(64);
        write(
            &mut cp0,
            &mut tlb,
            2,
            0x6000_0000 | 5,
            lo(1, true, true, false),
            lo(2, false, false, false),
            0x6000,
        );
        let _ = cp0.dmtc0(Cp0Reg::ENTRY_HI, 9);
        let _ = cp0.mtc0(Cp0Reg::PAGE_MASK, 0);
        let _ = cp0.mtc0(Cp0Reg::INDEX, 2);
        assert_eq!(
            tlb.read(&mut cp0),
            Ok(Cp0Effect::AsidChanged { old: 9, new: 5 })
        );
        assert_eq!(cp0.get(Cp0Reg::ENTRY_HI), 0x6000_0005);
        assert_eq!(cp0.get(Cp0Reg::PAGE_MASK), 0x6000);
        assert_eq!(cp0.get(Cp0Reg::ENTRY_LO0), lo(1, true, true, false));
        assert_eq!(tlb.read(&mut cp0), Ok(Cp0Effect::None));
    }

    #[test]
    fn out_of_range_index_does_nothing() {
        let (mut cp0, mut tlb) = setup(48);
        let _ = cp0.mtc0(Cp0Reg::INDEX, 50);
        assert_eq!(
            tlb.write_indexed(&cp0),
            Err(TlbOpError::IndexOutOfRange(50))
        );
        assert_eq!(tlb.read(&mut cp0), Err(TlbOpError::IndexOutOfRange(50)));
    }

    #[test]
    fn random_stays_in_unwired_range() {
        let (mut cp0, mut tlb) = setup(8);
        let _ = cp0.mtc0(Cp0Reg::WIRED, 3);
        let mut seen = [0u32; 8];
        for n in 0..20u64 {
            let _ = cp0.dmtc0(Cp0Reg::ENTRY_HI, 0x10_0000 + (n << 13));
            let w = tlb.write_random(&mut cp0).unwrap();
            seen[w.index] += 1;
        }
        assert_eq!(&seen[..3], &[0, 0, 0]);
        assert!(seen[3..].iter().all(|&n| n == 4));
        // The replaced entry is reported for derived-mapping flushes.
        let _ = cp0.dmtc0(Cp0Reg::ENTRY_HI, 0x7000_0000);
        let w = tlb.write_random(&mut cp0).unwrap();
        assert!(w.old.present);
        assert_eq!(w.new.entry_hi, 0x7000_0000);
    }

    #[test]
    fn duplicate_matches_are_refused_as_machine_checks() {
        let (mut cp0, mut tlb) = setup(16);
        write(
            &mut cp0,
            &mut tlb,
            4,
            0x6000_2000 | 1,
            lo(1, true, true, false),
            0,
            0,
        );
        let try_write = |cp0: &mut Cp0, tlb: &mut GuestTlb, index, hi, g, mask| {
            let _ = cp0.dmtc0(Cp0Reg::ENTRY_HI, hi);
            let _ = cp0.dmtc0(Cp0Reg::ENTRY_LO0, lo(2, true, true, g));
            let _ = cp0.dmtc0(Cp0Reg::ENTRY_LO1, lo(3, true, true, g));
            let _ = cp0.mtc0(Cp0Reg::PAGE_MASK, mask);
            let _ = cp0.mtc0(Cp0Reg::INDEX, index);
            tlb.write_indexed(cp0).map(|w| w.index)
        };
        let mcheck = Err(TlbOpError::MachineCheck {
            index: 7,
            conflict: 4,
        });
        // Same pair, same ASID; a 16 KiB pair covering it under another ASID but global;
        // the same pair under another ASID, one of them global.
        assert_eq!(
            try_write(&mut cp0, &mut tlb, 7, 0x6000_2000 | 1, false, 0),
            mcheck
        );
        assert_eq!(
            try_write(&mut cp0, &mut tlb, 7, 0x6000_0000 | 2, true, 0x6000),
            mcheck
        );
        assert_eq!(
            try_write(&mut cp0, &mut tlb, 7, 0x6000_2000 | 2, true, 0),
            mcheck
        );
        // Nothing was written, Random untouched by the refusals.
        assert!(!tlb.entry(7).unwrap().present);
        // Another ASID, neither global: no duplicate. The neighbouring pair: none either.
        assert_eq!(
            try_write(&mut cp0, &mut tlb, 7, 0x6000_2000 | 2, false, 0),
            Ok(7)
        );
        assert_eq!(
            try_write(&mut cp0, &mut tlb, 8, 0x6000_4000 | 1, false, 0),
            Ok(8)
        );
        // Rewriting entry 4 itself is never a duplicate of itself.
        assert_eq!(
            try_write(&mut cp0, &mut tlb, 4, 0x6000_2000 | 1, false, 0),
            Ok(4)
        );
        // TLBWR refused: Random stays where it was.
        let _ = cp0.dmtc0(Cp0Reg::ENTRY_HI, 0x6000_4000 | 1);
        let random = cp0.get(Cp0Reg::RANDOM);
        assert!(matches!(
            tlb.write_random(&mut cp0),
            Err(TlbOpError::MachineCheck { conflict: 8, .. })
        ));
        assert_eq!(cp0.get(Cp0Reg::RANDOM), random);
    }

    #[test]
    fn random_with_all_but_one_entry_wired() {
        let (mut cp0, mut tlb) = setup(4);
        // Wired's field is 2 bits wide for 4 entries, so the largest value is 3 = size - 1.
        let _ = cp0.mtc0(Cp0Reg::WIRED, 3);
        for _ in 0..3 {
            assert_eq!(tlb.write_random(&mut cp0).unwrap().index, 3);
        }
    }
}
