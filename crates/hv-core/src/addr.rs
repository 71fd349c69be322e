//! Typed addresses and frame numbers for every address space the hypervisor deals with.
//!
//! A guest virtual address (`Gva`), guest physical address (`Gpa`) and host physical
//! address (`Hpa`) are different things that happen to share a representation; mixing them
//! up is the classic hypervisor bug, so each gets its own type. Arithmetic is explicit and
//! checked: there are no `+`/`-` operators, callers pick `checked_add` and handle overflow.
//! Ranges are half-open (`start..end`) everywhere.

use core::fmt;

/// log2 of the page size the memory core works in. One constant, so 16 KiB pages stay possible.
pub const PAGE_SHIFT: u32 = 12;
/// Page size in bytes.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Mask of the offset bits inside a page.
pub const PAGE_OFFSET_MASK: u64 = PAGE_SIZE - 1;

macro_rules! address_type {
    ($(#[$meta:meta])* $name:ident, $frame:ident, $label:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(u64);

        impl $name {
            /// Wraps a raw address.
            pub const fn new(raw: u64) -> Self {
                Self(raw)
            }

            /// The raw address value.
            pub const fn raw(self) -> u64 {
                self.0
            }

            /// `self + bytes`, or `None` on overflow.
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// `self - bytes`, or `None` on underflow.
            pub const fn checked_sub(self, bytes: u64) -> Option<Self> {
                match self.0.checked_sub(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// Byte offset of `self` inside its page.
            pub const fn page_offset(self) -> u64 {
                self.0 & PAGE_OFFSET_MASK
            }

            /// Whether the address is on a page boundary.
            pub const fn is_page_aligned(self) -> bool {
                self.page_offset() == 0
            }

            /// The start of the page holding `self`.
            pub const fn page_align_down(self) -> Self {
                Self(self.0 & !PAGE_OFFSET_MASK)
            }

            /// The first page boundary at or above `self`, or `None` on overflow.
            pub const fn checked_page_align_up(self) -> Option<Self> {
                match self.0.checked_add(PAGE_OFFSET_MASK) {
                    Some(v) => Some(Self(v & !PAGE_OFFSET_MASK)),
                    None => None,
                }
            }

            /// The frame number of the page holding `self`.
            pub const fn frame(self) -> $frame {
                $frame(self.0 >> PAGE_SHIFT)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($label, "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}

macro_rules! frame_type {
    ($(#[$meta:meta])* $name:ident, $addr:ident, $label:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(u64);

        impl $name {
            /// Wraps a raw frame number.
            pub const fn new(raw: u64) -> Self {
                Self(raw)
            }

            /// The raw frame number.
            pub const fn raw(self) -> u64 {
                self.0
            }

            /// The address of the first byte of the frame, or `None` if it does not fit.
            pub const fn checked_addr(self) -> Option<$addr> {
                if self.0 > (u64::MAX >> PAGE_SHIFT) {
                    None
                } else {
                    Some($addr(self.0 << PAGE_SHIFT))
                }
            }

            /// `self + pages`, or `None` on overflow.
            pub const fn checked_add(self, pages: u64) -> Option<Self> {
                match self.0.checked_add(pages) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// `self - pages`, or `None` on underflow.
            pub const fn checked_sub(self, pages: u64) -> Option<Self> {
                match self.0.checked_sub(pages) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// Number of frames from `earlier` up to `self`, or `None` if `earlier > self`.
            pub const fn checked_distance_from(self, earlier: Self) -> Option<u64> {
                self.0.checked_sub(earlier.0)
            }

            /// The other frame of the even/odd pair one MIPS TLB entry maps.
            pub const fn buddy(self) -> Self {
                Self(self.0 ^ 1)
            }

            /// The even frame of the pair holding `self`.
            pub const fn pair_base(self) -> Self {
                Self(self.0 & !1)
            }

            /// Whether this is the odd half (EntryLo1) of its pair.
            pub const fn is_odd(self) -> bool {
                self.0 & 1 == 1
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($label, "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}

address_type!(
    /// Guest virtual address: what guest code uses before guest translation.
    Gva, Gvfn, "Gva"
);
address_type!(
    /// Guest physical address: the output of guest translation, input to the GPA table.
    Gpa, Gfn, "Gpa"
);
address_type!(
    /// Host physical address: real RAM or MMIO on the board.
    Hpa, Hfn, "Hpa"
);

frame_type!(
    /// Guest virtual page number.
    Gvfn, Gva, "Gvfn"
);
frame_type!(
    /// Guest physical frame number: index into the GPA table.
    Gfn, Gpa, "Gfn"
);
frame_type!(
    /// Host physical frame number: a 4 KiB frame of host RAM.
    Hfn, Hpa, "Hfn"
);

/// Errors from building a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeError {
    /// The start or the length is not a multiple of the page size.
    Unaligned,
    /// `start + len` does not fit in 64 bits (or in frame numbers).
    Overflow,
    /// The range holds no pages.
    Empty,
}

impl fmt::Display for RangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RangeError::Unaligned => "range is not page aligned",
            RangeError::Overflow => "range overflows the address space",
            RangeError::Empty => "range is empty",
        })
    }
}

/// A half-open range of guest frames `start..end`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct GfnRange {
    start: Gfn,
    end: Gfn,
}

impl GfnRange {
    /// `start..end`; fails with [`RangeError::Empty`] if `end <= start`.
    pub fn new(start: Gfn, end: Gfn) -> Result<Self, RangeError> {
        if end <= start {
            return Err(RangeError::Empty);
        }
        Ok(Self { start, end })
    }

    /// `npages` frames from `start`.
    pub fn from_start_len(start: Gfn, npages: u64) -> Result<Self, RangeError> {
        if npages == 0 {
            return Err(RangeError::Empty);
        }
        let end = start.checked_add(npages).ok_or(RangeError::Overflow)?;
        Ok(Self { start, end })
    }

    /// The frames covering the byte range `start..start+len_bytes`, which must be page aligned.
    pub fn from_gpa_len(start: Gpa, len_bytes: u64) -> Result<Self, RangeError> {
        if !start.is_page_aligned() || len_bytes & PAGE_OFFSET_MASK != 0 {
            return Err(RangeError::Unaligned);
        }
        start.checked_add(len_bytes).ok_or(RangeError::Overflow)?;
        Self::from_start_len(start.frame(), len_bytes >> PAGE_SHIFT)
    }

    /// A single frame.
    pub fn single(gfn: Gfn) -> Result<Self, RangeError> {
        Self::from_start_len(gfn, 1)
    }

    /// First frame in the range.
    pub fn start(&self) -> Gfn {
        self.start
    }

    /// One past the last frame in the range.
    pub fn end(&self) -> Gfn {
        self.end
    }

    /// Number of frames in the range (never zero).
    pub fn npages(&self) -> u64 {
        self.end.raw() - self.start.raw()
    }

    /// Whether `gfn` lies in the range.
    pub fn contains(&self, gfn: Gfn) -> bool {
        self.start <= gfn && gfn < self.end
    }

    /// The overlap of two ranges, if any.
    pub fn intersect(&self, other: &GfnRange) -> Option<GfnRange> {
        let start = self.start.max(other.start);
        let end = self.end.min(other.end);
        (start < end).then_some(GfnRange { start, end })
    }

    /// Whether the two ranges share at least one frame.
    pub fn overlaps(&self, other: &GfnRange) -> bool {
        self.intersect(other).is_some()
    }

    /// Every frame in the range, in order.
    pub fn iter(&self) -> impl Iterator<Item = Gfn> + '_ {
        (self.start.raw()..self.end.raw()).map(Gfn::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_to_frame_and_back() {
        let gpa = Gpa::new(0x1234_5678);
        assert_eq!(gpa.frame(), Gfn::new(0x12345));
        assert_eq!(gpa.page_offset(), 0x678);
        assert_eq!(gpa.page_align_down(), Gpa::new(0x1234_5000));
        assert_eq!(gpa.checked_page_align_up(), Some(Gpa::new(0x1234_6000)));
        assert_eq!(
            Gfn::new(0x12345).checked_addr(),
            Some(Gpa::new(0x1234_5000))
        );
    }

    #[test]
    fn arithmetic_overflow_is_reported() {
        assert_eq!(Gpa::new(u64::MAX).checked_add(1), None);
        assert_eq!(Gpa::new(0).checked_sub(1), None);
        assert_eq!(Gpa::new(u64::MAX).checked_page_align_up(), None);
        assert_eq!(Hfn::new(u64::MAX).checked_addr(), None);
        assert_eq!(
            Hfn::new(u64::MAX >> PAGE_SHIFT).checked_addr(),
            Some(Hpa::new(!PAGE_OFFSET_MASK))
        );
        assert_eq!(Gfn::new(u64::MAX).checked_add(1), None);
    }

    #[test]
    fn buddy_pairs() {
        assert_eq!(Gfn::new(4).buddy(), Gfn::new(5));
        assert_eq!(Gfn::new(5).buddy(), Gfn::new(4));
        assert_eq!(Gfn::new(5).pair_base(), Gfn::new(4));
        assert!(Gfn::new(5).is_odd());
        assert!(!Gfn::new(4).is_odd());
    }

    #[test]
    fn ranges_are_half_open_and_checked() {
        let r = GfnRange::new(Gfn::new(10), Gfn::new(20)).unwrap();
        assert_eq!(r.npages(), 10);
        assert!(r.contains(Gfn::new(10)));
        assert!(r.contains(Gfn::new(19)));
        assert!(!r.contains(Gfn::new(20)));
        assert_eq!(r.iter().count(), 10);
        assert_eq!(
            GfnRange::new(Gfn::new(3), Gfn::new(3)),
            Err(RangeError::Empty)
        );
        assert_eq!(
            GfnRange::from_start_len(Gfn::new(u64::MAX), 1),
            Err(RangeError::Overflow)
        );
        assert_eq!(
            GfnRange::from_gpa_len(Gpa::new(0x1001), 0x1000),
            Err(RangeError::Unaligned)
        );
        assert_eq!(
            GfnRange::from_gpa_len(Gpa::new(0x1000), 0x800),
            Err(RangeError::Unaligned)
        );
        assert_eq!(
            GfnRange::from_gpa_len(Gpa::new(!PAGE_OFFSET_MASK), 0x2000),
            Err(RangeError::Overflow)
        );
        let s = GfnRange::from_gpa_len(Gpa::new(0x4000), 0x3000).unwrap();
        assert_eq!((s.start(), s.end()), (Gfn::new(4), Gfn::new(7)));
    }

    #[test]
    fn range_intersection() {
        let a = GfnRange::new(Gfn::new(0), Gfn::new(10)).unwrap();
        let b = GfnRange::new(Gfn::new(10), Gfn::new(12)).unwrap();
        let c = GfnRange::new(Gfn::new(5), Gfn::new(15)).unwrap();
        assert!(!a.overlaps(&b));
        assert_eq!(
            a.intersect(&c),
            Some(GfnRange::new(Gfn::new(5), Gfn::new(10)).unwrap())
        );
    }
}
