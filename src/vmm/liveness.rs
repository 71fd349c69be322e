//! Liveness by policy: each VM's last progress, its watchdog and its `stuck` state.
//!
//! What counts as progress is `hv_services::watchdog`'s rule (console output, a guest-caused
//! exit at a new PC, a general-exit memory fault on a new page). vCPUs report it here as
//! they dispatch exits; the UART reports console bytes. The watchdog is checked by the vCPU
//! before every slice and by the scheduler for a vCPU parked in WAIT (which never runs
//! again on its own), so a stuck VM is stopped within a tick of its window running out.
//! Time is host Count; a quiet time is measured as a wrapping 32-bit difference and clamped
//! well before Count wraps (42 s at 100 MHz), which is why windows are at most 15 s. CPUs'
//! Counts are not synchronised exactly: a stamp from a CPU whose Count is ahead reads as
//! "now", so a window can be off by the skew between CPUs (far below a tick here).

use core::sync::atomic::{AtomicU32, Ordering};
use hv_services::watchdog::{self, Verdict};

/// Count ticks per ms on QEMU's Malta.
const COUNT_TICKS_PER_MS: u32 = crate::services::COUNT_TICKS_PER_US as u32 * 1000;
/// Longest quiet time kept (16 s): above every watchdog window (at most 15 s), and far
/// enough below 2^31 (21.5 s) that a check every few seconds keeps the 32-bit difference
/// from wrapping into the negative (which would read as "just now").
const MAX_QUIET_TICKS: u32 = 1_600_000_000;
const _: () = assert!(
    MAX_QUIET_TICKS / COUNT_TICKS_PER_MS > hv_devices::vmconfig::MAX_WATCHDOG_MS,
    "a quiet time must be able to reach the longest window"
);

/// A VM's last progress (host Count), shared by its vCPUs and devices.
#[derive(Debug)]
pub struct VmProgress {
    last: AtomicU32,
}

impl VmProgress {
    /// Progress "now" (a VM starts alive).
    pub fn new(now: u32) -> Self {
        Self {
            last: AtomicU32::new(now),
        }
    }

    /// The VM made progress at Count `now`.
    pub fn made(&self, now: u32) {
        // Relaxed: a timestamp; the watchdog tolerates a tick of staleness.
        self.last.store(now, Ordering::Relaxed);
    }

    /// Milliseconds without progress at Count `now`.
    pub fn quiet_ms(&self, now: u32) -> u64 {
        let last = self.last.load(Ordering::Relaxed);
        let mut quiet = now.wrapping_sub(last);
        if quiet as i32 <= 0 {
            // Each CPU has its own Count: progress stamped on a CPU whose Count runs a
            // little ahead of ours is "just now".
            return 0;
        }
        if quiet > MAX_QUIET_TICKS {
            // Keep the difference far from wrapping; the time shown stops growing there.
            quiet = MAX_QUIET_TICKS;
            let _ = self.last.compare_exchange(
                last,
                now.wrapping_sub(MAX_QUIET_TICKS),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        u64::from(quiet / COUNT_TICKS_PER_MS)
    }

    /// The watchdog's verdict at Count `now` for window `window_ms`.
    pub fn verdict(&self, now: u32, window_ms: Option<u32>) -> Verdict {
        watchdog::verdict(self.quiet_ms(now), window_ms)
    }
}

/// The stop reason of an expired watchdog.
pub fn expired_reason(quiet_ms: u64, window_ms: u32) -> alloc::string::String {
    alloc::format!(
        "watchdog: no progress for {quiet_ms} ms (window {window_ms} ms: no console output, \
         no exit at a new PC, no fault on a new page)"
    )
}
