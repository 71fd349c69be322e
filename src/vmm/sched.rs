//! Timer-driven round robin of vCPUs over the host CPUs.
//!
//! One global run queue. Every participating CPU takes the first vCPU that is not waiting
//! and whose VM's CPU affinity (from the layout) includes it,
//! runs it for one slice (until its next host timer tick, a yield, a WAIT or the VM's end)
//! and puts it back at the tail, so a vCPU may run on a different CPU each slice. A vCPU
//! carries its host ASIDs only for the CPU it last ran on (asid.rs), so moving it never
//! takes a stale translation along. CPUs other than 0 join from their idle loop.

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
/// `cpu`, it is not waiting), leaving the others in order.
fn pick(cpu: usize) -> Option<Box<Vcpu>> {
    let mut queue = QUEUE.lock();
    for _ in 0..queue.len() {
        let mut vcpu = queue.pop_front()?;
        let allowed = vcpu.vm.affinity.is_none_or(|mask| mask & (1 << cpu) != 0);
        if !allowed || vcpu.is_waiting() {
            queue.push_back(vcpu);
        } else {
            return Some(vcpu);
        }
    }
    None
}

fn run_on_this_cpu(timeout_ticks: Option<u64>) -> bool {
    let cpu = cpu_id();
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
        let Some(mut vcpu) = pick(cpu) else {
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
        match vcpu.run_slice() {
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
