//! The scan-rate advisor: how many pages each pass should scan so that a full scan takes
//! the target time, without the scanner ever using more than its CPU budget.
//!
//! A pure function of the tracked page count, the pass interval, the target full-scan time,
//! the CPU budget and the measured cost of scanning one page. When the budget cannot meet the
//! target, the budget wins and the advice says how long a full scan will really take.

use core::fmt;

/// What the advisor needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdvisorInput {
    /// Pages the scanner tracks (one full scan visits each once).
    pub tracked_pages: u64,
    /// Time between the starts of two passes, in microseconds.
    pub pass_interval_us: u64,
    /// Wanted duration of one full scan, in microseconds.
    pub target_full_scan_us: u64,
    /// Share of one CPU the scanner may use, in parts per thousand (1..=1000).
    pub cpu_budget_permille: u32,
    /// Measured (or estimated) cost of scanning one page, in nanoseconds (at least 1).
    pub ns_per_page: u64,
    /// Never advise fewer pages per pass than this (unless the budget forbids it).
    pub min_pages_per_pass: u64,
}

/// The advisor's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advice {
    /// Pages to scan in each pass.
    pub pages_per_pass: u64,
    /// How long a full scan takes at that rate, in microseconds.
    pub full_scan_us: u64,
    /// Whether the CPU budget, not the target, set the rate.
    pub budget_limited: bool,
}

/// Inputs the advisor cannot work with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdvisorError {
    /// The pass interval or the target full-scan time is zero.
    ZeroTime,
    /// The CPU budget is zero or above 1000 per mille.
    BadBudget,
    /// The per-page cost is zero.
    ZeroCost,
    /// The budget does not allow even one page per pass.
    BudgetTooSmall,
}

impl fmt::Display for AdvisorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AdvisorError::ZeroTime => "pass interval and target scan time must be nonzero",
            AdvisorError::BadBudget => "CPU budget must be 1..=1000 per mille",
            AdvisorError::ZeroCost => "per-page cost must be nonzero",
            AdvisorError::BudgetTooSmall => "CPU budget allows less than one page per pass",
        })
    }
}

/// Pages per pass for the input (see the module docs).
pub fn advise(input: AdvisorInput) -> Result<Advice, AdvisorError> {
    if input.pass_interval_us == 0 || input.target_full_scan_us == 0 {
        return Err(AdvisorError::ZeroTime);
    }
    if input.cpu_budget_permille == 0 || input.cpu_budget_permille > 1000 {
        return Err(AdvisorError::BadBudget);
    }
    if input.ns_per_page == 0 {
        return Err(AdvisorError::ZeroCost);
    }
    // u128 throughout: products of microseconds, nanoseconds and page counts can overflow u64.
    let budget_ns_per_pass =
        u128::from(input.pass_interval_us) * 1000 * u128::from(input.cpu_budget_permille) / 1000;
    let max_pages = budget_ns_per_pass / u128::from(input.ns_per_page);
    if max_pages == 0 {
        return Err(AdvisorError::BudgetTooSmall);
    }
    let passes_per_scan = u128::from(input.target_full_scan_us / input.pass_interval_us).max(1);
    let wanted = u128::from(input.tracked_pages)
        .div_ceil(passes_per_scan)
        .max(u128::from(input.min_pages_per_pass))
        .max(1);
    let budget_limited = wanted > max_pages;
    let pages = wanted.min(max_pages);
    let passes = u128::from(input.tracked_pages).div_ceil(pages);
    let full_scan_us = passes.saturating_mul(u128::from(input.pass_interval_us));
    Ok(Advice {
        pages_per_pass: u64::try_from(pages).unwrap_or(u64::MAX),
        full_scan_us: u64::try_from(full_scan_us).unwrap_or(u64::MAX),
        budget_limited,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> AdvisorInput {
        AdvisorInput {
            tracked_pages: 100_000,
            pass_interval_us: 20_000,
            target_full_scan_us: 10_000_000,
            cpu_budget_permille: 100,
            ns_per_page: 1_000,
            min_pages_per_pass: 1,
        }
    }

    #[test]
    fn meets_the_target_when_the_budget_allows() {
        let a = advise(input()).unwrap();
        // 500 passes in 10 s: 200 pages each, 200 µs of a 2 ms budget.
        assert_eq!(a.pages_per_pass, 200);
        assert_eq!(a.full_scan_us, 10_000_000);
        assert!(!a.budget_limited);
    }

    #[test]
    fn never_exceeds_the_budget() {
        for ns in [1u64, 7, 100, 999, 5_000, 40_000, 2_000_000] {
            for permille in [1u32, 10, 250, 1000] {
                for pages in [0u64, 1, 1_000, 1 << 20, 1 << 40] {
                    let i = AdvisorInput {
                        tracked_pages: pages,
                        ns_per_page: ns,
                        cpu_budget_permille: permille,
                        ..input()
                    };
                    let Ok(a) = advise(i) else { continue };
                    let used_ns = u128::from(a.pages_per_pass) * u128::from(ns);
                    let budget_ns =
                        u128::from(i.pass_interval_us) * 1000 * u128::from(permille) / 1000;
                    assert!(used_ns <= budget_ns, "{i:?} -> {a:?}");
                    assert!(a.pages_per_pass >= 1);
                    if !a.budget_limited {
                        assert!(a.full_scan_us <= i.target_full_scan_us.max(i.pass_interval_us));
                    }
                }
            }
        }
    }

    #[test]
    fn budget_wins_over_the_target_and_says_so() {
        let a = advise(AdvisorInput {
            ns_per_page: 40_000,
            ..input()
        })
        .unwrap();
        // 2 ms per pass at 40 µs a page: 50 pages, so 2000 passes = 40 s.
        assert_eq!(a.pages_per_pass, 50);
        assert!(a.budget_limited);
        assert_eq!(a.full_scan_us, 40_000_000);
    }

    #[test]
    fn minimum_and_rounding() {
        let a = advise(AdvisorInput {
            tracked_pages: 1001,
            target_full_scan_us: 200_000,
            min_pages_per_pass: 1,
            ..input()
        })
        .unwrap();
        // 10 passes for 1001 pages: 101 each, never leaving a page for an 11th pass.
        assert_eq!(a.pages_per_pass, 101);
        assert_eq!(a.full_scan_us, 200_000);
        let a = advise(AdvisorInput {
            tracked_pages: 10,
            min_pages_per_pass: 64,
            ..input()
        })
        .unwrap();
        assert_eq!(a.pages_per_pass, 64);
        // A target shorter than one interval still means one pass per full scan.
        let a = advise(AdvisorInput {
            target_full_scan_us: 1,
            tracked_pages: 300,
            ..input()
        })
        .unwrap();
        assert_eq!((a.pages_per_pass, a.full_scan_us), (300, 20_000));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let bad = |f: fn(&mut AdvisorInput)| {
            let mut i = input();
            f(&mut i);
            advise(i).unwrap_err()
        };
        assert_eq!(bad(|i| i.pass_interval_us = 0), AdvisorError::ZeroTime);
        assert_eq!(bad(|i| i.target_full_scan_us = 0), AdvisorError::ZeroTime);
        assert_eq!(bad(|i| i.cpu_budget_permille = 0), AdvisorError::BadBudget);
        assert_eq!(
            bad(|i| i.cpu_budget_permille = 1001),
            AdvisorError::BadBudget
        );
        assert_eq!(bad(|i| i.ns_per_page = 0), AdvisorError::ZeroCost);
        assert_eq!(
            bad(|i| i.ns_per_page = 3_000_000),
            AdvisorError::BudgetTooSmall
        );
    }
}
