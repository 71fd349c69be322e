//! GPA table micro-benchmarks: per-page cost of map, lookup, pair, range ops and unmap.
//!
//! Prints `BENCH <name>=<value> ns` lines. Run with `cargo bench -p hv-core --bench gpa_table`.
//! Each figure is the best of several rounds over 2^18 pages (1 GiB of 4 KiB pages), so one-off
//! noise from other processes on a shared machine mostly drops out.

use std::hint::black_box;
use std::time::Instant;

use hv_core::addr::{Gfn, GfnRange, Hfn};
use hv_core::gpa_table::GpaTable;
use hv_core::pte::{Cca, GpaPte};
use hv_core::table_frames::ArenaTableFrames;

const PAGES: u64 = 1 << 18;
const ROUNDS: usize = 5;

/// A full-period LCG permutation of 0..PAGES, so random lookups touch every page once.
fn scrambled(i: u64) -> u64 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15 | 1)
        .wrapping_add(12345))
        & (PAGES - 1)
}

fn pte(i: u64) -> GpaPte {
    GpaPte::present(Hfn::new(0x10_0000 + i), Cca::CACHED_NONCOHERENT)
        .expect("bench frame fits")
        .mkwrite()
        .mkyoung()
}

fn whole() -> GfnRange {
    GfnRange::from_start_len(Gfn::new(0), PAGES).expect("bench range")
}

fn ns_per_page(start: Instant) -> f64 {
    start.elapsed().as_nanos() as f64 / PAGES as f64
}

#[derive(Default)]
struct Best {
    names: Vec<&'static str>,
    values: Vec<f64>,
}

impl Best {
    fn record(&mut self, name: &'static str, v: f64) {
        match self.names.iter().position(|&n| n == name) {
            Some(i) => self.values[i] = self.values[i].min(v),
            None => {
                self.names.push(name);
                self.values.push(v);
            }
        }
    }
}

fn main() {
    let mut best = Best::default();
    for _ in 0..ROUNDS {
        let mut frames = ArenaTableFrames::new();
        let mut table = GpaTable::new(&mut frames).expect("root");

        let t = Instant::now();
        for i in 0..PAGES {
            table
                .set(Gfn::new(i), pte(i), &mut frames)
                .expect("map")
                .defer();
        }
        best.record("gpa_map_ns_per_page", ns_per_page(t));

        let t = Instant::now();
        let mut acc = 0u64;
        for i in 0..PAGES {
            acc ^= table.lookup(Gfn::new(i), &frames).map_or(0, GpaPte::raw);
        }
        black_box(acc);
        best.record("gpa_lookup_seq_ns_per_page", ns_per_page(t));

        let t = Instant::now();
        for i in 0..PAGES {
            acc ^= table
                .lookup(Gfn::new(scrambled(i)), &frames)
                .map_or(0, GpaPte::raw);
        }
        black_box(acc);
        best.record("gpa_lookup_random_ns_per_page", ns_per_page(t));

        let t = Instant::now();
        for i in 0..PAGES {
            let (e, o) = table.pair(Gfn::new(scrambled(i)), &frames);
            acc ^= e.entrylo() ^ o.entrylo();
        }
        black_box(acc);
        best.record("gpa_pair_random_ns_per_page", ns_per_page(t));

        let t = Instant::now();
        let (young, tok) = table.mkold_range(whole(), &mut frames);
        black_box(young);
        tok.defer();
        best.record("gpa_mkold_range_ns_per_page", ns_per_page(t));

        let t = Instant::now();
        table.mkclean_range(whole(), &mut frames).defer();
        best.record("gpa_mkclean_range_ns_per_page", ns_per_page(t));

        let t = Instant::now();
        table.unmap_range(whole(), &mut frames).defer();
        best.record("gpa_unmap_range_ns_per_page", ns_per_page(t));

        assert_eq!(table.table_count(), 1);
        table.destroy(&mut frames).defer();
    }
    for (name, v) in best.names.iter().zip(&best.values) {
        println!("BENCH {name}={v:.1} ns");
    }
}
