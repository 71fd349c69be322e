//! Locks and atomics of the memory-core protocol, switchable to `loom` for model checking.
//!
//! Every lock and every atomic that takes part in the notifier/fault/shootdown protocol comes
//! from here. A normal build uses `core` atomics and a spinning [`Mutex`] (the firmware has no
//! scheduler to sleep on). With `RUSTFLAGS="--cfg loom"` the same names resolve to `loom`'s
//! instrumented types, so the loom models in `tests/loom_*.rs` explore every interleaving of
//! the real code rather than of a copy. Keep loom usage confined to this file.

#[cfg(loom)]
pub use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[cfg(not(loom))]
pub use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A mutual-exclusion lock: `spin::Mutex` normally, `loom::sync::Mutex` under `cfg(loom)`.
///
/// The guard is the only way to reach the data, so "caller must hold the lock" contracts are
/// expressed by taking `&mut` to the guarded state.
pub struct Mutex<T> {
    #[cfg(not(loom))]
    inner: SpinMutex<T>,
    #[cfg(loom)]
    inner: loom::sync::Mutex<T>,
}

#[cfg(all(not(loom), not(feature = "host-yield")))]
type Relax = spin::relax::Spin;
#[cfg(all(not(loom), feature = "host-yield"))]
type Relax = spin::relax::Yield;
#[cfg(not(loom))]
type SpinMutex<T> = spin::mutex::SpinMutex<T, Relax>;

/// Guard returned by [`Mutex::lock`]; the lock is released when it is dropped.
#[cfg(not(loom))]
pub type MutexGuard<'a, T> = spin::mutex::SpinMutexGuard<'a, T, Relax>;
/// Guard returned by [`Mutex::lock`]; the lock is released when it is dropped.
#[cfg(loom)]
pub type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

impl<T> Mutex<T> {
    /// A new unlocked mutex holding `value`.
    pub fn new(value: T) -> Self {
        Self {
            #[cfg(not(loom))]
            inner: SpinMutex::new(value),
            #[cfg(loom)]
            inner: loom::sync::Mutex::new(value),
        }
    }

    /// Spins (or, under loom, blocks) until the lock is held.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        #[cfg(not(loom))]
        {
            self.inner.lock()
        }
        #[cfg(loom)]
        {
            // A poisoned loom mutex means another modelled thread already panicked; the model
            // has failed either way.
            self.inner.lock().expect("loom mutex poisoned")
        }
    }

    /// Consumes the mutex, returning the data (no locking needed: we own it).
    pub fn into_inner(self) -> T {
        #[cfg(not(loom))]
        {
            self.inner.into_inner()
        }
        #[cfg(loom)]
        {
            self.inner.into_inner().expect("loom mutex poisoned")
        }
    }
}

impl<T> core::fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Mutex { .. }")
    }
}

/// One iteration of a busy-wait loop.
///
/// Loom rejects unbounded spinning, so under `cfg(loom)` this yields to the model scheduler;
/// with the `host-yield` feature it yields to the OS; otherwise it is the CPU's spin-loop hint.
pub fn spin_wait() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(all(not(loom), feature = "host-yield"))]
    std::thread::yield_now();
    #[cfg(all(not(loom), not(feature = "host-yield")))]
    core::hint::spin_loop();
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn mutex_guards_data_and_releases_on_drop() {
        let m = Mutex::new(5u32);
        {
            let mut g = m.lock();
            *g += 1;
        }
        // Would spin forever if the first guard had not released the lock.
        assert_eq!(*m.lock(), 6);
        assert_eq!(m.into_inner(), 6);
    }
}
