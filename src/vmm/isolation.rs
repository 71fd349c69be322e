//! The `isolation` scenario: a hostile guest tries forbidden things one by one while a
//! well-behaved VM runs beside it.
//!
//! The hostile guest (guests/hostile) announces each try on its console as
//! `ATTEMPT <n> <name>` and reports what it saw as `OUTCOME <n> <name>: ...` (the word
//! `BREACH` in an outcome means it observed a containment failure). Its last try is a
//! runaway loop with interrupts masked, which the host must preempt and finally stop. The
//! firmware counts an attempt as contained when its outcome came back without `BREACH`, or
//! when the VM was stopped during it with a reason (the hypervisor's answer to it).

use super::vm::{Vm, VmOutcome};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use hv_devices::console_log::tally_attempts;

/// What the hostile guest's console said, and what became of it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Attempts announced.
    pub attempted: u64,
    /// Attempts contained (see the module notes).
    pub contained: u64,
    /// Outcomes that reported a breach (or were too long to judge).
    pub breaches: u64,
    /// ATTEMPT/OUTCOME lines that break the protocol (an outcome of another attempt, ...).
    pub malformed: u64,
    /// Recorded lines lost because the record was full.
    pub dropped: u64,
    /// Name of the attempt during which the VM was stopped, if any.
    pub stopped_during: Option<String>,
}

/// Counts attempts and contained ones from the VM's recorded console lines
/// (hv_devices::console_log: only whole lines from their real start are recorded, with
/// control bytes escaped, so padding or control bytes cannot forge or hide one).
pub fn tally(vm: &Arc<Vm>) -> Tally {
    let lines = vm.recorded_lines();
    let dropped = vm.recorded_dropped();
    let counted = tally_attempts(&lines);
    let mut tally = Tally {
        attempted: counted.attempted,
        contained: counted.contained,
        breaches: counted.breaches,
        malformed: counted.malformed,
        dropped,
        stopped_during: None,
    };
    if let (Some((_, name)), Some(VmOutcome::Stopped(_))) = (counted.open, vm.outcome()) {
        // The VM was stopped with a reason while this attempt ran: contained.
        tally.contained += 1;
        tally.stopped_during = Some(name);
    }
    tally
}

/// Checks the scenario's outcome: every VM but `hostile` exited 0, and the hostile VM's
/// attempts (at least `min_attempts`) were all contained.
pub fn judge(
    vms: &[Arc<Vm>],
    hostile: &Arc<Vm>,
    tally: &Tally,
    min_attempts: u64,
) -> Result<(), String> {
    let mut problems: Vec<String> = Vec::new();
    for vm in vms.iter().filter(|vm| !Arc::ptr_eq(vm, hostile)) {
        if vm.outcome() != Some(VmOutcome::Exited(0)) {
            problems.push(format!("well-behaved VM {} did not exit 0", vm.name));
        }
    }
    if tally.attempted < min_attempts {
        problems.push(format!(
            "hostile guest announced {} attempts, {min_attempts} expected",
            tally.attempted
        ));
    }
    if tally.malformed != 0 || tally.dropped != 0 {
        problems.push(format!(
            "console record unreliable: {} malformed ATTEMPT/OUTCOME lines, {} lines dropped",
            tally.malformed, tally.dropped
        ));
    }
    if tally.contained != tally.attempted {
        problems.push(format!(
            "{} of {} attempts contained",
            tally.contained, tally.attempted
        ));
    }
    if matches!(hostile.outcome(), Some(VmOutcome::Exited(0))) {
        problems.push(String::from(
            "hostile guest exited 0 instead of being stopped",
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}
