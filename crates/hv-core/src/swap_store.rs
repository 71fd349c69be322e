//! Where the host memory layer keeps swapped-out pages: the [`SwapStore`] interface and the
//! default uncompressed in-memory store.
//!
//! The memory services plug in their own store (compressed, or on a block device) with
//! [`HostMem::set_swap_store`](crate::host_mem::HostMem::set_swap_store). A store that
//! [keeps clean copies](SwapStore::keeps_clean_copies) lets a page read back from swap keep
//! its slot while it stays unwritten: the layer maps it read-only, the first write takes the
//! slow path and drops the slot, and swapping the page out again while it is clean writes
//! nothing.

use alloc::vec::Vec;
use core::fmt;

use crate::frame_pool::FRAME_BYTES;
use crate::host_mem::SwapSlot;

/// Errors from a swap store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwapStoreError {
    /// No room left in the store.
    Full,
    /// The saved copy could not be read back (I/O error, corrupt data).
    Io,
}

impl fmt::Display for SwapStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SwapStoreError::Full => "swap store full",
            SwapStoreError::Io => "swap store could not read a saved page back",
        })
    }
}

/// Storage for swapped-out pages, one slot per page.
pub trait SwapStore: Send {
    /// Saves a copy of `page` (exactly one frame) and returns its slot.
    fn store(&mut self, page: &[u8]) -> Result<SwapSlot, SwapStoreError>;
    /// Reads the copy in `slot` into `page` (exactly one frame). The slot stays valid.
    fn load(&mut self, slot: SwapSlot, page: &mut [u8]) -> Result<(), SwapStoreError>;
    /// Forgets `slot`. Only slots returned by `store` and not yet freed are passed.
    fn free(&mut self, slot: SwapSlot);
    /// Slots in use.
    fn slots_in_use(&self) -> usize;
    /// Whether a page read back stays in the store while it is clean (see the module docs).
    fn keeps_clean_copies(&self) -> bool {
        false
    }
}

/// The default store: uncompressed page copies on the heap.
#[derive(Debug, Default)]
pub struct PlainSwap {
    slots: Vec<Option<Vec<u8>>>,
}

impl PlainSwap {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl SwapStore for PlainSwap {
    fn store(&mut self, page: &[u8]) -> Result<SwapSlot, SwapStoreError> {
        let mut copy = Vec::new();
        copy.try_reserve_exact(FRAME_BYTES)
            .map_err(|_| SwapStoreError::Full)?;
        copy.extend_from_slice(page);
        let index = match self.slots.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.slots
                    .try_reserve(1)
                    .map_err(|_| SwapStoreError::Full)?;
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let slot = SwapSlot(u32::try_from(index).map_err(|_| SwapStoreError::Full)?);
        self.slots[index] = Some(copy);
        Ok(slot)
    }

    fn load(&mut self, slot: SwapSlot, page: &mut [u8]) -> Result<(), SwapStoreError> {
        let saved = self
            .slots
            .get(slot.0 as usize)
            .and_then(Option::as_ref)
            .ok_or(SwapStoreError::Io)?;
        page.copy_from_slice(saved);
        Ok(())
    }

    fn free(&mut self, slot: SwapSlot) {
        if let Some(s) = self.slots.get_mut(slot.0 as usize) {
            *s = None;
        }
    }

    fn slots_in_use(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }
}
