//! Std-thread race of host-side writes (`HostMem::write`, the VMM writing guest RAM through
//! its own mapping) against a merger and a swapper moving the same pages between frames.
//!
//! Page contents are one small value in word 0 (the rest zero), so pages are often
//! identical and get merged onto one shared frame, and they are swapped out and back in all
//! the time. A write that landed in a frame the page had just left would be lost (or seen by
//! the other sharers): the writer reads every page back right after writing it, and at the
//! end every page must hold exactly the last value written to it.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use hv_core::addr::Hfn;
use hv_core::frame_pool::{FramePool, VecFrameMemory};
use hv_core::host_mem::HostMem;
use hv_core::memslot::BackingId;
use hv_core::notifier::NoGuestMappings;

const POOL_BASE: Hfn = Hfn::new(0x4000);
const FRAMES: usize = 32;
const PAGES: u64 = 8;
/// Writes at least this many, and go on until the mover has moved pages often enough.
const WRITES: u64 = 5_000;
/// Merges and swap-outs the mover must have done while the writer ran.
const MOVES: u64 = 20;
/// Upper bound on writes, so a mover that never gets to run fails the test instead of hanging.
const WRITES_MAX: u64 = 5_000_000;

fn read_word(host: &HostMem<VecFrameMemory>, backing: BackingId, page: u64) -> u64 {
    let mut word = [0u8; 8];
    host.read(backing, page, 0, &mut word).unwrap();
    u64::from_le_bytes(word)
}

/// A small xorshift generator, so the test needs no dependency and is repeatable per seed.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn host_writes_survive_concurrent_merges_and_swap_outs() {
    let pool = FramePool::new(VecFrameMemory::new(POOL_BASE, FRAMES), POOL_BASE, FRAMES);
    let host = Arc::new(HostMem::new(pool));
    let backing = host.create_backing(PAGES).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let merges = Arc::new(AtomicU64::new(0));
    let swap_outs = Arc::new(AtomicU64::new(0));

    let mover = {
        let (host, done) = (host.clone(), done.clone());
        let (merges, swap_outs) = (merges.clone(), swap_outs.clone());
        std::thread::spawn(move || {
            let mut seed = 0x9e37_79b9_u64;
            while !done.load(Ordering::Acquire) {
                let a = next(&mut seed) % PAGES;
                let b = next(&mut seed) % PAGES;
                if host
                    .merge(&NoGuestMappings, (backing, a), (backing, b))
                    .unwrap()
                {
                    merges.fetch_add(1, Ordering::Relaxed);
                }
                if next(&mut seed).is_multiple_of(4)
                    && host.swap_out(&NoGuestMappings, backing, a).unwrap()
                {
                    swap_outs.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let moved_enough =
        || merges.load(Ordering::Relaxed) >= MOVES && swap_outs.load(Ordering::Relaxed) >= MOVES;

    let mut expected = [0u64; PAGES as usize];
    let mut seed = 0x2545_f491_u64;
    let mut writes = 0;
    while writes < WRITES || (!moved_enough() && writes < WRITES_MAX) {
        writes += 1;
        let page = next(&mut seed) % PAGES;
        // Few distinct values: pages keep becoming identical, so merges keep happening.
        let value = next(&mut seed) % 3 + 1;
        host.write(&NoGuestMappings, backing, page, 0, &value.to_le_bytes())
            .unwrap();
        expected[page as usize] = value;
        assert_eq!(
            read_word(&host, backing, page),
            value,
            "write to page {page} lost"
        );
        // Let the mover in between writes too (this machine may have few cores).
        if writes.is_multiple_of(16) {
            std::thread::yield_now();
        }
    }
    done.store(true, Ordering::Release);
    mover.join().unwrap();

    for (page, &value) in expected.iter().enumerate() {
        assert_eq!(read_word(&host, backing, page as u64), value, "page {page}");
    }
    // The race only means something if the mover really moved pages while we wrote.
    assert!(
        moved_enough(),
        "the mover did too little: {} merges, {} swap-outs",
        merges.load(Ordering::Relaxed),
        swap_outs.load(Ordering::Relaxed)
    );

    host.remove_backing(&NoGuestMappings, backing).unwrap();
    let host = Arc::try_unwrap(host).unwrap_or_else(|_| panic!("host still shared"));
    assert_eq!(host.into_pool().allocated_count(), 0, "frames leaked");
}
