//! The memory side of the virtio-balloon: [`BalloonHooks`] over a VM's memory core.
//!
//! hv-devices' [`VirtioBalloon`] parses the queues; [`VmBalloon`] decides what a PFN means.
//! An inflated page is given back through [`Vm::balloon`], which unmaps it through the
//! notifier and returns its frame to the host pool; a deflated (or simply re-touched) page
//! comes back zero-filled through the fault slow path. Free page reports drop the frames of
//! the reported range the same way, without counting the pages as inflated.
//!
//! What the balloon saves is [`VmBalloon::frames_out`]: frames it actually gave back to the
//! pool (a page that held a private frame; a shared frame stays with its other sharers, a
//! swapped-out or never-touched page held none) whose pages have not taken memory again.
//!
//! Inside an inflate chain (between [`BalloonHooks::chain_start`] and
//! [`BalloonHooks::chain_end`]) accepted pages are gathered into runs of consecutive backing
//! pages and given back one run at a time: one notifier invalidation and one remote flush
//! per run instead of per page. Outside a chain every call takes effect at once.
//!
//! The guest driver is untrusted: a PFN outside the VM's writable RAM, a page inflated twice
//! or deflated while not inflated, and a report that is unaligned or not RAM are refused,
//! counted and recorded in a short event log that the firmware drains and prints. Malformed
//! chains are counted by the device and reach the log through
//! [`BalloonHooks::chain_rejected`].

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::Cell;
use core::fmt;

use hv_core::addr::{Gfn, GfnRange, Gpa};
use hv_core::fault::Vm;
use hv_core::frame_pool::FrameMemory;
use hv_core::host_mem::PageState;
use hv_core::memslot::BackingId;
use hv_core::shootdown::RemoteFlush;
use hv_core::table_frames::TableFrames;
use hv_devices::irq::IrqLine;
use hv_devices::virtio_balloon::{BalloonHooks, PageRefused, QueueRole, VirtioBalloon};
use hv_devices::virtio_mmio::VirtioMmio;
use hv_devices::virtqueue::GuestMemory;

/// Event records kept until drained; older ones are dropped (and counted) beyond this.
pub const EVENT_LOG_LEN: usize = 32;
/// Largest free page report accepted in one buffer (4 MiB, Linux reports at most 2 MiB
/// blocks with 4 KiB pages).
pub const MAX_REPORT_BYTES: u32 = 4 << 20;

/// Why an operator or configuration request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalloonError {
    /// The target is larger than the VM's balloonable RAM.
    TargetTooLarge {
        /// Requested target, in 4 KiB pages.
        requested: u64,
        /// Balloonable RAM, in 4 KiB pages.
        ram_pages: u64,
    },
}

impl fmt::Display for BalloonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BalloonError::TargetTooLarge {
                requested,
                ram_pages,
            } => write!(
                f,
                "balloon target of {requested} pages exceeds the VM's {ram_pages} pages of RAM"
            ),
        }
    }
}

/// What a log record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalloonEventKind {
    /// An inflate PFN was refused.
    InflateRefused(PageRefused),
    /// The memory core refused to give back an accepted run of this many pages (a memslot
    /// removed meanwhile); the pages stay with the guest.
    GiveBackFailed(u64),
    /// A deflate PFN was refused.
    DeflateRefused(PageRefused),
    /// A free page report was refused.
    ReportRefused(PageRefused),
    /// A malformed chain went back unused.
    BadChain(QueueRole),
}

impl BalloonEventKind {
    /// Whether this records driver input the policy refused (rather than a failure of the
    /// host's own memory change).
    pub fn is_refused_input(self) -> bool {
        !matches!(self, Self::GiveBackFailed(_))
    }
}

/// One log record: what happened and the guest address concerned (0 for a bad chain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalloonEvent {
    /// What happened.
    pub kind: BalloonEventKind,
    /// The guest physical address concerned.
    pub gpa: Gpa,
}

fn reason(r: PageRefused) -> &'static str {
    match r {
        PageRefused::OutOfRange => "not RAM of this VM",
        PageRefused::Duplicate => "already in that state",
        PageRefused::NotAllowed => "not allowed",
    }
}

impl fmt::Display for BalloonEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            BalloonEventKind::InflateRefused(r) => {
                write!(f, "balloon: refused inflate of {}: {}", self.gpa, reason(r))
            }
            BalloonEventKind::DeflateRefused(r) => {
                write!(f, "balloon: refused deflate of {}: {}", self.gpa, reason(r))
            }
            BalloonEventKind::ReportRefused(r) => {
                write!(
                    f,
                    "balloon: refused free report at {}: {}",
                    self.gpa,
                    reason(r)
                )
            }
            BalloonEventKind::GiveBackFailed(pages) => {
                write!(
                    f,
                    "balloon: could not give back {pages} pages from {}: memory changed",
                    self.gpa
                )
            }
            BalloonEventKind::BadChain(role) => {
                write!(
                    f,
                    "balloon: malformed chain on the {role:?} queue returned unused"
                )
            }
        }
    }
}

/// Counters of the memory side (the device counts chains and PFNs in `BalloonStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalloonCounters {
    /// Pages currently inflated.
    pub inflated_now: u64,
    /// Frames given back to the host pool by inflation and reports (private frames only;
    /// a shared frame stays with its other sharers).
    pub frames_returned: u64,
    /// Pages dropped by free page reports.
    pub reported_pages: u64,
    /// Refused PFNs: not RAM of this VM.
    pub refused_out_of_range: u64,
    /// Refused PFNs: already inflated, or deflated while not inflated.
    pub refused_duplicate: u64,
    /// Refused PFNs: read-only memory, unaligned reports.
    pub refused_not_allowed: u64,
    /// Malformed chains reported by the device.
    pub bad_chains: u64,
    /// Batched runs of an inflate chain given back (one notifier invalidation each).
    pub runs_given_back: u64,
    /// Log records dropped because the log was full.
    pub events_dropped: u64,
}

/// Accepted inflations not given back yet: consecutive backing pages, consecutive frames.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    backing: BackingId,
    pages: core::ops::Range<u64>,
    first_gfn: u64,
}

impl Run {
    /// Extends the run by `(backing, page)` at `gfn` if that is adjacent at either end.
    fn extend(&mut self, backing: BackingId, page: u64, gfn: u64) -> bool {
        let len = self.pages.end - self.pages.start;
        if backing != self.backing {
            return false;
        }
        if page == self.pages.end && gfn == self.first_gfn + len {
            self.pages.end += 1;
            true
        } else if page + 1 == self.pages.start && gfn + 1 == self.first_gfn {
            self.pages.start -= 1;
            self.first_gfn -= 1;
            true
        } else {
            false
        }
    }
}

/// A set of page numbers: one bit per number from 0 up to the highest one added so far.
///
/// It holds the inflated guest frames and, per backing, the backing pages whose frames were
/// given back. Only frames of writable RAM (the hooks check the memslot first) and pages of
/// its backing are ever added, so a bitmap is at most the VM's top RAM address / 32 Ki bytes
/// (32 KiB for RAM up to 1 GiB); an ordered set cost a node allocation every few pages, the
/// larger part of an inflate.
#[derive(Debug, Default)]
struct PageBits {
    words: Vec<u64>,
}

impl PageBits {
    fn contains(&self, gfn: u64) -> bool {
        usize::try_from(gfn / 64)
            .ok()
            .and_then(|i| self.words.get(i))
            .is_some_and(|w| w & (1 << (gfn % 64)) != 0)
    }

    /// Adds `gfn` (a frame of writable RAM, see above).
    fn insert(&mut self, gfn: u64) {
        let Ok(i) = usize::try_from(gfn / 64) else {
            panic!("GFN {gfn:#x} of guest RAM beyond the address space");
        };
        if i >= self.words.len() {
            self.words.resize(i + 1, 0);
        }
        self.words[i] |= 1 << (gfn % 64);
    }

    /// Removes `gfn`; returns whether it was there.
    fn remove(&mut self, gfn: u64) -> bool {
        let was = self.contains(gfn);
        if was {
            self.words[(gfn / 64) as usize] &= !(1 << (gfn % 64));
        }
        was
    }

    /// Keeps only the numbers for which `keep` holds; returns how many are left.
    fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) -> u64 {
        let mut left = 0;
        for (i, word) in self.words.iter_mut().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let bit = bits.trailing_zeros();
                bits &= bits - 1;
                if !keep(i as u64 * 64 + u64::from(bit)) {
                    *word &= !(1 << bit);
                }
            }
            left += u64::from(word.count_ones());
        }
        left
    }
}

/// The writable memslot [`VmBalloon`] found last, and the VM's notifier sequence number read
/// before it looked. Every change to an existing memslot (removal, move, flags) bumps that
/// number under the MMU lock, so while it reads the same the memo translates exactly as the
/// slot would; the PFNs of a chain then skip the lock and the slot search.
#[derive(Debug, Clone, Copy)]
struct SlotMemo {
    seq: u64,
    gfns: GfnRange,
    backing: BackingId,
    backing_start: u64,
}

impl SlotMemo {
    /// `gfn`'s backing page, if the memo is still valid at sequence `seq` and covers `gfn`.
    fn backing_page(&self, seq: u64, gfn: Gfn) -> Option<(BackingId, u64)> {
        if seq != self.seq || !self.gfns.contains(gfn) {
            return None;
        }
        let offset = gfn.checked_distance_from(self.gfns.start())?;
        Some((self.backing, self.backing_start + offset))
    }
}

/// The balloon's memory policy for one VM ([`BalloonHooks`] for [`VirtioBalloon`]).
pub struct VmBalloon<T, M, R> {
    vm: Arc<Vm<T, M, R>>,
    inflated: PageBits,
    /// Per backing, the pages whose private frame the balloon gave back (inflation or a
    /// free page report), until they hold memory again (see [`Self::frames_out`]).
    returned: Vec<(BackingId, PageBits)>,
    slot_memo: Cell<Option<SlotMemo>>,
    /// Inside an inflate chain: accepted pages are batched into `run`.
    batching: bool,
    run: Option<Run>,
    counters: BalloonCounters,
    events: VecDeque<BalloonEvent>,
    guest_stats: Vec<(u16, u64)>,
}

impl<T, M, R> fmt::Debug for VmBalloon<T, M, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmBalloon")
            .field("counters", &self.counters)
            .finish()
    }
}

impl<T: TableFrames, M: FrameMemory, R: RemoteFlush> VmBalloon<T, M, R> {
    /// The balloon policy of `vm`, with nothing inflated.
    pub fn new(vm: Arc<Vm<T, M, R>>) -> Self {
        Self {
            vm,
            inflated: PageBits::default(),
            returned: Vec::new(),
            slot_memo: Cell::new(None),
            batching: false,
            run: None,
            counters: BalloonCounters::default(),
            events: VecDeque::new(),
            guest_stats: Vec::new(),
        }
    }

    /// The VM.
    pub fn vm(&self) -> &Arc<Vm<T, M, R>> {
        &self.vm
    }

    /// The counters.
    pub fn counters(&self) -> BalloonCounters {
        self.counters
    }

    /// Frames the balloon gave back to the pool that are still out: pages that held a
    /// private frame when inflated or reported and have held no memory since (a deflated
    /// page counts until the guest touches it again). Forgets the pages that took memory.
    pub fn frames_out(&mut self) -> u64 {
        let host = self.vm.host().lock();
        self.returned
            .iter_mut()
            .map(|(backing, pages)| {
                pages.retain(|p| matches!(host.page(*backing, p), Ok(PageState::Ballooned)))
            })
            .sum()
    }

    /// Whether guest frame `gfn` is inflated.
    pub fn is_inflated(&self, gfn: Gfn) -> bool {
        self.inflated.contains(gfn.raw())
    }

    /// The latest statistics the guest sent (tag, value).
    pub fn guest_stats(&self) -> &[(u16, u64)] {
        &self.guest_stats
    }

    /// Takes the log records gathered since the last call, oldest first.
    pub fn drain_events(&mut self) -> impl Iterator<Item = BalloonEvent> + '_ {
        self.events.drain(..)
    }

    /// Pages of writable RAM the balloon may take (4 KiB units).
    pub fn ram_pages(&self) -> u64 {
        self.vm.with_mmu(|st| {
            st.slots
                .iter()
                .filter(|s| !s.is_read_only())
                .map(|s| s.gfns().npages())
                .sum()
        })
    }

    /// Checks an operator or configuration target (4 KiB pages) against the VM's RAM.
    pub fn check_target(&self, pages: u64) -> Result<u32, BalloonError> {
        let ram_pages = self.ram_pages();
        match u32::try_from(pages) {
            Ok(p) if pages <= ram_pages => Ok(p),
            _ => Err(BalloonError::TargetTooLarge {
                requested: pages,
                ram_pages,
            }),
        }
    }

    fn log(&mut self, kind: BalloonEventKind, gpa: Gpa) {
        if self.events.len() == EVENT_LOG_LEN {
            self.events.pop_front();
            self.counters.events_dropped += 1;
        }
        self.events.push_back(BalloonEvent { kind, gpa });
    }

    fn count_refusal(&mut self, r: PageRefused) {
        let c = &mut self.counters;
        match r {
            PageRefused::OutOfRange => c.refused_out_of_range += 1,
            PageRefused::Duplicate => c.refused_duplicate += 1,
            PageRefused::NotAllowed => c.refused_not_allowed += 1,
        }
    }

    fn refuse(
        &mut self,
        r: PageRefused,
        kind: fn(PageRefused) -> BalloonEventKind,
        gpa: Gpa,
    ) -> PageRefused {
        self.count_refusal(r);
        self.log(kind(r), gpa);
        r
    }

    /// The backing page of writable RAM at `gfn`.
    fn backing_page(&self, gfn: Gfn) -> Result<(BackingId, u64), PageRefused> {
        let seq = self.vm.notifier_seq().current();
        if let Some(page) = self.slot_memo.get().and_then(|m| m.backing_page(seq, gfn)) {
            return Ok(page);
        }
        self.vm.with_mmu(|st| {
            let slot = st.slots.find(gfn).ok_or(PageRefused::OutOfRange)?;
            if slot.is_read_only() {
                return Err(PageRefused::NotAllowed);
            }
            let page = slot.backing_page_of(gfn).ok_or(PageRefused::OutOfRange)?;
            self.slot_memo.set(Some(SlotMemo {
                seq,
                gfns: slot.gfns(),
                backing: slot.backing(),
                backing_start: slot.backing_pages().start,
            }));
            Ok((slot.backing(), page))
        })
    }

    /// Drops the frames of backing pages; `Err` only if the core refuses (never for pages
    /// found through a memslot, barring a concurrent slot removal). The pages holding a
    /// private frame are noted as returned (their frames go back to the pool; a change
    /// racing between this look and the drop can make the note off by a page).
    fn give_back(&mut self, backing: BackingId, pages: core::ops::Range<u64>) -> bool {
        let i = match self.returned.iter().position(|(b, _)| *b == backing) {
            Some(i) => i,
            None => {
                self.returned.push((backing, PageBits::default()));
                self.returned.len() - 1
            }
        };
        let mut freed = 0;
        {
            let host = self.vm.host().lock();
            let noted = &mut self.returned[i].1;
            for p in pages.clone() {
                match host.page(backing, p) {
                    Ok(PageState::Private(_)) => {
                        noted.insert(p);
                        freed += 1;
                    }
                    // Given back before and still out: it stays noted.
                    Ok(PageState::Ballooned) => {}
                    // Holds no frame of its own: whatever was noted is out of date.
                    _ => {
                        noted.remove(p);
                    }
                }
            }
        }
        if self.vm.balloon(backing, pages.clone()).is_err() {
            // Nothing was dropped: the pages noted above still hold their frames.
            let host = self.vm.host().lock();
            let noted = &mut self.returned[i].1;
            for p in pages {
                if matches!(host.page(backing, p), Ok(PageState::Private(_))) {
                    noted.remove(p);
                }
            }
            return false;
        }
        self.counters.frames_returned += freed;
        true
    }

    fn inflate_page(&mut self, gfn: Gfn) -> Result<(), PageRefused> {
        let (backing, page) = self.backing_page(gfn)?;
        if self.inflated.contains(gfn.raw()) {
            return Err(PageRefused::Duplicate);
        }
        if self.batching {
            let extended = self
                .run
                .as_mut()
                .is_some_and(|run| run.extend(backing, page, gfn.raw()));
            if !extended {
                self.flush_run();
                self.run = Some(Run {
                    backing,
                    pages: page..page + 1,
                    first_gfn: gfn.raw(),
                });
            }
        } else if !self.give_back(backing, page..page + 1) {
            return Err(PageRefused::OutOfRange);
        }
        self.inflated.insert(gfn.raw());
        self.counters.inflated_now += 1;
        Ok(())
    }

    /// Gives back the batched run, if any. Should the memory core refuse it (a memslot
    /// removed since the pages were checked), the pages are not inflated after all: they
    /// leave the balloon's set and the failure is logged.
    fn flush_run(&mut self) {
        let Some(run) = self.run.take() else {
            return;
        };
        let len = run.pages.end - run.pages.start;
        if self.give_back(run.backing, run.pages.clone()) {
            self.counters.runs_given_back += 1;
            return;
        }
        for gfn in run.first_gfn..run.first_gfn + len {
            self.inflated.remove(gfn);
        }
        self.counters.inflated_now -= len;
        self.log(
            BalloonEventKind::GiveBackFailed(len),
            gpa_of(Gfn::new(run.first_gfn)),
        );
    }

    fn deflate_page(&mut self, gfn: Gfn) -> Result<(), PageRefused> {
        self.flush_run();
        self.backing_page(gfn)?;
        if !self.inflated.remove(gfn.raw()) {
            return Err(PageRefused::Duplicate);
        }
        // Nothing to map: the next touch zero-fills through the fault slow path.
        self.counters.inflated_now -= 1;
        Ok(())
    }

    fn report_range(&mut self, gpa: Gpa, len: u32) -> Result<(), PageRefused> {
        self.flush_run();
        if len == 0 || len > MAX_REPORT_BYTES {
            return Err(PageRefused::NotAllowed);
        }
        let range =
            GfnRange::from_gpa_len(gpa, u64::from(len)).map_err(|_| PageRefused::NotAllowed)?;
        let (backing, first) = self.backing_page(range.start())?;
        let last_gfn = range.end().checked_sub(1).ok_or(PageRefused::OutOfRange)?;
        // The whole range must be one slot's contiguous backing pages.
        match self.backing_page(last_gfn)? {
            (b, last) if b == backing && last == first + range.npages() - 1 => {}
            _ => return Err(PageRefused::OutOfRange),
        }
        if !self.give_back(backing, first..first + range.npages()) {
            return Err(PageRefused::OutOfRange);
        }
        self.counters.reported_pages += range.npages();
        Ok(())
    }
}

fn gpa_of(gfn: Gfn) -> Gpa {
    gfn.checked_addr().unwrap_or(Gpa::new(u64::MAX))
}

impl<T: TableFrames, M: FrameMemory, R: RemoteFlush> BalloonHooks for VmBalloon<T, M, R> {
    fn inflate(&mut self, gfn: Gfn) -> Result<(), PageRefused> {
        self.inflate_page(gfn)
            .map_err(|r| self.refuse(r, BalloonEventKind::InflateRefused, gpa_of(gfn)))
    }

    fn deflate(&mut self, gfn: Gfn) -> Result<(), PageRefused> {
        self.deflate_page(gfn)
            .map_err(|r| self.refuse(r, BalloonEventKind::DeflateRefused, gpa_of(gfn)))
    }

    fn report_free(&mut self, gpa: Gpa, len: u32) -> Result<(), PageRefused> {
        self.report_range(gpa, len)
            .map_err(|r| self.refuse(r, BalloonEventKind::ReportRefused, gpa))
    }

    fn stats(&mut self, entries: &[(u16, u64)]) {
        self.guest_stats.clear();
        self.guest_stats.extend_from_slice(entries);
    }

    fn chain_rejected(&mut self, role: QueueRole) {
        self.counters.bad_chains += 1;
        self.log(BalloonEventKind::BadChain(role), Gpa::new(0));
    }

    fn chain_start(&mut self, role: QueueRole) {
        self.flush_run();
        self.batching = role == QueueRole::Inflate;
    }

    fn chain_end(&mut self, _role: QueueRole) {
        self.flush_run();
        self.batching = false;
    }
}

/// Sets a balloon's target (operator console or configuration), in 4 KiB pages, after
/// checking it against the VM's RAM, and tells the driver (configuration change interrupt).
pub fn set_target<T, M, R, G, I>(
    dev: &mut VirtioMmio<VirtioBalloon<VmBalloon<T, M, R>>, G, I>,
    pages: u64,
) -> Result<(), BalloonError>
where
    T: TableFrames,
    M: FrameMemory,
    R: RemoteFlush,
    G: GuestMemory,
    I: IrqLine,
{
    let pages = dev.backend().hooks().check_target(pages)?;
    dev.backend_mut().set_target_pages(pages);
    dev.config_changed();
    Ok(())
}

/// [`set_target`] in MiB, the console's unit.
pub fn set_target_mib<T, M, R, G, I>(
    dev: &mut VirtioMmio<VirtioBalloon<VmBalloon<T, M, R>>, G, I>,
    mib: u64,
) -> Result<(), BalloonError>
where
    T: TableFrames,
    M: FrameMemory,
    R: RemoteFlush,
    G: GuestMemory,
    I: IrqLine,
{
    set_target(dev, mib.saturating_mul(256))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testvm::{self, gpa, guest_fill, guest_read, TestVm, RAM_GFN};
    use hv_core::memslot::SlotFlags;
    use hv_devices::bus::MmioDevice;
    use hv_devices::irq::LatchedLine;
    use hv_devices::test_driver::{bring_up, desc, kick};
    use hv_devices::virtio_balloon::{config, F_DEFLATE_ON_OOM, F_REPORTING, MAX_PFNS_PER_CHAIN};
    use hv_devices::virtio_mmio::regs;
    use hv_devices::virtqueue::{VecMemory, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
    use hv_devices::Width;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::thread;

    type Hooks = VmBalloon<
        hv_core::table_frames::ArenaTableFrames,
        hv_core::frame_pool::VecFrameMemory,
        testvm::NoRemote,
    >;
    type Dev = VirtioMmio<VirtioBalloon<Hooks>, VecMemory, LatchedLine>;

    #[test]
    fn a_moved_memslot_is_not_translated_from_the_slot_memo() {
        let (vm, b) = testvm::vm(FRAMES, RAM);
        for i in 0..4 {
            guest_fill(&vm, b, i, 0x11);
        }
        let mut h = VmBalloon::new(vm.clone());
        // Page 0 through the slot search; page 1 through the memo it left.
        assert_eq!(h.inflate(Gfn::new(RAM_GFN)), Ok(()));
        assert_eq!(h.inflate(Gfn::new(RAM_GFN + 1)), Ok(()));
        assert!(matches!(
            vm.host().lock().page(b, 1),
            Ok(PageState::Ballooned)
        ));
        // Move the slot: its old frames are no RAM any more, and the new ones translate to
        // the same backing pages.
        let id = vm.with_mmu(|st| st.slots.iter().next().unwrap().id());
        let moved = RAM_GFN + 0x1000;
        vm.move_memslot(id, Gfn::new(moved)).unwrap();
        assert_eq!(
            h.inflate(Gfn::new(RAM_GFN + 2)),
            Err(PageRefused::OutOfRange)
        );
        assert_eq!(h.inflate(Gfn::new(moved + 3)), Ok(()));
        assert!(matches!(
            vm.host().lock().page(b, 3),
            Ok(PageState::Ballooned)
        ));
        assert!(matches!(
            vm.host().lock().page(b, 2),
            Ok(PageState::Private(_))
        ));
    }

    #[test]
    fn page_bits_track_each_number_alone() {
        let mut set = PageBits::default();
        assert!(!set.contains(0) && !set.contains(u64::MAX));
        for g in [0, 63, 64, 130, 4095] {
            set.insert(g);
        }
        for g in [0, 63, 64, 130, 4095] {
            assert!(set.contains(g), "{g}");
        }
        for g in [1, 62, 65, 129, 131, 4094, 4096, 1 << 40] {
            assert!(!set.contains(g), "{g}");
        }
        assert!(set.remove(64));
        assert!(!set.remove(64), "removed once only");
        assert!(!set.remove(1 << 40), "beyond the bitmap: not there");
        assert!(!set.contains(64) && set.contains(63) && set.contains(130));
    }

    const RAM: u64 = 64;
    const FRAMES: usize = 256;
    /// Where the test driver puts PFN arrays in its ring memory.
    const DATA: u64 = 0x2_0000;

    /// A balloon for `vm` whose driver negotiated `features` and set up `queues` queues.
    fn device(vm: &Arc<TestVm>, features: u64, queues: u16) -> Dev {
        let balloon = VirtioBalloon::new(VmBalloon::new(vm.clone()));
        // Ring memory covers the RAM slot too, as guest RAM would.
        let rings = VecMemory::new(Gpa::new(0), 0x20_0000);
        let mut d = VirtioMmio::new(balloon, rings, LatchedLine::default()).unwrap();
        bring_up(&mut d, features, queues);
        d
    }

    /// Sends guest frames `gfns` as one PFN array on queue `q` (0 inflate, 1 deflate).
    fn send(d: &mut Dev, q: u16, gfns: impl IntoIterator<Item = u64>) {
        let bytes: Vec<u8> = gfns
            .into_iter()
            .flat_map(|g| (g as u32).to_le_bytes())
            .collect();
        d.memory_mut().write(Gpa::new(DATA), &bytes).unwrap();
        desc(d, q, 0, DATA, bytes.len() as u32, 0, 0);
        kick(d, q, 0);
    }

    fn free_frames(vm: &TestVm) -> usize {
        vm.host().lock().pool().free_count()
    }

    fn hooks(d: &Dev) -> &Hooks {
        d.backend().hooks()
    }

    #[test]
    fn inflating_half_the_ram_returns_frames_and_deflated_pages_read_zero() {
        let (vm, b) = testvm::vm(FRAMES, RAM);
        for i in 0..RAM {
            guest_fill(&vm, b, i, 0x5a);
        }
        let before = free_frames(&vm);
        let mut d = device(&vm, F_DEFLATE_ON_OOM, 2);
        set_target(&mut d, RAM / 2).unwrap();
        assert_eq!(
            d.read(regs::CONFIG + config::NUM_PAGES, Width::Word),
            Ok(32)
        );
        // The driver inflates the even pages, in two chains.
        let evens: Vec<u64> = (0..RAM).step_by(2).map(|i| RAM_GFN + i).collect();
        send(&mut d, 0, evens[..16].iter().copied());
        send(&mut d, 0, evens[16..].iter().copied());
        d.write(regs::CONFIG + config::ACTUAL, Width::Word, 32)
            .unwrap();
        assert_eq!(d.backend().actual_pages(), 32);
        assert_eq!(free_frames(&vm), before + 32, "half the frames went back");
        let c = hooks(&d).counters();
        assert_eq!((c.inflated_now, c.frames_returned), (32, 32));
        for i in (0..RAM).step_by(2) {
            assert!(vm.lookup(gpa(i)).is_none_or(|p| !p.is_present()));
            let state = vm.host().lock().page(b, i).unwrap();
            assert_eq!(state, PageState::Ballooned);
        }
        vm.check_invariants().unwrap();
        // Deflate all, then the guest re-touches every page.
        send(&mut d, 1, evens.iter().copied());
        assert_eq!(hooks(&d).counters().inflated_now, 0);
        for i in 0..RAM {
            let want = if i.is_multiple_of(2) { 0 } else { 0x5a };
            assert!(guest_read(&vm, b, i).iter().all(|&x| x == want), "page {i}");
        }
        assert_eq!(free_frames(&vm), before);
        assert_eq!(hooks(&d).counters().refused_duplicate, 0);
        drop(d);
        testvm::teardown_clean(vm);
    }

    #[test]
    fn frames_out_counts_frames_given_back_until_their_pages_take_memory_again() {
        let (vm, b) = testvm::vm(FRAMES, RAM);
        for i in 0..8 {
            guest_fill(&vm, b, i, 0x33);
        }
        // Page 5 shares page 4's frame; page 6 is swapped out; pages 10.. were never touched.
        assert_eq!(vm.merge((b, 5), (b, 4)), Ok(true));
        assert_eq!(vm.swap_out(b, 6), Ok(true));
        let before = free_frames(&vm);
        let mut d = device(&vm, F_REPORTING, 3);
        send(&mut d, 0, [0, 1, 2, 3, 5, 6, 10, 11].map(|i| RAM_GFN + i));
        assert_eq!(
            free_frames(&vm),
            before + 4,
            "only the private frames came back"
        );
        let h = d.backend_mut().hooks_mut();
        assert_eq!(h.counters().inflated_now, 8);
        assert_eq!(h.counters().frames_returned, 4);
        assert_eq!(
            h.frames_out(),
            4,
            "shared, swapped and untouched pages freed no frame"
        );
        // Deflated pages stay out until the guest touches them.
        send(&mut d, 1, [0, 1].map(|i| RAM_GFN + i));
        let h = d.backend_mut().hooks_mut();
        assert_eq!((h.counters().inflated_now, h.frames_out()), (6, 4));
        assert!(guest_read(&vm, b, 0).iter().all(|&x| x == 0));
        assert_eq!(d.backend_mut().hooks_mut().frames_out(), 3);
        // Re-touched, then inflated again: counted again; a free page report counts too.
        guest_fill(&vm, b, 1, 0x44);
        assert_eq!(d.backend_mut().hooks_mut().frames_out(), 2);
        send(&mut d, 0, [RAM_GFN + 1]);
        assert_eq!(d.backend_mut().hooks_mut().frames_out(), 3);
        desc(&mut d, 2, 0, gpa(7).raw(), 4096, VIRTQ_DESC_F_WRITE, 0);
        kick(&mut d, 2, 0);
        let h = d.backend_mut().hooks_mut();
        assert_eq!((h.counters().reported_pages, h.frames_out()), (1, 4));
        assert_eq!(
            free_frames(&vm),
            before + 4,
            "as many frames out as counted"
        );
        // Touching the reported page takes its frame back.
        guest_fill(&vm, b, 7, 0x55);
        assert_eq!(d.backend_mut().hooks_mut().frames_out(), 3);
        assert_eq!(free_frames(&vm), before + 3);
        vm.check_invariants().unwrap();
        drop(d);
        testvm::teardown_clean(vm);
    }

    #[test]
    fn hostile_inputs_are_refused_counted_and_logged() {
        let (vm, b) = testvm::vm(FRAMES, RAM);
        let ro = GfnRange::from_start_len(Gfn::new(0x800), 4).unwrap();
        let rob = vm.host().create_backing(4).unwrap();
        vm.add_memslot(ro, rob, 0, SlotFlags::READ_ONLY).unwrap();
        guest_fill(&vm, b, 3, 7);
        let mut d = device(&vm, F_REPORTING, 3);
        // Outside RAM (below, above, huge), read-only, then a duplicate.
        send(
            &mut d,
            0,
            [0, RAM_GFN - 1, RAM_GFN + RAM, u32::MAX as u64, 0x801],
        );
        send(&mut d, 0, [RAM_GFN + 3, RAM_GFN + 3]);
        // Deflating a page that is not inflated.
        send(&mut d, 1, [RAM_GFN + 5]);
        let c = hooks(&d).counters();
        assert_eq!(c.refused_out_of_range, 4);
        assert_eq!(c.refused_not_allowed, 1);
        assert_eq!(c.refused_duplicate, 2);
        assert_eq!(c.inflated_now, 1);
        assert_eq!(d.backend().stats().refused_pfns, 7);
        // An oversized chain and a buffer outside the ring memory.
        let too_long = 4 * (MAX_PFNS_PER_CHAIN as u32 + 1);
        desc(&mut d, 0, 1, DATA, too_long, 0, 0);
        kick(&mut d, 0, 1);
        desc(&mut d, 0, 2, 0x7fff_f000, 8, 0, 0);
        kick(&mut d, 0, 2);
        // Reports: unaligned, zero length, not RAM, straddling the end of RAM.
        for (i, (at, len)) in [
            (gpa(8).raw() + 1, 4096),
            (gpa(8).raw(), 0),
            (0x10_0000_0000, 4096),
            (gpa(RAM - 1).raw(), 8192),
        ]
        .into_iter()
        .enumerate()
        {
            desc(&mut d, 2, i as u16, at, len, VIRTQ_DESC_F_WRITE, 0);
            kick(&mut d, 2, i as u16);
        }
        let c = hooks(&d).counters();
        // The report outside guest memory is a bad chain too.
        assert_eq!(c.bad_chains, 3);
        assert_eq!(d.backend().stats().bad_chains, 3);
        assert_eq!(c.refused_not_allowed, 3);
        assert_eq!(c.refused_out_of_range, 5);
        assert_eq!(c.reported_pages, 0);
        assert!(d.is_active(), "hostile input never stops the device");
        let events: Vec<BalloonEvent> = d.backend_mut().hooks_mut().drain_events().collect();
        assert_eq!(events.len(), 7 + 3 + 3);
        assert_eq!(
            events[0].to_string(),
            "balloon: refused inflate of 0x0: not RAM of this VM"
        );
        assert!(events
            .iter()
            .any(|e| e.kind == BalloonEventKind::BadChain(QueueRole::Inflate)));
        assert!(hooks(&d).counters().events_dropped == 0);
        // The one good page is ballooned; everything else is as it was.
        assert_eq!(vm.host().lock().page(b, 3), Ok(PageState::Ballooned));
        vm.check_invariants().unwrap();
        drop(d);
        testvm::teardown_clean(vm);
    }

    #[test]
    fn inflate_chains_give_back_runs_of_pages_at_once() {
        let (vm, b) = testvm::vm(FRAMES, RAM);
        for i in 0..RAM {
            guest_fill(&vm, b, i, 0x33);
        }
        let before = free_frames(&vm);
        let mut d = device(&vm, 0, 2);
        // Descending (as a driver giving pages from the top of RAM does), then ascending.
        send(&mut d, 0, (32..48).rev().map(|i| RAM_GFN + i));
        assert_eq!(hooks(&d).counters().runs_given_back, 1);
        send(&mut d, 0, (0..8).map(|i| RAM_GFN + i));
        assert_eq!(hooks(&d).counters().runs_given_back, 2);
        // A gap splits the chain into runs; refused PFNs (a page inflated before, a duplicate
        // inside the chain, one beyond RAM) do not.
        send(
            &mut d,
            0,
            [
                RAM_GFN + 10,
                RAM_GFN + 11,
                RAM_GFN + 20,
                RAM_GFN + 40,
                RAM_GFN + 12,
                RAM_GFN + 12,
                RAM_GFN + RAM,
                RAM_GFN + 13,
            ],
        );
        let c = hooks(&d).counters();
        assert_eq!(c.inflated_now, 16 + 8 + 5);
        assert_eq!(c.frames_returned, 29);
        assert_eq!((c.refused_duplicate, c.refused_out_of_range), (2, 1));
        assert_eq!(c.runs_given_back, 2 + 3, "10..12, 20..21, then 12..14");
        assert_eq!(free_frames(&vm), before + 29);
        for i in (32..48).chain(0..8).chain(10..14).chain(20..21) {
            assert_eq!(
                vm.host().lock().page(b, i),
                Ok(PageState::Ballooned),
                "page {i}"
            );
            assert!(hooks(&d).is_inflated(Gfn::new(RAM_GFN + i)));
        }
        assert!(guest_read(&vm, b, 9).iter().all(|&x| x == 0x33));
        vm.check_invariants().unwrap();
        drop(d);
        testvm::teardown_clean(vm);
    }

    /// One chain over two memslots: each slot's pages are found and given back in their
    /// own runs, and deflating outside a chain finds every page again.
    #[test]
    fn a_chain_across_two_memslots() {
        let (vm, b) = testvm::vm(FRAMES, RAM);
        let second = GfnRange::from_start_len(Gfn::new(0x800), 4).unwrap();
        let b2 = vm.host().create_backing(4).unwrap();
        vm.add_memslot(second, b2, 0, SlotFlags::empty()).unwrap();
        let mut h = VmBalloon::new(vm.clone());
        h.chain_start(QueueRole::Inflate);
        for g in [RAM_GFN + 1, RAM_GFN + 2, 0x800, 0x801, RAM_GFN + 3] {
            assert_eq!(h.inflate(Gfn::new(g)), Ok(()), "gfn {g:#x}");
        }
        assert_eq!(h.inflate(Gfn::new(0x801)), Err(PageRefused::Duplicate));
        h.chain_end(QueueRole::Inflate);
        assert_eq!(h.counters().runs_given_back, 3);
        assert_eq!(h.counters().inflated_now, 5);
        assert_eq!(vm.host().lock().page(b2, 1), Ok(PageState::Ballooned));
        assert_eq!(vm.host().lock().page(b, 3), Ok(PageState::Ballooned));
        assert!(!h.is_inflated(Gfn::new(0x802)) && !h.is_inflated(Gfn::new(RAM_GFN)));
        for g in [RAM_GFN + 1, RAM_GFN + 2, RAM_GFN + 3, 0x800, 0x801] {
            h.deflate(Gfn::new(g)).unwrap();
        }
        assert_eq!(h.deflate(Gfn::new(0x800)), Err(PageRefused::Duplicate));
        assert_eq!(h.counters().inflated_now, 0);
        vm.check_invariants().unwrap();
        drop(h);
        testvm::teardown_clean(vm);
    }

    #[test]
    fn a_run_the_core_refuses_is_not_inflated_and_is_logged() {
        let (vm, b) = testvm::vm(FRAMES, RAM);
        guest_fill(&vm, b, 0, 1);
        let mut h = VmBalloon::new(vm.clone());
        h.chain_start(QueueRole::Inflate);
        h.inflate(Gfn::new(RAM_GFN)).unwrap();
        h.inflate(Gfn::new(RAM_GFN + 1)).unwrap();
        assert_eq!(
            vm.host().lock().page(b, 0).map(|p| p.frame().is_some()),
            Ok(true)
        );
        // The backing disappears before the chain ends (its slot first).
        let slot = vm.with_mmu(|st| st.slots.find(Gfn::new(RAM_GFN)).unwrap().id());
        vm.remove_memslot(slot).unwrap();
        vm.host().remove_backing(vm.as_ref(), b).unwrap();
        h.chain_end(QueueRole::Inflate);
        let c = h.counters();
        assert_eq!(
            (c.inflated_now, c.frames_returned, c.runs_given_back),
            (0, 0, 0)
        );
        assert!(!h.is_inflated(Gfn::new(RAM_GFN)));
        let events: Vec<BalloonEvent> = h.drain_events().collect();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, BalloonEventKind::GiveBackFailed(2));
        assert!(events[0]
            .to_string()
            .contains("could not give back 2 pages"));
        drop(h);
        testvm::teardown_clean(vm);
    }

    #[test]
    fn event_log_keeps_the_newest_records() {
        let (vm, _) = testvm::vm(FRAMES, RAM);
        let mut h = VmBalloon::new(vm.clone());
        for g in 0..(EVENT_LOG_LEN as u64 + 5) {
            assert_eq!(h.inflate(Gfn::new(g)), Err(PageRefused::OutOfRange));
        }
        assert_eq!(h.counters().events_dropped, 5);
        let first = h.drain_events().next().unwrap();
        assert_eq!(first.gpa, Gpa::new(5 << 12));
        assert_eq!(h.drain_events().count(), 0);
        drop(h);
        testvm::teardown_clean(vm);
    }

    #[test]
    fn free_page_reports_drop_frames_without_inflating() {
        let (vm, b) = testvm::vm(FRAMES, RAM);
        for i in 0..8 {
            guest_fill(&vm, b, i, 9);
        }
        let before = free_frames(&vm);
        let mut d = device(&vm, F_REPORTING, 3);
        desc(
            &mut d,
            2,
            0,
            gpa(2).raw(),
            4 * 4096,
            VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
            1,
        );
        desc(&mut d, 2, 1, gpa(40).raw(), 4096, VIRTQ_DESC_F_WRITE, 0);
        kick(&mut d, 2, 0);
        let c = hooks(&d).counters();
        assert_eq!((c.reported_pages, c.frames_returned), (5, 4));
        assert_eq!(c.inflated_now, 0);
        assert_eq!(free_frames(&vm), before + 4);
        assert!(guest_read(&vm, b, 3).iter().all(|&x| x == 0));
        assert!(guest_read(&vm, b, 1).iter().all(|&x| x == 9));
        drop(d);
        testvm::teardown_clean(vm);
    }

    #[test]
    fn target_is_checked_against_ram() {
        let (vm, _) = testvm::vm(FRAMES, RAM);
        let mut d = device(&vm, 0, 2);
        let irqs = d.irq().rising_edges;
        assert_eq!(
            set_target(&mut d, RAM + 1),
            Err(BalloonError::TargetTooLarge {
                requested: RAM + 1,
                ram_pages: RAM
            })
        );
        assert_eq!(d.backend().target_pages(), 0);
        assert_eq!(d.irq().rising_edges, irqs, "no change, no interrupt");
        assert!(set_target_mib(&mut d, 1).is_err(), "1 MiB is 256 pages");
        set_target(&mut d, RAM).unwrap();
        assert_eq!(d.backend().target_pages(), RAM as u32);
        assert!(d.irq().asserted);
        assert!(BalloonError::TargetTooLarge {
            requested: 1,
            ram_pages: 0
        }
        .to_string()
        .contains("exceeds"));
    }

    /// Inflation (page by page and batched per chain) and deflation race guest faults on
    /// the same pages: no entry ever names a frame its page no longer holds, and every frame
    /// comes back at the end.
    #[test]
    fn inflate_races_guest_faults() {
        const PAGES: u64 = 32;
        let (vm, b) = testvm::vm(FRAMES, PAGES);
        let stop = Arc::new(AtomicBool::new(false));
        let faults = Arc::new(AtomicU64::new(0));
        let guests: Vec<_> = (0..2u64)
            .map(|t| {
                let vm = vm.clone();
                let stop = stop.clone();
                let faults = faults.clone();
                thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let i = (n * 7 + t) % PAGES;
                        let pair = vm.map_page(gpa(i), n.is_multiple_of(3)).unwrap();
                        let pte = if i.is_multiple_of(2) { pair.0 } else { pair.1 };
                        assert!(pte.is_present());
                        n += 1;
                        faults.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let mut h = VmBalloon::new(vm.clone());
        // At least 200 rounds, and on until the guests have faulted a fair amount (the host
        // may be busy), but not forever.
        let mut round = 0u64;
        while round < 200 || (faults.load(Ordering::Relaxed) < 5000 && round < 200_000) {
            round += 1;
            // Every third round inflates one half of RAM as one chain (given back as one run
            // at the chain's end); the others inflate every other page, one by one.
            let batched = round.is_multiple_of(3);
            let pages: Vec<u64> = if batched {
                let half = (round / 3 % 2) * PAGES / 2;
                (half..half + PAGES / 2).rev().collect()
            } else {
                (round % 2..PAGES).step_by(2).collect()
            };
            if batched {
                h.chain_start(QueueRole::Inflate);
            }
            for &i in &pages {
                h.inflate(Gfn::new(RAM_GFN + i)).unwrap();
            }
            if batched {
                h.chain_end(QueueRole::Inflate);
            }
            if round.is_multiple_of(20) {
                vm.check_invariants().unwrap();
            }
            for &i in &pages {
                h.deflate(Gfn::new(RAM_GFN + i)).unwrap();
            }
        }
        stop.store(true, Ordering::Relaxed);
        for g in guests {
            g.join().unwrap();
        }
        assert!(faults.load(Ordering::Relaxed) > 0);
        assert_eq!(h.counters().inflated_now, 0);
        assert!(h.counters().runs_given_back >= 200 / 3);
        drop(h);
        vm.check_invariants().unwrap();
        let _ = b;
        testvm::teardown_clean(vm);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Inflate(u64),
        Deflate(u64),
        Report(u64, u64),
        Touch(u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        // Guest frames around the RAM slot (RAM_GFN..RAM_GFN + 16) and far away.
        let gfn = prop_oneof![RAM_GFN - 2..RAM_GFN + 18, any::<u32>().prop_map(u64::from)];
        prop_oneof![
            gfn.clone().prop_map(Op::Inflate),
            gfn.clone().prop_map(Op::Deflate),
            (gfn, 0u64..4).prop_map(|(g, n)| Op::Report(g, n)),
            (0u64..16).prop_map(Op::Touch),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Arbitrary inflate, deflate, report and touch sequences against a model: the hooks
        /// accept exactly what the model allows, inflated pages hold no frame until touched,
        /// the memory core's invariants hold, and nothing leaks.
        #[test]
        fn balloon_matches_its_model(ops in proptest::collection::vec(op(), 1..60)) {
            const PAGES: u64 = 16;
            let (vm, b) = testvm::vm(64, PAGES);
            let mut h = VmBalloon::new(vm.clone());
            let mut model = alloc::collections::BTreeSet::new();
            let in_ram = |g: u64| (RAM_GFN..RAM_GFN + PAGES).contains(&g);
            for op in ops {
                match op {
                    Op::Inflate(g) => {
                        let ok = in_ram(g) && !model.contains(&g);
                        proptest::prop_assert_eq!(h.inflate(Gfn::new(g)).is_ok(), ok);
                        if ok {
                            model.insert(g);
                            let state = vm.host().lock().page(b, g - RAM_GFN).unwrap();
                            proptest::prop_assert_eq!(state, PageState::Ballooned);
                        }
                    }
                    Op::Deflate(g) => {
                        let ok = model.remove(&g);
                        proptest::prop_assert_eq!(h.deflate(Gfn::new(g)).is_ok(), ok);
                    }
                    Op::Report(g, n) => {
                        let ok = n > 0 && in_ram(g) && in_ram(g + n - 1);
                        let at = Gfn::new(g).checked_addr().unwrap_or(Gpa::new(1));
                        let got = h.report_free(at, (n * 4096) as u32).is_ok();
                        proptest::prop_assert_eq!(got, ok);
                    }
                    Op::Touch(i) => guest_fill(&vm, b, i, i as u8 + 1),
                }
                proptest::prop_assert_eq!(h.counters().inflated_now, model.len() as u64);
                proptest::prop_assert!(vm.check_invariants().is_ok());
            }
            let c = h.counters();
            let refused = c.refused_out_of_range + c.refused_duplicate + c.refused_not_allowed;
            proptest::prop_assert_eq!(h.drain_events().count() as u64,
                refused.min(EVENT_LOG_LEN as u64));
            drop(h);
            testvm::teardown_clean(vm);
        }
    }
}
