//! The `bench` scenario: instruction cost of guest exits, for tools/bench.sh.
//!
//! Method: run under `-icount shift=0`, where every instruction takes the same virtual time.
//! Count then converts into instructions with one factor, measured here with a loop of a
//! known number of instructions (arch::bench_guest::calibrate). The benchmark guest runs an
//! event loop and a baseline loop of identical instructions for each kind of event and
//! yields after each loop; the host notes Count and its exit counters at every yield. The
//! extra instructions of the event loop over its baseline, divided by its extra exits, are
//! the cost of one event from the exception to the guest's next instruction (vector, exit
//! path, handler, entry path), averaged over a thousand and more events. Root-TLB refills
//! served by the refill vector's cache (arch::guest) never leave the vector, so an event is
//! an exit or a cache attempt (a miss counts once: its attempt and its exit are the same).

use super::vm::{ImageSource, Mark, VmOutcome, VmSpec};
use crate::arch::bench_guest;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// Calibration loop iterations (three instructions each).
const CALIBRATION_ITERATIONS: u32 = 1_000_000;
/// Guest RAM of the benchmark VM (phase 3 touches up to GPA 8 MiB).
const BENCH_RAM_BYTES: u64 = 16 << 20;
/// Count ticks the benchmark VM may take.
const BENCH_TIMEOUT_TICKS: u64 = 6_000_000_000;

/// The phases of the benchmark guest, in order: name and target (instructions).
const PHASES: [(&str, Option<u64>); 5] = [
    ("refill_insns", Some(24)),
    ("fast_fault_insns", Some(150)),
    ("first_touch_fault_insns", Some(800)),
    ("mtc0_emul_insns", None),
    ("hypercall_insns", None),
];

/// One phase's result.
#[derive(Debug, Clone, Copy)]
struct PhaseCost {
    events: u64,
    insns_per_event: u64,
}

/// Cost of the phase whose event loop runs from `marks[0]` to `marks[1]` and baseline loop
/// from `marks[1]` to `marks[2]`, with `factor_milli` instructions per 1000 Count ticks.
fn phase_cost(marks: &[Mark], factor_milli: u64) -> Result<PhaseCost, String> {
    let event_ticks = u64::from(marks[1].count.wrapping_sub(marks[0].count));
    let base_ticks = u64::from(marks[2].count.wrapping_sub(marks[1].count));
    // Refills served by the vector's cache never reach the exit counter; count them too
    // (the attempts that missed it are exits as well, hence the subtraction).
    let exits = |m: &Mark| m.exits + m.cached_refills - m.refill_exits;
    let event_exits = exits(&marks[1]) - exits(&marks[0]);
    let base_exits = exits(&marks[2]) - exits(&marks[1]);
    let events = event_exits
        .checked_sub(base_exits)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("no extra exits ({event_exits} vs {base_exits})"))?;
    let extra_ticks = event_ticks.saturating_sub(base_ticks);
    Ok(PhaseCost {
        events,
        insns_per_event: extra_ticks * factor_milli / 1000 / events,
    })
}

/// The `bench` scenario.
pub fn bench(_info: &crate::scenario::BootInfo) -> Result<(), String> {
    let (insns, ticks) = bench_guest::calibrate(CALIBRATION_ITERATIONS);
    if ticks == 0 {
        return Err(String::from("Count did not advance during calibration"));
    }
    // Rounded to 1/100: the loop's own start and end jitter by a tick or so, and a stable
    // factor keeps the printed figures identical from run to run.
    let factor_milli = (insns * 100 + ticks / 2) / ticks * 10;
    crate::println!(
        "BENCH count_calibration={}.{:03} insns_per_count_tick",
        factor_milli / 1000,
        factor_milli % 1000
    );
    let specs = [VmSpec::plain(
        String::from("bench"),
        BENCH_RAM_BYTES,
        ImageSource::Flat {
            bytes: bench_guest::image(),
            gpa: bench_guest::LOAD_GPA,
        },
    )];
    let (vms, vcpus) = super::build_vms(&specs)?;
    super::run(&vms, vcpus, BENCH_TIMEOUT_TICKS);
    let vm = &vms[0];
    if vm.outcome() != Some(VmOutcome::Exited(0)) {
        return Err(format!("benchmark guest ended with {:?}", vm.outcome()));
    }
    let marks = vm.marks();
    if marks.len() != 1 + 2 * PHASES.len() {
        return Err(format!("{} marks from the benchmark guest", marks.len()));
    }
    let mut missed = Vec::new();
    for (index, (name, target)) in PHASES.iter().enumerate() {
        let cost = phase_cost(&marks[2 * index..2 * index + 3], factor_milli)
            .map_err(|e| format!("{name}: {e}"))?;
        crate::println!(
            "BENCH {name}={} insns (avg over {} events{})",
            cost.insns_per_event,
            cost.events,
            target.map_or(String::new(), |t| format!(", target <= {t}"))
        );
        if target.is_some_and(|t| cost.insns_per_event > t) {
            missed.push(*name);
        }
    }
    crate::println!("STAT bench_targets_missed={}", missed.len());
    Ok(())
}
