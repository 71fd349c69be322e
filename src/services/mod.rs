//! The memory-services task: one host memory layer for all guest RAM, and the periodic
//! "round" in which the services change the host side of guest memory.
//!
//! - [`host`]: the shared `HostMem` every VM's RAM lives in (one frame range, sized from
//!   the layout's `/services/guest-pool-mib` or from what the firmware can spare).
//! - [`start`] / [`finish`]: a service scenario registers its VMs, runs them, then tears
//!   everything down and counts the pool frames still allocated (`frames_leaked`).
//! - A round (every `round-interval-us`): the dedup pass ([`dedup`]), then every
//!   registered [`Hook`] (idle tracking, swap, balloon bookkeeping, console poll), then the
//!   figures of [`measure_savings`] go to the run's `SampleLog`, which prints a `STAT sample`
//!   line when they moved (`hv_services::savings`). [`finish`] prints the last figures and
//!   returns the run's [`Summary`], the source of every summary of memory saved.
//!
//! Where rounds run: with more than one CPU online, CPU 0 is the services CPU (the
//! scheduler runs on it only vCPUs that may run nowhere else); with one CPU, the scheduler
//! runs a due round between two slices (see `vmm::sched`).

pub mod allin;
pub mod balloon;
pub mod balloon_scenario;
pub mod dedup;
pub mod idle;
pub mod policy;
pub mod pressure;
pub mod scenario;
pub mod swap;
mod verdict;
pub mod view;

use crate::arch::cp0;
use crate::arch::guest_mem::FwFrameMemory;
use crate::mem::frame::FRAMES;
use crate::vmm::vm::Vm;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use hv_core::frame_pool::FramePool;
use hv_core::host_mem::HostMem;
use hv_devices::vmconfig::ServicesSpec;
use hv_services::dedup::DedupStats;
use hv_services::savings::{Sample, SampleLog, Savings, Summary};
use spin::{Mutex, Once};

/// The host memory layer of all guest RAM.
pub type SharedHost = HostMem<FwFrameMemory>;

/// CP0 Count ticks per microsecond on QEMU's Malta (Count runs at 100 MHz).
pub const COUNT_TICKS_PER_US: u64 = 100;
/// Frames the default pool leaves to the frame allocator (GPA tables, other uses).
const POOL_RESERVE_FRAMES: usize = 2048;
/// Count ticks `finish` waits for other CPUs to let go of a VM (1 s).
const TEARDOWN_WAIT_TICKS: u32 = 100_000_000;
/// Largest default pool (its bookkeeping lives on the 8 MiB kernel heap: ~28 bytes a frame).
const DEFAULT_POOL_MAX_FRAMES: usize = (256 << 20) / 4096;

static HOST: Once<Arc<SharedHost>> = Once::new();
/// Rounds are taken (a service scenario is running).
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Rounds done.
static ROUND: AtomicU64 = AtomicU64::new(0);
/// Count at the start of the last round.
static LAST_ROUND: AtomicU32 = AtomicU32::new(0);
/// Round interval in Count ticks.
static INTERVAL: AtomicU32 = AtomicU32::new(u32::MAX);
/// Only one CPU takes rounds at a time (and `finish` waits for it).
static ROUND_LOCK: Mutex<()> = Mutex::new(());
static TASK: Mutex<Option<Task>> = Mutex::new(None);
/// The running VMs (apart from `TASK`: vCPUs read it while a round holds `TASK`).
static VMS: Mutex<Vec<Arc<Vm>>> = Mutex::new(Vec::new());
static HOOKS: Mutex<Vec<Hook>> = Mutex::new(Vec::new());

/// What a hook did in one round (what it saves is measured apart, by [`measure_savings`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookOutcome {
    /// Something changed (the round counts as a change for the `STAT sample` lines).
    pub changed: bool,
}

/// What a hook sees of the round.
#[allow(
    dead_code,
    reason = "interface for the services that register hooks (swap, idle, balloon, console)"
)]
#[derive(Debug)]
pub struct RoundContext<'a> {
    /// Round number (1 for the first).
    pub round: u64,
    /// The shared host memory layer.
    pub host: &'a Arc<SharedHost>,
    /// The running VMs.
    pub vms: &'a [Arc<Vm>],
}

/// A service's part of each round, registered with [`register`] before [`start`].
#[allow(
    dead_code,
    reason = "interface for the services that register hooks (swap, idle, balloon, console)"
)]
#[derive(Debug, Clone, Copy)]
pub struct Hook {
    /// Name in logs.
    pub name: &'static str,
    /// Runs once per round, after the dedup pass, in registration order.
    pub round: fn(&RoundContext<'_>) -> HookOutcome,
    /// Lets go of every frame the service holds (before teardown counts leaks).
    pub stop: fn(&Arc<SharedHost>),
}

/// Adds `hook` to every following round (until [`finish`]).
#[allow(
    dead_code,
    reason = "interface for the services that register hooks (swap, idle, balloon, console)"
)]
pub fn register(hook: Hook) {
    HOOKS.lock().push(hook);
}

/// The running service scenario.
struct Task {
    dedup: Option<dedup::DedupService>,
    /// The figures of the rounds, and which of them were printed.
    samples: SampleLog,
}

/// What the services running now save, net (see `hv_services::savings`): the one place the
/// per-service figures are computed, for the `STAT sample` lines, the run's [`Summary`] and
/// the console. `dedup` is the dedup service's latest counters (`None` if it does not run).
pub fn measure_savings(host: &SharedHost, dedup: Option<&DedupStats>) -> Savings {
    Savings {
        dedup: dedup.map_or(0, DedupStats::net_saved_frames),
        balloon: balloon::frames_out() as i64,
        swap: swap::net_saved_pages(host),
    }
}

/// Prints sample lines (each whole, see `console`).
fn print_samples(lines: hv_services::savings::ToPrint) {
    for sample in lines.samples() {
        crate::println!("{sample}");
    }
}

/// Frames the default pool takes: the longest free run, leaving a reserve, at most
/// [`DEFAULT_POOL_MAX_FRAMES`].
fn default_pool_frames() -> usize {
    let frames = FRAMES.lock();
    frames
        .largest_free_run()
        .min(frames.free_frames().saturating_sub(POOL_RESERVE_FRAMES))
        .min(DEFAULT_POOL_MAX_FRAMES)
}

/// Creates the shared host layer (`pool_mib` MiB, or the default size); a second call
/// returns the existing layer, whose size then stays what it was.
pub fn init_host(pool_mib: Option<u32>) -> Result<&'static Arc<SharedHost>, String> {
    if let Some(host) = HOST.get() {
        return Ok(host);
    }
    let frames = match pool_mib {
        Some(mib) => (u64::from(mib) << 20) as usize / 4096,
        None => default_pool_frames(),
    };
    let memory = FwFrameMemory::allocate(frames).map_err(|e| {
        format!(
            "guest pool of {frames} frames ({} MiB): {e} (longest free run {} frames)",
            frames / 256,
            FRAMES.lock().largest_free_run()
        )
    })?;
    let (base, nframes) = (memory.base(), memory.len());
    let host = HOST.call_once(|| Arc::new(HostMem::new(FramePool::new(memory, base, nframes))));
    crate::log!(
        "services: guest pool of {nframes} frames ({} MiB) from {base}",
        nframes / 256
    );
    Ok(host)
}

/// The shared host layer of all guest RAM, created with the default size if no scenario
/// asked for another one.
pub fn try_host() -> Result<&'static Arc<SharedHost>, String> {
    init_host(None)
}

/// The shared host layer (see [`try_host`]). Every VM is built on it, so it exists as soon
/// as any VM does; before that this creates it.
pub fn host() -> &'static Arc<SharedHost> {
    try_host().unwrap_or_else(|why| panic!("no guest memory pool: {why}"))
}

/// The VMs of the running service scenario (empty outside one).
pub fn vms() -> Vec<Arc<Vm>> {
    VMS.lock().clone()
}

/// Rounds done so far.
pub fn round() -> u64 {
    ROUND.load(Ordering::Acquire)
}

/// Whether a service scenario is running (rounds are taken).
pub fn active() -> bool {
    ACTIVE.load(Ordering::Acquire)
}

/// Full dedup scans completed (VM-info key 11); 0 when dedup is off.
pub fn dedup_full_scans() -> u64 {
    dedup::published_full_scans()
}

/// Idle-tracking passes completed for VM `vm_id` (VM-info key 12); 0 while idle tracking
/// is not running.
pub fn idle_passes(vm_id: usize) -> u64 {
    idle::passes(vm_id)
}

/// Pool frames free now.
pub fn free_frames() -> u64 {
    HOST.get()
        .map_or(0, |host| host.lock().pool().free_count() as u64)
}

/// Starts the services for `vms` (built on [`host`]): dedup when `spec` asks for it, with
/// `groups[i]` the trust group of `vms[i]`; rounds begin at once.
pub fn start(
    vms: &[Arc<Vm>],
    groups: &[Option<u32>],
    spec: &ServicesSpec,
    dedup_gate: Option<dedup::Gate>,
) -> Result<(), String> {
    let host = try_host()?;
    let dedup = if spec.dedup {
        Some(dedup::DedupService::new(
            host, vms, groups, spec, dedup_gate,
        )?)
    } else {
        None
    };
    *VMS.lock() = vms.to_vec();
    *TASK.lock() = Some(Task {
        dedup,
        samples: SampleLog::default(),
    });
    let interval = u64::from(spec.round_interval_us) * COUNT_TICKS_PER_US;
    INTERVAL.store(interval.min(u64::from(u32::MAX)) as u32, Ordering::Relaxed);
    LAST_ROUND.store(cp0::count(), Ordering::Relaxed);
    ACTIVE.store(true, Ordering::Release);
    crate::log!(
        "services: {} VMs, round every {} us, dedup {}, {} hooks",
        vms.len(),
        spec.round_interval_us,
        if spec.dedup { "on" } else { "off" },
        HOOKS.lock().len()
    );
    Ok(())
}

/// Whether a round is due (a service scenario runs and the interval has passed).
pub fn round_due() -> bool {
    active()
        && cp0::count().wrapping_sub(LAST_ROUND.load(Ordering::Relaxed))
            >= INTERVAL.load(Ordering::Relaxed)
}

/// Runs one round if one is due and no other CPU is running one (the scheduler's hook).
pub fn tick() {
    if round_due() {
        if let Some(_guard) = ROUND_LOCK.try_lock() {
            if round_due() {
                run_round();
            }
        }
    }
}

/// One round (the caller holds `ROUND_LOCK`).
fn run_round() {
    LAST_ROUND.store(cp0::count(), Ordering::Relaxed);
    let round = ROUND.load(Ordering::Relaxed) + 1;
    let host = host();
    let mut task_slot = TASK.lock();
    let Some(task) = task_slot.as_mut() else {
        return;
    };
    let vms = vms();
    let mut changed = false;
    let mut dedup_stats = None;
    if let Some(dedup) = task.dedup.as_mut() {
        match dedup.pass(host, &vms) {
            Ok(outcome) => {
                changed |= outcome.changed;
                dedup_stats = Some(outcome.stats);
            }
            Err(why) => {
                crate::log!("services: dedup stopped: {why}");
                task.dedup = None;
            }
        }
    }
    let hooks: Vec<Hook> = HOOKS.lock().clone();
    let context = RoundContext {
        round,
        host,
        vms: &vms,
    };
    for hook in &hooks {
        changed |= (hook.round)(&context).changed;
    }
    let sample = Sample {
        round,
        saved: measure_savings(host, dedup_stats.as_ref()),
        free_frames: free_frames(),
    };
    print_samples(task.samples.record(sample, changed));
    drop(task_slot);
    ROUND.store(round, Ordering::Release);
    crate::console_op::poll(&mut view::ServicesView);
}

/// What [`finish`] found.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    /// Pool frames still allocated after teardown (`STAT frames_leaked`).
    pub frames_leaked: u64,
    /// Memory saved per service: the last `STAT sample` line and the most in any.
    pub saved: Summary,
}

/// Ends the service scenario: no more rounds; prints the last `STAT sample` line (the
/// figures now), the `STAT <service>_saved_pages[_peak]` lines and the services' counters;
/// every service lets go of its frames, every VM is torn down (`vms` must hold the last
/// references); returns the pool frames still allocated (`frames_leaked`) and the summary of
/// memory saved. `dedup_prefix` goes before the names of the final dedup counters (a
/// scenario that reports a measurement under the plain names uses another).
pub fn finish(vms: Vec<Arc<Vm>>, dedup_prefix: &str) -> Result<Finished, String> {
    ACTIVE.store(false, Ordering::Release);
    // Wait for a round another CPU may still be running.
    let _round = ROUND_LOCK.lock();
    let host = host();
    let task = TASK.lock().take();
    VMS.lock().clear();
    let hooks: Vec<Hook> = core::mem::take(&mut *HOOKS.lock());
    view::clear();
    crate::println!("STAT rounds={}", round());
    let mut saved = Summary::default();
    if let Some(mut task) = task {
        let dedup_stats = task.dedup.as_ref().map(|d| d.stats(host));
        let last = Sample {
            round: round(),
            saved: measure_savings(host, dedup_stats.as_ref()),
            free_frames: free_frames(),
        };
        let (lines, summary) = task.samples.finish(last);
        print_samples(lines);
        saved = summary;
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = saved.write_stats(&mut text);
        crate::console::print_prefixed("", &text);
        if let (Some(dedup), Some(stats)) = (task.dedup.as_mut(), dedup_stats) {
            dedup.print_stats(&stats, dedup_prefix);
            dedup.stop(host)?;
        }
        drop(task);
    }
    for hook in &hooks {
        (hook.stop)(host);
    }
    for mut vm in vms {
        let name = vm.name.clone();
        // After a timeout another CPU may still be dropping the VM's last vCPU.
        let start = cp0::count();
        let vm = loop {
            match Arc::try_unwrap(vm) {
                Ok(vm) => break vm,
                Err(shared) if cp0::count().wrapping_sub(start) < TEARDOWN_WAIT_TICKS => {
                    vm = shared;
                    // A vCPU whose slice ended after the timeout's drain went back to the
                    // queue: nobody runs it any more.
                    crate::vmm::sched::drain();
                    core::hint::spin_loop();
                }
                Err(_) => return Err(format!("VM {name}: still referenced at teardown")),
            }
        };
        vm.teardown()
            .map_err(|why| format!("VM {name}: teardown: {why}"))?;
    }
    let frames_leaked = host.lock().pool().allocated_count() as u64;
    crate::println!("STAT frames_leaked={frames_leaked}");
    Ok(Finished {
        frames_leaked,
        saved,
    })
}
