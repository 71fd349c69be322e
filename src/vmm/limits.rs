//! Per-VM memory limits in the shared guest pool: what happens when the memory core refuses
//! a VM a frame (`hv_core::accounts` decides who pays; this carries it out).
//!
//! - The payer is the requester when it is at its limit, else the VM holding the most pages
//!   beyond its reservation (`MemAccounts::payer`).
//! - With swap running, the payer's coldest pages go to swap and the faulting access is
//!   retried. Otherwise the payer is stopped with a reason naming the limit or the pool, its
//!   frames go back to the pool at once (`Vm::release_memory`) and the access is retried
//!   (or, when the payer is the requester, its slice ends).
//! - Every decision is logged with the payer's name; `STAT mem_*` lines count them.

use super::vm::{Vm, VmOutcome, VmStats};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use hv_core::accounts::{AccountUsage, Refusal};
use hv_core::addr::PAGE_SIZE;

/// What the refused vCPU does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterRefusal {
    /// Frames were freed (by swap, or by stopping another VM): retry the access.
    Retry,
    /// The requester itself pays: stop it with this reason (its memory is released).
    StopSelf(String),
    /// The requester was stopped already (another CPU stopped it to free its memory while
    /// this vCPU ran): end the slice.
    AlreadyStopped,
}

fn describe(usage: Option<AccountUsage>) -> String {
    let Some(u) = usage else {
        return String::from("no account");
    };
    let limit = match u.limit {
        Some(limit) => format!("limit {limit} pages"),
        None => String::from("no limit"),
    };
    format!(
        "{} pages held, {limit}, reservation {} pages",
        u.charged, u.reservation
    )
}

/// The memory core refused `vm` a frame for `refusal`: makes the right VM pay.
pub fn on_refused(vm: &Arc<Vm>, refusal: Refusal) -> AfterRefusal {
    if vm.outcome().is_some() {
        return AfterRefusal::AlreadyStopped;
    }
    VmStats::bump(&vm.stats.mem_refusals);
    let host = crate::services::host();
    let (payer_account, mine, theirs, free, owed) = {
        let st = host.lock();
        let payer = st.accounts().payer(vm.account, refusal);
        (
            payer,
            st.account_usage(vm.account),
            st.account_usage(payer),
            st.pool().free_count(),
            st.accounts().owed(),
        )
    };
    let payer = vm
        .peer_with_account(payer_account)
        .unwrap_or_else(|| vm.clone());
    let why = match refusal {
        Refusal::OverLimit => format!("over its memory limit ({})", describe(mine)),
        _ if Arc::ptr_eq(&payer, vm) && owed == 0 => format!(
            "pool exhausted: holds the most memory beyond its reservation ({}) and no frame is free",
            describe(mine)
        ),
        _ if Arc::ptr_eq(&payer, vm) => format!(
            "pool committed: beyond its reservation with no unreserved frame left ({}; {free} frames free, {owed} owed to reservations)",
            describe(mine)
        ),
        _ => format!(
            "pool committed: holds the most memory beyond its reservation ({}) when VM {} ({}) needed a frame",
            describe(theirs),
            vm.name,
            describe(mine)
        ),
    };
    if crate::services::swap::reclaim_from(&payer) {
        if VmStats::get(&payer.stats.mem_swapped_to_pay) == 0 {
            crate::log!("VM {}: {why}: swapping out its coldest pages", payer.name);
        }
        VmStats::bump(&payer.stats.mem_swapped_to_pay);
        return AfterRefusal::Retry;
    }
    let reason = format!("memory: {why}");
    if Arc::ptr_eq(&payer, vm) {
        return AfterRefusal::StopSelf(reason);
    }
    payer.console_flush();
    if payer.finish(VmOutcome::Stopped(reason)) {
        VmStats::bump(&payer.stats.mem_stopped);
    }
    if let Err(e) = payer.release_memory() {
        crate::log!("{e}");
    }
    AfterRefusal::Retry
}

/// Stops `vm` for memory (the requester paid): counts it and gives its frames back. The
/// caller has recorded the outcome.
pub fn release_after_stop(vm: &Vm) {
    VmStats::bump(&vm.stats.mem_stopped);
    if let Err(e) = vm.release_memory() {
        crate::log!("{e}");
    }
}

/// Prints the pool's and each VM's account figures (`STAT mem_...`, one figure a line).
pub fn print_stats(vms: &[Arc<Vm>]) {
    let host = crate::services::host();
    let st = host.lock();
    let accounts = st.accounts();
    crate::println!("STAT mem_pool_frames={}", accounts.capacity());
    crate::println!("STAT mem_committed_pages={}", accounts.committed());
    crate::println!("STAT mem_owed_pages={}", accounts.owed());
    for vm in vms {
        let Some(u) = st.account_usage(vm.account) else {
            continue;
        };
        let name = &vm.name;
        let mib = |pages: u64| (pages * PAGE_SIZE) >> 20;
        crate::println!("STAT mem_{name}_peak_mib={}", mib(u.peak));
        if let Some(limit) = u.limit {
            crate::println!("STAT mem_{name}_limit_mib={}", mib(limit));
        }
        crate::println!("STAT mem_{name}_reservation_mib={}", mib(u.reservation));
        crate::println!("STAT mem_{name}_refused_at_limit={}", u.refused_at_limit);
        crate::println!("STAT mem_{name}_refused_pool={}", u.refused_pool);
        crate::println!(
            "STAT mem_{name}_swapped_to_pay={}",
            VmStats::get(&vm.stats.mem_swapped_to_pay)
        );
        crate::println!(
            "STAT mem_{name}_stopped={}",
            VmStats::get(&vm.stats.mem_stopped)
        );
    }
}
