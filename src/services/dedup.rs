//! The dedup service in the firmware: `hv_services::dedup::Dedup` over the shared host
//! layer, one pass per services round.
//!
//! Each VM's RAM backing is tracked in its trust group's domain (or its own, without a
//! group), and every host-side change reaches the owning VM through a `BackingRouter`. The
//! pass size comes from the layout (`dedup-pages-per-pass`) or from the advisor, which
//! aims a full scan at `dedup-full-scan-ms` within `dedup-cpu-budget-permille`, using the
//! measured cost per page. Copy-on-write breaks happen in the memory core's fault slow path.
//!
//! A scenario may hold the scanner back with a [`Gate`] until its guests are ready (the
//! `dedup` scenario waits for every guest to finish filling its memory, as a KSM user marks
//! memory mergeable once it holds its data), and may ask for a [`Measurement`] taken at the
//! end of a given full scan, before the guests can see that scan counted (VM-info key 11).

use super::{SharedHost, COUNT_TICKS_PER_US};
use crate::arch::cp0;
use crate::vmm::vm::Vm;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use hv_core::addr::Hfn;
use hv_core::host_mem::PageState;
use hv_devices::vmconfig::ServicesSpec;
use hv_services::dedup::advisor::{self, AdvisorInput};
use hv_services::dedup::{Dedup, DedupConfig, DedupStats, TrustGroup, VmId};
use hv_services::router::BackingRouter;
use spin::Mutex;

/// Full scans the guests may see (VM-info key 11).
static PUBLISHED_FULL_SCANS: AtomicU64 = AtomicU64::new(0);
/// The measurement asked for with [`measure_after`], once taken.
static MEASUREMENT: Mutex<Option<Measurement>> = Mutex::new(None);
/// The counters after the last pass (for the console; `None` when dedup is off).
static LIVE_STATS: Mutex<Option<DedupStats>> = Mutex::new(None);
/// Full scans after the start at which to measure (0 = never).
static MEASURE_AFTER: AtomicU64 = AtomicU64::new(0);

/// Estimated cost of scanning one page before the first measurement (ns).
const INITIAL_NS_PER_PAGE: u64 = 20_000;
/// Fewest pages the advisor may choose per pass.
const MIN_PAGES_PER_PASS: u64 = 16;

/// A condition on the VMs that must hold before the scanner starts.
pub type Gate = fn(&[Arc<Vm>]) -> bool;

/// Full scans completed that the guests may see.
#[allow(
    dead_code,
    reason = "answers VM-info keys 11 and 12 (memguest wires them in vcpu.rs)"
)]
pub fn published_full_scans() -> u64 {
    PUBLISHED_FULL_SCANS.load(Ordering::Acquire)
}

/// Asks for a [`Measurement`] at the end of the `scans`-th full scan after the start.
pub fn measure_after(scans: u64) {
    MEASURE_AFTER.store(scans, Ordering::Relaxed);
}

/// The measurement, once taken.
pub fn measurement() -> Option<Measurement> {
    *MEASUREMENT.lock()
}

/// The dedup counters after the last pass; `None` while no dedup service runs.
pub fn live_stats() -> Option<DedupStats> {
    *LIVE_STATS.lock()
}

/// What merging achieved against what guest memory allowed, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Measurement {
    /// Full scans since the start when it was taken.
    pub full_scans: u64,
    /// Non-zero pages that could share a frame with an equal page of their domain (each
    /// group of `n` equal pages needs `ceil(n / max_page_sharing)` frames).
    pub mergeable_pages: u64,
    /// Resident zero pages (all could live in one zero frame per domain).
    pub mergeable_zero_pages: u64,
    /// The service's counters then.
    pub stats: DedupStats,
    /// Resident pages and the distinct frames holding them, over all tracked VMs.
    pub resident_pages: u64,
    /// See `resident_pages`.
    pub distinct_frames: u64,
    /// Frames backing pages of more than one domain (must be 0).
    pub cross_domain_frames: u64,
}

/// What a pass changed.
#[derive(Debug, Clone, Copy, Default)]
pub struct PassOutcome {
    /// Pages merged or a full scan ended.
    pub changed: bool,
    /// The counters after the pass.
    pub stats: DedupStats,
}

/// The dedup service of one service scenario.
pub struct DedupService {
    dedup: Dedup,
    /// `(VM, trust group)` per tracked VM.
    groups: Vec<(Arc<Vm>, Option<u32>)>,
    fixed_pages_per_pass: Option<u64>,
    interval_us: u64,
    target_full_scan_us: u64,
    budget_permille: u32,
    max_page_sharing: u32,
    ns_per_page: u64,
    /// Count at the start of the previous pass (the real interval feeds the advisor: a
    /// round may come later than asked, after a guest slice or a sleep to the next tick).
    last_pass_start: Option<u32>,
    gate: Option<Gate>,
    started: bool,
    scans_at_start: u64,
    passes: u64,
}

impl core::fmt::Debug for DedupService {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DedupService")
            .field("vms", &self.groups.len())
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl DedupService {
    /// Tracks the RAM of `vms` (`groups[i]` is the trust group of `vms[i]`).
    pub fn new(
        host: &SharedHost,
        vms: &[Arc<Vm>],
        groups: &[Option<u32>],
        spec: &ServicesSpec,
        gate: Option<Gate>,
    ) -> Result<Self, String> {
        if vms.len() != groups.len() {
            return Err(format!(
                "dedup: {} VMs but {} trust-group entries",
                vms.len(),
                groups.len()
            ));
        }
        let config = DedupConfig {
            pages_per_pass: spec
                .dedup_pages_per_pass
                .map_or(MIN_PAGES_PER_PASS, u64::from),
            max_page_sharing: spec.dedup_max_page_sharing,
            merge_zero_pages: !spec.dedup_no_zero_pages,
            ..DedupConfig::default()
        };
        let mut dedup = Dedup::new(config).map_err(|e| format!("dedup: {e}"))?;
        for (vm, group) in vms.iter().zip(groups) {
            dedup
                .add_vm(
                    host,
                    VmId(vm.id as u32),
                    group.map(TrustGroup),
                    &[vm.ram_backing],
                )
                .map_err(|e| format!("dedup: VM {}: {e}", vm.name))?;
        }
        PUBLISHED_FULL_SCANS.store(0, Ordering::Release);
        *MEASUREMENT.lock() = None;
        *LIVE_STATS.lock() = Some(dedup.stats(host));
        let mut service = Self {
            dedup,
            groups: vms.iter().cloned().zip(groups.iter().copied()).collect(),
            fixed_pages_per_pass: spec.dedup_pages_per_pass.map(u64::from),
            interval_us: u64::from(spec.round_interval_us),
            target_full_scan_us: u64::from(spec.dedup_full_scan_ms) * 1000,
            budget_permille: spec.dedup_cpu_budget_permille,
            max_page_sharing: spec.dedup_max_page_sharing,
            ns_per_page: INITIAL_NS_PER_PAGE,
            last_pass_start: None,
            gate,
            started: false,
            scans_at_start: 0,
            passes: 0,
        };
        service.advise(host)?;
        Ok(service)
    }

    /// Sets the pass size from the advisor (unless the layout fixed it).
    fn advise(&mut self, host: &SharedHost) -> Result<(), String> {
        if self.fixed_pages_per_pass.is_some() {
            return Ok(());
        }
        let tracked_pages = self.dedup.stats(host).tracked_pages;
        let advice = advisor::advise(AdvisorInput {
            tracked_pages,
            pass_interval_us: self.interval_us,
            target_full_scan_us: self.target_full_scan_us,
            cpu_budget_permille: self.budget_permille,
            ns_per_page: self.ns_per_page,
            min_pages_per_pass: MIN_PAGES_PER_PASS,
        })
        .map_err(|e| format!("dedup advisor: {e}"))?;
        let config = DedupConfig {
            pages_per_pass: advice.pages_per_pass,
            ..self.dedup.config()
        };
        self.dedup
            .set_config(config)
            .map_err(|e| format!("dedup: {e}"))
    }

    /// One pass (a no-op until the gate opens).
    pub fn pass(&mut self, host: &SharedHost, vms: &[Arc<Vm>]) -> Result<PassOutcome, String> {
        if !self.started {
            if self.gate.is_some_and(|gate| !gate(vms)) {
                return Ok(PassOutcome::default());
            }
            self.started = true;
            self.scans_at_start = self.dedup.stats(host).full_scans;
            crate::log!(
                "dedup: scanning {} pages per pass",
                self.dedup.config().pages_per_pass
            );
        }
        let mut router = BackingRouter::new();
        for (vm, _) in &self.groups {
            router.route(vm.ram_backing, &*vm.memory);
        }
        let start = cp0::count();
        if let Some(previous) = self.last_pass_start.replace(start) {
            let us = u64::from(start.wrapping_sub(previous)) / COUNT_TICKS_PER_US;
            self.interval_us = (self.interval_us * 7 + us.max(1)).div_ceil(8);
        }
        let report = self
            .dedup
            .scan_pass(host, &router)
            .map_err(|e| format!("{e}"))?;
        let ticks = u64::from(cp0::count().wrapping_sub(start));
        self.passes += 1;
        if let Some(ns) = (ticks * 1000 / COUNT_TICKS_PER_US).checked_div(report.scanned) {
            // A running average, so one slow pass (a flush wait) does not swing the rate.
            self.ns_per_page = (self.ns_per_page * 7 + ns.max(1)).div_ceil(8);
        }
        let stats = self.dedup.stats(host);
        if report.full_scan_completed {
            let done = stats.full_scans - self.scans_at_start;
            if MEASURE_AFTER.load(Ordering::Relaxed) == done {
                let measurement = self.measure(host, stats, done);
                *MEASUREMENT.lock() = Some(measurement);
            }
            // Published after the measurement: guests waiting for this scan start writing
            // only once it is taken.
            PUBLISHED_FULL_SCANS.store(done, Ordering::Release);
            self.advise(host)?;
        }
        *LIVE_STATS.lock() = Some(stats);
        Ok(PassOutcome {
            changed: report.merged > 0 || report.full_scan_completed,
            stats,
        })
    }

    /// Counts what could be merged, from the guests' memory contents now.
    fn measure(&self, host: &SharedHost, stats: DedupStats, full_scans: u64) -> Measurement {
        let mut measurement = Measurement {
            full_scans,
            stats,
            ..Measurement::default()
        };
        // Domains: a trust group, or a VM on its own.
        let mut domains: BTreeMap<(bool, u64), Vec<&Arc<Vm>>> = BTreeMap::new();
        for (vm, group) in &self.groups {
            domains.entry(domain_key(vm, *group)).or_default().push(vm);
        }
        let mut frames: Vec<Hfn> = Vec::new();
        for vms in domains.values() {
            // Equal pages by a content hash; equal hashes are then compared byte by byte.
            let mut pages: Vec<(u64, Hfn)> = Vec::new();
            let st = host.lock();
            for vm in vms {
                let Ok(states) = st.pages_of(vm.ram_backing) else {
                    continue;
                };
                for state in states {
                    if let PageState::Private(h) | PageState::Shared(h) = *state {
                        frames.push(h);
                        let (hash, zero) = st
                            .pool()
                            .with_contents(h, |bytes| (content_hash(bytes), is_zero(bytes)))
                            .unwrap_or((0, false));
                        if zero {
                            measurement.mergeable_zero_pages += 1;
                        } else {
                            pages.push((hash, h));
                        }
                    }
                }
            }
            pages.sort_unstable();
            let mut i = 0;
            while i < pages.len() {
                let mut j = i + 1;
                while j < pages.len() && pages[j].0 == pages[i].0 {
                    j += 1;
                }
                // Split the run of equal hashes into classes of equal bytes.
                let mut classes: Vec<(Hfn, u64)> = Vec::new();
                for &(_, h) in &pages[i..j] {
                    match classes.iter_mut().find(|(leader, _)| {
                        *leader == h || st.pool().same_contents(*leader, h).unwrap_or(false)
                    }) {
                        Some(class) => class.1 += 1,
                        None => classes.push((h, 1)),
                    }
                }
                for (_, n) in classes {
                    measurement.mergeable_pages += n - n.div_ceil(u64::from(self.max_page_sharing));
                }
                i = j;
            }
        }
        measurement.resident_pages = frames.len() as u64;
        frames.sort_unstable_by_key(|h| h.raw());
        frames.dedup();
        measurement.distinct_frames = frames.len() as u64;
        let (vms, groups): (Vec<Arc<Vm>>, Vec<Option<u32>>) = self.groups.iter().cloned().unzip();
        measurement.cross_domain_frames = cross_domain_frames(host, &vms, &groups);
        measurement
    }

    /// The counters now (the shared frames' sharers counted from the host layer).
    pub fn stats(&self, host: &SharedHost) -> DedupStats {
        self.dedup.stats(host)
    }

    /// Prints `stats` (from [`Self::stats`]) and the service's own figures as STAT lines
    /// (KSM's names where they fit, after `prefix`).
    pub fn print_stats(&self, stats: &DedupStats, prefix: &str) {
        print_counters(stats, prefix);
        crate::println!("STAT {prefix}dedup_passes={}", self.passes);
        crate::println!(
            "STAT {prefix}dedup_pages_per_pass={}",
            self.dedup.config().pages_per_pass
        );
        crate::println!("STAT {prefix}dedup_ns_per_page={}", self.ns_per_page);
        crate::println!("STAT {prefix}dedup_pass_interval_us={}", self.interval_us);
    }

    /// Stops tracking every VM and lets go of every frame the service holds.
    pub fn stop(&mut self, host: &SharedHost) -> Result<(), String> {
        for (vm, _) in &self.groups {
            self.dedup
                .remove_vm(VmId(vm.id as u32))
                .map_err(|e| format!("dedup: VM {}: {e}", vm.name))?;
        }
        self.dedup
            .release_all(host)
            .map_err(|e| format!("dedup: releasing frames: {e}"))?;
        self.groups.clear();
        *LIVE_STATS.lock() = None;
        Ok(())
    }
}

/// The counters that have a KSM name (as in `/sys/kernel/mm/ksm`), under that name: for the
/// STAT lines and the console's `ksm` answer alike.
pub fn ksm_counters(s: &DedupStats) -> [(&'static str, u64); 7] {
    [
        ("pages_shared", s.pages_shared),
        ("pages_sharing", s.pages_sharing),
        ("pages_unshared", s.pages_unshared),
        ("pages_volatile", s.pages_volatile),
        ("full_scans", s.full_scans),
        ("zero_pages_merged", s.zero_pages_merged),
        ("cow_breaks", s.cow_breaks),
    ]
}

/// Prints dedup counters as STAT lines, each name after `prefix`.
pub fn print_counters(s: &DedupStats, prefix: &str) {
    let ours = [
        ("dedup_frames_held", s.frames_held),
        ("dedup_merges", s.merges),
        ("dedup_merge_failures", s.merge_failures),
        ("dedup_pages_skipped", s.pages_skipped),
        ("dedup_metadata_bytes", s.metadata_bytes),
        ("dedup_metadata_bytes_per_page", s.metadata_bytes_per_page()),
    ];
    for (name, value) in ksm_counters(s).into_iter().chain(ours) {
        crate::println!("STAT {prefix}{name}={value}");
    }
}

/// Frames that back pages of more than one sharing domain (a trust group, or a VM on its
/// own) among `vms` (`groups[i]` is the trust group of `vms[i]`): always 0 unless merging
/// crossed a domain boundary. Read from the frame identities in the host layer.
pub fn cross_domain_frames(host: &SharedHost, vms: &[Arc<Vm>], groups: &[Option<u32>]) -> u64 {
    let mut owner: BTreeMap<u64, (bool, u64)> = BTreeMap::new();
    let mut crossing: Vec<u64> = Vec::new();
    let st = host.lock();
    for (vm, group) in vms.iter().zip(groups) {
        let domain = domain_key(vm, *group);
        let Ok(states) = st.pages_of(vm.ram_backing) else {
            continue;
        };
        for h in states.iter().filter_map(|s| s.frame()) {
            match owner.insert(h.raw(), domain) {
                Some(other) if other != domain => crossing.push(h.raw()),
                _ => {}
            }
        }
    }
    crossing.sort_unstable();
    crossing.dedup();
    crossing.len() as u64
}

/// A sharing domain: a trust group, or one VM.
fn domain_key(vm: &Vm, group: Option<u32>) -> (bool, u64) {
    match group {
        Some(g) => (true, u64::from(g)),
        None => (false, vm.id as u64),
    }
}

/// FNV-1a over the page's 64-bit words (only to group candidates; bytes decide).
fn content_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for word in bytes.chunks_exact(8) {
        let w = u64::from_le_bytes([
            word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7],
        ]);
        hash = (hash ^ w).wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}
