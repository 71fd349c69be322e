//! Physical frame allocator: 4 KiB frames over probed RAM minus the image, as a bitmap.
//!
//! RAM comes in a few disjoint regions (on Malta: below the I/O hole, and above 256 MiB
//! through the high alias). Each region owns a contiguous run of bits; bit set = frame in
//! use. Allocation hands out an [`OwnedFrame`], a non-copyable token; freeing consumes it,
//! so a double free cannot be written. The bitmap has room for the largest Malta (2 GiB).

#[cfg(target_arch = "mips64")]
use crate::arch::addr::phys_to_virt;
use alloc::vec::Vec;
use core::fmt;
use hv_core::addr::{Hfn, Hpa, PAGE_SIZE};
#[cfg(target_arch = "mips64")]
use spin::Mutex;

/// Most regions the allocator manages.
const MAX_REGIONS: usize = 4;
/// Most frames the allocator manages (2 GiB of 4 KiB frames).
const MAX_FRAMES: usize = (2 << 30) / PAGE_SIZE as usize;
const BITMAP_WORDS: usize = MAX_FRAMES / 64;
/// 64-bit words in one frame.
pub const WORDS_PER_FRAME: usize = PAGE_SIZE as usize / 8;

/// Frame allocator errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Every managed frame is in use.
    OutOfFrames,
    /// Region table or bitmap is full.
    CapacityExceeded,
    /// A region is empty, unaligned or overlaps one already added.
    BadRegion,
    /// A freed frame does not belong to any region.
    NotManaged(Hfn),
    /// A freed frame was not allocated (allocator state and token disagree).
    NotAllocated(Hfn),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfFrames => write!(f, "out of physical frames"),
            Self::CapacityExceeded => write!(f, "frame allocator capacity exceeded"),
            Self::BadRegion => write!(f, "empty, unaligned or overlapping RAM region"),
            Self::NotManaged(hfn) => write!(f, "frame {hfn} is not managed"),
            Self::NotAllocated(hfn) => write!(f, "frame {hfn} was not allocated"),
        }
    }
}

/// One frame of RAM owned by whoever holds this token.
#[derive(Debug)]
pub struct OwnedFrame {
    hfn: Hfn,
}

impl OwnedFrame {
    /// The frame number.
    pub fn hfn(&self) -> Hfn {
        self.hfn
    }

    /// The frame's physical address.
    pub fn hpa(&self) -> Hpa {
        self.hfn
            .checked_addr()
            .expect("managed frames have valid addresses")
    }

    #[cfg(target_arch = "mips64")]
    fn word_ptr(&self, index: usize) -> *mut u64 {
        assert!(index < WORDS_PER_FRAME, "word {index} is outside a frame");
        (phys_to_virt(self.hpa()) as *mut u64).wrapping_add(index)
    }

    /// Writes 64-bit word `index` of the frame.
    #[cfg(target_arch = "mips64")]
    pub fn write_u64(&mut self, index: usize, value: u64) {
        // SAFETY: the frame is RAM that the allocator handed out exactly once, to this
        // token, so nothing else accesses it; the pointer is aligned and inside the frame.
        unsafe { core::ptr::write_volatile(self.word_ptr(index), value) }
    }

    /// Reads 64-bit word `index` of the frame.
    #[cfg(target_arch = "mips64")]
    pub fn read_u64(&self, index: usize) -> u64 {
        // SAFETY: as for write_u64.
        unsafe { core::ptr::read_volatile(self.word_ptr(index)) }
    }
}

#[derive(Debug, Clone, Copy)]
struct Region {
    start: Hfn,
    npages: u64,
    first_bit: usize,
}

/// The allocator state (see the module notes).
pub struct FrameAllocator {
    regions: [Region; MAX_REGIONS],
    region_count: usize,
    bitmap: [u64; BITMAP_WORDS],
    total_frames: usize,
    free_frames: usize,
    /// Word where the next search starts.
    hint: usize,
}

impl fmt::Debug for FrameAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameAllocator")
            .field("regions", &&self.regions[..self.region_count])
            .field("total_frames", &self.total_frames)
            .field("free_frames", &self.free_frames)
            .finish()
    }
}

impl FrameAllocator {
    const fn new() -> Self {
        Self {
            regions: [Region {
                start: Hfn::new(0),
                npages: 0,
                first_bit: 0,
            }; MAX_REGIONS],
            region_count: 0,
            bitmap: [0; BITMAP_WORDS],
            total_frames: 0,
            free_frames: 0,
            hint: 0,
        }
    }

    /// Adds the whole frames inside `[start, end)` as free memory.
    pub fn add_region(&mut self, start: Hpa, end: Hpa) -> Result<(), FrameError> {
        let first = start
            .checked_page_align_up()
            .ok_or(FrameError::BadRegion)?
            .frame();
        let last = end.page_align_down().frame();
        let npages = last
            .checked_distance_from(first)
            .ok_or(FrameError::BadRegion)?;
        if npages == 0 {
            return Err(FrameError::BadRegion);
        }
        for region in &self.regions[..self.region_count] {
            let region_end = region.start.raw() + region.npages;
            if first.raw() < region_end && region.start.raw() < last.raw() {
                return Err(FrameError::BadRegion);
            }
        }
        if self.region_count == MAX_REGIONS || self.total_frames + npages as usize > MAX_FRAMES {
            return Err(FrameError::CapacityExceeded);
        }
        self.regions[self.region_count] = Region {
            start: first,
            npages,
            first_bit: self.total_frames,
        };
        self.region_count += 1;
        self.total_frames += npages as usize;
        self.free_frames += npages as usize;
        Ok(())
    }

    fn bit_to_hfn(&self, bit: usize) -> Hfn {
        let region = self.regions[..self.region_count]
            .iter()
            .find(|r| bit >= r.first_bit && bit < r.first_bit + r.npages as usize)
            .expect("bit below total_frames belongs to a region");
        Hfn::new(region.start.raw() + (bit - region.first_bit) as u64)
    }

    fn hfn_to_bit(&self, hfn: Hfn) -> Option<usize> {
        self.regions[..self.region_count].iter().find_map(|r| {
            let offset = hfn.checked_distance_from(r.start)?;
            (offset < r.npages).then(|| r.first_bit + offset as usize)
        })
    }

    /// Takes a free frame.
    pub fn alloc(&mut self) -> Result<OwnedFrame, FrameError> {
        if self.free_frames == 0 {
            return Err(FrameError::OutOfFrames);
        }
        let words = self.total_frames.div_ceil(64);
        for step in 0..words {
            let word = (self.hint + step) % words;
            let bits = self.bitmap[word];
            if bits == u64::MAX {
                continue;
            }
            let bit = word * 64 + (!bits).trailing_zeros() as usize;
            if bit >= self.total_frames {
                continue;
            }
            self.bitmap[word] |= 1 << (bit % 64);
            self.free_frames -= 1;
            self.hint = word;
            return Ok(OwnedFrame {
                hfn: self.bit_to_hfn(bit),
            });
        }
        Err(FrameError::OutOfFrames)
    }

    /// Takes `count` physically consecutive free frames (first fit within one region), in
    /// ascending order. Guest RAM pools need a contiguous run of frame numbers.
    pub fn alloc_contiguous(&mut self, count: usize) -> Result<Vec<OwnedFrame>, FrameError> {
        if count == 0 || count > self.free_frames {
            return Err(FrameError::OutOfFrames);
        }
        let is_free =
            |bitmap: &[u64; BITMAP_WORDS], bit: usize| bitmap[bit / 64] & (1 << (bit % 64)) == 0;
        for region in &self.regions[..self.region_count] {
            let end = region.first_bit + region.npages as usize;
            let mut run_start = region.first_bit;
            let mut bit = region.first_bit;
            while bit < end {
                if !is_free(&self.bitmap, bit) {
                    run_start = bit + 1;
                } else if bit + 1 - run_start == count {
                    let mut frames = Vec::with_capacity(count);
                    for taken in run_start..=bit {
                        self.bitmap[taken / 64] |= 1 << (taken % 64);
                        frames.push(OwnedFrame {
                            hfn: Hfn::new(region.start.raw() + (taken - region.first_bit) as u64),
                        });
                    }
                    self.free_frames -= count;
                    return Ok(frames);
                }
                bit += 1;
            }
        }
        Err(FrameError::OutOfFrames)
    }

    /// Length of the longest run of consecutive free frames inside one region (the most
    /// [`FrameAllocator::alloc_contiguous`] can give now).
    pub fn largest_free_run(&self) -> usize {
        let mut best = 0;
        for region in &self.regions[..self.region_count] {
            let mut run = 0;
            for bit in region.first_bit..region.first_bit + region.npages as usize {
                if self.bitmap[bit / 64] & (1 << (bit % 64)) == 0 {
                    run += 1;
                    best = best.max(run);
                } else {
                    run = 0;
                }
            }
        }
        best
    }

    /// Returns a frame.
    pub fn free(&mut self, frame: OwnedFrame) -> Result<(), FrameError> {
        let hfn = frame.hfn;
        let bit = self.hfn_to_bit(hfn).ok_or(FrameError::NotManaged(hfn))?;
        let mask = 1 << (bit % 64);
        if self.bitmap[bit / 64] & mask == 0 {
            return Err(FrameError::NotAllocated(hfn));
        }
        self.bitmap[bit / 64] &= !mask;
        self.free_frames += 1;
        self.hint = self.hint.min(bit / 64);
        Ok(())
    }

    /// Frames currently free.
    pub fn free_frames(&self) -> usize {
        self.free_frames
    }

    /// Frames currently handed out.
    pub fn used_frames(&self) -> usize {
        self.total_frames - self.free_frames
    }

    /// Frames managed in total.
    pub fn total_frames(&self) -> usize {
        self.total_frames
    }
}

/// The system's frame allocator.
#[cfg(target_arch = "mips64")]
pub static FRAMES: Mutex<FrameAllocator> = Mutex::new(FrameAllocator::new());

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn allocator_with(regions: &[(u64, u64)]) -> Box<FrameAllocator> {
        let mut allocator = Box::new(FrameAllocator::new());
        for &(start, end) in regions {
            allocator
                .add_region(Hpa::new(start), Hpa::new(end))
                .unwrap();
        }
        allocator
    }

    #[test]
    fn regions_are_trimmed_to_whole_frames() {
        let allocator = allocator_with(&[(0x1001, 0x5fff)]);
        // 0x2000..0x5000: frames 2, 3, 4.
        assert_eq!(allocator.total_frames(), 3);
        assert_eq!(allocator.free_frames(), 3);
        assert_eq!(allocator.used_frames(), 0);
    }

    #[test]
    fn contiguous_runs_skip_used_frames_and_stay_in_one_region() {
        // Two regions of 4 frames each: frames 0x10..0x14 and 0x20..0x24.
        let mut allocator = allocator_with(&[(0x10_000, 0x14_000), (0x20_000, 0x24_000)]);
        let single = allocator.alloc().unwrap();
        assert_eq!(single.hfn().raw(), 0x10);
        // Three consecutive frames fit after the used one in the first region.
        let run = allocator.alloc_contiguous(3).unwrap();
        let hfns: Vec<u64> = run.iter().map(|f| f.hfn().raw()).collect();
        assert_eq!(hfns, [0x11, 0x12, 0x13]);
        assert_eq!(allocator.largest_free_run(), 4);
        // Four do not fit the first region any more, but the second one is free.
        let run4 = allocator.alloc_contiguous(4).unwrap();
        assert_eq!(run4.first().unwrap().hfn().raw(), 0x20);
        assert_eq!(allocator.free_frames(), 0);
        // Runs never span regions, nothing is left, and zero is refused.
        assert_eq!(
            allocator.alloc_contiguous(1).err(),
            Some(FrameError::OutOfFrames)
        );
        assert_eq!(
            allocator.alloc_contiguous(0).err(),
            Some(FrameError::OutOfFrames)
        );
        assert_eq!(allocator.largest_free_run(), 0);
        for frame in run.into_iter().chain(run4) {
            allocator.free(frame).unwrap();
        }
        assert_eq!(allocator.free_frames(), 7);
        // Frame 0x10 is still taken: the first region's run is 3, the second's 4.
        assert_eq!(allocator.largest_free_run(), 4);
        assert!(allocator.alloc_contiguous(5).is_err());
    }

    #[test]
    fn bad_regions_are_refused() {
        let mut allocator = allocator_with(&[(16 * MIB, 32 * MIB)]);
        let overlapping = allocator.add_region(Hpa::new(31 * MIB), Hpa::new(40 * MIB));
        assert_eq!(overlapping, Err(FrameError::BadRegion));
        let empty = allocator.add_region(Hpa::new(0x1001), Hpa::new(0x1fff));
        assert_eq!(empty, Err(FrameError::BadRegion));
        let reversed = allocator.add_region(Hpa::new(64 * MIB), Hpa::new(48 * MIB));
        assert_eq!(reversed, Err(FrameError::BadRegion));
        assert_eq!(allocator.total_frames(), (16 * MIB / PAGE_SIZE) as usize);
    }

    #[test]
    fn region_table_and_bitmap_capacity_are_enforced() {
        let mut allocator = allocator_with(&[]);
        for i in 0..MAX_REGIONS as u64 {
            allocator
                .add_region(Hpa::new(i * MIB), Hpa::new(i * MIB + PAGE_SIZE))
                .unwrap();
        }
        let one_more = allocator.add_region(Hpa::new(100 * MIB), Hpa::new(101 * MIB));
        assert_eq!(one_more, Err(FrameError::CapacityExceeded));

        let mut allocator = allocator_with(&[]);
        let too_big = allocator.add_region(Hpa::new(0), Hpa::new(4 << 30));
        assert_eq!(too_big, Err(FrameError::CapacityExceeded));
    }

    #[test]
    fn drains_every_frame_of_every_region_once_then_refills() {
        // Malta-like: low RAM after a reserved start, high RAM behind the 2 GiB alias.
        let low = (9 * MIB, 10 * MIB);
        let high = (0x9000_0000, 0x9000_0000 + 2 * MIB);
        let mut allocator = allocator_with(&[low, high]);
        let total = allocator.total_frames();
        assert_eq!(total, 256 + 512);

        let mut frames = Vec::new();
        while let Ok(frame) = allocator.alloc() {
            frames.push(frame);
        }
        assert_eq!(frames.len(), total);
        assert_eq!(allocator.free_frames(), 0);
        assert_eq!(allocator.used_frames(), total);
        assert_eq!(
            allocator.alloc().map(|f| f.hfn()),
            Err(FrameError::OutOfFrames)
        );

        let mut seen: Vec<u64> = frames.iter().map(|f| f.hpa().raw()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), total, "a frame was handed out twice");
        let inside = |pa: u64| (low.0..low.1).contains(&pa) || (high.0..high.1).contains(&pa);
        assert!(seen.iter().all(|&pa| inside(pa)));
        assert!(seen.iter().any(|&pa| pa >= high.0), "high RAM never used");

        for frame in frames {
            allocator.free(frame).unwrap();
        }
        assert_eq!(allocator.free_frames(), total);
        assert!(allocator.alloc().is_ok());
    }

    #[test]
    fn freed_frames_are_reused() {
        let mut allocator = allocator_with(&[(0, 4 * PAGE_SIZE)]);
        let first = allocator.alloc().unwrap();
        let first_hfn = first.hfn();
        let _second = allocator.alloc().unwrap();
        allocator.free(first).unwrap();
        assert_eq!(allocator.alloc().unwrap().hfn(), first_hfn);
    }

    #[test]
    fn freeing_a_foreign_or_free_frame_is_an_error() {
        let mut allocator = allocator_with(&[(0, 4 * PAGE_SIZE)]);
        let foreign = OwnedFrame {
            hfn: Hfn::new(1000),
        };
        assert_eq!(
            allocator.free(foreign),
            Err(FrameError::NotManaged(Hfn::new(1000)))
        );
        // A token for a frame the allocator considers free (tokens only come from alloc in
        // real code; the check guards the allocator's own consistency).
        let stale = OwnedFrame { hfn: Hfn::new(2) };
        assert_eq!(
            allocator.free(stale),
            Err(FrameError::NotAllocated(Hfn::new(2)))
        );
        assert_eq!(allocator.free_frames(), 4);
        assert_eq!(
            FrameError::NotAllocated(Hfn::new(2)).to_string(),
            format!("frame {} was not allocated", Hfn::new(2))
        );
    }
}
