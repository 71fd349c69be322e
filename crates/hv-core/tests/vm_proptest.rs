//! Property test: random sequences of faults and host-side changes over random memslots,
//! against a plain reference model of backing pages, frames and guest entries.
//!
//! After every operation the VM and the model must agree on each guest frame's entry
//! (present, young, dirty, write-permitted, and which entries share a frame), every entry must
//! keep the V/D invariants, and the cross-layer invariants must hold (no entry names a frame
//! its page does not hold, so none names a freed frame). At the end every frame comes back.
#![cfg(not(loom))]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use hv_core::addr::{Gfn, Hfn};
use hv_core::fault::FaultError;
use hv_core::memslot::{BackingId, SlotFlags, SlotId};
use hv_core::pte::GpaPte;
use proptest::prelude::*;

const BACKINGS: usize = 2;
const BACKING_PAGES: u64 = 8;
const SLOT_BASES: [u64; 3] = [0x10, 0x40, 0x80];
/// A frame no slot ever covers.
const HOLE: u64 = 0x30;

#[derive(Debug, Clone)]
struct SlotSpec {
    backing: usize,
    backing_start: u64,
    npages: u64,
    flags: u32,
}

#[derive(Debug, Clone)]
enum Op {
    Fault {
        gfn: usize,
        write: bool,
    },
    SwapOut {
        backing: usize,
        page: u64,
    },
    Balloon {
        backing: usize,
        page: u64,
        len: u64,
    },
    Merge {
        from: (usize, u64),
        to: (usize, u64),
    },
    Age {
        backing: usize,
        page: u64,
        len: u64,
    },
    TestAge {
        backing: usize,
        page: u64,
    },
    HostWrite {
        backing: usize,
        page: u64,
        byte: u8,
    },
    DirtyLog {
        slot: usize,
    },
    SetFlags {
        slot: usize,
        flags: u32,
    },
}

fn flags_of(bits: u32) -> SlotFlags {
    SlotFlags::from_bits_truncate(bits & 3)
}

fn op() -> impl Strategy<Value = Op> {
    let b = 0..BACKINGS;
    let p = 0..BACKING_PAGES;
    prop_oneof![
        6 => (0..32usize, any::<bool>()).prop_map(|(gfn, write)| Op::Fault { gfn, write }),
        1 => (b.clone(), p.clone()).prop_map(|(backing, page)| Op::SwapOut { backing, page }),
        1 => (b.clone(), p.clone(), 1..4u64)
            .prop_map(|(backing, page, len)| Op::Balloon { backing, page, len }),
        3 => ((b.clone(), p.clone()), (b.clone(), p.clone()))
            .prop_map(|(from, to)| Op::Merge { from, to }),
        1 => (b.clone(), p.clone(), 1..8u64)
            .prop_map(|(backing, page, len)| Op::Age { backing, page, len }),
        1 => (b.clone(), p.clone()).prop_map(|(backing, page)| Op::TestAge { backing, page }),
        2 => (b.clone(), p.clone(), 0..2u8)
            .prop_map(|(backing, page, byte)| Op::HostWrite { backing, page, byte }),
        1 => (0..3usize).prop_map(|slot| Op::DirtyLog { slot }),
        1 => (0..3usize, 0..4u32).prop_map(|(slot, flags)| Op::SetFlags { slot, flags }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum MPage {
    Zero,
    Private(usize),
    Shared(usize),
    Swapped,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct MPte {
    frame: usize,
    young: bool,
    dirty: bool,
    writable: bool,
}

#[derive(Debug)]
struct MSlot {
    id: SlotId,
    gfn_start: u64,
    npages: u64,
    backing: usize,
    backing_start: u64,
    flags: SlotFlags,
    log: BTreeSet<u64>,
}

impl MSlot {
    fn ro(&self) -> bool {
        self.flags.contains(SlotFlags::READ_ONLY)
    }
    fn logs(&self) -> bool {
        self.flags.contains(SlotFlags::LOG_DIRTY)
    }
}

#[derive(Debug, Default)]
struct Model {
    pages: Vec<Vec<MPage>>,
    content: Vec<Vec<u8>>,
    next_frame: usize,
    slots: Vec<MSlot>,
    ptes: BTreeMap<u64, MPte>,
}

impl Model {
    fn new_frame(&mut self) -> usize {
        self.next_frame += 1;
        self.next_frame
    }

    fn slot_of(&self, gfn: u64) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.gfn_start <= gfn && gfn < s.gfn_start + s.npages)
    }

    fn gfns_of(&self, backing: usize, page: u64) -> Vec<(usize, u64)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.backing == backing && s.backing_start <= page && page < s.backing_start + s.npages
            })
            .map(|(i, s)| (i, s.gfn_start + page - s.backing_start))
            .collect()
    }

    fn frame_of(page: MPage) -> Option<usize> {
        match page {
            MPage::Private(f) | MPage::Shared(f) => Some(f),
            _ => None,
        }
    }

    fn set_entry(&mut self, backing: usize, page: u64, frame: usize, writable: bool, dirty: bool) {
        for (si, gfn) in self.gfns_of(backing, page) {
            let (ro, logs) = (self.slots[si].ro(), self.slots[si].logs());
            if let Some(pte) = self.ptes.get_mut(&gfn) {
                let old_dirty = pte.dirty;
                pte.frame = frame;
                pte.writable = writable && !ro;
                if dirty {
                    pte.dirty = true;
                }
                if logs && !old_dirty {
                    pte.dirty = false;
                }
            }
        }
    }

    /// Pages holding `frame` (the model has no other references).
    fn holders(&self, frame: usize) -> usize {
        self.pages
            .iter()
            .flatten()
            .filter(|&&p| Self::frame_of(p) == Some(frame))
            .count()
    }

    fn unmap_page(&mut self, backing: usize, page: u64) {
        for (_, gfn) in self.gfns_of(backing, page) {
            self.ptes.remove(&gfn);
        }
    }

    /// The host layer's resolve: returns (frame, private).
    fn resolve(&mut self, backing: usize, page: u64, write: bool) -> (usize, bool) {
        match self.pages[backing][page as usize] {
            MPage::Private(f) => (f, true),
            MPage::Shared(f) if !write => (f, false),
            MPage::Shared(f) if self.holders(f) == 1 => {
                // The last sharer takes the frame itself.
                self.set_entry(backing, page, f, true, true);
                self.pages[backing][page as usize] = MPage::Private(f);
                (f, true)
            }
            MPage::Shared(_) => {
                let copy = self.new_frame();
                self.set_entry(backing, page, copy, true, true);
                self.pages[backing][page as usize] = MPage::Private(copy);
                (copy, true)
            }
            MPage::Zero | MPage::Swapped => {
                let f = self.new_frame();
                self.pages[backing][page as usize] = MPage::Private(f);
                (f, true)
            }
        }
    }

    fn fault(&mut self, gfn: u64, write: bool) -> Result<(), FaultError> {
        let si = self.slot_of(gfn).ok_or(FaultError::NoMemslot)?;
        let logs = self.slots[si].logs();
        if let Some(pte) = self.ptes.get_mut(&gfn) {
            if !write || pte.writable {
                pte.young = true;
                if write {
                    pte.dirty = true;
                    if logs {
                        self.slots[si].log.insert(gfn);
                    }
                }
                return Ok(());
            }
        }
        let s = &self.slots[si];
        if write && s.ro() {
            return Err(FaultError::ReadOnlyWrite);
        }
        let (backing, page, ro) = (s.backing, s.backing_start + gfn - s.gfn_start, s.ro());
        let (frame, private) = self.resolve(backing, page, write);
        self.ptes.insert(
            gfn,
            MPte {
                frame,
                young: true,
                dirty: write,
                writable: private && !ro,
            },
        );
        if write && logs {
            self.slots[si].log.insert(gfn);
        }
        Ok(())
    }
}

fn universe() -> Vec<u64> {
    let mut v: Vec<u64> = SLOT_BASES
        .iter()
        .flat_map(|&b| b..b + BACKING_PAGES + 1)
        .collect();
    v.push(HOLE);
    v
}

fn compare(vm: &TestVm, model: &Model) -> Result<(), TestCaseError> {
    vm.check_invariants()
        .map_err(|e| TestCaseError::fail(format!("invariant: {e:?}")))?;
    let mut m2r: BTreeMap<usize, Hfn> = BTreeMap::new();
    let mut r2m: BTreeMap<Hfn, usize> = BTreeMap::new();
    for gfn in universe() {
        let real = vm.lookup(Gfn::new(gfn).checked_addr().unwrap());
        let want = model.ptes.get(&gfn);
        match (real, want) {
            (None, None) => {}
            (Some(r), Some(m)) => {
                prop_assert_eq!(r.check(), Ok(()), "V/D invariant at {:#x}", gfn);
                prop_assert_eq!(
                    (r.is_young(), r.is_dirty(), r.is_writable()),
                    (m.young, m.dirty, m.writable),
                    "flags at {:#x}",
                    gfn
                );
                let h = r.hfn().unwrap();
                prop_assert_eq!(*m2r.entry(m.frame).or_insert(h), h, "frame at {:#x}", gfn);
                prop_assert_eq!(
                    *r2m.entry(h).or_insert(m.frame),
                    m.frame,
                    "share {:#x}",
                    gfn
                );
            }
            (r, m) => prop_assert!(false, "gfn {:#x}: vm {:?} model {:?}", gfn, r, m),
        }
    }
    Ok(())
}

fn run(slots: Vec<SlotSpec>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let vm = test_vm(64);
    let mut model = Model::default();
    let backings: Vec<BackingId> = (0..BACKINGS)
        .map(|_| vm.host().create_backing(BACKING_PAGES).unwrap())
        .collect();
    model.pages = vec![vec![MPage::Zero; BACKING_PAGES as usize]; BACKINGS];
    model.content = vec![vec![0; BACKING_PAGES as usize]; BACKINGS];
    for (spec, &base) in slots.iter().zip(SLOT_BASES.iter()) {
        let npages = spec.npages.min(BACKING_PAGES - spec.backing_start);
        if npages == 0 {
            continue;
        }
        let flags = flags_of(spec.flags);
        let id = vm
            .add_memslot(
                range(base, npages),
                backings[spec.backing],
                spec.backing_start,
                flags,
            )
            .unwrap();
        model.slots.push(MSlot {
            id,
            gfn_start: base,
            npages,
            backing: spec.backing,
            backing_start: spec.backing_start,
            flags,
            log: BTreeSet::new(),
        });
    }
    let gfns = universe();
    for op in ops {
        match op {
            Op::Fault { gfn, write } => {
                let gfn = gfns[gfn % gfns.len()];
                let real = vm.map_page(Gfn::new(gfn).checked_addr().unwrap(), write);
                let want = model.fault(gfn, write);
                prop_assert_eq!(real.map(|_| ()), want, "fault {:#x} write={}", gfn, write);
                if let Ok((even, odd)) = real {
                    // The returned pair is what the table holds for both halves.
                    let even_gfn = Gfn::new(gfn).pair_base();
                    let odd_gfn = even_gfn.checked_add(1).unwrap();
                    let at = |g: Gfn| vm.lookup(g.checked_addr().unwrap()).unwrap_or(GpaPte::NONE);
                    prop_assert_eq!((even, odd), (at(even_gfn), at(odd_gfn)));
                }
            }
            Op::SwapOut { backing, page } => {
                let resident = Model::frame_of(model.pages[backing][page as usize]).is_some();
                prop_assert_eq!(vm.swap_out(backings[backing], page), Ok(resident));
                if resident {
                    model.unmap_page(backing, page);
                    model.pages[backing][page as usize] = MPage::Swapped;
                }
            }
            Op::Balloon { backing, page, len } => {
                let end = (page + len).min(BACKING_PAGES);
                vm.balloon(backings[backing], page..end).unwrap();
                for p in page..end {
                    model.unmap_page(backing, p);
                    model.pages[backing][p as usize] = MPage::Zero;
                    model.content[backing][p as usize] = 0;
                }
            }
            Op::Merge { from, to } => {
                let (fp, tp) = (
                    model.pages[from.0][from.1 as usize],
                    model.pages[to.0][to.1 as usize],
                );
                let want = match (Model::frame_of(fp), Model::frame_of(tp)) {
                    (Some(ff), Some(tf)) => {
                        from != to
                            && ff != tf
                            && model.content[from.0][from.1 as usize]
                                == model.content[to.0][to.1 as usize]
                    }
                    _ => false,
                };
                let real = vm.merge((backings[from.0], from.1), (backings[to.0], to.1));
                prop_assert_eq!(real, Ok(want), "merge {:?} -> {:?}", from, to);
                if let (Some(ff), Some(tf)) = (Model::frame_of(fp), Model::frame_of(tp)) {
                    if from != to && ff != tf {
                        // Both write-protected before the comparison, equal or not.
                        model.set_entry(to.0, to.1, tf, false, false);
                        model.set_entry(from.0, from.1, ff, false, false);
                    }
                }
                if want {
                    let tf = Model::frame_of(tp).unwrap();
                    model.set_entry(to.0, to.1, tf, false, false);
                    model.pages[to.0][to.1 as usize] = MPage::Shared(tf);
                    model.set_entry(from.0, from.1, tf, false, false);
                    model.pages[from.0][from.1 as usize] = MPage::Shared(tf);
                }
            }
            Op::Age { backing, page, len } => {
                let end = (page + len).min(BACKING_PAGES);
                let mut want = false;
                for p in page..end {
                    for (_, gfn) in model.gfns_of(backing, p) {
                        if let Some(pte) = model.ptes.get_mut(&gfn) {
                            want |= pte.young;
                            pte.young = false;
                        }
                    }
                }
                prop_assert_eq!(vm.age(backings[backing], page..end), Ok(want));
            }
            Op::TestAge { backing, page } => {
                let want = model
                    .gfns_of(backing, page)
                    .iter()
                    .any(|(_, g)| model.ptes.get(g).is_some_and(|p| p.young));
                prop_assert_eq!(vm.test_age(backings[backing], page), Ok(want));
            }
            Op::HostWrite {
                backing,
                page,
                byte,
            } => {
                vm.host_write(backings[backing], page, 0, &[byte]).unwrap();
                model.resolve(backing, page, true);
                model.content[backing][page as usize] = byte;
            }
            Op::DirtyLog { slot } => {
                let Some(s) = model.slots.get_mut(slot) else {
                    continue;
                };
                let real = vm.get_dirty_log(s.id);
                if s.logs() {
                    let got: BTreeSet<u64> = real.unwrap().gfns().map(|g| g.raw()).collect();
                    prop_assert_eq!(&got, &s.log);
                    for gfn in std::mem::take(&mut s.log) {
                        if let Some(pte) = model.ptes.get_mut(&gfn) {
                            pte.dirty = false;
                        }
                    }
                } else {
                    prop_assert!(real.is_err());
                }
            }
            Op::SetFlags { slot, flags } => {
                let Some(s) = model.slots.get_mut(slot) else {
                    continue;
                };
                let new = flags_of(flags);
                vm.set_memslot_flags(s.id, new).unwrap();
                let range = s.gfn_start..s.gfn_start + s.npages;
                let logging_on = new.contains(SlotFlags::LOG_DIRTY) && !s.logs();
                let ro_on = new.contains(SlotFlags::READ_ONLY) && !s.ro();
                if !new.contains(SlotFlags::LOG_DIRTY) || logging_on {
                    s.log.clear();
                }
                s.flags = new;
                for (_, pte) in model.ptes.range_mut(range) {
                    if logging_on {
                        pte.dirty = false;
                    }
                    if ro_on {
                        pte.writable = false;
                    }
                }
            }
        }
        compare(&vm, &model)?;
    }
    let (frames, pool) = vm.teardown();
    prop_assert_eq!(frames.live_tables(), 0);
    prop_assert_eq!(pool.allocated_count(), 0);
    Ok(())
}

fn slot_spec() -> impl Strategy<Value = SlotSpec> {
    (0..BACKINGS, 0..BACKING_PAGES, 1..=BACKING_PAGES, 0..4u32).prop_map(
        |(backing, backing_start, npages, flags)| SlotSpec {
            backing,
            backing_start,
            npages,
            flags,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn vm_matches_reference_model(
        slots in prop::collection::vec(slot_spec(), 1..=3),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        run(slots, ops)?;
    }
}
