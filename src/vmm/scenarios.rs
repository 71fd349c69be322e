//! The guest scenarios: `guests` (several well-behaved VMs to completion).

use super::vm::{ImageSource, VmSpec};
use super::{images, sched};
use crate::scenario::BootInfo;
use crate::smp;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hv_core::addr::Gpa;

/// Count ticks a guest scenario may take before unfinished VMs are stopped.
const SCENARIO_TIMEOUT_TICKS: u64 = 12_000_000_000;
/// Count ticks CPU 0 waits for the other CPUs to come up.
const CPU_TIMEOUT_TICKS: u32 = 400_000_000;
/// Count ticks to wait when the command line does not say how many CPUs to expect.
const CPU_SETTLE_TICKS: u32 = 20_000_000;
/// VMs in the default layout of the `guests` scenario.
const DEFAULT_VMS: usize = 3;
/// Guest RAM of each VM in the default layout.
const DEFAULT_RAM_BYTES: u64 = 8 << 20;

/// The image the `guests` scenario runs: the full test guest if it was built, else hello.
fn default_image() -> Result<(&'static str, &'static [u8]), String> {
    for name in ["testguest", "hello"] {
        if let Some(bytes) = images::embedded(name) {
            return Ok((name, bytes));
        }
    }
    let names: Vec<&str> = images::embedded_names().collect();
    Err(format!(
        "no test guest image embedded (have: [{}]); build guests with tools/build-guests.sh \
         before tools/build-fw.sh",
        names.join(", ")
    ))
}

/// The `guests` scenario: every VM runs the test guest to completion, exit status 0.
pub fn guests(info: &BootInfo) -> Result<(), String> {
    let cpus = smp::wait_for_cpus(
        info.options.expect_cpus,
        CPU_TIMEOUT_TICKS,
        CPU_SETTLE_TICKS,
    );
    let (image_name, image) = default_image()?;
    let specs: Vec<VmSpec<'_>> = (0..DEFAULT_VMS)
        .map(|i| VmSpec {
            name: format!("vm{i}"),
            ram_bytes: DEFAULT_RAM_BYTES,
            image: ImageSource::Elf(image),
            swap_on_yield: None,
        })
        .collect();
    crate::log!("guests: {} VMs of {image_name} on {cpus} CPUs", specs.len());
    let (vms, vcpus) = super::build_vms(&specs)?;
    super::run(&vms, vcpus, SCENARIO_TIMEOUT_TICKS);
    let passed = super::report(&vms);
    crate::println!("STAT vms={}", vms.len());
    crate::println!("STAT cpus={cpus}");
    crate::println!("STAT gpa_faults={}", super::total(&vms, |s| &s.gpa_faults));
    crate::println!(
        "STAT guest_tlb_refills={}",
        super::total(&vms, |s| &s.guest_tlb_refills)
    );
    crate::println!("STAT guest_exits={}", super::total(&vms, |s| &s.exits));
    crate::println!(
        "STAT guest_timer_irqs={}",
        super::total(&vms, |s| &s.timer_interrupts)
    );
    crate::println!("STAT vcpu_migrations={}", sched::migrations());
    crate::println!("STAT asid_rollovers={}", super::asid::rollovers());
    let flushes: u64 = vms
        .iter()
        .map(|vm| vm.memory.remote_flush().flushes())
        .sum();
    crate::println!("STAT remote_flushes={flushes}");
    let slices: Vec<String> = sched::slices(cpus).iter().map(|n| format!("{n}")).collect();
    crate::println!("STAT slices_per_cpu={}", slices.join(","));
    if passed == vms.len() {
        Ok(())
    } else {
        Err(format!("{} of {} VMs passed", passed, vms.len()))
    }
}

/// The `vcpu-selftest` scenario: the built-in assembly guest checks the trap-and-emulate
/// paths (window, mapped kernel segment, guest refills, user mode, timer), twice over on
/// two VMs so the scheduler and ASIDs see more than one guest.
pub fn vcpu_selftest(info: &BootInfo) -> Result<(), String> {
    let cpus = smp::wait_for_cpus(
        info.options.expect_cpus,
        CPU_TIMEOUT_TICKS,
        CPU_SETTLE_TICKS,
    );
    let image = ImageSource::Flat {
        bytes: crate::arch::vcpu_test_guest::image(),
        gpa: crate::arch::vcpu_test_guest::LOAD_GPA,
    };
    let specs: Vec<VmSpec<'_>> = (0..2)
        .map(|i| VmSpec {
            name: format!("selftest{i}"),
            ram_bytes: DEFAULT_RAM_BYTES,
            image,
            swap_on_yield: Some((Gpa::new(0x60_0000), 8)),
        })
        .collect();
    let (vms, vcpus) = super::build_vms(&specs)?;
    super::run(&vms, vcpus, SCENARIO_TIMEOUT_TICKS);
    let passed = super::report(&vms);
    crate::println!("STAT vms={}", vms.len());
    crate::println!("STAT cpus={cpus}");
    crate::println!("STAT gpa_faults={}", super::total(&vms, |s| &s.gpa_faults));
    crate::println!(
        "STAT guest_tlb_refills={}",
        super::total(&vms, |s| &s.guest_tlb_refills)
    );
    crate::println!(
        "STAT guest_timer_irqs={}",
        super::total(&vms, |s| &s.timer_interrupts)
    );
    let flushes: u64 = vms
        .iter()
        .map(|vm| vm.memory.remote_flush().flushes())
        .sum();
    crate::println!("STAT remote_flushes={flushes}");
    crate::println!(
        "STAT flushed_tlb_halves={}",
        super::total(&vms, |s| &s.flushed_entries)
    );
    if passed == vms.len() {
        Ok(())
    } else {
        Err(format!("{} of {} VMs passed", passed, vms.len()))
    }
}
