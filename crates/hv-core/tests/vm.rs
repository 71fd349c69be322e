//! Behaviour of the per-VM MMU object: fault paths, notifier hooks, memslot changes, errors,
//! allocation failure and teardown.

mod common;

use common::*;
use hv_core::addr::{Gfn, Gpa};
use hv_core::fault::FaultError;
use hv_core::host_mem::{HostMemError, PageState};
use hv_core::memslot::{BackingId, SlotFlags};
use hv_core::notifier::MmuNotifier;
use hv_core::pte::entrylo;

fn gpa(gfn: u64) -> Gpa {
    Gfn::new(gfn).checked_addr().unwrap()
}

/// A VM with one 16-page backing mapped at guest frames 0x100.. with `flags`.
fn vm_with_slot(flags: SlotFlags) -> (TestVm, BackingId, hv_core::memslot::SlotId) {
    let vm = test_vm(64);
    let b = vm.host().create_backing(16).unwrap();
    let id = vm.add_memslot(range(0x100, 16), b, 0, flags).unwrap();
    (vm, b, id)
}

fn teardown_returns_everything(vm: TestVm) {
    let (frames, pool) = vm.teardown();
    assert_eq!(frames.live_tables(), 0, "table frames leaked");
    assert_eq!(pool.allocated_count(), 0, "host frames leaked");
}

#[test]
fn read_fault_maps_writable_but_clean_then_write_is_fast_and_logged() {
    let (vm, _b, id) = vm_with_slot(SlotFlags::LOG_DIRTY);
    let (even, odd) = vm.map_page(gpa(0x101), false).unwrap();
    assert!(!even.is_present(), "buddy 0x100 was never touched");
    assert!(odd.is_present() && odd.is_young() && odd.is_writable() && !odd.is_dirty());
    vm.check_invariants().unwrap();
    assert_eq!(vm.get_dirty_log(id).unwrap().gfns().count(), 0);

    let attempts = vm.host().lock().pool().alloc_attempts();
    let (_, odd2) = vm.map_page(gpa(0x101), true).unwrap();
    assert!(odd2.is_dirty() && odd2.is_writable());
    assert_eq!(odd2.hfn(), odd.hfn());
    // The fast path never allocates.
    assert_eq!(vm.host().lock().pool().alloc_attempts(), attempts);
    let log: Vec<Gfn> = vm.get_dirty_log(id).unwrap().gfns().collect();
    assert_eq!(log, [Gfn::new(0x101)]);
    // get-and-clear re-cleaned the page, so the next store faults again.
    assert!(!vm.lookup(gpa(0x101)).unwrap().is_dirty());
    vm.check_invariants().unwrap();
    teardown_returns_everything(vm);
}

#[test]
fn errors_for_bad_addresses_and_read_only_writes() {
    let (vm, b, _) = vm_with_slot(SlotFlags::empty());
    assert_eq!(vm.map_page(gpa(0xff), false), Err(FaultError::NoMemslot));
    assert_eq!(vm.map_page(gpa(0x110), true), Err(FaultError::NoMemslot));
    assert_eq!(
        vm.map_page(Gpa::new(u64::MAX), false),
        Err(FaultError::BeyondReach)
    );
    let ro = vm
        .add_memslot(range(0x200, 4), b, 8, SlotFlags::READ_ONLY)
        .unwrap();
    let (_, odd) = vm.map_page(gpa(0x201), false).unwrap();
    assert!(odd.is_present() && !odd.is_writable());
    assert_eq!(
        vm.map_page(gpa(0x201), true),
        Err(FaultError::ReadOnlyWrite)
    );
    assert_eq!(
        vm.map_page(gpa(0x202), true),
        Err(FaultError::ReadOnlyWrite)
    );
    // Slot bigger than its backing, unknown backing: refused.
    assert!(vm
        .add_memslot(range(0x300, 17), b, 0, SlotFlags::empty())
        .is_err());
    assert!(vm
        .add_memslot(range(0x300, 1), BackingId(9), 0, SlotFlags::empty())
        .is_err());
    assert!(
        vm.add_memslot(range(0x100, 1), b, 0, SlotFlags::empty())
            .is_err(),
        "overlap"
    );
    vm.remove_memslot(ro).unwrap();
    assert_eq!(vm.lookup(gpa(0x201)), None);
    assert_eq!(vm.map_page(gpa(0x201), false), Err(FaultError::NoMemslot));
    vm.check_invariants().unwrap();
    teardown_returns_everything(vm);
}

#[test]
fn swap_out_unmaps_flushes_and_swap_in_restores_contents() {
    let (vm, b, _) = vm_with_slot(SlotFlags::empty());
    vm.host_write(b, 3, 100, b"hello").unwrap();
    let before = vm.map_page(gpa(0x103), false).unwrap().1;
    vm.remote_flush().take();
    assert_eq!(vm.swap_out(b, 3), Ok(true));
    assert_eq!(vm.lookup(gpa(0x103)), None);
    assert!(RecordingFlush::covered(
        &vm.remote_flush().take(),
        Gfn::new(0x103)
    ));
    assert!(matches!(
        vm.host().lock().page(b, 3),
        Ok(PageState::SwappedOut(_))
    ));
    assert_eq!(vm.swap_out(b, 3), Ok(false), "already out");
    vm.check_invariants().unwrap();
    let after = vm.map_page(gpa(0x103), false).unwrap().1;
    assert!(after.is_present());
    let mut buf = [0u8; 5];
    vm.host().read(b, 3, 100, &mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    assert_ne!(before.raw(), 0);
    vm.check_invariants().unwrap();
    teardown_returns_everything(vm);
}

#[test]
fn balloon_drops_frames_and_pages_come_back_zeroed() {
    let (vm, b, _) = vm_with_slot(SlotFlags::empty());
    for p in 0..4 {
        vm.host_write(b, p, 0, &[0xaa]).unwrap();
        vm.map_page(gpa(0x100 + p), true).unwrap();
    }
    vm.swap_out(b, 2).unwrap();
    let used = vm.host().lock().pool().allocated_count();
    vm.balloon(b, 1..3).unwrap();
    assert_eq!(vm.host().lock().pool().allocated_count(), used - 1);
    assert_eq!(vm.host().lock().swapped_pages(), 0);
    assert_eq!(vm.lookup(gpa(0x101)), None);
    assert!(vm.lookup(gpa(0x100)).is_some() && vm.lookup(gpa(0x103)).is_some());
    vm.map_page(gpa(0x102), false).unwrap();
    let mut buf = [1u8; 1];
    vm.host().read(b, 2, 0, &mut buf).unwrap();
    assert_eq!(buf, [0]);
    assert_eq!(vm.balloon(b, 3..3), Err(HostMemError::EmptyRange));
    assert_eq!(vm.balloon(b, 15..17), Err(HostMemError::PageOutOfRange));
    assert_eq!(
        vm.balloon(BackingId(5), 0..1),
        Err(HostMemError::NoSuchBacking)
    );
    vm.check_invariants().unwrap();
    teardown_returns_everything(vm);
}

#[test]
fn merge_write_protects_and_write_fault_breaks_sharing() {
    let (vm, b, _) = vm_with_slot(SlotFlags::empty());
    vm.host_write(b, 0, 0, b"same").unwrap();
    vm.host_write(b, 1, 0, b"same").unwrap();
    vm.map_page(gpa(0x100), true).unwrap();
    vm.map_page(gpa(0x101), true).unwrap();
    vm.remote_flush().take();
    assert_eq!(vm.merge((b, 1), (b, 0)), Ok(true));
    let flushes = vm.remote_flush().take();
    // Both lost D and write permission, page 1 also its frame: both flushed.
    assert!(RecordingFlush::covered(&flushes, Gfn::new(0x100)));
    assert!(RecordingFlush::covered(&flushes, Gfn::new(0x101)));
    let (e, o) = (
        vm.lookup(gpa(0x100)).unwrap(),
        vm.lookup(gpa(0x101)).unwrap(),
    );
    assert_eq!(e.hfn(), o.hfn());
    assert!(!e.is_writable() && !o.is_writable());
    assert!(e.is_dirty(), "the data stays dirty");
    assert_eq!(e.entrylo() & entrylo::D, 0, "but D is clear");
    vm.check_invariants().unwrap();
    assert_eq!(vm.merge((b, 1), (b, 0)), Ok(false), "already shared");

    // Read stays on the shared frame; a write copies.
    let (_, odd) = vm.map_page(gpa(0x101), false).unwrap();
    assert_eq!(odd.hfn(), e.hfn());
    let (_, odd) = vm.map_page(gpa(0x101), true).unwrap();
    assert_ne!(odd.hfn(), e.hfn());
    assert!(odd.is_writable() && odd.is_dirty());
    assert!(matches!(
        vm.host().lock().page(b, 1),
        Ok(PageState::Private(_))
    ));
    assert!(
        !vm.lookup(gpa(0x100)).unwrap().is_writable(),
        "page 0 still shared"
    );
    let mut buf = [0u8; 4];
    vm.host().read(b, 1, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"same");
    vm.check_invariants().unwrap();
    teardown_returns_everything(vm);
}

#[test]
fn set_entry_keeps_clean_pages_clean_in_logged_read_only_slots() {
    // The Linux `else if` bug: a read-only *and* logged slot with a clean entry was cleaned
    // but not write-protected.
    let (vm, b, id) = vm_with_slot(SlotFlags::LOG_DIRTY);
    vm.map_page(gpa(0x104), false).unwrap();
    vm.set_memslot_flags(id, SlotFlags::LOG_DIRTY | SlotFlags::READ_ONLY)
        .unwrap();
    let frame = vm.host().lock().page(b, 4).unwrap().frame().unwrap();
    vm.set_entry(
        b,
        4,
        hv_core::notifier::HostEntry {
            hfn: frame,
            writable: true,
            dirty: true,
        },
    );
    let pte = vm.lookup(gpa(0x104)).unwrap();
    assert!(
        !pte.is_writable(),
        "read-only slot must stay write-protected"
    );
    assert!(
        !pte.is_dirty(),
        "clean page in a logged slot must stay clean"
    );
    vm.check_invariants().unwrap();
    teardown_returns_everything(vm);
}

#[test]
fn age_reports_young_and_test_age_looks_at_exactly_one_page() {
    let (vm, b, _) = vm_with_slot(SlotFlags::empty());
    assert_eq!(vm.test_age(b, 5), Ok(false));
    vm.map_page(gpa(0x105), false).unwrap();
    // Linux's test_age used an empty range and always said "old".
    assert_eq!(vm.test_age(b, 5), Ok(true));
    assert_eq!(vm.test_age(b, 4), Ok(false));
    assert_eq!(vm.test_age(b, 6), Ok(false));
    vm.remote_flush().take();
    assert_eq!(vm.age(b, 0..16), Ok(true));
    assert!(RecordingFlush::covered(
        &vm.remote_flush().take(),
        Gfn::new(0x105)
    ));
    assert_eq!(vm.test_age(b, 5), Ok(false));
    assert_eq!(vm.age(b, 0..16), Ok(false));
    assert!(
        vm.remote_flush().take().is_empty(),
        "nothing young, nothing to flush"
    );
    // Fast path makes it young again without a new frame.
    let before = vm.lookup(gpa(0x105)).unwrap();
    let (_, odd) = vm.map_page(gpa(0x105), false).unwrap();
    assert!(odd.is_young() && odd.hfn() == before.hfn());
    assert_eq!(vm.test_age(b, 16), Err(HostMemError::PageOutOfRange));
    teardown_returns_everything(vm);
}

#[test]
fn memslot_move_and_flag_changes_keep_the_table_coherent() {
    let (vm, _b, id) = vm_with_slot(SlotFlags::empty());
    vm.map_page(gpa(0x100), true).unwrap();
    vm.set_memslot_flags(id, SlotFlags::READ_ONLY).unwrap();
    assert!(!vm.lookup(gpa(0x100)).unwrap().is_writable());
    assert_eq!(
        vm.map_page(gpa(0x100), true),
        Err(FaultError::ReadOnlyWrite)
    );
    vm.set_memslot_flags(id, SlotFlags::empty()).unwrap();
    vm.map_page(gpa(0x100), true).unwrap();
    vm.move_memslot(id, Gfn::new(0x400)).unwrap();
    assert_eq!(vm.lookup(gpa(0x100)), None);
    let (even, _) = vm.map_page(gpa(0x400), false).unwrap();
    assert!(even.is_present());
    vm.check_invariants().unwrap();
    teardown_returns_everything(vm);
}

#[test]
fn allocation_failure_at_every_point_leaks_nothing() {
    // Faults needing a host frame and three table frames (fresh table), then a shared-page
    // copy: fail the n-th allocation of each source in turn.
    let mut failures = [0; 2];
    for (source, failed) in failures.iter_mut().enumerate() {
        for n in 0..6u64 {
            let (vm, b, _) = vm_with_slot(SlotFlags::empty());
            vm.host_write(b, 0, 0, &[1]).unwrap();
            vm.host_write(b, 1, 0, &[1]).unwrap();
            vm.merge((b, 1), (b, 0)).unwrap();
            if source == 0 {
                vm.host().lock().pool_mut().inject_alloc_failure(Some(n));
            } else {
                vm.with_mmu(|m| {
                    m.frames
                        .fail_allocation(Some(m.frames.allocation_attempts() + n))
                });
            }
            let results = [
                vm.map_page(gpa(0x100), false),
                vm.map_page(gpa(0x101), true),
                vm.map_page(gpa(0x102), true),
            ];
            for r in results {
                assert!(matches!(r, Ok(_) | Err(FaultError::OutOfMemory)), "{r:?}");
                *failed += usize::from(r.is_err());
            }
            vm.host().lock().pool_mut().inject_alloc_failure(None);
            vm.with_mmu(|m| m.frames.fail_allocation(None));
            vm.check_invariants().unwrap();
            // Everything still works afterwards.
            vm.map_page(gpa(0x101), true).unwrap();
            vm.check_invariants().unwrap();
            teardown_returns_everything(vm);
        }
    }
    assert!(
        failures.iter().all(|&f| f > 0),
        "injection never fired: {failures:?}"
    );
}

#[test]
fn teardown_with_shared_swapped_and_mapped_pages_frees_everything() {
    let (vm, b, _) = vm_with_slot(SlotFlags::LOG_DIRTY);
    let b2 = vm.host().create_backing(4).unwrap();
    vm.add_memslot(range(0x1000, 4), b2, 0, SlotFlags::empty())
        .unwrap();
    for p in 0..4 {
        vm.map_page(gpa(0x100 + p), true).unwrap();
        vm.map_page(gpa(0x1000 + p), p % 2 == 0).unwrap();
    }
    vm.merge((b2, 1), (b, 1)).unwrap();
    vm.swap_out(b, 3).unwrap();
    vm.check_invariants().unwrap();
    teardown_returns_everything(vm);
}

/// Routes host-side notifications on a shared layer to the VM owning the backing.
struct Router<'a>(Vec<(BackingId, &'a TestVm)>);

impl Router<'_> {
    fn vm(&self, backing: BackingId) -> &TestVm {
        self.0.iter().find(|(b, _)| *b == backing).unwrap().1
    }
}

impl MmuNotifier for Router<'_> {
    fn invalidate_range_start(&self, b: BackingId, pages: std::ops::Range<u64>) {
        self.vm(b).invalidate_range_start(b, pages);
    }
    fn invalidate_range_end(&self, b: BackingId, pages: std::ops::Range<u64>) {
        self.vm(b).invalidate_range_end(b, pages);
    }
    fn set_entry(&self, b: BackingId, page: u64, entry: hv_core::notifier::HostEntry) {
        self.vm(b).set_entry(b, page, entry);
    }
    fn clear_young(&self, b: BackingId, pages: std::ops::Range<u64>) -> bool {
        self.vm(b).clear_young(b, pages)
    }
    fn test_young(&self, b: BackingId, page: u64) -> bool {
        self.vm(b).test_young(b, page)
    }
}

#[test]
fn two_vms_on_a_shared_host_layer_share_a_frame_and_detach_cleanly() {
    use hv_core::fault::Vm;
    use hv_core::host_mem::HostMem;
    use hv_core::table_frames::ArenaTableFrames;
    use std::sync::Arc;

    let host = Arc::new(HostMem::new(pool(16)));
    let new_vm = |table_base| {
        Vm::with_host(
            ArenaTableFrames::with_base(hv_core::addr::Hfn::new(table_base)),
            Arc::clone(&host),
            RecordingFlush::default(),
        )
        .unwrap()
    };
    let (vm0, vm1): (TestVm, TestVm) = (new_vm(0x100_0000), new_vm(0x200_0000));
    let b0 = host.create_backing(4).unwrap();
    let b1 = host.create_backing(4).unwrap();
    vm0.add_memslot(range(0x100, 4), b0, 0, SlotFlags::empty())
        .unwrap();
    vm1.add_memslot(range(0x100, 4), b1, 0, SlotFlags::empty())
        .unwrap();
    vm0.host_write(b0, 0, 0, b"same").unwrap();
    vm1.host_write(b1, 0, 0, b"same").unwrap();
    vm0.map_page(gpa(0x100), true).unwrap();
    vm1.map_page(gpa(0x100), true).unwrap();

    let router = Router(vec![(b0, &vm0), (b1, &vm1)]);
    assert_eq!(host.merge(&router, (b1, 0), (b0, 0)), Ok(true));
    let (p0, p1) = (
        vm0.lookup(gpa(0x100)).unwrap(),
        vm1.lookup(gpa(0x100)).unwrap(),
    );
    assert_eq!(p0.hfn(), p1.hfn(), "one frame, two VMs");
    assert!(!p0.is_writable() && !p1.is_writable());
    vm0.check_invariants().unwrap();
    vm1.check_invariants().unwrap();

    // VM 1 writes: it gets a copy; VM 0 keeps the shared frame and its bytes.
    let (even, _) = vm1.map_page(gpa(0x100), true).unwrap();
    assert_ne!(even.hfn(), p0.hfn());
    vm1.host_write(b1, 0, 0, b"mine").unwrap();
    let mut buf = [0u8; 4];
    host.read(b0, 0, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"same");
    vm0.check_invariants().unwrap();
    vm1.check_invariants().unwrap();

    drop(router);
    assert_eq!(vm0.detach().live_tables(), 0);
    assert_eq!(host.lock().page(b0, 0), Err(HostMemError::NoSuchBacking));
    assert!(
        host.lock().page(b1, 0).unwrap().frame().is_some(),
        "VM 1's backing stays"
    );
    assert_eq!(vm1.detach().live_tables(), 0);
    let pool = Arc::try_unwrap(host).unwrap().into_pool();
    assert_eq!(pool.allocated_count(), 0, "host frames leaked");
}

#[test]
fn remote_flush_completes_before_the_frame_is_freed() {
    let (vm, b, _) = vm_with_slot(SlotFlags::empty());
    vm.host_write(b, 0, 0, b"x").unwrap();
    vm.host_write(b, 1, 0, b"x").unwrap();
    vm.map_page(gpa(0x100), false).unwrap();
    vm.map_page(gpa(0x101), false).unwrap();
    let epochs = vm.host().lock().pool().epochs();
    for op in 0..2 {
        let page = 1 - op as u64;
        let hfn = vm.lookup(gpa(0x100 + page)).unwrap().hfn().unwrap();
        let before = epochs.epoch(hfn).unwrap();
        *vm.remote_flush().watch.lock().unwrap() = Some((epochs.clone(), hfn));
        vm.remote_flush().epochs_at_flush.lock().unwrap().clear();
        if op == 0 {
            // Merge page 1 onto page 0: page 1's frame is dropped after its remap.
            assert_eq!(vm.merge((b, 1), (b, 0)), Ok(true));
        } else {
            // Balloon both pages: the shared frame loses both references.
            vm.balloon(b, 0..2).unwrap();
        }
        let at_flush = vm.remote_flush().epochs_at_flush.lock().unwrap().clone();
        assert!(
            !at_flush.is_empty(),
            "a young mapping changed without a flush"
        );
        assert!(
            at_flush.iter().all(|&e| e == before),
            "frame freed before the remote flush returned"
        );
        assert_eq!(
            epochs.epoch(hfn),
            Some(before + 1),
            "frame freed afterwards"
        );
    }
    teardown_returns_everything(vm);
}
