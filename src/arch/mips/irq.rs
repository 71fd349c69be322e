//! Interrupt enable/disable with an RAII guard.

use super::cp0::Status;

/// Interrupts are off while this guard lives; dropping it restores the previous IE bit.
#[derive(Debug)]
pub struct IrqGuard {
    was_enabled: bool,
}

impl IrqGuard {
    /// Disables interrupts on this CPU until the guard drops.
    pub fn new() -> Self {
        let status = Status::read();
        let was_enabled = status.contains(Status::IE);
        if was_enabled {
            // SAFETY: clearing IE only masks interrupts; the mode bits are written back
            // unchanged.
            unsafe { status.difference(Status::IE).write() };
        }
        Self { was_enabled }
    }
}

impl Default for IrqGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for IrqGuard {
    fn drop(&mut self) {
        if self.was_enabled {
            // SAFETY: re-enables exactly what `new` disabled; the handlers behind the
            // unmasked lines were ready before.
            unsafe { Status::read().union(Status::IE).write() };
        }
    }
}

/// Enables interrupts on this CPU.
///
/// # Safety
/// Every interrupt line unmasked in Status.IM must have a handler ready.
pub unsafe fn enable() {
    // SAFETY: forwarded caller contract.
    unsafe { Status::read().union(Status::IE).write() };
}
