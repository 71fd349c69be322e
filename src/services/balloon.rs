//! The virtio balloon of each VM, host side: hv-devices' `VirtioBalloon` (virtio 1.x over
//! virtio-mmio v2) with hv-services' `VmBalloon` as its memory policy, a registry of the
//! balloons by VM name so the host can change targets at run time (operator console,
//! scenarios), the counters the scenarios print as `STAT` lines, and the log of refused
//! driver input (marked as deliberate for a guest that sends bad requests on purpose to
//! test the refusals: see [`Balloon::expect_bad_requests`]).
//!
//! The device sits on the VM's MMIO bus behind a [`BusBalloon`]; the host side reaches the
//! same device through [`find`]. Lock order: a VM's bus lock, then the balloon's lock; host
//! callers take only the balloon's lock.
//!
//! A service scenario calls [`register`]: each services round then prints pending refusal
//! lines, and the operator console's `balloon <vm> <MiB>` calls [`set_target`]. What the
//! balloons save is [`frames_out`] (`services::measure_savings`).

use super::view::{self, ConsoleHandlers};
use super::{Hook, HookOutcome, RoundContext};
use crate::arch::guest_mem::{FwFrameMemory, FwTableFrames};
use crate::vmm::devices::RamView;
use crate::vmm::flush::FwRemoteFlush;
use alloc::string::String;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use hv_core::addr::PAGE_SIZE;
use hv_devices::bus::{AccessError, MmioDevice};
use hv_devices::irq::IrqLine;
use hv_devices::virtio_balloon::{BalloonStats, VirtioBalloon};
use hv_devices::virtio_mmio::{TransportConfigError, VirtioMmio};
use hv_devices::Width;
use hv_services::balloon::{self as policy, BalloonCounters, BalloonError, VmBalloon};
use spin::Mutex;

/// The memory policy of one VM's balloon, as the firmware instantiates it.
pub type Hooks = VmBalloon<FwTableFrames, FwFrameMemory, FwRemoteFlush>;
/// One VM's balloon device: transport, device model, memory policy.
pub type Device = VirtioMmio<VirtioBalloon<Hooks>, RamView, BalloonIrq>;

/// Refusal log lines printed per balloon; later ones are only counted.
const LOGGED_EVENTS_MAX: u64 = 32;
/// The test guest that sends bad balloon requests on purpose (guests/balloonguest).
pub const BAD_REQUEST_TEST_IMAGE: &str = "balloonguest";
/// Added to a refusal line of a VM whose guest sends bad requests on purpose.
const DELIBERATE_NOTE: &str = " (deliberate: the test guest checks that bad requests are refused)";

/// The balloon's interrupt line: its level, for a vCPU to sample (a polling driver
/// ignores it).
#[derive(Debug, Clone, Default)]
pub struct BalloonIrq {
    level: Arc<core::sync::atomic::AtomicBool>,
    raised: Arc<AtomicU64>,
}

impl BalloonIrq {
    /// Whether the device wants attention now.
    pub fn asserted(&self) -> bool {
        self.level.load(Ordering::Acquire)
    }

    /// How many times the line went up.
    pub fn raised(&self) -> u64 {
        self.raised.load(Ordering::Relaxed)
    }
}

impl IrqLine for BalloonIrq {
    fn set_level(&mut self, asserted: bool) {
        if asserted && !self.level.swap(true, Ordering::AcqRel) {
            self.raised.fetch_add(1, Ordering::Relaxed);
        } else if !asserted {
            self.level.store(false, Ordering::Release);
        }
    }
}

/// One VM's balloon, shared by its bus and the host side.
pub struct Balloon {
    vm_name: String,
    ram_bytes: u64,
    device: Mutex<Device>,
    irq: BalloonIrq,
    logged: AtomicU64,
    /// The guest sends bad requests on purpose: its refusal lines say so.
    bad_requests_expected: AtomicBool,
}

impl fmt::Debug for Balloon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balloon")
            .field("vm", &self.vm_name)
            .finish_non_exhaustive()
    }
}

/// The device on the VM's bus: every access goes to the shared balloon.
#[derive(Debug)]
pub struct BusBalloon(Arc<Balloon>);

impl MmioDevice for BusBalloon {
    fn read(&mut self, offset: u64, width: Width) -> Result<u64, AccessError> {
        self.0.device.lock().read(offset, width)
    }

    fn write(&mut self, offset: u64, width: Width, value: u64) -> Result<(), AccessError> {
        let mut device = self.0.device.lock();
        let result = device.write(offset, width, value);
        self.0.log_events(&mut device);
        result
    }
}

/// Balloons of the VMs built so far (weak: a VM's teardown frees its balloon).
static REGISTRY: Mutex<Vec<Weak<Balloon>>> = Mutex::new(Vec::new());

/// Why a run-time target was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetError {
    /// No running VM of that name has a balloon.
    NoBalloon(String),
    /// The target does not fit the VM.
    Target(BalloonError),
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoBalloon(name) => write!(f, "no running VM named '{name}' has a balloon"),
            Self::Target(e) => write!(f, "{e}"),
        }
    }
}

impl Balloon {
    /// Builds the balloon of VM `vm_name` over its RAM and registers it; `target_mib` is the
    /// initial target from the layout.
    pub fn create(
        vm_name: &str,
        ram: &RamView,
        ram_bytes: u64,
        target_mib: Option<u32>,
    ) -> Result<Arc<Self>, String> {
        let hooks = VmBalloon::new(ram.memory().clone());
        let irq = BalloonIrq::default();
        let mut device = VirtioMmio::new(VirtioBalloon::new(hooks), ram.clone(), irq.clone())
            .map_err(|e: TransportConfigError| alloc::format!("virtio-mmio: {e:?}"))?;
        if let Some(mib) = target_mib {
            policy::set_target_mib(&mut device, u64::from(mib))
                .map_err(|e| alloc::format!("balloon-target-mib: {e}"))?;
        }
        let balloon = Arc::new(Self {
            vm_name: String::from(vm_name),
            ram_bytes,
            device: Mutex::new(device),
            irq,
            logged: AtomicU64::new(0),
            bad_requests_expected: AtomicBool::new(false),
        });
        let mut registry = REGISTRY.lock();
        registry.retain(|b| b.strong_count() > 0);
        registry.push(Arc::downgrade(&balloon));
        Ok(balloon)
    }

    /// The device for the VM's bus.
    pub fn bus_device(self: &Arc<Self>) -> BusBalloon {
        BusBalloon(self.clone())
    }

    /// The interrupt line.
    pub fn irq(&self) -> &BalloonIrq {
        &self.irq
    }

    /// Marks the guest as one that sends bad requests on purpose (the test guest
    /// [`BAD_REQUEST_TEST_IMAGE`]): its refusal lines are labelled deliberate, so nobody
    /// reads them as errors. They are refused and counted all the same.
    pub fn expect_bad_requests(&self) {
        self.bad_requests_expected.store(true, Ordering::Relaxed);
    }

    /// Prints the policy's new refusal records (the first [`LOGGED_EVENTS_MAX`] of them).
    fn log_events(&self, device: &mut Device) {
        let deliberate = self.bad_requests_expected.load(Ordering::Relaxed);
        for event in device.backend_mut().hooks_mut().drain_events() {
            let n = self.logged.fetch_add(1, Ordering::Relaxed);
            let note = if deliberate && event.kind.is_refused_input() {
                DELIBERATE_NOTE
            } else {
                ""
            };
            if n < LOGGED_EVENTS_MAX {
                crate::log!("VM {}: {event}{note}", self.vm_name);
            } else if n == LOGGED_EVENTS_MAX {
                crate::log!(
                    "VM {}: further balloon refusals are only counted",
                    self.vm_name
                );
            }
        }
    }

    /// Sets the target in 4 KiB pages (checked against the VM's RAM) and tells the driver.
    pub fn set_target_pages(&self, pages: u64) -> Result<(), BalloonError> {
        policy::set_target(&mut self.device.lock(), pages)
    }

    /// A snapshot of the balloon's state and counters.
    pub fn snapshot(&self) -> BalloonSnapshot {
        let device = self.device.lock();
        let backend = device.backend();
        BalloonSnapshot {
            driver_ok: device.is_active(),
            target_pages: backend.target_pages(),
            actual_pages: backend.actual_pages(),
            device: backend.stats(),
            policy: backend.hooks().counters(),
            guest_stats: backend.hooks().guest_stats().to_vec(),
            irqs: self.irq.raised(),
            ram_pages: self.ram_bytes / PAGE_SIZE,
        }
    }

    /// Asks the driver for fresh statistics (returns the buffer it left with the device).
    /// Returns whether a buffer was held.
    pub fn request_stats(&self) -> bool {
        let mut device = self.device.lock();
        let Some(queue) = device.backend().stats_queue() else {
            return false;
        };
        device
            .with_queue(queue, |balloon, vq, mem| balloon.request_stats(vq, mem))
            .is_some_and(|result| result.unwrap_or(false))
    }
}

/// A balloon's state at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalloonSnapshot {
    /// The driver set DRIVER_OK (and the device needs no reset).
    pub driver_ok: bool,
    /// Target in pages (config `num_pages`).
    pub target_pages: u32,
    /// What the driver reports (config `actual`).
    pub actual_pages: u32,
    /// The device model's counters (chains, PFNs).
    pub device: BalloonStats,
    /// The memory policy's counters (frames, refusals).
    pub policy: BalloonCounters,
    /// The guest's latest statistics (tag, value).
    pub guest_stats: Vec<(u16, u64)>,
    /// Interrupts raised.
    pub irqs: u64,
    /// RAM of the VM in pages.
    pub ram_pages: u64,
}

impl BalloonSnapshot {
    /// Driver input refused, all kinds: PFNs refused by the policy and malformed chains.
    pub fn rejected(&self) -> u64 {
        let p = &self.policy;
        p.refused_out_of_range + p.refused_duplicate + p.refused_not_allowed + p.bad_chains
    }
}

/// The balloon of the running VM called `vm_name`.
pub fn find(vm_name: &str) -> Option<Arc<Balloon>> {
    REGISTRY
        .lock()
        .iter()
        .filter_map(Weak::upgrade)
        .find(|b| b.vm_name == vm_name)
}

/// Every live balloon, in creation order.
pub fn all() -> Vec<Arc<Balloon>> {
    REGISTRY.lock().iter().filter_map(Weak::upgrade).collect()
}

/// Sets the balloon target of VM `vm_name` to `mib` MiB (the operator console's
/// `balloon <vm> <MiB>`); returns the target in pages.
pub fn set_target(vm_name: &str, mib: u64) -> Result<u64, TargetError> {
    let balloon = find(vm_name).ok_or_else(|| TargetError::NoBalloon(String::from(vm_name)))?;
    let pages = mib.saturating_mul((1 << 20) / PAGE_SIZE);
    balloon
        .set_target_pages(pages)
        .map_err(TargetError::Target)?;
    crate::log!("VM {vm_name}: balloon target set to {mib} MiB ({pages} pages)");
    Ok(pages)
}

/// Marks the balloons of the VMs running the test guest that sends bad requests on purpose
/// (`images[i]` is the image of `vms[i]`, from the layout).
pub fn expect_bad_requests_of_test_guests<'a>(
    vms: &[Arc<crate::vmm::vm::Vm>],
    images: impl IntoIterator<Item = &'a str>,
) {
    for (vm, image) in vms.iter().zip(images) {
        if image == BAD_REQUEST_TEST_IMAGE {
            for balloon in &vm.balloons {
                balloon.expect_bad_requests();
            }
        }
    }
}

/// Frames the balloons gave back to the pool that are still out (`VmBalloon::frames_out`):
/// what the balloon saves, for `services::measure_savings`.
pub fn frames_out() -> u64 {
    all()
        .iter()
        .map(|b| b.device.lock().backend_mut().hooks_mut().frames_out())
        .sum()
}

/// Services round: prints refusals logged since the last access (a driver that stopped
/// writing leaves none behind, but a round costs little).
pub fn tick() {
    for balloon in all() {
        let mut device = balloon.device.lock();
        balloon.log_events(&mut device);
    }
}

/// The balloon's part of a services round: the refusal lines (what it saves moves the
/// sample lines by itself).
fn round(_ctx: &RoundContext<'_>) -> HookOutcome {
    tick();
    HookOutcome::default()
}

/// The balloon holds no frames of its own: inflated pages' frames are already back in the
/// pool, and teardown frees the devices with their VMs.
fn stop(_host: &Arc<super::SharedHost>) {}

/// The console's `balloon <vm> <MiB>`.
fn console_balloon(vm: &str, mib: u64, out: &mut dyn fmt::Write) -> fmt::Result {
    match set_target(vm, mib) {
        Ok(pages) => {
            let actual = find(vm).map_or(0, |b| b.snapshot().actual_pages);
            writeln!(
                out,
                "balloon {vm}: target {mib} MiB ({pages} pages); the driver holds {actual} pages now"
            )
        }
        Err(e) => writeln!(out, "balloon {vm}: refused: {e}"),
    }
}

/// Joins the services: a round hook (log lines, saved pages) and the console's `balloon`
/// command. Call before `services::start`; `services::finish` undoes it.
pub fn register() {
    super::register(Hook {
        name: "balloon",
        round,
        stop,
    });
    view::register(ConsoleHandlers {
        balloon: Some(console_balloon),
        ..ConsoleHandlers::default()
    });
}

/// Prints the `STAT` lines of every live balloon: one line per VM and the totals.
pub fn print_stats() {
    let mut totals = [0u64; 4];
    for balloon in all() {
        let s = balloon.snapshot();
        let (d, p) = (&s.device, &s.policy);
        crate::println!(
            "STAT balloon_vm={} target_pages={} actual_pages={} inflated_pages={} \
             deflated_pages={} frames_returned={} reported_pages={} rejected_out_of_range={} \
             rejected_duplicate={} rejected_not_allowed={} rejected_bad_chains={} irqs={}",
            balloon.vm_name,
            s.target_pages,
            s.actual_pages,
            d.inflated_pages,
            d.deflated_pages,
            p.frames_returned,
            p.reported_pages,
            p.refused_out_of_range,
            p.refused_duplicate,
            p.refused_not_allowed,
            p.bad_chains,
            s.irqs,
        );
        totals[0] += d.inflated_pages;
        totals[1] += d.deflated_pages;
        totals[2] += p.frames_returned;
        totals[3] += s.rejected();
    }
    crate::println!("STAT balloon_inflated_pages={}", totals[0]);
    crate::println!("STAT balloon_deflated_pages={}", totals[1]);
    crate::println!("STAT balloon_frames_returned={}", totals[2]);
    crate::println!("STAT balloon_rejected={}", totals[3]);
    // What the balloons save is `balloon_saved_pages` (services::finish).
}
