//! The scenarios that run every memory service at once: `stress` (aggressive rates, many
//! guest memory operations, nothing may be lost) and `demo` (a short readable run ending in
//! a table of memory saved per service; the default of `./qemu-run.sh`). The table is the
//! last output before the RESULT line and shows the run's `services::Finished::saved`, the
//! figures of the `STAT sample` and `STAT <service>_saved_pages[_peak]` lines.
//!
//! Both take their VMs from the layout: memguest VMs (workload from the layout) and VMs
//! running `balloonguest`, whose balloon the host takes through one cycle: half the VM's
//! RAM once the driver is ready, then back to 0 (the guest then verifies its memory). Dedup
//! (`/services` `dedup`), idle tracking, swap (the pool may be smaller than the guests' RAM:
//! `guest-pool-mib`) and the balloon bookkeeping run in every services round.

use super::balloon;
use super::idle::{self, IdleConfig};
use super::swap::{self, SwapSetup};
use super::verdict::{check, verdict};
use super::{HookOutcome, RoundContext};
use crate::scenario::BootInfo;
use crate::vmm::scenarios::{layout, print_stats, specs, SCENARIO_TIMEOUT_TICKS};
use crate::vmm::vm::Vm;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use hv_core::addr::PAGE_SIZE;
use hv_services::savings::Summary;
use spin::Mutex;

/// How aggressively the services run.
#[derive(Debug, Clone, Copy)]
struct Rates {
    /// Time between idle passes over a VM.
    idle_interval_us: u32,
    /// Free pool frames (per mille of the pool) below which swap evicts.
    low_watermark_permille: usize,
}

/// `stress`: age often; swap keeps a free reserve (the pool is overcommitted anyway).
const STRESS_RATES: Rates = Rates {
    idle_interval_us: 5_000,
    low_watermark_permille: 10,
};
/// `demo`: gentler.
const DEMO_RATES: Rates = Rates {
    idle_interval_us: 20_000,
    low_watermark_permille: 60,
};
/// Working-set window in idle passes.
const WINDOW: u8 = 4;
/// Pages aged per flush of derived translations.
const AGE_CHUNK_PAGES: u64 = 4096;
/// Share of its RAM each VM keeps resident under pressure, per mille.
const RESERVE_PERMILLE: u32 = 50;
/// Count ticks `stress` may take (~1.2 million verified guest operations under every
/// service: about a minute of wall time on an idle 2-core host, more under load).
const STRESS_TIMEOUT_TICKS: u64 = 30_000_000_000;
/// Guest memory operations `stress` needs in total.
const STRESS_MIN_OPS: u64 = 1_000_000;

/// Where one balloon cycle stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    WaitDriver,
    Inflating,
    Deflating,
    Done,
}

/// The host side of one balloonguest VM's cycle.
#[derive(Debug)]
struct Cycle {
    vm: String,
    target_pages: u64,
    phase: Phase,
}

static CYCLES: Mutex<Vec<Cycle>> = Mutex::new(Vec::new());

/// Moves every balloon cycle on as far as its balloon's state allows (a round hook).
fn drive_balloons(_ctx: &RoundContext<'_>) -> HookOutcome {
    let mut changed = false;
    for cycle in CYCLES.lock().iter_mut() {
        let Some(b) = balloon::find(&cycle.vm) else {
            continue;
        };
        let state = b.snapshot();
        let next = match cycle.phase {
            Phase::WaitDriver if state.driver_ok => {
                match balloon::set_target(&cycle.vm, (cycle.target_pages * PAGE_SIZE) >> 20) {
                    Ok(pages) => {
                        cycle.target_pages = pages;
                        Phase::Inflating
                    }
                    Err(e) => {
                        crate::log!("{}: balloon: {e}", cycle.vm);
                        Phase::Done
                    }
                }
            }
            Phase::Inflating if u64::from(state.actual_pages) >= cycle.target_pages => {
                crate::log!(
                    "{}: balloon inflated to {} pages; deflating",
                    cycle.vm,
                    state.actual_pages
                );
                match balloon::set_target(&cycle.vm, 0) {
                    Ok(_) => Phase::Deflating,
                    Err(e) => {
                        crate::log!("{}: balloon: {e}", cycle.vm);
                        Phase::Done
                    }
                }
            }
            Phase::Deflating if state.actual_pages == 0 => Phase::Done,
            other => other,
        };
        changed |= next != cycle.phase;
        cycle.phase = next;
    }
    HookOutcome { changed }
}

fn forget_balloons(_host: &Arc<super::SharedHost>) {
    CYCLES.lock().clear();
}

/// The number after `key` in the first recorded line of `vm` that contains it.
fn guest_number(vm: &Vm, key: &str) -> Option<u64> {
    vm.recorded_lines().iter().find_map(|line| {
        let rest = &line[line.find(key)? + key.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

/// What a run of every service measured.
#[derive(Debug, Default)]
struct Outcome {
    passed: usize,
    vms: usize,
    stress_ops: u64,
    bad_pages: u64,
    stress_vms: usize,
    leaked: u64,
    swap_slots_leaked: u64,
    cycles_done: usize,
    cycles: usize,
    swapped_out: u64,
    swapped_in: u64,
    dedup_merges: u64,
    /// Memory saved per service (the demo's table).
    saved: Summary,
}

/// Builds the layout's VMs, runs them with every service, tears everything down.
fn run_all_services(
    info: &BootInfo,
    name: &str,
    rates: Rates,
    timeout_ticks: u64,
) -> Result<Outcome, String> {
    let cpus = crate::vmm::scenarios::online_cpus(info);
    let (layout, source) = layout(info, name)?;
    if !layout.services.dedup {
        return Err(format!(
            "layout {source} does not turn dedup on (/services)"
        ));
    }
    let host = super::init_host(layout.services.guest_pool_mib)?;
    let pool_frames = host.lock().pool().free_count();
    let specs = specs(info, &layout, cpus)?;
    let guest_pages: u64 = specs.iter().map(|s| s.ram_bytes / PAGE_SIZE).sum();
    crate::log!(
        "{name}: {} VMs from {source} on {cpus} CPUs, {guest_pages} guest pages over a pool of {pool_frames} frames",
        specs.len()
    );
    let (vms, vcpus) = crate::vmm::build_vms(&specs)?;
    balloon::expect_bad_requests_of_test_guests(
        &vms,
        layout.vms.iter().map(|vm| vm.image.as_str()),
    );
    idle::start(
        &vms,
        IdleConfig {
            window: WINDOW,
            interval_us: rates.idle_interval_us,
            chunk_pages: AGE_CHUNK_PAGES,
        },
    )?;
    let low = (pool_frames * rates.low_watermark_permille / 1000).max(32);
    swap::start(
        host,
        &vms,
        SwapSetup {
            area_frames: (guest_pages as usize).saturating_sub(pool_frames) + pool_frames / 2,
            low_watermark: low,
            high_watermark: 2 * low,
            reserve_permille: RESERVE_PERMILLE,
        },
    )?;
    {
        let mut cycles = CYCLES.lock();
        cycles.clear();
        for (vm, spec) in vms.iter().zip(&layout.vms) {
            if spec.image == balloon::BAD_REQUEST_TEST_IMAGE && !vm.balloons.is_empty() {
                cycles.push(Cycle {
                    vm: vm.name.clone(),
                    target_pages: vm.ram_bytes / PAGE_SIZE / 2,
                    phase: Phase::WaitDriver,
                });
            }
        }
    }
    balloon::register();
    super::register(super::Hook {
        name: "balloon-cycles",
        round: drive_balloons,
        stop: forget_balloons,
    });
    let groups: Vec<Option<u32>> = layout.vms.iter().map(|vm| vm.trust_group).collect();
    super::start(&vms, &groups, &layout.services, None)?;
    crate::vmm::run(&vms, vcpus, timeout_ticks);
    let mut outcome = Outcome {
        passed: crate::vmm::report(&vms, &[]),
        vms: vms.len(),
        ..Outcome::default()
    };
    {
        let cycles = CYCLES.lock();
        outcome.cycles = cycles.len();
        outcome.cycles_done = cycles.iter().filter(|c| c.phase == Phase::Done).count();
    }
    for vm in &vms {
        if let Some(ops) = guest_number(vm, "memguest: stress ops ") {
            outcome.stress_ops += ops;
            outcome.stress_vms += 1;
            outcome.bad_pages += guest_number(vm, " bad_pages ").unwrap_or(u64::MAX / 4);
        }
    }
    print_stats(&vms, cpus);
    idle::print_stats();
    swap::print_stats();
    balloon::print_stats();
    let counters = host.lock().swap_counters();
    outcome.swapped_out = counters.written + counters.clean_reused;
    outcome.swapped_in = counters.read_back;
    outcome.dedup_merges = super::dedup::live_stats().map_or(0, |s| s.merges);
    let finished = super::finish(vms, "")?;
    outcome.leaked = finished.frames_leaked;
    outcome.saved = finished.saved;
    idle::clear();
    outcome.swap_slots_leaked = swap::release(host);
    crate::println!("STAT swap_slots_leaked={}", outcome.swap_slots_leaked);
    Ok(outcome)
}

/// The checks both scenarios make.
fn common_checks(o: &Outcome) -> Vec<String> {
    let mut failures = Vec::new();
    check(
        &mut failures,
        o.passed == o.vms,
        format!("{} of {} VMs passed", o.passed, o.vms),
    );
    check(
        &mut failures,
        o.leaked == 0,
        format!("{} guest-pool frames leaked", o.leaked),
    );
    check(
        &mut failures,
        o.swap_slots_leaked == 0,
        format!("{} swap slots leaked", o.swap_slots_leaked),
    );
    check(
        &mut failures,
        o.cycles_done == o.cycles,
        format!("{} of {} balloon cycles done", o.cycles_done, o.cycles),
    );
    failures
}

/// The `stress` scenario (see the module notes): at least [`STRESS_MIN_OPS`] guest memory
/// operations, `STAT bad_pages=0`, every service active, `STAT frames_leaked=0`.
pub fn stress(info: &BootInfo) -> Result<(), String> {
    let o = run_all_services(info, "stress", STRESS_RATES, STRESS_TIMEOUT_TICKS)?;
    crate::println!("STAT stress_ops={}", o.stress_ops);
    crate::println!("STAT bad_pages={}", o.bad_pages);
    let mut failures = common_checks(&o);
    check(
        &mut failures,
        o.stress_vms >= 4,
        format!("{} VMs reported a stress result, 4 needed", o.stress_vms),
    );
    check(
        &mut failures,
        o.stress_ops >= STRESS_MIN_OPS,
        format!(
            "{} guest memory operations, {STRESS_MIN_OPS} needed",
            o.stress_ops
        ),
    );
    check(
        &mut failures,
        o.bad_pages == 0,
        format!("{} bad pages", o.bad_pages),
    );
    check(
        &mut failures,
        o.swapped_out > 0 && o.swapped_in > 0,
        format!(
            "swap did not run both ways ({} out, {} in)",
            o.swapped_out, o.swapped_in
        ),
    );
    verdict(failures)
}

/// The `demo` scenario: every service on a small layout, then the table of memory saved
/// (the last output before the RESULT line).
pub fn demo(info: &BootInfo) -> Result<(), String> {
    let o = run_all_services(info, "demo", DEMO_RATES, SCENARIO_TIMEOUT_TICKS)?;
    let mut failures = common_checks(&o);
    // Under stress pages change faster than a scan, so merges are required in demo only.
    check(
        &mut failures,
        o.dedup_merges > 0,
        String::from("dedup merged nothing"),
    );
    let mut table = String::new();
    // Writing to a String cannot fail.
    let _ = o.saved.write_table(&mut table);
    crate::console::print_prefixed("", &table);
    verdict(failures)
}
