//! Page contents of the memory-services guest (`memguest`), one rule per workload.
//!
//! Every page a workload writes is a [`PageFill`]: all zero, or a keyed stream whose words
//! all change when the key changes. The key names what the page should hold (shared by
//! page number alone, unique to a VM and seed, a stress version, a swap wave), so the guest
//! can verify any page at any time by recomputing it, and pages that must merge under
//! dedup are byte-identical in every VM while pages that must not are all different.
//! Page numbers here are guest page frame numbers (GPA / 4096).

use crate::splitmix64;

/// Bytes per guest page.
pub const PAGE_BYTES: u64 = 4096;
/// 64-bit words per guest page.
pub const PAGE_WORDS: usize = (PAGE_BYTES / 8) as usize;

/// Odd multiplier spreading the word index over all bits.
const WORD_STRIDE: u64 = 0xd6e8_feb8_6659_fd93;

/// Domain tags so keys of different workloads never coincide by construction.
mod tag {
    pub const SHARED: u64 = 0x5348_4152_4544_0001;
    pub const UNIQUE: u64 = 0x554e_4951_5545_0002;
    pub const COW: u64 = 0x434f_5700_0000_0003;
    pub const SWAP: u64 = 0x5357_4150_0000_0004;
    pub const STRESS: u64 = 0x5354_5245_5353_0005;
    pub const IDLE: u64 = 0x4944_4c45_0000_0006;
}

fn key(tag: u64, a: u64, b: u64, c: u64) -> u64 {
    splitmix64(splitmix64(splitmix64(tag ^ a) ^ b) ^ c)
}

/// What one guest page holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageFill {
    /// Every byte zero.
    Zero,
    /// Word `w` is `base ^ w * WORD_STRIDE`: distinct bases differ in every word.
    Keyed(u64),
}

impl PageFill {
    fn keyed(key: u64) -> Self {
        PageFill::Keyed(splitmix64(key))
    }

    /// Word `w` (`0..PAGE_WORDS`) of the page.
    #[inline]
    pub fn word(self, w: usize) -> u64 {
        match self {
            PageFill::Zero => 0,
            PageFill::Keyed(base) => base ^ (w as u64).wrapping_mul(WORD_STRIDE),
        }
    }

    /// Words of the page that differ from what `read(w)` returns (every word is read).
    pub fn mismatches(self, mut read: impl FnMut(usize) -> u64) -> usize {
        (0..PAGE_WORDS).filter(|&w| read(w) != self.word(w)).count()
    }
}

/// The content dedup mode gives page `page` in every VM: mergeable across VMs.
pub fn shared(page: u64) -> PageFill {
    PageFill::keyed(key(tag::SHARED, 0, 0, page))
}

/// Content no other VM (and no other seed) has at page `page`.
pub fn unique(vm: u64, seed: u64, page: u64) -> PageFill {
    PageFill::keyed(key(tag::UNIQUE, vm, seed, page))
}

/// The three kinds of dedup-mode pages (the discriminant indexes per-class counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupClass {
    /// All zero (page % 10 == 0).
    Zero = 0,
    /// VM-unique (page % 10 == 1).
    Unique = 1,
    /// The shared pattern of the page number (the other 8 in 10).
    Shared = 2,
}

/// Which kind of page `page` is in dedup mode.
pub fn dedup_class(page: u64) -> DedupClass {
    match page % 10 {
        0 => DedupClass::Zero,
        1 => DedupClass::Unique,
        _ => DedupClass::Shared,
    }
}

/// Whether dedup mode's copy-on-write phase rewrites `page`: every 7th page number among
/// the shared ones.
pub fn dedup_cow_target(page: u64) -> bool {
    dedup_class(page) == DedupClass::Shared && page.is_multiple_of(7)
}

/// What page `page` of VM `vm` holds in dedup mode with seed `seed`, before
/// (`cow_done == false`) or after the copy-on-write phase.
pub fn dedup_fill(vm: u64, seed: u64, page: u64, cow_done: bool) -> PageFill {
    match dedup_class(page) {
        DedupClass::Zero => PageFill::Zero,
        DedupClass::Unique => unique(vm, seed, page),
        DedupClass::Shared if cow_done && dedup_cow_target(page) => {
            PageFill::keyed(key(tag::COW, vm, seed, page))
        }
        DedupClass::Shared => shared(page),
    }
}

/// What swap mode's wave `wave` writes into page `page` of VM `vm`.
pub fn swap_fill(vm: u64, wave: u64, page: u64) -> PageFill {
    PageFill::keyed(key(tag::SWAP, vm, wave, page))
}

/// What idle mode writes into page `page` of VM `vm` on its first pass over RAM (unique,
/// so nothing merges under the pages being watched).
pub fn idle_fill(vm: u64, page: u64) -> PageFill {
    PageFill::keyed(key(tag::IDLE, vm, 0, page))
}

/// What stress mode's page `page` of VM `vm` holds at version `version`: version 0 is the
/// shared pattern (identical in every VM, so dedup has work), later versions are private.
pub fn stress_fill(vm: u64, page: u64, version: u32) -> PageFill {
    if version == 0 {
        shared(page)
    } else {
        PageFill::keyed(key(tag::STRESS, vm, u64::from(version), page))
    }
}

/// Half-open range of guest page numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSpan {
    /// First page.
    pub start: u64,
    /// One past the last page.
    pub end: u64,
}

impl PageSpan {
    /// Pages in the span.
    pub fn len(self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether the span holds no page.
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// Piece `k` of `parts` nearly equal pieces (the first `len % parts` get one page more);
    /// `None` if `k >= parts`.
    pub fn piece(self, parts: u64, k: u64) -> Option<PageSpan> {
        if k >= parts {
            return None;
        }
        let (each, extra) = (self.len() / parts, self.len() % parts);
        let start = self.start + k * each + k.min(extra);
        let len = each + u64::from(k < extra);
        Some(PageSpan {
            start,
            end: start + len,
        })
    }
}

/// How stress mode divides its RAM: the version table first, then the pages it tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StressLayout {
    /// Pages holding one `u32` version per tested page.
    pub table: PageSpan,
    /// The pages written and verified.
    pub tested: PageSpan,
}

/// Versions one table page holds.
pub const VERSIONS_PER_PAGE: u64 = PAGE_BYTES / 4;

impl StressLayout {
    /// Splits `free` into the smallest version table that covers the rest; `None` if no
    /// page would be left to test.
    pub fn new(free: PageSpan) -> Option<Self> {
        // t table pages cover t * VERSIONS_PER_PAGE tested pages.
        let table_pages = free.len().div_ceil(VERSIONS_PER_PAGE + 1);
        let split = free.start + table_pages;
        let layout = StressLayout {
            table: PageSpan {
                start: free.start,
                end: split,
            },
            tested: PageSpan {
                start: split,
                end: free.end,
            },
        };
        (!layout.tested.is_empty()).then_some(layout)
    }
}

/// One guest memory operation of stress mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StressOp {
    /// Rewrite the page (index into the tested pages) with its next version.
    Write(u64),
    /// Verify the page against its current version.
    Read(u64),
}

/// The stress PRNG (a SplitMix64 sequence), seeded per VM.
#[derive(Debug, Clone)]
pub struct StressRng(u64);

impl StressRng {
    /// The sequence of VM `vm`.
    pub fn new(vm: u64) -> Self {
        StressRng(key(tag::STRESS, vm, u64::MAX, 0))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        splitmix64(self.0)
    }

    /// The next operation on `pages` tested pages (`pages > 0`): a write or a read, with
    /// equal odds, of a uniformly chosen page.
    pub fn next_op(&mut self, pages: u64) -> StressOp {
        let r = self.next_u64();
        // Multiply-shift: unbiased enough for a test load, and no division.
        let page = ((u128::from(r >> 1) * u128::from(pages)) >> 63) as u64;
        if r & 1 == 0 {
            StressOp::Write(page)
        } else {
            StressOp::Read(page)
        }
    }
}

/// The expected version of every tested page, kept in guest memory (the version table).
#[derive(Debug)]
pub struct VersionBook<'a> {
    versions: &'a mut [u32],
}

impl<'a> VersionBook<'a> {
    /// A book over `versions`, every page at version 0.
    pub fn new(versions: &'a mut [u32]) -> Self {
        versions.fill(0);
        VersionBook { versions }
    }

    /// The version page `index` should hold.
    pub fn expected(&self, index: u64) -> u32 {
        self.versions[index as usize]
    }

    /// Moves page `index` to its next version and returns it (never 0 again, so a page
    /// that lost its writes is not mistaken for a fresh one).
    pub fn bump(&mut self, index: u64) -> u32 {
        let slot = &mut self.versions[index as usize];
        *slot = slot.checked_add(1).unwrap_or(1);
        *slot
    }

    /// Pages tracked.
    pub fn len(&self) -> usize {
        self.versions.len()
    }

    /// Whether no page is tracked.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }
}

/// The bound of a wait for a service counter: guest Count ticks (32 bits, wrapping) and
/// yields, whichever runs out first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitBudget {
    max_ticks: u64,
    max_yields: u64,
    last_count: u32,
    /// Count ticks spent so far.
    pub ticks: u64,
    /// Yields taken so far.
    pub yields: u64,
}

impl WaitBudget {
    /// A wait starting at Count value `count`.
    pub fn new(max_ticks: u64, max_yields: u64, count: u32) -> Self {
        WaitBudget {
            max_ticks,
            max_yields,
            last_count: count,
            ticks: 0,
            yields: 0,
        }
    }

    /// Adds the time up to Count value `count` (read less than one wrap after the last
    /// one); true while budget is left, i.e. the caller may yield once more.
    pub fn tick(&mut self, count: u32) -> bool {
        self.ticks += u64::from(count.wrapping_sub(self.last_count));
        self.last_count = count;
        self.ticks < self.max_ticks && self.yields < self.max_yields
    }

    /// Records one yield.
    pub fn yielded(&mut self) {
        self.yields += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn page(fill: PageFill) -> Vec<u64> {
        (0..PAGE_WORDS).map(|w| fill.word(w)).collect()
    }

    #[test]
    fn keyed_pages_differ_in_every_word() {
        let a = page(shared(12));
        let b = page(shared(13));
        assert!(a.iter().zip(&b).all(|(x, y)| x != y));
        // Words within one page are all distinct too (no internal repetition to merge).
        let distinct: HashSet<_> = a.iter().collect();
        assert_eq!(distinct.len(), PAGE_WORDS);
        assert!(page(PageFill::Zero).iter().all(|&w| w == 0));
    }

    #[test]
    fn dedup_classes_follow_page_number() {
        assert_eq!(dedup_class(20), DedupClass::Zero);
        assert_eq!(dedup_class(31), DedupClass::Unique);
        for p in [2, 9, 12, 19] {
            assert_eq!(dedup_class(p), DedupClass::Shared);
        }
        let counts = (0..1000).fold([0; 3], |mut c, p| {
            c[dedup_class(p) as usize] += 1;
            c
        });
        assert_eq!(counts, [100, 100, 800]);
        // Copy-on-write targets: shared pages whose number is a multiple of 7.
        assert!(dedup_cow_target(14) && dedup_cow_target(28));
        assert!(!dedup_cow_target(70)); // zero page
        assert!(!dedup_cow_target(21)); // unique page
        assert!(!dedup_cow_target(15));
    }

    #[test]
    fn dedup_fills_share_only_what_they_should() {
        for p in 100..200 {
            let (a, b) = (dedup_fill(0, 5, p, false), dedup_fill(3, 5, p, false));
            match dedup_class(p) {
                DedupClass::Zero => assert!(a == PageFill::Zero && b == PageFill::Zero),
                DedupClass::Unique => {
                    assert_ne!(a, b);
                    assert_ne!(a, dedup_fill(0, 6, p, false), "seed changes unique pages");
                    assert_ne!(a, shared(p));
                }
                DedupClass::Shared => assert_eq!(a, b),
            }
            let (ca, cb) = (dedup_fill(0, 5, p, true), dedup_fill(3, 5, p, true));
            if dedup_cow_target(p) {
                assert!(ca != a && cb != b && ca != cb, "COW writes VM-unique data");
            } else {
                assert!(ca == a && cb == b);
            }
        }
        // No two pages of one VM are equal unless both are zero.
        let fills: Vec<_> = (100..400)
            .map(|p| dedup_fill(1, 9, p, true))
            .filter(|f| *f != PageFill::Zero)
            .collect();
        let distinct: HashSet<_> = fills.iter().map(|f| page(*f)).collect();
        assert_eq!(distinct.len(), fills.len());
    }

    #[test]
    fn other_fills_are_private() {
        assert_ne!(swap_fill(0, 1, 50), swap_fill(0, 2, 50));
        assert_ne!(swap_fill(0, 1, 50), swap_fill(1, 1, 50));
        assert_ne!(idle_fill(0, 50), idle_fill(1, 50));
        assert_eq!(stress_fill(0, 50, 0), stress_fill(7, 50, 0));
        assert_eq!(stress_fill(0, 50, 0), shared(50));
        assert_ne!(stress_fill(0, 50, 1), stress_fill(7, 50, 1));
        assert_ne!(stress_fill(0, 50, 1), stress_fill(0, 50, 2));
        assert_ne!(stress_fill(0, 50, 1), stress_fill(0, 51, 1));
    }

    #[test]
    fn mismatches_counts_bad_words() {
        let fill = unique(2, 3, 77);
        let mut words = page(fill);
        assert_eq!(fill.mismatches(|w| words[w]), 0);
        words[0] ^= 1;
        words[511] = 0;
        assert_eq!(fill.mismatches(|w| words[w]), 2);
        assert_eq!(PageFill::Zero.mismatches(|w| words[w]), PAGE_WORDS - 1);
    }

    #[test]
    fn pieces_cover_the_span_exactly() {
        for (start, len, parts) in [(10, 100, 4), (3, 7, 4), (0, 2, 5), (5, 1000, 3)] {
            let span = PageSpan {
                start,
                end: start + len,
            };
            let mut next = start;
            for k in 0..parts {
                let p = span.piece(parts, k).unwrap();
                assert_eq!(p.start, next);
                assert!(p.len() == len / parts || p.len() == len / parts + 1);
                next = p.end;
            }
            assert_eq!(next, span.end);
            assert_eq!(span.piece(parts, parts), None);
        }
    }

    #[test]
    fn stress_layout_table_covers_tested_pages() {
        for len in [2u64, 3, 1024, 1025, 1026, 8000, 8192, 1 << 20] {
            let free = PageSpan {
                start: 300,
                end: 300 + len,
            };
            let l = StressLayout::new(free).unwrap();
            assert_eq!((l.table.start, l.table.end), (300, l.tested.start));
            assert_eq!(l.tested.end, free.end);
            assert!(l.table.len() * VERSIONS_PER_PAGE >= l.tested.len());
            // Smallest such table: one page less would not do.
            let t = l.table.len() - 1;
            assert!(t * VERSIONS_PER_PAGE < free.len() - t, "len {len}");
        }
        let one = PageSpan { start: 5, end: 6 };
        assert_eq!(StressLayout::new(one), None);
        assert_eq!(StressLayout::new(PageSpan { start: 5, end: 5 }), None);
    }

    #[test]
    fn stress_ops_are_reproducible_and_spread() {
        let pages = 1000;
        let mut a = StressRng::new(3);
        let mut b = StressRng::new(3);
        let mut c = StressRng::new(4);
        let mut writes = 0;
        let mut seen = HashSet::new();
        let mut differs = false;
        for _ in 0..20_000 {
            let op = a.next_op(pages);
            assert_eq!(op, b.next_op(pages));
            differs |= op != c.next_op(pages);
            let (StressOp::Write(p) | StressOp::Read(p)) = op;
            assert!(p < pages);
            seen.insert(p);
            writes += usize::from(matches!(op, StressOp::Write(_)));
        }
        assert!(differs);
        assert_eq!(seen.len(), pages as usize);
        assert!((9_000..11_000).contains(&writes), "{writes} writes");
    }

    #[test]
    fn version_book_tracks_writes() {
        let mut table = [7u32; 4];
        let mut book = VersionBook::new(&mut table);
        assert_eq!(book.len(), 4);
        assert_eq!(book.expected(2), 0);
        assert_eq!(book.bump(2), 1);
        assert_eq!(book.bump(2), 2);
        assert_eq!((book.expected(2), book.expected(1)), (2, 0));
        book.versions[3] = u32::MAX;
        assert_eq!(book.bump(3), 1, "wraps past 0");
    }

    #[test]
    fn wait_budget_adds_up_wrapping_count() {
        let mut w = WaitBudget::new(1_000, 100, u32::MAX - 9);
        assert!(w.tick(u32::MAX));
        assert_eq!(w.ticks, 9);
        assert!(w.tick(490), "wrapped: 491 more ticks");
        assert_eq!(w.ticks, 500);
        assert!(w.tick(980));
        assert!(!w.tick(1_500), "1510 ticks is past the budget");
        assert_eq!(w.ticks, 1_510);
        // Yields run out on their own even if Count stands still.
        let mut w = WaitBudget::new(1_000, 3, 7);
        for _ in 0..3 {
            assert!(w.tick(7));
            w.yielded();
        }
        assert!(!w.tick(7));
        assert_eq!((w.ticks, w.yields), (0, 3));
    }
}
