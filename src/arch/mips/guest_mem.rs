//! The memory core's frame traits on real memory: GPA-table frames ([`FwTableFrames`]) and
//! guest RAM frames ([`FwFrameMemory`]), both reached through the unmapped segments.
//!
//! These are the only places where a host frame number becomes a pointer for guest
//! memory. Each type owns the frames it hands out (as [`OwnedFrame`] tokens from the frame
//! allocator), so nothing else in the firmware can reach them, and it checks every frame
//! number it is given against that set before touching memory.

use super::addr::phys_to_virt;
use crate::mem::frame::{FrameError, OwnedFrame, FRAMES};
use alloc::vec::Vec;
use core::cell::Cell;
use core::fmt;
use hv_core::addr::Hfn;
use hv_core::frame_pool::{FrameMemory, FRAME_BYTES};
use hv_core::table_frames::{OutOfMemory, TableFrames, TablePage};

/// 64-bit words in a frame.
const FRAME_WORDS: usize = FRAME_BYTES / 8;

/// Kernel virtual address of the first byte of frame `hfn`.
fn frame_va(hfn: Hfn) -> u64 {
    phys_to_virt(hfn.checked_addr().expect("allocated frames have addresses"))
}

/// Slots of [`FwTableFrames`]' memo of recently checked table frames.
const RECENT_TABLES: usize = 8;

/// GPA-table frames from the firmware's frame allocator (one VM's tables).
pub struct FwTableFrames {
    /// Owned table frames, sorted by frame number.
    frames: Vec<OwnedFrame>,
    /// Frames found in `frames` before, by frame number modulo the slot count: (frame
    /// number + 1, kernel address), 0 = empty. Saves the search on every level of every
    /// walk (a fault walks three levels); a frame leaves it when it is freed.
    recent: [Cell<(u64, u64)>; RECENT_TABLES],
}

impl fmt::Debug for FwTableFrames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FwTableFrames")
            .field("tables", &self.frames.len())
            .finish()
    }
}

impl FwTableFrames {
    /// No tables yet.
    pub const fn new() -> Self {
        Self {
            frames: Vec::new(),
            recent: [const { Cell::new((0, 0)) }; RECENT_TABLES],
        }
    }

    /// Kernel address of table frame `hfn`, which must be one of ours.
    fn table_va(&self, hfn: Hfn) -> u64 {
        let slot = &self.recent[hfn.raw() as usize % RECENT_TABLES];
        let (tag, va) = slot.get();
        if tag == hfn.raw() + 1 {
            return va;
        }
        let va = frame_va(self.frames[self.position(hfn)].hfn());
        slot.set((hfn.raw() + 1, va));
        va
    }

    fn position(&self, hfn: Hfn) -> usize {
        self.frames
            .binary_search_by_key(&hfn.raw(), |f| f.hfn().raw())
            .unwrap_or_else(|_| panic!("frame {hfn} is not a GPA-table frame of this VM"))
    }
}

impl Default for FwTableFrames {
    fn default() -> Self {
        Self::new()
    }
}

impl TableFrames for FwTableFrames {
    fn alloc_table(&mut self) -> Result<Hfn, OutOfMemory> {
        let frame = FRAMES.lock().alloc().map_err(|_| OutOfMemory)?;
        let hfn = frame.hfn();
        let at = self
            .frames
            .binary_search_by_key(&hfn.raw(), |f| f.hfn().raw())
            .unwrap_err();
        self.frames.insert(at, frame);
        self.table_mut(hfn).fill(0);
        Ok(hfn)
    }

    fn free_table(&mut self, hfn: Hfn) {
        self.recent[hfn.raw() as usize % RECENT_TABLES].set((0, 0));
        let frame = self.frames.remove(self.position(hfn));
        if let Err(error) = FRAMES.lock().free(frame) {
            panic!("GPA-table frame {hfn} could not be freed: {error}");
        }
    }

    fn table(&self, hfn: Hfn) -> &TablePage {
        let va = self.table_va(hfn);
        // The shared borrow of `self` keeps every mutable view (`table_mut`) away while the
        // reference lives.
        // SAFETY: a 4 KiB-aligned RAM frame owned by this object (checked by table_va),
        // reached through the unmapped segment, with no mutable view alive.
        unsafe { &*(va as *const TablePage) }
    }

    fn table_mut(&mut self, hfn: Hfn) -> &mut TablePage {
        let va = self.table_va(hfn);
        // SAFETY: as in `table`; the exclusive borrow of `self` makes this the only view.
        unsafe { &mut *(va as *mut TablePage) }
    }
}

impl Drop for FwTableFrames {
    fn drop(&mut self) {
        let mut allocator = FRAMES.lock();
        for frame in self.frames.drain(..) {
            let _ = allocator.free(frame);
        }
    }
}

/// One VM's guest RAM frames: a physically contiguous run, owned for the VM's lifetime.
pub struct FwFrameMemory {
    frames: Vec<OwnedFrame>,
    base: Hfn,
}

impl fmt::Debug for FwFrameMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FwFrameMemory")
            .field("base", &self.base)
            .field("frames", &self.frames.len())
            .finish()
    }
}

impl FwFrameMemory {
    /// Takes `count` consecutive frames from the frame allocator.
    pub fn allocate(count: usize) -> Result<Self, FrameError> {
        let frames = FRAMES.lock().alloc_contiguous(count)?;
        let base = frames.first().ok_or(FrameError::OutOfFrames)?.hfn();
        Ok(Self { frames, base })
    }

    /// First frame number.
    pub fn base(&self) -> Hfn {
        self.base
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Kernel address of byte `offset` of frame `hfn`, which must be one of ours.
    fn byte_va(&self, hfn: Hfn, offset: usize, len: usize) -> u64 {
        let index = hfn
            .checked_distance_from(self.base)
            .filter(|&i| (i as usize) < self.frames.len())
            .unwrap_or_else(|| panic!("frame {hfn} is not guest RAM of this VM"));
        assert!(
            offset
                .checked_add(len)
                .is_some_and(|end| end <= FRAME_BYTES),
            "byte range {offset}+{len} outside a frame"
        );
        frame_va(self.frames[index as usize].hfn()) + offset as u64
    }
}

/// Zeroes the 4 KiB frame at kernel address `va` with 16 doubleword stores per loop turn
/// (about 580 instructions; the generic memset takes 5 per doubleword, about 2600). A first
/// guest touch pays this on every fresh page.
///
/// # Safety
/// `va` must be the 4 KiB-aligned cached kernel address of a whole frame nobody else
/// accesses meanwhile.
unsafe fn zero_frame(va: u64) {
    const _: () = assert!(FRAME_BYTES == 4096);
    // SAFETY: the caller hands over the frame; the loop writes exactly [va, va + 4096).
    unsafe {
        // No `nomem`: it writes memory. nostack: no stack use.
        core::arch::asm!(
            ".set push",
            ".set noreorder",
            ".set noat",
            "1:",
            "sd $zero, 0({p})",
            "sd $zero, 8({p})",
            "sd $zero, 16({p})",
            "sd $zero, 24({p})",
            "sd $zero, 32({p})",
            "sd $zero, 40({p})",
            "sd $zero, 48({p})",
            "sd $zero, 56({p})",
            "sd $zero, 64({p})",
            "sd $zero, 72({p})",
            "sd $zero, 80({p})",
            "sd $zero, 88({p})",
            "sd $zero, 96({p})",
            "sd $zero, 104({p})",
            "sd $zero, 112({p})",
            "daddiu {p}, {p}, 128",
            "bne {p}, {end}, 1b",
            "sd $zero, -8({p})",
            ".set pop",
            p = inout(reg) va => _,
            end = in(reg) va + 4096,
            options(nostack),
        );
    }
}

impl FrameMemory for FwFrameMemory {
    fn zero(&mut self, hfn: Hfn) {
        let va = self.byte_va(hfn, 0, FRAME_BYTES);
        // The guest reaches the frame only once the memory core mapped it, after zeroing.
        // SAFETY: a whole frame of guest RAM owned by this object (checked by byte_va); the
        // exclusive borrow of `self` rules out other host views.
        unsafe { zero_frame(va) };
    }

    fn copy(&mut self, dst: Hfn, src: Hfn) {
        let to = self.byte_va(dst, 0, FRAME_BYTES);
        let from = self.byte_va(src, 0, FRAME_BYTES);
        if to == from {
            return;
        }
        // SAFETY: two distinct whole frames of guest RAM owned by this object.
        unsafe {
            core::ptr::copy_nonoverlapping(from as *const u8, to as *mut u8, FRAME_BYTES);
        }
    }

    fn same_contents(&self, a: Hfn, b: Hfn) -> bool {
        let left = self.byte_va(a, 0, FRAME_BYTES);
        let right = self.byte_va(b, 0, FRAME_BYTES);
        // A guest writing concurrently only changes the answer.
        // SAFETY: whole 4 KiB-aligned frames of guest RAM owned by this object, read as u64
        // words, for which every bit pattern is valid.
        let (left, right) = unsafe {
            (
                core::slice::from_raw_parts(left as *const u64, FRAME_WORDS),
                core::slice::from_raw_parts(right as *const u64, FRAME_WORDS),
            )
        };
        // Word compares, folded eight at a time (a byte-wise compare is eight times the
        // loads); an early exit per block still stops soon on pages that differ early.
        left.chunks_exact(8)
            .zip(right.chunks_exact(8))
            .all(|(x, y)| x.iter().zip(y).fold(0, |acc, (p, q)| acc | (p ^ q)) == 0)
    }

    fn with_frame<X>(&self, hfn: Hfn, f: impl FnOnce(&[u8]) -> X) -> X {
        let va = self.byte_va(hfn, 0, FRAME_BYTES);
        // Lent without a copy (the dedup scanner checksums every page it visits); as in
        // `same_contents`, a guest writing concurrently only changes what `f` computes.
        // SAFETY: a whole frame of guest RAM owned by this object; every byte is valid u8.
        f(unsafe { core::slice::from_raw_parts(va as *const u8, FRAME_BYTES) })
    }

    fn read(&self, hfn: Hfn, offset: usize, buf: &mut [u8]) {
        let va = self.byte_va(hfn, offset, buf.len());
        // An instruction fetch for emulation: one load instead of a call to memcpy.
        if let Ok(word) = <&mut [u8; 4]>::try_from(&mut *buf) {
            if va.is_multiple_of(4) {
                // SAFETY: as below; aligned, inside the checked range.
                *word = unsafe { (va as *const u32).read() }.to_ne_bytes();
                return;
            }
        }
        // SAFETY: the range lies inside a frame of guest RAM owned by this object (checked by
        // byte_va) and does not overlap `buf`, which is host memory.
        unsafe {
            core::ptr::copy_nonoverlapping(va as *const u8, buf.as_mut_ptr(), buf.len());
        }
    }

    fn write(&mut self, hfn: Hfn, offset: usize, data: &[u8]) {
        let va = self.byte_va(hfn, offset, data.len());
        // SAFETY: as in `read`, in the other direction.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), va as *mut u8, data.len()) };
    }
}

impl Drop for FwFrameMemory {
    fn drop(&mut self) {
        let mut allocator = FRAMES.lock();
        for frame in self.frames.drain(..) {
            let _ = allocator.free(frame);
        }
    }
}
