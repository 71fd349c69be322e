//! Everything that touches MIPS hardware: boot entry, CP0, TLB, caches, exceptions, timer.
//!
//! The rest of the firmware talks to the CPU only through the small named interfaces
//! re-exported here; all `unsafe` that concerns registers and raw addresses lives in this
//! directory (plus the UART MMIO driver).

pub mod addr;
pub mod bench_guest;
pub mod boot;
pub mod cache;
pub mod cp0;
pub mod debug_vector;
pub mod guest;
pub mod guest_mem;
pub mod irq;
pub mod percpu;
pub mod probe;
pub mod semihost;
pub mod sidebyside;
pub mod timer;
pub mod tlb;
pub mod trap;
pub mod vcpu_test_guest;

/// Most CPUs the firmware brings up; further ones stay parked in boot.s.
pub const MAX_CPUS: usize = 8;

/// The number of the CPU running this code (EBase.CPUNum), below [`MAX_CPUS`].
pub fn cpu_id() -> usize {
    cp0::EBase::read().cpu_num()
}

/// Sleeps until the next interrupt (WAIT). Interrupts must be enabled or it never returns.
pub fn wait_for_interrupt() {
    // SAFETY: WAIT only idles the pipeline until an interrupt is pending.
    unsafe {
        // No `nomem`: the interrupt handler that ends the wait changes memory that the
        // caller reads afterwards. nostack: no stack use.
        core::arch::asm!("wait", options(nostack));
    }
}
