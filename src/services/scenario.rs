//! The memory-service scenarios: `dedup` (same-page merging across a trust group, with an
//! outsider that must share nothing).

use super::dedup::{self, Measurement};
use super::verdict::{check, verdict};
use crate::scenario::BootInfo;
use crate::vmm::scenarios::{layout, print_stats, specs, SCENARIO_TIMEOUT_TICKS};
use crate::vmm::vm::Vm;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

/// Full scans (after the guests filled their memory) within which merging must be done.
const DEDUP_SCANS: u64 = 2;
/// Merged share of what could be merged that `dedup` needs, in per mille.
const DEDUP_MIN_PERMILLE: u64 = 990;

/// Whether every VM has filled its memory (its `memguest: dedup filled` line) or ended.
fn all_filled(vms: &[Arc<Vm>]) -> bool {
    vms.iter().all(|vm| {
        vm.outcome().is_some()
            || vm
                .recorded_lines()
                .iter()
                .any(|line| line.starts_with("memguest: dedup filled"))
    })
}

/// Prints the measurement taken after [`DEDUP_SCANS`] full scans.
fn print_measurement(m: &Measurement) {
    crate::println!("STAT measured_after_full_scans={}", m.full_scans);
    crate::println!("STAT mergeable_pages={}", m.mergeable_pages);
    crate::println!("STAT mergeable_zero_pages={}", m.mergeable_zero_pages);
    dedup::print_counters(&m.stats, "");
    crate::println!("STAT resident_pages={}", m.resident_pages);
    crate::println!("STAT distinct_frames={}", m.distinct_frames);
    crate::println!("STAT cross_domain_frames={}", m.cross_domain_frames);
}

/// The `dedup` scenario: VMs of one trust group with mostly equal memory and one VM outside
/// it. Once every guest filled its memory the scanner starts; after [`DEDUP_SCANS`] full
/// scans what was merged is compared with what guest memory allowed; then the guests write
/// (copy-on-write) and verify all their memory. The outsider shares no frame with anyone.
pub fn dedup_scenario(info: &BootInfo) -> Result<(), String> {
    let cpus = crate::vmm::scenarios::online_cpus(info);
    let (layout, source) = layout(info, "dedup")?;
    if !layout.services.dedup {
        return Err(format!(
            "layout {source} does not turn dedup on (/services)"
        ));
    }
    super::init_host(layout.services.guest_pool_mib)?;
    crate::log!(
        "dedup: {} VMs from {source} on {cpus} CPUs",
        layout.vms.len()
    );
    let specs = specs(info, &layout, cpus)?;
    let (vms, vcpus) = crate::vmm::build_vms(&specs)?;
    let groups: Vec<Option<u32>> = layout.vms.iter().map(|vm| vm.trust_group).collect();
    dedup::measure_after(DEDUP_SCANS);
    super::start(&vms, &groups, &layout.services, Some(all_filled))?;
    crate::vmm::run(&vms, vcpus, SCENARIO_TIMEOUT_TICKS);
    let passed = crate::vmm::report(&vms, &[]);
    print_stats(&vms, cpus);
    let crossing_at_end = dedup::cross_domain_frames(super::host(), &vms, &groups);
    let mut failures = Vec::new();
    match dedup::measurement() {
        Some(m) => {
            print_measurement(&m);
            let merged = m.stats.pages_sharing;
            check(
                &mut failures,
                merged * 1000 >= m.mergeable_pages * DEDUP_MIN_PERMILLE,
                format!(
                    "{merged} of {} mergeable pages shared after {DEDUP_SCANS} full scans",
                    m.mergeable_pages
                ),
            );
            check(
                &mut failures,
                m.stats.zero_pages_merged * 1000 >= m.mergeable_zero_pages * DEDUP_MIN_PERMILLE,
                format!(
                    "{} of {} zero pages merged after {DEDUP_SCANS} full scans",
                    m.stats.zero_pages_merged, m.mergeable_zero_pages
                ),
            );
            check(
                &mut failures,
                m.mergeable_pages > 0,
                String::from("the guests' memory had nothing to merge"),
            );
            check(
                &mut failures,
                m.cross_domain_frames == 0,
                format!(
                    "{} frames shared across trust domains at the measurement",
                    m.cross_domain_frames
                ),
            );
        }
        None => failures.push(format!(
            "no measurement: dedup did not complete {DEDUP_SCANS} full scans after the fill"
        )),
    }
    crate::println!("STAT cross_domain_frames_at_end={crossing_at_end}");
    check(
        &mut failures,
        crossing_at_end == 0,
        format!("{crossing_at_end} frames shared across trust domains at the end"),
    );
    check(
        &mut failures,
        passed == vms.len(),
        format!("{passed} of {} VMs passed", vms.len()),
    );
    let leaked = super::finish(vms, "end_")?.frames_leaked;
    check(
        &mut failures,
        leaked == 0,
        format!("{leaked} guest-pool frames leaked"),
    );
    verdict(failures)
}
