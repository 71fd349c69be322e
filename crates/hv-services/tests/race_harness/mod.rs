//! What the std-thread race tests of the services share: frame memory of atomic words the
//! "guest" thread stores into straight through its software TLB, a small PRNG, the progress
//! handshake that keeps the two threads interleaved, and the guest's TLB entry.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use hv_core::addr::Hfn;
use hv_core::fault::Vm;
use hv_core::frame_pool::{FrameMemory, FRAME_BYTES};
use hv_core::shootdown::QuiescenceTracker;
use hv_core::table_frames::ArenaTableFrames;

pub const WORDS: usize = FRAME_BYTES / 8;
pub const BASE: Hfn = Hfn::new(0x4000);

/// Where the host side lets the guest thread run, to widen the race a test is about.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum YieldAt {
    /// Right after a comparison (a merge that compared before write-protecting loses stores).
    AfterCompare,
    /// Right after a copy is read out (a swap-out that copied before unmapping loses stores).
    AfterRead,
}

/// Frame memory of atomic words, shareable with the "guest".
#[derive(Clone)]
pub struct AtomicFrames {
    words: Arc<Vec<AtomicU64>>,
    yield_at: YieldAt,
}

impl AtomicFrames {
    /// `frames` zeroed frames from [`BASE`].
    pub fn new(frames: usize, yield_at: YieldAt) -> Self {
        Self {
            words: Arc::new((0..frames * WORDS).map(|_| AtomicU64::new(0)).collect()),
            yield_at,
        }
    }

    pub fn word(&self, hfn: Hfn, index: usize) -> &AtomicU64 {
        let frame = hfn.checked_distance_from(BASE).unwrap() as usize;
        &self.words[frame * WORDS + index]
    }
}

impl FrameMemory for AtomicFrames {
    fn zero(&mut self, hfn: Hfn) {
        (0..WORDS).for_each(|i| self.word(hfn, i).store(0, Ordering::Relaxed));
    }
    fn copy(&mut self, dst: Hfn, src: Hfn) {
        for i in 0..WORDS {
            let w = self.word(src, i).load(Ordering::Relaxed);
            self.word(dst, i).store(w, Ordering::Relaxed);
        }
    }
    fn same_contents(&self, a: Hfn, b: Hfn) -> bool {
        let same = (0..WORDS).all(|i| {
            self.word(a, i).load(Ordering::Relaxed) == self.word(b, i).load(Ordering::Relaxed)
        });
        if self.yield_at == YieldAt::AfterCompare {
            std::thread::yield_now();
        }
        same
    }
    fn read(&self, hfn: Hfn, offset: usize, buf: &mut [u8]) {
        for (k, byte) in buf.iter_mut().enumerate() {
            let at = offset + k;
            *byte = self.word(hfn, at / 8).load(Ordering::Relaxed).to_le_bytes()[at % 8];
        }
        if self.yield_at == YieldAt::AfterRead {
            std::thread::yield_now();
        }
    }
    fn write(&mut self, hfn: Hfn, offset: usize, data: &[u8]) {
        for (k, &byte) in data.iter().enumerate() {
            let at = offset + k;
            let w = self.word(hfn, at / 8);
            let mut bytes = w.load(Ordering::Relaxed).to_le_bytes();
            bytes[at % 8] = byte;
            w.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
        }
    }
}

pub type RaceVm = Vm<ArenaTableFrames, AtomicFrames, QuiescenceTracker>;

pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// How far each thread got; each waits for the other so that they really interleave.
#[derive(Default)]
pub struct Progress {
    pub ops: AtomicU64,
    pub passes: AtomicU64,
    pub done: AtomicBool,
}

/// Guest operations between two quiescent points (flush acknowledgements).
pub const QUIESCE_EVERY: u64 = 16;

/// How far one thread may run ahead of the other (in guest operations).
pub const SLACK: u64 = 64;

#[derive(Clone, Copy)]
pub struct TlbEntry {
    pub hfn: Hfn,
    pub writable: bool,
}

/// A guest that fails leaves the guest, so a scanner waiting for its flush acknowledgement
/// does not hang and the failure is reported.
pub struct LeaveOnPanic<'a>(pub &'a QuiescenceTracker);

impl Drop for LeaveOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.0.exit_guest(0);
        }
    }
}
