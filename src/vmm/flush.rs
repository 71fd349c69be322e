//! Remote invalidation of derived guest translations on Malta, which has no IPIs.
//!
//! Derived state is root-TLB entries under host ASIDs (see `asid.rs`); a vCPU's ASIDs are
//! valid only on the CPU it last ran on, so that CPU's TLB is the only place its live
//! entries can be. A flush token is turned into pending work for the VM's vCPUs:
//!
//! - a GFN range is appended to the VM's flush log; at its next guest entry each vCPU
//!   removes exactly the root-TLB and refill-cache halves its derived set
//!   (hv_emul::derived) recorded as built from a frame of a logged range, whatever the
//!   guest's TLB translates now (`Vcpu::drop_derived`);
//! - "everything" (or a vCPU that fell too far behind the log) bumps the VM's MMU
//!   generation, which makes every vCPU take fresh host ASIDs: entries under the old ones
//!   are never matched again.
//!
//! A vCPU that is in the guest while the token is applied still runs with its entries; the
//! quiescence tracker makes `flush_remote` wait until every CPU that was in a guest has left
//! it once (each timer tick exits the guest), and a vCPU applies the log before it enters
//! the guest again. So when `flush_remote` returns, no CPU can use a translation the token
//! named, and the caller may free the frames.
//!
//! **Why a frame is handed on only after every CPU dropped every entry to it.** The memory
//! core frees (or hands to another VM, or re-maps) a frame only after the GPA entry naming
//! it is cleared and `flush_remote` for its GFN has returned. A derived entry to that frame
//! can be in four places, and none survives that return:
//! 1. the root TLB or refill cache of a CPU running the vCPU: the vCPU recorded the entry in
//!    its derived set with this GFN *before* writing it (also in the fast lane), so the
//!    log's range names it; the tracker waits for the CPU to leave the guest, and the vCPU
//!    drops every recorded half of the range before it enters again. Recording by GFN is
//!    what makes this hold when the guest rewrote its TLB in between: the old rule,
//!    re-translating each entry through the guest's current TLB, missed an entry built from
//!    a guest entry that had since been shadowed or replaced (issue 11);
//! 2. the same on a CPU where the vCPU is not running: its ASIDs are valid only there and
//!    only it runs with them, and it applies the log (or takes fresh ASIDs, if it fell too
//!    far behind) before it enters the guest again;
//! 3. under host ASIDs the vCPU no longer holds (it migrated, its guest changed ASID, the VM
//!    generation moved, its derived set was emptied): no vCPU ever runs with those ASIDs
//!    again before the CPU's next ASID rollover, which flushes that whole TLB and refill
//!    cache (asid.rs), so the entries can never be matched;
//! 4. of a VM torn down: its vCPUs are gone, so case 3 applies to all of them.
//!
//! A guest TLB write never creates a derived entry by itself; entries are created only
//! through the memory core's fault path, which holds the GPA entry at that moment.
//!
//! Ordering: the log append and the generation bump happen before the tracker's AcqRel
//! request on each CPU's word; a vCPU's entry does `enter_guest` (AcqRel on its CPU's word)
//! *before* reading the log and the generation, so either it sees the new work, or the
//! request saw it in the guest and waits for its exit.

use crate::arch::MAX_CPUS;
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use hv_core::addr::GfnRange;
use hv_core::flush::FlushScope;
use hv_core::shootdown::{QuiescenceTracker, RemoteFlush};
use spin::{Mutex, Once};

/// GFN ranges kept in a VM's flush log; a vCPU further behind gets fresh ASIDs instead.
const LOG_CAPACITY: usize = 32;

static TRACKER: Once<QuiescenceTracker> = Once::new();

/// The firmware-wide quiescence tracker (one slot per possible CPU).
pub fn tracker() -> &'static QuiescenceTracker {
    TRACKER.call_once(|| QuiescenceTracker::new(MAX_CPUS))
}

#[derive(Debug, Default)]
struct FlushLog {
    /// Sequence number of the next range.
    next: u64,
    /// `(sequence, range)`, oldest first.
    ranges: VecDeque<(u64, GfnRange)>,
}

#[derive(Debug, Default)]
struct FlushState {
    generation: AtomicU64,
    log: Mutex<FlushLog>,
    /// `log.next`, readable without the lock (stored under it, before the tracker request).
    log_next: AtomicU64,
    flushes: AtomicU64,
}

/// What a vCPU must drop before it enters the guest again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingFlush {
    /// Nothing new.
    Nothing,
    /// Entries translating into these GFN ranges.
    Ranges(Vec<GfnRange>),
    /// Everything (take fresh ASIDs).
    Everything,
}

/// Remote flush of one VM's derived translations.
#[derive(Debug, Clone, Default)]
pub struct FwRemoteFlush {
    state: Arc<FlushState>,
}

impl FwRemoteFlush {
    /// A flusher for a new VM (generation 0, empty log).
    pub fn new() -> Self {
        Self::default()
    }

    /// The VM's MMU generation; read after `enter_guest`.
    pub fn generation(&self) -> u64 {
        self.state.generation.load(Ordering::Acquire)
    }

    /// Flushes requested so far.
    pub fn flushes(&self) -> u64 {
        self.state.flushes.load(Ordering::Relaxed)
    }

    /// The sequence number a new vCPU starts from (it has no entries yet).
    pub fn log_position(&self) -> u64 {
        self.state.log.lock().next
    }

    /// Ranges logged since `*seen` (which is moved to the end of the log).
    pub fn pending_since(&self, seen: &mut u64) -> PendingFlush {
        // The common case without the lock: nothing logged since. The append stored
        // log_next before its tracker request, and the caller read this after enter_guest.
        if self.state.log_next.load(Ordering::Acquire) == *seen {
            return PendingFlush::Nothing;
        }
        let log = self.state.log.lock();
        if *seen == log.next {
            return PendingFlush::Nothing;
        }
        let oldest = log.ranges.front().map_or(log.next, |&(seq, _)| seq);
        let pending = if *seen < oldest {
            PendingFlush::Everything
        } else {
            PendingFlush::Ranges(
                log.ranges
                    .iter()
                    .filter(|&&(seq, _)| seq >= *seen)
                    .map(|&(_, range)| range)
                    .collect(),
            )
        };
        *seen = log.next;
        pending
    }
}

impl RemoteFlush for FwRemoteFlush {
    fn flush_remote(&self, scope: FlushScope) {
        match scope {
            FlushScope::Nothing => return,
            FlushScope::Gfns(range) => {
                let mut log = self.state.log.lock();
                let seq = log.next;
                log.next += 1;
                self.state.log_next.store(log.next, Ordering::Release);
                log.ranges.push_back((seq, range));
                if log.ranges.len() > LOG_CAPACITY {
                    log.ranges.pop_front();
                }
            }
            FlushScope::All => {
                self.state.generation.fetch_add(1, Ordering::Release);
            }
        }
        self.state.flushes.fetch_add(1, Ordering::Relaxed);
        tracker().flush_remote(scope);
    }
}
