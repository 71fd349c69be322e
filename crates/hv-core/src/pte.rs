//! GPA page-table entries: software tracking bits kept apart from EntryLo hardware bits.
//!
//! A [`GpaPte`] is one 64-bit word of the GPA table. The low [`HW_SHIFT`] bits belong to
//! software (present, write-permitted, accessed/young, modified/dirty); everything above is
//! laid out exactly like a MIPS64 EntryLo register (MIPS64 PRA, "EntryLo0, EntryLo1": bit 0 G,
//! bit 1 V, bit 2 D, bits 3..=5 C, PFN from bit 6), so `EntryLo = pte >> HW_SHIFT` and the
//! software bits can never reach the TLB.
//!
//! The hardware bits are a pure function of the software bits, which makes tracking work:
//! - V is set exactly while the entry is present and young, so an old page faults on any access;
//! - D is set exactly while the entry is dirty *and* write-permitted, so a clean or
//!   write-protected page raises TLB Modified on its first store.
//!
//! The not-present entry is the all-zero word, so a freshly zeroed table is empty. GPA entries
//! never set G: "global" is a property of guest TLB entries, handled by the shadow, not of the
//! GPA->HPA map.
//!
//! EntryLo's PFN counts 4 KiB units whatever the page size, so the entry stores
//! `hfn << (PAGE_SHIFT - 12)`; with 4 KiB pages the PFN bits of the entry equal the host
//! physical address of the frame.

use core::fmt;

use bitflags::bitflags;

use crate::addr::{Hfn, PAGE_SHIFT};

/// Number of low entry bits reserved for software; EntryLo is the entry shifted right by this.
pub const HW_SHIFT: u32 = 6;

/// EntryLo bit positions (MIPS64 PRA, EntryLo register layout).
pub mod entrylo {
    /// Global: the entry matches any ASID.
    pub const G: u64 = 1 << 0;
    /// Valid: the translation may be used.
    pub const V: u64 = 1 << 1;
    /// Dirty: stores are allowed (a clear D raises TLB Modified on a store).
    pub const D: u64 = 1 << 2;
    /// Position of the 3-bit cache coherency attribute.
    pub const C_SHIFT: u32 = 3;
    /// Mask of the cache coherency attribute.
    pub const C_MASK: u64 = 0b111 << C_SHIFT;
    /// Position of the page frame number (in 4 KiB units).
    pub const PFN_SHIFT: u32 = 6;
}

/// Width of the EntryLo PFN this table will store (4 KiB units): 48-bit host physical addresses.
pub const PFN_BITS: u32 = 36;

/// log2 of how many 4 KiB EntryLo PFN units one of our pages spans.
const PFN_UNITS_SHIFT: u32 = PAGE_SHIFT - 12;
/// Where the PFN starts inside the entry.
const PTE_PFN_SHIFT: u32 = HW_SHIFT + entrylo::PFN_SHIFT;
/// The PFN field of an entry.
const PTE_PFN_MASK: u64 = ((1u64 << PFN_BITS) - 1) << PTE_PFN_SHIFT;
/// PFN bits below our page size: always zero, since the PFN comes from an `Hfn`.
const PFN_SUBPAGE_MASK: u64 = ((1 << PFN_UNITS_SHIFT) - 1) << PTE_PFN_SHIFT;
/// The cache attribute field of an entry.
const PTE_C_MASK: u64 = entrylo::C_MASK << HW_SHIFT;

bitflags! {
    /// Software bits of a GPA entry (never visible to the TLB).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct SwBits: u64 {
        /// A GPA->HPA mapping exists.
        const PRESENT = 1 << 0;
        /// The guest is permitted to write (host page writable and slot not read-only).
        const WRITE = 1 << 1;
        /// Young: accessed since it was last aged.
        const ACCESSED = 1 << 2;
        /// Dirty: a guest write was recorded since it was last cleaned.
        const MODIFIED = 1 << 3;
    }
}

bitflags! {
    /// Hardware bits of a GPA entry, at their position inside the entry (EntryLo << HW_SHIFT).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct HwBits: u64 {
        /// EntryLo G (never set in GPA entries).
        const GLOBAL = entrylo::G << HW_SHIFT;
        /// EntryLo V: set exactly while present and young.
        const VALID = entrylo::V << HW_SHIFT;
        /// EntryLo D: set exactly while dirty and write-permitted.
        const DIRTY = entrylo::D << HW_SHIFT;
    }
}

/// A MIPS cache coherency attribute (EntryLo.C, 3 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cca(u8);

impl Cca {
    /// Uncached (C = 2).
    pub const UNCACHED: Cca = Cca(2);
    /// Cacheable, noncoherent, write-back (C = 3): ordinary RAM on a uniprocessor Malta.
    pub const CACHED_NONCOHERENT: Cca = Cca(3);
    /// Cacheable, coherent, write-back, exclusive on write (C = 5) for coherent SMP.
    pub const CACHED_COHERENT: Cca = Cca(5);
    /// Uncached accelerated (C = 7).
    pub const UNCACHED_ACCELERATED: Cca = Cca(7);

    /// A raw attribute; `None` if it does not fit in 3 bits.
    pub const fn new(raw: u8) -> Option<Self> {
        if raw <= 7 {
            Some(Cca(raw))
        } else {
            None
        }
    }

    /// The raw 3-bit value.
    pub const fn raw(self) -> u8 {
        self.0
    }
}

/// Errors building or decoding an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PteError {
    /// The host frame does not fit in the EntryLo PFN field this table supports.
    HfnOutOfRange,
    /// Bits are set that no valid entry sets (reserved bits, G, or anything on a non-present entry).
    StrayBits,
    /// V disagrees with "present and young".
    ValidMismatch,
    /// D disagrees with "dirty and write-permitted".
    DirtyMismatch,
}

impl fmt::Display for PteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PteError::HfnOutOfRange => "host frame number too large for an EntryLo PFN",
            PteError::StrayBits => "entry has bits set that no valid entry sets",
            PteError::ValidMismatch => "entry V bit disagrees with present and young",
            PteError::DirtyMismatch => "entry D bit disagrees with dirty and write-permitted",
        })
    }
}

/// One GPA page-table entry. Always satisfies the V/D invariants (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct GpaPte(u64);

impl GpaPte {
    /// The not-present entry (all zero).
    pub const NONE: GpaPte = GpaPte(0);

    /// A present entry for `hfn`: read-only, old and clean (so V = D = 0).
    pub fn present(hfn: Hfn, cca: Cca) -> Result<Self, PteError> {
        let pfn = pfn_of(hfn)?;
        Ok(GpaPte(
            SwBits::PRESENT.bits()
                | (pfn << PTE_PFN_SHIFT)
                | (u64::from(cca.0) << (entrylo::C_SHIFT + HW_SHIFT)),
        ))
    }

    /// Decodes a raw table word, checking every invariant.
    pub fn from_raw(raw: u64) -> Result<Self, PteError> {
        let pte = GpaPte(raw);
        pte.check()?;
        Ok(pte)
    }

    /// Wraps a word read from a table this crate wrote; invariants are checked in debug builds.
    pub(crate) fn from_table_word(raw: u64) -> Self {
        let pte = GpaPte(raw);
        debug_assert_eq!(pte.check(), Ok(()), "corrupt GPA table word {raw:#x}");
        pte
    }

    /// The raw table word.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// Checks the entry's invariants; the type's API keeps them, this is for tests and decoding.
    pub fn check(self) -> Result<(), PteError> {
        let raw = self.0;
        if raw & SwBits::PRESENT.bits() == 0 {
            return if raw == 0 {
                Ok(())
            } else {
                Err(PteError::StrayBits)
            };
        }
        let known = SwBits::all().bits()
            | HwBits::VALID.bits()
            | HwBits::DIRTY.bits()
            | PTE_C_MASK
            | (PTE_PFN_MASK & !PFN_SUBPAGE_MASK);
        if raw & !known != 0 {
            return Err(PteError::StrayBits);
        }
        if self.hw(HwBits::VALID) != self.sw(SwBits::ACCESSED) {
            return Err(PteError::ValidMismatch);
        }
        if self.hw(HwBits::DIRTY) != (self.sw(SwBits::MODIFIED) && self.sw(SwBits::WRITE)) {
            return Err(PteError::DirtyMismatch);
        }
        Ok(())
    }

    /// Whether a mapping exists.
    pub const fn is_present(self) -> bool {
        self.0 & SwBits::PRESENT.bits() != 0
    }

    /// Whether the guest may write (software permission; D may still be clear).
    pub fn is_writable(self) -> bool {
        self.sw(SwBits::WRITE)
    }

    /// Whether the page was accessed since it was last aged.
    pub fn is_young(self) -> bool {
        self.sw(SwBits::ACCESSED)
    }

    /// Whether a guest write was recorded since the page was last cleaned.
    pub fn is_dirty(self) -> bool {
        self.sw(SwBits::MODIFIED)
    }

    /// The software bits.
    pub fn sw_bits(self) -> SwBits {
        SwBits::from_bits_truncate(self.0)
    }

    /// The hardware V/D/G bits.
    pub fn hw_bits(self) -> HwBits {
        HwBits::from_bits_truncate(self.0)
    }

    /// The host frame, if present.
    pub fn hfn(self) -> Option<Hfn> {
        self.is_present()
            .then(|| Hfn::new((self.0 & PTE_PFN_MASK) >> PTE_PFN_SHIFT >> PFN_UNITS_SHIFT))
    }

    /// The cache attribute, if present.
    pub fn cca(self) -> Option<Cca> {
        // The mask keeps 3 bits, so the narrowing cannot lose anything.
        let raw = ((self.0 & PTE_C_MASK) >> (entrylo::C_SHIFT + HW_SHIFT)) as u8;
        self.is_present().then_some(Cca(raw))
    }

    /// The EntryLo0/1 value for this page: the entry shifted past its software bits.
    /// Zero (not valid) for a not-present entry.
    pub const fn entrylo(self) -> u64 {
        self.0 >> HW_SHIFT
    }

    /// Marks the page accessed: sets ACCESSED and V. No-op if not present.
    #[must_use]
    pub fn mkyoung(self) -> Self {
        self.present_then(|raw| raw | SwBits::ACCESSED.bits() | HwBits::VALID.bits())
    }

    /// Ages the page: clears ACCESSED and V, so the next access faults.
    #[must_use]
    pub fn mkold(self) -> Self {
        GpaPte(self.0 & !(SwBits::ACCESSED.bits() | HwBits::VALID.bits()))
    }

    /// Records a write: sets MODIFIED, and D only if write-permitted. No-op if not present.
    #[must_use]
    pub fn mkdirty(self) -> Self {
        self.present_then(|raw| {
            let raw = raw | SwBits::MODIFIED.bits();
            if raw & SwBits::WRITE.bits() != 0 {
                raw | HwBits::DIRTY.bits()
            } else {
                raw
            }
        })
    }

    /// Cleans the page: clears MODIFIED and D, so the next store faults.
    #[must_use]
    pub fn mkclean(self) -> Self {
        GpaPte(self.0 & !(SwBits::MODIFIED.bits() | HwBits::DIRTY.bits()))
    }

    /// Revokes write permission: clears WRITE and D (MODIFIED is kept: the data is still dirty).
    #[must_use]
    pub fn wrprotect(self) -> Self {
        GpaPte(self.0 & !(SwBits::WRITE.bits() | HwBits::DIRTY.bits()))
    }

    /// Grants write permission: sets WRITE, and D only if already dirty. No-op if not present.
    #[must_use]
    pub fn mkwrite(self) -> Self {
        self.present_then(|raw| {
            let raw = raw | SwBits::WRITE.bits();
            if raw & SwBits::MODIFIED.bits() != 0 {
                raw | HwBits::DIRTY.bits()
            } else {
                raw
            }
        })
    }

    /// The same entry pointing at another host frame (bits kept). No-op if not present.
    pub fn with_hfn(self, hfn: Hfn) -> Result<Self, PteError> {
        let pfn = pfn_of(hfn)?;
        Ok(self.present_then(|raw| (raw & !PTE_PFN_MASK) | (pfn << PTE_PFN_SHIFT)))
    }

    /// The same entry with another cache attribute. No-op if not present.
    #[must_use]
    pub fn with_cca(self, cca: Cca) -> Self {
        self.present_then(|raw| {
            (raw & !PTE_C_MASK) | (u64::from(cca.0) << (entrylo::C_SHIFT + HW_SHIFT))
        })
    }

    /// Whether replacing `self` by `new` can leave a cached translation (TLB or shadow entry)
    /// that grants more than `new` does, so the derived state must be invalidated.
    ///
    /// The rule: a derived translation can only have been built from an entry with V set, and
    /// an EntryLo with V clear translates nothing. So nothing is needed if `self` has V clear
    /// (not present, or old: aging already flushed whatever was cached). Otherwise a flush is
    /// needed if `new` loses V or D, or changes the PFN or cache attribute. Gaining D with
    /// everything else equal needs no flush: a stale entry is only more restrictive and its next
    /// store faults into the fast path, which refreshes it.
    pub fn flush_needed_for(self, new: GpaPte) -> bool {
        if !self.hw(HwBits::VALID) {
            return false;
        }
        let dirty = HwBits::DIRTY.bits();
        let (old_raw, new_raw) = (
            self.0 >> HW_SHIFT << HW_SHIFT,
            new.0 >> HW_SHIFT << HW_SHIFT,
        );
        (old_raw & !dirty) != (new_raw & !dirty) || (old_raw & dirty != 0 && new_raw & dirty == 0)
    }

    fn sw(self, bit: SwBits) -> bool {
        self.0 & bit.bits() != 0
    }

    fn hw(self, bit: HwBits) -> bool {
        self.0 & bit.bits() != 0
    }

    fn present_then(self, f: impl FnOnce(u64) -> u64) -> Self {
        if self.is_present() {
            let new = GpaPte(f(self.0));
            debug_assert_eq!(new.check(), Ok(()), "PTE transform broke an invariant");
            new
        } else {
            self
        }
    }
}

/// The EntryLo PFN (4 KiB units) of `hfn`, if it fits.
fn pfn_of(hfn: Hfn) -> Result<u64, PteError> {
    if hfn.raw() >> (PFN_BITS - PFN_UNITS_SHIFT) != 0 {
        return Err(PteError::HfnOutOfRange);
    }
    Ok(hfn.raw() << PFN_UNITS_SHIFT)
}

impl fmt::Debug for GpaPte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.hfn() {
            None => write!(f, "GpaPte(none)"),
            Some(hfn) => {
                let flag = |set: bool, c: char| if set { c } else { '-' };
                write!(
                    f,
                    "GpaPte({:?} {}{}{} C{} entrylo={:#x})",
                    hfn,
                    flag(self.is_writable(), 'w'),
                    flag(self.is_young(), 'a'),
                    flag(self.is_dirty(), 'm'),
                    self.cca().map_or(0, Cca::raw),
                    self.entrylo()
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> GpaPte {
        GpaPte::present(Hfn::new(0x1234), Cca::CACHED_NONCOHERENT).unwrap()
    }

    #[test]
    fn present_entry_is_old_clean_read_only() {
        let pte = base();
        assert!(pte.is_present());
        assert!(!pte.is_writable() && !pte.is_young() && !pte.is_dirty());
        assert_eq!(pte.hfn(), Some(Hfn::new(0x1234)));
        assert_eq!(pte.cca(), Some(Cca::CACHED_NONCOHERENT));
        // PFN (in 4 KiB units) at bit 6, C=3 at bits 3..=5, G=V=D=0.
        assert_eq!(pte.entrylo(), (0x1234 << (6 + PAGE_SHIFT - 12)) | (3 << 3));
        assert_eq!(pte.check(), Ok(()));
    }

    #[test]
    fn entrylo_encoding_matches_the_register_layout() {
        let pte = base().mkwrite().mkyoung().mkdirty();
        let elo = pte.entrylo();
        assert_eq!(elo & entrylo::G, 0);
        assert_ne!(elo & entrylo::V, 0);
        assert_ne!(elo & entrylo::D, 0);
        assert_eq!((elo & entrylo::C_MASK) >> entrylo::C_SHIFT, 3);
        assert_eq!(elo >> entrylo::PFN_SHIFT, 0x1234 << (PAGE_SHIFT - 12));
        assert_eq!(elo, (0x1234 << (6 + PAGE_SHIFT - 12)) | (3 << 3) | 0b110);
    }

    #[test]
    fn software_bits_never_reach_entrylo() {
        // Every software bit set, and a PFN of 0: EntryLo must only carry V, D and C.
        let pte = GpaPte::present(Hfn::new(0), Cca::UNCACHED)
            .unwrap()
            .mkwrite()
            .mkyoung()
            .mkdirty();
        assert_eq!(pte.sw_bits(), SwBits::all());
        assert_eq!(
            pte.entrylo(),
            entrylo::V | entrylo::D | (2 << entrylo::C_SHIFT)
        );
        assert_eq!(GpaPte::NONE.entrylo(), 0);
    }

    #[test]
    fn valid_tracks_young() {
        let young = base().mkyoung();
        assert!(young.is_young());
        assert!(young.hw_bits().contains(HwBits::VALID));
        let old = young.mkold();
        assert!(!old.is_young());
        assert!(!old.hw_bits().contains(HwBits::VALID));
        assert_eq!(old, base());
    }

    #[test]
    fn dirty_bit_needs_both_modified_and_write() {
        let ro_dirty = base().mkdirty();
        assert!(ro_dirty.is_dirty());
        assert!(!ro_dirty.hw_bits().contains(HwBits::DIRTY));
        let w_clean = base().mkwrite();
        assert!(!w_clean.hw_bits().contains(HwBits::DIRTY));
        // Either order of granting write and dirtying ends with D set.
        assert!(ro_dirty.mkwrite().hw_bits().contains(HwBits::DIRTY));
        assert!(w_clean.mkdirty().hw_bits().contains(HwBits::DIRTY));
        // Write-protecting keeps MODIFIED but drops D.
        let wp = w_clean.mkdirty().wrprotect();
        assert!(wp.is_dirty() && !wp.is_writable());
        assert!(!wp.hw_bits().contains(HwBits::DIRTY));
        // Cleaning keeps WRITE but drops D.
        let cl = w_clean.mkdirty().mkclean();
        assert!(!cl.is_dirty() && cl.is_writable());
        assert!(!cl.hw_bits().contains(HwBits::DIRTY));
    }

    #[test]
    fn transforms_on_none_stay_none() {
        let n = GpaPte::NONE;
        for t in [
            n.mkyoung(),
            n.mkold(),
            n.mkdirty(),
            n.mkclean(),
            n.wrprotect(),
            n.mkwrite(),
            n.with_cca(Cca::UNCACHED),
            n.with_hfn(Hfn::new(3)).unwrap(),
        ] {
            assert_eq!(t, GpaPte::NONE);
        }
        assert_eq!(n.hfn(), None);
        assert_eq!(n.cca(), None);
    }

    #[test]
    fn every_transform_sequence_keeps_the_invariants() {
        // All 6^4 sequences of four transforms from a few starting points.
        type Transform = fn(GpaPte) -> GpaPte;
        let ops: [Transform; 6] = [
            GpaPte::mkyoung,
            GpaPte::mkold,
            GpaPte::mkdirty,
            GpaPte::mkclean,
            GpaPte::wrprotect,
            GpaPte::mkwrite,
        ];
        for start in [base(), base().mkwrite(), GpaPte::NONE] {
            for code in 0..6usize.pow(4) {
                let mut pte = start;
                let mut c = code;
                for _ in 0..4 {
                    pte = ops[c % 6](pte);
                    c /= 6;
                    assert_eq!(pte.check(), Ok(()), "{pte:?}");
                    assert_eq!(pte.is_present(), start.is_present());
                    assert_eq!(pte.hfn(), start.hfn());
                }
            }
        }
    }

    #[test]
    fn from_raw_rejects_broken_entries() {
        let good = base().mkwrite().mkyoung().mkdirty();
        assert_eq!(GpaPte::from_raw(good.raw()), Ok(good));
        assert_eq!(GpaPte::from_raw(0), Ok(GpaPte::NONE));
        // Bits on a not-present entry.
        assert_eq!(
            GpaPte::from_raw(good.raw() & !SwBits::PRESENT.bits()),
            Err(PteError::StrayBits)
        );
        // V without young, young without V.
        assert_eq!(
            GpaPte::from_raw(good.raw() & !SwBits::ACCESSED.bits()),
            Err(PteError::ValidMismatch)
        );
        assert_eq!(
            GpaPte::from_raw(good.raw() & !HwBits::VALID.bits()),
            Err(PteError::ValidMismatch)
        );
        // D without write, D without modified, dirty+write without D.
        assert_eq!(
            GpaPte::from_raw(good.raw() & !SwBits::WRITE.bits()),
            Err(PteError::DirtyMismatch)
        );
        assert_eq!(
            GpaPte::from_raw(good.raw() & !SwBits::MODIFIED.bits()),
            Err(PteError::DirtyMismatch)
        );
        assert_eq!(
            GpaPte::from_raw(good.raw() & !HwBits::DIRTY.bits()),
            Err(PteError::DirtyMismatch)
        );
        // G, a reserved software bit, a bit above the PFN field.
        assert_eq!(
            GpaPte::from_raw(good.raw() | HwBits::GLOBAL.bits()),
            Err(PteError::StrayBits)
        );
        assert_eq!(
            GpaPte::from_raw(good.raw() | 1 << 5),
            Err(PteError::StrayBits)
        );
        assert_eq!(
            GpaPte::from_raw(good.raw() | 1 << 63),
            Err(PteError::StrayBits)
        );
    }

    #[test]
    fn hfn_range_is_checked() {
        let max = Hfn::new((1 << (PFN_BITS - (PAGE_SHIFT - 12))) - 1);
        let pte = GpaPte::present(max, Cca::UNCACHED).unwrap();
        assert_eq!(pte.hfn(), Some(max));
        assert_eq!(pte.check(), Ok(()));
        let too_big = max.checked_add(1).unwrap();
        assert_eq!(
            GpaPte::present(too_big, Cca::UNCACHED),
            Err(PteError::HfnOutOfRange)
        );
        assert_eq!(pte.with_hfn(too_big), Err(PteError::HfnOutOfRange));
        assert_eq!(pte.with_hfn(Hfn::new(7)).unwrap().hfn(), Some(Hfn::new(7)));
    }

    #[test]
    fn cca_is_three_bits() {
        assert_eq!(Cca::new(7), Some(Cca::UNCACHED_ACCELERATED));
        assert_eq!(Cca::new(8), None);
        let pte = base().with_cca(Cca::UNCACHED);
        assert_eq!(pte.cca(), Some(Cca::UNCACHED));
        assert_eq!(pte.hfn(), base().hfn());
    }

    #[test]
    fn flush_rule() {
        let old_entry = base().mkwrite().mkdirty();
        let young = old_entry.mkyoung();
        // Nothing cached from a not-present or old entry, whatever the new one is.
        assert!(!GpaPte::NONE.flush_needed_for(young));
        assert!(!old_entry.flush_needed_for(GpaPte::NONE));
        assert!(!old_entry.flush_needed_for(old_entry.with_hfn(Hfn::new(9)).unwrap()));
        // From a young entry: losing V, D, or changing PFN/C needs a flush.
        assert!(young.flush_needed_for(GpaPte::NONE));
        assert!(young.flush_needed_for(young.mkold()));
        assert!(young.flush_needed_for(young.mkclean()));
        assert!(young.flush_needed_for(young.wrprotect()));
        assert!(young.flush_needed_for(young.with_hfn(Hfn::new(9)).unwrap()));
        assert!(young.flush_needed_for(young.with_cca(Cca::UNCACHED)));
        // Identical, or only gaining D, needs none.
        assert!(!young.flush_needed_for(young));
        let young_clean = young.mkclean();
        assert!(!young_clean.flush_needed_for(young));
        // Software-only changes (e.g. write-protecting an already clean page) need none.
        assert!(!young_clean.flush_needed_for(young_clean.wrprotect()));
        // Dropping MODIFIED on a read-only page changes no hardware bit.
        let ro_dirty = base().mkyoung().mkdirty();
        assert!(!ro_dirty.flush_needed_for(ro_dirty.mkclean()));
    }
}
