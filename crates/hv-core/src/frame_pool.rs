//! Reference-counted pool of host frames, and the trait that reaches their contents.
//!
//! Guest RAM lives in 4 KiB host frames handed out by a [`FramePool`]. A frame can be named by
//! several owners at once (two guest pages merged onto one shared frame, a fault holding its
//! frame between resolving and installing it), so each frame carries a reference count and
//! goes back on the free list only when the count drops to zero.
//!
//! Frame *contents* are reached only through [`FrameMemory`]. The firmware implements it
//! with unsafe accesses through an unmapped segment; the host uses [`VecFrameMemory`], a safe
//! heap arena, so this crate stays `forbid(unsafe_code)`.
//!
//! Every frame also has a *free epoch*, bumped each time the frame returns to the free list.
//! It is not part of any protocol: it lets tests notice, without taking the pool's lock, that
//! a frame some derived translation still names has been freed (and maybe reused) since.

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::addr::{Hfn, PAGE_SIZE};

/// Size of one frame in bytes.
pub const FRAME_BYTES: usize = PAGE_SIZE as usize;

/// Errors from the frame pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolError {
    /// No free frame is left (or an injected allocation failure fired).
    Exhausted,
    /// The frame number is not one of this pool's frames.
    BadFrame,
    /// The frame is on the free list; nobody may take or drop a reference to it.
    NotAllocated,
    /// A byte range does not fit inside one frame.
    BadOffset,
    /// The reference count would overflow.
    RefcountOverflow,
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolError::Exhausted => "no free host frame",
            PoolError::BadFrame => "frame number outside the pool",
            PoolError::NotAllocated => "frame is not allocated",
            PoolError::BadOffset => "byte range does not fit in a frame",
            PoolError::RefcountOverflow => "frame reference count overflow",
        })
    }
}

/// Access to the contents of host frames.
///
/// Callers (the pool) only pass frames of the range the implementation was built for and
/// byte ranges inside one frame; anything else is a broken invariant and may panic.
pub trait FrameMemory {
    /// Fills the frame with zeroes.
    fn zero(&mut self, hfn: Hfn);
    /// Copies the whole of `src` over `dst`.
    fn copy(&mut self, dst: Hfn, src: Hfn);
    /// Whether two frames hold the same bytes.
    fn same_contents(&self, a: Hfn, b: Hfn) -> bool;
    /// Reads `buf.len()` bytes at `offset` inside the frame.
    fn read(&self, hfn: Hfn, offset: usize, buf: &mut [u8]);
    /// Writes `data` at `offset` inside the frame.
    fn write(&mut self, hfn: Hfn, offset: usize, data: &[u8]);
    /// Runs `f` over the whole frame's bytes (a page checksum, say). The default reads a copy
    /// into a stack buffer; implementations that can lend the bytes directly should, since a
    /// scanner calls this for every page it looks at.
    fn with_frame<X>(&self, hfn: Hfn, f: impl FnOnce(&[u8]) -> X) -> X {
        let mut buf = [0u8; FRAME_BYTES];
        self.read(hfn, 0, &mut buf);
        f(&buf)
    }
}

/// Host-side [`FrameMemory`]: one heap buffer holding frames `base..base + nframes`.
pub struct VecFrameMemory {
    base: Hfn,
    bytes: Vec<u8>,
}

impl VecFrameMemory {
    /// Backing store for `nframes` frames numbered from `base`.
    pub fn new(base: Hfn, nframes: usize) -> Self {
        Self {
            base,
            bytes: vec![0; nframes * FRAME_BYTES],
        }
    }

    fn span(&self, hfn: Hfn, offset: usize, len: usize) -> core::ops::Range<usize> {
        let index = hfn
            .checked_distance_from(self.base)
            .and_then(|d| usize::try_from(d).ok())
            .expect("frame below the arena");
        assert!(offset + len <= FRAME_BYTES, "access crosses a frame");
        let start = index * FRAME_BYTES + offset;
        start..start + len
    }
}

impl fmt::Debug for VecFrameMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VecFrameMemory")
            .field("base", &self.base)
            .field("nframes", &(self.bytes.len() / FRAME_BYTES))
            .finish()
    }
}

impl FrameMemory for VecFrameMemory {
    fn zero(&mut self, hfn: Hfn) {
        let span = self.span(hfn, 0, FRAME_BYTES);
        self.bytes[span].fill(0);
    }

    fn copy(&mut self, dst: Hfn, src: Hfn) {
        let from = self.span(src, 0, FRAME_BYTES);
        let to = self.span(dst, 0, FRAME_BYTES).start;
        self.bytes.copy_within(from, to);
    }

    fn same_contents(&self, a: Hfn, b: Hfn) -> bool {
        self.bytes[self.span(a, 0, FRAME_BYTES)] == self.bytes[self.span(b, 0, FRAME_BYTES)]
    }

    fn read(&self, hfn: Hfn, offset: usize, buf: &mut [u8]) {
        buf.copy_from_slice(&self.bytes[self.span(hfn, offset, buf.len())]);
    }

    fn write(&mut self, hfn: Hfn, offset: usize, data: &[u8]) {
        let span = self.span(hfn, offset, data.len());
        self.bytes[span].copy_from_slice(data);
    }

    fn with_frame<X>(&self, hfn: Hfn, f: impl FnOnce(&[u8]) -> X) -> X {
        f(&self.bytes[self.span(hfn, 0, FRAME_BYTES)])
    }
}

/// Per-frame free epochs, readable without the pool's lock (see the module docs).
#[derive(Debug)]
pub struct FrameEpochs {
    base: Hfn,
    epochs: Vec<AtomicU64>,
}

impl FrameEpochs {
    /// How many times `hfn` has been freed so far; `None` for a frame outside the pool.
    pub fn epoch(&self, hfn: Hfn) -> Option<u64> {
        let index = usize::try_from(hfn.checked_distance_from(self.base)?).ok()?;
        // Relaxed: a diagnostic counter. Readers that need ordering against a free get it
        // from the protocol (the remote-flush acknowledgement), not from this load.
        self.epochs.get(index).map(|e| e.load(Ordering::Relaxed))
    }
}

/// A pool of `nframes` host frames numbered from `base`, each with a reference count.
pub struct FramePool<M> {
    memory: M,
    base: Hfn,
    refcounts: Vec<u32>,
    /// Free frames, used last-in first-out so freed frames are reused soon (which makes
    /// use-after-free bugs visible quickly in tests).
    free: Vec<Hfn>,
    epochs: Arc<FrameEpochs>,
    /// Allocation attempts left before injected failures start; `None` = never fail.
    allocs_before_failure: Option<u64>,
    alloc_attempts: u64,
}

impl<M> fmt::Debug for FramePool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FramePool")
            .field("base", &self.base)
            .field("capacity", &self.refcounts.len())
            .field("free", &self.free.len())
            .finish()
    }
}

impl<M: FrameMemory> FramePool<M> {
    /// A pool of the frames `base..base + nframes`, whose contents `memory` reaches.
    pub fn new(memory: M, base: Hfn, nframes: usize) -> Self {
        let free = (0..nframes as u64)
            .rev()
            .map(|i| base.checked_add(i).expect("pool frame numbers overflow"))
            .collect();
        Self {
            memory,
            base,
            refcounts: vec![0; nframes],
            free,
            epochs: Arc::new(FrameEpochs {
                base,
                epochs: (0..nframes).map(|_| AtomicU64::new(0)).collect(),
            }),
            allocs_before_failure: None,
            alloc_attempts: 0,
        }
    }

    fn index(&self, hfn: Hfn) -> Result<usize, PoolError> {
        hfn.checked_distance_from(self.base)
            .and_then(|d| usize::try_from(d).ok())
            .filter(|&i| i < self.refcounts.len())
            .ok_or(PoolError::BadFrame)
    }

    fn allocated_index(&self, hfn: Hfn) -> Result<usize, PoolError> {
        let index = self.index(hfn)?;
        if self.refcounts[index] == 0 {
            return Err(PoolError::NotAllocated);
        }
        Ok(index)
    }

    /// Takes a free frame with reference count 1. Its contents are unspecified.
    pub fn alloc(&mut self) -> Result<Hfn, PoolError> {
        self.alloc_attempts += 1;
        if let Some(left) = self.allocs_before_failure.as_mut() {
            if *left == 0 {
                return Err(PoolError::Exhausted);
            }
            *left -= 1;
        }
        let hfn = self.free.pop().ok_or(PoolError::Exhausted)?;
        let index = self.index(hfn).expect("free list holds pool frames");
        debug_assert_eq!(self.refcounts[index], 0, "free frame with references");
        self.refcounts[index] = 1;
        Ok(hfn)
    }

    /// [`FramePool::alloc`], then fills the frame with zeroes.
    pub fn alloc_zeroed(&mut self) -> Result<Hfn, PoolError> {
        let hfn = self.alloc()?;
        self.memory.zero(hfn);
        Ok(hfn)
    }

    /// Takes one more reference to an allocated frame.
    pub fn get(&mut self, hfn: Hfn) -> Result<(), PoolError> {
        let index = self.allocated_index(hfn)?;
        let count = &mut self.refcounts[index];
        *count = count.checked_add(1).ok_or(PoolError::RefcountOverflow)?;
        Ok(())
    }

    /// Drops one reference; returns whether that freed the frame.
    ///
    /// Caller must make sure nothing can still reach the frame through a translation when
    /// this drops the last reference (the notifier protocol does that for guest mappings).
    pub fn put(&mut self, hfn: Hfn) -> Result<bool, PoolError> {
        let index = self.allocated_index(hfn)?;
        self.refcounts[index] -= 1;
        if self.refcounts[index] > 0 {
            return Ok(false);
        }
        self.epochs.epochs[index].fetch_add(1, Ordering::Relaxed);
        self.free.push(hfn);
        Ok(true)
    }

    /// Current reference count of `hfn` (0 when free or outside the pool).
    pub fn refcount(&self, hfn: Hfn) -> u32 {
        self.index(hfn).map_or(0, |i| self.refcounts[i])
    }

    /// Number of frames in the pool.
    pub fn capacity(&self) -> usize {
        self.refcounts.len()
    }

    /// Number of frames on the free list.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Number of frames with at least one reference.
    pub fn allocated_count(&self) -> usize {
        self.capacity() - self.free_count()
    }

    /// Fail every allocation after the next `successes` ones (`None`: stop failing).
    pub fn inject_alloc_failure(&mut self, successes: Option<u64>) {
        self.allocs_before_failure = successes;
    }

    /// Allocation attempts so far, failed ones included (to enumerate failure points).
    pub fn alloc_attempts(&self) -> u64 {
        self.alloc_attempts
    }

    /// The free epochs, shareable with lock-free observers.
    pub fn epochs(&self) -> Arc<FrameEpochs> {
        Arc::clone(&self.epochs)
    }

    /// Reads bytes of an allocated frame.
    pub fn read(&self, hfn: Hfn, offset: usize, buf: &mut [u8]) -> Result<(), PoolError> {
        self.allocated_index(hfn)?;
        check_span(offset, buf.len())?;
        self.memory.read(hfn, offset, buf);
        Ok(())
    }

    /// Writes bytes of an allocated frame.
    pub fn write(&mut self, hfn: Hfn, offset: usize, data: &[u8]) -> Result<(), PoolError> {
        self.allocated_index(hfn)?;
        check_span(offset, data.len())?;
        self.memory.write(hfn, offset, data);
        Ok(())
    }

    /// Copies the contents of allocated frame `src` over allocated frame `dst`.
    pub fn copy(&mut self, dst: Hfn, src: Hfn) -> Result<(), PoolError> {
        self.allocated_index(dst)?;
        self.allocated_index(src)?;
        self.memory.copy(dst, src);
        Ok(())
    }

    /// Runs `f` over the bytes of an allocated frame (see [`FrameMemory::with_frame`]).
    pub fn with_contents<X>(&self, hfn: Hfn, f: impl FnOnce(&[u8]) -> X) -> Result<X, PoolError> {
        self.allocated_index(hfn)?;
        Ok(self.memory.with_frame(hfn, f))
    }

    /// Whether two allocated frames hold the same bytes.
    pub fn same_contents(&self, a: Hfn, b: Hfn) -> Result<bool, PoolError> {
        self.allocated_index(a)?;
        self.allocated_index(b)?;
        Ok(self.memory.same_contents(a, b))
    }
}

fn check_span(offset: usize, len: usize) -> Result<(), PoolError> {
    match offset.checked_add(len) {
        Some(end) if end <= FRAME_BYTES => Ok(()),
        _ => Err(PoolError::BadOffset),
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn pool(n: usize) -> FramePool<VecFrameMemory> {
        let base = Hfn::new(0x100);
        FramePool::new(VecFrameMemory::new(base, n), base, n)
    }

    #[test]
    fn alloc_until_exhausted_then_free_returns_frames() {
        let mut p = pool(3);
        let frames: Vec<Hfn> = (0..3).map(|_| p.alloc().unwrap()).collect();
        assert_eq!(p.alloc(), Err(PoolError::Exhausted));
        assert_eq!(p.free_count(), 0);
        let mut sorted = frames.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(
            sorted,
            vec![Hfn::new(0x100), Hfn::new(0x101), Hfn::new(0x102)]
        );
        for &h in &frames {
            assert_eq!(p.put(h), Ok(true));
        }
        assert_eq!(p.allocated_count(), 0);
    }

    #[test]
    fn reference_counts_keep_frames_alive() {
        let mut p = pool(2);
        let h = p.alloc().unwrap();
        let epochs = p.epochs();
        p.get(h).unwrap();
        assert_eq!(p.refcount(h), 2);
        assert_eq!(p.put(h), Ok(false));
        assert_eq!(epochs.epoch(h), Some(0));
        assert_eq!(p.put(h), Ok(true));
        assert_eq!(epochs.epoch(h), Some(1));
        assert_eq!(p.refcount(h), 0);
        assert_eq!(p.put(h), Err(PoolError::NotAllocated));
        assert_eq!(p.get(h), Err(PoolError::NotAllocated));
    }

    #[test]
    fn bad_frames_and_offsets_are_errors() {
        let mut p = pool(1);
        let h = p.alloc().unwrap();
        assert_eq!(p.get(Hfn::new(0x0ff)), Err(PoolError::BadFrame));
        assert_eq!(p.put(Hfn::new(0x101)), Err(PoolError::BadFrame));
        assert_eq!(p.refcount(Hfn::new(u64::MAX)), 0);
        assert_eq!(
            p.write(h, FRAME_BYTES - 1, &[1, 2]),
            Err(PoolError::BadOffset)
        );
        assert_eq!(p.write(h, usize::MAX, &[1]), Err(PoolError::BadOffset));
        let mut buf = [0u8; 2];
        assert_eq!(
            p.read(h, FRAME_BYTES, &mut buf[..1]),
            Err(PoolError::BadOffset)
        );
        assert_eq!(p.epochs().epoch(Hfn::new(0x200)), None);
    }

    #[test]
    fn contents_zero_copy_compare() {
        let mut p = pool(2);
        let a = p.alloc().unwrap();
        p.write(a, 10, &[7, 8, 9]).unwrap();
        let b = p.alloc_zeroed().unwrap();
        assert_eq!(p.same_contents(a, b), Ok(false));
        p.copy(b, a).unwrap();
        assert_eq!(p.same_contents(a, b), Ok(true));
        let mut buf = [0u8; 3];
        p.read(b, 10, &mut buf).unwrap();
        assert_eq!(buf, [7, 8, 9]);
        let sum = |bytes: &[u8]| bytes.iter().map(|&x| u64::from(x)).sum::<u64>();
        assert_eq!(p.with_contents(b, sum), Ok(7 + 8 + 9));
        assert_eq!(p.with_contents(b, <[u8]>::len), Ok(FRAME_BYTES));
        p.put(a).unwrap();
        assert_eq!(p.with_contents(a, sum), Err(PoolError::NotAllocated));
        // A freed frame's contents are not reachable through the pool any more.
        assert_eq!(p.read(a, 0, &mut buf), Err(PoolError::NotAllocated));
    }

    #[test]
    fn injected_failure_fires_after_the_given_successes() {
        let mut p = pool(4);
        p.inject_alloc_failure(Some(1));
        assert!(p.alloc().is_ok());
        assert_eq!(p.alloc(), Err(PoolError::Exhausted));
        assert_eq!(p.allocated_count(), 1);
        p.inject_alloc_failure(None);
        assert!(p.alloc().is_ok());
        assert_eq!(p.alloc_attempts(), 3);
    }
}
