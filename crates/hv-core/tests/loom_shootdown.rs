//! Loom model (c): remote-flush acknowledgement through the quiescence tracker.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p hv-core --release --test loom_shootdown`.
//! A CPU in the guest holds a translation of a frame; another CPU unmaps it, requests a flush,
//! waits, then frees the frame. In no interleaving may the first CPU use its cached
//! translation after the free.
#![cfg(loom)]

use std::sync::Arc;

use hv_core::shootdown::QuiescenceTracker;
use loom::sync::atomic::{AtomicBool, Ordering};

/// Derived state of one CPU: does its "TLB" still hold the translation?
struct Cpu {
    tlb_holds_frame: std::cell::Cell<bool>,
}

fn guest_access(cpu: &Cpu, freed: &AtomicBool) {
    if cpu.tlb_holds_frame.get() {
        // Using the cached translation: the frame must still be allocated.
        assert!(
            !freed.load(Ordering::Acquire),
            "guest used a translation of a freed frame"
        );
    }
}

#[test]
fn frame_is_freed_only_after_every_cpu_acknowledged() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = None;
    builder.check(|| {
        let tracker = Arc::new(QuiescenceTracker::new(2));
        let freed = Arc::new(AtomicBool::new(false));
        // CPU 0 starts inside the guest with the translation cached.
        tracker.enter_guest(0, || {}).unwrap();

        let guest = {
            let tracker = Arc::clone(&tracker);
            let freed = Arc::clone(&freed);
            loom::thread::spawn(move || {
                let cpu = Cpu {
                    tlb_holds_frame: std::cell::Cell::new(true),
                };
                let flush = || cpu.tlb_holds_frame.set(false);
                guest_access(&cpu, &freed);
                tracker.quiescent_point(0, flush).unwrap();
                guest_access(&cpu, &freed);
                tracker.exit_guest(0).unwrap();
                // The exit handler may refill from the (already unmapped) table: that is not
                // a stale translation. Re-entry must flush any pending request first.
                tracker.enter_guest(0, flush).unwrap();
                guest_access(&cpu, &freed);
                // A CPU does not stay in the guest forever without a quiescent point.
                tracker.exit_guest(0).unwrap();
            })
        };

        // CPU 1: the invalidator (PTE already cleared under the MMU lock).
        tracker.request_and_wait(Some(1)).unwrap();
        freed.store(true, Ordering::Release);

        guest.join().unwrap();
    });
}

#[test]
fn back_to_back_requests_each_wait_for_their_own_acknowledgement() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = None;
    builder.check(|| {
        let tracker = Arc::new(QuiescenceTracker::new(2));
        let freed = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
        tracker.enter_guest(0, || {}).unwrap();

        let requester = {
            let tracker = Arc::clone(&tracker);
            let freed = Arc::clone(&freed);
            loom::thread::spawn(move || {
                for f in freed.iter() {
                    tracker.request_and_wait(Some(1)).unwrap();
                    f.store(true, Ordering::Release);
                }
            })
        };

        // CPU 0 starts with translations of both frames cached; any flush drops both.
        let cpu = Cpu {
            tlb_holds_frame: std::cell::Cell::new(true),
        };
        for _ in 0..2 {
            for f in freed.iter() {
                guest_access(&cpu, f);
            }
            tracker
                .quiescent_point(0, || cpu.tlb_holds_frame.set(false))
                .unwrap();
        }
        tracker.exit_guest(0).unwrap();
        requester.join().unwrap();
    });
}
