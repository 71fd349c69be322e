//! Self-tests run at boot: exceptions (every CPU), allocators and the high-RAM alias (CPU 0).

use crate::arch::addr::phys_to_virt;
use crate::arch::trap::{expect_fault, ExcCode};
use crate::arch::{cp0, cpu_id, probe, tlb};
use crate::board;
use crate::mem::frame::{FrameAllocator, FRAMES, WORDS_PER_FRAME};
use crate::mem::heap;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hv_core::addr::Hpa;

/// Value a skipped load leaves in its destination register.
const SENTINEL: u64 = 0x5e57_1a1e_dead_beef;
/// Pattern written through the direct map and read back through the TLB.
const TLB_PATTERN: u64 = 0x7e57_0000_0000_0000;

/// Virtual page this CPU uses for the TLB refill test (KSEG2, one MiB apart per CPU; odd
/// CPUs use the odd page of a pair so both EntryLo0 and EntryLo1 get exercised).
fn refill_test_va(cpu: usize) -> u64 {
    tlb::KSEG2_BASE + ((cpu as u64) << 20) + ((cpu as u64 & 1) << 12)
}

/// Takes and returns from a breakpoint, an address error and a TLB refill on this CPU.
pub fn exceptions() -> Result<(), &'static str> {
    let ((), record) = expect_fault(ExcCode::Breakpoint, probe::breakpoint);
    if record.is_none() {
        return Err("BREAK did not raise a breakpoint exception");
    }

    let (value, record) = expect_fault(ExcCode::AddressErrorLoad, || {
        probe::load_from_address_hole(SENTINEL)
    });
    match record {
        None => return Err("load from the address hole did not raise an address error"),
        Some(r) if r.bad_vaddr != probe::ADDRESS_HOLE => {
            return Err("address error: wrong BadVAddr")
        }
        Some(_) if value != SENTINEL => return Err("address error: faulting load was not skipped"),
        Some(_) => {}
    }

    let mut frame = FRAMES
        .lock()
        .alloc()
        .map_err(|_| "no frame for the TLB test")?;
    let cpu = cpu_id();
    let pattern = TLB_PATTERN | frame.hfn().raw();
    frame.write_u64(0, pattern);
    let va = refill_test_va(cpu);
    tlb::set_window(va, frame.hpa());
    let before = tlb::refills();
    // SAFETY: the window maps `va` to `frame`, which this function owns; aligned.
    let first = unsafe { probe::read_mapped(va) };
    let after_first = tlb::refills();
    // SAFETY: as above; the entry is now in the TLB.
    let second = unsafe { probe::read_mapped(va) };
    let after_second = tlb::refills();
    tlb::clear_window();
    FRAMES
        .lock()
        .free(frame)
        .map_err(|_| "TLB test frame could not be freed")?;
    if after_first != before + 1 {
        return Err("first access to the window did not take exactly one TLB refill");
    }
    if after_second != after_first {
        return Err("refilled TLB entry did not stay in the TLB");
    }
    if first != pattern || second != pattern {
        return Err("TLB-mapped read returned the wrong data");
    }
    Ok(())
}

/// Frames drained, and whether some of them came from above 256 MiB.
#[derive(Debug)]
pub struct FrameRoundTrip {
    /// Frames handed out before the allocator ran dry.
    pub drained: usize,
    /// Frames among them above the I/O hole.
    pub high: usize,
}

/// Allocates every free frame, writes and checks a pattern in each (so every frame,
/// including xkphys-only ones, is really RAM), frees them all and checks the counts.
pub fn frame_round_trip() -> Result<FrameRoundTrip, String> {
    let free_before = FRAMES.lock().free_frames();
    let mut frames = Vec::with_capacity(free_before);
    let mut high = 0;
    {
        let mut allocator = FRAMES.lock();
        while let Ok(mut frame) = allocator.alloc() {
            let tag = frame.hfn().raw() ^ 0xa5a5_0000_0000_0000;
            frame.write_u64(0, tag);
            frame.write_u64(WORDS_PER_FRAME - 1, !tag);
            if frame.hpa().raw() >= board::RAM_FULL_ALIAS.raw() {
                high += 1;
            }
            frames.push(frame);
        }
        if allocator.free_frames() != 0 || allocator.used_frames() < frames.len() {
            return Err(format!(
                "counts after draining: free={}",
                allocator.free_frames()
            ));
        }
    }
    let drained = frames.len();
    if drained != free_before {
        return Err(format!("drained {drained} frames, {free_before} were free"));
    }
    for frame in &frames {
        let tag = frame.hfn().raw() ^ 0xa5a5_0000_0000_0000;
        if frame.read_u64(0) != tag || frame.read_u64(WORDS_PER_FRAME - 1) != !tag {
            return Err(format!("frame {} lost its pattern", frame.hfn()));
        }
    }
    let mut allocator = FRAMES.lock();
    for frame in frames {
        allocator
            .free(frame)
            .map_err(|e| format!("free failed: {e}"))?;
    }
    if allocator.free_frames() != free_before {
        return Err(format!(
            "free={} after the round trip, {free_before} before",
            allocator.free_frames()
        ));
    }
    Ok(FrameRoundTrip { drained, high })
}

/// Checks that QEMU's high RAM alias really is the same memory as low RAM: a word written
/// through KSEG0 reads back through xkphys at 0x8000_0000 + the same offset.
pub fn high_alias_check(allocator: &spin::Mutex<FrameAllocator>) -> Result<(), String> {
    let mut frame = allocator.lock().alloc().map_err(|e| format!("{e}"))?;
    let result = if frame.hpa().raw() < board::LOW_RAM_LIMIT_BYTES {
        let tag = 0x0a11_a500_0000_0000 | frame.hfn().raw();
        frame.write_u64(1, tag);
        let alias = Hpa::new(board::RAM_FULL_ALIAS.raw() + frame.hpa().raw() + 8);
        // SAFETY: `alias` is the second mapping of word 1 of `frame`, which we own.
        let seen = unsafe { probe::read_mapped(phys_to_virt(alias)) };
        if seen == tag {
            Ok(())
        } else {
            Err(format!("high alias read {seen:#x}, expected {tag:#x}"))
        }
    } else {
        Ok(())
    };
    allocator.lock().free(frame).map_err(|e| format!("{e}"))?;
    result
}

/// Heap round trip: allocations come back and usage returns to where it was.
pub fn heap_round_trip() -> Result<usize, String> {
    let (used_before, _) = heap::usage();
    {
        let numbers: Vec<u64> = (0..10_000).collect();
        let boxed = Box::new([7u8; 4096]);
        let text = format!(
            "{}-{}",
            numbers.iter().sum::<u64>(),
            boxed.iter().map(|&b| u64::from(b)).sum::<u64>()
        );
        if text != "49995000-28672" {
            return Err(format!("heap data corrupted: {text}"));
        }
    }
    let (used_after, free_after) = heap::usage();
    if used_after != used_before {
        return Err(format!(
            "heap used {used_before} before, {used_after} after"
        ));
    }
    Ok(free_after)
}

/// Average Count ticks of one breakpoint exception round trip.
pub fn bench_breakpoint(iterations: u32) -> u32 {
    let start = cp0::count();
    for _ in 0..iterations {
        let ((), record) = expect_fault(ExcCode::Breakpoint, probe::breakpoint);
        assert!(record.is_some(), "benchmark breakpoint not taken");
    }
    cp0::count().wrapping_sub(start) / iterations
}

/// Average Count ticks of invalidating a TLB entry and taking the refill that restores it.
pub fn bench_refill(iterations: u32) -> Result<u32, String> {
    let frame = FRAMES.lock().alloc().map_err(|e| format!("{e}"))?;
    let va = refill_test_va(cpu_id());
    tlb::set_window(va, frame.hpa());
    let start = cp0::count();
    for _ in 0..iterations {
        tlb::invalidate_va(va);
        // SAFETY: the window maps `va` to `frame`, which we own; aligned.
        let _ = unsafe { probe::read_mapped(va) };
    }
    let ticks = cp0::count().wrapping_sub(start) / iterations;
    tlb::clear_window();
    FRAMES.lock().free(frame).map_err(|e| format!("{e}"))?;
    Ok(ticks)
}
