//! Pluggable swap stores: clean copies kept while a page is unwritten, store errors.

mod common;

use common::*;
use hv_core::addr::{Gfn, Gpa};
use hv_core::fault::FaultError;
use hv_core::host_mem::{HostMemError, PageState, SwapSlot};
use hv_core::memslot::SlotFlags;
use hv_core::swap_store::{PlainSwap, SwapStore, SwapStoreError};

/// A plain store that keeps clean copies, or fails every load.
struct TestStore {
    inner: PlainSwap,
    fail_loads: bool,
}

impl SwapStore for TestStore {
    fn store(&mut self, page: &[u8]) -> Result<SwapSlot, SwapStoreError> {
        self.inner.store(page)
    }
    fn load(&mut self, slot: SwapSlot, page: &mut [u8]) -> Result<(), SwapStoreError> {
        if self.fail_loads {
            return Err(SwapStoreError::Io);
        }
        self.inner.load(slot, page)
    }
    fn free(&mut self, slot: SwapSlot) {
        self.inner.free(slot)
    }
    fn slots_in_use(&self) -> usize {
        self.inner.slots_in_use()
    }
    fn keeps_clean_copies(&self) -> bool {
        true
    }
}

fn gpa(gfn: u64) -> Gpa {
    Gfn::new(gfn).checked_addr().unwrap()
}

fn contents(vm: &TestVm, b: hv_core::memslot::BackingId, page: u64) -> Vec<u8> {
    let mut buf = vec![0; 4096];
    vm.host().read(b, page, 0, &mut buf).unwrap();
    buf
}

#[test]
fn clean_pages_keep_their_copy_until_written() {
    let vm = test_vm(16);
    let b = vm.host().create_backing(4).unwrap();
    vm.add_memslot(range(0x100, 4), b, 0, SlotFlags::empty())
        .unwrap();
    let store = TestStore {
        inner: PlainSwap::new(),
        fail_loads: false,
    };
    assert!(vm.host().set_swap_store(Box::new(store)).is_ok());
    let pattern: Vec<u8> = (0..4096).map(|i| (i * 7) as u8).collect();
    vm.host_write(b, 1, 0, &pattern).unwrap();
    assert_eq!(vm.swap_out(b, 1), Ok(true));
    // A store cannot be replaced while it holds pages.
    assert!(vm
        .host()
        .set_swap_store(Box::new(PlainSwap::new()))
        .is_err());
    // A read brings the page back read-only, its copy kept.
    let (_, odd) = vm.map_page(gpa(0x101), false).unwrap();
    assert!(odd.is_present() && !odd.is_writable());
    assert!(vm.host().lock().has_clean_copy(b, 1));
    assert_eq!(vm.host().lock().swapped_pages(), 1);
    assert_eq!(contents(&vm, b, 1), pattern);
    vm.check_invariants().unwrap();
    // Swapping it out again writes nothing.
    assert_eq!(vm.swap_out(b, 1), Ok(true));
    let c = vm.host().lock().swap_counters();
    assert_eq!((c.written, c.clean_reused, c.read_back), (1, 1, 1));
    assert_eq!(contents(&vm, b, 1), pattern);
    // Read back, then written: the copy is dropped and the entry becomes writable.
    vm.map_page(gpa(0x101), false).unwrap();
    let (_, odd) = vm.map_page(gpa(0x101), true).unwrap();
    assert!(odd.is_writable() && odd.is_dirty());
    assert!(!vm.host().lock().has_clean_copy(b, 1));
    assert_eq!(vm.host().lock().swapped_pages(), 0);
    vm.check_invariants().unwrap();
    // Now it is dirty, so the next swap-out writes again.
    assert_eq!(vm.swap_out(b, 1), Ok(true));
    assert_eq!(vm.host().lock().swap_counters().written, 2);
    // A write fault straight from swap takes the copy and frees the slot.
    vm.map_page(gpa(0x101), true).unwrap();
    assert_eq!(vm.host().lock().swapped_pages(), 0);
    // A clean copy is freed when the page is ballooned.
    vm.swap_out(b, 1).unwrap();
    vm.map_page(gpa(0x101), false).unwrap();
    vm.balloon(b, 1..2).unwrap();
    assert_eq!(vm.host().lock().swapped_pages(), 0);
    vm.check_invariants().unwrap();
    let (_, pool) = vm.teardown();
    assert_eq!(pool.allocated_count(), 0);
}

#[test]
fn a_failing_load_leaves_the_page_swapped_out() {
    let vm = test_vm(16);
    let b = vm.host().create_backing(2).unwrap();
    vm.add_memslot(range(0x100, 2), b, 0, SlotFlags::empty())
        .unwrap();
    let store = TestStore {
        inner: PlainSwap::new(),
        fail_loads: true,
    };
    assert!(vm.host().set_swap_store(Box::new(store)).is_ok());
    vm.host_write(b, 0, 0, &[1; 8]).unwrap();
    vm.swap_out(b, 0).unwrap();
    assert_eq!(vm.map_page(gpa(0x100), false), Err(FaultError::BadBacking));
    let mut buf = [0u8; 8];
    assert_eq!(vm.host().read(b, 0, 0, &mut buf), Err(HostMemError::SwapIo));
    let st = vm.host().lock();
    assert!(matches!(st.page(b, 0), Ok(PageState::SwappedOut(_))));
    assert_eq!(st.pool().allocated_count(), 0, "no frame taken");
    drop(st);
    let (_, pool) = vm.teardown();
    assert_eq!(pool.allocated_count(), 0);
}

/// A plain store holding at most `room` pages.
struct SmallStore {
    inner: PlainSwap,
    room: usize,
}

impl SwapStore for SmallStore {
    fn store(&mut self, page: &[u8]) -> Result<SwapSlot, SwapStoreError> {
        if self.inner.slots_in_use() == self.room {
            return Err(SwapStoreError::Full);
        }
        self.inner.store(page)
    }
    fn load(&mut self, slot: SwapSlot, page: &mut [u8]) -> Result<(), SwapStoreError> {
        self.inner.load(slot, page)
    }
    fn free(&mut self, slot: SwapSlot) {
        self.inner.free(slot)
    }
    fn slots_in_use(&self) -> usize {
        self.inner.slots_in_use()
    }
}

#[test]
fn a_range_swaps_out_with_one_flush_and_stops_where_the_store_fills() {
    let vm = test_vm(16);
    let b = vm.host().create_backing(8).unwrap();
    vm.add_memslot(range(0x100, 8), b, 0, SlotFlags::empty())
        .unwrap();
    assert!(vm
        .host()
        .set_swap_store(Box::new(SmallStore {
            inner: PlainSwap::new(),
            room: 4,
        }))
        .is_ok());
    // Pages 0..6 are resident (mapped by guest faults), 6 and 7 never touched.
    for page in 0..6u64 {
        vm.map_page(gpa(0x100 + page), true).unwrap();
        vm.host_write(b, page, 0, &[page as u8 + 1; 16]).unwrap();
    }
    vm.remote_flush().take();
    // Room for 4: pages 0..4 go out; one flush over the range (unmapped before any copy is
    // taken); 4 and 5 stay resident, unmapped until their next access.
    assert_eq!(vm.swap_out_range(b, 0..8), Ok(4));
    let flushes = vm.remote_flush().take();
    assert_eq!(flushes.len(), 1, "{flushes:?}");
    for page in 0..6 {
        assert!(RecordingFlush::covered(&flushes, Gfn::new(0x100 + page)));
    }
    assert!(vm.lookup(gpa(0x104)).is_none());
    {
        let st = vm.host().lock();
        assert!((0..4).all(|p| matches!(st.page(b, p), Ok(PageState::SwappedOut(_)))));
        assert!((4..6).all(|p| matches!(st.page(b, p), Ok(PageState::Private(_)))));
        assert!((6..8).all(|p| st.page(b, p) == Ok(PageState::NotTouched)));
    }
    // A full store: nothing goes out, the pages stay resident.
    vm.map_page(gpa(0x104), true).unwrap();
    assert_eq!(vm.swap_out_range(b, 4..8), Err(HostMemError::OutOfMemory));
    assert!(matches!(
        vm.host().lock().page(b, 4),
        Ok(PageState::Private(_))
    ));
    vm.remote_flush().take();
    assert_eq!(vm.swap_out_range(b, 6..8), Ok(0), "nothing resident");
    assert_eq!(
        vm.swap_out_range(b, 6..9),
        Err(HostMemError::PageOutOfRange)
    );
    assert!(
        vm.remote_flush().take().is_empty(),
        "nothing resident, nothing flushed"
    );
    for page in 0..6u64 {
        vm.map_page(gpa(0x100 + page), false).unwrap();
        assert_eq!(contents(&vm, b, page)[..16], [page as u8 + 1; 16]);
    }
    vm.check_invariants().unwrap();
    let (_, pool) = vm.teardown();
    assert_eq!(pool.allocated_count(), 0);
}
