//! A virtual machine: its memory (the memory core's per-VM object over firmware frames),
//! its name and console, its counters and its final result.

use super::devices::{self, BusDevice, RamView};
use super::flush::FwRemoteFlush;
use super::loader::{self, ImageError};
use crate::arch::guest_mem::{FwFrameMemory, FwTableFrames};
use crate::services::balloon::Balloon;
use alloc::format;
use alloc::string::String;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use hv_core::accounts::{AccountId, AccountSpec};
use hv_core::addr::{Gfn, GfnRange, Gpa, PAGE_SIZE};
use hv_core::fault::{FaultError, PtePair, Vm as MemVm, VmError};
use hv_core::memslot::{BackingId, SlotFlags, SlotId};
use hv_devices::bus::{BusError, MmioBus};
use hv_devices::console_log::Transcript;
use hv_devices::guest_dt;
use hv_devices::vmconfig::{self, CpuModel, DeviceSpec, MemShare, WorkloadSpec};
use hv_emul::abi::GUEST_KSEG0_BASE;
use hv_emul::emulate::{MmioKind, MmioReq};
use spin::{Mutex, Once};

/// The memory core's VM type as the firmware instantiates it.
pub type GuestMemory = MemVm<FwTableFrames, FwFrameMemory, FwRemoteFlush>;

/// Longest piece of a console line printed at once (longer lines are shown in pieces).
const CONSOLE_LINE_MAX: usize = 200;
/// Open-bus accesses logged per VM.
const LOGGED_UNBACKED: u64 = 8;
/// Console lines kept for inspection (lines starting with one of [`RECORDED_WORDS`]).
const RECORDED_LINES_MAX: usize = 128;
/// First words of console lines a scenario may want to inspect afterwards.
const RECORDED_WORDS: &[&str] = &[
    "ATTEMPT",
    "OUTCOME",
    "HOSTILE",
    "CHECKSUM",
    "BALLOON",
    "memguest:",
];
/// Hardware interrupt line of the virtio balloon (Cause.IP3), as the guest's device tree
/// names it.
pub const BALLOON_IRQ_LINE: u8 = (guest_dt::VIRTIO_CPU_IRQ - 2) as u8;
/// Hardware interrupt line of the consoles (Cause.IP2).
pub const UART_IRQ_LINE: u8 = (guest_dt::UART_CPU_IRQ - 2) as u8;

/// How a VM is built.
#[derive(Debug, Clone)]
pub struct VmSpec<'a> {
    /// Name shown in console prefixes and results.
    pub name: String,
    /// Guest RAM in bytes (a multiple of the page size), at GPA 0.
    pub ram_bytes: u64,
    /// An optional read-only memslot (zero-filled): base and size in bytes.
    pub rom: Option<(Gpa, u64)>,
    /// Emulated devices.
    pub devices: Vec<DeviceSpec>,
    /// Host CPUs (bit mask) the VM's vCPUs may run on; `None` for any.
    pub affinity: Option<u64>,
    /// Number of vCPUs (at least 1): each has its own guest CP0 and TLB, all share the VM's
    /// memory; the VM ends when vCPU 0 ends.
    pub vcpus: usize,
    /// The guest image.
    pub image: ImageSource<'a>,
    /// Test knob: the first time the guest yields, swap these guest pages out (GPA, count),
    /// which makes the memory core flush their derived translations.
    pub swap_on_yield: Option<(Gpa, u64)>,
    /// The memory-services workload reported to the guest (VM-info keys 9 and 10).
    pub workload: Option<WorkloadSpec>,
    /// Initial target of the VM's balloon in MiB (layout `balloon-target-mib`).
    pub balloon_target_mib: Option<u32>,
    /// Its limit and reservation in the shared guest pool (`mem-limit-mib`,
    /// `mem-reservation-mib`).
    pub mem: MemShare,
    /// Progress window of its watchdog in ms (`watchdog-ms`); `None` for no watchdog.
    pub watchdog_ms: Option<u32>,
    /// The virtual CPU model every vCPU of the VM reports (layout `cpu`).
    pub cpu: CpuModel,
    /// The VM's layout entry when the guest is handed a device tree by the UHI convention
    /// (layout `boot-protocol = "uhi"`): the tree is generated from it at the top of RAM and
    /// vCPU 0 starts with a0 = -2, a1 = its address.
    pub device_tree: Option<LayoutVm>,
}

impl<'a> VmSpec<'a> {
    /// A VM of one vCPU running `image` in `ram_bytes` of RAM, with no devices, ROM, services
    /// settings or device tree: the self-tests and benchmarks, which set what they need on
    /// top.
    pub fn plain(name: String, ram_bytes: u64, image: ImageSource<'a>) -> Self {
        Self {
            name,
            ram_bytes,
            rom: None,
            devices: Vec::new(),
            affinity: None,
            vcpus: 1,
            image,
            swap_on_yield: None,
            workload: None,
            balloon_target_mib: None,
            mem: Default::default(),
            watchdog_ms: None,
            cpu: CpuModel::default(),
            device_tree: None,
        }
    }
}

/// A VM's entry in the layout, as the device tree generator reads it.
pub type LayoutVm = vmconfig::VmSpec;

/// Most guest restarts (reboots) of one VM before it is stopped as a restart loop.
pub const MAX_RESTARTS: u32 = 16;

/// Copies `bytes` into guest RAM from `gpa` on, through the host layer.
fn load_bytes(
    memory: &GuestMemory,
    backing: BackingId,
    gpa: u64,
    bytes: &[u8],
) -> Result<(), FaultError> {
    let mut gpa = gpa;
    let mut rest = bytes;
    while !rest.is_empty() {
        let offset = (gpa % PAGE_SIZE) as usize;
        let take = rest.len().min(PAGE_SIZE as usize - offset);
        memory
            .host_write(backing, gpa / PAGE_SIZE, offset, &rest[..take])
            .map_err(FaultError::from)?;
        gpa += take as u64;
        rest = &rest[take..];
    }
    Ok(())
}

/// The device tree of `layout` for its `boots`-th start (1 = first).
fn device_tree_blob(layout: &LayoutVm, boots: u32) -> Result<Vec<u8>, String> {
    let host = guest_dt::HostFacts {
        cpu_clock_hz: crate::board::GUEST_CPU_CLOCK_HZ,
        boot_count: boots,
    };
    guest_dt::build(layout, &host).map_err(|e| format!("device tree: {e}"))
}

/// Where a VM's image comes from.
#[derive(Debug, Clone, Copy)]
pub enum ImageSource<'a> {
    /// An ELF file.
    Elf(&'a [u8]),
    /// A flat image loaded at a guest physical address and entered at its first byte.
    Flat {
        /// The bytes.
        bytes: &'a [u8],
        /// Guest physical load address.
        gpa: u64,
    },
}

/// Why a VM could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmBuildError {
    /// RAM size zero, unaligned or beyond the guest window.
    BadRamSize(u64),
    /// No host frames for the shared guest pool (why).
    NoFrames(String),
    /// The memory core refused the set-up.
    Memory(VmError),
    /// The image is unusable.
    Image(ImageError),
    /// Copying the image into guest RAM failed.
    Load(FaultError),
    /// The device tree does not fit in RAM above the image (its size in bytes).
    DeviceTreeDoesNotFit(usize),
    /// The device tree could not be generated.
    DeviceTree(String),
    /// The devices could not be set up.
    Devices(String),
    /// The pool cannot admit the VM's reservation (why).
    Reservation(String),
}

impl fmt::Display for VmBuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadRamSize(bytes) => write!(f, "bad guest RAM size {bytes:#x}"),
            Self::NoFrames(why) => write!(f, "no guest memory pool: {why}"),
            Self::Memory(e) => write!(f, "memory core: {e}"),
            Self::Image(e) => write!(f, "guest image: {e}"),
            Self::Load(e) => write!(f, "loading the image: {e}"),
            Self::DeviceTree(why) => f.write_str(why),
            Self::DeviceTreeDoesNotFit(len) => write!(
                f,
                "the {len}-byte device tree does not fit in guest RAM above the image"
            ),
            Self::Devices(e) => write!(f, "devices: {e}"),
            Self::Reservation(e) => write!(f, "{e}"),
        }
    }
}

/// Per-VM counters.
#[derive(Debug, Default)]
pub struct VmStats {
    /// Guest exits of any kind.
    pub exits: AtomicU64,
    /// Calls into the memory core's fault handler (`map_page`).
    pub gpa_faults: AtomicU64,
    /// TLB refills delivered to the guest's own refill handler.
    pub guest_tlb_refills: AtomicU64,
    /// Instructions emulated.
    pub emulated: AtomicU64,
    /// Hypercalls served (refused ones included).
    pub hypercalls: AtomicU64,
    /// Hypercalls refused (bad number, code field or argument; counted in `hypercalls` too).
    pub hypercalls_refused: AtomicU64,
    /// TLB writes refused as duplicate matches (a machine check reflected to the guest).
    pub machine_checks: AtomicU64,
    /// Root pairs dropped because a new one needed their slot in a vCPU's derived set.
    pub derived_evictions: AtomicU64,
    /// Exceptions reflected to the guest (TLB refills included).
    pub reflected: AtomicU64,
    /// Guest timer interrupts raised.
    pub timer_interrupts: AtomicU64,
    /// Device (MMIO) accesses emulated.
    pub mmio: AtomicU64,
    /// Stores to the read-only memslot (ignored).
    pub rom_writes: AtomicU64,
    /// Loads and stores to guest physical addresses nobody owns (open bus).
    pub unbacked: AtomicU64,
    /// Exits through the (X)TLB refill vector.
    pub refill_exits: AtomicU64,
    /// Times a vCPU of this VM was preempted by the host timer.
    pub preemptions: AtomicU64,
    /// Derived halves (root TLB and refill cache, as the vCPUs' derived sets recorded them)
    /// dropped because a flush named the guest frame they were built from.
    pub flushed_entries: AtomicU64,
    /// Host Count ticks its vCPUs spent in slices (the scheduler's measure of its CPU).
    pub cpu_ticks: AtomicU64,
    /// Frames the memory core refused the VM (limit or committed pool).
    pub mem_refusals: AtomicU64,
    /// Times its pages were swapped out to pay for a refusal (its own or another VM's).
    pub mem_swapped_to_pay: AtomicU64,
    /// Times it was stopped to pay for one (0 or 1).
    pub mem_stopped: AtomicU64,
    /// Guest restarts (reboots) served.
    pub restarts: AtomicU64,
}

impl VmStats {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Most yield marks kept per VM.
const MARKS_MAX: usize = 64;

/// Host Count and counters at one guest yield (benchmark timestamps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// Host Count.
    pub count: u32,
    /// Exits so far.
    pub exits: u64,
    /// Refill-vector exits so far.
    pub refill_exits: u64,
    /// map_page calls so far.
    pub gpa_faults: u64,
    /// Refills the vector served or tried from this CPU's refill cache so far.
    pub cached_refills: u64,
    /// TLB refills delivered to the guest so far.
    pub guest_tlb_refills: u64,
}

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmOutcome {
    /// The guest called exit with this status.
    Exited(u64),
    /// The hypervisor stopped it (reason).
    Stopped(String),
}

/// A virtual machine.
pub struct Vm {
    /// VM number (0-based), reported to the guest as VM info key 4.
    pub id: usize,
    /// Name used in console prefixes and results.
    pub name: String,
    /// Guest RAM size in bytes.
    pub ram_bytes: u64,
    /// Guest memory: GPA table, memslots, host backing.
    pub memory: Arc<GuestMemory>,
    /// The backing object of guest RAM (memslot at GPA 0).
    pub ram_backing: BackingId,
    /// The read-only memslot: base, size in bytes, backing.
    pub rom: Option<(Gpa, u64, BackingId)>,
    /// The read-only memslot's id (for the isolation drill's memslot removal).
    pub rom_slot: Option<SlotId>,
    rom_removed: AtomicBool,
    /// The isolation scenario's page drill (armed on the hostile VM only).
    pub drill: super::isolation::drill::DrillSlot,
    devices: Mutex<MmioBus<BusDevice>>,
    /// The VM's virtio balloons (usually one).
    pub balloons: Vec<Arc<Balloon>>,
    uart_irq: devices::UartIrq,
    /// Guest entry point.
    pub entry: u64,
    /// The virtual CPU model of the VM's vCPUs.
    pub cpu: CpuModel,
    /// a0 and a1 for vCPU 0 at reset (UHI: -2 and the device tree's address); zero without.
    pub boot_args: [u64; 2],
    image: ImageSource<'static>,
    device_tree: Option<LayoutVm>,
    restarts: core::sync::atomic::AtomicU32,
    /// First guest physical address above every loaded segment.
    pub image_end: u64,
    /// Number of vCPUs.
    pub vcpus: usize,
    /// Host CPUs (bit mask) its vCPUs may run on; `None` for any.
    pub affinity: Option<u64>,
    /// The memory-services workload reported to the guest (VM-info keys 9 and 10).
    pub workload: Option<WorkloadSpec>,
    /// Guest physical address of the first virtio-mmio balloon transport (VM-info key 13).
    pub balloon_gpa: Option<Gpa>,
    /// Its memory account in the shared pool (limit and reservation).
    pub account: AccountId,
    /// Its limit and reservation as the layout gave them.
    pub mem: MemShare,
    /// Progress window of its watchdog in ms; `None` for no watchdog.
    pub watchdog_ms: Option<u32>,
    /// Liveness: the last progress the VM made (see `vmm::liveness`).
    pub progress: Arc<super::liveness::VmProgress>,
    /// The VMs built with it (itself included), to find the one that pays for memory.
    peers: Once<Vec<Weak<Vm>>>,
    /// Host Count when its first slice started, and when it ended (its lifetime).
    first_slice: Once<u32>,
    ended_at: Once<u32>,
    /// Counters.
    pub stats: VmStats,
    console: Mutex<Transcript>,
    marks: Mutex<Vec<Mark>>,
    outcome: Mutex<Option<VmOutcome>>,
    swap_on_yield: Mutex<Option<(Gpa, u64)>>,
}

impl fmt::Debug for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("ram_bytes", &self.ram_bytes)
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// Builds VM `id` from `spec`: RAM pool, GPA table, one memslot over all RAM, image loaded.
    pub fn build(id: usize, spec: &VmSpec<'static>) -> Result<Self, VmBuildError> {
        let ram_bytes = spec.ram_bytes;
        if ram_bytes == 0
            || !ram_bytes.is_multiple_of(PAGE_SIZE)
            || ram_bytes > hv_emul::abi::GUEST_KSEG_WINDOW_BYTES / 2
        {
            return Err(VmBuildError::BadRamSize(ram_bytes));
        }
        let image = match spec.image {
            ImageSource::Elf(bytes) => loader::parse(bytes, ram_bytes),
            ImageSource::Flat { bytes, gpa } => loader::flat(bytes, gpa, ram_bytes),
        }
        .map_err(VmBuildError::Image)?;
        // Every VM's RAM lives in the one shared host layer (dedup may share frames across
        // a trust group; swap and balloon manage one pool).
        let host = crate::services::try_host().map_err(VmBuildError::NoFrames)?;
        let share = spec.mem;
        let account = host
            .admit_account(AccountSpec {
                limit: share.limit_mib.map(MemShare::pages),
                reservation: MemShare::pages(share.reservation_mib),
            })
            .map_err(|e| {
                VmBuildError::Reservation(format!(
                    "node /vms/{}: mem-reservation-mib = <{}> refused: {e}",
                    spec.name, share.reservation_mib
                ))
            })?;
        // From here on a failure must give the account back.
        let built = Self::build_in(id, spec, image, host, account);
        if built.is_err() {
            host.remove_account(account);
        }
        built
    }

    fn build_in(
        id: usize,
        spec: &VmSpec<'static>,
        image: loader::Image<'_>,
        host: &Arc<crate::services::SharedHost>,
        account: AccountId,
    ) -> Result<Self, VmBuildError> {
        let ram_bytes = spec.ram_bytes;
        let pages = ram_bytes / PAGE_SIZE;
        let guest =
            GuestMemory::with_host(FwTableFrames::new(), host.clone(), FwRemoteFlush::new())
                .map_err(|e| {
                    crate::log!(
                        "VM {}: no GPA-table root: {} frames free in the allocator",
                        spec.name,
                        crate::mem::frame::FRAMES.lock().free_frames()
                    );
                    VmBuildError::Memory(e)
                })?;
        let guest = Arc::new(guest);
        let backing = guest
            .host()
            .create_backing_in(pages, account)
            .map_err(|e| VmBuildError::Memory(VmError::Backing(e)))?;
        let range = GfnRange::from_start_len(Gfn::new(0), pages)
            .map_err(|_| VmBuildError::BadRamSize(ram_bytes))?;
        guest
            .add_memslot(range, backing, 0, SlotFlags::empty())
            .map_err(VmBuildError::Memory)?;
        let write = |gpa: u64, bytes: &[u8]| -> Result<(), VmBuildError> {
            load_bytes(&guest, backing, gpa, bytes).map_err(VmBuildError::Load)
        };
        for segment in &image.segments {
            write(segment.gpa, segment.file)?;
        }
        let image_end = image
            .segments
            .iter()
            .map(|s| s.gpa + s.mem_bytes)
            .max()
            .unwrap_or(0);
        let boot_args = match &spec.device_tree {
            None => [0, 0],
            Some(layout) => {
                let blob = device_tree_blob(layout, 1).map_err(VmBuildError::DeviceTree)?;
                let at = guest_dt::placement(ram_bytes, image_end, blob.len())
                    .ok_or(VmBuildError::DeviceTreeDoesNotFit(blob.len()))?;
                write(at.raw(), &blob)?;
                crate::log!(
                    "VM {}: device tree ({} bytes) at GPA {:#x}, passed by UHI",
                    spec.name,
                    blob.len(),
                    at.raw()
                );
                // UHI: a0 = -2 (sign-extended, as a 32-bit kernel reads it), a1 = the
                // tree's kernel virtual address in the guest's KSEG0 window.
                [(-2i64) as u64, GUEST_KSEG0_BASE | at.raw()]
            }
        };
        let rom = match spec.rom {
            None => None,
            Some((base, bytes)) => {
                let pages = bytes / PAGE_SIZE;
                let rom_backing = guest
                    .host()
                    .create_backing_in(pages, account)
                    .map_err(|e| VmBuildError::Memory(VmError::Backing(e)))?;
                let range = GfnRange::from_start_len(base.frame(), pages)
                    .map_err(|_| VmBuildError::BadRamSize(bytes))?;
                let id = guest
                    .add_memslot(range, rom_backing, 0, SlotFlags::READ_ONLY)
                    .map_err(VmBuildError::Memory)?;
                Some((base, bytes, rom_backing, id))
            }
        };
        let rom_slot = rom.map(|r| r.3);
        let rom = rom.map(|(base, bytes, backing, _)| (base, bytes, backing));
        let ram_view = RamView::new(guest.clone(), backing, Gpa::new(0), ram_bytes);
        let progress = Arc::new(super::liveness::VmProgress::new(
            crate::arch::guest::host_count(),
        ));
        let devices = devices::build_bus(
            &spec.name,
            &spec.devices,
            &ram_view,
            spec.balloon_target_mib,
            &progress,
        )
        .map_err(VmBuildError::Devices)?;
        let entry = GUEST_KSEG0_BASE | (image.entry & hv_emul::abi::GUEST_KSEG_PHYS_MASK);
        Ok(Self {
            id,
            name: spec.name.clone(),
            ram_bytes,
            memory: guest,
            ram_backing: backing,
            rom,
            rom_slot,
            rom_removed: AtomicBool::new(false),
            drill: Default::default(),
            devices: Mutex::new(devices.bus),
            balloons: devices.balloons,
            uart_irq: devices.uart_irq,
            entry,
            cpu: spec.cpu,
            boot_args,
            image: spec.image,
            device_tree: spec.device_tree.clone(),
            restarts: core::sync::atomic::AtomicU32::new(0),
            image_end,
            vcpus: spec.vcpus.max(1),
            affinity: spec.affinity,
            workload: spec.workload,
            balloon_gpa: vmconfig::first_balloon_gpa(&spec.devices),
            account,
            mem: spec.mem,
            watchdog_ms: spec.watchdog_ms,
            progress,
            peers: Once::new(),
            first_slice: Once::new(),
            ended_at: Once::new(),
            stats: VmStats::default(),
            console: Mutex::new(Transcript::new(
                RECORDED_WORDS,
                CONSOLE_LINE_MAX,
                RECORDED_LINES_MAX,
            )),
            marks: Mutex::new(Vec::new()),
            outcome: Mutex::new(None),
            swap_on_yield: Mutex::new(spec.swap_on_yield),
        })
    }

    /// Records the VMs built together with this one (once; later calls change nothing).
    pub fn set_peers(&self, peers: Vec<Weak<Vm>>) {
        self.peers.call_once(|| peers);
    }

    /// The live VM whose memory account is `account`, if it was built with this one.
    pub fn peer_with_account(&self, account: AccountId) -> Option<Arc<Vm>> {
        self.peers
            .get()?
            .iter()
            .filter_map(Weak::upgrade)
            .find(|vm| vm.account == account)
    }

    /// Gives every frame of the VM's RAM and read-only slot back to the pool and closes its
    /// memory account (it may take none again): for a VM stopped to free memory. Its vCPUs
    /// may still be running; the balloon path's flush waits for them to leave the guest, and
    /// a fault they take afterwards is refused at the closed account.
    pub fn release_memory(&self) -> Result<(), String> {
        let host = self.memory.host();
        host.close_account(self.account);
        let mut backings = alloc::vec![(self.ram_backing, self.ram_bytes / PAGE_SIZE)];
        if let Some((_, bytes, backing)) = self.rom {
            backings.push((backing, bytes / PAGE_SIZE));
        }
        for (backing, pages) in backings {
            self.memory
                .balloon(backing, 0..pages)
                .map_err(|e| format!("releasing the memory of VM {}: {e}", self.name))?;
        }
        Ok(())
    }

    /// Prepares a guest restart (reboot): loads the image's segments into RAM again (the
    /// rest of RAM keeps its contents, as across a hardware reset) and writes a fresh device
    /// tree whose `/chosen` counts the boots. The caller resets the vCPU. Returns how many
    /// restarts there have been; more than [`MAX_RESTARTS`] is an error.
    pub fn reload(&self) -> Result<u32, String> {
        let restarts = self.restarts.fetch_add(1, Ordering::Relaxed) + 1;
        if restarts > MAX_RESTARTS {
            return Err(format!(
                "restart loop: more than {MAX_RESTARTS} guest restarts"
            ));
        }
        let image = match self.image {
            ImageSource::Elf(bytes) => loader::parse(bytes, self.ram_bytes),
            ImageSource::Flat { bytes, gpa } => loader::flat(bytes, gpa, self.ram_bytes),
        }
        .map_err(|e| format!("guest image: {e}"))?;
        let load = |gpa: u64, bytes: &[u8]| {
            load_bytes(&self.memory, self.ram_backing, gpa, bytes)
                .map_err(|e| format!("reloading the image: {e}"))
        };
        for segment in &image.segments {
            load(segment.gpa, segment.file)?;
        }
        if let Some(layout) = &self.device_tree {
            let blob = device_tree_blob(layout, restarts + 1)?;
            let at = guest_dt::placement(self.ram_bytes, self.image_end, blob.len())
                .filter(|at| GUEST_KSEG0_BASE | at.raw() == self.boot_args[1])
                .ok_or_else(|| {
                    String::from("the new device tree does not fit where the first one was")
                })?;
            load(at.raw(), &blob)?;
        }
        Ok(restarts)
    }

    /// Levels of the VM's device interrupt lines, bit n = hardware interrupt n (Cause.IP2
    /// + n): the balloon drives [`BALLOON_IRQ_LINE`], the consoles [`UART_IRQ_LINE`].
    pub fn device_irq_lines(&self) -> u8 {
        let balloon = self.balloons.iter().any(|b| b.irq().asserted());
        (u8::from(balloon) << BALLOON_IRQ_LINE)
            | (u8::from(self.uart_irq.asserted()) << UART_IRQ_LINE)
    }

    /// Resolves a guest access to `gpa` through the memory core (counted as a GPA fault).
    pub fn map_page(&self, gpa: Gpa, write: bool) -> Result<PtePair, FaultError> {
        VmStats::bump(&self.stats.gpa_faults);
        self.drill.note_fault(gpa);
        self.memory.map_page(gpa, write)
    }

    /// Reads guest memory (RAM or the read-only slot) at `gpa` into `buf` (no page boundary
    /// crossing), as the guest sees it.
    pub fn read_ram(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), FaultError> {
        let (backing, offset) = if gpa.raw() < self.ram_bytes {
            (self.ram_backing, gpa.raw())
        } else {
            match self.rom {
                Some((base, _, backing)) if self.in_rom(gpa) => (backing, gpa.raw() - base.raw()),
                _ => return Err(FaultError::NoMemslot),
            }
        };
        self.memory
            .host()
            .read(
                backing,
                offset / PAGE_SIZE,
                (offset % PAGE_SIZE) as usize,
                buf,
            )
            .map_err(FaultError::from)
    }

    /// Whether `gpa` lies in the read-only memslot.
    fn in_rom(&self, gpa: Gpa) -> bool {
        !self.rom_removed.load(Ordering::Relaxed)
            && self.rom.is_some_and(|(base, bytes, _)| {
                gpa.raw() >= base.raw() && gpa.raw() - base.raw() < bytes
            })
    }

    /// Removes the read-only memslot (the drill's memslot-removal trigger): its GPA range
    /// is unmapped through the memory core (flushing every derived translation of it) and
    /// reads as open bus from then on.
    pub fn remove_rom_slot(&self, id: SlotId) -> Result<(), String> {
        self.rom_removed.store(true, Ordering::Relaxed);
        self.memory
            .remove_memslot(id)
            .map_err(|e| format!("removing the read-only memslot: {e}"))
    }

    /// A guest load or store that hit no RAM: a store to the read-only slot is ignored (as
    /// ROM ignores writes), anything else goes to the device that owns the address. An
    /// address nobody owns reads as all ones and drops stores (open bus); an access a device
    /// refuses (width, alignment) stops the VM (the guest ABI delivers no bus errors).
    pub fn mmio_access(&self, request: &MmioReq) -> Result<u64, String> {
        if self.in_rom(request.gpa) {
            if let MmioKind::Store { .. } = request.kind {
                if VmStats::get(&self.stats.rom_writes) == 0 {
                    crate::log!(
                        "VM {}: store to read-only GPA {:#x} ignored",
                        self.name,
                        request.gpa.raw()
                    );
                }
                VmStats::bump(&self.stats.rom_writes);
                return Ok(0);
            }
        }
        VmStats::bump(&self.stats.mmio);
        match self.devices.lock().access(request) {
            Ok(value) => Ok(value),
            Err(BusError::Unmapped { gpa }) => {
                // Open bus: nothing answers, so a load reads all ones and a store is lost
                // (what Malta's own bus does for unassigned addresses). Logged, counted.
                let count = VmStats::get(&self.stats.unbacked);
                VmStats::bump(&self.stats.unbacked);
                if count < LOGGED_UNBACKED {
                    crate::log!(
                        "VM {}: {}-byte {} guest physical {:#x}: no RAM and no device there ({})",
                        self.name,
                        request.width.bytes(),
                        if matches!(request.kind, MmioKind::Load { .. }) {
                            "load from"
                        } else {
                            "store to"
                        },
                        gpa.raw(),
                        if matches!(request.kind, MmioKind::Load { .. }) {
                            "reads as all ones"
                        } else {
                            "dropped"
                        }
                    );
                }
                Ok(request.width.value_mask())
            }
            Err(other) => Err(alloc::format!("device access refused: {other:?}")),
        }
    }

    /// The guest yielded: takes a [`Mark`] (benchmarks use them), advances the `balloon`
    /// scenario's cycle, then runs the swap-out test knob once, if set. Returns pages
    /// swapped.
    pub fn on_yield(&self) -> Result<u64, String> {
        let mark = Mark {
            count: crate::arch::guest::host_count(),
            exits: VmStats::get(&self.stats.exits),
            refill_exits: VmStats::get(&self.stats.refill_exits),
            gpa_faults: VmStats::get(&self.stats.gpa_faults),
            cached_refills: crate::arch::guest::refill_cache_attempts(crate::arch::cpu_id()),
            guest_tlb_refills: VmStats::get(&self.stats.guest_tlb_refills),
        };
        {
            let mut marks = self.marks.lock();
            if marks.len() < MARKS_MAX {
                marks.push(mark);
            }
        }
        crate::services::balloon_scenario::on_yield(self);
        super::isolation::drill::DrillSlot::on_yield(self);
        let Some((gpa, count)) = self.swap_on_yield.lock().take() else {
            return Ok(0);
        };
        let mut swapped = 0;
        for page in gpa.raw() / PAGE_SIZE..gpa.raw() / PAGE_SIZE + count {
            if self
                .memory
                .swap_out(self.ram_backing, page)
                .map_err(|e| format!("swap-out of guest page {page:#x}: {e}"))?
            {
                swapped += 1;
            }
        }
        crate::log!(
            "VM {}: swapped out {swapped} of {count} pages on yield",
            self.name
        );
        Ok(swapped)
    }

    /// Appends guest console output: lines go to the host console with the VM's name (a
    /// long line in pieces, each continuation marked `[name]+`), and lines starting with one
    /// of [`RECORDED_WORDS`] are kept (see hv_devices::console_log for the rules).
    pub fn console_write(&self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.progress.made(crate::arch::guest::host_count());
        }
        let mut console = self.console.lock();
        console.push(bytes, |piece, continued| {
            self.show_console(piece, continued)
        });
    }

    fn show_console(&self, piece: &str, continued: bool) {
        let mark = if continued { "+" } else { "" };
        crate::println!("[{}]{mark} {piece}", self.name);
    }

    /// The yield marks, oldest first.
    pub fn marks(&self) -> Vec<Mark> {
        self.marks.lock().clone()
    }

    /// The recorded console lines, oldest first.
    pub fn recorded_lines(&self) -> Vec<String> {
        self.console.lock().recorded().to_vec()
    }

    /// Console lines that should have been recorded but found the record full.
    pub fn recorded_dropped(&self) -> u64 {
        self.console.lock().dropped()
    }

    /// Prints whatever partial console line is left.
    pub fn console_flush(&self) {
        let mut console = self.console.lock();
        console.flush(|piece, continued| self.show_console(piece, continued));
    }

    /// Records how the VM ended (first outcome wins). Returns whether this call set it.
    pub fn finish(&self, outcome: VmOutcome) -> bool {
        let mut slot = self.outcome.lock();
        if slot.is_some() {
            return false;
        }
        if let VmOutcome::Stopped(why) = &outcome {
            crate::log!("VM {} stopped: {why}", self.name);
        }
        *slot = Some(outcome);
        self.ended_at.call_once(crate::arch::guest::host_count);
        true
    }

    /// A slice of one of its vCPUs starts at Count `now` (the first one starts its life).
    pub fn slice_started(&self, now: u32) {
        self.first_slice.call_once(|| now);
    }

    /// Its share of one CPU over its life (first slice to end, or to `now` while it runs),
    /// in per mille: the scheduler's fairness as this VM saw it.
    pub fn cpu_share_permille(&self, now: u32) -> Option<u64> {
        let start = *self.first_slice.get()?;
        let life = self
            .ended_at
            .get()
            .copied()
            .unwrap_or(now)
            .wrapping_sub(start);
        (life > 0).then(|| VmStats::get(&self.stats.cpu_ticks) * 1000 / u64::from(life))
    }

    /// How the VM ended, if it did.
    pub fn outcome(&self) -> Option<VmOutcome> {
        self.outcome.lock().clone()
    }

    /// Frees the VM's guest memory: its backings leave the shared host layer (through its
    /// own notifier) and its GPA-table frames go back to the frame allocator. Needs the
    /// last reference to the memory object (the devices' and balloons' RAM views hold one;
    /// dropped here).
    pub fn teardown(self) -> Result<(), String> {
        let Self {
            memory,
            devices,
            balloons,
            account,
            ..
        } = self;
        // Both hold the RAM view, which holds the memory object.
        drop(devices);
        drop(balloons);
        let memory =
            Arc::try_unwrap(memory).map_err(|_| String::from("guest memory still referenced"))?;
        drop(memory.detach());
        if !crate::services::host().remove_account(account) {
            return Err(String::from("its memory account still holds pages"));
        }
        Ok(())
    }
}
