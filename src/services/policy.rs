//! The `limits` and `watchdog` scenarios: one VM misbehaves (takes all the memory it can,
//! or gets stuck) beside well-behaved VMs, and the host's policy, not the scenario timeout,
//! deals with it.
//!
//! - `limits`: VMs whose workload is `hog` without an argument touch all of their RAM, more
//!   than their share of the pool (`configs/limits-*.dts`). Each must end either with exit 0
//!   (its pages were swapped) or stopped with a `memory:` reason naming its limit or the
//!   pool; every other VM must exit 0, and at least one refusal must have happened.
//! - `watchdog`: VMs running a `stuck-*` workload must be stopped by their watchdog
//!   (`watchdog-ms`) with a `watchdog:` reason; every other VM must exit 0. The first time
//!   a VM shows as stuck, a services hook prints the console's `vms` table (the same
//!   `OperatorView::vms` the operator's command answers with).
//!
//! Both run the services task (console, and swap if a layout's scenario sets it up) and
//! end with the usual teardown: every pool frame must come back.

use super::verdict::{check, verdict};
use super::{Hook, HookOutcome, RoundContext};
use crate::scenario::BootInfo;
use crate::vmm::scenarios::{layout, print_stats, specs, SCENARIO_TIMEOUT_TICKS};
use crate::vmm::vm::{VmOutcome, VmStats};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use hv_devices::vmconfig::Workload;
use hv_services::console::OperatorView;
use hv_services::watchdog::Verdict;

/// The console table was printed once already (a hook has no state of its own).
static STUCK_SHOWN: AtomicBool = AtomicBool::new(false);

/// Services hook of `watchdog`: prints the `vms` table the first time a VM shows as stuck.
fn show_first_stuck(context: &RoundContext<'_>) -> HookOutcome {
    if STUCK_SHOWN.load(Ordering::Relaxed) {
        return HookOutcome::default();
    }
    let now = crate::arch::guest::host_count();
    let stuck = context.vms.iter().find(|vm| {
        vm.outcome().is_none()
            && matches!(
                vm.progress.verdict(now, vm.watchdog_ms),
                Verdict::Stuck { .. }
            )
    });
    if let Some(vm) = stuck {
        STUCK_SHOWN.store(true, Ordering::Relaxed);
        crate::log!("watchdog: VM {} shows as stuck; console `vms`:", vm.name);
        let mut table = String::new();
        if super::view::ServicesView.vms(&mut table).is_ok() {
            for line in table.lines() {
                crate::println!("console: {line}");
            }
        }
    }
    HookOutcome::default()
}

fn no_frames(_host: &alloc::sync::Arc<super::SharedHost>) {}

/// Which VMs a scenario expects the host to stop, and with what reason.
struct Expectation {
    scenario: &'static str,
    /// Whether VM `i` of the layout is the misbehaving kind.
    misbehaves: fn(&hv_devices::vmconfig::VmSpec) -> bool,
    /// The reason such a VM must be stopped with (a prefix).
    reason: &'static str,
    /// Whether such a VM may also pass (exit 0).
    may_pass: bool,
}

fn run(info: &BootInfo, expect: &Expectation) -> Result<(), String> {
    let cpus = crate::vmm::scenarios::online_cpus(info);
    let (layout, source) = layout(info, expect.scenario)?;
    super::init_host(layout.services.guest_pool_mib)?;
    let misbehaving: Vec<bool> = layout.vms.iter().map(expect.misbehaves).collect();
    if !misbehaving.contains(&true) || !misbehaving.contains(&false) {
        return Err(format!(
            "layout {source} needs misbehaving and well-behaved VMs side by side"
        ));
    }
    crate::log!(
        "{}: {} VMs from {source} on {cpus} CPUs",
        expect.scenario,
        layout.vms.len()
    );
    let specs = specs(info, &layout, cpus)?;
    let (vms, vcpus) = crate::vmm::build_vms(&specs)?;
    STUCK_SHOWN.store(false, Ordering::Relaxed);
    if expect.scenario == "watchdog" {
        super::register(Hook {
            name: "stuck-view",
            round: show_first_stuck,
            stop: no_frames,
        });
    }
    let groups = vec![None; vms.len()];
    super::start(&vms, &groups, &layout.services, None)?;
    let start = crate::arch::cp0::count();
    crate::vmm::run(&vms, vcpus, SCENARIO_TIMEOUT_TICKS);
    let elapsed_ms = crate::arch::cp0::count().wrapping_sub(start) / 100_000;
    let contained: Vec<&str> = vms
        .iter()
        .zip(&misbehaving)
        .filter(|(_, &bad)| bad)
        .map(|(vm, _)| vm.name.as_str())
        .collect();
    crate::vmm::report(&vms, &contained);
    print_stats(&vms, cpus);
    crate::println!("STAT policy_elapsed_ms={elapsed_ms}");
    // Fair share: each VM's CPU time over its own life (per mille of one CPU).
    let now = crate::arch::cp0::count();
    for vm in &vms {
        if let Some(share) = vm.cpu_share_permille(now) {
            crate::println!("STAT cpu_permille_{}={share}", vm.name);
        }
    }
    let mut failures = Vec::new();
    for (vm, &bad) in vms.iter().zip(&misbehaving) {
        match (vm.outcome(), bad) {
            (Some(VmOutcome::Exited(0)), false) => {}
            (Some(VmOutcome::Exited(0)), true) if expect.may_pass => {}
            (Some(VmOutcome::Stopped(why)), true) if why.starts_with(expect.reason) => {}
            (outcome, true) => failures.push(format!(
                "VM {}: expected to be stopped with '{}...', ended {outcome:?}",
                vm.name, expect.reason
            )),
            (outcome, false) => failures.push(format!(
                "well-behaved VM {}: ended {outcome:?} instead of exit 0",
                vm.name
            )),
        }
    }
    if expect.scenario == "limits" {
        let refusals = crate::vmm::total(&vms, |s| &s.mem_refusals);
        crate::println!("STAT mem_refusals={refusals}");
        check(
            &mut failures,
            refusals > 0,
            format!("layout {source}: no VM was ever refused a frame (nothing tested)"),
        );
        let paid: u64 = vms
            .iter()
            .map(|vm| {
                VmStats::get(&vm.stats.mem_stopped) + VmStats::get(&vm.stats.mem_swapped_to_pay)
            })
            .sum();
        check(
            &mut failures,
            paid > 0,
            String::from("refusals happened but no VM paid (was swapped or stopped)"),
        );
    } else {
        check(
            &mut failures,
            STUCK_SHOWN.load(Ordering::Relaxed),
            String::from("no VM was ever shown as stuck in the console view"),
        );
    }
    let leaked = super::finish(vms, "")?.frames_leaked;
    check(
        &mut failures,
        leaked == 0,
        format!("{leaked} guest-pool frames leaked"),
    );
    verdict(failures)
}

/// The `limits` scenario (see the module notes).
pub fn limits(info: &BootInfo) -> Result<(), String> {
    run(
        info,
        &Expectation {
            scenario: "limits",
            misbehaves: |vm| {
                vm.workload
                    .is_some_and(|w| w.kind == Workload::Hog && w.arg.is_none())
            },
            reason: "memory: ",
            may_pass: true,
        },
    )
}

/// The `watchdog` scenario (see the module notes).
pub fn watchdog(info: &BootInfo) -> Result<(), String> {
    run(
        info,
        &Expectation {
            scenario: "watchdog",
            misbehaves: |vm| {
                vm.workload.is_some_and(|w| {
                    matches!(
                        w.kind,
                        Workload::StuckWait | Workload::StuckYield | Workload::StuckStorm
                    )
                })
            },
            reason: "watchdog: ",
            may_pass: false,
        },
    )
}
