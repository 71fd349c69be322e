//! The mipsvisor guest address layout: where a trap-and-emulate guest's segments live.
//!
//! The guest kernel runs in host user mode, so every address it uses must be a host user
//! address below 0x8000_0000. The guest therefore sees a compressed 32-bit layout:
//!
//! | guest virtual range         | guest segment      | translation                         |
//! |-----------------------------|--------------------|-------------------------------------|
//! | `0x0000_0000..0x4000_0000`  | useg (user)        | guest TLB                           |
//! | `0x4000_0000..0x6000_0000`  | KSEG0/KSEG1 window | unmapped: GPA = address & 0x1fff_ffff |
//! | `0x6000_0000..0x8000_0000`  | KSEG2/KSEG3        | guest TLB, kernel mode only         |
//! | anything else               | none               | address error                       |
//!
//! The 512 MiB window serves both KSEG0 and KSEG1 (cached and uncached look the same to a
//! guest). Guest user mode may touch only useg. The same layout is described for guest
//! authors in `docs/guest-abi.md`.

use hv_core::addr::{Gpa, Gva};

use crate::cp0::GuestMode;
use crate::exception::GuestException;
use crate::guest_tlb::{Access, GuestTlb, TlbFault};

/// End of the guest user segment.
pub const GUEST_USEG_END: u64 = 0x4000_0000;
/// Start of the guest KSEG0/KSEG1 window.
pub const GUEST_KSEG0_BASE: u64 = 0x4000_0000;
/// Size of the guest KSEG0/KSEG1 window (512 MiB, the architectural KSEG0 size).
pub const GUEST_KSEG_WINDOW_BYTES: u64 = 0x2000_0000;
/// Mask of the physical-address bits of a KSEG0/KSEG1 address.
pub const GUEST_KSEG_PHYS_MASK: u64 = 0x1fff_ffff;
/// Start of the guest mapped kernel segment (KSEG2/KSEG3).
pub const GUEST_KSEG23_BASE: u64 = 0x6000_0000;
/// End of every guest segment.
pub const GUEST_KSEG23_END: u64 = 0x8000_0000;

/// Which guest segment an address falls in, for a given guest mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// Guest useg: translated by the guest TLB.
    UserMapped,
    /// The unmapped kernel window, at this guest physical address.
    KernelUnmapped(Gpa),
    /// The mapped kernel segment: translated by the guest TLB.
    KernelMapped,
    /// Not accessible in this mode: an address error for the guest.
    Forbidden,
}

/// Classifies `gva` for an access made in guest `mode`.
pub fn classify(gva: Gva, mode: GuestMode) -> Segment {
    let va = gva.raw();
    match (va, mode) {
        (0..GUEST_USEG_END, _) => Segment::UserMapped,
        (GUEST_KSEG0_BASE..GUEST_KSEG23_BASE, GuestMode::Kernel) => {
            Segment::KernelUnmapped(Gpa::new(va & GUEST_KSEG_PHYS_MASK))
        }
        (GUEST_KSEG23_BASE..GUEST_KSEG23_END, GuestMode::Kernel) => Segment::KernelMapped,
        _ => Segment::Forbidden,
    }
}

/// The guest KSEG0 address of guest physical address `phys` (its low 29 bits).
pub const fn kseg0_address(phys: u64) -> u64 {
    GUEST_KSEG0_BASE | (phys & GUEST_KSEG_PHYS_MASK)
}

/// A guest translation with the permission the guest granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestTranslation {
    /// The guest physical address.
    pub gpa: Gpa,
    /// The guest allows stores (the unmapped window, or a TLB entry with D = 1). A host
    /// mapping derived from a translation with `writable == false` must be read-only, so the
    /// guest's first store reaches the hypervisor and becomes a guest TLB Modified exception.
    pub writable: bool,
    /// Translated through the guest TLB (its mapping changes with TLB writes and ASIDs).
    pub via_tlb: bool,
}

/// Translates `gva` the way the guest's own MMU would: the unmapped window directly, the
/// mapped segments through `tlb` under `asid`. A failure is the exception to deliver.
pub fn translate_access(
    gva: Gva,
    mode: GuestMode,
    asid: u8,
    tlb: &GuestTlb,
    access: Access,
) -> Result<GuestTranslation, GuestException> {
    let bad_vaddr = gva.raw();
    match classify(gva, mode) {
        Segment::KernelUnmapped(gpa) => Ok(GuestTranslation {
            gpa,
            writable: true,
            via_tlb: false,
        }),
        Segment::Forbidden => Err(GuestException::AddressError { bad_vaddr, access }),
        Segment::UserMapped | Segment::KernelMapped => match tlb.lookup(gva, asid, access) {
            Ok(hit) => Ok(GuestTranslation {
                gpa: hit.gpa,
                writable: hit.dirty,
                via_tlb: true,
            }),
            Err(TlbFault::Refill) => Err(GuestException::TlbRefill { bad_vaddr, access }),
            Err(TlbFault::Invalid) => Err(GuestException::TlbInvalid { bad_vaddr, access }),
            Err(TlbFault::Modified) => Err(GuestException::TlbModified { bad_vaddr }),
        },
    }
}

/// [`translate_access`] for `gva`, plus the load translation of the other 4 KiB page of its
/// 8 KiB pair (`gva ^ 0x1000`) when that one is valid too, from the same lookup: both pages
/// share every address bit a segment or a TLB entry matches on, so the same segment or the
/// same (lowest matching) entry translates both. Exactly what a second
/// `translate_access(gva ^ 0x1000, .., Access::Load)` would give, at the cost of one.
pub fn translate_with_buddy(
    gva: Gva,
    mode: GuestMode,
    asid: u8,
    tlb: &GuestTlb,
    access: Access,
) -> Result<(GuestTranslation, Option<GuestTranslation>), GuestException> {
    let bad_vaddr = gva.raw();
    let buddy_va = bad_vaddr ^ 0x1000;
    match classify(gva, mode) {
        Segment::KernelUnmapped(gpa) => Ok((
            GuestTranslation {
                gpa,
                writable: true,
                via_tlb: false,
            },
            Some(GuestTranslation {
                gpa: Gpa::new(gpa.raw() ^ 0x1000),
                writable: true,
                via_tlb: false,
            }),
        )),
        Segment::Forbidden => Err(GuestException::AddressError { bad_vaddr, access }),
        Segment::UserMapped | Segment::KernelMapped => match tlb.lookup(gva, asid, access) {
            Ok(hit) => {
                let buddy = tlb
                    .entry(hit.index)
                    .and_then(|entry| entry.translate_half(buddy_va))
                    .map(|(gpa, dirty)| GuestTranslation {
                        gpa,
                        writable: dirty,
                        via_tlb: true,
                    });
                Ok((
                    GuestTranslation {
                        gpa: hit.gpa,
                        writable: hit.dirty,
                        via_tlb: true,
                    },
                    buddy,
                ))
            }
            Err(TlbFault::Refill) => Err(GuestException::TlbRefill { bad_vaddr, access }),
            Err(TlbFault::Invalid) => Err(GuestException::TlbInvalid { bad_vaddr, access }),
            Err(TlbFault::Modified) => Err(GuestException::TlbModified { bad_vaddr }),
        },
    }
}

/// [`translate_access`], keeping only the guest physical address.
pub fn translate(
    gva: Gva,
    mode: GuestMode,
    asid: u8,
    tlb: &GuestTlb,
    access: Access,
) -> Result<Gpa, GuestException> {
    translate_access(gva, mode, asid, tlb, access).map(|t| t.gpa)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cp0::{Cp0, Cp0Config, Cp0Reg};

    #[test]
    fn translate_with_buddy_agrees_with_two_lookups() {
        let mut cp0 = Cp0::new(Cp0Config::default()).unwrap();
        let mut tlb = GuestTlb::new(&cp0);
        // Entry 0: 4 KiB pages at 0x1000_0000, even half valid+dirty, odd half valid clean.
        // Entry 1: 16 KiB pages at 0x6000_0000 (kernel mapped), ASID 5, odd half invalid.
        // Entry 2: 4 KiB pages at 0x2000_0000, odd half invalid.
        let entries: [(u64, u64, u64, u64); 3] = [
            (0, 0x1000_0000, (0x123 << 6) | 0x6, (0x456 << 6) | 0x2),
            (0x6000, 0x6000_0005, (0x800 << 6) | 0x6, 0),
            (0, 0x2000_0000, (0x99 << 6) | 0x2, 0),
        ];
        for (index, &(mask, hi, lo0, lo1)) in entries.iter().enumerate() {
            cp0.set_raw(Cp0Reg::INDEX, index as u64);
            cp0.set_raw(Cp0Reg::PAGE_MASK, mask);
            cp0.set_raw(Cp0Reg::ENTRY_HI, hi);
            cp0.set_raw(Cp0Reg::ENTRY_LO0, lo0);
            cp0.set_raw(Cp0Reg::ENTRY_LO1, lo1);
            let _ = tlb.write_indexed(&cp0).unwrap();
        }
        let vas = [
            0x1000_0000u64,
            0x1000_1ffc,
            0x2000_0010,
            0x2000_1010,
            0x4000_3000,
            0x4123_4567,
            0x6000_0000,
            0x6000_5008,
            0x6000_a000,
            0x7000_0000,
            0x9000_0000,
        ];
        for &va in &vas {
            for mode in [GuestMode::Kernel, GuestMode::User] {
                for asid in [0u8, 5] {
                    for access in [Access::Load, Access::Store] {
                        let gva = Gva::new(va);
                        let one = translate_with_buddy(gva, mode, asid, &tlb, access);
                        let first = translate_access(gva, mode, asid, &tlb, access);
                        let buddy =
                            translate_access(Gva::new(va ^ 0x1000), mode, asid, &tlb, Access::Load);
                        match (one, first) {
                            (Ok((t, b)), Ok(f)) => {
                                assert_eq!(t, f, "{va:#x}");
                                assert_eq!(b, buddy.ok(), "buddy of {va:#x}");
                            }
                            (Err(e), Err(f)) => assert_eq!(e, f, "{va:#x}"),
                            (one, first) => panic!("{va:#x}: {one:?} vs {first:?}"),
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn classify_boundaries() {
        use GuestMode::*;
        let c = |va, mode| classify(Gva::new(va), mode);
        assert_eq!(c(0, User), Segment::UserMapped);
        assert_eq!(c(0x3fff_ffff, User), Segment::UserMapped);
        assert_eq!(c(0x3fff_ffff, Kernel), Segment::UserMapped);
        assert_eq!(c(0x4000_0000, User), Segment::Forbidden);
        assert_eq!(c(0x4000_0000, Kernel), Segment::KernelUnmapped(Gpa::new(0)));
        assert_eq!(
            c(0x5fff_ffff, Kernel),
            Segment::KernelUnmapped(Gpa::new(0x1fff_ffff))
        );
        assert_eq!(c(0x6000_0000, Kernel), Segment::KernelMapped);
        assert_eq!(c(0x6000_0000, User), Segment::Forbidden);
        assert_eq!(c(0x7fff_ffff, Kernel), Segment::KernelMapped);
        assert_eq!(c(0x8000_0000, Kernel), Segment::Forbidden);
        assert_eq!(c(0xffff_ffff_8000_0000, Kernel), Segment::Forbidden);
        assert_eq!(c(u64::MAX, User), Segment::Forbidden);
    }

    #[test]
    fn kseg0_address_relocates_low_bits() {
        assert_eq!(kseg0_address(0x1fc0_0200), 0x5fc0_0200);
        assert_eq!(kseg0_address(0x8000_1000), 0x4000_1000);
    }

    #[test]
    fn translate_through_window_tlb_and_errors() {
        let mut cp0 = Cp0::new(Cp0Config::default()).unwrap();
        let mut tlb = GuestTlb::new(&cp0);
        let load = Access::Load;
        assert_eq!(
            translate(Gva::new(0x4123_4567), GuestMode::Kernel, 0, &tlb, load),
            Ok(Gpa::new(0x0123_4567))
        );
        assert_eq!(
            translate(
                Gva::new(0x4123_4567),
                GuestMode::User,
                0,
                &tlb,
                Access::Store
            ),
            Err(GuestException::AddressError {
                bad_vaddr: 0x4123_4567,
                access: Access::Store
            })
        );
        assert_eq!(
            translate(Gva::new(0x6000_0010), GuestMode::Kernel, 0, &tlb, load),
            Err(GuestException::TlbRefill {
                bad_vaddr: 0x6000_0010,
                access: load
            })
        );
        let _ = cp0.dmtc0(Cp0Reg::ENTRY_HI, 0x1000_0000 | 2);
        let _ = cp0.dmtc0(Cp0Reg::ENTRY_LO0, 0x40 << 6 | 0b010);
        let _ = cp0.dmtc0(Cp0Reg::ENTRY_LO1, 0);
        let _ = tlb.write_indexed(&cp0).unwrap();
        assert_eq!(
            translate(Gva::new(0x1000_0008), GuestMode::User, 2, &tlb, load),
            Ok(Gpa::new(0x4_0008))
        );
        assert_eq!(
            translate(
                Gva::new(0x1000_0008),
                GuestMode::User,
                2,
                &tlb,
                Access::Store
            ),
            Err(GuestException::TlbModified {
                bad_vaddr: 0x1000_0008
            })
        );
        assert_eq!(
            translate(Gva::new(0x1000_1008), GuestMode::User, 2, &tlb, load),
            Err(GuestException::TlbInvalid {
                bad_vaddr: 0x1000_1008,
                access: load
            })
        );
    }
}
