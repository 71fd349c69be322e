//! CP0 Count/Compare timer on every CPU.
//!
//! Malta has no inter-processor interrupts, so this per-CPU tick is what later work uses
//! for scheduling and to notice that every CPU passed a quiescent point (TLB shootdown).
//! Writing Compare acknowledges the interrupt (PRA 9.28).

use super::cp0::{self, Status};
use super::trap::TrapCause;
use super::{cpu_id, irq, MAX_CPUS};
use core::sync::atomic::{AtomicU64, Ordering};

/// Count ticks between timer interrupts (a few ms at QEMU Malta's Count rate).
pub const INTERVAL_TICKS: u32 = 400_000;

/// Timer interrupts taken, per CPU.
static TICKS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Starts the periodic timer on this CPU and enables interrupts.
pub fn start_this_cpu() {
    let line = cp0::timer_ip_line();
    arm_next_tick();
    let status = Status::read();
    let im = Status::from_bits_retain(1 << (8 + u32::from(line)));
    // SAFETY: only the timer line is unmasked, and its handler (below) is ready.
    unsafe {
        status.union(im).write();
        irq::enable();
    }
}

/// Sets Compare one interval ahead of Count.
///
/// The interrupt fires only when Count *reaches* Compare, so a target that Count has
/// already passed when it is written means no tick for a whole 2^32-tick wrap. That happens
/// under QEMU whenever the host deschedules this vCPU between reading Count and writing
/// Compare; re-check after the write and re-arm until the target is still ahead.
fn arm_next_tick() {
    loop {
        let target = cp0::count().wrapping_add(INTERVAL_TICKS);
        cp0::set_compare(target);
        // Signed distance: positive while Count has not reached the target yet.
        if target.wrapping_sub(cp0::count()) as i32 > 0 {
            return;
        }
    }
}

/// Interrupt handler part: re-arms Compare and counts the tick if the timer fired.
pub fn handle_interrupt(cause: TrapCause) -> bool {
    let line = cp0::timer_ip_line();
    if !cause.timer_pending && cause.pending & (1 << line) == 0 {
        return false;
    }
    arm_next_tick();
    TICKS[cpu_id()].fetch_add(1, Ordering::Relaxed);
    true
}

/// One step of a polling wait: sleeps in WAIT until the next interrupt when one can end the
/// sleep (IE set, EXL and ERL clear, the timer line unmasked), else one spin-loop hint.
///
/// A CPU that waits for other CPUs must not spin where it can sleep. QEMU 7.2 (Debian 12)
/// with `-icount` runs all vCPUs on one thread in turn and gives each turn the whole
/// instruction budget up to the next timer deadline: a spinning CPU uses it all, and the
/// vCPU after it in QEMU's order starts every turn with a budget of zero, so it can take
/// its timer interrupt but never runs the handler (QEMU 8.1 splits the budget). Sleeping
/// ends this CPU's turn early and hands the rest of the budget on. The wake-up comes at
/// the latest with this CPU's next tick, one [`INTERVAL_TICKS`] later.
pub fn poll_pause() {
    let status = Status::read();
    let timer_line = Status::from_bits_retain(1 << (8 + u32::from(cp0::timer_ip_line())));
    let can_wake = status.contains(Status::IE.union(timer_line))
        && !status.intersects(Status::EXL.union(Status::ERL));
    if can_wake {
        super::wait_for_interrupt();
    } else {
        core::hint::spin_loop();
    }
}

/// Timer interrupts `cpu` has taken so far.
pub fn ticks(cpu: usize) -> u64 {
    TICKS[cpu].load(Ordering::Relaxed)
}
