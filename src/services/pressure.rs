//! The `swap` and `idle` scenarios: guests under memory pressure, and a guest with a known
//! working set.
//!
//! - `swap`: the VMs' RAM together is larger than the guest pool (`/services/guest-pool-mib`);
//!   the memguest `swap` workload writes all of its RAM in waves and verifies everything
//!   written so far after each wave. Passes when pages went out and came back, every guest
//!   verified all its memory, and every pool frame and swap slot was freed at the end.
//! - `idle`: the memguest `idle` workload keeps `W` pages busy (W = `workload-arg`) while the
//!   rest of its RAM idles. The working set measured at the pass that let the guest stop
//!   must be within 5 % of `W` plus the fixed pages the guest touches outside its workload
//!   region: the pages of its own image (code, data, stack), counted at the same pass. Pages
//!   above the image but outside the region are not excused: they count against the 5 %.

use super::idle::{self, IdleConfig};
use super::swap::{self, SwapSetup};
use super::verdict::{check, verdict};
use crate::scenario::BootInfo;
use crate::vmm::scenarios::{layout, print_stats, specs, SCENARIO_TIMEOUT_TICKS};
use crate::vmm::vm::Vm;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use hv_core::addr::PAGE_SIZE;

/// Working-set window of both scenarios, in passes.
const WINDOW: u8 = 4;
/// Time between idle passes in the `swap` scenario (ages for the victim choice).
const SWAP_IDLE_INTERVAL_US: u32 = 10_000;
/// Time between idle passes in the `idle` scenario.
const IDLE_INTERVAL_US: u32 = 50_000;
/// Pages aged per flush: a pass over a 64 MiB VM flushes 4 times (each flush waits for
/// every CPU in a guest to leave it).
const AGE_CHUNK_PAGES: u64 = 4096;
/// Share of its RAM each VM keeps resident under pressure, per mille.
const SWAP_RESERVE_PERMILLE: u32 = 50;
/// Largest error of the working-set estimate, per mille.
const IDLE_TOLERANCE_PERMILLE: u64 = 50;

/// The `swap` scenario (see the module notes).
pub fn swap_scenario(info: &BootInfo) -> Result<(), String> {
    let cpus = crate::vmm::scenarios::online_cpus(info);
    let (layout, source) = layout(info, "swap")?;
    let host = super::init_host(layout.services.guest_pool_mib)?;
    let pool_frames = host.lock().pool().free_count();
    let specs = specs(info, &layout, cpus)?;
    let guest_pages: u64 = specs.iter().map(|s| s.ram_bytes / PAGE_SIZE).sum();
    crate::log!(
        "swap: {} VMs from {source} on {cpus} CPUs, {guest_pages} pages of guest RAM over a pool of {pool_frames} frames",
        specs.len()
    );
    if guest_pages <= pool_frames as u64 {
        return Err(format!(
            "layout {source} does not overcommit: {guest_pages} guest pages fit the {pool_frames}-frame pool (set /services/guest-pool-mib)"
        ));
    }
    let (vms, vcpus) = crate::vmm::build_vms(&specs)?;
    idle::start(
        &vms,
        IdleConfig {
            window: WINDOW,
            interval_us: SWAP_IDLE_INTERVAL_US,
            chunk_pages: AGE_CHUNK_PAGES,
        },
    )?;
    // Room for every page that cannot be resident (pages of random data do not compress),
    // plus slack for the clean copies of pages read back.
    let area_frames = (guest_pages as usize - pool_frames) + pool_frames / 4;
    let low = (pool_frames / 64).max(32);
    swap::start(
        host,
        &vms,
        SwapSetup {
            area_frames,
            low_watermark: low,
            high_watermark: 2 * low,
            reserve_permille: SWAP_RESERVE_PERMILLE,
        },
    )?;
    let groups = vec![None; vms.len()];
    super::start(&vms, &groups, &layout.services, None)?;
    crate::vmm::run(&vms, vcpus, SCENARIO_TIMEOUT_TICKS);
    let passed = crate::vmm::report(&vms, &[]);
    print_stats(&vms, cpus);
    idle::print_stats();
    swap::print_stats();
    let counters = host.lock().swap_counters();
    let mut failures = Vec::new();
    check(
        &mut failures,
        counters.written + counters.clean_reused > 0,
        String::from("no page was swapped out"),
    );
    check(
        &mut failures,
        counters.read_back > 0,
        String::from("no page was swapped back in"),
    );
    check(
        &mut failures,
        passed == vms.len(),
        format!("{passed} of {} VMs passed", vms.len()),
    );
    let leaked = super::finish(vms, "")?.frames_leaked;
    idle::clear();
    let slots = swap::release(host);
    crate::println!("STAT swap_slots_leaked={slots}");
    check(
        &mut failures,
        leaked == 0,
        format!("{leaked} guest-pool frames leaked"),
    );
    check(
        &mut failures,
        slots == 0,
        format!("{slots} swap slots still held after teardown"),
    );
    verdict(failures)
}

/// What the idle guest reported: its working set and the pass count that let it stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IdleReport {
    pages: u64,
    region_start: u64,
    region_end: u64,
    passes_seen: u64,
}

/// Parses `memguest: working set W pages (GPA 0xA..0xB), ...` and
/// `memguest: idle passes S -> N after L loops` from the VM's recorded lines.
fn idle_report(vm: &Vm) -> Option<IdleReport> {
    let lines = vm.recorded_lines();
    let set = lines
        .iter()
        .find_map(|l| l.strip_prefix("memguest: working set "))?;
    let (pages, rest) = set.split_once(" pages (GPA ")?;
    let (range, _) = rest.split_once(')')?;
    let (start, end) = range.split_once("..")?;
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let passes = lines
        .iter()
        .find_map(|l| l.strip_prefix("memguest: idle passes "))?;
    let (_, after) = passes.split_once(" -> ")?;
    let (now, _) = after.split_once(' ')?;
    Some(IdleReport {
        pages: pages.parse().ok()?,
        region_start: hex(start)? / PAGE_SIZE,
        region_end: hex(end)?.div_ceil(PAGE_SIZE),
        passes_seen: now.parse().ok()?,
    })
}

/// Checks one VM's estimate against what it reported; prints its measurement.
fn judge_idle(vm: &Vm, failures: &mut Vec<String>) {
    let name = &vm.name;
    let Some(report) = idle_report(vm) else {
        failures.push(format!("VM {name}: no working-set report from the guest"));
        return;
    };
    let Some((seen, ages)) = idle::ages_seen_by_guest(vm.id) else {
        failures.push(format!("VM {name}: the guest never read the pass count"));
        return;
    };
    if seen != report.passes_seen {
        failures.push(format!(
            "VM {name}: the guest stopped at pass {} but last read {seen}",
            report.passes_seen
        ));
        return;
    }
    let backing = vm.ram_backing;
    let image_pages = vm.image_end.div_ceil(PAGE_SIZE);
    let stats = ages.stats();
    let in_region = ages.working_set_in(backing, report.region_start..report.region_end);
    let fixed = ages.working_set_in(backing, 0..image_pages.min(report.region_start));
    let elsewhere = stats.working_set - in_region - fixed;
    let expected = report.pages + fixed;
    let error = stats.working_set.abs_diff(expected);
    crate::println!("STAT idle_measured_at_pass={}", report.passes_seen);
    crate::println!("STAT idle_expected_working_set_pages={}", report.pages);
    crate::println!("STAT idle_fixed_pages={fixed}");
    crate::println!("STAT idle_image_pages={image_pages}");
    crate::println!("STAT idle_working_set_pages={}", stats.working_set);
    crate::println!("STAT idle_working_set_in_region_pages={in_region}");
    crate::println!("STAT idle_working_set_elsewhere_pages={elsewhere}");
    crate::println!(
        "STAT idle_error_permille={}",
        error * 1000 / expected.max(1)
    );
    check(
        failures,
        error * 1000 <= expected * IDLE_TOLERANCE_PERMILLE,
        format!(
            "VM {name}: working set {} pages, expected {} + {fixed} fixed (more than 5 % off)",
            stats.working_set, report.pages
        ),
    );
    check(
        failures,
        in_region.abs_diff(report.pages) * 1000 <= report.pages * IDLE_TOLERANCE_PERMILLE,
        format!(
            "VM {name}: {in_region} of its {} working-set pages seen",
            report.pages
        ),
    );
}

/// The `idle` scenario (see the module notes).
pub fn idle_scenario(info: &BootInfo) -> Result<(), String> {
    let cpus = crate::vmm::scenarios::online_cpus(info);
    let (layout, source) = layout(info, "idle")?;
    super::init_host(layout.services.guest_pool_mib)?;
    crate::log!(
        "idle: {} VMs from {source} on {cpus} CPUs",
        layout.vms.len()
    );
    let specs = specs(info, &layout, cpus)?;
    let (vms, vcpus) = crate::vmm::build_vms(&specs)?;
    idle::start(
        &vms,
        IdleConfig {
            window: WINDOW,
            interval_us: IDLE_INTERVAL_US,
            chunk_pages: AGE_CHUNK_PAGES,
        },
    )?;
    let groups = vec![None; vms.len()];
    super::start(&vms, &groups, &layout.services, None)?;
    crate::vmm::run(&vms, vcpus, SCENARIO_TIMEOUT_TICKS);
    let passed = crate::vmm::report(&vms, &[]);
    print_stats(&vms, cpus);
    idle::print_stats();
    let mut failures = Vec::new();
    for vm in &vms {
        judge_idle(vm, &mut failures);
    }
    check(
        &mut failures,
        passed == vms.len(),
        format!("{passed} of {} VMs passed", vms.len()),
    );
    let leaked = super::finish(vms, "")?.frames_leaked;
    idle::clear();
    check(
        &mut failures,
        leaked == 0,
        format!("{leaked} guest-pool frames leaked"),
    );
    verdict(failures)
}
