//! Property test: the GPA table against a `BTreeMap` reference model.
//!
//! Random sequences of set/unmap/mkold/mkclean/wrprotect/update (with injected allocation
//! failures) run on both; after every step the table must agree with the model on every
//! lookup and buddy pair, return exactly the flush the model predicts, keep every structural
//! invariant, hold exactly the tables the mapped frames need, and leak no frame.

use std::collections::{BTreeMap, BTreeSet};

use hv_core::addr::{Gfn, GfnRange, Hfn};
use hv_core::flush::{FlushScope, FlushToken};
use hv_core::gpa_table::{GpaTable, GpaTableError, GFN_LIMIT, INDEX_BITS, LEVELS};
use hv_core::pte::{Cca, GpaPte};
use hv_core::table_frames::ArenaTableFrames;
use proptest::prelude::*;

type Model = BTreeMap<u64, GpaPte>;

/// Frames clustered around table boundaries and the end of the reach, so tables are shared,
/// emptied and refilled.
fn gfn_strategy() -> impl Strategy<Value = u64> {
    let last = GFN_LIMIT.raw();
    prop_oneof![
        0u64..1100,
        (1u64 << 18) - 600..(1 << 18) + 600,
        last - 1100..last,
    ]
}

fn range_strategy() -> impl Strategy<Value = GfnRange> {
    (
        gfn_strategy(),
        prop_oneof![1u64..4, 1u64..1200, Just(u64::MAX)],
    )
        .prop_map(|(s, len)| {
            let end = s.saturating_add(len).max(s + 1);
            GfnRange::new(Gfn::new(s), Gfn::new(end)).unwrap()
        })
}

fn pte_strategy() -> impl Strategy<Value = GpaPte> {
    (1u64..50, any::<[bool; 4]>()).prop_map(|(hfn, [w, y, d, uc])| {
        let cca = if uc {
            Cca::UNCACHED
        } else {
            Cca::CACHED_NONCOHERENT
        };
        let mut p = GpaPte::present(Hfn::new(hfn), cca).unwrap();
        if w {
            p = p.mkwrite();
        }
        if y {
            p = p.mkyoung();
        }
        if d {
            p = p.mkdirty();
        }
        p
    })
}

#[derive(Debug, Clone)]
enum Op {
    Set(u64, GpaPte),
    SetFailing(u64, GpaPte, u64),
    Clear(u64),
    Unmap(GfnRange),
    Mkold(GfnRange),
    Mkclean(GfnRange),
    Wrprotect(GfnRange),
    Update(u64, u8),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (gfn_strategy(), pte_strategy()).prop_map(|(g, p)| Op::Set(g, p)),
        2 => (gfn_strategy(), pte_strategy(), 0u64..3).prop_map(|(g, p, n)| Op::SetFailing(g, p, n)),
        1 => gfn_strategy().prop_map(Op::Clear),
        2 => range_strategy().prop_map(Op::Unmap),
        1 => range_strategy().prop_map(Op::Mkold),
        1 => range_strategy().prop_map(Op::Mkclean),
        1 => range_strategy().prop_map(Op::Wrprotect),
        2 => (gfn_strategy(), 0u8..7).prop_map(|(g, t)| Op::Update(g, t)),
    ]
}

fn transform(code: u8, p: GpaPte) -> GpaPte {
    match code {
        0 => p.mkyoung(),
        1 => p.mkold(),
        2 => p.mkdirty(),
        3 => p.mkclean(),
        4 => p.wrprotect(),
        5 => p.mkwrite(),
        _ => GpaPte::NONE,
    }
}

/// Independent statement of the flush rule: a translation could be cached only from a young
/// entry, and must go if the new entry drops validity, write-enable, or changes the frame or
/// cache attribute.
fn model_needs_flush(old: GpaPte, new: GpaPte) -> bool {
    if !old.is_present() || !old.is_young() {
        return false;
    }
    let old_d = old.is_dirty() && old.is_writable();
    let new_d = new.is_dirty() && new.is_writable();
    !new.is_present()
        || !new.is_young()
        || new.hfn() != old.hfn()
        || new.cca() != old.cca()
        || (old_d && !new_d)
}

fn scope_of(gfns: &[u64]) -> FlushScope {
    match (gfns.iter().min(), gfns.iter().max()) {
        (Some(&lo), Some(&hi)) => {
            FlushScope::Gfns(GfnRange::new(Gfn::new(lo), Gfn::new(hi + 1)).unwrap())
        }
        _ => FlushScope::Nothing,
    }
}

/// Applies `f` to the model's entries in `range`; returns the gfns needing a flush and
/// whether any entry was young.
fn model_range(
    model: &mut Model,
    range: GfnRange,
    f: impl Fn(GpaPte) -> GpaPte,
) -> (Vec<u64>, bool) {
    let keys: Vec<u64> = model
        .range(range.start().raw()..range.end().raw())
        .map(|(&k, _)| k)
        .collect();
    let mut flush = Vec::new();
    let mut young = false;
    for k in keys {
        let old = model[&k];
        let new = f(old);
        young |= old.is_young();
        if model_needs_flush(old, new) {
            flush.push(k);
        }
        if new.is_present() {
            model.insert(k, new);
        } else {
            model.remove(&k);
        }
    }
    (flush, young)
}

/// Tables a minimal radix table needs for the model's frames: the root plus one per distinct
/// prefix at each lower level.
fn expected_tables(model: &Model) -> usize {
    let mut n = 1;
    for level in 1..LEVELS {
        let prefixes: BTreeSet<u64> = model.keys().map(|g| g >> (level * INDEX_BITS)).collect();
        n += prefixes.len();
    }
    n
}

fn check_agreement(table: &GpaTable, frames: &ArenaTableFrames, model: &Model, probes: &[u64]) {
    table.check_invariants(frames).unwrap();
    assert_eq!(table.present_count(), model.len() as u64);
    assert_eq!(
        table.table_count(),
        expected_tables(model),
        "exactly the needed tables"
    );
    assert_eq!(
        frames.live_tables(),
        table.table_count(),
        "no leaked table frame"
    );
    for &g in model.keys().chain(probes) {
        let want = model.get(&g).copied();
        assert_eq!(table.lookup(Gfn::new(g), frames), want, "lookup {g:#x}");
        let (even, odd) = table.pair(Gfn::new(g), frames);
        let base = g & !1;
        assert_eq!(even, model.get(&base).copied().unwrap_or(GpaPte::NONE));
        assert_eq!(odd, model.get(&(base + 1)).copied().unwrap_or(GpaPte::NONE));
    }
    let mut seen = Vec::new();
    table.for_each_present(
        GfnRange::new(Gfn::new(0), GFN_LIMIT).unwrap(),
        frames,
        |g, p| seen.push((g.raw(), p)),
    );
    let want: Vec<(u64, GpaPte)> = model.iter().map(|(&k, &v)| (k, v)).collect();
    assert_eq!(seen, want);
}

fn take(token: FlushToken) -> FlushScope {
    token.defer()
}

/// Case count: 256 by default (well under a second), `PROPTEST_CASES` to run more.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn table_matches_model(ops in prop::collection::vec(op_strategy(), 1..48),
                           probes in prop::collection::vec(gfn_strategy(), 8)) {
        let mut frames = ArenaTableFrames::new();
        let mut table = GpaTable::new(&mut frames).unwrap();
        let mut model = Model::new();
        for op in ops {
            match op {
                Op::Set(g, p) => {
                    let old = model.insert(g, p).unwrap_or(GpaPte::NONE);
                    let (got_old, tok) = table.replace(Gfn::new(g), p, &mut frames).unwrap();
                    prop_assert_eq!(got_old, old);
                    let want = if model_needs_flush(old, p) { scope_of(&[g]) } else { FlushScope::Nothing };
                    prop_assert_eq!(take(tok), want);
                }
                Op::SetFailing(g, p, nth) => {
                    let live = frames.live_tables();
                    frames.fail_allocation(Some(frames.allocation_attempts() + nth));
                    let res = table.set(Gfn::new(g), p, &mut frames);
                    frames.fail_allocation(None);
                    match res {
                        Err(e) => {
                            prop_assert_eq!(e, GpaTableError::OutOfMemory);
                            prop_assert_eq!(frames.live_tables(), live, "failed map leaked");
                        }
                        Ok(tok) => {
                            let old = model.insert(g, p).unwrap_or(GpaPte::NONE);
                            let want = if model_needs_flush(old, p) { scope_of(&[g]) } else { FlushScope::Nothing };
                            prop_assert_eq!(take(tok), want);
                        }
                    }
                }
                Op::Clear(g) => {
                    let old = model.remove(&g).unwrap_or(GpaPte::NONE);
                    let got = take(table.set(Gfn::new(g), GpaPte::NONE, &mut frames).unwrap());
                    let want = if model_needs_flush(old, GpaPte::NONE) { scope_of(&[g]) } else { FlushScope::Nothing };
                    prop_assert_eq!(got, want);
                }
                Op::Unmap(r) => {
                    let (flush, _) = model_range(&mut model, r, |_| GpaPte::NONE);
                    prop_assert_eq!(take(table.unmap_range(r, &mut frames)), scope_of(&flush));
                }
                Op::Mkold(r) => {
                    let (flush, young) = model_range(&mut model, r, GpaPte::mkold);
                    let (got_young, tok) = table.mkold_range(r, &mut frames);
                    prop_assert_eq!(take(tok), scope_of(&flush));
                    prop_assert_eq!(got_young, young);
                }
                Op::Mkclean(r) => {
                    let (flush, _) = model_range(&mut model, r, GpaPte::mkclean);
                    prop_assert_eq!(take(table.mkclean_range(r, &mut frames)), scope_of(&flush));
                }
                Op::Wrprotect(r) => {
                    let (flush, _) = model_range(&mut model, r, GpaPte::wrprotect);
                    prop_assert_eq!(take(table.wrprotect_range(r, &mut frames)), scope_of(&flush));
                }
                Op::Update(g, code) => {
                    let got = table.update(Gfn::new(g), &mut frames, |p| transform(code, p));
                    match model.get(&g).copied() {
                        None => prop_assert!(got.is_none()),
                        Some(old) => {
                            let new = transform(code, old);
                            let u = got.expect("present entry updates");
                            prop_assert_eq!(u.old, old);
                            prop_assert_eq!(u.new, new);
                            let want = if model_needs_flush(old, new) { scope_of(&[g]) } else { FlushScope::Nothing };
                            prop_assert_eq!(take(u.flush), want);
                            if new.is_present() {
                                model.insert(g, new);
                            } else {
                                model.remove(&g);
                            }
                        }
                    }
                }
            }
            check_agreement(&table, &frames, &model, &probes);
        }
        let any_young = model.values().any(|p| p.is_young());
        let want = if any_young { FlushScope::All } else { FlushScope::Nothing };
        prop_assert_eq!(take(table.destroy(&mut frames)), want);
        prop_assert_eq!(frames.live_tables(), 0);
    }
}
