//! Scenarios: what a run does after boot, chosen on the command line, and how it ends.
//!
//! Every run ends with exactly one `RESULT <scenario> PASS|FAIL <reason>` line and a
//! semihosting exit whose status says the same (0 = pass), so host scripts can judge a run
//! by either.

use crate::arch::{self, cache, cp0, semihost, timer, tlb};
use crate::board::RamLayout;
use crate::cmdline::BootOptions;
use crate::mem::frame::FRAMES;
use crate::vmm::scenarios::CPU_TIMEOUT_TICKS;
use crate::{percpu, selftest, smp};
use alloc::format;
use alloc::string::String;
use core::fmt::{self, Write};
use spin::Once;

/// Exit status of a run (QEMU's exit status through semihosting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// The scenario passed.
    Pass = 0,
    /// The scenario failed a check (or was unknown).
    Fail = 1,
    /// A Rust panic.
    Panic = 3,
    /// An exception nobody handles. Not 2: qemu-run.sh exits 2 on a bad option, and the
    /// statuses of the firmware and of the script must not share a number.
    UnexpectedException = 4,
}

/// Name of the scenario this run executes, for the RESULT line.
static CURRENT: Once<&'static str> = Once::new();

/// Records the scenario name (first call wins).
pub fn set_current(name: &'static str) {
    CURRENT.call_once(|| name);
}

fn current() -> &'static str {
    CURRENT.get().copied().unwrap_or("boot")
}

/// Prints the FAIL result line and ends the run with `code`.
pub fn abort_run(code: ExitCode, reason: fmt::Arguments<'_>) -> ! {
    let mut out = crate::console::panic_writer();
    let _ = writeln!(out, "RESULT {} FAIL {}", current(), reason);
    drop(out);
    semihost::exit(code as u32)
}

/// Everything boot learned that scenarios use.
#[derive(Debug)]
pub struct BootInfo {
    /// Parsed command line.
    pub options: BootOptions<'static>,
    /// RAM as probed.
    pub ram: RamLayout,
    /// Where the RAM size came from.
    pub ram_source: &'static str,
    /// Kernel heap size in bytes.
    pub heap_bytes: usize,
}

/// A named scenario.
#[derive(Debug)]
pub struct Scenario {
    /// Name used with `scenario=`.
    pub name: &'static str,
    /// One-line description.
    pub about: &'static str,
    run: fn(&BootInfo) -> Result<(), String>,
}

/// All scenarios.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "boot",
        about: "all CPUs up, RAM probed, exception/TLB/allocator self-tests",
        run: boot,
    },
    Scenario {
        name: "panic-selftest",
        about: "panics on purpose: the run must fail and show the message",
        run: panic_selftest,
    },
    Scenario {
        name: "guests",
        about: "several VMs run the test guest to completion by trap-and-emulate",
        run: crate::vmm::scenarios::guests,
    },
    Scenario {
        name: "bench",
        about: "instruction cost of guest exits (run under --icount; tools/bench.sh)",
        run: crate::vmm::bench::bench,
    },
    Scenario {
        name: "sidebyside",
        about: "the same workloads bare-metal and as a guest (run under --icount --mem 1024; tools/bench.sh)",
        run: crate::vmm::sidebyside::sidebyside,
    },
    Scenario {
        name: "svc-bench",
        about: "instruction cost of the memory services (run under --icount; tools/bench.sh)",
        run: crate::vmm::svc_bench::svc_bench,
    },
    Scenario {
        name: "isolation",
        about: "a hostile guest tries forbidden things beside a well-behaved VM",
        run: crate::vmm::scenarios::isolation,
    },
    Scenario {
        name: "balloon",
        about: "virtio balloons inflated by half a VM's RAM and deflated; hostile input refused",
        run: crate::services::balloon_scenario::balloon,
    },
    Scenario {
        name: "vcpu-selftest",
        about: "a built-in assembly guest checks each trap-and-emulate path",
        run: crate::vmm::scenarios::vcpu_selftest,
    },
    Scenario {
        name: "dedup",
        about: "same-page merging in a trust group, copy-on-write, an outsider shares nothing",
        run: crate::services::scenario::dedup_scenario,
    },
    Scenario {
        name: "swap",
        about: "more guest RAM than the guest pool: pages go to compressed swap and come back",
        run: crate::services::pressure::swap_scenario,
    },
    Scenario {
        name: "idle",
        about: "idle-page tracking finds a guest's known working set within 5 %",
        run: crate::services::pressure::idle_scenario,
    },
    Scenario {
        name: "stress",
        about:
            "every memory service at aggressive rates under 10^6 verified guest memory operations",
        run: crate::services::allin::stress,
    },
    Scenario {
        name: "limits",
        about: "a VM taking all its RAM beside others: the VM over its share is swapped or stopped",
        run: crate::services::policy::limits,
    },
    Scenario {
        name: "watchdog",
        about: "stuck VMs (WAIT, yield, trap storm) stopped by their watchdog beside a good one",
        run: crate::services::policy::watchdog,
    },
    Scenario {
        name: "demo",
        about: "a short run of every memory service, ending in a table of memory saved",
        run: crate::services::allin::demo,
    },
    Scenario {
        name: "fault-selftest",
        about: "touches unmapped memory: the run must fail with an exception report",
        run: fault_selftest,
    },
];

/// Finds a scenario by name.
pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// Comma-separated scenario names (formatted without the heap: this also runs before it).
#[derive(Debug)]
pub struct ScenarioNames;

impl fmt::Display for ScenarioNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, scenario) in SCENARIOS.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(scenario.name)?;
        }
        Ok(())
    }
}

/// Fails the run for an unknown scenario, listing the valid ones.
pub fn reject_unknown(name: &str) -> ! {
    abort_run(
        ExitCode::Fail,
        format_args!("unknown scenario '{name}'; valid scenarios: {ScenarioNames}"),
    )
}

/// Runs `scenario` and ends the run with its result.
pub fn run(scenario: &Scenario, info: &BootInfo) -> ! {
    crate::log!("running scenario {}: {}", scenario.name, scenario.about);
    match (scenario.run)(info) {
        Ok(()) => {
            crate::println!("RESULT {} PASS", scenario.name);
            semihost::exit(ExitCode::Pass as u32)
        }
        Err(reason) => abort_run(ExitCode::Fail, format_args!("{reason}")),
    }
}

/// The `boot` scenario.
fn boot(info: &BootInfo) -> Result<(), String> {
    let mut failures = String::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            if !failures.is_empty() {
                failures.push_str("; ");
            }
            failures.push_str(&what);
        }
    };

    let cpus = crate::vmm::scenarios::online_cpus(info);
    crate::println!("STAT cpus={cpus}");
    if let Some(expected) = info.options.expect_cpus {
        check(
            cpus == expected,
            format!("{cpus} CPUs online, {expected} expected"),
        );
    }
    for cpu in 1..cpus {
        check(
            smp::ping(cpu, CPU_TIMEOUT_TICKS),
            format!("cpu{cpu} does not answer in its idle loop"),
        );
    }
    let mut selftest_ok = 0;
    for cpu in 0..cpus {
        match percpu::get(cpu).selftest.get() {
            Some(Ok(())) => selftest_ok += 1,
            Some(Err(why)) => check(false, format!("cpu{cpu} exception self-test: {why}")),
            None => check(
                false,
                format!("cpu{cpu} did not run its exception self-test"),
            ),
        }
    }
    crate::println!("STAT exception_selftest_cpus={selftest_ok}");
    let ticking = smp::wait_for_ticks(cpus, 3, CPU_TIMEOUT_TICKS);
    let min_ticks = (0..cpus).map(timer::ticks).min().unwrap_or(0);
    crate::println!("STAT timer_ticks_min={min_ticks}");
    crate::println!("STAT timer_ip_line={}", cp0::timer_ip_line());
    if !ticking {
        for cpu in 0..cpus {
            crate::log!("cpu{cpu}: {} timer ticks", timer::ticks(cpu));
        }
    }
    check(
        ticking,
        String::from("timer interrupts are not arriving on every CPU"),
    );

    let ram_mib = info.ram.total_bytes >> 20;
    crate::println!("STAT ram_mib={ram_mib}");
    crate::println!("STAT ram_source={}", info.ram_source);
    if let Some(expected) = info.options.expect_mem_mib {
        check(
            ram_mib == expected,
            format!("probed {ram_mib} MiB of RAM, {expected} MiB expected"),
        );
    }

    crate::println!("STAT tlb_entries={}", tlb::entries());
    crate::println!("STAT vz={}", u8::from(cp0::config3() & (1 << 23) != 0));
    crate::println!("STAT prid={:#010x}", cp0::prid());
    crate::println!("STAT kseg0_cca={}", cp0::kseg0_cca());
    for (name, geometry) in [
        ("icache", cache::l1i()),
        ("dcache", cache::l1d()),
        ("l2cache", cache::l2()),
    ] {
        crate::println!(
            "STAT {name}=size:{}KiB,ways:{},sets:{},line:{}B",
            geometry.size_bytes() / 1024,
            geometry.ways,
            geometry.sets,
            geometry.line_bytes
        );
    }

    {
        let frames = FRAMES.lock();
        crate::println!("STAT frames_total={}", frames.total_frames());
        crate::println!("STAT frames_free={}", frames.free_frames());
        crate::println!("STAT frames_used={}", frames.used_frames());
    }
    crate::println!("STAT heap_kib={}", info.heap_bytes / 1024);

    match selftest::high_alias_check(&FRAMES) {
        Ok(()) => {}
        Err(why) => check(false, format!("high RAM alias: {why}")),
    }
    match selftest::frame_round_trip() {
        Ok(trip) => {
            crate::println!("STAT frames_round_trip={}", trip.drained);
            crate::println!("STAT frames_high={}", trip.high);
            if info.ram.high.is_some() {
                check(
                    trip.high > 0,
                    String::from("no frame above 256 MiB was allocated"),
                );
            }
        }
        Err(why) => check(false, format!("frame allocator round trip: {why}")),
    }
    match selftest::heap_round_trip() {
        Ok(free) => crate::println!("STAT heap_free_kib={}", free / 1024),
        Err(why) => check(false, format!("heap round trip: {why}")),
    }

    crate::println!(
        "BENCH exc_breakpoint_roundtrip={} count_ticks",
        selftest::bench_breakpoint(1000)
    );
    match selftest::bench_refill(1000) {
        Ok(ticks) => crate::println!("BENCH tlb_invalidate_refill={ticks} count_ticks"),
        Err(why) => check(false, format!("refill benchmark: {why}")),
    }

    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}

/// The `panic-selftest` scenario: must never return.
fn panic_selftest(_info: &BootInfo) -> Result<(), String> {
    panic!("panic-selftest: deliberate panic to prove the harness catches failures");
}

/// The `fault-selftest` scenario: an access nothing maps must end in an exception report.
fn fault_selftest(_info: &BootInfo) -> Result<(), String> {
    let unmapped = tlb::KSEG2_BASE + 0x0100_0000;
    // SAFETY: nothing maps `unmapped`, so this read cannot return: the refill handler finds
    // no window and the run ends with an unexpected-exception report.
    let value = unsafe { arch::probe::read_mapped(unmapped) };
    Err(format!(
        "read of unmapped {unmapped:#x} returned {value:#x} instead of faulting"
    ))
}
