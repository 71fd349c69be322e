//! The software-managed TLB: size probe, flush, indexed/random writes, and the per-CPU
//! kernel window that the refill handler serves.
//!
//! All TLB work goes through [`TlbWindow`], an RAII guard that disables interrupts and
//! saves EntryHi (the current ASID) and PageMask; dropping it restores both, so no return
//! path can leave the staging registers clobbered (PRA 9.4-9.7, chapter 4 for TLBP/TLBR/
//! TLBWI/TLBWR).
//!
//! A kernel window is one 4 KiB virtual page of mapped kernel space (KSEG2/xkseg) tied to a
//! physical frame. It is not put in the TLB up front: the first access misses, the XTLB
//! refill handler finds the window and writes the entry. This is how the boot self-test
//! proves that a refill is taken and returned from.

use super::cp0::{self, EntryLo};
use super::irq::IrqGuard;
use super::{cpu_id, MAX_CPUS};
use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};
use hv_core::addr::{Hpa, PAGE_SIZE};

/// Number of TLB entries: Config1.MMUSize-1 (bits 30:25) plus Config4.MMUSizeExt when
/// Config4.MMUExtDef says so (PRA 9.42, 9.45).
pub fn entries() -> usize {
    let low = ((cp0::config1() >> 25) & 0x3f) as usize;
    let config4 = cp0::config4();
    let ext = if (config4 >> 14) & 0x3 == 1 {
        (config4 & 0xff) as usize
    } else {
        0
    };
    ((ext << 6) | low) + 1
}

/// Unique, never-matching EntryHi for invalidated entry `index`: distinct KSEG0 pages
/// (KSEG0 is unmapped, so they can never hit).
fn unique_entry_hi(index: usize) -> u64 {
    0xffff_ffff_8000_0000 + ((index as u64) << 13)
}

/// Guard around TLB register work; see the module notes.
#[derive(Debug)]
pub struct TlbWindow {
    saved_entry_hi: u64,
    saved_page_mask: u64,
    _irq: IrqGuard,
}

impl TlbWindow {
    /// Disables interrupts and saves EntryHi/PageMask.
    pub fn open() -> Self {
        let irq = IrqGuard::new();
        Self {
            saved_entry_hi: cp0::entry_hi(),
            saved_page_mask: cp0::page_mask(),
            _irq: irq,
        }
    }

    /// Writes entry `index` with the given values (TLBWI).
    pub fn write_indexed(&mut self, index: usize, entry_hi: u64, lo0: EntryLo, lo1: EntryLo) {
        // Callers write unique invalid entries or kernel windows: nothing the running code
        // relies on changes unless the caller says so.
        // SAFETY: interrupts are off while the guard lives, and Drop restores EntryHi and
        // PageMask.
        unsafe {
            cp0::set_tlb_staging(entry_hi, lo0.bits(), lo1.bits(), 0);
            cp0::set_index(index as u32);
            // nostack: no stack use; no `nomem`: later accesses depend on the new entry.
            asm!("tlbwi", options(nostack));
        }
        cp0::ehb();
    }

    /// Writes a random non-wired entry (TLBWR).
    pub fn write_random(&mut self, entry_hi: u64, lo0: EntryLo, lo1: EntryLo) {
        // SAFETY: as for write_indexed.
        unsafe {
            cp0::set_tlb_staging(entry_hi, lo0.bits(), lo1.bits(), 0);
            // nostack: no stack use; no `nomem`: later accesses depend on the new entry.
            asm!("tlbwr", options(nostack));
        }
        cp0::ehb();
    }

    /// Reads entry `index` (TLBR) and returns its EntryLo0 and EntryLo1.
    pub fn read_indexed(&mut self, index: usize) -> (EntryLo, EntryLo) {
        // SAFETY: TLBR only loads the staging registers (EntryHi, EntryLo0/1, PageMask) from
        // the entry; interrupts are off and Drop restores EntryHi and PageMask.
        unsafe {
            cp0::set_index(index as u32);
            // nomem: TLBR touches only CP0 state; nostack: no stack use.
            asm!("tlbr", options(nomem, nostack));
        }
        cp0::ehb();
        (
            EntryLo::from_bits_retain(cp0::entry_lo0()),
            EntryLo::from_bits_retain(cp0::entry_lo1()),
        )
    }

    /// Replaces entry `index` with a unique entry that never matches.
    pub fn invalidate_indexed(&mut self, index: usize) {
        self.write_indexed(
            index,
            unique_entry_hi(index),
            EntryLo::empty(),
            EntryLo::empty(),
        );
    }

    /// Looks up `entry_hi` (VPN2 + ASID) with TLBP; returns the matching index.
    pub fn probe(&mut self, entry_hi: u64) -> Option<usize> {
        // SAFETY: TLBP only reads the TLB and sets Index; EntryHi is restored on drop.
        unsafe {
            cp0::set_entry_hi(entry_hi);
            // nomem: TLBP reads only TLB state; nostack: no stack use.
            asm!("tlbp", options(nomem, nostack));
        }
        cp0::ehb();
        let index = cp0::index();
        (index & (1 << 31) == 0).then_some(index as usize)
    }
}

impl Drop for TlbWindow {
    fn drop(&mut self) {
        // SAFETY: puts back exactly what `open` saved; interrupts are still off.
        unsafe {
            cp0::set_entry_hi(self.saved_entry_hi);
            cp0::set_page_mask(self.saved_page_mask);
        }
    }
}

/// Entries below this index are wired (see [`set_wired_entry`]); flushes keep them.
static WIRED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Invalidates every TLB entry of this CPU and clears Wired (boot only: it also removes
/// the wired per-CPU mapping, which [`super::percpu::install`] puts back).
pub fn flush_all() {
    // SAFETY: at boot, before anything uses a wired entry.
    unsafe { cp0::set_wired(0) };
    WIRED[cpu_id()].store(0, Ordering::Relaxed);
    flush_unwired();
}

/// Invalidates every TLB entry of this CPU except the wired ones.
pub fn flush_unwired() {
    let mut window = TlbWindow::open();
    let first = WIRED[cpu_id()].load(Ordering::Relaxed) as usize;
    for index in first..entries() {
        window.write_indexed(
            index,
            unique_entry_hi(index),
            EntryLo::empty(),
            EntryLo::empty(),
        );
    }
}

/// Writes global entry `index` (`entry_hi` -> `lo0`, `lo1`, pages of `page_mask`) and makes
/// it and every entry below it wired: TLBWR and the flushes leave them alone from then on.
pub fn set_wired_entry(index: usize, entry_hi: u64, lo0: EntryLo, lo1: EntryLo, page_mask: u64) {
    let _window = TlbWindow::open();
    // SAFETY: interrupts are off while the window lives and its Drop restores EntryHi and
    // PageMask; the entry maps only the caller's per-CPU memory, in kseg3.
    unsafe {
        cp0::set_tlb_staging(
            entry_hi,
            (lo0 | EntryLo::G).bits(),
            (lo1 | EntryLo::G).bits(),
            page_mask,
        );
        cp0::set_index(index as u32);
        // nostack: no stack use; no `nomem`: later accesses depend on the new entry.
        asm!("tlbwi", options(nostack));
    }
    cp0::ehb();
    // SAFETY: the entries below `index + 1` are the wired ones this module set up.
    unsafe { cp0::set_wired(index as u32 + 1) };
    WIRED[cpu_id()].store(index as u64 + 1, Ordering::Relaxed);
}

/// Invalidates the entry mapping virtual page `va` (any ASID, global entries), if present.
pub fn invalidate_va(va: u64) {
    let mut window = TlbWindow::open();
    let entry_hi = va & !0x1fff;
    if let Some(index) = window.probe(entry_hi) {
        window.write_indexed(
            index,
            unique_entry_hi(index),
            EntryLo::empty(),
            EntryLo::empty(),
        );
    }
}

/// One kernel window per CPU: virtual page (0 = none) and the physical frame behind it.
struct KernelWindow {
    va: AtomicU64,
    pa: AtomicU64,
}

static WINDOWS: [KernelWindow; MAX_CPUS] = [const {
    KernelWindow {
        va: AtomicU64::new(0),
        pa: AtomicU64::new(0),
    }
}; MAX_CPUS];

/// Refills served by [`refill_from_window`], per CPU.
static REFILLS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Base of the mapped kernel segment KSEG2 (PRA 4.3): refilled through the XTLB vector
/// when Status.KX is set.
pub const KSEG2_BASE: u64 = 0xffff_ffff_c000_0000;

/// Ties virtual page `va` (in KSEG2 or xkseg, page aligned) to the frame at `pa` for this
/// CPU, replacing any previous window; the TLB entry appears on first access.
pub fn set_window(va: u64, pa: Hpa) {
    let window = &WINDOWS[cpu_id()];
    let old = window.va.swap(0, Ordering::Relaxed);
    if old != 0 {
        invalidate_va(old);
    }
    window.pa.store(pa.raw(), Ordering::Relaxed);
    window.va.store(va & !(PAGE_SIZE - 1), Ordering::Relaxed);
}

/// Removes this CPU's window and its TLB entry.
pub fn clear_window() {
    let old = WINDOWS[cpu_id()].va.swap(0, Ordering::Relaxed);
    if old != 0 {
        invalidate_va(old);
    }
}

/// Number of refills this CPU served.
pub fn refills() -> u64 {
    REFILLS[cpu_id()].load(Ordering::Relaxed)
}

/// Refill handler body: writes the entry for `bad_vaddr` if it lies in this CPU's window.
pub fn refill_from_window(bad_vaddr: u64) -> bool {
    let cpu = cpu_id();
    let window = &WINDOWS[cpu];
    let va = window.va.load(Ordering::Relaxed);
    if va == 0 || bad_vaddr & !(PAGE_SIZE - 1) != va {
        return false;
    }
    let pa = window.pa.load(Ordering::Relaxed);
    let mapped = EntryLo::for_frame(pa, cp0::kseg0_cca(), EntryLo::V | EntryLo::D | EntryLo::G);
    // Even page of the pair goes to EntryLo0, odd to EntryLo1; the other stays invalid.
    let (lo0, lo1) = if va & PAGE_SIZE == 0 {
        (mapped, EntryLo::G)
    } else {
        (EntryLo::G, mapped)
    };
    let mut tlb = TlbWindow::open();
    tlb.write_random(va & !0x1fff, lo0, lo1);
    drop(tlb);
    REFILLS[cpu].fetch_add(1, Ordering::Relaxed);
    true
}
