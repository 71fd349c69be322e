//! What each memory service saves the host, net of its own cost, sampled once per services
//! round: the figures behind the `STAT sample` lines (which tools/plot draws), the
//! `STAT <service>_saved_pages` lines a service scenario ends with and the demo's table, so
//! all of them agree.
//!
//! - dedup: guest pages backed by the service's shared frames, less those frames
//!   ([`crate::dedup::DedupStats::net_saved_frames`]);
//! - balloon: frames the balloons gave back to the pool whose pages have not taken memory
//!   again ([`crate::balloon::VmBalloon::frames_out`]);
//! - swap: pages out of memory, less the frames the compressed store's chunks fill (clean
//!   copies of pages back in memory included), so it is negative while the store takes more
//!   than it frees.
//!
//! [`SampleLog`] decides which rounds print a sample line and keeps the most each service
//! saved in a printed one, so the table's "most" column is the plot's peak and its "end"
//! column the plot's last point.

use core::fmt::{self, Write};

/// Bytes of a page (every figure counts 4 KiB pages or frames).
const PAGE_BYTES: u64 = 4096;

/// Frames each service saves at one moment; negative when it costs more than it saves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Savings {
    /// Frames freed by same-page merging, net of the service's own frames.
    pub dedup: i64,
    /// Frames the balloons gave back that are still out.
    pub balloon: i64,
    /// Pages out of memory, net of the compressed store's frames.
    pub swap: i64,
}

/// One service in the summaries.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    /// Name in `STAT` lines (`<name>_saved_pages`).
    pub name: &'static str,
    /// Label in the table.
    pub label: &'static str,
    /// Its figure.
    pub of: fn(&Savings) -> i64,
}

/// The services in table order.
pub const SERVICES: [Service; 3] = [
    Service {
        name: "dedup",
        label: "dedup (same-page merging)",
        of: |s| s.dedup,
    },
    Service {
        name: "balloon",
        label: "balloon (frames given back)",
        of: |s| s.balloon,
    },
    Service {
        name: "swap",
        label: "swap (compressed, net)",
        of: |s| s.swap,
    },
];

impl Savings {
    /// Each service's larger figure of `self` and `other`.
    fn max(self, other: Self) -> Self {
        Self {
            dedup: self.dedup.max(other.dedup),
            balloon: self.balloon.max(other.balloon),
            swap: self.swap.max(other.swap),
        }
    }

    /// Whether some service saves more in `self` than in `peak` and less in `next`: `self`
    /// is a new peak that would be lost if `next` were the next line printed.
    fn new_peak_before(&self, peak: &Self, next: &Self) -> bool {
        SERVICES
            .iter()
            .any(|s| (s.of)(self) > (s.of)(peak) && (s.of)(next) < (s.of)(self))
    }
}

/// One services round's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Round number (1 for the first).
    pub round: u64,
    /// What the services save.
    pub saved: Savings,
    /// Free frames of the guest pool.
    pub free_frames: u64,
}

impl fmt::Display for Sample {
    /// The `STAT sample` line (without a line end).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "STAT sample t={} dedup_saved_pages={} balloon_saved_pages={} swap_saved_pages={} free_frames={}",
            self.round, self.saved.dedup, self.saved.balloon, self.saved.swap, self.free_frames
        )
    }
}

/// Fewest rounds between two regular sample lines (keeps a busy run readable).
pub const SAMPLE_EVERY_ROUNDS: u64 = 10;

/// The sample lines one call asks to print, oldest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ToPrint {
    lines: [Option<Sample>; 2],
}

impl ToPrint {
    fn push(&mut self, sample: Sample) {
        let slot = if self.lines[0].is_none() { 0 } else { 1 };
        self.lines[slot] = Some(sample);
    }

    /// The samples to print, in order.
    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.lines.iter().flatten()
    }
}

/// Which rounds print a `STAT sample` line, and what the printed ones showed.
///
/// A round prints when a service did something or a figure moved since the last line, at
/// most every [`SAMPLE_EVERY_ROUNDS`] rounds. A round in between that held a new peak is
/// printed as soon as the next round falls below it, so a short balloon cycle between two
/// regular lines still shows. The summary's figures are those of printed lines only.
#[derive(Debug, Default)]
pub struct SampleLog {
    /// The last sample printed.
    printed: Option<Sample>,
    /// The previous round's sample if it was not printed.
    held: Option<Sample>,
    /// A change not printed yet.
    unprinted_change: bool,
    /// The most each service saved in a printed sample.
    peak: Option<Savings>,
}

impl SampleLog {
    /// Takes one round's sample (`changed`: a service did something in the round) and
    /// returns the lines to print now.
    pub fn record(&mut self, sample: Sample, changed: bool) -> ToPrint {
        let mut out = ToPrint::default();
        self.keep_peak(&sample.saved, &mut out);
        // Figures moved since the last line (or from nothing, before the first one).
        let before = self.printed.map_or(Savings::default(), |p| p.saved);
        self.unprinted_change |= changed || sample.saved != before;
        let spaced = self
            .printed
            .is_none_or(|p| sample.round >= p.round + SAMPLE_EVERY_ROUNDS);
        if self.unprinted_change && spaced {
            self.print(sample, &mut out);
        } else {
            self.held = Some(sample);
        }
        out
    }

    /// Takes the figures at the end of the run (after the last round): the lines to print
    /// (the end figures unless the last line shows them already) and the run's summary.
    pub fn finish(&mut self, last: Sample) -> (ToPrint, Summary) {
        let mut out = ToPrint::default();
        self.keep_peak(&last.saved, &mut out);
        if self.printed.is_none_or(|p| p.saved != last.saved) {
            self.print(last, &mut out);
        }
        let summary = Summary {
            end: last.saved,
            peak: self.peak.unwrap_or(last.saved),
        };
        (out, summary)
    }

    /// Prints the held sample if it is a new peak that `next` falls below.
    fn keep_peak(&mut self, next: &Savings, out: &mut ToPrint) {
        if let (Some(held), Some(peak)) = (self.held, self.peak) {
            if held.saved.new_peak_before(&peak, next) {
                self.print(held, out);
            }
        }
    }

    fn print(&mut self, sample: Sample, out: &mut ToPrint) {
        out.push(sample);
        self.peak = Some(self.peak.map_or(sample.saved, |p| p.max(sample.saved)));
        self.printed = Some(sample);
        self.held = None;
        self.unprinted_change = false;
    }
}

/// What the services saved over a run: the figures of its last `STAT sample` line and the
/// most each service saved in any of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// At the end of the run.
    pub end: Savings,
    /// The most in any printed sample.
    pub peak: Savings,
}

/// `pages` as MiB with three decimals, sign kept, padded as the formatter asks.
struct Mib(i64);

impl fmt::Display for Mib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = u128::from(self.0.unsigned_abs()) * u128::from(PAGE_BYTES);
        let mut text = heapless_text::Text::default();
        write!(
            text,
            "{}{}.{:03}",
            if self.0 < 0 { "-" } else { "" },
            bytes >> 20,
            ((bytes % (1 << 20)) * 1000) >> 20
        )?;
        f.pad(text.as_str())
    }
}

/// A short text on the stack (a MiB figure), so formatting needs no allocation.
mod heapless_text {
    use core::fmt;

    #[derive(Default)]
    pub struct Text {
        bytes: [u8; 32],
        len: usize,
    }

    impl Text {
        pub fn as_str(&self) -> &str {
            core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("?")
        }
    }

    impl fmt::Write for Text {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let end = self.len + s.len();
            if end > self.bytes.len() {
                return Err(fmt::Error);
            }
            self.bytes[self.len..end].copy_from_slice(s.as_bytes());
            self.len = end;
            Ok(())
        }
    }
}

impl Summary {
    /// The `STAT <service>_saved_pages=` (end of run) and `STAT <service>_saved_pages_peak=`
    /// lines.
    pub fn write_stats(&self, out: &mut dyn Write) -> fmt::Result {
        for s in SERVICES {
            writeln!(out, "STAT {}_saved_pages={}", s.name, (s.of)(&self.end))?;
        }
        for s in SERVICES {
            writeln!(
                out,
                "STAT {}_saved_pages_peak={}",
                s.name,
                (s.of)(&self.peak)
            )?;
        }
        Ok(())
    }

    /// The table of memory saved per service: the same figures as [`Self::write_stats`].
    pub fn write_table(&self, out: &mut dyn Write) -> fmt::Result {
        writeln!(out)?;
        writeln!(
            out,
            "  memory saved per service (net: a service's own frames count against it)"
        )?;
        writeln!(
            out,
            "  {:<28} {:>10} {:>10} {:>10} {:>10}",
            "service", "most pages", "most MiB", "end pages", "end MiB"
        )?;
        for s in SERVICES {
            let (peak, end) = ((s.of)(&self.peak), (s.of)(&self.end));
            writeln!(
                out,
                "  {:<28} {peak:>10} {:>10} {end:>10} {:>10}",
                s.label,
                Mib(peak),
                Mib(end)
            )?;
        }
        writeln!(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;
    use std::vec::Vec;

    fn sample(round: u64, dedup: i64, balloon: i64, swap: i64) -> Sample {
        Sample {
            round,
            saved: Savings {
                dedup,
                balloon,
                swap,
            },
            free_frames: 7,
        }
    }

    fn rounds(out: ToPrint) -> Vec<u64> {
        out.samples().map(|s| s.round).collect()
    }

    #[test]
    fn a_short_peak_between_spaced_lines_is_printed_and_counted() {
        let mut log = SampleLog::default();
        assert_eq!(rounds(log.record(sample(1, 10, 0, 0), true)), [1]);
        // Rounds 2..4 are too close to print; the balloon peaks at round 3.
        assert_eq!(rounds(log.record(sample(2, 10, 100, 0), true)), [0; 0]);
        assert_eq!(rounds(log.record(sample(3, 10, 200, 0), true)), [0; 0]);
        assert_eq!(
            rounds(log.record(sample(4, 10, 0, 0), true)),
            [3],
            "the peak"
        );
        // A fall that is no new peak waits for the spacing.
        assert_eq!(rounds(log.record(sample(5, 5, 0, 0), false)), [0; 0]);
        assert_eq!(rounds(log.record(sample(12, 5, 0, 0), false)), [0; 0]);
        assert_eq!(rounds(log.record(sample(13, 4, 0, -7), false)), [13]);
        // Nothing moved and nothing happened: no line.
        assert_eq!(rounds(log.record(sample(30, 4, 0, -7), false)), [0; 0]);
        let (out, summary) = log.finish(sample(30, 4, 0, -7));
        assert_eq!(rounds(out), [0; 0], "the last line shows the end figures");
        assert_eq!(summary.end, sample(0, 4, 0, -7).saved);
        assert_eq!(summary.peak, sample(0, 10, 200, 0).saved);
    }

    #[test]
    fn a_peak_held_at_the_end_and_the_end_figures_are_printed() {
        let mut log = SampleLog::default();
        log.record(sample(1, 3, 0, 0), true);
        log.record(sample(2, 9, 0, 0), true);
        let (out, summary) = log.finish(sample(2, 6, 0, 0));
        let lines: Vec<(u64, i64)> = out.samples().map(|s| (s.round, s.saved.dedup)).collect();
        assert_eq!(lines, [(2, 9), (2, 6)]);
        assert_eq!((summary.end.dedup, summary.peak.dedup), (6, 9));
        // Nothing ever printed: the end figures are the only line, and the peak too.
        let mut empty = SampleLog::default();
        let (out, summary) = empty.finish(sample(0, 0, 0, -2));
        assert_eq!(rounds(out), [0]);
        assert_eq!((summary.peak.swap, summary.end.swap), (-2, -2));
    }

    #[test]
    fn figures_that_move_print_without_a_reported_change() {
        let mut log = SampleLog::default();
        assert_eq!(rounds(log.record(sample(1, 0, 0, 0), false)), [0; 0]);
        assert_eq!(rounds(log.record(sample(2, 0, 64, 0), false)), [2]);
        assert_eq!(rounds(log.record(sample(12, 0, 64, 0), false)), [0; 0]);
        assert_eq!(rounds(log.record(sample(13, 0, 0, 0), false)), [13]);
    }

    #[test]
    fn a_change_with_equal_figures_still_prints_once_spaced() {
        let mut log = SampleLog::default();
        assert_eq!(rounds(log.record(sample(1, 0, 0, 0), false)), [0; 0]);
        assert_eq!(rounds(log.record(sample(2, 0, 0, 0), true)), [2]);
        assert_eq!(rounds(log.record(sample(3, 0, 0, 0), true)), [0; 0]);
        assert_eq!(rounds(log.record(sample(12, 0, 0, 0), false)), [12]);
    }

    #[test]
    fn sample_line_stats_and_table_show_the_same_figures() {
        let s = sample(5, 4033, 2048, -3930);
        assert_eq!(
            s.to_string(),
            "STAT sample t=5 dedup_saved_pages=4033 balloon_saved_pages=2048 \
             swap_saved_pages=-3930 free_frames=7"
        );
        let summary = Summary {
            end: sample(0, 3859, 0, -3930).saved,
            peak: s.saved,
        };
        let mut stats = String::new();
        summary.write_stats(&mut stats).unwrap();
        assert_eq!(
            stats,
            "STAT dedup_saved_pages=3859\nSTAT balloon_saved_pages=0\nSTAT swap_saved_pages=-3930\n\
             STAT dedup_saved_pages_peak=4033\nSTAT balloon_saved_pages_peak=2048\n\
             STAT swap_saved_pages_peak=-3930\n"
        );
        let mut table = String::new();
        summary.write_table(&mut table).unwrap();
        let rows: Vec<&str> = table.lines().collect();
        assert_eq!(rows.len(), 7, "{table}");
        assert_eq!(rows[0], "");
        assert!(rows[1].starts_with("  memory saved per service"));
        // Label in 2 + 28 columns, then the four figures.
        let cells: Vec<Vec<&str>> = rows[3..6]
            .iter()
            .map(|r| r[30..].split_whitespace().collect())
            .collect();
        assert_eq!(cells[0], ["4033", "15.753", "3859", "15.074"]);
        assert_eq!(cells[1], ["2048", "8.000", "0", "0.000"]);
        assert_eq!(cells[2], ["-3930", "-15.351", "-3930", "-15.351"]);
        assert!(rows[5].starts_with("  swap (compressed, net) "));
        assert_eq!(rows[6], "");
    }

    #[test]
    fn mib_keeps_the_sign_and_pads() {
        assert_eq!(Mib(256).to_string(), "1.000");
        assert_eq!(Mib(-3930).to_string(), "-15.351");
        assert_eq!(format!("{:>8}", Mib(-1)), "  -0.003");
        assert_eq!(Mib(0).to_string(), "0.000");
        assert_eq!(Mib(i64::MIN).to_string(), "-36028797018963968.000");
    }
}
