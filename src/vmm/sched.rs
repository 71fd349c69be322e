//! Timer-driven round robin of vCPUs over the host CPUs.
//!
//! One global run queue. Every participating CPU takes the first vCPU that is not waiting
//! and whose VM's CPU affinity (from the layout) includes it,
//! runs it for one slice (until its next host timer tick, a yield, a WAIT or the VM's end)
//! and puts it back at the tail, so a vCPU may run on a different CPU each slice. A vCPU
//! carries its host ASIDs only for the CPU it last ran on (asid.rs), so moving it never
//! takes a stale translation along. CPUs other than 0 join from their idle loop.
//!
//! While a service scenario runs (`services::active`), CPU 0 belongs to the memory
//! services when another CPU is online: it takes the services rounds and runs only vCPUs
//! whose VM may run on no other online CPU (an affinity of CPU 0 alone still works). With
//! one CPU, CPU 0 runs every vCPU and takes a due round between two slices.

use super::vcpu::{SliceEnd, Vcpu};
use crate::arch::{self, cp0, cpu_id, MAX_CPUS};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use spin::Mutex;

static QUEUE: Mutex<VecDeque<Box<Vcpu>>> = Mutex::new(VecDeque::new());
/// vCPUs not finished yet.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Secondary CPUs may join.
static OPEN: AtomicBool = AtomicBool::new(false);
/// Slices run per CPU.
static SLICES: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Slices that ran a vCPU on another CPU than its previous slice.
static MIGRATIONS: AtomicU64 = AtomicU64::new(0);

/// Queues `vcpus` and lets every CPU run them; returns when all have finished or
/// `timeout_ticks` Count ticks have passed (then `false`; unfinished vCPUs stay queued).
pub fn run_all(vcpus: Vec<Vcpu>, timeout_ticks: u64) -> bool {
    {
        let mut queue = QUEUE.lock();
        LIVE.fetch_add(vcpus.len(), Ordering::AcqRel);
        for vcpu in vcpus {
            queue.push_back(Box::new(vcpu));
        }
    }
    OPEN.store(true, Ordering::Release);
    let finished = run_on_this_cpu(Some(timeout_ticks));
    OPEN.store(false, Ordering::Release);
    finished
}

/// Called from a secondary CPU's idle loop: runs vCPUs while there are any.
pub fn idle_hook() {
    if OPEN.load(Ordering::Acquire) {
        run_on_this_cpu(None);
    }
}

/// Number of slices each CPU ran, for CPUs `0..cpus`.
pub fn slices(cpus: usize) -> Vec<u64> {
    SLICES[..cpus.min(MAX_CPUS)]
        .iter()
        .map(|s| s.load(Ordering::Relaxed))
        .collect()
}

/// Number of vCPU moves between CPUs.
pub fn migrations() -> u64 {
    MIGRATIONS.load(Ordering::Relaxed)
}

/// Takes the first vCPU that may and can run on `cpu` now (its VM's CPU affinity allows
/// `cpu` and none of the CPUs in `elsewhere`, it is not waiting), leaving the others in
/// order.
fn pick(cpu: usize, elsewhere: u64) -> Option<Box<Vcpu>> {
    let mut queue = QUEUE.lock();
    for _ in 0..queue.len() {
        let mut vcpu = queue.pop_front()?;
        let mask = vcpu.vm.affinity.unwrap_or(u64::MAX);
        let allowed = mask & (1 << cpu) != 0 && mask & elsewhere == 0;
        // A vCPU whose watchdog ran out runs even if it waits: its slice stops it.
        if !allowed || (vcpu.is_waiting() && !vcpu.watchdog_expired()) {
            queue.push_back(vcpu);
        } else {
            return Some(vcpu);
        }
    }
    None
}

/// CPUs other than 0 that are online, as a mask.
fn other_online_cpus() -> u64 {
    let online = crate::percpu::online_count().min(MAX_CPUS);
    1u64.checked_shl(online as u32)
        .map_or(u64::MAX, |bit| bit - 1)
        & !1
}

fn run_on_this_cpu(timeout_ticks: Option<u64>) -> bool {
    let cpu = cpu_id();
    // CPU 0 in a service scenario: rounds first, and leave to the other CPUs every vCPU
    // they may run.
    let services_here = cpu == 0 && crate::services::active();
    let elsewhere = if services_here {
        other_online_cpus()
    } else {
        0
    };
    let start = cp0::count();
    let mut elapsed: u64 = 0;
    let mut last = start;
    loop {
        if LIVE.load(Ordering::Acquire) == 0 {
            return true;
        }
        if !OPEN.load(Ordering::Acquire) && timeout_ticks.is_none() {
            return false;
        }
        let now = cp0::count();
        elapsed += u64::from(now.wrapping_sub(last));
        last = now;
        if timeout_ticks.is_some_and(|limit| elapsed >= limit) {
            return false;
        }
        if services_here && crate::services::round_due() {
            crate::services::tick();
            continue;
        }
        let Some(mut vcpu) = pick(cpu, elsewhere) else {
            // Nothing runnable: sleep until the next tick (a waiting guest's timer is
            // checked then).
            arch::wait_for_interrupt();
            continue;
        };
        SLICES[cpu].fetch_add(1, Ordering::Relaxed);
        if vcpu.last_cpu.is_some_and(|previous| previous != cpu) {
            MIGRATIONS.fetch_add(1, Ordering::Relaxed);
        }
        vcpu.last_cpu = Some(cpu);
        let began = cp0::count();
        vcpu.vm.slice_started(began);
        let end = vcpu.run_slice();
        vcpu.vm.stats.cpu_ticks.fetch_add(
            u64::from(cp0::count().wrapping_sub(began)),
            Ordering::Relaxed,
        );
        match end {
            SliceEnd::Finished => {
                LIVE.fetch_sub(1, Ordering::AcqRel);
            }
            SliceEnd::Preempted | SliceEnd::Yielded | SliceEnd::Waiting => {
                QUEUE.lock().push_back(vcpu);
            }
        }
    }
}

/// Drops every queued vCPU (after a timeout), returning how many there were.
pub fn drain() -> usize {
    let mut queue = QUEUE.lock();
    let count = queue.len();
    queue.clear();
    LIVE.store(0, Ordering::Release);
    count
}
