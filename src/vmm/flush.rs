//! Remote invalidation of derived guest translations on Malta, which has no IPIs.
//!
//! Derived state is root-TLB entries under host ASIDs (see `asid.rs`). A flush token for a
//! VM bumps the VM's MMU generation, which makes every vCPU of that VM take fresh host ASIDs
//! at its next guest entry on any CPU (entries under the old ASIDs are never matched again).
//! That leaves the CPUs that are running one of its vCPUs right now: the quiescence tracker
//! makes the flush wait until each CPU that was in a guest has left it once (every timer tick
//! exits the guest), so when `flush_remote` returns no CPU can still use an old entry.
//!
//! Ordering: the generation bump happens before the tracker's AcqRel request on each CPU's
//! word; a CPU's entry does `enter_guest` (AcqRel on its word) *before* reading the
//! generation, so either it sees the bump, or the request saw it in the guest and waits.

use crate::arch::MAX_CPUS;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};
use hv_core::flush::FlushScope;
use hv_core::shootdown::{QuiescenceTracker, RemoteFlush};
use spin::Once;

static TRACKER: Once<QuiescenceTracker> = Once::new();

/// The firmware-wide quiescence tracker (one slot per possible CPU).
pub fn tracker() -> &'static QuiescenceTracker {
    TRACKER.call_once(|| QuiescenceTracker::new(MAX_CPUS))
}

/// Remote flush of one VM's derived translations.
#[derive(Debug, Clone)]
pub struct FwRemoteFlush {
    generation: Arc<AtomicU64>,
    flushes: Arc<AtomicU64>,
}

impl FwRemoteFlush {
    /// A flusher for a new VM (generation 0).
    pub fn new() -> Self {
        Self {
            generation: Arc::new(AtomicU64::new(0)),
            flushes: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The VM's MMU generation; read after `enter_guest` (Acquire).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Flushes requested so far.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}

impl Default for FwRemoteFlush {
    fn default() -> Self {
        Self::new()
    }
}

impl RemoteFlush for FwRemoteFlush {
    fn flush_remote(&self, scope: FlushScope) {
        if scope == FlushScope::Nothing {
            return;
        }
        // The whole VM's derived state goes, whatever the scope: fresh ASIDs are cheaper
        // than finding each entry on each CPU, and flushes are rare.
        self.generation.fetch_add(1, Ordering::Release);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        tracker().flush_remote(scope);
    }
}
