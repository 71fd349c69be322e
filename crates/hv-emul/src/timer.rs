//! The guest's Count/Compare timer, derived from the host's Count.
//!
//! The guest Count runs at the host Count's rate, offset by a bias the guest sets by writing
//! Count (`Cp0Effect::CountRebase`) and frozen while Cause.DC is set. All arithmetic is modulo
//! 2^32, like the registers: Count wraps, and "Count reached Compare" means Compare lies in
//! the half-open window of guest counts that passed since the last check.

/// Guest Count bookkeeping for one vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GuestTimer {
    /// guest Count = host Count + bias (mod 2^32) while running.
    bias: u32,
    /// The guest Count value while Cause.DC stops the counter.
    frozen: Option<u32>,
}

impl GuestTimer {
    /// A running timer whose guest Count equals `guest_count` at host count `host_count`.
    pub fn new(host_count: u32, guest_count: u32) -> Self {
        GuestTimer {
            bias: guest_count.wrapping_sub(host_count),
            frozen: None,
        }
    }

    /// The guest Count at host count `host_count`.
    pub fn guest_count(&self, host_count: u32) -> u32 {
        self.frozen
            .unwrap_or_else(|| host_count.wrapping_add(self.bias))
    }

    /// The guest wrote Count: from `host_count` on, the guest Count continues from `value`.
    pub fn rebase(&mut self, host_count: u32, value: u32) {
        match &mut self.frozen {
            Some(frozen) => *frozen = value,
            None => self.bias = value.wrapping_sub(host_count),
        }
    }

    /// Applies Cause.DC: `stopped` freezes the guest Count at its value at `host_count`,
    /// clearing it lets it run on from that value.
    pub fn set_stopped(&mut self, host_count: u32, stopped: bool) {
        let now = self.guest_count(host_count);
        if stopped {
            self.frozen = Some(now);
        } else if let Some(value) = self.frozen.take() {
            self.bias = value.wrapping_sub(host_count);
        }
    }

    /// Whether the counter is stopped by Cause.DC.
    pub fn is_stopped(&self) -> bool {
        self.frozen.is_some()
    }

    /// The host count at which the guest Count will equal `compare`, or `None` while
    /// stopped (a stopped Count never reaches Compare).
    pub fn host_deadline(&self, compare: u32) -> Option<u32> {
        match self.frozen {
            Some(_) => None,
            None => Some(compare.wrapping_sub(self.bias)),
        }
    }

    /// Whether the guest Count passed `compare` while the host count went from
    /// `host_before` (exclusive) to `host_now` (inclusive). Intervals of 2^32 ticks or
    /// more cannot be told apart from shorter ones; callers check at least once per wrap.
    pub fn reached(&self, compare: u32, host_before: u32, host_now: u32) -> bool {
        if self.frozen.is_some() {
            return false;
        }
        let start = host_before.wrapping_add(self.bias);
        let elapsed = host_now.wrapping_sub(host_before);
        let distance = compare.wrapping_sub(start);
        distance != 0 && distance <= elapsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_follows_host_with_bias() {
        let timer = GuestTimer::new(1000, 0);
        assert_eq!(timer.guest_count(1000), 0);
        assert_eq!(timer.guest_count(1500), 500);
        // The guest Count wraps like the register.
        let timer = GuestTimer::new(0, u32::MAX - 1);
        assert_eq!(timer.guest_count(3), 1);
    }

    #[test]
    fn rebase_on_count_write() {
        let mut timer = GuestTimer::new(0, 0);
        timer.rebase(100, 7);
        assert_eq!(timer.guest_count(100), 7);
        assert_eq!(timer.guest_count(110), 17);
    }

    #[test]
    fn deadline_and_reached() {
        let timer = GuestTimer::new(1000, 0);
        assert_eq!(timer.host_deadline(500), Some(1500));
        assert!(!timer.reached(500, 1000, 1499));
        assert!(timer.reached(500, 1000, 1500));
        assert!(timer.reached(500, 1499, 1600));
        // Already past at the start of the window: not reached again.
        assert!(!timer.reached(500, 1500, 1600));
        // Across the 32-bit wrap.
        let timer = GuestTimer::new(u32::MAX - 10, 0);
        assert_eq!(timer.host_deadline(20), Some(9));
        assert!(timer.reached(20, u32::MAX - 5, 9));
        assert!(!timer.reached(20, u32::MAX - 5, 8));
    }

    #[test]
    fn disable_count_freezes_and_resumes() {
        let mut timer = GuestTimer::new(0, 0);
        timer.set_stopped(100, true);
        assert!(timer.is_stopped());
        assert_eq!(timer.guest_count(5000), 100);
        assert_eq!(timer.host_deadline(200), None);
        assert!(!timer.reached(150, 0, 5000));
        timer.rebase(5000, 300);
        assert_eq!(timer.guest_count(6000), 300);
        timer.set_stopped(6000, false);
        assert_eq!(timer.guest_count(6010), 310);
        assert_eq!(timer.host_deadline(400), Some(6100));
    }
}
