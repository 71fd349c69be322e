//! Same-page merging ("dedup", after Linux KSM): finds guest pages with equal bytes and backs
//! them with one shared read-only frame; a guest write to such a page takes the fault slow
//! path and gets a private copy (copy-on-write, done by the memory core's `resolve`).
//!
//! # How a page gets merged
//!
//! The scanner visits the tracked pages in a fixed order, [`DedupConfig::pages_per_pass`] of
//! them per [`Dedup::scan_pass`]; visiting every page once is a *full scan*. For each resident
//! private page it computes [`checksum::page_checksum`]:
//!
//! 1. **Checksum gate**: the page is a candidate only if its checksum equals the one recorded
//!    at the previous full scan (pages that keep changing are *volatile* and would only be
//!    copied back on their next write).
//! 2. **Zero pages** go onto the domain's zero frame (the first zero page found becomes it).
//! 3. **Stable set**: the domain's shared frames, ordered by checksum. Each is held by one
//!    reference of the service, so it can never be freed or become private while listed, and
//!    its bytes never change. A candidate is merged onto the first frame with its checksum
//!    that has fewer than [`DedupConfig::max_page_sharing`] sharers.
//! 4. **Unstable set**: candidates of this full scan, ordered by checksum. A candidate whose
//!    checksum is already there makes the earlier page a new stable frame (write-protected in
//!    place) and is merged onto it; otherwise it is added. The set is emptied after every full
//!    scan, since its pages stay writable and may have changed.
//!
//! Every merge goes through `HostMem::merge_onto`, which write-protects the page, compares all
//! its bytes with the target frame and only then remaps it through `set_entry`: equal checksums
//! are never taken as equal contents. A page whose merge fails `skip_after_failures` times in a
//! row is skipped for 1, 2, 4, ... up to 32 full scans.
//!
//! # Domains (side channels)
//!
//! A merged page is slower to write, so merging leaks "some other page has these bytes". Pages
//! are therefore merged only within a *domain*: one VM by default, or every VM of one
//! configured [`TrustGroup`]. Each domain has its own stable set, unstable set and zero frame;
//! nothing ever compares pages of different domains. (VMs of a group share one host memory
//! layer, `hv_core::fault::Vm::with_host`; the service works on one layer at a time.)
//!
//! # Metadata
//!
//! Per tracked page: 8 bytes ([`PageMeta`]). Per stable frame and per unstable entry a
//! few tens of bytes, counted in [`DedupStats::metadata_bytes`] with an estimate of the
//! ordered map's node overhead.

pub mod advisor;
pub mod checksum;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;
use core::mem::size_of;

use hv_core::addr::Hfn;
use hv_core::frame_pool::{FrameMemory, FRAME_BYTES};
use hv_core::host_mem::{HostMem, HostMemError, PageState};
use hv_core::memslot::BackingId;
use hv_core::notifier::MmuNotifier;

use self::checksum::{page_checksum, zero_checksum};

/// A VM, as the dedup service names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct VmId(pub u32);

/// A set of VMs that trust each other enough to share frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TrustGroup(pub u32);

/// Scanner settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupConfig {
    /// Pages visited by one [`Dedup::scan_pass`] (see [`advisor::advise`]).
    pub pages_per_pass: u64,
    /// Most pages one shared frame may back (KSM's `max_page_sharing`); at least 2.
    pub max_page_sharing: u32,
    /// Whether zero pages go onto a per-domain zero frame.
    pub merge_zero_pages: bool,
    /// Failed merges in a row after which a page is skipped for a while; at least 1.
    pub skip_after_failures: u8,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            pages_per_pass: 256,
            max_page_sharing: 256,
            merge_zero_pages: true,
            skip_after_failures: 3,
        }
    }
}

/// Errors from the dedup service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupError {
    /// `pages_per_pass` is zero, `max_page_sharing` below 2 or `skip_after_failures` zero.
    BadConfig,
    /// The backing object is already tracked.
    AlreadyTracked,
    /// The VM is already tracked in another domain (a VM is in one trust group at most).
    OtherDomain,
    /// No VM with this id is tracked.
    UnknownVm,
    /// The host memory layer refused (a backing removed while still tracked, say).
    Host(HostMemError),
}

impl fmt::Display for DedupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DedupError::BadConfig => f.write_str("bad dedup configuration"),
            DedupError::AlreadyTracked => f.write_str("backing already tracked"),
            DedupError::OtherDomain => f.write_str("VM already tracked in another trust group"),
            DedupError::UnknownVm => f.write_str("no such VM tracked"),
            DedupError::Host(e) => write!(f, "host memory: {e}"),
        }
    }
}

impl From<HostMemError> for DedupError {
    fn from(e: HostMemError) -> Self {
        DedupError::Host(e)
    }
}

/// What the scanner remembers about one page (8 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageMeta {
    /// Low half of the checksum at the last visit.
    checksum: u32,
    /// Failed merges in a row.
    fails: u8,
    /// [`HAS_CHECKSUM`].
    flags: u8,
    /// Low bits of the full-scan number before which the page is skipped.
    skip_until: u16,
}

impl PageMeta {
    /// Whether a page that failed `fails` merges in a row is still being skipped at full
    /// scan `now` (low 16 bits; skips are at most 32 scans, so wrapping is harmless).
    fn skipped_at(&self, now: u16, skip_after: u8) -> bool {
        self.fails >= skip_after && (self.skip_until.wrapping_sub(now) as i16) > 0
    }

    /// Counts one more failed merge at full scan `now`, skipping the page for 1, 2, 4, ...
    /// (at most 32) full scans once it reached `skip_after` failures in a row.
    fn record_failure(&mut self, now: u16, skip_after: u8) {
        self.fails = self.fails.saturating_add(1);
        if self.fails >= skip_after {
            let shift = (self.fails - skip_after).min(MAX_SKIP_SHIFT);
            self.skip_until = now.wrapping_add(1 << shift);
        }
    }
}

/// `checksum` holds a value from an earlier visit.
const HAS_CHECKSUM: u8 = 1;
/// Longest skip, in full scans (as a power of two).
const MAX_SKIP_SHIFT: u8 = 5;

/// Counters, with Linux KSM's names where they fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DedupStats {
    /// Shared frames in use (excluding zero frames).
    pub pages_shared: u64,
    /// Extra guest pages backed by those frames: the frames saved.
    pub pages_sharing: u64,
    /// Candidates of the last full scan that found no partner (KSM's unstable tree size).
    pub pages_unshared: u64,
    /// Pages whose checksum changed during the last full scan.
    pub pages_volatile: u64,
    /// Full scans completed.
    pub full_scans: u64,
    /// Guest pages backed by a zero frame now.
    pub zero_pages_merged: u64,
    /// Zero frames in use (at most one per domain); each holds one of those pages' bytes,
    /// so the frames saved by zero merging are `zero_pages_merged - zero_frames`.
    pub zero_frames: u64,
    /// Frames the service holds (stable and zero frames), shared or not: a frame whose
    /// sharers all wrote to their pages costs one until the end of the full scan frees it.
    pub frames_held: u64,
    /// Writes that broke sharing on this host layer (copies or last-sharer takeovers).
    pub cow_breaks: u64,
    /// Successful merges so far.
    pub merges: u64,
    /// Merge attempts refused by the byte comparison (or lost to a racing change).
    pub merge_failures: u64,
    /// Page visits skipped because the page kept failing to merge.
    pub pages_skipped: u64,
    /// Pages tracked.
    pub tracked_pages: u64,
    /// Bytes of scanner metadata (per-page records plus the sets, estimated).
    pub metadata_bytes: u64,
}

impl DedupStats {
    /// Host frames the merging saves now: every extra sharer of a stable frame, and every
    /// zero page but the one per domain whose frame became the zero frame.
    pub fn saved_frames(&self) -> u64 {
        self.pages_sharing + self.zero_pages_merged.saturating_sub(self.zero_frames)
    }

    /// Frames the merging saves now, net: guest pages backed by the service's frames less
    /// those frames, so a held frame nobody shares any more counts against it. Equals
    /// [`Self::saved_frames`] when every held frame has a sharer.
    pub fn net_saved_frames(&self) -> i64 {
        let backed = self.pages_shared + self.pages_sharing + self.zero_pages_merged;
        backed as i64 - self.frames_held as i64
    }

    /// Metadata bytes per tracked page, rounded up (0 with nothing tracked).
    pub fn metadata_bytes_per_page(&self) -> u64 {
        if self.tracked_pages == 0 {
            return 0;
        }
        self.metadata_bytes.div_ceil(self.tracked_pages)
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Pages visited.
    pub scanned: u64,
    /// Pages merged (onto stable or zero frames).
    pub merged: u64,
    /// Whether a full scan completed during the pass.
    pub full_scan_completed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DomainKey {
    Vm(VmId),
    Group(TrustGroup),
}

#[derive(Debug)]
struct Domain {
    key: DomainKey,
    /// Shared frames by checksum; several per checksum once one is full.
    stable: BTreeMap<u64, Vec<Hfn>>,
    zero: Option<Hfn>,
    /// This full scan's unmatched candidates by checksum.
    unstable: BTreeMap<u64, (BackingId, u64)>,
}

#[derive(Debug)]
struct Tracked {
    vm: VmId,
    backing: BackingId,
    domain: usize,
    meta: Vec<PageMeta>,
}

/// How a candidate fared.
enum Merge {
    Merged,
    Zero,
    Waiting,
    Failed,
}

/// The dedup service for the VMs of one host memory layer.
#[derive(Debug)]
pub struct Dedup {
    config: DedupConfig,
    tracked: Vec<Tracked>,
    domains: Vec<Domain>,
    cursor: (usize, u64),
    stats: DedupStats,
    volatile_this_scan: u64,
}

impl Dedup {
    /// A service with nothing tracked.
    pub fn new(config: DedupConfig) -> Result<Self, DedupError> {
        let mut dedup = Self {
            config: DedupConfig::default(),
            tracked: Vec::new(),
            domains: Vec::new(),
            cursor: (0, 0),
            stats: DedupStats::default(),
            volatile_this_scan: 0,
        };
        dedup.set_config(config)?;
        Ok(dedup)
    }

    /// Changes the settings (the advisor's rate, say).
    pub fn set_config(&mut self, config: DedupConfig) -> Result<(), DedupError> {
        if config.pages_per_pass == 0
            || config.max_page_sharing < 2
            || config.skip_after_failures == 0
        {
            return Err(DedupError::BadConfig);
        }
        self.config = config;
        Ok(())
    }

    /// The current settings.
    pub fn config(&self) -> DedupConfig {
        self.config
    }

    /// Tracks `backings` of `vm` (all living in `host`). Without a `group` the VM's pages
    /// merge only with each other; with one, with every VM tracked in the same group.
    pub fn add_vm<M: FrameMemory>(
        &mut self,
        host: &HostMem<M>,
        vm: VmId,
        group: Option<TrustGroup>,
        backings: &[BackingId],
    ) -> Result<(), DedupError> {
        let key = group.map_or(DomainKey::Vm(vm), DomainKey::Group);
        if let Some(t) = self.tracked.iter().find(|t| t.vm == vm) {
            if self.domains[t.domain].key != key {
                return Err(DedupError::OtherDomain);
            }
        }
        let mut lens = Vec::new();
        {
            let st = host.lock();
            for (i, &b) in backings.iter().enumerate() {
                if self.tracked.iter().any(|t| t.backing == b) || backings[..i].contains(&b) {
                    return Err(DedupError::AlreadyTracked);
                }
                lens.push(usize::try_from(st.backing_len(b)?).map_err(|_| DedupError::BadConfig)?);
            }
        }
        let domain = match self.domains.iter().position(|d| d.key == key) {
            Some(d) => d,
            None => {
                self.domains.push(Domain {
                    key,
                    stable: BTreeMap::new(),
                    zero: None,
                    unstable: BTreeMap::new(),
                });
                self.domains.len() - 1
            }
        };
        for (&backing, len) in backings.iter().zip(lens) {
            self.tracked.push(Tracked {
                vm,
                backing,
                domain,
                meta: alloc::vec![PageMeta::default(); len],
            });
        }
        Ok(())
    }

    /// Stops tracking a VM (before its backings are removed). Frames its pages still share
    /// stay until their last sharer goes; the service lets go of them at a full scan's end.
    pub fn remove_vm(&mut self, vm: VmId) -> Result<(), DedupError> {
        let gone: Vec<BackingId> = self
            .tracked
            .iter()
            .filter(|t| t.vm == vm)
            .map(|t| t.backing)
            .collect();
        if gone.is_empty() {
            return Err(DedupError::UnknownVm);
        }
        for d in &mut self.domains {
            d.unstable.retain(|_, (b, _)| !gone.contains(b));
        }
        let current = self.tracked.get(self.cursor.0).map(|t| t.backing);
        self.tracked.retain(|t| t.vm != vm);
        // Keep the cursor on the same backing if it survives, else restart that slot.
        self.cursor = match current.and_then(|b| self.tracked.iter().position(|t| t.backing == b)) {
            Some(i) => (i, self.cursor.1),
            None => (self.cursor.0.min(self.tracked.len()), 0),
        };
        Ok(())
    }

    /// Drops every reference the service holds (stable and zero frames) and forgets the
    /// sets; pages stay merged until written. For shutdown and teardown.
    pub fn release_all<M: FrameMemory>(&mut self, host: &HostMem<M>) -> Result<(), DedupError> {
        for d in &mut self.domains {
            for h in d.stable.values().flatten().chain(d.zero.iter()) {
                host.release_frame(*h)?;
            }
            d.stable.clear();
            d.zero = None;
            d.unstable.clear();
        }
        Ok(())
    }

    /// Visits the next `pages_per_pass` tracked pages, merging what it can. `notifier` must
    /// reach the VM owning each tracked backing (a [`crate::router::BackingRouter`]).
    pub fn scan_pass<M: FrameMemory>(
        &mut self,
        host: &HostMem<M>,
        notifier: &(impl MmuNotifier + ?Sized),
    ) -> Result<PassReport, DedupError> {
        let mut report = PassReport::default();
        if self.tracked.is_empty() {
            return Ok(report);
        }
        for _ in 0..self.config.pages_per_pass {
            let (ti, page) = self.cursor;
            if ti >= self.tracked.len() {
                self.end_full_scan(host)?;
                report.full_scan_completed = true;
                continue;
            }
            if page >= self.tracked[ti].meta.len() as u64 {
                self.cursor = (ti + 1, 0);
                if ti + 1 >= self.tracked.len() {
                    self.end_full_scan(host)?;
                    report.full_scan_completed = true;
                }
                continue;
            }
            self.cursor = (ti, page + 1);
            report.scanned += 1;
            if self.scan_page(host, notifier, ti, page)? {
                report.merged += 1;
            }
        }
        Ok(report)
    }

    /// Runs passes until `n` more full scans have completed.
    pub fn full_scans<M: FrameMemory>(
        &mut self,
        host: &HostMem<M>,
        notifier: &(impl MmuNotifier + ?Sized),
        n: u64,
    ) -> Result<(), DedupError> {
        let target = self.stats.full_scans + n;
        while self.stats.full_scans < target && !self.tracked.is_empty() {
            self.scan_pass(host, notifier)?;
        }
        Ok(())
    }

    fn end_full_scan<M: FrameMemory>(&mut self, host: &HostMem<M>) -> Result<(), DedupError> {
        self.cursor = (0, 0);
        self.stats.full_scans += 1;
        self.stats.pages_volatile = core::mem::take(&mut self.volatile_this_scan);
        let mut unshared = 0;
        let mut unused = Vec::new();
        {
            let st = host.lock();
            // Only the service's own reference left: nobody shares the frame any more.
            let idle = |h: &Hfn| st.pool().refcount(*h) <= 1;
            for d in &mut self.domains {
                unshared += d.unstable.len() as u64;
                d.unstable.clear();
                for frames in d.stable.values_mut() {
                    unused.extend(frames.iter().copied().filter(idle));
                    frames.retain(|h| !idle(h));
                }
                d.stable.retain(|_, frames| !frames.is_empty());
                if let Some(z) = d.zero.filter(idle) {
                    unused.push(z);
                    d.zero = None;
                }
            }
        }
        for h in unused {
            host.release_frame(h)?;
        }
        self.stats.pages_unshared = unshared;
        Ok(())
    }

    /// Visits one page; returns whether it was merged.
    fn scan_page<M: FrameMemory>(
        &mut self,
        host: &HostMem<M>,
        notifier: &(impl MmuNotifier + ?Sized),
        ti: usize,
        page: u64,
    ) -> Result<bool, DedupError> {
        let backing = self.tracked[ti].backing;
        let sum = {
            let st = host.lock();
            match st.page(backing, page)? {
                PageState::Private(_) => st.with_page_contents(backing, page, page_checksum)?,
                // Already merged, or nothing to merge.
                _ => None,
            }
        };
        let full_scans = self.stats.full_scans;
        let meta = &mut self.tracked[ti].meta[page as usize];
        let Some(sum) = sum else {
            meta.flags &= !HAS_CHECKSUM;
            return Ok(false);
        };
        let had = meta.flags & HAS_CHECKSUM != 0;
        let unchanged = had && meta.checksum == sum as u32;
        meta.checksum = sum as u32;
        meta.flags |= HAS_CHECKSUM;
        if !unchanged {
            self.volatile_this_scan += u64::from(had);
            return Ok(false);
        }
        let now = full_scans as u16;
        if meta.skipped_at(now, self.config.skip_after_failures) {
            self.stats.pages_skipped += 1;
            return Ok(false);
        }
        let domain = self.tracked[ti].domain;
        let outcome = self.try_merge(host, notifier, domain, sum, (backing, page))?;
        let meta = &mut self.tracked[ti].meta[page as usize];
        match outcome {
            Merge::Merged | Merge::Zero => {
                meta.fails = 0;
                self.stats.merges += 1;
                Ok(true)
            }
            Merge::Waiting => Ok(false),
            Merge::Failed => {
                self.stats.merge_failures += 1;
                meta.record_failure(now, self.config.skip_after_failures);
                Ok(false)
            }
        }
    }

    fn try_merge<M: FrameMemory>(
        &mut self,
        host: &HostMem<M>,
        notifier: &(impl MmuNotifier + ?Sized),
        domain: usize,
        sum: u64,
        page: (BackingId, u64),
    ) -> Result<Merge, DedupError> {
        let max_sharers = self.config.max_page_sharing;
        let d = &mut self.domains[domain];
        if self.config.merge_zero_pages && sum == zero_checksum(FRAME_BYTES) {
            return Ok(match d.zero {
                Some(z) => {
                    if host.merge_onto(notifier, page, z)? {
                        Merge::Zero
                    } else {
                        Merge::Failed
                    }
                }
                None => {
                    // The first zero page becomes the zero frame, if it still is zero now that
                    // it is write-protected.
                    let Some(h) = share_private(host, notifier, page)? else {
                        return Ok(Merge::Waiting);
                    };
                    let now = frame_checksum(host, h)?;
                    if now == zero_checksum(FRAME_BYTES) && frame_is_zero(host, h)? {
                        // Backed by the zero frame now, but nothing was saved yet.
                        d.zero = Some(h);
                        Merge::Waiting
                    } else {
                        d.stable.entry(now).or_default().push(h);
                        Merge::Failed
                    }
                }
            });
        }
        if let Some(frames) = d.stable.get(&sum) {
            let room = {
                let st = host.lock();
                frames
                    .iter()
                    .copied()
                    .find(|&h| st.pool().refcount(h).saturating_sub(1) < max_sharers)
            };
            if let Some(h) = room {
                return Ok(if host.merge_onto(notifier, page, h)? {
                    Merge::Merged
                } else {
                    Merge::Failed
                });
            }
        }
        match d.unstable.get(&sum).copied() {
            Some(other) if other != page => {
                d.unstable.remove(&sum);
                let Some(h) = share_private(host, notifier, other)? else {
                    d.unstable.insert(sum, page);
                    return Ok(Merge::Waiting);
                };
                // Key the new stable frame by what it holds now that it cannot change.
                let now = frame_checksum(host, h)?;
                d.stable.entry(now).or_default().push(h);
                Ok(if host.merge_onto(notifier, page, h)? {
                    Merge::Merged
                } else {
                    Merge::Failed
                })
            }
            Some(_) => Ok(Merge::Waiting),
            None => {
                d.unstable.insert(sum, page);
                Ok(Merge::Waiting)
            }
        }
    }

    /// The counters now (shared-frame figures are read from the frames' reference counts).
    pub fn stats<M: FrameMemory>(&self, host: &HostMem<M>) -> DedupStats {
        let mut stats = self.stats;
        let st = host.lock();
        // Each listed frame has the service's reference plus one per sharing page (and,
        // fleetingly, one per fault in flight).
        let sharers = |h: &Hfn| u64::from(st.pool().refcount(*h).saturating_sub(1));
        let (mut shared, mut sharing, mut zero, mut zero_frames) = (0, 0, 0, 0);
        let mut held = 0;
        for d in &self.domains {
            for n in d.stable.values().flatten().map(sharers) {
                held += 1;
                shared += u64::from(n > 0);
                sharing += n.saturating_sub(1);
            }
            if let Some(z) = d.zero.as_ref() {
                held += 1;
                let zero_sharers = sharers(z);
                zero += zero_sharers;
                zero_frames += u64::from(zero_sharers > 0);
            }
        }
        stats.frames_held = held;
        stats.pages_shared = shared;
        stats.pages_sharing = sharing;
        stats.zero_pages_merged = zero;
        stats.zero_frames = zero_frames;
        stats.cow_breaks = st.cow_breaks();
        stats.tracked_pages = self.tracked.iter().map(|t| t.meta.len() as u64).sum();
        stats.metadata_bytes = self.metadata_bytes();
        stats
    }

    /// The shared frames (stable and zero) of `vm`'s domain: the only shared frames a page
    /// of `vm` may be backed by (for isolation checks).
    pub fn frames_of_vm(&self, vm: VmId) -> Vec<Hfn> {
        let Some(t) = self.tracked.iter().find(|t| t.vm == vm) else {
            return Vec::new();
        };
        let d = &self.domains[t.domain];
        d.stable
            .values()
            .flatten()
            .chain(d.zero.iter())
            .copied()
            .collect()
    }

    fn metadata_bytes(&self) -> u64 {
        // Ordered-map entries cost their key and value plus, on average, about half again
        // for node headers, child pointers and unused slots.
        fn map_entry(key_value: usize) -> u64 {
            (key_value + key_value / 2) as u64
        }
        let pages: u64 = self
            .tracked
            .iter()
            .map(|t| (t.meta.len() * size_of::<PageMeta>() + size_of::<Tracked>()) as u64)
            .sum();
        let sets: u64 = self
            .domains
            .iter()
            .map(|d| {
                let stable: u64 = d
                    .stable
                    .values()
                    .map(|v| {
                        map_entry(size_of::<u64>() + size_of::<Vec<Hfn>>())
                            + (v.capacity() * size_of::<Hfn>()) as u64
                    })
                    .sum();
                let unstable = d.unstable.len() as u64
                    * map_entry(size_of::<u64>() + size_of::<(BackingId, u64)>());
                stable + unstable + size_of::<Domain>() as u64
            })
            .sum();
        pages + sets
    }
}

/// Makes a page that is still private a shared frame the service holds (see
/// `HostMem::share_page`); `None` if it is no longer private.
fn share_private<M: FrameMemory>(
    host: &HostMem<M>,
    notifier: &(impl MmuNotifier + ?Sized),
    page: (BackingId, u64),
) -> Result<Option<Hfn>, DedupError> {
    if !matches!(host.lock().page(page.0, page.1)?, PageState::Private(_)) {
        return Ok(None);
    }
    // Only the service makes pages shared, and it is single-threaded: still private here.
    Ok(host.share_page(notifier, page)?)
}

fn frame_checksum<M: FrameMemory>(host: &HostMem<M>, h: Hfn) -> Result<u64, DedupError> {
    host.lock()
        .pool()
        .with_contents(h, page_checksum)
        .map_err(|_| DedupError::Host(HostMemError::NotResident))
}

fn frame_is_zero<M: FrameMemory>(host: &HostMem<M>, h: Hfn) -> Result<bool, DedupError> {
    host.lock()
        .pool()
        .with_contents(h, |bytes| bytes.iter().all(|&b| b == 0))
        .map_err(|_| DedupError::Host(HostMemError::NotResident))
}

#[cfg(test)]
mod tests;
