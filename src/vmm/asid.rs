//! Host ASIDs for guest mappings: per CPU, handed out in generations.
//!
//! Each vCPU runs with two host ASIDs on the CPU it is on: one while the guest is in its
//! kernel mode (KSEG0 window, mapped kernel segment and useg entries) and one while it is in
//! its user mode (useg entries only), so guest-user code can never hit a guest-kernel entry.
//! ASIDs 1..=255 are handed out in order on each CPU; when they run out, the CPU starts a new
//! generation and flushes its whole TLB, so an ASID is never reused while entries made under
//! it could remain.
//!
//! A vCPU's pair is valid only on the CPU it was taken on, in that CPU's generation, for the
//! VM's MMU generation and the vCPU's own invalidation count it was taken under. Anything
//! else (migration, a remote flush, a guest ASID change, a guest TLB write we cannot undo
//! precisely) simply takes a fresh pair: entries under the old pair are dead from then on.

use crate::arch::{tlb, MAX_CPUS};
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Mutex;

/// Smallest ASID used for guests (0 is left to the host).
const FIRST_GUEST_ASID: u16 = 1;
/// One past the largest ASID (8-bit ASIDs).
const ASID_LIMIT: u16 = 256;

#[derive(Debug, Clone, Copy)]
struct CpuAsids {
    generation: u64,
    next: u16,
}

static CPU_ASIDS: [Mutex<CpuAsids>; MAX_CPUS] = [const {
    Mutex::new(CpuAsids {
        generation: 1,
        next: FIRST_GUEST_ASID,
    })
}; MAX_CPUS];

/// Each CPU's current generation, readable without the lock (only that CPU changes it, under
/// the lock): the validity check runs before every guest entry.
static CPU_GENERATION: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(1) }; MAX_CPUS];

/// Generation rollovers (whole-TLB flushes) on every CPU together, for statistics.
static ROLLOVERS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Number of ASID generation rollovers so far.
pub fn rollovers() -> u64 {
    ROLLOVERS.load(core::sync::atomic::Ordering::Relaxed)
}

/// The host ASIDs of one vCPU and what they are valid for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsidPair {
    cpu: usize,
    cpu_generation: u64,
    vm_generation: u64,
    local_generation: u64,
    /// ASID while the guest is in kernel mode.
    pub kernel: u8,
    /// ASID while the guest is in user mode.
    pub user: u8,
}

impl AsidPair {
    /// Whether the pair may still be used on `cpu` for these generations.
    fn valid(&self, cpu: usize, vm_generation: u64, local_generation: u64) -> bool {
        self.cpu == cpu
            && self.vm_generation == vm_generation
            && self.local_generation == local_generation
            && CPU_GENERATION[cpu].load(Ordering::Relaxed) == self.cpu_generation
    }
}

/// Returns `current` if still valid on `cpu`, otherwise a fresh pair from this CPU.
/// Must run on `cpu` (a rollover flushes this CPU's TLB).
pub fn ensure(
    current: Option<AsidPair>,
    cpu: usize,
    vm_generation: u64,
    local_generation: u64,
) -> AsidPair {
    if let Some(pair) = current.filter(|p| p.valid(cpu, vm_generation, local_generation)) {
        return pair;
    }
    let mut state = CPU_ASIDS[cpu].lock();
    if state.next + 2 > ASID_LIMIT {
        state.generation += 1;
        CPU_GENERATION[cpu].store(state.generation, Ordering::Relaxed);
        state.next = FIRST_GUEST_ASID;
        tlb::flush_unwired();
        crate::arch::guest::refill_cache_clear();
        ROLLOVERS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    }
    let kernel = state.next as u8;
    let user = (state.next + 1) as u8;
    state.next += 2;
    AsidPair {
        cpu,
        cpu_generation: state.generation,
        vm_generation,
        local_generation,
        kernel,
        user,
    }
}
