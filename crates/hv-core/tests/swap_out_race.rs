//! A guest store racing a swap-out, made deterministic: the "guest" holds a writable
//! translation of the page until a remote flush drops it, and stores through it at the
//! worst moment it could, right after the swap-out read the page's contents. The store
//! must end up in the page, either because it reached the saved copy or because it was
//! made impossible (flushed) before the copy was taken.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use hv_core::addr::{Gfn, GfnRange, Hfn};
use hv_core::fault::Vm;
use hv_core::flush::FlushScope;
use hv_core::frame_pool::{FrameMemory, FramePool, FRAME_BYTES};
use hv_core::memslot::SlotFlags;
use hv_core::shootdown::RemoteFlush;
use hv_core::table_frames::ArenaTableFrames;

const WORDS: usize = FRAME_BYTES / 8;
const BASE: Hfn = Hfn::new(0x4000);
const FRAMES: usize = 8;
const STORED: u64 = 0x0570_7e0f_1a7e;

/// The guest's cached translation and its one pending store.
#[derive(Default)]
struct Guest {
    /// Frame its translation points at (raw Hfn), valid until a flush.
    frame: AtomicU64,
    translation_valid: AtomicBool,
    store_pending: AtomicBool,
}

/// Frame memory of atomic words; reading a frame lets the guest store into it (if its
/// translation still allows) right after the bytes were read.
#[derive(Clone)]
struct RacyFrames {
    words: Arc<Vec<AtomicU64>>,
    guest: Arc<Guest>,
}

impl RacyFrames {
    fn word(&self, hfn: Hfn, index: usize) -> &AtomicU64 {
        let frame = hfn.checked_distance_from(BASE).unwrap() as usize;
        &self.words[frame * WORDS + index]
    }
}

impl FrameMemory for RacyFrames {
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
        (0..WORDS).all(|i| {
            self.word(a, i).load(Ordering::Relaxed) == self.word(b, i).load(Ordering::Relaxed)
        })
    }
    fn read(&self, hfn: Hfn, offset: usize, buf: &mut [u8]) {
        for (k, byte) in buf.iter_mut().enumerate() {
            let at = offset + k;
            *byte = self.word(hfn, at / 8).load(Ordering::Relaxed).to_le_bytes()[at % 8];
        }
        let g = &self.guest;
        if g.translation_valid.load(Ordering::Acquire)
            && g.frame.load(Ordering::Acquire) == hfn.raw()
            && g.store_pending.swap(false, Ordering::AcqRel)
        {
            self.word(hfn, 0).store(STORED, Ordering::Release);
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

/// Remote flush: drops the guest's cached translation.
struct GuestFlush(Arc<Guest>);

impl RemoteFlush for GuestFlush {
    fn flush_remote(&self, scope: FlushScope) {
        if scope != FlushScope::Nothing {
            self.0.translation_valid.store(false, Ordering::Release);
        }
    }
}

fn run(swap_out: impl Fn(&Vm<ArenaTableFrames, RacyFrames, GuestFlush>)) {
    let guest = Arc::new(Guest::default());
    let memory = RacyFrames {
        words: Arc::new((0..FRAMES * WORDS).map(|_| AtomicU64::new(0)).collect()),
        guest: guest.clone(),
    };
    let vm = Vm::new(
        ArenaTableFrames::with_base(Hfn::new(0x100_0000)),
        FramePool::new(memory, BASE, FRAMES),
        GuestFlush(guest.clone()),
    )
    .unwrap();
    let b = vm.host().create_backing(4).unwrap();
    let gfns = GfnRange::from_start_len(Gfn::new(0x100), 4).unwrap();
    vm.add_memslot(gfns, b, 0, SlotFlags::empty()).unwrap();
    let gpa = Gfn::new(0x101).checked_addr().unwrap();
    vm.map_page(gpa, true).unwrap();
    vm.host_write(b, 1, 0, &1u64.to_le_bytes()).unwrap();
    // The guest caches a writable translation of page 1 and has a store to do.
    let pte = vm.lookup(gpa).unwrap();
    assert!(pte.is_writable());
    guest
        .frame
        .store(pte.hfn().unwrap().raw(), Ordering::Release);
    guest.translation_valid.store(true, Ordering::Release);
    guest.store_pending.store(true, Ordering::Release);
    swap_out(&vm);
    assert!(!guest.translation_valid.load(Ordering::Acquire));
    if guest.store_pending.load(Ordering::Acquire) {
        // Flushed before it could store: the guest faults and stores into the page anew.
        vm.map_page(gpa, true).unwrap();
        vm.host_write(b, 1, 0, &STORED.to_le_bytes()).unwrap();
    }
    let mut word = [0u8; 8];
    vm.host().read(b, 1, 0, &mut word).unwrap();
    assert_eq!(
        u64::from_le_bytes(word),
        STORED,
        "the guest's store was lost"
    );
    vm.check_invariants().unwrap();
    let (_, pool) = vm.teardown();
    assert_eq!(pool.allocated_count(), 0);
}

#[test]
fn a_store_through_a_live_translation_is_not_lost_by_swap_out() {
    run(|vm| assert_eq!(vm.swap_out(hv_core::memslot::BackingId(0), 1), Ok(true)));
}

#[test]
fn a_store_through_a_live_translation_is_not_lost_by_swap_out_range() {
    run(|vm| {
        assert_eq!(
            vm.swap_out_range(hv_core::memslot::BackingId(0), 0..4),
            Ok(1)
        )
    });
}
