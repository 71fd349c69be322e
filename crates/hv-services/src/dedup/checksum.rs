//! The page checksum the dedup scanner gates and orders candidates by.
//!
//! # What it reads: half of the page
//!
//! The checksum sums every *other* 64-bit word of the page (the words at even indexes: the
//! first 8 bytes of each 16-byte unit) into [`LANES`] running sums, word `2k` of each
//! `2 * LANES`-word block into lane `k`, and finishes with the SplitMix64 mixer so that
//! nearby sums spread over the whole key space of the ordered sets. Per sampled word that is
//! one load and one addition; the loop compiles to straight-line loads and adds with one
//! pointer step and one branch per block, about 600 instructions for a 4 KiB page on MIPS64
//! (tools/bench.sh prints the figure). A checksum of every word cannot go below two
//! instructions per word (each loaded word must be folded in), about 1,030 per page.
//!
//! The trade-off: a change confined to the words it skips (8 bytes out of each 16) goes
//! unnoticed. That never makes a merge wrong, because the scanner compares all the bytes
//! before it merges and write-protects the page first. It can cost work: a page that changes
//! only in skipped words passes the gate (a merge attempt the byte comparison refuses, or a
//! merge the next write undoes), and two pages that differ only in skipped words share a key
//! in the scanner's sets (a refused merge, counted, and after repeated failures the page is
//! skipped for a while). The lanes make the sum depend on where a word sits modulo
//! `2 * LANES` words, so moving data by a few words still changes it. It is not
//! cryptographic and not meant to be: equal checksums only make equal pages *likely*.
//!
//! Byte slices that are not 8-byte aligned or not a whole number of words (never a frame)
//! take a slower path that yields the same value for the same bytes.

use alloc::vec::Vec;

/// Running sums; a sampled word goes into lane `(index / 2) % LANES`.
pub const LANES: usize = 8;
/// Words per block of the main loop: each lane takes one sampled word per block.
const BLOCK_WORDS: usize = 2 * LANES;

/// Checksum of a page's bytes (any length; a trailing partial word is zero-padded).
pub fn page_checksum(bytes: &[u8]) -> u64 {
    let lanes = match bytemuck::try_cast_slice::<u8, u64>(bytes) {
        Ok(words) => lane_sums(words),
        Err(_) => ragged_lane_sums(bytes),
    };
    finish(lanes, bytes.len())
}

/// [`lane_sums`] of bytes that are not aligned 64-bit words: the same words, assembled one
/// by one (zero-padded at the end).
#[cold]
fn ragged_lane_sums(bytes: &[u8]) -> [u64; LANES] {
    let words: Vec<u64> = bytes
        .chunks(8)
        .map(|chunk| {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            u64::from_ne_bytes(w)
        })
        .collect();
    lane_sums(&words)
}

/// The lane sums of the sampled words of `words`.
#[inline(always)]
fn lane_sums(words: &[u64]) -> [u64; LANES] {
    let mut lanes = [0u64; LANES];
    // Four blocks per iteration: a quarter of the loop overhead, and a lane's four words are
    // added up before they reach it (the same number of additions).
    let mut quads = words.chunks_exact(4 * BLOCK_WORDS);
    for quad in &mut quads {
        for (k, lane) in lanes.iter_mut().enumerate() {
            let i = 2 * k;
            let pair =
                |b: usize| quad[i + b * BLOCK_WORDS].wrapping_add(quad[i + (b + 1) * BLOCK_WORDS]);
            *lane = lane.wrapping_add(pair(0).wrapping_add(pair(2)));
        }
    }
    let mut blocks = quads.remainder().chunks_exact(BLOCK_WORDS);
    for block in &mut blocks {
        for (k, lane) in lanes.iter_mut().enumerate() {
            *lane = lane.wrapping_add(block[2 * k]);
        }
    }
    for (k, &w) in blocks.remainder().iter().step_by(2).enumerate() {
        lanes[k] = lanes[k].wrapping_add(w);
    }
    lanes
}

/// Folds the lanes and the length into one word, as a polynomial in an odd constant (lane
/// order matters, and equal sums in different lanes do not cancel as they would under XOR),
/// then mixes.
#[inline(always)]
fn finish(lanes: [u64; LANES], len: usize) -> u64 {
    let folded = lanes.iter().fold(len as u64, |acc, &lane| {
        acc.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(lane)
    });
    mix(folded)
}

/// SplitMix64's finaliser: a bijection that spreads every input bit over the output.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The checksum of an all-zero page of `len` bytes.
pub fn zero_checksum(len: usize) -> u64 {
    finish([0; LANES], len)
}

/// Whether byte `offset` of a page is read by [`page_checksum`] (the even-indexed words).
pub fn is_sampled(offset: usize) -> bool {
    (offset / 8).is_multiple_of(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// A page-sized, 8-byte aligned buffer (frames always are).
    fn page(fill: u64) -> Vec<u64> {
        vec![fill; 512]
    }

    fn bytes(words: &[u64]) -> &[u8] {
        bytemuck::cast_slice(words)
    }

    #[test]
    fn zero_page_checksum_is_the_precomputed_one() {
        assert_eq!(page_checksum(bytes(&page(0))), zero_checksum(4096));
        assert_ne!(
            page_checksum(bytes(&page(0))),
            page_checksum(&bytes(&page(0))[..4088])
        );
    }

    #[test]
    fn a_byte_change_in_a_sampled_word_changes_the_checksum() {
        let mut words = page(0x5a5a_5a5a_5a5a_5a5a);
        let base = page_checksum(bytes(&words));
        for i in (0..4096).step_by(61).filter(|&i| is_sampled(i)) {
            let flip = |w: &mut Vec<u64>| {
                let b: &mut [u8] = bytemuck::cast_slice_mut(w);
                b[i] ^= 1;
            };
            flip(&mut words);
            assert_ne!(page_checksum(bytes(&words)), base, "byte {i}");
            flip(&mut words);
        }
        assert_eq!(page_checksum(bytes(&words)), base);
    }

    #[test]
    fn a_change_in_a_skipped_word_goes_unnoticed() {
        // The documented trade-off: only the even-indexed words are read.
        let mut words = page(7);
        let base = page_checksum(bytes(&words));
        words[1] = 99;
        words[511] = 3;
        assert_eq!(page_checksum(bytes(&words)), base);
        words[510] = 3;
        assert_ne!(page_checksum(bytes(&words)), base);
    }

    #[test]
    fn every_sampled_word_counts() {
        let base = page_checksum(bytes(&page(0)));
        for i in (0..512).step_by(2) {
            let mut words = page(0);
            words[i] = 1 << (i % 64);
            assert_ne!(page_checksum(bytes(&words)), base, "word {i}");
        }
    }

    #[test]
    fn moving_a_word_to_another_lane_changes_the_checksum() {
        let mut words = page(0);
        words[0] = 1;
        let before = page_checksum(bytes(&words));
        words.swap(0, 2);
        assert_ne!(page_checksum(bytes(&words)), before);
        // The same value in two lanes does not cancel out.
        words[0] = 1;
        assert_ne!(page_checksum(bytes(&words)), page_checksum(bytes(&page(0))));
    }

    #[test]
    fn unaligned_bytes_give_the_aligned_value() {
        let words: Vec<u64> = (0..512u64).map(|i| i.wrapping_mul(0x9e37_79b9)).collect();
        let aligned = bytes(&words);
        let mut shifted = vec![0u8; aligned.len() + 1];
        shifted[1..].copy_from_slice(aligned);
        assert_eq!(page_checksum(&shifted[1..]), page_checksum(aligned));
    }

    #[test]
    fn uniform_pages_of_different_bytes_differ() {
        let sums: Vec<u64> = (0..=255u8).map(|b| page_checksum(&[b; 4096])).collect();
        let mut distinct = sums.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), sums.len());
    }

    #[test]
    fn tail_bytes_count() {
        assert_ne!(page_checksum(&[1, 2, 3]), page_checksum(&[1, 2, 4]));
    }
}
