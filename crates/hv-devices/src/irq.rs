//! Interrupt lines from devices to a VM's interrupt controller.
//!
//! Devices only report the level of their line; the firmware decides what a level means for
//! the guest (for example setting a Cause.IP bit and re-checking pending interrupts). The
//! `()` implementation ignores the line, for VMs that poll and for tests.

/// A level-triggered interrupt line driven by one device.
pub trait IrqLine {
    /// Sets the line's level: `true` while the device wants attention.
    fn set_level(&mut self, asserted: bool);
}

impl IrqLine for () {
    fn set_level(&mut self, _asserted: bool) {}
}

/// A line that remembers its level and counts rising edges; for tests and for firmware that
/// samples the level instead of reacting to changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatchedLine {
    /// The current level.
    pub asserted: bool,
    /// How many times the line went from low to high.
    pub rising_edges: u64,
}

impl IrqLine for LatchedLine {
    fn set_level(&mut self, asserted: bool) {
        if asserted && !self.asserted {
            self.rising_edges += 1;
        }
        self.asserted = asserted;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latched_line_counts_rising_edges_only() {
        let mut line = LatchedLine::default();
        line.set_level(true);
        line.set_level(true);
        line.set_level(false);
        line.set_level(true);
        assert!(line.asserted);
        assert_eq!(line.rising_edges, 2);
    }
}
