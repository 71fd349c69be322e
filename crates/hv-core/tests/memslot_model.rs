//! Property test: memslots (with a GPA table behind them) against a linear-scan model.
//!
//! Random insert/remove/move/flag changes, page mappings inside slots and dirty-log harvests.
//! After every step: slot lookup by frame and by backing range match a brute-force scan,
//! overlapping or out-of-reach inserts are refused, no table entry survives outside every slot,
//! no entry in a read-only slot is writable, and every dirty entry in a logged slot has its
//! dirty bit set (so no write escapes the log).

use std::collections::BTreeMap;

use hv_core::addr::{Gfn, GfnRange, Hfn};
use hv_core::gpa_table::{GpaTable, GFN_LIMIT};
use hv_core::memslot::{BackingId, MemslotError, Memslots, SlotFlags, SlotId};
use hv_core::pte::{Cca, GpaPte};
use hv_core::table_frames::ArenaTableFrames;
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct SlotModel {
    id: SlotId,
    start: u64,
    end: u64,
    backing: u32,
    offset: u64,
    flags: SlotFlags,
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u64, u64, u32, u64, u32),
    InsertNearLimit(u64),
    Remove(usize),
    Move(usize, u64),
    SetFlags(usize, u32),
    Map(usize, u64, bool),
    Harvest(usize),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..400, 1u64..64, 0u32..2, 0u64..50, 0u32..4)
            .prop_map(|(s, l, b, o, f)| Op::Insert(s, l, b, o, f)),
        1 => (1u64..8).prop_map(Op::InsertNearLimit),
        1 => (0usize..8).prop_map(Op::Remove),
        2 => (0usize..8, 0u64..400).prop_map(|(k, s)| Op::Move(k, s)),
        2 => (0usize..8, 0u32..4).prop_map(|(k, f)| Op::SetFlags(k, f)),
        6 => (0usize..8, 0u64..64, any::<bool>()).prop_map(|(k, o, w)| Op::Map(k, o, w)),
        2 => (0usize..8).prop_map(Op::Harvest),
    ]
}

fn flags_of(bits: u32) -> SlotFlags {
    SlotFlags::from_bits_truncate(bits)
}

fn check(
    slots: &Memslots,
    model: &[SlotModel],
    table: &GpaTable,
    frames: &ArenaTableFrames,
    ptes: &BTreeMap<u64, GpaPte>,
) {
    assert_eq!(slots.len(), model.len());
    for g in 0..480 {
        let want = model
            .iter()
            .find(|s| s.start <= g && g < s.end)
            .map(|s| s.id);
        assert_eq!(slots.find(Gfn::new(g)).map(|s| s.id()), want, "find {g}");
    }
    for backing in 0..2u32 {
        for (lo, hi) in [(0u64, 5u64), (3, 40), (20, 120), (0, 200)] {
            let got: Vec<(SlotId, GfnRange)> =
                slots.find_by_backing(BackingId(backing), lo..hi).collect();
            let mut want = Vec::new();
            for s in model.iter().filter(|s| s.backing == backing) {
                let pages: Vec<u64> = (s.offset..s.offset + (s.end - s.start))
                    .filter(|p| (lo..hi).contains(p))
                    .collect();
                if let (Some(&a), Some(&b)) = (pages.first(), pages.last()) {
                    let g0 = s.start + (a - s.offset);
                    let g1 = s.start + (b - s.offset) + 1;
                    want.push((s.id, GfnRange::new(Gfn::new(g0), Gfn::new(g1)).unwrap()));
                }
            }
            want.sort_by_key(|(_, r)| r.start());
            assert_eq!(got, want, "backing {backing} pages {lo}..{hi}");
        }
    }
    table.check_invariants(frames).unwrap();
    let mut seen = BTreeMap::new();
    table.for_each_present(
        GfnRange::new(Gfn::new(0), GFN_LIMIT).unwrap(),
        frames,
        |g, p| {
            seen.insert(g.raw(), p);
        },
    );
    assert_eq!(&seen, ptes);
    for (&g, p) in &seen {
        let slot = slots
            .find(Gfn::new(g))
            .expect("no table entry outside every slot");
        if slot.is_read_only() {
            assert!(!p.is_writable(), "writable entry in read-only slot");
        }
        if slot.logs_dirty() && p.is_dirty() {
            let offset = g - slot.gfns().start().raw();
            assert!(
                slot.dirty_bitmap().unwrap().is_set(offset),
                "dirty page {g} missing from the log"
            );
        }
    }
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
    fn memslots_match_model(ops in prop::collection::vec(op_strategy(), 1..40)) {
        let mut frames = ArenaTableFrames::new();
        let mut table = GpaTable::new(&mut frames).unwrap();
        let mut slots = Memslots::new();
        let mut model: Vec<SlotModel> = Vec::new();
        let mut ptes: BTreeMap<u64, GpaPte> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Insert(start, len, backing, offset, fl) => {
                    let range = GfnRange::new(Gfn::new(start), Gfn::new(start + len)).unwrap();
                    let clash = model.iter().find(|s| s.start < start + len && start < s.end);
                    let res = slots.insert(range, BackingId(backing), offset, flags_of(fl));
                    match clash {
                        Some(s) => prop_assert_eq!(res, Err(MemslotError::Overlap(s.id))),
                        None => {
                            let id = res.unwrap();
                            model.push(SlotModel { id, start, end: start + len, backing, offset, flags: flags_of(fl) });
                            model.sort_by_key(|s| s.start);
                        }
                    }
                }
                Op::InsertNearLimit(len) => {
                    let start = GFN_LIMIT.raw() - 4;
                    let range = GfnRange::new(Gfn::new(start), Gfn::new(start + len)).unwrap();
                    let res = slots.insert(range, BackingId(0), 0, SlotFlags::empty());
                    if len > 4 {
                        prop_assert_eq!(res, Err(MemslotError::BeyondReach));
                    } else if let Ok(id) = res {
                        // Fits exactly at the end of the reach; take it out again.
                        slots.remove(id).unwrap().1.apply(&mut table, &mut frames).defer();
                    }
                }
                Op::Remove(k) => {
                    if model.is_empty() { continue; }
                    let s = model.remove(k % model.len());
                    let (slot, up) = slots.remove(s.id).unwrap();
                    prop_assert_eq!(slot.gfns(), GfnRange::new(Gfn::new(s.start), Gfn::new(s.end)).unwrap());
                    up.apply(&mut table, &mut frames).defer();
                    ptes.retain(|&g, _| !(s.start..s.end).contains(&g));
                }
                Op::Move(k, new_start) => {
                    if model.is_empty() { continue; }
                    let i = k % model.len();
                    let s = model[i].clone();
                    let len = s.end - s.start;
                    let clash = model.iter().find(|o| o.id != s.id && o.start < new_start + len && new_start < o.end);
                    let res = slots.move_to(s.id, Gfn::new(new_start));
                    match clash {
                        Some(o) => prop_assert_eq!(res, Err(MemslotError::Overlap(o.id))),
                        None => {
                            res.unwrap().apply(&mut table, &mut frames).defer();
                            ptes.retain(|&g, _| !(s.start..s.end).contains(&g));
                            model[i].start = new_start;
                            model[i].end = new_start + len;
                            model.sort_by_key(|s| s.start);
                        }
                    }
                }
                Op::SetFlags(k, fl) => {
                    if model.is_empty() { continue; }
                    let i = k % model.len();
                    let old = model[i].flags;
                    let new = flags_of(fl);
                    let up = slots.set_flags(model[i].id, new).unwrap();
                    let log_on = new.contains(SlotFlags::LOG_DIRTY) && !old.contains(SlotFlags::LOG_DIRTY);
                    let ro_on = new.contains(SlotFlags::READ_ONLY) && !old.contains(SlotFlags::READ_ONLY);
                    prop_assert_eq!(up.needs_mkclean(), log_on);
                    prop_assert_eq!(up.needs_wrprotect(), ro_on);
                    prop_assert!(!up.needs_unmap());
                    up.apply(&mut table, &mut frames).defer();
                    let (a, b) = (model[i].start, model[i].end);
                    for (_, p) in ptes.range_mut(a..b) {
                        if ro_on { *p = p.wrprotect(); }
                        if log_on { *p = p.mkclean(); }
                    }
                    model[i].flags = new;
                }
                Op::Map(k, offset, write) => {
                    if model.is_empty() { continue; }
                    let s = &model[k % model.len()];
                    let g = s.start + offset % (s.end - s.start);
                    let ro = s.flags.contains(SlotFlags::READ_ONLY);
                    let mut p = GpaPte::present(Hfn::new(s.offset + (g - s.start) + 1), Cca::CACHED_NONCOHERENT)
                        .unwrap()
                        .mkyoung();
                    if !ro { p = p.mkwrite(); }
                    if write && !ro {
                        p = p.mkdirty();
                        prop_assert_eq!(slots.mark_dirty(Gfn::new(g)), s.flags.contains(SlotFlags::LOG_DIRTY));
                    }
                    table.set(Gfn::new(g), p, &mut frames).unwrap().defer();
                    ptes.insert(g, p);
                }
                Op::Harvest(k) => {
                    if model.is_empty() { continue; }
                    let s = &model[k % model.len()];
                    let res = slots.get_and_clear_dirty(s.id, &mut table, &mut frames);
                    if !s.flags.contains(SlotFlags::LOG_DIRTY) {
                        prop_assert_eq!(res.err(), Some(MemslotError::NotLogging(s.id)));
                        continue;
                    }
                    let (snap, flush) = res.unwrap();
                    flush.defer();
                    for g in snap.gfns() {
                        if let Some(p) = ptes.get_mut(&g.raw()) { *p = p.mkclean(); }
                    }
                    // Every page still dirty in the slot must have been reported.
                    for (&g, p) in ptes.range(s.start..s.end) {
                        prop_assert!(!p.is_dirty(), "dirty page {} not harvested", g);
                    }
                }
            }
            check(&slots, &model, &table, &frames, &ptes);
        }
        let _ = table.destroy(&mut frames).defer();
        prop_assert_eq!(frames.live_tables(), 0);
    }
}
