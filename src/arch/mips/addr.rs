//! Physical-to-virtual translation through the unmapped segments (KSEG0/KSEG1, xkphys).
//!
//! Physical memory below 512 MiB is reachable through the 32-bit compatibility segments
//! (KSEG0 cached, KSEG1 uncached). Anything higher, such as Malta's RAM above the 256 MiB
//! I/O hole, needs xkphys, which only works with Status.KX set (boot.s sets it). The cache
//! attribute used in xkphys is the one firmware already runs KSEG0 with (Config.K0), so
//! both views of the same RAM agree.

use super::cp0;
use hv_core::addr::Hpa;

/// Base of KSEG0 (cached, unmapped, physical 0..512 MiB).
const KSEG0: u64 = 0xffff_ffff_8000_0000;
/// Base of KSEG1 (uncached, unmapped, physical 0..512 MiB).
const KSEG1: u64 = 0xffff_ffff_a000_0000;
/// Size of the physical window KSEG0/KSEG1 cover.
const COMPAT_WINDOW: u64 = 0x2000_0000;
/// xkphys: bits 63:62 = 0b10, bits 61:59 = cache attribute, then the physical address.
const XKPHYS: u64 = 0x8000_0000_0000_0000;

/// Cached kernel virtual address of physical address `pa`.
pub fn phys_to_virt(pa: Hpa) -> u64 {
    if pa.raw() < COMPAT_WINDOW {
        KSEG0 | pa.raw()
    } else {
        XKPHYS | (u64::from(cp0::kseg0_cca()) << 59) | pa.raw()
    }
}

/// Uncached kernel virtual address of a device register at physical address `pa`.
pub fn phys_to_uncached(pa: Hpa) -> u64 {
    if pa.raw() < COMPAT_WINDOW {
        KSEG1 | pa.raw()
    } else {
        // CCA 2 = uncached.
        XKPHYS | (2 << 59) | pa.raw()
    }
}

/// Physical address behind a KSEG0 image address (a symbol of this firmware).
pub fn kseg0_to_phys(va: u64) -> Hpa {
    Hpa::new(va.wrapping_sub(KSEG0))
}

/// Physical address behind any direct-mapped address from [`phys_to_virt`].
pub fn virt_to_phys(va: u64) -> Option<Hpa> {
    if (KSEG0..KSEG0 + COMPAT_WINDOW).contains(&va) {
        Some(Hpa::new(va - KSEG0))
    } else if va >> 62 == 0b10 {
        Some(Hpa::new(va & ((1 << 59) - 1)))
    } else {
        None
    }
}
