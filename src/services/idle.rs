//! Idle-page tracking in the firmware: an aging pass over each VM's RAM every idle interval,
//! giving every guest page an idle age and every VM a working-set estimate.
//!
//! One `hv_services::idle::IdleTracker` per VM, over the backings its memslots map (the
//! host layer is shared by all VMs). A pass reads each page's young bit and clears it
//! through the VM's notifier, which flushes the derived translations: the guest's next
//! access to the page faults once and the fast path makes the entry young again, which is
//! what the next pass sees. Passes run inside the services round when one is due. The swap
//! service reads the ages under the same lock (`with_trackers`), always taking this lock
//! before its own.

use super::{Hook, HookOutcome, RoundContext, SharedHost};
use crate::arch::cp0;
use crate::vmm::vm::Vm;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering};
use hv_devices::vmconfig::MAX_VMS;
use hv_services::idle::{IdleStats, IdleTracker};
use spin::Mutex;

/// How idle tracking runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleConfig {
    /// Working-set window in passes (1..=15).
    pub window: u8,
    /// Time between two passes over a VM.
    pub interval_us: u32,
    /// Pages aged per flush of derived translations (see `IdleTracker::set_chunk_pages`).
    pub chunk_pages: u64,
}

/// One VM's tracker.
pub struct VmIdle {
    /// VM number.
    pub vm_id: usize,
    /// VM name (STAT lines, console).
    pub name: String,
    /// Idle ages after the latest pass.
    pub tracker: IdleTracker,
    /// The ages as of the last pass the guest has seen counted (VM-info key 12), kept
    /// before the next pass changes them.
    seen: Option<IdleTracker>,
}

/// Every VM's tracker and the pass timing.
pub struct IdleState {
    /// One entry per VM, in VM order.
    pub vms: Vec<VmIdle>,
    interval_ticks: u32,
    last_pass: u32,
    /// Passes that failed (the memory core refused).
    errors: u64,
    /// Count ticks spent in passes, and passes timed.
    pass_ticks: u64,
    timed_passes: u64,
}

static STATE: Mutex<Option<IdleState>> = Mutex::new(None);
/// Passes done per VM, readable without the lock (VM-info key 12 from any vCPU).
static PASSES: [AtomicU64; MAX_VMS] = [const { AtomicU64::new(0) }; MAX_VMS];
/// The highest pass count each VM's guest has read.
static SEEN: [AtomicU64; MAX_VMS] = [const { AtomicU64::new(0) }; MAX_VMS];

/// Starts tracking `vms` (built on the shared host, before their vCPUs run) and registers
/// the pass with the services round.
pub fn start(vms: &[Arc<Vm>], config: IdleConfig) -> Result<(), String> {
    let mut trackers = Vec::new();
    for vm in vms {
        if vm.id >= MAX_VMS {
            return Err(format!("idle tracking: VM id {} beyond {MAX_VMS}", vm.id));
        }
        let mut tracker = IdleTracker::new(&*vm.memory, config.window)
            .map_err(|e| format!("idle tracking of VM {}: {e}", vm.name))?;
        tracker.set_chunk_pages(config.chunk_pages);
        PASSES[vm.id].store(0, Ordering::Release);
        SEEN[vm.id].store(0, Ordering::Release);
        trackers.push(VmIdle {
            vm_id: vm.id,
            name: vm.name.clone(),
            tracker,
            seen: None,
        });
    }
    let interval = u64::from(config.interval_us) * super::COUNT_TICKS_PER_US;
    *STATE.lock() = Some(IdleState {
        vms: trackers,
        interval_ticks: interval.min(u64::from(u32::MAX)) as u32,
        last_pass: cp0::count(),
        errors: 0,
        pass_ticks: 0,
        timed_passes: 0,
    });
    super::register(Hook {
        name: "idle",
        round,
        stop,
    });
    super::view::register(super::view::ConsoleHandlers {
        idle: Some(write_report),
        ..Default::default()
    });
    crate::log!(
        "idle: tracking {} VMs, a pass every {} us, working-set window {} passes",
        vms.len(),
        config.interval_us,
        config.window
    );
    Ok(())
}

/// Whether idle tracking runs.
pub fn running() -> bool {
    STATE.lock().is_some()
}

/// Idle-tracking passes completed for VM `vm_id`, as its guest reads them (VM-info key
/// 12; 0 when not tracked). The answer is remembered: the ages as of that pass are kept
/// (see [`ages_seen_by_guest`]).
pub fn passes(vm_id: usize) -> u64 {
    let (Some(passes), Some(seen)) = (PASSES.get(vm_id), SEEN.get(vm_id)) else {
        return 0;
    };
    let n = passes.load(Ordering::Acquire);
    seen.fetch_max(n, Ordering::AcqRel);
    n
}

/// Runs `f` over the trackers (`None` when idle tracking is off). Lock order: this lock
/// before the swap service's.
pub fn with_trackers<X>(f: impl FnOnce(Option<&[VmIdle]>) -> X) -> X {
    let state = STATE.lock();
    f(state.as_ref().map(|s| s.vms.as_slice()))
}

/// The services round: one pass over every VM still running, when the interval is up.
fn round(context: &RoundContext<'_>) -> HookOutcome {
    let mut slot = STATE.lock();
    let Some(state) = slot.as_mut() else {
        return HookOutcome::default();
    };
    let now = cp0::count();
    if now.wrapping_sub(state.last_pass) < state.interval_ticks {
        return HookOutcome::default();
    }
    for entry in &mut state.vms {
        // A VM that ended is aged on: until teardown its pages are the best swap victims.
        let Some(vm) = context.vms.iter().find(|vm| vm.id == entry.vm_id) else {
            continue;
        };
        if SEEN[entry.vm_id].load(Ordering::Acquire) == entry.tracker.passes() {
            // The guest has seen this pass counted: keep its ages before they change.
            entry.seen = Some(entry.tracker.clone());
        }
        let start = cp0::count();
        if let Err(e) = entry.tracker.pass(&*vm.memory) {
            state.errors += 1;
            crate::log!("idle: pass over VM {} failed: {e}", entry.name);
            continue;
        }
        state.pass_ticks += u64::from(cp0::count().wrapping_sub(start));
        state.timed_passes += 1;
        PASSES[entry.vm_id].store(entry.tracker.passes(), Ordering::Release);
    }
    // The interval runs from the end of the passes: a pass slower than the interval must
    // not make the next one due at once (with one CPU the guests would starve).
    state.last_pass = cp0::count();
    // Aging changes no memory figure: no sample line of its own.
    HookOutcome::default()
}

/// Nothing to give back (the trackers hold no frames); the ages stay readable until the
/// next `start`.
fn stop(_host: &Arc<SharedHost>) {}

/// Forgets every tracker (after the scenario read what it needs).
pub fn clear() {
    *STATE.lock() = None;
}

/// The ages of VM `vm_id` as of the last pass its guest has read the count of (VM-info
/// key 12), with that count; `None` if the guest never read one.
pub fn ages_seen_by_guest(vm_id: usize) -> Option<(u64, IdleTracker)> {
    let state = STATE.lock();
    let entry = state.as_ref()?.vms.iter().find(|v| v.vm_id == vm_id)?;
    let seen = SEEN.get(vm_id)?.load(Ordering::Acquire);
    if seen == 0 {
        return None;
    }
    if entry.tracker.passes() == seen {
        return Some((seen, entry.tracker.clone()));
    }
    entry
        .seen
        .as_ref()
        .filter(|t| t.passes() == seen)
        .map(|t| (seen, t.clone()))
}

/// Writes one VM's figures (the console's `idle <vm>`); an unknown name is an error line.
#[allow(
    dead_code,
    reason = "the operator console's `idle <vm>` (services view)"
)]
pub fn write_report(vm_name: &str, out: &mut dyn Write) -> fmt::Result {
    let state = STATE.lock();
    let Some(state) = state.as_ref() else {
        return writeln!(out, "idle tracking is not running");
    };
    let Some(entry) = state.vms.iter().find(|v| v.name == vm_name) else {
        return writeln!(out, "no VM named '{vm_name}'");
    };
    let s = entry.tracker.stats();
    writeln!(
        out,
        "{}: {} passes, working set {} of {} pages (touched in the last {} passes), {} idle",
        entry.name,
        s.passes,
        s.working_set,
        s.pages,
        s.window,
        s.pages - s.working_set
    )?;
    write!(out, "  pages by idle age:")?;
    for (age, count) in s.histogram.iter().enumerate() {
        if *count > 0 {
            write!(out, " {age}{}:{count}", if age == 15 { "+" } else { "" })?;
        }
    }
    writeln!(out)
}

/// Prints the STAT lines of every tracked VM.
pub fn print_stats() {
    let state = STATE.lock();
    let Some(state) = state.as_ref() else {
        return;
    };
    let mut metadata = 0;
    for entry in &state.vms {
        let s: IdleStats = entry.tracker.stats();
        let name = &entry.name;
        crate::println!("STAT idle_{name}_passes={}", s.passes);
        crate::println!("STAT idle_{name}_pages={}", s.pages);
        crate::println!("STAT idle_{name}_working_set_pages={}", s.working_set);
        crate::println!("STAT idle_{name}_idle_pages={}", s.pages - s.working_set);
        let mut histogram = String::new();
        for (age, count) in s.histogram.iter().enumerate() {
            if age > 0 {
                histogram.push(',');
            }
            let _ = write!(histogram, "{count}");
        }
        crate::println!("STAT idle_{name}_age_histogram={histogram}");
        metadata += entry.tracker.metadata_bytes();
    }
    crate::println!("STAT idle_window_passes={}", {
        state.vms.first().map_or(0, |v| v.tracker.window())
    });
    crate::println!("STAT idle_metadata_bytes={metadata}");
    crate::println!(
        "STAT idle_pass_us_avg={}",
        state.pass_ticks / state.timed_passes.max(1) / super::COUNT_TICKS_PER_US
    );
    crate::println!("STAT idle_pass_errors={}", state.errors);
}
