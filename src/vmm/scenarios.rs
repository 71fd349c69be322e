//! The guest scenarios: `guests` (several well-behaved VMs to completion).

use super::vm::{ImageSource, VmSpec};
use super::{images, sched};
use crate::scenario::BootInfo;
use crate::smp;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hv_core::addr::Gpa;
use hv_devices::bundle::{self, Bundle};
use hv_devices::vmconfig::{BootProtocol, VmLayout};

/// Count ticks a guest scenario may take before unfinished VMs are stopped.
pub(crate) const SCENARIO_TIMEOUT_TICKS: u64 = 12_000_000_000;
/// Count ticks CPU 0 waits for the other CPUs to come up.
pub(crate) const CPU_TIMEOUT_TICKS: u32 = 400_000_000;
/// Count ticks to wait when the command line does not say how many CPUs to expect.
pub(crate) const CPU_SETTLE_TICKS: u32 = 20_000_000;

/// Waits for the CPUs the command line expects (or, with no expectation, a settle time)
/// and returns how many are online.
pub(crate) fn online_cpus(info: &BootInfo) -> usize {
    smp::wait_for_cpus(
        info.options.expect_cpus,
        CPU_TIMEOUT_TICKS,
        CPU_SETTLE_TICKS,
    )
}
/// Guest RAM of each self-test VM.
const SELFTEST_RAM_BYTES: u64 = 8 << 20;

/// The bundle the boot loader passed in place of an initrd (a FIT image: a layout and the
/// guest images it names), if it did.
fn bundle(info: &BootInfo) -> Result<Option<Bundle<'static>>, String> {
    let Ok(blob) = super::initrd_image(info) else {
        return Ok(None);
    };
    if !bundle::looks_like_bundle(blob) {
        return Ok(None);
    }
    Bundle::parse(blob)
        .map(Some)
        .map_err(|e| format!("bundle (initrd): {e}"))
}

/// The VM layout of a scenario: `config=NAME` from the command line, else the layout of a
/// bundle the loader passed, else the embedded layout named after the scenario. A missing
/// layout is an error, never a silent fallback: a firmware built without its layouts would
/// otherwise run something the user did not ask for.
pub(crate) fn layout(info: &BootInfo, scenario: &str) -> Result<(VmLayout, String), String> {
    if info.options.config.is_none() {
        if let Some(bundle) = bundle(info)? {
            let source = format!("bundle layout '{}'", bundle.layout_name);
            return VmLayout::parse(bundle.layout)
                .map(|layout| (layout, source.clone()))
                .map_err(|e| format!("{source}: {e}"));
        }
    }
    let name = info.options.config.unwrap_or(scenario);
    match images::config(name) {
        Some(blob) => VmLayout::parse(blob)
            .map(|layout| (layout, format!("configs/{name}.dtb")))
            .map_err(|e| format!("VM layout configs/{name}.dtb: {e}")),
        None => {
            let names: Vec<&str> = images::config_names().collect();
            Err(format!(
                "no VM layout '{name}' embedded (have: [{}]); add configs/{name}.dts and \
                 rebuild with tools/build-fw.sh, or pass it in a bundle (--bundle)",
                names.join(", ")
            ))
        }
    }
}

/// The image bytes for `name`: from the loader's bundle, embedded, or `initrd` for the boot
/// loader's initrd (an ELF).
fn image_bytes(info: &BootInfo, name: &str) -> Result<(&'static [u8], String), String> {
    let bundle = bundle(info)?;
    if name == "initrd" {
        if bundle.is_some() {
            return Err(String::from(
                "image 'initrd' asked for, but the initrd is a bundle: name its images instead",
            ));
        }
        return super::initrd_image(info).map(|bytes| (bytes, String::from("initrd")));
    }
    if let Some(bytes) = bundle.as_ref().and_then(|b| b.image(name)) {
        return Ok((bytes, format!("{name} (bundle)")));
    }
    if let Some(bytes) = images::embedded(name) {
        return Ok((bytes, String::from(name)));
    }
    let mut names: Vec<String> = images::embedded_names().map(String::from).collect();
    if let Some(bundle) = &bundle {
        names.extend(bundle.image_names().map(String::from));
    }
    Err(format!(
        "guest image '{name}' is neither in the bundle nor embedded (have: [{}]); pack it \
         with tools/mkbundle, or build guests with tools/build-guests.sh before \
         tools/build-fw.sh",
        names.join(", ")
    ))
}

/// Builds the VM specs of `layout`, after checking it against this host (`cpus` online).
pub(crate) fn specs(
    info: &BootInfo,
    layout: &VmLayout,
    cpus: usize,
) -> Result<Vec<VmSpec<'static>>, String> {
    let bundle = bundle(info)?;
    let mut known: Vec<&str> = images::embedded_names().collect();
    if let Some(bundle) = &bundle {
        known.extend(bundle.image_names());
    }
    known.push("initrd");
    let mut checked = layout.clone();
    if let Some(image) = info.options.image {
        for vm in &mut checked.vms {
            vm.image = String::from(image);
        }
    }
    checked
        .check_host(&known, cpus as u32)
        .map_err(|e| format!("VM layout does not fit this host: {e}"))?;
    // Admission: the reservations must fit the guest pool (each VM's build admits its own
    // again; this names the first node that does not fit before any VM is built).
    let pool_pages = crate::services::try_host()?.lock().pool().capacity() as u64;
    layout.check_reservations(pool_pages).map_err(|e| {
        let node = e
            .vm()
            .and_then(|i| layout.vms.get(i))
            .map_or("?", |v| v.name.as_str());
        format!("VM layout refused at node /vms/{node}: {e}")
    })?;
    let mut specs = Vec::new();
    for vm in &layout.vms {
        if vm.ram.base.raw() != 0 {
            return Err(format!("VM {}: RAM must start at GPA 0", vm.name));
        }
        let (bytes, image) = image_bytes(info, info.options.image.unwrap_or(&vm.image))?;
        crate::log!("VM {}: image {image}", vm.name);
        specs.push(VmSpec {
            name: vm.name.clone(),
            ram_bytes: vm.ram.size_bytes,
            rom: vm.rom.map(|r| (r.base, r.size_bytes)),
            devices: vm.devices.clone(),
            affinity: vm.affinity.map(|set| set.mask()),
            vcpus: vm.vcpus as usize,
            image: ImageSource::Elf(bytes),
            swap_on_yield: None,
            workload: vm.workload,
            balloon_target_mib: vm.balloon_target_mib,
            mem: vm.mem,
            watchdog_ms: vm.watchdog_ms,
            cpu: vm.cpu,
            device_tree: (vm.boot == BootProtocol::Uhi).then(|| vm.clone()),
        });
    }
    Ok(specs)
}

/// Prints the statistics every guest scenario reports.
pub(crate) fn print_stats(vms: &[alloc::sync::Arc<super::vm::Vm>], cpus: usize) {
    crate::println!("STAT vms={}", vms.len());
    crate::println!("STAT cpus={cpus}");
    crate::println!("STAT gpa_faults={}", super::total(vms, |s| &s.gpa_faults));
    crate::println!(
        "STAT guest_tlb_refills={}",
        super::total(vms, |s| &s.guest_tlb_refills)
    );
    crate::println!("STAT guest_exits={}", super::total(vms, |s| &s.exits));
    crate::println!(
        "STAT guest_timer_irqs={}",
        super::total(vms, |s| &s.timer_interrupts)
    );
    crate::println!("STAT mmio_accesses={}", super::total(vms, |s| &s.mmio));
    crate::println!("STAT vcpu_migrations={}", sched::migrations());
    crate::println!("STAT asid_rollovers={}", super::asid::rollovers());
    let flushes: u64 = vms
        .iter()
        .map(|vm| vm.memory.remote_flush().flushes())
        .sum();
    crate::println!("STAT remote_flushes={flushes}");
    crate::println!(
        "STAT flushed_tlb_halves={}",
        super::total(vms, |s| &s.flushed_entries)
    );
    let slices: Vec<String> = sched::slices(cpus).iter().map(|n| format!("{n}")).collect();
    crate::println!("STAT slices_per_cpu={}", slices.join(","));
    super::limits::print_stats(vms);
}

/// The `guests` scenario: every VM of the layout runs to completion with exit status 0.
pub fn guests(info: &BootInfo) -> Result<(), String> {
    let cpus = online_cpus(info);
    let (layout, source) = layout(info, "guests")?;
    crate::log!(
        "guests: {} VMs from {source} on {cpus} CPUs",
        layout.vms.len()
    );
    // A layout that turns dedup on (/services) gets it, ungated: the guests need no
    // protocol with the scanner (Linux guests, configs/linux-dedup.dts).
    let services = layout.services.dedup;
    if services {
        crate::services::init_host(layout.services.guest_pool_mib)?;
    }
    let specs = specs(info, &layout, cpus)?;
    let (vms, vcpus) = super::build_vms(&specs)?;
    if services {
        let groups: Vec<Option<u32>> = layout.vms.iter().map(|vm| vm.trust_group).collect();
        crate::services::start(&vms, &groups, &layout.services, None)?;
    }
    super::run(&vms, vcpus, SCENARIO_TIMEOUT_TICKS);
    let passed = super::report(&vms, &[]);
    print_stats(&vms, cpus);
    // A layout that sets balloon targets (a Linux guest's own virtio_balloon driver
    // inflates to them): what each balloon did.
    if layout.vms.iter().any(|vm| vm.balloon_target_mib.is_some()) {
        crate::services::balloon::print_stats();
    }
    let count = vms.len();
    let mut leaked = 0;
    if services {
        let ram_pages: u64 = vms.iter().map(|vm| vm.ram_bytes / 4096).sum();
        crate::println!("STAT guest_ram_pages={ram_pages}");
        leaked = crate::services::finish(vms, "end_")?.frames_leaked;
    }
    if passed != count {
        Err(format!("{passed} of {count} VMs passed"))
    } else if leaked != 0 {
        Err(format!("{leaked} guest-pool frames leaked"))
    } else {
        Ok(())
    }
}

/// The `vcpu-selftest` scenario: the built-in assembly guest checks the trap-and-emulate
/// paths (window, mapped kernel segment, guest refills, user mode, timer), twice over on
/// two VMs so the scheduler and ASIDs see more than one guest.
pub fn vcpu_selftest(info: &BootInfo) -> Result<(), String> {
    let cpus = online_cpus(info);
    let image = ImageSource::Flat {
        bytes: crate::arch::vcpu_test_guest::image(),
        gpa: crate::arch::vcpu_test_guest::LOAD_GPA,
    };
    let specs: Vec<VmSpec<'_>> = (0..2)
        .map(|i| VmSpec {
            rom: Some((Gpa::new(0x1e00_0000), 0x1_0000)),
            devices: VmLayout::builtin_default().vms[0].devices.clone(),
            swap_on_yield: Some((Gpa::new(0x60_0000), 8)),
            ..VmSpec::plain(format!("selftest{i}"), SELFTEST_RAM_BYTES, image)
        })
        .collect();
    let (vms, vcpus) = super::build_vms(&specs)?;
    super::run(&vms, vcpus, SCENARIO_TIMEOUT_TICKS);
    let passed = super::report(&vms, &[]);
    print_stats(&vms, cpus);
    if passed == vms.len() {
        Ok(())
    } else {
        Err(format!("{} of {} VMs passed", passed, vms.len()))
    }
}

/// Forbidden attempts the hostile guest must at least make for `isolation` to pass.
const MIN_HOSTILE_ATTEMPTS: u64 = 16;
/// Machine checks the host must have refused at least (two duplicate-match writes in each
/// of the hostile guest's four drill attempts).
const MIN_MACHINE_CHECKS: u64 = 8;

/// What the host itself must have seen of the hostile guest's attempts, whatever the guest
/// reported: the refused hypercalls (attempt 1), the reflected exception storm (6000
/// exceptions, attempt 6), open-bus accesses outside its memslots (attempts 7 and 8),
/// ignored stores to its read-only memslot (attempt 9), and the final runaway loop stopped
/// by the host's own rule.
fn host_saw_the_attempts(hostile: &super::vm::Vm) -> Vec<String> {
    use super::vm::{VmOutcome, VmStats};
    let stats = &hostile.stats;
    let mut problems = Vec::new();
    let checks: [(&str, u64, u64); 4] = [
        (
            "refused hypercalls",
            VmStats::get(&stats.hypercalls_refused),
            4,
        ),
        ("reflected exceptions", VmStats::get(&stats.reflected), 6000),
        ("open-bus accesses", VmStats::get(&stats.unbacked), 2),
        (
            "ignored read-only stores",
            VmStats::get(&stats.rom_writes),
            1,
        ),
    ];
    for (what, seen, least) in checks {
        if seen < least {
            problems.push(format!(
                "host saw {seen} {what} from the hostile VM, at least {least} expected"
            ));
        }
    }
    match hostile.outcome() {
        Some(VmOutcome::Stopped(why)) if why.starts_with("runaway") => {}
        other => problems.push(format!(
            "hostile VM not stopped by the runaway rule (ended: {other:?})"
        )),
    }
    problems
}

/// The `isolation` scenario: the hostile guest's attempts are all contained while the other
/// VMs run to completion (see `isolation.rs`).
pub fn isolation(info: &BootInfo) -> Result<(), String> {
    let cpus = online_cpus(info);
    if !crate::arch::debug_vector::owned() {
        return Err(String::from(
            "the EJTAG debug vector (0xbfc00480) does not hold the firmware's stub, so a guest \
             SDBBP would not come back; start QEMU through qemu-run.sh, which loads \
             out/ejtag-vector.bin there",
        ));
    }
    let (layout, source) = layout(info, "isolation")?;
    let hostile_index = layout
        .vms
        .iter()
        .position(|vm| vm.image == "hostile")
        .ok_or_else(|| format!("layout {source} has no VM running the hostile image"))?;
    if layout.vms.len() < 2 {
        return Err(format!(
            "layout {source} has no well-behaved VM beside the hostile one"
        ));
    }
    crate::log!(
        "isolation: {} VMs from {source} on {cpus} CPUs, hostile VM {}",
        layout.vms.len(),
        layout.vms[hostile_index].name
    );
    let specs = specs(info, &layout, cpus)?;
    let (mut vms, vcpus) = super::build_vms(&specs)?;
    {
        let hostile = &vms[hostile_index];
        let rom = hostile.rom_slot.zip(hostile.rom.map(|r| r.2));
        super::isolation::drill::DrillSlot::arm(hostile, rom)?;
    }
    super::run(&vms, vcpus, SCENARIO_TIMEOUT_TICKS);
    let hostile = &vms[hostile_index];
    super::report(&vms, &[hostile.name.as_str()]);
    print_stats(&vms, cpus);
    let mut host_problems: Vec<String> = Vec::new();
    let drill = super::isolation::drill::DrillSlot::finish(hostile);
    match &drill {
        Some(verdict) => {
            verdict.print();
            host_problems.extend(verdict.problems());
        }
        None => host_problems.push(String::from("the drill was not armed")),
    }
    let machine_checks = super::total(&vms, |s| &s.machine_checks);
    let refused = super::total(&vms, |s| &s.hypercalls_refused);
    crate::println!("STAT machine_checks={machine_checks}");
    crate::println!(
        "STAT hypercalls={} hypercalls_refused={refused}",
        super::total(&vms, |s| &s.hypercalls)
    );
    if machine_checks < MIN_MACHINE_CHECKS {
        host_problems.push(format!(
            "the host refused {machine_checks} duplicate-match TLB writes, at least \
             {MIN_MACHINE_CHECKS} expected"
        ));
    }
    host_problems.extend(host_saw_the_attempts(hostile));
    let groups: Vec<Option<u32>> = vms.iter().map(|_| None).collect();
    let shared =
        crate::services::dedup::cross_domain_frames(crate::services::host(), &vms, &groups);
    crate::println!("STAT cross_vm_frames={shared}");
    if shared != 0 {
        host_problems.push(format!("{shared} frames mapped by more than one VM"));
    }
    let tally = super::isolation::tally(hostile);
    crate::println!(
        "STAT attempted={} contained={}",
        tally.attempted,
        tally.contained
    );
    crate::println!("STAT breaches={}", tally.breaches);
    crate::println!(
        "STAT console_malformed={} console_dropped={}",
        tally.malformed,
        tally.dropped
    );
    crate::println!(
        "STAT open_bus_accesses={}",
        super::total(&vms, |s| &s.unbacked)
    );
    crate::println!("STAT rom_writes={}", super::total(&vms, |s| &s.rom_writes));
    if let Some(name) = &tally.stopped_during {
        crate::log!("hostile VM was stopped during attempt {name}");
    }
    let judged = super::isolation::judge(&vms, hostile, &tally, MIN_HOSTILE_ATTEMPTS);
    // VM teardown, the last trigger: the hostile VM's frames go back to the pool and a new
    // VM, built after it, takes them (LIFO) and must verify all of its memory. Entries of
    // the hostile VM left in any CPU's TLB are under host ASIDs no vCPU runs with again.
    let hostile = vms.remove(hostile_index);
    let (victim_index, _) = specs
        .iter()
        .enumerate()
        .find(|(i, _)| *i != hostile_index)
        .ok_or_else(|| String::from("no victim spec"))?;
    let mut after_spec = specs[victim_index].clone();
    after_spec.name = String::from("after-teardown");
    match alloc::sync::Arc::try_unwrap(hostile) {
        Err(_) => host_problems.push(String::from(
            "hostile VM still referenced: it could not be torn down",
        )),
        Ok(vm) => {
            let free_before = crate::services::free_frames();
            vm.teardown()
                .map_err(|e| format!("hostile VM teardown: {e}"))?;
            let returned = crate::services::free_frames() - free_before;
            crate::log!("hostile VM torn down: {returned} frames back to the pool");
            crate::println!("STAT teardown_frames_returned={returned}");
            let (after, vcpus) = super::build_vms(core::slice::from_ref(&after_spec))?;
            super::run(&after, vcpus, SCENARIO_TIMEOUT_TICKS);
            super::report(&after, &[]);
            if after[0].outcome() != Some(super::vm::VmOutcome::Exited(0)) {
                host_problems.push(String::from(
                    "the VM built after the hostile VM's teardown did not verify its memory",
                ));
            }
        }
    }
    crate::println!("STAT host_problems={}", host_problems.len());
    match (judged, host_problems.is_empty()) {
        (Ok(()), true) => Ok(()),
        (Ok(()), false) => Err(host_problems.join("; ")),
        (Err(e), true) => Err(e),
        (Err(e), false) => Err(format!("{e}; {}", host_problems.join("; "))),
    }
}
