//! Property test of the guest TLB and a vCPU's derived-translation set against a reference
//! model, with overlapping entries, TLB rewrites, guest accesses, invalidations and frame
//! reuse by another VM interleaved.
//!
//! The "host" here is a map of what the root TLB and refill cache may hold for the vCPU
//! (installs on access, removals only through the drops the set hands back, as the firmware
//! does). After every step:
//! - every host entry is recorded in the set with the GFN and HFN it was built from;
//! - every host entry's frame is still the one the memory core maps at that GFN (never a
//!   frame freed or handed to the other VM);
//! - every host entry agrees with what the guest's TLB translates *now*;
//! - the guest TLB answers as the reference model does (a write that would duplicate a
//!   match is a machine check and changes nothing).

use std::collections::HashMap;

use hv_core::addr::{Gfn, GfnRange, Gva, Hfn};
use hv_emul::abi::{self, GuestTranslation};
use hv_emul::cp0::{Cp0, Cp0Config, Cp0Reg, GuestMode};
use hv_emul::derived::{DerivedSet, DerivedSlot, DropPair, HostSpace, Source};
use hv_emul::guest_tlb::{Access, GuestTlb, TlbOpError};
use proptest::prelude::*;

const TLB_SIZE: usize = 8;
const SLOTS: usize = 8; // two sets of four ways: evictions happen
const GFNS: u64 = 24;

/// Pair bases the entries and accesses use: useg, the mapped kernel segment (two 16 KiB
/// pair groups, so 4 KiB and 16 KiB entries overlap), and the unmapped window.
const PAIRS: [u64; 7] = [
    0x0000_0000,
    0x0000_2000,
    0x0001_0000,
    0x6000_0000,
    0x6000_2000,
    0x6000_4000,
    0x6001_0000,
];

#[derive(Debug, Clone)]
enum Op {
    Write {
        random: bool,
        index: usize,
        pair: usize,
        big: bool,
        asid: u8,
        global: bool,
        lo: [(u64, bool, bool); 2],
    },
    Access {
        user: bool,
        va: u64,
        store: bool,
        buddy: bool,
    },
    Invalidate {
        start: u64,
        len: u64,
        remap: bool,
    },
    OtherVmAllocates(usize),
    SetAsid(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let lo = (0..GFNS, any::<bool>(), prop::bool::weighted(0.85));
    prop_oneof![
        3 => (
            any::<bool>(),
            0..TLB_SIZE,
            0..PAIRS.len(),
            prop::bool::weighted(0.25),
            0u8..2,
            prop::bool::weighted(0.2),
            [lo.clone(), lo],
        )
            .prop_map(|(random, index, pair, big, asid, global, lo)| Op::Write {
                random,
                index,
                pair,
                big,
                asid,
                global,
                lo,
            }),
        5 => (
            prop::bool::weighted(0.3),
            prop_oneof![
                (0..PAIRS.len(), 0u64..2).prop_map(|(p, h)| PAIRS[p] + h * 0x1000),
                (0..GFNS).prop_map(|g| 0x4000_0000 + g * 0x1000),
            ],
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(user, va, store, buddy)| Op::Access {
                user,
                va,
                store,
                buddy
            }),
        2 => (0..GFNS, 1u64..4, any::<bool>())
            .prop_map(|(start, len, remap)| Op::Invalidate { start, len, remap }),
        1 => (1usize..4).prop_map(Op::OtherVmAllocates),
        1 => (0u8..2).prop_map(Op::SetAsid),
    ]
}

/// The reference TLB: what the architecture says, written the plain way.
#[derive(Debug, Clone, Copy)]
struct RefEntry {
    base: u64,
    bytes: u64,
    asid: u8,
    global: bool,
    lo: [(u64, bool, bool); 2],
}

impl RefEntry {
    fn covers(&self, va: u64) -> bool {
        va >= self.base && va < self.base + self.bytes
    }
    fn clashes(&self, other: &RefEntry) -> bool {
        self.base < other.base + other.bytes
            && other.base < self.base + self.bytes
            && (self.global || other.global || self.asid == other.asid)
    }
    fn matches(&self, va: u64, asid: u8) -> bool {
        self.covers(va) && (self.global || self.asid == asid)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Hostile(Gfn),
    Other,
}

struct World {
    cp0: Cp0,
    tlb: GuestTlb,
    reference: [Option<RefEntry>; TLB_SIZE],
    wired: usize,
    asid: u8,
    set: DerivedSet<Vec<DerivedSlot>>,
    host: HashMap<(HostSpace, u64), Source>,
    mapped: HashMap<Gfn, Hfn>,
    owner: HashMap<Hfn, Owner>,
    free: Vec<Hfn>,
    next_hfn: u64,
}

impl World {
    fn new() -> Self {
        let cp0 = Cp0::new(Cp0Config {
            tlb_entries: TLB_SIZE,
            ..Cp0Config::default()
        })
        .unwrap();
        let tlb = GuestTlb::new(&cp0);
        World {
            cp0,
            tlb,
            reference: [None; TLB_SIZE],
            wired: 2,
            asid: 0,
            set: DerivedSet::new(vec![DerivedSlot::EMPTY; SLOTS]).unwrap(),
            host: HashMap::new(),
            mapped: HashMap::new(),
            owner: HashMap::new(),
            free: Vec::new(),
            next_hfn: 1000,
        }
    }

    fn alloc(&mut self, owner: Owner) -> Hfn {
        let hfn = self.free.pop().unwrap_or_else(|| {
            self.next_hfn += 1;
            Hfn::new(self.next_hfn)
        });
        self.owner.insert(hfn, owner);
        hfn
    }

    fn host_drop(host: &mut HashMap<(HostSpace, u64), Source>, d: DropPair) {
        for half in 0..2 {
            if d.halves[half] {
                host.remove(&(d.space, d.pair_va + half as u64 * 0x1000));
            }
        }
    }

    fn mode(space: HostSpace) -> GuestMode {
        match space {
            HostSpace::Kernel => GuestMode::Kernel,
            HostSpace::User => GuestMode::User,
        }
    }

    fn translate(&self, va: u64, mode: GuestMode, access: Access) -> Option<GuestTranslation> {
        abi::translate_access(Gva::new(va), mode, self.asid, &self.tlb, access).ok()
    }

    /// The reference translation's guest frame and writability.
    fn reference_translate(&self, va: u64, mode: GuestMode) -> Option<(Gfn, bool)> {
        match abi::classify(Gva::new(va), mode) {
            abi::Segment::KernelUnmapped(gpa) => Some((gpa.frame(), true)),
            abi::Segment::Forbidden => None,
            _ => {
                let e = self
                    .reference
                    .iter()
                    .flatten()
                    .find(|e| e.matches(va, self.asid))?;
                let half_bytes = e.bytes / 2;
                let half = usize::from(va - e.base >= half_bytes);
                let (pfn, d, v) = e.lo[half];
                if !v {
                    return None;
                }
                let frame_base = (pfn << 12) & !(half_bytes - 1);
                let gpa = frame_base | ((va - e.base) & (half_bytes - 1));
                Some((Gfn::new(gpa >> 12), d))
            }
        }
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Write {
                random,
                index,
                pair,
                big,
                asid,
                global,
                lo,
            } => self.write(random, index, pair, big, asid, global, lo),
            Op::Access {
                user,
                va,
                store,
                buddy,
            } => self.access(user, va, store, buddy),
            Op::Invalidate { start, len, remap } => {
                let range = GfnRange::from_start_len(Gfn::new(start), len).unwrap();
                // The memory core clears the GPA entries and flushes (the drops), and only
                // then frees the frames or maps the new ones.
                let host = &mut self.host;
                let _ = self.set.drop_gfns(&range, |d| Self::host_drop(host, d));
                for g in start..start + len {
                    if let Some(hfn) = self.mapped.remove(&Gfn::new(g)) {
                        self.owner.remove(&hfn);
                        self.free.push(hfn);
                        if remap {
                            let new = self.alloc(Owner::Hostile(Gfn::new(g)));
                            self.mapped.insert(Gfn::new(g), new);
                        }
                    }
                }
            }
            Op::OtherVmAllocates(n) => {
                for _ in 0..n {
                    let _ = self.alloc(Owner::Other);
                }
            }
            Op::SetAsid(asid) => {
                if asid != self.asid {
                    // The firmware takes fresh host ASIDs: the old entries are dead.
                    self.asid = asid;
                    let _ = self.cp0.dmtc0(Cp0Reg::ENTRY_HI, u64::from(asid));
                    self.set.clear();
                    self.host.clear();
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        random: bool,
        index: usize,
        pair: usize,
        big: bool,
        asid: u8,
        global: bool,
        lo: [(u64, bool, bool); 2],
    ) {
        let (mask, bytes) = if big { (0x6000, 0x8000) } else { (0, 0x2000) };
        let base = PAIRS[pair] & !(bytes - 1);
        let entry_lo = |(pfn, d, v): (u64, bool, bool)| {
            pfn << 6 | 3 << 3 | u64::from(d) << 2 | u64::from(v) << 1 | u64::from(global)
        };
        let _ = self.cp0.mtc0(Cp0Reg::WIRED, self.wired as u64);
        let _ = self.cp0.mtc0(Cp0Reg::PAGE_MASK, mask);
        let _ = self
            .cp0
            .dmtc0(Cp0Reg::ENTRY_HI, PAIRS[pair] | u64::from(asid));
        let _ = self.cp0.dmtc0(Cp0Reg::ENTRY_LO0, entry_lo(lo[0]));
        let _ = self.cp0.dmtc0(Cp0Reg::ENTRY_LO1, entry_lo(lo[1]));
        let target = if random {
            let r = self.cp0.get(Cp0Reg::RANDOM) as usize;
            if r < self.wired || r >= TLB_SIZE {
                TLB_SIZE - 1
            } else {
                r
            }
        } else {
            let _ = self.cp0.mtc0(Cp0Reg::INDEX, index as u64);
            index
        };
        let new = RefEntry {
            base,
            bytes,
            asid,
            global,
            lo,
        };
        let conflict = (0..TLB_SIZE)
            .find(|&i| i != target && self.reference[i].is_some_and(|e| e.clashes(&new)));
        let result = if random {
            self.tlb.write_random(&mut self.cp0)
        } else {
            self.tlb.write_indexed(&self.cp0)
        };
        match (result, conflict) {
            (Ok(w), None) => {
                assert_eq!(w.index, target);
                self.reference[target] = Some(new);
                // Both the replaced entry's range and the new one's.
                for (start, end) in w.changed_ranges().into_iter().flatten() {
                    let host = &mut self.host;
                    let _ = self
                        .set
                        .drop_va_range(start, end, |d| Self::host_drop(host, d));
                }
            }
            (Err(TlbOpError::MachineCheck { index, conflict: c }), Some(expected)) => {
                assert_eq!(index, target);
                assert!(
                    self.reference[c].is_some_and(|e| e.clashes(&new)),
                    "conflict {c} named, {expected} expected"
                );
            }
            (other, expected) => {
                panic!("TLB write gave {other:?}, reference conflict {expected:?}")
            }
        }
    }

    fn access(&mut self, user: bool, va: u64, store: bool, buddy: bool) {
        let (mode, space) = if user {
            (GuestMode::User, HostSpace::User)
        } else {
            (GuestMode::Kernel, HostSpace::Kernel)
        };
        let access = if store { Access::Store } else { Access::Load };
        let got = self.translate(va, mode, access);
        let want = self
            .reference_translate(va, mode)
            .filter(|&(_, writable)| writable || !store);
        assert_eq!(
            got.map(|t| t.gpa.frame()),
            want.map(|(g, _)| g),
            "guest translation of {va:#x}"
        );
        let page = va & !0xfff;
        // An access the host already has an entry for never reaches the memory core: the
        // checks after each step cover what it would reach.
        if self.host.contains_key(&(space, page)) {
            return;
        }
        let mut pages = vec![(page, got)];
        if buddy {
            pages.push((
                page ^ 0x1000,
                self.translate(page ^ 0x1000, mode, Access::Load),
            ));
        }
        for (page, translation) in pages {
            let Some(t) = translation else { continue };
            let gfn = t.gpa.frame();
            let hfn = match self.mapped.get(&gfn) {
                Some(&hfn) => hfn,
                None => {
                    let hfn = self.alloc(Owner::Hostile(gfn));
                    self.mapped.insert(gfn, hfn);
                    hfn
                }
            };
            let source = Source { gfn, hfn };
            if let Some(evicted) = self.set.record(space, page, source) {
                Self::host_drop(&mut self.host, evicted);
            }
            self.host.insert((space, page), source);
        }
    }

    fn check(&self) {
        for (&(space, page), &source) in &self.host {
            assert_eq!(
                self.set.get(space, page),
                Some(source),
                "host entry {space:?} {page:#x} not tracked"
            );
            assert_eq!(
                self.mapped.get(&source.gfn),
                Some(&source.hfn),
                "host entry {space:?} {page:#x} reaches a frame no longer mapped at its GFN"
            );
            assert_eq!(
                self.owner.get(&source.hfn),
                Some(&Owner::Hostile(source.gfn)),
                "host entry {space:?} {page:#x} reaches a frame it does not own"
            );
            let now = self
                .translate(page, Self::mode(space), Access::Load)
                .map(|t| t.gpa.frame());
            assert_eq!(
                now,
                Some(source.gfn),
                "host entry {space:?} {page:#x} disagrees with the guest TLB"
            );
        }
        assert!(self.set.pairs() <= SLOTS);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn derived_entries_never_outlive_what_they_were_built_from(
        ops in prop::collection::vec(op(), 1..120)
    ) {
        let mut world = World::new();
        for op in &ops {
            world.step(op);
            world.check();
        }
    }
}

/// The hole of issue 11, step by step: a guest entry shadowed by a later write, a page
/// taken away, the frame reused. The host entry built from the first entry must be gone.
#[test]
fn shadowing_write_then_balloon_leaves_no_stale_entry() {
    let mut w = World::new();
    // Entry 5 maps 0x6000_0000 -> GFN 3; the guest touches it.
    w.step(&Op::Write {
        random: false,
        index: 5,
        pair: 3,
        big: false,
        asid: 0,
        global: false,
        lo: [(3, true, true), (4, true, true)],
    });
    w.step(&Op::Access {
        user: false,
        va: 0x6000_0000,
        store: true,
        buddy: false,
    });
    assert!(w.host.contains_key(&(HostSpace::Kernel, 0x6000_0000)));
    // Entry 2 for the same page: a machine check, nothing written, nothing dropped.
    w.step(&Op::Write {
        random: false,
        index: 2,
        pair: 3,
        big: false,
        asid: 0,
        global: false,
        lo: [(7, true, true), (8, true, true)],
    });
    w.check();
    assert!(w.tlb.entry(2).is_some_and(|e| !e.present));
    // A 16 KiB entry over the same range: refused as well.
    w.step(&Op::Write {
        random: false,
        index: 1,
        pair: 3,
        big: true,
        asid: 1,
        global: true,
        lo: [(8, true, true), (12, true, true)],
    });
    assert!(w.tlb.entry(1).is_some_and(|e| !e.present));
    // Balloon GFN 3 and let the other VM take the frame: the host entry went with it.
    w.step(&Op::Invalidate {
        start: 3,
        len: 1,
        remap: false,
    });
    w.step(&Op::OtherVmAllocates(1));
    w.check();
    assert!(!w.host.contains_key(&(HostSpace::Kernel, 0x6000_0000)));
}
