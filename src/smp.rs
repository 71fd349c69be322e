//! SMP: waiting for the CPUs to check in, the idle loop (which also joins the vCPU
//! scheduler when it has work), and mailbox pings.
//!
//! The waits here sleep between polls ([`timer::poll_pause`]) rather than spin, so the
//! CPUs they wait for get to run under QEMU's `-icount` round-robin.

use crate::arch::{self, cp0, timer, MAX_CPUS};
use crate::percpu;
use core::sync::atomic::Ordering;

/// The idle loop every CPU other than 0 ends in: sleep until the timer wakes it, answer
/// mailbox messages.
pub fn idle_loop() -> ! {
    let me = percpu::this();
    loop {
        arch::wait_for_interrupt();
        crate::vmm::sched::idle_hook();
        let message = me.mailbox.load(Ordering::Acquire);
        if message != me.ack.load(Ordering::Relaxed) {
            // Release: pairs with the Acquire in `ping` so CPU 0 sees our earlier work.
            me.ack.store(message, Ordering::Release);
        }
    }
}

/// Waits until `expected` CPUs are online (or, with no expectation, for a settle time),
/// at most `timeout_ticks` Count ticks. Returns how many are online.
pub fn wait_for_cpus(expected: Option<usize>, timeout_ticks: u32, settle_ticks: u32) -> usize {
    let start = cp0::count();
    loop {
        let online = percpu::online_count();
        let waited = cp0::count().wrapping_sub(start);
        match expected {
            Some(n) if online >= n.min(MAX_CPUS) => return online,
            None if waited >= settle_ticks => return online,
            _ if waited >= timeout_ticks => return online,
            _ => timer::poll_pause(),
        }
    }
}

/// Posts a message to `cpu` and waits for its idle loop to answer.
pub fn ping(cpu: usize, timeout_ticks: u32) -> bool {
    let target = percpu::get(cpu);
    let message = target.mailbox.fetch_add(1, Ordering::AcqRel) + 1;
    let start = cp0::count();
    while cp0::count().wrapping_sub(start) < timeout_ticks {
        if target.ack.load(Ordering::Acquire) >= message {
            return true;
        }
        timer::poll_pause();
    }
    false
}

/// Waits until every CPU in `cpus` took at least `min_ticks` timer interrupts.
pub fn wait_for_ticks(cpus: usize, min_ticks: u64, timeout_ticks: u32) -> bool {
    let start = cp0::count();
    while cp0::count().wrapping_sub(start) < timeout_ticks {
        if (0..cpus).all(|cpu| timer::ticks(cpu) >= min_ticks) {
            return true;
        }
        timer::poll_pause();
    }
    false
}
