//! The `balloon` scenario (issue 6): every VM of configs/balloon.dts runs the balloon guest.
//! The host takes each VM's balloon through one cycle while the guests run:
//!
//! 1. when the guest first yields with its driver ready (it has sent its hostile requests
//!    and filled its RAM by then), the host notes the pool's free frames and the VM's
//!    resident frames and, unless the layout gave the VM a target, sets the target to half
//!    the VM's RAM;
//! 2. once the driver reports `actual` = target, the host notes the same figures again
//!    (the frames came back to the pool), asks the guest for fresh statistics and sets the
//!    target to 0;
//! 3. once the driver is back at 0, the cycle is done; the guest re-touches and verifies
//!    its memory and exits.
//!
//! PASS needs every guest to exit 0, every cycle done with at least the target's pages of
//! frames returned and the VM's resident frames down by as much, the refusals the host
//! counted (`STAT balloon_rejected=`) equal to what the guests say they sent, and every
//! guest to have taken the device's configuration-change interrupt (Cause.IP3).

use super::balloon::{self, Balloon};
use super::verdict::verdict;
use crate::scenario::BootInfo;
use crate::vmm::scenarios;
use crate::vmm::vm::Vm;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use hv_core::addr::PAGE_SIZE;
use spin::Mutex;

/// Count ticks the scenario may take before unfinished VMs are stopped.
const TIMEOUT_TICKS: u64 = 6_000_000_000;

/// Where one VM's cycle stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the driver (DRIVER_OK) and the guest's first yield.
    WaitDriver,
    /// Target set; waiting for `actual` to reach it.
    Inflating,
    /// Target back at 0; waiting for `actual` to reach 0.
    Deflating,
    /// Cycle complete.
    Done,
}

/// Host memory figures at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Figures {
    /// Free frames in the VM's host pool.
    pool_free: usize,
    /// RAM pages of the VM that hold a frame.
    resident: usize,
}

/// One VM's cycle.
#[derive(Debug)]
struct Cycle {
    vm: Arc<Vm>,
    balloon: Arc<Balloon>,
    phase: Phase,
    target_pages: u64,
    before: Figures,
    inflated: Figures,
    deflated: Figures,
    frames_returned_at_inflate: u64,
}

/// The cycles of the running scenario (empty outside it).
static CYCLES: Mutex<Vec<Cycle>> = Mutex::new(Vec::new());

fn figures(vm: &Vm) -> Figures {
    let host = vm.memory.host().lock();
    let resident = host
        .pages_of(vm.ram_backing)
        .map(|pages| pages.iter().filter(|p| p.frame().is_some()).count())
        .unwrap_or(0);
    Figures {
        pool_free: host.pool().free_count(),
        resident,
    }
}

/// The guest of `vm` yielded: advances its cycle, if the scenario runs one.
pub fn on_yield(vm: &Vm) {
    let mut cycles = CYCLES.lock();
    if let Some(cycle) = cycles.iter_mut().find(|c| c.vm.id == vm.id) {
        advance(cycle);
    }
}

/// Moves a cycle on as far as the balloon's state allows (see the module notes).
fn advance(cycle: &mut Cycle) {
    let state = cycle.balloon.snapshot();
    let vm = cycle.vm.clone();
    let name = &vm.name;
    match cycle.phase {
        Phase::WaitDriver if state.driver_ok => {
            cycle.before = figures(&vm);
            cycle.target_pages = u64::from(state.target_pages);
            if cycle.target_pages == 0 {
                let half_mib = (vm.ram_bytes / 2) >> 20;
                match balloon::set_target(name, half_mib) {
                    Ok(pages) => cycle.target_pages = pages,
                    Err(e) => {
                        crate::log!("balloon: VM {name}: {e}");
                        cycle.phase = Phase::Done;
                        return;
                    }
                }
            } else {
                crate::log!(
                    "balloon: VM {name}: target {} pages from the layout",
                    cycle.target_pages
                );
            }
            cycle.phase = Phase::Inflating;
        }
        Phase::Inflating if u64::from(state.actual_pages) >= cycle.target_pages => {
            cycle.inflated = figures(&vm);
            cycle.frames_returned_at_inflate = state.policy.frames_returned;
            crate::log!(
                "balloon: VM {name} inflated to {} pages: pool free frames {} -> {}, VM \
                 resident frames {} -> {}, frames returned {}",
                state.actual_pages,
                cycle.before.pool_free,
                cycle.inflated.pool_free,
                cycle.before.resident,
                cycle.inflated.resident,
                state.policy.frames_returned
            );
            cycle.balloon.request_stats();
            if let Err(e) = balloon::set_target(name, 0) {
                crate::log!("balloon: VM {name}: {e}");
            }
            cycle.phase = Phase::Deflating;
        }
        Phase::Deflating if state.actual_pages == 0 => {
            cycle.deflated = figures(&vm);
            let stats: Vec<String> = state
                .guest_stats
                .iter()
                .map(|(tag, value)| format!("{tag}:{value}"))
                .collect();
            crate::log!(
                "balloon: VM {name} deflated to 0: pool free frames {}, guest statistics \
                 (tag:value) {}",
                cycle.deflated.pool_free,
                stats.join(" ")
            );
            cycle.phase = Phase::Done;
        }
        _ => {}
    }
}

/// The number after `prefix` on the guest's first recorded line that starts with it.
fn guest_figure(vm: &Vm, prefix: &str) -> Option<u64> {
    vm.recorded_lines().iter().find_map(|line| {
        line.strip_prefix(prefix)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// Run-time targets the host must refuse: a VM without a balloon (or no such VM), and a
/// target larger than the VM's RAM. Neither may change any balloon.
fn check_bad_targets(vms: &[Arc<Vm>]) -> Result<(), String> {
    let Some(vm) = vms.first() else {
        return Ok(());
    };
    let too_big = (vm.ram_bytes >> 20) + 1;
    match balloon::set_target("no-such-vm", 1) {
        Err(e @ balloon::TargetError::NoBalloon(_)) => {
            crate::log!("balloon: refused as it must: {e}")
        }
        other => return Err(format!("target for a VM that does not exist: {other:?}")),
    }
    match balloon::set_target(&vm.name, too_big) {
        Err(e @ balloon::TargetError::Target(_)) => crate::log!("balloon: refused as it must: {e}"),
        other => {
            return Err(format!(
                "target of {too_big} MiB for VM {}: {other:?}",
                vm.name
            ))
        }
    }
    Ok(())
}

/// Checks one VM's cycle; `Err` names what failed.
fn judge_cycle(cycle: &Cycle) -> Result<(), String> {
    let name = &cycle.vm.name;
    if cycle.phase != Phase::Done || cycle.target_pages == 0 {
        return Err(format!(
            "VM {name}: balloon cycle stopped at {:?}",
            cycle.phase
        ));
    }
    let target = cycle.target_pages as usize;
    if (cycle.frames_returned_at_inflate as usize) < target {
        return Err(format!(
            "VM {name}: {} frames returned for a target of {target} pages",
            cycle.frames_returned_at_inflate
        ));
    }
    if cycle.before.resident < cycle.inflated.resident + target {
        return Err(format!(
            "VM {name}: resident frames went from {} to {} only",
            cycle.before.resident, cycle.inflated.resident
        ));
    }
    Ok(())
}

/// The `balloon` scenario (see the module notes).
pub fn balloon(info: &BootInfo) -> Result<(), String> {
    let cpus = crate::vmm::scenarios::online_cpus(info);
    let (layout, source) = scenarios::layout(info, "balloon")?;
    crate::log!(
        "balloon: {} VMs from {source} on {cpus} CPUs",
        layout.vms.len()
    );
    super::init_host(layout.services.guest_pool_mib)?;
    let specs = scenarios::specs(info, &layout, cpus)?;
    let (vms, vcpus) = crate::vmm::build_vms(&specs)?;
    balloon::expect_bad_requests_of_test_guests(
        &vms,
        layout.vms.iter().map(|vm| vm.image.as_str()),
    );
    {
        let mut cycles = CYCLES.lock();
        for vm in &vms {
            let Some(balloon) = vm.balloons.first() else {
                return Err(format!("VM {} has no balloon", vm.name));
            };
            cycles.push(Cycle {
                vm: vm.clone(),
                balloon: balloon.clone(),
                phase: Phase::WaitDriver,
                target_pages: 0,
                before: Figures::default(),
                inflated: Figures::default(),
                deflated: Figures::default(),
                frames_returned_at_inflate: 0,
            });
        }
    }
    let refusals = check_bad_targets(&vms);
    let groups: Vec<Option<u32>> = layout.vms.iter().map(|vm| vm.trust_group).collect();
    balloon::register();
    super::start(&vms, &groups, &layout.services, None)?;
    crate::vmm::run(&vms, vcpus, TIMEOUT_TICKS);
    balloon::tick();
    let mut cycles: Vec<Cycle> = core::mem::take(&mut *CYCLES.lock());
    // A guest exits right after deflating, without another yield: look once more.
    for cycle in &mut cycles {
        advance(cycle);
    }
    let passed = crate::vmm::report(&vms, &[]);
    scenarios::print_stats(&vms, cpus);
    balloon::print_stats();
    let mut failures: Vec<String> = Vec::new();
    if let Err(why) = refusals {
        failures.push(why);
    }
    let (mut returned, mut pool_gain) = (0u64, 0i64);
    for cycle in &cycles {
        returned += cycle.frames_returned_at_inflate;
        pool_gain += cycle.inflated.pool_free as i64 - cycle.before.pool_free as i64;
        if let Err(why) = judge_cycle(cycle) {
            failures.push(why);
        }
    }
    crate::println!("STAT balloon_pool_free_gain_at_inflate={pool_gain}");
    crate::println!(
        "STAT balloon_saved_mib_at_inflate={}",
        (returned * PAGE_SIZE) >> 20
    );
    let sent: Option<u64> = vms
        .iter()
        .map(|vm| guest_figure(vm, "BALLOON hostile sent="))
        .sum();
    // Every target change after DRIVER_OK raised the configuration-change interrupt, and
    // each guest takes it on Cause.IP3.
    let config_irqs: Vec<Option<u64>> = vms
        .iter()
        .map(|vm| guest_figure(vm, "BALLOON interrupts config="))
        .collect();
    crate::println!(
        "STAT balloon_guest_config_irqs={}",
        config_irqs.iter().flatten().sum::<u64>()
    );
    for (vm, irqs) in vms.iter().zip(&config_irqs) {
        if irqs.is_none_or(|n| n == 0) {
            failures.push(format!(
                "VM {} took no configuration-change interrupt",
                vm.name
            ));
        }
    }
    let rejected: u64 = balloon::all().iter().map(|b| b.snapshot().rejected()).sum();
    crate::println!("STAT balloon_hostile_sent={}", sent.unwrap_or(0));
    match sent {
        None => failures.push(String::from("a guest did not report its hostile requests")),
        Some(0) => failures.push(String::from("the guests sent no hostile requests")),
        Some(n) if n != rejected => failures.push(format!(
            "guests sent {n} hostile requests, the host rejected {rejected}"
        )),
        Some(_) => {}
    }
    if passed != vms.len() {
        failures.push(format!("{} of {} VMs passed", passed, vms.len()));
    }
    // Teardown: every frame of the pool must come back.
    drop(cycles);
    match super::finish(vms, "").map(|f| f.frames_leaked) {
        Ok(0) => {}
        Ok(leaked) => failures.push(format!("{leaked} pool frames leaked")),
        Err(why) => failures.push(why),
    }
    verdict(failures)
}
