//! What the operator console (`console_op`) shows: the firmware's side of
//! `hv_services::console::OperatorView`, read from the shared host layer and the services.
//!
//! Services other than dedup answer their commands through [`ConsoleHandlers`] they
//! register (balloon, swap, idle); a command for a service that is not running says so.

use super::dedup;
use crate::vmm::vm::{Vm, VmOutcome};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use core::fmt::{self, Write};
use hv_core::host_mem::PageState;
use hv_services::console::{OperatorView, VmState};
use hv_services::watchdog::Verdict;
use spin::Mutex;

/// Answers `balloon <vm> <MiB>`.
pub type BalloonCommand = fn(&str, u64, &mut dyn Write) -> fmt::Result;
/// Answers a command about one VM (`idle <vm>`).
pub type VmReport = fn(&str, &mut dyn Write) -> fmt::Result;
/// Answers a command without arguments.
pub type Report = fn(&mut dyn Write) -> fmt::Result;

/// Console answers of the services that are not part of this module.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConsoleHandlers {
    /// `balloon <vm> <MiB>`: set the target and say what happened.
    pub balloon: Option<BalloonCommand>,
    /// `swap`: the swap pool and its counters.
    pub swap: Option<Report>,
    /// `idle <vm>`: working set and idle ages.
    pub idle: Option<VmReport>,
    /// Extra lines for `stats`.
    pub stats: Option<Report>,
}

static HANDLERS: Mutex<ConsoleHandlers> = Mutex::new(ConsoleHandlers {
    balloon: None,
    swap: None,
    idle: None,
    stats: None,
});

/// Sets the answers of `balloon`, `swap`, `idle` (fields left `None` keep what was set).
#[allow(
    dead_code,
    reason = "for the balloon and swap/idle services to register their console answers"
)]
pub fn register(handlers: ConsoleHandlers) {
    let mut current = HANDLERS.lock();
    current.balloon = handlers.balloon.or(current.balloon);
    current.swap = handlers.swap.or(current.swap);
    current.idle = handlers.idle.or(current.idle);
    current.stats = handlers.stats.or(current.stats);
}

/// Forgets every registered answer (end of a service scenario).
pub fn clear() {
    *HANDLERS.lock() = ConsoleHandlers::default();
}

/// Page counts of one VM's RAM.
#[derive(Debug, Default, Clone, Copy)]
struct PageCounts {
    private: u64,
    shared: u64,
    swapped: u64,
    ballooned: u64,
    untouched: u64,
}

fn page_counts(vm: &Vm) -> PageCounts {
    let mut counts = PageCounts::default();
    let st = super::host().lock();
    if let Ok(pages) = st.pages_of(vm.ram_backing) {
        for page in pages {
            match page {
                PageState::Private(_) => counts.private += 1,
                PageState::Shared(_) => counts.shared += 1,
                PageState::SwappedOut(_) => counts.swapped += 1,
                PageState::Ballooned => counts.ballooned += 1,
                PageState::NotTouched => counts.untouched += 1,
            }
        }
    }
    counts
}

/// The `vms` state column: running, stuck (no progress for a while, see
/// `hv_services::watchdog`), exited, or stopped with its reason.
fn state(vm: &Vm) -> String {
    let outcome = vm.outcome();
    let state = match &outcome {
        None => match vm
            .progress
            .verdict(crate::arch::guest::host_count(), vm.watchdog_ms)
        {
            Verdict::Alive => VmState::Running,
            Verdict::Stuck { quiet_ms } | Verdict::Expired { quiet_ms, .. } => {
                VmState::Stuck { quiet_ms }
            }
        },
        Some(VmOutcome::Exited(status)) => VmState::Exited(*status),
        Some(VmOutcome::Stopped(why)) => VmState::Stopped(why),
    };
    format!("{state}")
}

/// The operator's view of the running services.
#[derive(Debug, Default)]
pub struct ServicesView;

impl ServicesView {
    fn find(name: &str) -> Option<Arc<Vm>> {
        super::vms().into_iter().find(|vm| vm.name == name)
    }
}

impl OperatorView for ServicesView {
    fn vms(&self, out: &mut dyn Write) -> fmt::Result {
        let vms = super::vms();
        if vms.is_empty() {
            return writeln!(out, "no VMs are running");
        }
        writeln!(
            out,
            "{:<15} {:>3} {:>7} {:>8} {:>7} {:>7} {:>9}  state",
            "vm", "id", "ram_mib", "private", "shared", "swapped", "ballooned"
        )?;
        for vm in vms {
            let c = page_counts(&vm);
            writeln!(
                out,
                "{:<15} {:>3} {:>7} {:>8} {:>7} {:>7} {:>9}  {}",
                vm.name,
                vm.id,
                vm.ram_bytes >> 20,
                c.private,
                c.shared,
                c.swapped,
                c.ballooned,
                state(&vm)
            )?;
        }
        Ok(())
    }

    fn stats(&self, out: &mut dyn Write) -> fmt::Result {
        let host = super::host();
        let (capacity, free) = {
            let st = host.lock();
            (st.pool().capacity(), st.pool().free_count())
        };
        writeln!(
            out,
            "round {}  pool {capacity} frames, {free} free",
            super::round()
        )?;
        let live = dedup::live_stats();
        let saved = super::measure_savings(host, live.as_ref());
        writeln!(
            out,
            "saved now, net frames: dedup {}, balloon {}, swap {}",
            saved.dedup, saved.balloon, saved.swap
        )?;
        match live {
            Some(s) => writeln!(
                out,
                "dedup: pages_sharing {}, zero_pages_merged {}, frames_held {}, full_scans {}, cow_breaks {}",
                s.pages_sharing,
                s.zero_pages_merged,
                s.frames_held,
                s.full_scans,
                s.cow_breaks
            )?,
            None => writeln!(out, "dedup: not running")?,
        }
        match HANDLERS.lock().stats {
            Some(extra) => extra(out),
            None => Ok(()),
        }
    }

    fn ksm(&self, out: &mut dyn Write) -> fmt::Result {
        let Some(s) = dedup::live_stats() else {
            return writeln!(out, "dedup is not running");
        };
        let ours = [
            ("merges", s.merges),
            ("merge_failures", s.merge_failures),
            ("pages_skipped", s.pages_skipped),
            ("metadata_bytes", s.metadata_bytes),
        ];
        for (name, value) in dedup::ksm_counters(&s).into_iter().chain(ours) {
            writeln!(out, "{name} {value}")?;
        }
        Ok(())
    }

    fn balloon(&mut self, vm: &str, mib: u64, out: &mut dyn Write) -> fmt::Result {
        if Self::find(vm).is_none() {
            return writeln!(out, "no VM named '{vm}'");
        }
        match HANDLERS.lock().balloon {
            Some(set) => set(vm, mib, out),
            None => writeln!(out, "the balloon service is not running in this scenario"),
        }
    }

    fn swap(&self, out: &mut dyn Write) -> fmt::Result {
        match HANDLERS.lock().swap {
            Some(report) => report(out),
            None => writeln!(out, "swap is not running in this scenario"),
        }
    }

    fn idle(&self, vm: &str, out: &mut dyn Write) -> fmt::Result {
        if Self::find(vm).is_none() {
            return writeln!(out, "no VM named '{vm}'");
        }
        match HANDLERS.lock().idle {
            Some(report) => report(vm, out),
            None => writeln!(out, "idle tracking is not running in this scenario"),
        }
    }
}
