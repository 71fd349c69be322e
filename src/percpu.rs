//! Per-CPU data, indexed by EBase.CPUNum.
//!
//! Plain atomics only: each CPU writes its own slot, CPU 0 reads them all. The mailbox is
//! how CPU 0 talks to a CPU sitting in its idle loop (Malta has no IPIs; the CPU notices
//! the message when its timer wakes it from WAIT).

use crate::arch::{cpu_id, MAX_CPUS};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::Once;

/// State of one CPU.
#[derive(Debug)]
pub struct PerCpu {
    /// The CPU finished bring-up and runs its idle loop.
    pub online: AtomicBool,
    /// Result of the CPU's exception self-test (set once).
    pub selftest: Once<Result<(), &'static str>>,
    /// Last message number CPU 0 posted.
    pub mailbox: AtomicU64,
    /// Last message number this CPU handled.
    pub ack: AtomicU64,
}

impl PerCpu {
    const fn new() -> Self {
        Self {
            online: AtomicBool::new(false),
            selftest: Once::new(),
            mailbox: AtomicU64::new(0),
            ack: AtomicU64::new(0),
        }
    }
}

static PER_CPU: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];

/// This CPU's data.
pub fn this() -> &'static PerCpu {
    &PER_CPU[cpu_id()]
}

/// Data of CPU `cpu` (panics on a number at or above `MAX_CPUS`: a caller bug).
pub fn get(cpu: usize) -> &'static PerCpu {
    &PER_CPU[cpu]
}

/// Number of CPUs that reached their idle loop.
pub fn online_count() -> usize {
    PER_CPU
        .iter()
        .filter(|c| c.online.load(Ordering::Acquire))
        .count()
}
