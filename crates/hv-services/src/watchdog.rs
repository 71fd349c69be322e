//! Liveness of a VM by policy: what counts as progress, when a VM shows as stuck, and when
//! its watchdog stops it.
//!
//! **Progress** is anything a guest does that it could not do while stuck in a loop:
//!
//! - console output (a console-write hypercall or bytes written to its UART): the guest's
//!   own heartbeat, and what an operator would look at;
//! - an exit the guest caused (a trap, fault, hypercall or emulated instruction, but not a
//!   host timer interrupt, which lands wherever the guest happens to be) at a guest PC that
//!   is not among the vCPU's last [`RECENT`] distinct exit PCs;
//! - a memory fault through the general exit at a guest page not among its last [`RECENT`]
//!   distinct fault pages (new memory being touched);
//! - the VM's end.
//!
//! So a guest spinning in WAIT with no wake-up source, one yielding forever, and one
//! storming the host with traps at a handful of PCs (two BREAK/TEQ sites and the handful of
//! CP0 accesses of its handler) make no progress, however many exits they cause; a guest
//! that computes silently for longer than its window without touching new memory counts as
//! stuck too (it should print a heartbeat).
//!
//! A VM **shows as stuck** (console `vms`) once it made no progress for half its watchdog
//! window, or for [`DEFAULT_STUCK_MS`] without a watchdog. Its **watchdog** (layout
//! `watchdog-ms`) stops it once it made no progress for the whole window.

/// Distinct recent values (exit PCs, fault pages) remembered per vCPU.
pub const RECENT: usize = 32;
/// A VM without a watchdog shows as stuck after this long without progress.
pub const DEFAULT_STUCK_MS: u32 = 10_000;

/// The last [`RECENT`] distinct values seen, oldest replaced first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Novelty {
    recent: [u64; RECENT],
    len: usize,
    next: usize,
}

impl Default for Novelty {
    fn default() -> Self {
        Self::new()
    }
}

impl Novelty {
    /// Nothing seen yet.
    pub const fn new() -> Self {
        Self {
            recent: [0; RECENT],
            len: 0,
            next: 0,
        }
    }

    /// Whether `value` is new (not among the recent ones); a new value is remembered in
    /// place of the oldest.
    pub fn observe(&mut self, value: u64) -> bool {
        if self.recent[..self.len].contains(&value) {
            return false;
        }
        self.recent[self.next] = value;
        self.next = (self.next + 1) % RECENT;
        self.len = (self.len + 1).min(RECENT);
        true
    }
}

/// What a VM's quiet time means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Progress recently enough.
    Alive,
    /// No progress for `quiet_ms`: shown as stuck, not stopped (yet).
    Stuck {
        /// Milliseconds since the last progress.
        quiet_ms: u64,
    },
    /// No progress for the whole watchdog window: stop it.
    Expired {
        /// Milliseconds since the last progress.
        quiet_ms: u64,
        /// The window.
        window_ms: u32,
    },
}

/// After how long without progress a VM shows as stuck.
pub fn stuck_after_ms(window_ms: Option<u32>) -> u32 {
    window_ms.map_or(DEFAULT_STUCK_MS, |w| w / 2)
}

/// The verdict for a VM quiet for `quiet_ms` with watchdog window `window_ms`.
pub fn verdict(quiet_ms: u64, window_ms: Option<u32>) -> Verdict {
    if let Some(window) = window_ms {
        if quiet_ms >= u64::from(window) {
            return Verdict::Expired {
                quiet_ms,
                window_ms: window,
            };
        }
    }
    if quiet_ms >= u64::from(stuck_after_ms(window_ms)) {
        Verdict::Stuck { quiet_ms }
    } else {
        Verdict::Alive
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_loop_over_few_pcs_is_not_new_after_its_first_turn() {
        let mut n = Novelty::new();
        let storm = [
            0x4000_1000u64,
            0x4000_1004,
            0x4000_2180,
            0x4000_2190,
            0x4000_21a0,
        ];
        for pc in storm {
            assert!(n.observe(pc));
        }
        for _ in 0..1000 {
            for pc in storm {
                assert!(
                    !n.observe(pc),
                    "a storm over {} PCs made progress",
                    storm.len()
                );
            }
        }
        // A yield loop: one PC.
        let mut y = Novelty::new();
        assert!(y.observe(0x4000_3000));
        assert!((0..100).all(|_| !y.observe(0x4000_3000)));
    }

    #[test]
    fn walking_code_or_memory_keeps_making_progress() {
        let mut n = Novelty::new();
        // A guest moving through new pages (or new code) is new at every step.
        assert!((0..10_000u64).all(|page| n.observe(page)));
        // More distinct values in a cycle than remembered: each looks new again.
        let cycle: Vec<u64> = (0..RECENT as u64 + 1).collect();
        for _ in 0..10 {
            for &v in &cycle {
                assert!(n.observe(v));
            }
        }
    }

    #[test]
    fn verdicts_follow_the_window() {
        assert_eq!(verdict(0, Some(2000)), Verdict::Alive);
        assert_eq!(verdict(999, Some(2000)), Verdict::Alive);
        assert_eq!(verdict(1000, Some(2000)), Verdict::Stuck { quiet_ms: 1000 });
        assert_eq!(
            verdict(2000, Some(2000)),
            Verdict::Expired {
                quiet_ms: 2000,
                window_ms: 2000
            }
        );
        // No watchdog: stuck after the default, never stopped.
        assert_eq!(verdict(9_999, None), Verdict::Alive);
        assert_eq!(
            verdict(u64::MAX, None),
            Verdict::Stuck { quiet_ms: u64::MAX }
        );
    }

    proptest! {
        /// Against a model (the last RECENT distinct values in order of arrival), and a
        /// loop over at most RECENT values is new only on its first turn.
        #[test]
        fn novelty_matches_a_model(values in proptest::collection::vec(0u64..40, 1..400)) {
            let mut n = Novelty::new();
            let mut model: std::collections::VecDeque<u64> = Default::default();
            for v in values {
                let new = !model.contains(&v);
                prop_assert_eq!(n.observe(v), new);
                if new {
                    if model.len() == RECENT {
                        model.pop_front();
                    }
                    model.push_back(v);
                }
            }
        }

        #[test]
        fn short_loops_stop_being_new(lp in proptest::collection::vec(any::<u64>(), 1..=RECENT), turns in 2usize..20) {
            let mut n = Novelty::new();
            let mut news = 0;
            for _ in 0..turns {
                for &v in &lp {
                    news += usize::from(n.observe(v));
                }
            }
            let distinct: std::collections::BTreeSet<u64> = lp.iter().copied().collect();
            prop_assert_eq!(news, distinct.len());
        }

        /// Expired exactly from the window on; stuck from half of it; never alive again
        /// as quiet time grows.
        #[test]
        fn verdict_is_monotonic(window in proptest::option::of(40u32..20_000), a in 0u64..50_000, b in 0u64..50_000) {
            let (lo, hi) = (a.min(b), a.max(b));
            let rank = |v: Verdict| match v { Verdict::Alive => 0, Verdict::Stuck { .. } => 1, Verdict::Expired { .. } => 2 };
            prop_assert!(rank(verdict(lo, window)) <= rank(verdict(hi, window)));
            if let Some(w) = window {
                prop_assert_eq!(rank(verdict(hi, window)) == 2, hi >= u64::from(w));
            }
        }
    }
}
