//! The kernel heap (`alloc`): linked_list_allocator over a fixed block of RAM.
//!
//! The heap lock is taken with interrupts off, so an interrupt handler on the same CPU can
//! never find it held by the code it interrupted.

use crate::arch::irq::IrqGuard;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};
use linked_list_allocator::Heap;
use spin::Mutex;

/// Global allocator wrapper (see the module notes).
struct KernelHeap(Mutex<Heap>);

// SAFETY: allocation and deallocation go to linked_list_allocator's Heap under a lock,
// which is a correct allocator for the block given to `init`.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _irq = IrqGuard::new();
        self.0
            .lock()
            .allocate_first_fit(layout)
            .map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        let _irq = IrqGuard::new();
        if let Some(pointer) = NonNull::new(pointer) {
            // SAFETY: GlobalAlloc's contract: `pointer` came from `alloc` with `layout`.
            unsafe { self.0.lock().deallocate(pointer, layout) };
        }
    }
}

#[global_allocator]
static HEAP: KernelHeap = KernelHeap(Mutex::new(Heap::empty()));

/// Hands the block `[start, start + size)` to the heap. Called once at boot.
///
/// # Safety
/// The block must be writable RAM that nothing else uses, for the rest of the run.
pub unsafe fn init(start: u64, size_bytes: usize) {
    let _irq = IrqGuard::new();
    // SAFETY: forwarded caller contract.
    unsafe { HEAP.0.lock().init(start as *mut u8, size_bytes) };
}

/// Bytes in use and bytes free.
pub fn usage() -> (usize, usize) {
    let _irq = IrqGuard::new();
    let heap = HEAP.0.lock();
    (heap.used(), heap.free())
}
