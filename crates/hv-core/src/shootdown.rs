//! Remote invalidation of derived translations ("TLB shootdown") and the quiescence tracker.
//!
//! Other CPUs may cache translations derived from a VM's GPA table: host TLB entries, or the
//! per-VCPU GVA tables of trap-and-emulate. When the GPA table loses or changes a mapping,
//! every such copy must be gone before the frame behind the old mapping is freed or reused.
//! [`RemoteFlush`] is what the rest of the core calls for that; it must not return until every
//! CPU that could hold a stale copy has acknowledged.
//!
//! Boards with inter-processor interrupts can implement it by IPI and wait. Boards without
//! them use [`QuiescenceTracker`]: a CPU acknowledges at its next quiescent point (guest exit,
//! guest entry or a timer tick taken while in the guest), and a CPU that is not running a guest
//! counts as quiescent already, because it flushes pending requests before it enters a guest.
//!
//! # Protocol and ordering argument
//!
//! Each CPU has one atomic *state word*: bit 0 says "in guest", the bits above count flush
//! requests addressed to it. A second atomic, `acked`, holds the request count the CPU has
//! flushed up to; only the CPU itself writes it.
//!
//! - A requester does `fetch_add(REQUEST)` on every other CPU's word (AcqRel). The returned
//!   old value says whether that CPU was in the guest at that point of the word's
//!   modification order, and the CPU's target is `old_requests + 1`.
//! - Guest entry is `fetch_or(IN_GUEST)` (AcqRel) on the CPU's own word; if the returned
//!   request count exceeds `acked`, the CPU flushes its derived state, then stores `acked`
//!   (Release), and only then runs guest code.
//! - Guest exit is `fetch_and(!IN_GUEST)` (Release) after the last guest access (exceptions are
//!   precise, and the firmware's exit path orders them with `sync`).
//! - A quiescent point inside the guest loads the word (Acquire) and flushes/acks like entry.
//!
//! All three touch the *same* location with read-modify-writes, so they are totally ordered
//! by that location's modification order; no SeqCst or Dekker-style reasoning is needed (which
//! also means loom, which models SeqCst as AcqRel, checks the real argument). Take a requester
//! R and a CPU C:
//! - If R's `fetch_add` comes after C's exit in the modification order and before C's next
//!   entry, R sees "not in guest" and does not wait; C's next entry `fetch_or` comes later in
//!   the same order, so it reads R's request and flushes before running guest code.
//! - If R's `fetch_add` comes while C is in the guest, R waits until it loads (Acquire) either
//!   `acked >= target` — C flushed after reading R's request, and the Release store of `acked`
//!   makes that flush happen-before R continues — or a word without IN_GUEST, written by C's
//!   exit, which (Release) orders every guest access before it ahead of R's free.
//!
//! Either way, when R's wait returns, no CPU can still use a translation derived before R's
//! request, and R may free the frame.
//!
//! This holds only if "flushes its derived state" really removes every copy of the named
//! frames. The tracker carries no scope, so that is the firmware's part: its vCPUs record
//! each copy with the GFN and HFN it was built from (`hv_emul::derived`) before installing
//! it, and drop by that record rather than by re-translating through the guest's current
//! TLB, which a guest can change in between (issue 11). Copies under host ASIDs that no
//! vCPU will run with again count as dropped: they can never be matched before the CPU's
//! ASID rollover flushes them (the firmware's `src/vmm/flush.rs` gives the whole argument).

use alloc::vec::Vec;
use core::fmt;

use crate::addr::GfnRange;
use crate::flush::{DerivedInvalidator, FlushScope};
use crate::sync::{spin_wait, AtomicU64, Ordering};

/// Invalidation of derived translations on every CPU; implemented by the firmware.
///
/// Takes `&self` because many CPUs flush through the same VM at once.
pub trait RemoteFlush {
    /// Makes every CPU that might hold a translation in `scope` drop it, and returns only when
    /// all of them have acknowledged. An implementation may flush more than asked.
    /// [`FlushScope::Nothing`] must return at once.
    fn flush_remote(&self, scope: FlushScope);
}

/// Adapter applying [`FlushToken`](crate::flush::FlushToken)s through a [`RemoteFlush`].
#[derive(Debug)]
pub struct RemoteInvalidator<'a, R: ?Sized>(pub &'a R);

impl<R: RemoteFlush + ?Sized> DerivedInvalidator for RemoteInvalidator<'_, R> {
    fn invalidate_gfns(&mut self, gfns: GfnRange) {
        self.0.flush_remote(FlushScope::Gfns(gfns));
    }

    fn invalidate_all(&mut self) {
        self.0.flush_remote(FlushScope::All);
    }
}

/// Errors from the quiescence tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShootdownError {
    /// The CPU index is not below the number of CPUs the tracker was built for.
    BadCpu,
}

impl fmt::Display for ShootdownError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ShootdownError::BadCpu => "no such CPU in the quiescence tracker",
        })
    }
}

const IN_GUEST: u64 = 1;
const REQUEST: u64 = 2;

#[derive(Debug)]
struct CpuSlot {
    /// `requests * REQUEST | IN_GUEST?` (see the module docs).
    word: AtomicU64,
    /// Request count this CPU has flushed up to; written only by the CPU itself.
    acked: AtomicU64,
}

/// Portable quiescence-based remote flush: generation counts per CPU plus acknowledgements.
#[derive(Debug)]
pub struct QuiescenceTracker {
    cpus: Vec<CpuSlot>,
}

/// Outstanding acknowledgements of one flush request, from [`QuiescenceTracker::request`].
#[derive(Debug)]
#[must_use = "a flush request is only complete once waited for"]
pub struct PendingFlush {
    /// `(cpu, request count it must ack)` for every CPU that was in the guest.
    waiting: Vec<(usize, u64)>,
}

impl PendingFlush {
    /// Whether no acknowledgement is outstanding.
    pub fn is_done(&self) -> bool {
        self.waiting.is_empty()
    }
}

impl QuiescenceTracker {
    /// A tracker for CPUs `0..ncpus`, all outside any guest.
    pub fn new(ncpus: usize) -> Self {
        Self {
            cpus: (0..ncpus)
                .map(|_| CpuSlot {
                    word: AtomicU64::new(0),
                    acked: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    /// Number of CPUs tracked.
    pub fn ncpus(&self) -> usize {
        self.cpus.len()
    }

    fn slot(&self, cpu: usize) -> Result<&CpuSlot, ShootdownError> {
        self.cpus.get(cpu).ok_or(ShootdownError::BadCpu)
    }

    /// Posts a flush request to every CPU except `requester` (the caller's own CPU, which
    /// flushes locally itself). Returns the acknowledgements still outstanding.
    pub fn request(&self, requester: Option<usize>) -> Result<PendingFlush, ShootdownError> {
        if let Some(cpu) = requester {
            self.slot(cpu)?;
        }
        let mut waiting = Vec::new();
        for (index, slot) in self.cpus.iter().enumerate() {
            if Some(index) == requester {
                continue;
            }
            // AcqRel: Release publishes the caller's table change to the CPU's next entry or
            // quiescent point; Acquire orders the old value we read (see module docs).
            let old = slot.word.fetch_add(REQUEST, Ordering::AcqRel);
            if old & IN_GUEST != 0 {
                waiting.push((index, old / REQUEST + 1));
            }
        }
        Ok(PendingFlush { waiting })
    }

    /// Drops every acknowledgement that has arrived; returns whether none is left.
    pub fn poll(&self, pending: &mut PendingFlush) -> bool {
        pending.waiting.retain(|&(cpu, target)| {
            let slot = &self.cpus[cpu];
            // Acquire on both: pairs with the Release of the CPU's `acked` store (after its
            // flush) and of its exit `fetch_and` (after its last guest access).
            let acked = slot.acked.load(Ordering::Acquire) >= target;
            let outside = slot.word.load(Ordering::Acquire) & IN_GUEST == 0;
            !(acked || outside)
        });
        pending.is_done()
    }

    /// Spins until every acknowledgement of `pending` has arrived.
    pub fn wait(&self, mut pending: PendingFlush) {
        while !self.poll(&mut pending) {
            spin_wait();
        }
    }

    /// [`QuiescenceTracker::request`] followed by [`QuiescenceTracker::wait`].
    pub fn request_and_wait(&self, requester: Option<usize>) -> Result<(), ShootdownError> {
        let pending = self.request(requester)?;
        self.wait(pending);
        Ok(())
    }

    /// Called by `cpu` just before it runs guest code: marks it in the guest and, if flush
    /// requests arrived since its last flush, runs `flush_local` and acknowledges them.
    pub fn enter_guest(
        &self,
        cpu: usize,
        flush_local: impl FnOnce(),
    ) -> Result<(), ShootdownError> {
        let slot = self.slot(cpu)?;
        let word = slot.word.fetch_or(IN_GUEST, Ordering::AcqRel);
        debug_assert_eq!(word & IN_GUEST, 0, "guest entry while already in the guest");
        Self::acknowledge(slot, word, flush_local);
        Ok(())
    }

    /// Called by `cpu` after it leaves guest code (and after its last guest access).
    pub fn exit_guest(&self, cpu: usize) -> Result<(), ShootdownError> {
        let slot = self.slot(cpu)?;
        slot.word.fetch_and(!IN_GUEST, Ordering::AcqRel);
        Ok(())
    }

    /// A quiescent point taken while `cpu` stays in the guest (e.g. a timer tick): flushes
    /// and acknowledges any pending requests.
    pub fn quiescent_point(
        &self,
        cpu: usize,
        flush_local: impl FnOnce(),
    ) -> Result<(), ShootdownError> {
        let slot = self.slot(cpu)?;
        let word = slot.word.load(Ordering::Acquire);
        Self::acknowledge(slot, word, flush_local);
        Ok(())
    }

    fn acknowledge(slot: &CpuSlot, word: u64, flush_local: impl FnOnce()) {
        let requests = word / REQUEST;
        // Relaxed: only this CPU writes `acked`.
        if requests > slot.acked.load(Ordering::Relaxed) {
            flush_local();
            // Release: the flush happens-before any requester that sees this count.
            slot.acked.store(requests, Ordering::Release);
        }
    }
}

/// Waits for every CPU (none is excluded: the caller is in the hypervisor, so its own CPU is
/// outside the guest and will flush at its next entry).
impl RemoteFlush for QuiescenceTracker {
    fn flush_remote(&self, scope: FlushScope) {
        if scope == FlushScope::Nothing {
            return;
        }
        // The tracker carries no scope: CPUs flush all of the VM's derived state.
        let pending = self.request(None).expect("no requester CPU to validate");
        self.wait(pending);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use core::cell::Cell;

    #[test]
    fn cpus_outside_the_guest_need_no_wait_but_flush_on_entry() {
        let t = QuiescenceTracker::new(2);
        let pending = t.request(None).unwrap();
        assert!(pending.is_done());
        let flushed = Cell::new(0);
        t.enter_guest(1, || flushed.set(flushed.get() + 1)).unwrap();
        assert_eq!(flushed.get(), 1);
        // Nothing new requested: the next quiescent point does not flush again.
        t.quiescent_point(1, || flushed.set(flushed.get() + 1))
            .unwrap();
        assert_eq!(flushed.get(), 1);
    }

    #[test]
    fn cpu_in_guest_must_acknowledge() {
        let t = QuiescenceTracker::new(3);
        t.enter_guest(0, || {}).unwrap();
        t.enter_guest(2, || {}).unwrap();
        let mut pending = t.request(Some(1)).unwrap();
        assert!(!t.poll(&mut pending));
        let flushed = Cell::new(false);
        t.quiescent_point(0, || flushed.set(true)).unwrap();
        assert!(flushed.get());
        assert!(!t.poll(&mut pending), "cpu 2 has not acknowledged yet");
        t.exit_guest(2).unwrap();
        assert!(t.poll(&mut pending));
    }

    #[test]
    fn requester_is_not_waited_for() {
        let t = QuiescenceTracker::new(2);
        t.enter_guest(0, || {}).unwrap();
        let mut pending = t.request(Some(0)).unwrap();
        assert!(t.poll(&mut pending));
    }

    #[test]
    fn bad_cpu_index_is_an_error() {
        let t = QuiescenceTracker::new(1);
        assert_eq!(t.enter_guest(1, || {}), Err(ShootdownError::BadCpu));
        assert_eq!(t.exit_guest(7), Err(ShootdownError::BadCpu));
        assert_eq!(t.quiescent_point(9, || {}), Err(ShootdownError::BadCpu));
        assert!(matches!(t.request(Some(1)), Err(ShootdownError::BadCpu)));
    }
}
