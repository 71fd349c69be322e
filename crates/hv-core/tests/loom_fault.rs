//! Loom models (a) and (b): the fault slow path against host-side changes.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p hv-core --release --test loom_fault`.
//! The models drive the real [`hv_core::fault::Vm`]: under `cfg(loom)` its MMU lock, the host
//! layer's lock and the notifier counters are loom types, so loom explores every interleaving
//! of the lock acquisitions and counter accesses. After both threads finish,
//! `check_invariants` must hold: every present entry names the frame its backing page holds
//! now (no stale frame installed), write-permitted entries are private pages.
#![cfg(loom)]

mod common;

use std::sync::Arc;

use common::*;
use hv_core::addr::{Gfn, Gpa};
use hv_core::memslot::{BackingId, SlotFlags};

fn gpa(gfn: u64) -> Gpa {
    Gfn::new(gfn).checked_addr().unwrap()
}

/// A VM with a 2-page backing at guest frames 0x10..0x12, both pages holding equal data.
fn setup() -> (Arc<TestVm>, BackingId) {
    let vm = test_vm(6);
    let b = vm.host().create_backing(2).unwrap();
    vm.add_memslot(range(0x10, 2), b, 0, SlotFlags::empty())
        .unwrap();
    vm.host_write(b, 0, 0, &[7]).unwrap();
    vm.host_write(b, 1, 0, &[7]).unwrap();
    (Arc::new(vm), b)
}

/// Two-thread models are explored exhaustively (they finish in well under a second).
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = None;
    builder.check(f);
}

fn finish(vm: Arc<TestVm>) {
    vm.check_invariants().expect("coherent after both threads");
    let vm = Arc::try_unwrap(vm).expect("threads joined");
    let (frames, pool) = vm.teardown();
    assert_eq!(frames.live_tables(), 0);
    assert_eq!(pool.allocated_count(), 0);
}

/// (a) A read fault's slow path races a swap-out (invalidate start/end) of the same page.
#[test]
fn slow_path_fault_never_installs_a_swapped_out_frame() {
    model(|| {
        let (vm, b) = setup();
        let faulter = {
            let vm = Arc::clone(&vm);
            loom::thread::spawn(move || {
                let (even, _) = vm.map_page(gpa(0x10), false).expect("fault");
                assert!(even.is_present());
            })
        };
        vm.swap_out(b, 0).unwrap();
        faulter.join().unwrap();
        finish(vm);
    });
}

/// (b) A write fault races a same-page merge that remaps the page through `set_entry`
/// (page 0 already mapped writable-clean, so the fault may take the fast path).
#[test]
fn set_entry_merge_against_fast_write_fault() {
    model(|| {
        let (vm, b) = setup();
        vm.map_page(gpa(0x10), false).unwrap();
        vm.map_page(gpa(0x11), false).unwrap();
        let faulter = {
            let vm = Arc::clone(&vm);
            loom::thread::spawn(move || {
                let (even, _) = vm.map_page(gpa(0x10), true).expect("fault");
                assert!(even.is_writable() && even.is_dirty());
            })
        };
        vm.merge((b, 0), (b, 1)).unwrap();
        faulter.join().unwrap();
        finish(vm);
    });
}

/// (b') The same race with page 0 unmapped: the fault's slow path may resolve the private
/// frame just before the merge, or find the page shared and copy it (notifying from inside
/// the resolve), and must retry whenever the sequence moved.
#[test]
fn set_entry_merge_against_slow_write_fault() {
    model(|| {
        let (vm, b) = setup();
        let faulter = {
            let vm = Arc::clone(&vm);
            loom::thread::spawn(move || {
                let (even, _) = vm.map_page(gpa(0x10), true).expect("fault");
                assert!(even.is_writable() && even.is_dirty());
            })
        };
        vm.merge((b, 0), (b, 1)).unwrap();
        faulter.join().unwrap();
        finish(vm);
    });
}

/// (a') Two vCPUs fault the same page (one reads, one writes) while the host swaps it out:
/// three threads, so preemptions are bounded to keep the run short.
#[test]
fn two_faults_and_a_swap_out() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(2);
    builder.check(|| {
        let (vm, b) = setup();
        let faulters: Vec<_> = [false, true]
            .into_iter()
            .map(|write| {
                let vm = Arc::clone(&vm);
                loom::thread::spawn(move || {
                    let (even, _) = vm.map_page(gpa(0x10), write).expect("fault");
                    assert!(even.is_present() && (!write || even.is_dirty()));
                })
            })
            .collect();
        vm.swap_out(b, 0).unwrap();
        for f in faulters {
            f.join().unwrap();
        }
        finish(vm);
    });
}
