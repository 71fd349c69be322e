//! The page checksum the dedup scanner gates and orders candidates by.
//!
//! A Fletcher-style pair of running sums over the page's 64-bit little-endian words (`a`
//! sums the words, `b` sums the running `a`, so moving a word changes `b`), finished with the
//! SplitMix64 mixer so that nearby sums spread over the whole key space of the ordered sets.
//! Per word it costs one load and two additions, with no multiply in the loop: it is not
//! cryptographic and not meant to be. Two pages with equal checksums are only *probably*
//! equal; the scanner always compares bytes before it merges.

/// Checksum of a page's bytes (any length; a trailing partial word is zero-padded).
pub fn page_checksum(bytes: &[u8]) -> u64 {
    let (mut a, mut b) = (0u64, 0u64);
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        a = a.wrapping_add(u64::from_le_bytes(w));
        b = b.wrapping_add(a);
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let mut w = [0u8; 8];
        w[..tail.len()].copy_from_slice(tail);
        a = a.wrapping_add(u64::from_le_bytes(w));
        b = b.wrapping_add(a);
    }
    mix(a ^ b.rotate_left(32) ^ bytes.len() as u64)
}

/// SplitMix64's finaliser: a bijection that spreads every input bit over the output.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The checksum of an all-zero page of `len` bytes.
pub fn zero_checksum(len: usize) -> u64 {
    mix(len as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn zero_page_checksum_is_the_precomputed_one() {
        assert_eq!(page_checksum(&[0u8; 4096]), zero_checksum(4096));
        assert_ne!(page_checksum(&[0u8; 4096]), page_checksum(&[0u8; 4088]));
    }

    #[test]
    fn any_single_byte_change_changes_the_checksum() {
        let mut page = vec![0x5au8; 4096];
        let base = page_checksum(&page);
        for i in (0..4096).step_by(61) {
            page[i] ^= 1;
            assert_ne!(page_checksum(&page), base, "byte {i}");
            page[i] ^= 1;
        }
        assert_eq!(page_checksum(&page), base);
    }

    #[test]
    fn swapping_two_words_changes_the_checksum() {
        let mut page = vec![0u8; 4096];
        page[0] = 1;
        page[8] = 2;
        let before = page_checksum(&page);
        page.swap(0, 8);
        assert_ne!(page_checksum(&page), before);
    }

    #[test]
    fn tail_bytes_count() {
        assert_ne!(page_checksum(&[1, 2, 3]), page_checksum(&[1, 2, 4]));
    }
}
