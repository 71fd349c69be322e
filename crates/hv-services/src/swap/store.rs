//! The compressed swap pool: page slots over a [`SwapBackend`] that stores byte blobs.
//!
//! [`CompressedSwap`] implements the memory core's [`SwapStore`]: a zero page takes no
//! space, other pages are LZ4-compressed (`lz4_flex` block format, `no_std`, its safe
//! encoder and decoder) and stored raw when compression does not pay. It keeps clean copies,
//! so a page read back and not written is swapped out again without recompression.
//!
//! [`MemBackend`] keeps blobs on the heap up to a byte budget; a block-device backend
//! (virtio-blk) can implement the same trait later. [`SharedSwap`] lets several VMs (each
//! with its own memory layer) share one pool while the service reads its statistics.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use hv_core::addr::Hfn;
use hv_core::frame_pool::{FrameMemory, FRAME_BYTES};
use hv_core::host_mem::SwapSlot;
use hv_core::swap_store::{SwapStore, SwapStoreError};
use hv_core::sync::Mutex;

/// A blob stored by a [`SwapBackend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobId(pub u32);

/// Storage of variable-sized byte blobs (compressed pages).
pub trait SwapBackend: Send {
    /// Stores `data`; returns its id.
    fn write(&mut self, data: &[u8]) -> Result<BlobId, SwapStoreError>;
    /// Reads blob `blob` into `buf`, whose length is the blob's length.
    fn read(&mut self, blob: BlobId, buf: &mut [u8]) -> Result<(), SwapStoreError>;
    /// Forgets a blob.
    fn free(&mut self, blob: BlobId);
    /// Bytes stored.
    fn used_bytes(&self) -> usize;
}

/// A [`SwapBackend`] on the heap, refusing to hold more than a byte budget.
#[derive(Debug)]
pub struct MemBackend {
    blobs: Vec<Option<Box<[u8]>>>,
    free_ids: Vec<u32>,
    used: usize,
    budget: usize,
}

impl MemBackend {
    /// A backend holding at most `budget` bytes of blobs.
    pub fn new(budget: usize) -> Self {
        Self {
            blobs: Vec::new(),
            free_ids: Vec::new(),
            used: 0,
            budget,
        }
    }
}

impl SwapBackend for MemBackend {
    fn write(&mut self, data: &[u8]) -> Result<BlobId, SwapStoreError> {
        if self.used + data.len() > self.budget {
            return Err(SwapStoreError::Full);
        }
        let mut copy = Vec::new();
        copy.try_reserve_exact(data.len())
            .map_err(|_| SwapStoreError::Full)?;
        copy.extend_from_slice(data);
        let id = match self.free_ids.pop() {
            Some(id) => id,
            None => {
                self.blobs
                    .try_reserve(1)
                    .map_err(|_| SwapStoreError::Full)?;
                self.blobs.push(None);
                u32::try_from(self.blobs.len() - 1).map_err(|_| SwapStoreError::Full)?
            }
        };
        self.blobs[id as usize] = Some(copy.into_boxed_slice());
        self.used += data.len();
        Ok(BlobId(id))
    }

    fn read(&mut self, blob: BlobId, buf: &mut [u8]) -> Result<(), SwapStoreError> {
        match self.blobs.get(blob.0 as usize) {
            Some(Some(data)) if data.len() == buf.len() => {
                buf.copy_from_slice(data);
                Ok(())
            }
            _ => Err(SwapStoreError::Io),
        }
    }

    fn free(&mut self, blob: BlobId) {
        if let Some(Some(data)) = self.blobs.get(blob.0 as usize) {
            self.used -= data.len();
            self.blobs[blob.0 as usize] = None;
            self.free_ids.push(blob.0);
        }
    }

    fn used_bytes(&self) -> usize {
        self.used
    }
}

/// Bytes of one allocation unit of a [`FrameBackend`].
pub const CHUNK_BYTES: usize = 256;
/// Chunks per host frame.
const CHUNKS_PER_FRAME: usize = FRAME_BYTES / CHUNK_BYTES;
/// `next` of the last chunk of a blob or of the free list.
const END: u32 = u32::MAX;

/// Errors setting up a [`FrameBackend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameBackendError {
    /// No frames, or more chunks than a `u32` can number.
    BadSize,
}

impl fmt::Display for FrameBackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("swap area must have 1.. frames and fewer than 2^32 chunks")
    }
}

/// A [`SwapBackend`] keeping blobs in host frames `base..base + frames` (a swap area the
/// firmware sets aside outside the guests' pool), so the pool does not live on the heap.
///
/// A blob is a chain of [`CHUNK_BYTES`] chunks; its id is its first chunk. The only
/// metadata is one `u32` per chunk ever used (the chain, and the free list through the same
/// array) and one bit per chunk saying where a live blob starts, so a stale or made-up id
/// is refused instead of reading someone else's page.
pub struct FrameBackend<M> {
    memory: M,
    base: Hfn,
    chunks: u32,
    /// Next chunk of the same blob or of the free list; grows as chunks are first used.
    next: Vec<u32>,
    /// Bit per chunk: a live blob starts here.
    heads: Vec<u64>,
    free_head: u32,
    free_count: u32,
    used_chunks: u32,
}

impl<M> fmt::Debug for FrameBackend<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameBackend")
            .field("base", &self.base)
            .field("chunks", &self.chunks)
            .field("used_chunks", &self.used_chunks)
            .finish_non_exhaustive()
    }
}

impl<M: FrameMemory> FrameBackend<M> {
    /// A backend over `frames` frames of `memory` starting at `base` (all of them its own).
    pub fn new(memory: M, base: Hfn, frames: usize) -> Result<Self, FrameBackendError> {
        let chunks = frames
            .checked_mul(CHUNKS_PER_FRAME)
            .and_then(|c| u32::try_from(c).ok())
            .filter(|&c| c > 0 && c < END)
            .ok_or(FrameBackendError::BadSize)?;
        Ok(Self {
            memory,
            base,
            chunks,
            next: Vec::new(),
            heads: Vec::new(),
            free_head: END,
            free_count: 0,
            used_chunks: 0,
        })
    }

    /// Bytes the area can hold.
    pub fn capacity_bytes(&self) -> usize {
        self.chunks as usize * CHUNK_BYTES
    }

    /// The frame memory (to give the frames back).
    pub fn into_memory(self) -> M {
        self.memory
    }

    fn is_head(&self, chunk: u32) -> bool {
        self.heads
            .get(chunk as usize / 64)
            .is_some_and(|w| w & (1 << (chunk % 64)) != 0)
    }

    fn set_head(&mut self, chunk: u32, head: bool) {
        let word = &mut self.heads[chunk as usize / 64];
        if head {
            *word |= 1 << (chunk % 64);
        } else {
            *word &= !(1 << (chunk % 64));
        }
    }

    fn place(&self, chunk: u32) -> (Hfn, usize) {
        let frame = chunk as usize / CHUNKS_PER_FRAME;
        (
            Hfn::new(self.base.raw() + frame as u64),
            (chunk as usize % CHUNKS_PER_FRAME) * CHUNK_BYTES,
        )
    }

    /// Takes one free chunk (the free list first, then a never-used one).
    fn take_chunk(&mut self) -> Result<u32, SwapStoreError> {
        if self.free_head != END {
            let chunk = self.free_head;
            self.free_head = self.next[chunk as usize];
            self.free_count -= 1;
            return Ok(chunk);
        }
        let chunk = u32::try_from(self.next.len()).map_err(|_| SwapStoreError::Full)?;
        if chunk >= self.chunks {
            return Err(SwapStoreError::Full);
        }
        self.next.try_reserve(1).map_err(|_| SwapStoreError::Full)?;
        self.next.push(END);
        if chunk as usize / 64 >= self.heads.len() {
            self.heads
                .try_reserve(1)
                .map_err(|_| SwapStoreError::Full)?;
            self.heads.push(0);
        }
        Ok(chunk)
    }

    fn free_chain(&mut self, first: u32) {
        let mut chunk = first;
        while chunk != END {
            let after = self.next[chunk as usize];
            self.next[chunk as usize] = self.free_head;
            self.free_head = chunk;
            self.free_count += 1;
            self.used_chunks -= 1;
            chunk = after;
        }
    }
}

impl<M: FrameMemory + Send> SwapBackend for FrameBackend<M> {
    fn write(&mut self, data: &[u8]) -> Result<BlobId, SwapStoreError> {
        let need = data.len().div_ceil(CHUNK_BYTES).max(1);
        let never_used = self.chunks as usize - self.next.len();
        if need > self.free_count as usize + never_used {
            return Err(SwapStoreError::Full);
        }
        let mut first = END;
        let mut last = END;
        for piece in 0..need {
            let chunk = match self.take_chunk() {
                Ok(chunk) => chunk,
                Err(e) => {
                    // Only the metadata's own allocation can fail here: undo.
                    if first != END {
                        self.free_chain(first);
                    }
                    return Err(e);
                }
            };
            self.used_chunks += 1;
            self.next[chunk as usize] = END;
            if last == END {
                first = chunk;
            } else {
                self.next[last as usize] = chunk;
            }
            last = chunk;
            let bytes = &data[(piece * CHUNK_BYTES).min(data.len())
                ..((piece + 1) * CHUNK_BYTES).min(data.len())];
            let (hfn, offset) = self.place(chunk);
            self.memory.write(hfn, offset, bytes);
        }
        self.set_head(first, true);
        Ok(BlobId(first))
    }

    fn read(&mut self, blob: BlobId, buf: &mut [u8]) -> Result<(), SwapStoreError> {
        if !self.is_head(blob.0) {
            return Err(SwapStoreError::Io);
        }
        let mut chunk = blob.0;
        for piece in buf.chunks_mut(CHUNK_BYTES) {
            if chunk == END {
                return Err(SwapStoreError::Io);
            }
            let (hfn, offset) = self.place(chunk);
            self.memory.read(hfn, offset, piece);
            chunk = self.next[chunk as usize];
        }
        // The blob must end exactly where the buffer does.
        if chunk != END && !buf.is_empty() {
            return Err(SwapStoreError::Io);
        }
        Ok(())
    }

    fn free(&mut self, blob: BlobId) {
        if self.is_head(blob.0) {
            self.set_head(blob.0, false);
            self.free_chain(blob.0);
        }
    }

    fn used_bytes(&self) -> usize {
        self.used_chunks as usize * CHUNK_BYTES
    }
}

/// How one slot's page is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Saved {
    Zero,
    Lz4 { blob: BlobId, len: u32 },
    Raw { blob: BlobId },
}

/// Bytes a saved page occupies before the backend rounds them.
fn payload_len(saved: Saved) -> u64 {
    match saved {
        Saved::Zero => 0,
        Saved::Lz4 { len, .. } => u64::from(len),
        Saved::Raw { .. } => FRAME_BYTES as u64,
    }
}

/// Statistics of a compressed pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwapPoolStats {
    /// Slots in use.
    pub slots: u64,
    /// Of which zero pages (no storage).
    pub zero_pages: u64,
    /// Of which stored uncompressed (compression did not pay).
    pub raw_pages: u64,
    /// Bytes the backend holds (with a [`FrameBackend`], whole chunks).
    pub stored_bytes: u64,
    /// Bytes of the stored pages themselves: compressed lengths, raw pages whole, zero
    /// pages nothing.
    pub payload_bytes: u64,
    /// Pages stored so far.
    pub stores: u64,
    /// Pages loaded so far.
    pub loads: u64,
}

/// Compressed page slots over a [`SwapBackend`].
#[derive(Debug)]
pub struct CompressedSwap<B> {
    backend: B,
    slots: Vec<Option<Saved>>,
    free_slots: Vec<u32>,
    scratch: Vec<u8>,
    stats: SwapPoolStats,
}

impl<B: SwapBackend> CompressedSwap<B> {
    /// An empty pool over `backend`.
    pub fn new(backend: B) -> Self {
        Self {
            backend,
            slots: Vec::new(),
            free_slots: Vec::new(),
            scratch: vec![0; lz4_flex::block::get_maximum_output_size(FRAME_BYTES)],
            stats: SwapPoolStats::default(),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Statistics.
    pub fn stats(&self) -> SwapPoolStats {
        SwapPoolStats {
            stored_bytes: self.backend.used_bytes() as u64,
            ..self.stats
        }
    }

    fn saved(&self, slot: SwapSlot) -> Result<Saved, SwapStoreError> {
        self.slots
            .get(slot.0 as usize)
            .copied()
            .flatten()
            .ok_or(SwapStoreError::Io)
    }

    fn place(&mut self, saved: Saved) -> Result<SwapSlot, SwapStoreError> {
        let index = match self.free_slots.pop() {
            Some(i) => i,
            None => {
                self.slots
                    .try_reserve(1)
                    .map_err(|_| SwapStoreError::Full)?;
                self.slots.push(None);
                u32::try_from(self.slots.len() - 1).map_err(|_| SwapStoreError::Full)?
            }
        };
        self.slots[index as usize] = Some(saved);
        Ok(SwapSlot(index))
    }

    fn encode(&mut self, page: &[u8]) -> Result<Saved, SwapStoreError> {
        if page.iter().all(|&b| b == 0) {
            self.stats.zero_pages += 1;
            return Ok(Saved::Zero);
        }
        // Below 7/8 of a page compression saves too little to pay for the decode.
        match lz4_flex::block::compress_into(page, &mut self.scratch) {
            Ok(len) if len < FRAME_BYTES / 8 * 7 => {
                let blob = self.backend.write(&self.scratch[..len])?;
                Ok(Saved::Lz4 {
                    blob,
                    len: len as u32,
                })
            }
            _ => {
                let blob = self.backend.write(page)?;
                self.stats.raw_pages += 1;
                Ok(Saved::Raw { blob })
            }
        }
    }
}

impl<B: SwapBackend> SwapStore for CompressedSwap<B> {
    fn store(&mut self, page: &[u8]) -> Result<SwapSlot, SwapStoreError> {
        if page.len() != FRAME_BYTES {
            return Err(SwapStoreError::Io);
        }
        let saved = self.encode(page)?;
        // Counted with the encode's own counters, so `release` undoes all of them.
        self.stats.payload_bytes += payload_len(saved);
        match self.place(saved) {
            Ok(slot) => {
                self.stats.stores += 1;
                self.stats.slots += 1;
                Ok(slot)
            }
            Err(e) => {
                self.release(saved);
                Err(e)
            }
        }
    }

    fn load(&mut self, slot: SwapSlot, page: &mut [u8]) -> Result<(), SwapStoreError> {
        if page.len() != FRAME_BYTES {
            return Err(SwapStoreError::Io);
        }
        match self.saved(slot)? {
            Saved::Zero => page.fill(0),
            Saved::Raw { blob } => self.backend.read(blob, page)?,
            Saved::Lz4 { blob, len } => {
                let compressed = &mut self.scratch[..len as usize];
                self.backend.read(blob, compressed)?;
                match lz4_flex::block::decompress_into(compressed, page) {
                    Ok(n) if n == FRAME_BYTES => {}
                    _ => return Err(SwapStoreError::Io),
                }
            }
        }
        self.stats.loads += 1;
        Ok(())
    }

    fn free(&mut self, slot: SwapSlot) {
        if let Ok(saved) = self.saved(slot) {
            self.slots[slot.0 as usize] = None;
            self.free_slots.push(slot.0);
            self.stats.slots -= 1;
            self.release(saved);
        }
    }

    fn slots_in_use(&self) -> usize {
        self.stats.slots as usize
    }

    fn keeps_clean_copies(&self) -> bool {
        true
    }
}

impl<B: SwapBackend> CompressedSwap<B> {
    fn release(&mut self, saved: Saved) {
        self.stats.payload_bytes -= payload_len(saved);
        match saved {
            Saved::Zero => self.stats.zero_pages -= 1,
            Saved::Raw { blob } => {
                self.stats.raw_pages -= 1;
                self.backend.free(blob);
            }
            Saved::Lz4 { blob, .. } => self.backend.free(blob),
        }
    }
}

/// One pool shared by several memory layers (a clone per VM), readable by the service.
pub struct SharedSwap<B> {
    inner: Arc<Mutex<CompressedSwap<B>>>,
}

impl<B> Clone for SharedSwap<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<B> fmt::Debug for SharedSwap<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSwap { .. }")
    }
}

impl<B: SwapBackend> SharedSwap<B> {
    /// A shared pool over `backend`.
    pub fn new(backend: B) -> Self {
        Self {
            inner: Arc::new(Mutex::new(CompressedSwap::new(backend))),
        }
    }

    /// The pool's statistics (all sharers together).
    pub fn stats(&self) -> SwapPoolStats {
        self.inner.lock().stats()
    }
}

impl<B: SwapBackend> SwapStore for SharedSwap<B> {
    fn store(&mut self, page: &[u8]) -> Result<SwapSlot, SwapStoreError> {
        self.inner.lock().store(page)
    }

    fn load(&mut self, slot: SwapSlot, page: &mut [u8]) -> Result<(), SwapStoreError> {
        self.inner.lock().load(slot, page)
    }

    fn free(&mut self, slot: SwapSlot) {
        self.inner.lock().free(slot)
    }

    /// Slots of all sharers: a memory layer only checks it for zero before replacing its
    /// store, which a shared pool in use rightly refuses.
    fn slots_in_use(&self) -> usize {
        self.inner.lock().slots_in_use()
    }

    fn keeps_clean_copies(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hv_core::frame_pool::VecFrameMemory;

    fn page(f: impl FnMut(usize) -> u8) -> Vec<u8> {
        (0..FRAME_BYTES).map(f).collect()
    }

    fn noise(seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        page(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
    }

    #[test]
    fn pages_round_trip_compressed_raw_and_zero() {
        let mut s = CompressedSwap::new(MemBackend::new(1 << 20));
        let text = page(|i| b"mipsvisor swap "[i % 15]);
        let random = noise(7);
        let zero = vec![0u8; FRAME_BYTES];
        let slots: Vec<SwapSlot> = [&text, &random, &zero]
            .iter()
            .map(|p| s.store(p).unwrap())
            .collect();
        let st = s.stats();
        assert_eq!((st.slots, st.zero_pages, st.raw_pages), (3, 1, 1));
        assert_eq!(
            st.payload_bytes, st.stored_bytes,
            "the heap backend stores exact blobs"
        );
        assert!(st.stored_bytes < 2 * FRAME_BYTES as u64);
        assert!(
            st.stored_bytes > FRAME_BYTES as u64,
            "the random page is raw"
        );
        for (slot, want) in slots.iter().zip([&text, &random, &zero]) {
            let mut out = vec![0xee; FRAME_BYTES];
            s.load(*slot, &mut out).unwrap();
            assert_eq!(&out, want);
        }
        // Loads keep the slot; frees release the storage and reuse the slot.
        assert_eq!(s.slots_in_use(), 3);
        for slot in &slots {
            s.free(*slot);
        }
        s.free(slots[0]);
        assert_eq!(s.stats().stored_bytes, 0);
        assert_eq!(s.slots_in_use(), 0);
        assert_eq!(s.store(&text), Ok(slots[2]));
        let mut out = vec![0; FRAME_BYTES];
        assert_eq!(s.load(slots[1], &mut out), Err(SwapStoreError::Io));
        assert_eq!(s.load(SwapSlot(99), &mut out), Err(SwapStoreError::Io));
        assert_eq!(s.store(&text[..10]), Err(SwapStoreError::Io));
    }

    #[test]
    fn a_full_backend_refuses_and_keeps_nothing() {
        let mut s = CompressedSwap::new(MemBackend::new(FRAME_BYTES + 100));
        s.store(&noise(1)).unwrap();
        assert_eq!(s.store(&noise(2)), Err(SwapStoreError::Full));
        assert_eq!(s.slots_in_use(), 1);
        // Zero pages need no room.
        assert!(s.store(&[0; FRAME_BYTES]).is_ok());
        assert_eq!(s.stats().stored_bytes, FRAME_BYTES as u64);
        assert_eq!(
            s.stats().payload_bytes,
            FRAME_BYTES as u64,
            "the refused page left nothing"
        );
    }

    #[test]
    fn corrupt_blobs_are_io_errors() {
        let mut s = CompressedSwap::new(MemBackend::new(1 << 20));
        let slot = s.store(&page(|i| (i / 64) as u8)).unwrap();
        let Some(Saved::Lz4 { blob, len }) = s.slots[slot.0 as usize] else {
            panic!("compressible page stored compressed");
        };
        let garbage = vec![0xff; len as usize];
        s.backend.blobs[blob.0 as usize] = Some(garbage.into_boxed_slice());
        let mut out = vec![0; FRAME_BYTES];
        assert_eq!(s.load(slot, &mut out), Err(SwapStoreError::Io));
    }

    #[test]
    fn shared_pool_serves_several_stores() {
        let shared = SharedSwap::new(MemBackend::new(1 << 20));
        let (mut a, mut b) = (shared.clone(), shared.clone());
        let sa = a.store(&page(|i| i as u8)).unwrap();
        let sb = b.store(&page(|i| (i * 3) as u8)).unwrap();
        assert_ne!(sa, sb);
        assert_eq!(shared.stats().slots, 2);
        let mut out = vec![0; FRAME_BYTES];
        b.load(sa, &mut out).unwrap();
        assert_eq!(out, page(|i| i as u8));
        a.free(sa);
        b.free(sb);
        assert_eq!(
            shared.stats(),
            SwapPoolStats {
                stores: 2,
                loads: 1,
                ..SwapPoolStats::default()
            }
        );
    }

    fn frame_backend(frames: usize) -> FrameBackend<VecFrameMemory> {
        let base = Hfn::new(0x8000);
        FrameBackend::new(VecFrameMemory::new(base, frames), base, frames).unwrap()
    }

    #[test]
    fn frame_backend_pages_round_trip_through_the_compressed_pool() {
        let mut s = CompressedSwap::new(frame_backend(4));
        let text = page(|i| b"frames hold the pool "[i % 21]);
        let random = noise(11);
        let a = s.store(&text).unwrap();
        let b = s.store(&random).unwrap();
        let z = s.store(&[0; FRAME_BYTES]).unwrap();
        let st = s.stats();
        assert_eq!((st.slots, st.raw_pages, st.zero_pages), (3, 1, 1));
        // The raw page takes 16 chunks, the text page a few: rounded to whole chunks.
        assert!(st.stored_bytes > FRAME_BYTES as u64);
        assert_eq!(st.stored_bytes % CHUNK_BYTES as u64, 0);
        assert!(st.payload_bytes > FRAME_BYTES as u64 && st.payload_bytes <= st.stored_bytes);
        for (slot, want) in [(a, &text), (b, &random), (z, &vec![0; FRAME_BYTES])] {
            let mut out = vec![0x5a; FRAME_BYTES];
            s.load(slot, &mut out).unwrap();
            assert_eq!(&out, want);
        }
        s.free(a);
        s.free(b);
        assert_eq!(s.stats().stored_bytes, 0);
        assert_eq!(s.stats().payload_bytes, 0);
        assert_eq!(s.backend().capacity_bytes(), 4 * FRAME_BYTES);
    }

    #[test]
    fn frame_backend_refuses_when_full_and_reuses_freed_chunks() {
        let mut b = frame_backend(1);
        assert_eq!(
            FrameBackend::new(VecFrameMemory::new(Hfn::new(1), 1), Hfn::new(1), 0).err(),
            Some(FrameBackendError::BadSize)
        );
        assert!(FrameBackendError::BadSize.to_string().contains("swap area"));
        let big = noise(3);
        let x = b.write(&big[..3000]).unwrap(); // 12 chunks
        assert_eq!(
            b.write(&big[..1100]),
            Err(SwapStoreError::Full),
            "needs 5 of 4"
        );
        let y = b.write(&big[..1000]).unwrap(); // the last 4 chunks
        assert_eq!(b.used_bytes(), FRAME_BYTES);
        assert_eq!(b.write(&[1]), Err(SwapStoreError::Full));
        b.free(x);
        // A freed or made-up id is refused, never read from someone else's chunks.
        let mut out = vec![0; 3000];
        assert_eq!(b.read(x, &mut out), Err(SwapStoreError::Io));
        assert_eq!(b.read(BlobId(2), &mut out), Err(SwapStoreError::Io));
        assert_eq!(b.read(BlobId(END), &mut out), Err(SwapStoreError::Io));
        // Wrong lengths are refused: longer than the chain, or shorter.
        assert_eq!(b.read(y, &mut vec![0; 1100]), Err(SwapStoreError::Io));
        assert_eq!(b.read(y, &mut vec![0; 700]), Err(SwapStoreError::Io));
        let mut back = vec![0; 1000];
        b.read(y, &mut back).unwrap();
        assert_eq!(back, big[..1000]);
        // The 12 freed chunks hold a new blob, spread over what the free list gives.
        let w = b.write(&big[1000..4000]).unwrap();
        b.free(x); // stale: nothing happens
        let mut again = vec![0; 3000];
        b.read(w, &mut again).unwrap();
        assert_eq!(again, big[1000..4000]);
        b.free(w);
        b.free(y);
        assert_eq!(b.used_bytes(), 0);
    }

    /// Random writes and frees against a model: contents exact, accounting exact, no chunk
    /// handed out twice.
    #[test]
    fn frame_backend_matches_a_model_under_churn() {
        let mut b = frame_backend(8);
        let mut live: Vec<(BlobId, Vec<u8>)> = Vec::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for step in 0..3000 {
            if rand() % 3 != 0 || live.is_empty() {
                let len = 1 + (rand() % FRAME_BYTES as u64) as usize;
                let data: Vec<u8> = (0..len).map(|i| (step as usize * 31 + i) as u8).collect();
                match b.write(&data) {
                    Ok(id) => live.push((id, data)),
                    Err(e) => {
                        assert_eq!(e, SwapStoreError::Full);
                        let used: usize = live.iter().map(|(_, d)| d.len().div_ceil(256)).sum();
                        assert!(used + len.div_ceil(256) > 8 * CHUNKS_PER_FRAME);
                    }
                }
            } else {
                let (id, data) = live.swap_remove((rand() % live.len() as u64) as usize);
                let mut out = vec![0; data.len()];
                b.read(id, &mut out).unwrap();
                assert_eq!(out, data, "step {step}");
                b.free(id);
            }
            let used: usize = live.iter().map(|(_, d)| d.len().div_ceil(256)).sum();
            assert_eq!(b.used_bytes(), used * CHUNK_BYTES);
        }
        for (id, data) in live {
            let mut out = vec![0; data.len()];
            b.read(id, &mut out).unwrap();
            assert_eq!(out, data);
        }
    }
}
