//! The hypervisor proper: VMs, vCPUs, their exit handling and scheduling.
//!
//! - [`vm`]: a VM (memory core object over firmware frames, console, result).
//! - [`vcpu`]: guest entry and the exit dispatcher.
//! - [`sched`]: round robin of vCPUs over the host CPUs.
//! - [`asid`], [`flush`]: host ASIDs for guest mappings and remote invalidation.
//! - [`loader`], [`images`]: guest images (embedded at build time, or from an initrd).
//! - [`devices`]: guest accesses to guest-physical addresses without RAM.
//! - [`bench`], [`svc_bench`]: instruction-cost benchmarks of guest exits and of the memory
//!   services; [`sidebyside`]: the same workloads bare-metal and as a guest (tools/bench.sh).

pub mod asid;
pub mod bench;
pub mod devices;
pub mod flush;
pub mod images;
pub mod isolation;
pub mod limits;
pub mod liveness;
pub mod loader;
pub mod scenarios;
pub mod sched;
pub mod sidebyside;
pub mod svc_bench;
pub mod vcpu;
pub mod vm;

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use vcpu::Vcpu;
use vm::{Vm, VmOutcome, VmSpec, VmStats};

/// Guest TLB size offered to every vCPU (the ABI's 64 entries).
const GUEST_TLB_ENTRIES: usize = 64;

/// Builds the VMs of `specs` and their vCPUs (numbered from 0 within each VM).
pub fn build_vms(specs: &[VmSpec<'static>]) -> Result<(Vec<Arc<Vm>>, Vec<Vcpu>), String> {
    let mut vms: Vec<Arc<Vm>> = Vec::new();
    let mut vcpus = Vec::new();
    for (id, spec) in specs.iter().enumerate() {
        let vm = Vm::build(id, spec).map_err(|e| format!("VM {}: {e}", spec.name))?;
        let vm = Arc::new(vm);
        crate::log!(
            "VM {} (id {id}): {} vCPU(s), {} KiB RAM, image up to GPA {:#x}, entry {:#x}",
            vm.name,
            vm.vcpus,
            vm.ram_bytes / 1024,
            vm.image_end,
            vm.entry
        );
        for index in 0..vm.vcpus {
            vcpus.push(Vcpu::new(vm.clone(), index, GUEST_TLB_ENTRIES)?);
        }
        vms.push(vm);
    }
    // Each VM can find the others (the one that pays for memory may be another).
    let peers: Vec<_> = vms.iter().map(Arc::downgrade).collect();
    for vm in &vms {
        vm.set_peers(peers.clone());
    }
    Ok((vms, vcpus))
}

/// The guest image the boot loader passed as an initrd (`-initrd` on QEMU).
pub fn initrd_image(info: &crate::scenario::BootInfo) -> Result<&'static [u8], String> {
    let options = &info.options;
    let range = crate::arch::boot::initrd_range(options.rd_start, options.rd_size, info.ram.low.1)
        .ok_or_else(|| {
            String::from("image 'initrd' asked for, but the boot loader passed no usable initrd")
        })?;
    Ok(crate::arch::boot::initrd_bytes(range))
}

/// Totals over `vms` of one counter.
pub fn total(vms: &[Arc<Vm>], counter: impl Fn(&VmStats) -> &core::sync::atomic::AtomicU64) -> u64 {
    vms.iter().map(|vm| VmStats::get(counter(&vm.stats))).sum()
}

/// Runs `vms` (with their `vcpus`) to completion on every CPU that joins; stops the ones
/// still running after `timeout_ticks`.
pub fn run(vms: &[Arc<Vm>], vcpus: Vec<Vcpu>, timeout_ticks: u64) {
    if !sched::run_all(vcpus, timeout_ticks) {
        for vm in vms {
            if vm.outcome().is_none() {
                vm.console_flush();
                vm.finish(VmOutcome::Stopped(String::from(
                    "did not finish in time (scenario timeout)",
                )));
            }
        }
        sched::drain();
    }
}

/// Prints one `RESULT vm:<name> PASS|FAIL ...` line per VM; returns how many passed
/// (exited with status 0). A VM in `contained` is expected to be stopped by the host: its
/// line says `CONTAINED` when it was.
pub fn report(vms: &[Arc<Vm>], contained: &[&str]) -> usize {
    let mut passed = 0;
    for vm in vms {
        match vm.outcome() {
            Some(VmOutcome::Stopped(why)) if contained.contains(&vm.name.as_str()) => {
                crate::println!("RESULT vm:{} CONTAINED stopped: {why}", vm.name)
            }
            Some(VmOutcome::Exited(0)) => {
                passed += 1;
                crate::println!("RESULT vm:{} PASS exit=0", vm.name);
            }
            Some(VmOutcome::Exited(status)) => {
                crate::println!("RESULT vm:{} FAIL exit={status}", vm.name)
            }
            Some(VmOutcome::Stopped(why)) => {
                crate::println!("RESULT vm:{} FAIL stopped: {why}", vm.name)
            }
            None => crate::println!("RESULT vm:{} FAIL never finished", vm.name),
        }
        crate::log!(
            "VM {}: exits={} gpa_faults={} guest_tlb_refills={} emulated={} hypercalls={} (refused {}) reflected={} machine_checks={} timer_irqs={} mmio={} preemptions={} derived_evictions={} restarts={}",
            vm.name,
            VmStats::get(&vm.stats.exits),
            VmStats::get(&vm.stats.gpa_faults),
            VmStats::get(&vm.stats.guest_tlb_refills),
            VmStats::get(&vm.stats.emulated),
            VmStats::get(&vm.stats.hypercalls),
            VmStats::get(&vm.stats.hypercalls_refused),
            VmStats::get(&vm.stats.reflected),
            VmStats::get(&vm.stats.machine_checks),
            VmStats::get(&vm.stats.timer_interrupts),
            VmStats::get(&vm.stats.mmio),
            VmStats::get(&vm.stats.preemptions),
            VmStats::get(&vm.stats.derived_evictions),
            VmStats::get(&vm.stats.restarts),
        );
    }
    passed
}
