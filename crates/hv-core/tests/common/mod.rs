//! Shared test harness: a host-side VM with recording remote flush.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use hv_core::addr::{Gfn, GfnRange, Hfn};
use hv_core::fault::Vm;
use hv_core::flush::FlushScope;
use hv_core::frame_pool::{FrameEpochs, FramePool, VecFrameMemory};
use hv_core::shootdown::RemoteFlush;
use hv_core::table_frames::ArenaTableFrames;

/// Remote flush that records what it was asked to flush.
#[derive(Debug, Default)]
pub struct RecordingFlush {
    pub scopes: Mutex<Vec<FlushScope>>,
    /// A frame whose free epoch is recorded at every flush (to check flush-before-free).
    pub watch: Mutex<Option<(Arc<FrameEpochs>, Hfn)>>,
    pub epochs_at_flush: Mutex<Vec<u64>>,
}

impl RecordingFlush {
    pub fn take(&self) -> Vec<FlushScope> {
        std::mem::take(&mut *self.scopes.lock().unwrap())
    }

    /// Whether some recorded flush covers `gfn`.
    pub fn covered(scopes: &[FlushScope], gfn: Gfn) -> bool {
        scopes.iter().any(|s| match s {
            FlushScope::All => true,
            FlushScope::Gfns(r) => r.contains(gfn),
            FlushScope::Nothing => false,
        })
    }
}

impl RemoteFlush for RecordingFlush {
    fn flush_remote(&self, scope: FlushScope) {
        self.scopes.lock().unwrap().push(scope);
        if let Some((epochs, hfn)) = &*self.watch.lock().unwrap() {
            let epoch = epochs.epoch(*hfn).unwrap();
            self.epochs_at_flush.lock().unwrap().push(epoch);
        }
    }
}

pub type TestVm = Vm<ArenaTableFrames, VecFrameMemory, RecordingFlush>;

pub const POOL_BASE: Hfn = Hfn::new(0x4000);

pub fn pool(nframes: usize) -> FramePool<VecFrameMemory> {
    FramePool::new(VecFrameMemory::new(POOL_BASE, nframes), POOL_BASE, nframes)
}

pub fn test_vm(nframes: usize) -> TestVm {
    Vm::new(
        ArenaTableFrames::with_base(Hfn::new(0x100_0000)),
        pool(nframes),
        RecordingFlush::default(),
    )
    .expect("root table")
}

pub fn range(start: u64, npages: u64) -> GfnRange {
    GfnRange::from_start_len(Gfn::new(start), npages).unwrap()
}
