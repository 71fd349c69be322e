//! Victim selection: which resident pages to evict, as a pure function.
//!
//! Coldest first (highest idle age), never below a minimum age, never taking a VM below its
//! reservation. Within one age, candidates keep the order they were given in, so the result
//! is deterministic.

use alloc::vec::Vec;

use hv_core::memslot::BackingId;

use crate::idle::MAX_AGE;

/// A VM's resident pages and the part of them that is never evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmUsage {
    /// Resident pages now.
    pub resident: u64,
    /// Pages the VM keeps whatever the pressure.
    pub reservation: u64,
}

impl VmUsage {
    /// Pages that may be evicted.
    pub fn excess(&self) -> u64 {
        self.resident.saturating_sub(self.reservation)
    }
}

/// A resident page that could be evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Index of its VM in the usage table.
    pub vm: usize,
    /// Its backing object.
    pub backing: BackingId,
    /// Its page in the backing object.
    pub page: u64,
    /// Its idle age.
    pub age: u8,
}

/// Picks up to `want` victims among `candidates`: oldest age first, ages below `min_age`
/// never, and at most `usage[vm].excess()` pages of each VM. Candidates naming a VM outside
/// `usage` are ignored.
pub fn select_victims(
    usage: &[VmUsage],
    candidates: impl IntoIterator<Item = Candidate>,
    want: usize,
    min_age: u8,
) -> Vec<Candidate> {
    let mut buckets: [Vec<Candidate>; MAX_AGE as usize + 1] = Default::default();
    for c in candidates {
        if c.age >= min_age && c.vm < usage.len() {
            buckets[usize::from(c.age.min(MAX_AGE))].push(c);
        }
    }
    let mut left: Vec<u64> = usage.iter().map(VmUsage::excess).collect();
    let mut victims = Vec::new();
    for bucket in buckets.iter().rev() {
        for c in bucket {
            if victims.len() == want {
                return victims;
            }
            if left[c.vm] > 0 {
                left[c.vm] -= 1;
                victims.push(*c);
            }
        }
    }
    victims
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(vm: usize, page: u64, age: u8) -> Candidate {
        Candidate {
            vm,
            backing: BackingId(vm as u32),
            page,
            age,
        }
    }

    fn pages(v: &[Candidate]) -> Vec<(usize, u64)> {
        v.iter().map(|c| (c.vm, c.page)).collect()
    }

    #[test]
    fn coldest_first_in_given_order() {
        let usage = [VmUsage {
            resident: 10,
            reservation: 0,
        }];
        let c = [cand(0, 0, 1), cand(0, 1, 5), cand(0, 2, 3), cand(0, 3, 5)];
        assert_eq!(
            pages(&select_victims(&usage, c, 3, 0)),
            [(0, 1), (0, 3), (0, 2)]
        );
        assert_eq!(select_victims(&usage, c, 0, 0), []);
        assert_eq!(select_victims(&usage, c, 10, 0).len(), 4);
    }

    #[test]
    fn minimum_age_and_reservations_are_respected() {
        let usage = [
            VmUsage {
                resident: 5,
                reservation: 4,
            },
            VmUsage {
                resident: 3,
                reservation: 8,
            },
            VmUsage {
                resident: 6,
                reservation: 2,
            },
        ];
        assert_eq!(usage[1].excess(), 0);
        let c = [
            cand(0, 0, 15),
            cand(0, 1, 15),
            cand(1, 0, 15),
            cand(2, 0, 2),
            cand(2, 1, 1),
            cand(2, 2, 9),
            cand(7, 0, 15),
        ];
        // VM 0 may lose one page, VM 1 none, VM 2 four; age 1 is too young.
        assert_eq!(
            pages(&select_victims(&usage, c, 10, 2)),
            [(0, 0), (2, 2), (2, 0)]
        );
    }

    #[test]
    fn saturated_ages_share_the_oldest_bucket() {
        let usage = [VmUsage {
            resident: 4,
            reservation: 0,
        }];
        let c = [cand(0, 0, MAX_AGE), cand(0, 1, u8::MAX)];
        assert_eq!(pages(&select_victims(&usage, c, 2, 0)), [(0, 0), (0, 1)]);
    }
}
