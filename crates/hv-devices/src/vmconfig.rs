//! The VM layout as configuration data: a flattened device tree, parsed and validated.
//!
//! A layout lists the VMs to run. Each VM has a name (its node name under `/vms`), a guest
//! image, one RAM range, an optional read-only range, a vCPU count, an optional host-CPU
//! affinity, an optional trust group (dedup may merge pages across VMs of one group only)
//! and its devices. The format is in `docs/devices.md`; `configs/*.dts` are examples, built
//! by `tools/build-configs.sh`.
//!
//! Checking happens in three steps, each with its own clear error:
//! 1. [`check_blob`]: the blob's structure, before the `fdt` crate sees it (that crate
//!    panics on malformed blobs, and a configuration is operator input);
//! 2. [`VmLayout::parse`]: types and required properties, per-VM rules (RAM not empty,
//!    page-aligned, no two regions of a VM overlapping), unique names;
//! 3. [`VmLayout::check_host`]: what only the running firmware knows: which guest images
//!    exist and how many CPUs were probed.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use fdt::node::FdtNode;
use fdt::Fdt;
use hv_core::addr::{Gpa, PAGE_SIZE};
pub use hv_emul::hypercall::Workload;

use crate::bus::MmioWindow;
pub use hv_emul::cp0::CpuModel;

/// Root `compatible` string of a configuration blob.
pub const COMPATIBLE: &str = "mipsvisor,vm-config-v1";
/// Most VMs in a layout.
pub const MAX_VMS: usize = 16;
/// Most vCPUs per VM.
pub const MAX_VCPUS: u32 = 8;
/// Most devices per VM.
pub const MAX_DEVICES: usize = 8;
/// Longest VM name (it prefixes console lines).
pub const MAX_NAME_BYTES: usize = 15;
/// Longest image name.
pub const MAX_IMAGE_BYTES: usize = 31;
/// Guest physical addresses are 36 bits wide (docs/guest-abi.md, section 2).
pub const GUEST_PHYS_LIMIT: u64 = 1 << 36;
/// Host CPUs an affinity mask can name.
pub const MAX_HOST_CPUS: u32 = 64;

const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_END: u32 = 9;
const FDT_HEADER_BYTES: usize = 40;
/// Deepest node nesting accepted (a layout needs 4).
const MAX_DEPTH: usize = 8;

/// What is wrong with a blob's structure (devicetree specification v0.4, chapter 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobError {
    /// Shorter than its header or its `totalsize`.
    Truncated,
    /// No `0xd00dfeed` magic.
    BadMagic,
    /// Not compatible with format version 17.
    BadVersion(u32),
    /// The structure or strings block lies outside the blob, or is misaligned.
    BadBlocks,
    /// The structure block is malformed at this byte offset into it.
    BadStructure(usize),
}

impl fmt::Display for BlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BlobError::Truncated => write!(f, "device tree blob is truncated"),
            BlobError::BadMagic => write!(f, "not a device tree blob (bad magic)"),
            BlobError::BadVersion(v) => write!(f, "device tree version {v} is not supported"),
            BlobError::BadBlocks => write!(f, "device tree blocks lie outside the blob"),
            BlobError::BadStructure(at) => {
                write!(f, "device tree structure is malformed at offset {at:#x}")
            }
        }
    }
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Length of the NUL-terminated UTF-8 string at `bytes[at..]`, without the NUL.
fn cstr_len(bytes: &[u8], at: usize) -> Option<usize> {
    let rest = bytes.get(at..)?;
    let len = rest.iter().position(|&b| b == 0)?;
    core::str::from_utf8(&rest[..len]).ok()?;
    Some(len)
}

fn align4(n: usize) -> Option<usize> {
    n.checked_add(3).map(|v| v & !3)
}

/// Checks that `blob` is a well-formed flattened device tree in the strict shape `dtc`
/// writes: one root node; per node, properties before children; no NOP tokens; every name
/// a NUL-terminated UTF-8 string inside its block. The `fdt` crate may then parse it
/// without panicking.
pub fn check_blob(blob: &[u8]) -> Result<(), BlobError> {
    if blob.len() < FDT_HEADER_BYTES {
        return Err(BlobError::Truncated);
    }
    let field = |i: usize| be32(blob, 4 * i).map_or(0, |v| v as usize);
    if field(0) != FDT_MAGIC as usize {
        return Err(BlobError::BadMagic);
    }
    let total = field(1);
    if total < FDT_HEADER_BYTES || total > blob.len() {
        return Err(BlobError::Truncated);
    }
    let (version, last_compatible) = (field(5), field(6));
    if version < 17 || last_compatible > 17 {
        return Err(BlobError::BadVersion(version as u32));
    }
    let block = |off: usize, size: usize| -> Result<&[u8], BlobError> {
        let end = off.checked_add(size).ok_or(BlobError::BadBlocks)?;
        if off < FDT_HEADER_BYTES || end > total {
            return Err(BlobError::BadBlocks);
        }
        Ok(&blob[off..end])
    };
    if field(2) % 4 != 0 {
        return Err(BlobError::BadBlocks);
    }
    let structure = block(field(2), field(9))?;
    let strings = block(field(3), field(8))?;

    // children_started[d]: node at depth d already had a child (no more properties).
    let mut children_started = [false; MAX_DEPTH];
    let mut depth = 0usize;
    let mut seen_root = false;
    let mut pos = 0usize;
    loop {
        let bad = BlobError::BadStructure(pos);
        let token = be32(structure, pos).ok_or(bad)?;
        pos += 4;
        match token {
            FDT_BEGIN_NODE => {
                if (depth == 0 && seen_root) || depth == MAX_DEPTH {
                    return Err(bad);
                }
                let len = cstr_len(structure, pos).ok_or(bad)?;
                pos = align4(pos + len + 1).ok_or(bad)?;
                if depth > 0 {
                    children_started[depth - 1] = true;
                }
                children_started[depth] = false;
                depth += 1;
                seen_root = true;
            }
            FDT_PROP => {
                if depth == 0 || children_started[depth - 1] {
                    return Err(bad);
                }
                let len = be32(structure, pos).ok_or(bad)? as usize;
                let name_offset = be32(structure, pos + 4).ok_or(bad)? as usize;
                pos += 8;
                let end = pos.checked_add(len).ok_or(bad)?;
                if end > structure.len() || name_offset >= strings.len() {
                    return Err(bad);
                }
                cstr_len(strings, name_offset).ok_or(bad)?;
                pos = align4(end).ok_or(bad)?;
            }
            FDT_END_NODE => {
                if depth == 0 {
                    return Err(bad);
                }
                depth -= 1;
            }
            FDT_END if depth == 0 && seen_root => return Ok(()),
            _ => return Err(bad),
        }
    }
}

/// A VM region named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    /// The RAM range.
    Ram,
    /// The read-only range.
    Rom,
    /// Device number `n` of the VM.
    Device(usize),
}

/// What is wrong with a configuration. `vm` is the VM's index in the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// The blob's structure is broken.
    Blob(BlobError),
    /// The root node lacks `compatible = "mipsvisor,vm-config-v1"`.
    NotAConfig,
    /// No VMs (no `/vms` node or no children).
    NoVms,
    /// More than [`MAX_VMS`] VMs.
    TooManyVms(usize),
    /// A required property is missing.
    MissingProperty {
        /// VM index.
        vm: usize,
        /// Property name.
        property: &'static str,
    },
    /// A property has the wrong size or is not a valid string.
    BadProperty {
        /// VM index.
        vm: usize,
        /// Property name.
        property: &'static str,
    },
    /// A VM name that is empty, too long, or not made of letters, digits, `-` and `_`.
    BadName {
        /// VM index.
        vm: usize,
    },
    /// An image name that is empty, too long or not printable.
    BadImageName {
        /// VM index.
        vm: usize,
    },
    /// Two VMs with one name.
    DuplicateName {
        /// First VM with the name.
        first: usize,
        /// The other one.
        second: usize,
    },
    /// A RAM size of zero.
    ZeroRam {
        /// VM index.
        vm: usize,
    },
    /// A memory region that is empty, not page aligned, or beyond 36-bit guest physical.
    BadRegion {
        /// VM index.
        vm: usize,
        /// Which region.
        region: Region,
    },
    /// Two regions of one VM overlap.
    Overlap {
        /// VM index.
        vm: usize,
        /// One region.
        first: Region,
        /// The other.
        second: Region,
    },
    /// A vCPU count of zero or above [`MAX_VCPUS`].
    BadVcpuCount {
        /// VM index.
        vm: usize,
        /// The count given.
        vcpus: u32,
    },
    /// An affinity that names no CPU, or a CPU number of [`MAX_HOST_CPUS`] or more.
    BadAffinity {
        /// VM index.
        vm: usize,
    },
    /// A device node without a known `compatible`, or with bad properties.
    BadDevice {
        /// VM index.
        vm: usize,
        /// Device number in the VM.
        device: usize,
    },
    /// More than [`MAX_DEVICES`] devices.
    TooManyDevices {
        /// VM index.
        vm: usize,
    },
    /// The guest image is not one the firmware has.
    UnknownImage {
        /// VM index.
        vm: usize,
    },
    /// A `balloon-target-mib` larger than the VM's RAM.
    BalloonTargetTooLarge {
        /// VM index.
        vm: usize,
    },
    /// A `balloon-target-mib` on a VM without a virtio balloon.
    BalloonTargetWithoutBalloon {
        /// VM index.
        vm: usize,
    },
    /// A `workload` that is not one of the known names.
    UnknownWorkload {
        /// VM index.
        vm: usize,
    },
    /// A `workload-arg` on a VM without a `workload`.
    WorkloadArgWithoutWorkload {
        /// VM index.
        vm: usize,
    },
    /// A `cpu` that is not one of the known models.
    UnknownCpuModel {
        /// VM index.
        vm: usize,
    },
    /// A `boot-protocol` that is not one of the known ones.
    UnknownBootProtocol {
        /// VM index.
        vm: usize,
    },
    /// `bootargs` on a VM that is not given a device tree (`boot-protocol = "uhi"`).
    BootargsWithoutDeviceTree {
        /// VM index.
        vm: usize,
    },
    /// The affinity names a CPU that was not found at boot.
    AffinityToMissingCpu {
        /// VM index.
        vm: usize,
        /// The CPU named.
        cpu: u32,
        /// CPUs present.
        cpu_count: u32,
    },
    /// The `/services` node is wrong (see [`ServicesError`]).
    Services(ServicesError),
    /// `mem-reservation-mib` above `mem-limit-mib`, or above the VM's RAM and ROM.
    BadMemReservation {
        /// VM index.
        vm: usize,
    },
    /// `mem-limit-mib` or `watchdog-ms` outside its range.
    OutOfRange {
        /// VM index.
        vm: usize,
        /// Property name.
        property: &'static str,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
    },
    /// The reservations of VMs `0..=vm` together exceed the guest pool.
    ReservationsExceedPool {
        /// The first VM whose reservation does not fit.
        vm: usize,
        /// Its reservation in MiB.
        reservation_mib: u32,
        /// MiB of the pool the VMs before it left unreserved.
        available_mib: u64,
        /// The pool in MiB.
        pool_mib: u64,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ConfigError::Blob(e) => write!(f, "{e}"),
            ConfigError::NotAConfig => {
                write!(f, "not a VM configuration (root compatible is not \"{COMPATIBLE}\")")
            }
            ConfigError::NoVms => write!(f, "the configuration has no VMs under /vms"),
            ConfigError::TooManyVms(n) => write!(f, "{n} VMs; at most {MAX_VMS}"),
            ConfigError::MissingProperty { vm, property } => {
                write!(f, "vm {vm}: property \"{property}\" is missing")
            }
            ConfigError::BadProperty { vm, property } => {
                write!(f, "vm {vm}: property \"{property}\" has the wrong size or type")
            }
            ConfigError::BadName { vm } => write!(
                f,
                "vm {vm}: name must be 1-{MAX_NAME_BYTES} letters, digits, '-' or '_'"
            ),
            ConfigError::BadImageName { vm } => {
                write!(f, "vm {vm}: image name must be 1-{MAX_IMAGE_BYTES} printable characters")
            }
            ConfigError::DuplicateName { first, second } => {
                write!(f, "vm {first} and vm {second} have the same name")
            }
            ConfigError::ZeroRam { vm } => write!(f, "vm {vm}: RAM size is zero"),
            ConfigError::BadRegion { vm, region } => write!(
                f,
                "vm {vm}: {region:?} region is empty, not page aligned or beyond 36-bit guest physical"
            ),
            ConfigError::Overlap { vm, first, second } => {
                write!(f, "vm {vm}: {first:?} region overlaps {second:?} region")
            }
            ConfigError::BadVcpuCount { vm, vcpus } => {
                write!(f, "vm {vm}: {vcpus} vCPUs; 1 to {MAX_VCPUS} allowed")
            }
            ConfigError::BadAffinity { vm } => write!(
                f,
                "vm {vm}: cpu-affinity must name at least one CPU, each below {MAX_HOST_CPUS}"
            ),
            ConfigError::BadDevice { vm, device } => write!(
                f,
                "vm {vm}: device {device} has an unknown compatible or bad properties"
            ),
            ConfigError::TooManyDevices { vm } => {
                write!(f, "vm {vm}: more than {MAX_DEVICES} devices")
            }
            ConfigError::UnknownImage { vm } => {
                write!(f, "vm {vm}: the firmware has no guest image of that name")
            }
            ConfigError::BalloonTargetTooLarge { vm } => {
                write!(f, "vm {vm}: balloon-target-mib is larger than the VM's RAM")
            }
            ConfigError::BalloonTargetWithoutBalloon { vm } => {
                write!(f, "vm {vm}: balloon-target-mib is set but the VM has no balloon")
            }
            ConfigError::UnknownWorkload { vm } => write!(
                f,
                "vm {vm}: workload must be one of \"dedup\", \"balloon\", \"swap\", \"idle\", \"stress\", \"hog\", \"stuck-wait\", \"stuck-yield\", \"stuck-storm\""
            ),
            ConfigError::WorkloadArgWithoutWorkload { vm } => {
                write!(f, "vm {vm}: workload-arg is set but workload is not")
            }
            ConfigError::UnknownCpuModel { vm } => {
                write!(f, "vm {vm}: cpu must be \"mips64r2\" or \"mips32r2\"")
            }
            ConfigError::UnknownBootProtocol { vm } => {
                write!(f, "vm {vm}: boot-protocol must be \"none\" or \"uhi\"")
            }
            ConfigError::BootargsWithoutDeviceTree { vm } => write!(
                f,
                "vm {vm}: bootargs is set but the VM gets no device tree (boot-protocol = \"uhi\")"
            ),
            ConfigError::AffinityToMissingCpu { vm, cpu, cpu_count } => write!(
                f,
                "vm {vm}: cpu-affinity names CPU {cpu}, but only {cpu_count} CPUs are present"
            ),
            ConfigError::Services(e) => write!(f, "/services: {e}"),
            ConfigError::BadMemReservation { vm } => write!(
                f,
                "vm {vm}: mem-reservation-mib is larger than mem-limit-mib or than the VM's RAM and ROM"
            ),
            ConfigError::OutOfRange {
                vm,
                property,
                min,
                max,
            } => write!(f, "vm {vm}: property \"{property}\" must be in {min}..={max}"),
            ConfigError::ReservationsExceedPool {
                vm,
                reservation_mib,
                available_mib,
                pool_mib,
            } => write!(
                f,
                "vm {vm}: mem-reservation-mib = <{reservation_mib}> does not fit: the VMs before it leave {available_mib} of the {pool_mib} MiB guest pool unreserved"
            ),
        }
    }
}

impl ConfigError {
    /// The index of the VM the error is about (to print its name), if it is about one VM.
    pub fn vm(&self) -> Option<usize> {
        match *self {
            ConfigError::MissingProperty { vm, .. }
            | ConfigError::BadProperty { vm, .. }
            | ConfigError::BadName { vm }
            | ConfigError::BadImageName { vm }
            | ConfigError::ZeroRam { vm }
            | ConfigError::BadRegion { vm, .. }
            | ConfigError::Overlap { vm, .. }
            | ConfigError::BadVcpuCount { vm, .. }
            | ConfigError::BadAffinity { vm }
            | ConfigError::BadDevice { vm, .. }
            | ConfigError::TooManyDevices { vm }
            | ConfigError::UnknownImage { vm }
            | ConfigError::BalloonTargetTooLarge { vm }
            | ConfigError::BalloonTargetWithoutBalloon { vm }
            | ConfigError::UnknownWorkload { vm }
            | ConfigError::WorkloadArgWithoutWorkload { vm }
            | ConfigError::BadMemReservation { vm }
            | ConfigError::OutOfRange { vm, .. }
            | ConfigError::ReservationsExceedPool { vm, .. }
            | ConfigError::UnknownCpuModel { vm }
            | ConfigError::UnknownBootProtocol { vm }
            | ConfigError::BootargsWithoutDeviceTree { vm }
            | ConfigError::AffinityToMissingCpu { vm, .. } => Some(vm),
            ConfigError::DuplicateName { second, .. } => Some(second),
            ConfigError::Blob(_)
            | ConfigError::NotAConfig
            | ConfigError::NoVms
            | ConfigError::TooManyVms(_)
            | ConfigError::Services(_) => None,
        }
    }
}

impl From<BlobError> for ConfigError {
    fn from(e: BlobError) -> Self {
        ConfigError::Blob(e)
    }
}

/// A set of host CPUs, `0..64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CpuSet(u64);

impl CpuSet {
    /// The CPUs in `cpus`; `None` if empty or a CPU is 64 or above.
    pub fn from_cpus(cpus: &[u32]) -> Option<Self> {
        let mut mask = 0u64;
        for &cpu in cpus {
            mask |= 1u64.checked_shl(cpu)?;
        }
        (mask != 0).then_some(Self(mask))
    }

    /// The set as a bit mask (bit n = CPU n).
    pub fn mask(self) -> u64 {
        self.0
    }

    /// Whether CPU `cpu` is in the set.
    pub fn contains(self, cpu: u32) -> bool {
        cpu < MAX_HOST_CPUS && self.0 & (1 << cpu) != 0
    }

    /// The highest CPU in the set (sets are never empty).
    pub fn highest(self) -> u32 {
        63 - self.0.leading_zeros()
    }

    /// The CPUs in ascending order.
    pub fn iter(self) -> impl Iterator<Item = u32> {
        (0..MAX_HOST_CPUS).filter(move |&c| self.contains(c))
    }
}

/// A page-aligned guest-physical range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemRange {
    /// First byte.
    pub base: Gpa,
    /// Length in bytes (a multiple of the page size).
    pub size_bytes: u64,
}

impl MemRange {
    /// End address (exclusive).
    pub fn end_raw(&self) -> u64 {
        self.base.raw().saturating_add(self.size_bytes)
    }

    fn is_valid(&self) -> bool {
        self.size_bytes != 0
            && self.base.is_page_aligned()
            && self.size_bytes.is_multiple_of(PAGE_SIZE)
            && self
                .base
                .raw()
                .checked_add(self.size_bytes)
                .is_some_and(|end| end <= GUEST_PHYS_LIMIT)
    }
}

/// Longest kernel command line (`bootargs`) accepted; Linux/MIPS keeps 4096 bytes.
pub const MAX_BOOTARGS_BYTES: usize = 1024;

/// Virtio device types the firmware knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioKind {
    /// virtio-balloon (device ID 5).
    Balloon,
}

/// An emulated device of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// A 16550A console; registers `stride` bytes apart.
    Uart16550 {
        /// Register stride in bytes (1, 2, 4 or 8).
        stride: u64,
    },
    /// A virtio-mmio transport for a device of this kind.
    VirtioMmio(VirtioKind),
}

/// A device and where the guest finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSpec {
    /// What it is.
    pub kind: DeviceKind,
    /// Its register window.
    pub window: MmioWindow,
}

/// The memory-services workload a test guest runs (VM-info keys 9 and 10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkloadSpec {
    /// Which workload.
    pub kind: Workload,
    /// Its argument; `None` lets the guest pick its default.
    pub arg: Option<u64>,
}

/// A VM's share of the guest pool (`mem-limit-mib`, `mem-reservation-mib`); RAM and ROM
/// pages holding a frame count against it (docs/layout.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemShare {
    /// Most MiB of frames the VM holds at once; `None` for no limit.
    pub limit_mib: Option<u32>,
    /// MiB of frames set aside for the VM when it is created; 0 for none.
    pub reservation_mib: u32,
}

impl MemShare {
    /// Pages (4 KiB) in `mib` MiB.
    pub const fn pages(mib: u32) -> u64 {
        (mib as u64) << 8
    }
}

/// Longest watchdog window (`watchdog-ms`): 15 s (the firmware measures it with the 32-bit
/// Count, which wraps after 42 s).
pub const MAX_WATCHDOG_MS: u32 = 15_000;
/// Shortest watchdog window: ten of the host's 4 ms time slices.
pub const MIN_WATCHDOG_MS: u32 = 40;
/// Largest `mem-limit-mib` / `mem-reservation-mib`: the 36-bit guest physical space.
pub const MAX_SHARE_MIB: u32 = 1 << 16;

/// Guest physical address of the first virtio-mmio balloon transport among `devices`.
pub fn first_balloon_gpa(devices: &[DeviceSpec]) -> Option<Gpa> {
    devices
        .iter()
        .find(|d| d.kind == DeviceKind::VirtioMmio(VirtioKind::Balloon))
        .map(|d| d.window.base())
}

/// One VM of a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Unique name; prefixes the VM's console lines.
    pub name: String,
    /// Guest image to load.
    pub image: String,
    /// Guest RAM.
    pub ram: MemRange,
    /// An optional read-only memslot (zero-filled).
    pub rom: Option<MemRange>,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Host CPUs the vCPUs may run on; `None` for any.
    pub affinity: Option<CpuSet>,
    /// Trust group for cross-VM page merging; `None` for a group of its own.
    pub trust_group: Option<u32>,
    /// Emulated devices.
    pub devices: Vec<DeviceSpec>,
    /// Initial target of the VM's balloon in MiB (`balloon-target-mib`); `None` = 0.
    pub balloon_target_mib: Option<u32>,
    /// The workload a memory-services test guest should run, if any.
    pub workload: Option<WorkloadSpec>,
    /// Its limit and reservation in the guest pool.
    pub mem: MemShare,
    /// `watchdog-ms`: the VM is stopped when it makes no progress for this long (see
    /// docs/layout.md); `None` for no watchdog.
    pub watchdog_ms: Option<u32>,
    /// The virtual CPU the guest sees (`cpu`: `"mips64r2"`, the default, or `"mips32r2"`).
    pub cpu: CpuModel,
    /// How the guest is started (`boot-protocol`).
    pub boot: BootProtocol,
    /// Kernel command line for the device tree's `/chosen` node (`bootargs`; UHI only).
    pub bootargs: Option<String>,
}

/// How a VM's first vCPU is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootProtocol {
    /// `"none"`, the default: at the image's entry with every register zero.
    #[default]
    None,
    /// `"uhi"`: the hypervisor writes a device tree describing the VM (`guest_dt`) at the
    /// top of its RAM and starts vCPU 0 with `a0 = -2` and `a1` = the tree's address in the
    /// guest KSEG0 window (the MIPS UHI boot convention Linux's generic kernel reads).
    Uhi,
}

impl VmSpec {
    /// Guest physical address of the VM's first virtio-mmio balloon transport.
    pub fn balloon_gpa(&self) -> Option<Gpa> {
        first_balloon_gpa(&self.devices)
    }

    /// The VM's regions with their names, for overlap checks.
    fn regions(&self) -> impl Iterator<Item = (Region, u64, u64)> + '_ {
        let ram = core::iter::once((Region::Ram, self.ram.base.raw(), self.ram.end_raw()));
        let rom = self.rom.map(|r| (Region::Rom, r.base.raw(), r.end_raw()));
        let devices = self
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| (Region::Device(i), d.window.base().raw(), d.window.end_raw()));
        ram.chain(rom).chain(devices)
    }

    /// Checks the VM on its own (`vm` is its index, for errors).
    fn check(&self, vm: usize) -> Result<(), ConfigError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= MAX_NAME_BYTES
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(ConfigError::BadName { vm });
        }
        let image_ok = !self.image.is_empty()
            && self.image.len() <= MAX_IMAGE_BYTES
            && self.image.bytes().all(|b| b.is_ascii_graphic());
        if !image_ok {
            return Err(ConfigError::BadImageName { vm });
        }
        if self.ram.size_bytes == 0 {
            return Err(ConfigError::ZeroRam { vm });
        }
        if !self.ram.is_valid() {
            return Err(ConfigError::BadRegion {
                vm,
                region: Region::Ram,
            });
        }
        if self.rom.is_some_and(|r| !r.is_valid()) {
            return Err(ConfigError::BadRegion {
                vm,
                region: Region::Rom,
            });
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::BadVcpuCount {
                vm,
                vcpus: self.vcpus,
            });
        }
        if self.devices.len() > MAX_DEVICES {
            return Err(ConfigError::TooManyDevices { vm });
        }
        for (device, d) in self.devices.iter().enumerate() {
            let beyond = d.window.end_raw() > GUEST_PHYS_LIMIT;
            let too_small = match d.kind {
                DeviceKind::Uart16550 { stride } => {
                    !matches!(stride, 1 | 2 | 4 | 8)
                        || d.window.size_bytes() < crate::uart16550::reg::COUNT * stride
                }
                DeviceKind::VirtioMmio(_) => {
                    d.window.size_bytes() < crate::virtio_mmio::WINDOW_BYTES
                }
            };
            if beyond || too_small {
                return Err(ConfigError::BadDevice { vm, device });
            }
        }
        if let Some(mib) = self.balloon_target_mib {
            let has_balloon = self
                .devices
                .iter()
                .any(|d| d.kind == DeviceKind::VirtioMmio(VirtioKind::Balloon));
            if !has_balloon {
                return Err(ConfigError::BalloonTargetWithoutBalloon { vm });
            }
            if u64::from(mib) << 20 > self.ram.size_bytes {
                return Err(ConfigError::BalloonTargetTooLarge { vm });
            }
        }
        let ram_mib =
            (self.ram.size_bytes + self.rom.map_or(0, |r| r.size_bytes)).div_ceil(1 << 20);
        let reservation = u64::from(self.mem.reservation_mib);
        if reservation > ram_mib
            || self
                .mem
                .limit_mib
                .is_some_and(|limit| self.mem.reservation_mib > limit)
        {
            return Err(ConfigError::BadMemReservation { vm });
        }
        if let Some(bootargs) = &self.bootargs {
            if self.boot != BootProtocol::Uhi {
                return Err(ConfigError::BootargsWithoutDeviceTree { vm });
            }
            if bootargs.len() > MAX_BOOTARGS_BYTES {
                return Err(ConfigError::BadProperty {
                    vm,
                    property: "bootargs",
                });
            }
        }
        let regions: Vec<_> = self.regions().collect();
        for (i, &(first, a_start, a_end)) in regions.iter().enumerate() {
            for &(second, b_start, b_end) in &regions[i + 1..] {
                if a_start < b_end && b_start < a_end {
                    return Err(ConfigError::Overlap { vm, first, second });
                }
            }
        }
        Ok(())
    }
}

/// The VMs to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmLayout {
    /// The VMs, in configuration order.
    pub vms: Vec<VmSpec>,
    /// Memory-service settings (the optional `/services` node).
    pub services: ServicesSpec,
}

/// Guest-physical address of each VM's console in the built-in layout.
pub const DEFAULT_UART_GPA: u64 = 0x1f00_0000;
/// Guest-physical address of each VM's virtio-mmio balloon in the built-in layout.
pub const DEFAULT_VIRTIO_GPA: u64 = 0x1f00_1000;
/// RAM of each VM in the built-in layout.
pub const DEFAULT_RAM_BYTES: u64 = 32 << 20;
/// VMs in the built-in layout.
pub const DEFAULT_VM_COUNT: usize = 3;
/// Guest image of the built-in layout.
pub const DEFAULT_IMAGE: &str = "testguest";

impl VmLayout {
    /// The layout used when no configuration blob is given: three VMs `vm0`..`vm2`, each
    /// with 32 MiB of RAM at GPA 0, one vCPU on any CPU, the test guest, a console at
    /// `0x1f00_0000` and a virtio balloon at `0x1f00_1000` (`configs/default.dts`).
    pub fn builtin_default() -> Self {
        let window = |base, size| MmioWindow::new(Gpa::new(base), size).expect("constant window");
        let vms = (0..DEFAULT_VM_COUNT)
            .map(|i| VmSpec {
                name: alloc::format!("vm{i}"),
                image: String::from(DEFAULT_IMAGE),
                ram: MemRange {
                    base: Gpa::new(0),
                    size_bytes: DEFAULT_RAM_BYTES,
                },
                rom: None,
                vcpus: 1,
                affinity: None,
                trust_group: None,
                devices: alloc::vec![
                    DeviceSpec {
                        kind: DeviceKind::Uart16550 { stride: 1 },
                        window: window(DEFAULT_UART_GPA, 8),
                    },
                    DeviceSpec {
                        kind: DeviceKind::VirtioMmio(VirtioKind::Balloon),
                        window: window(DEFAULT_VIRTIO_GPA, crate::virtio_mmio::WINDOW_BYTES),
                    },
                ],
                balloon_target_mib: None,
                workload: None,
                mem: MemShare::default(),
                watchdog_ms: None,
                cpu: CpuModel::default(),
                boot: BootProtocol::None,
                bootargs: None,
            })
            .collect();
        Self {
            vms,
            services: ServicesSpec::default(),
        }
    }

    /// Parses and checks a configuration blob (everything except [`VmLayout::check_host`]).
    pub fn parse(blob: &[u8]) -> Result<Self, ConfigError> {
        check_blob(blob)?;
        let fdt = Fdt::new(blob).map_err(|_| ConfigError::Blob(BlobError::Truncated))?;
        let root = fdt.find_node("/").ok_or(ConfigError::NotAConfig)?;
        let compatible = root
            .property("compatible")
            .map(|p| {
                p.value
                    .split(|&b| b == 0)
                    .any(|s| s == COMPATIBLE.as_bytes())
            })
            .unwrap_or(false);
        if !compatible {
            return Err(ConfigError::NotAConfig);
        }
        let vms_node = root
            .children()
            .find(|n| n.name == "vms")
            .ok_or(ConfigError::NoVms)?;
        let mut vms = Vec::new();
        for (vm, node) in vms_node.children().enumerate() {
            if vm == MAX_VMS {
                return Err(ConfigError::TooManyVms(vms_node.children().count()));
            }
            vms.push(parse_vm(vm, node)?);
        }
        let services = match root.children().find(|n| n.name == "services") {
            Some(node) => ServicesSpec::parse(node).map_err(ConfigError::Services)?,
            None => ServicesSpec::default(),
        };
        let layout = Self { vms, services };
        layout.check()?;
        Ok(layout)
    }

    /// Checks every rule that does not depend on the host.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.vms.is_empty() {
            return Err(ConfigError::NoVms);
        }
        if self.vms.len() > MAX_VMS {
            return Err(ConfigError::TooManyVms(self.vms.len()));
        }
        for (vm, spec) in self.vms.iter().enumerate() {
            spec.check(vm)?;
            if let Some(first) = self.vms[..vm].iter().position(|o| o.name == spec.name) {
                return Err(ConfigError::DuplicateName { first, second: vm });
            }
        }
        Ok(())
    }

    /// Checks the layout against the running host: every image must be in
    /// `known_images` and every affinity CPU below `cpu_count`.
    pub fn check_host(&self, known_images: &[&str], cpu_count: u32) -> Result<(), ConfigError> {
        for (vm, spec) in self.vms.iter().enumerate() {
            if !known_images.contains(&spec.image.as_str()) {
                return Err(ConfigError::UnknownImage { vm });
            }
            if let Some(set) = spec.affinity {
                let cpu = set.highest();
                if cpu >= cpu_count {
                    return Err(ConfigError::AffinityToMissingCpu { vm, cpu, cpu_count });
                }
            }
        }
        Ok(())
    }

    /// Checks that the VMs' `mem-reservation-mib` together fit a guest pool of `pool_pages`
    /// frames (the admission rule of `hv_core::accounts`), naming the first VM that does
    /// not.
    pub fn check_reservations(&self, pool_pages: u64) -> Result<(), ConfigError> {
        let mut reserved = 0u64;
        for (vm, spec) in self.vms.iter().enumerate() {
            let pages = MemShare::pages(spec.mem.reservation_mib);
            if reserved + pages > pool_pages {
                return Err(ConfigError::ReservationsExceedPool {
                    vm,
                    reservation_mib: spec.mem.reservation_mib,
                    available_mib: (pool_pages - reserved) >> 8,
                    pool_mib: pool_pages >> 8,
                });
            }
            reserved += pages;
        }
        Ok(())
    }

    /// Whether VMs `a` and `b` may share merged pages: the same VM, or both in one trust
    /// group.
    pub fn may_share_pages(&self, a: usize, b: usize) -> bool {
        if a == b {
            return a < self.vms.len();
        }
        match (self.vms.get(a), self.vms.get(b)) {
            (Some(x), Some(y)) => x.trust_group.is_some() && x.trust_group == y.trust_group,
            _ => false,
        }
    }

    /// The index of the VM called `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.vms.iter().position(|v| v.name == name)
    }
}

/// Longest property name kept in a [`ServicesError`].
const MAX_PROPERTY_NAME: usize = 31;

/// A property name copied out of a blob, for errors (at most [`MAX_PROPERTY_NAME`] bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PropertyName {
    bytes: [u8; MAX_PROPERTY_NAME],
    len: u8,
}

impl PropertyName {
    fn new(name: &str) -> Self {
        let mut bytes = [0; MAX_PROPERTY_NAME];
        // Cut at a character boundary so the stored name stays valid UTF-8.
        let mut len = name.len().min(MAX_PROPERTY_NAME);
        while !name.is_char_boundary(len) {
            len -= 1;
        }
        bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
        Self {
            bytes,
            len: len as u8,
        }
    }

    /// The name (cut to [`MAX_PROPERTY_NAME`] bytes).
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("?")
    }
}

impl fmt::Debug for PropertyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// What is wrong with the `/services` node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServicesError {
    /// A property the firmware does not know (a typo would otherwise be ignored silently).
    UnknownProperty(PropertyName),
    /// A number property that is not one 32-bit cell, or a flag that is not empty.
    BadValue {
        /// Property name.
        property: &'static str,
    },
    /// A number outside its allowed range.
    OutOfRange {
        /// Property name.
        property: &'static str,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
    },
    /// A child node (the node holds properties only).
    UnexpectedChild,
}

impl fmt::Display for ServicesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServicesError::UnknownProperty(name) => write!(
                f,
                "unknown property \"{}\" (known: {})",
                name.as_str(),
                ServicesSpec::PROPERTIES.join(", ")
            ),
            ServicesError::BadValue { property } => write!(
                f,
                "property \"{property}\" must be one 32-bit cell (<N>), or empty for a flag"
            ),
            ServicesError::OutOfRange { property, min, max } => {
                write!(f, "property \"{property}\" must be in {min}..={max}")
            }
            ServicesError::UnexpectedChild => f.write_str("the node takes no child nodes"),
        }
    }
}

/// Memory-service settings from the optional `/services` node of a layout. Numbers are
/// single 32-bit cells; flags are empty properties. Every property is optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServicesSpec {
    /// `guest-pool-mib`: host RAM for all guest RAM together (a smaller pool than the
    /// guests' total RAM overcommits, which swap then has to cover); `None` = everything the
    /// firmware can give guests.
    pub guest_pool_mib: Option<u32>,
    /// `round-interval-us`: time between two services rounds.
    pub round_interval_us: u32,
    /// `dedup`: the same-page merging service runs.
    pub dedup: bool,
    /// `dedup-pages-per-pass`: pages one dedup pass visits; `None` = the advisor chooses.
    pub dedup_pages_per_pass: Option<u32>,
    /// `dedup-full-scan-ms`: the advisor's target time for one full scan.
    pub dedup_full_scan_ms: u32,
    /// `dedup-cpu-budget-permille`: most of its CPU the dedup scanner may use.
    pub dedup_cpu_budget_permille: u32,
    /// `dedup-max-page-sharing`: most guest pages one shared frame may back.
    pub dedup_max_page_sharing: u32,
    /// `dedup-no-zero-pages`: zero pages are merged like any other, not onto a zero frame.
    pub dedup_no_zero_pages: bool,
}

impl Default for ServicesSpec {
    fn default() -> Self {
        Self {
            guest_pool_mib: None,
            round_interval_us: 2_000,
            dedup: false,
            dedup_pages_per_pass: None,
            dedup_full_scan_ms: 200,
            dedup_cpu_budget_permille: 500,
            dedup_max_page_sharing: 256,
            dedup_no_zero_pages: false,
        }
    }
}

impl ServicesSpec {
    /// Every property the node may hold.
    pub const PROPERTIES: [&'static str; 8] = [
        "guest-pool-mib",
        "round-interval-us",
        "dedup",
        "dedup-pages-per-pass",
        "dedup-full-scan-ms",
        "dedup-cpu-budget-permille",
        "dedup-max-page-sharing",
        "dedup-no-zero-pages",
    ];

    fn parse(node: FdtNode<'_, '_>) -> Result<Self, ServicesError> {
        if node.children().next().is_some() {
            return Err(ServicesError::UnexpectedChild);
        }
        let mut spec = Self::default();
        for property in node.properties() {
            let value = property.value;
            let number = |name: &'static str, min: u64, max: u64| {
                let n = be32_exact(value).ok_or(ServicesError::BadValue { property: name })?;
                if u64::from(n) < min || u64::from(n) > max {
                    return Err(ServicesError::OutOfRange {
                        property: name,
                        min,
                        max,
                    });
                }
                Ok(n)
            };
            let flag = |name: &'static str| {
                if value.is_empty() {
                    Ok(true)
                } else {
                    Err(ServicesError::BadValue { property: name })
                }
            };
            match property.name {
                "guest-pool-mib" => {
                    spec.guest_pool_mib = Some(number("guest-pool-mib", 1, 1 << 16)?)
                }
                "round-interval-us" => {
                    spec.round_interval_us = number("round-interval-us", 100, 10_000_000)?
                }
                "dedup" => spec.dedup = flag("dedup")?,
                "dedup-pages-per-pass" => {
                    spec.dedup_pages_per_pass = Some(number("dedup-pages-per-pass", 1, 1 << 20)?)
                }
                "dedup-full-scan-ms" => {
                    spec.dedup_full_scan_ms = number("dedup-full-scan-ms", 1, 3_600_000)?
                }
                "dedup-cpu-budget-permille" => {
                    spec.dedup_cpu_budget_permille = number("dedup-cpu-budget-permille", 1, 1000)?
                }
                "dedup-max-page-sharing" => {
                    spec.dedup_max_page_sharing = number("dedup-max-page-sharing", 2, 1 << 20)?
                }
                "dedup-no-zero-pages" => spec.dedup_no_zero_pages = flag("dedup-no-zero-pages")?,
                // dtc adds `name` to nodes of old-style blobs; harmless.
                "name" => {}
                other => return Err(ServicesError::UnknownProperty(PropertyName::new(other))),
            }
        }
        Ok(spec)
    }
}

fn parse_vm(vm: usize, node: FdtNode<'_, '_>) -> Result<VmSpec, ConfigError> {
    let name = node.name.split('@').next().unwrap_or_default();
    let missing = |property| ConfigError::MissingProperty { vm, property };
    let bad = |property| ConfigError::BadProperty { vm, property };

    let image = prop_str(node, "image")
        .ok_or(missing("image"))?
        .ok_or(bad("image"))?;
    let ram = prop_range(node, "ram")
        .ok_or(missing("ram"))?
        .ok_or(bad("ram"))?;
    let rom = match prop_range(node, "rom") {
        None => None,
        Some(r) => Some(r.ok_or(bad("rom"))?),
    };
    let vcpus = match node.property("vcpus") {
        None => 1,
        Some(p) => be32_exact(p.value).ok_or(bad("vcpus"))?,
    };
    let affinity = match node.property("cpu-affinity") {
        None => None,
        Some(p) => {
            if p.value.is_empty() || p.value.len() % 4 != 0 {
                return Err(bad("cpu-affinity"));
            }
            let cpus: Vec<u32> = p
                .value
                .chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Some(CpuSet::from_cpus(&cpus).ok_or(ConfigError::BadAffinity { vm })?)
        }
    };
    let trust_group = match node.property("trust-group") {
        None => None,
        Some(p) => Some(be32_exact(p.value).ok_or(bad("trust-group"))?),
    };
    let balloon_target_mib = match node.property("balloon-target-mib") {
        None => None,
        Some(p) => Some(be32_exact(p.value).ok_or(bad("balloon-target-mib"))?),
    };
    let workload = parse_workload(vm, node)?;
    let ranged = |property: &'static str, min: u32, max: u32| -> Result<Option<u32>, ConfigError> {
        let Some(p) = node.property(property) else {
            return Ok(None);
        };
        let n = be32_exact(p.value).ok_or(ConfigError::BadProperty { vm, property })?;
        if n < min || n > max {
            return Err(ConfigError::OutOfRange {
                vm,
                property,
                min: u64::from(min),
                max: u64::from(max),
            });
        }
        Ok(Some(n))
    };
    let mem = MemShare {
        limit_mib: ranged("mem-limit-mib", 1, MAX_SHARE_MIB)?,
        reservation_mib: ranged("mem-reservation-mib", 0, MAX_SHARE_MIB)?.unwrap_or(0),
    };
    let watchdog_ms = ranged("watchdog-ms", MIN_WATCHDOG_MS, MAX_WATCHDOG_MS)?;
    let cpu = match prop_str(node, "cpu") {
        None => CpuModel::default(),
        Some(None) => return Err(bad("cpu")),
        Some(Some("mips64r2")) => CpuModel::Mips64R2,
        Some(Some("mips32r2")) => CpuModel::Mips32R2,
        Some(Some(_)) => return Err(ConfigError::UnknownCpuModel { vm }),
    };
    let boot = match prop_str(node, "boot-protocol") {
        None | Some(Some("none")) => BootProtocol::None,
        Some(None) => return Err(bad("boot-protocol")),
        Some(Some("uhi")) => BootProtocol::Uhi,
        Some(Some(_)) => return Err(ConfigError::UnknownBootProtocol { vm }),
    };
    let bootargs = match prop_str(node, "bootargs") {
        None => None,
        Some(None) => return Err(bad("bootargs")),
        Some(Some(text)) => Some(String::from(text)),
    };
    let mut devices = Vec::new();
    for (device, child) in node.children().enumerate() {
        if device == MAX_DEVICES {
            return Err(ConfigError::TooManyDevices { vm });
        }
        devices.push(parse_device(child).ok_or(ConfigError::BadDevice { vm, device })?);
    }
    Ok(VmSpec {
        name: String::from(name),
        image: String::from(image),
        ram,
        rom,
        vcpus,
        affinity,
        trust_group,
        devices,
        balloon_target_mib,
        workload,
        mem,
        watchdog_ms,
        cpu,
        boot,
        bootargs,
    })
}

/// The optional `workload` (a name) and `workload-arg` (a 32- or 64-bit number).
fn parse_workload(vm: usize, node: FdtNode<'_, '_>) -> Result<Option<WorkloadSpec>, ConfigError> {
    let arg = match node.property("workload-arg") {
        None => None,
        Some(p) => Some(be_number(p.value).ok_or(ConfigError::BadProperty {
            vm,
            property: "workload-arg",
        })?),
    };
    let Some(name) = prop_str(node, "workload") else {
        return match arg {
            Some(_) => Err(ConfigError::WorkloadArgWithoutWorkload { vm }),
            None => Ok(None),
        };
    };
    let name = name.ok_or(ConfigError::BadProperty {
        vm,
        property: "workload",
    })?;
    let kind = Workload::from_name(name).ok_or(ConfigError::UnknownWorkload { vm })?;
    Ok(Some(WorkloadSpec { kind, arg }))
}

fn parse_device(node: FdtNode<'_, '_>) -> Option<DeviceSpec> {
    let compatible = node.property("compatible")?.value;
    let has = |s: &str| compatible.split(|&b| b == 0).any(|c| c == s.as_bytes());
    let reg = node.property("reg")?.value;
    let (base, size) = be64_pair(reg)?;
    let window = MmioWindow::new(Gpa::new(base), size)?;
    let kind = if has("ns16550a") {
        let shift = match node.property("reg-shift") {
            None => 0,
            Some(p) => be32_exact(p.value)?,
        };
        DeviceKind::Uart16550 {
            stride: 1u64.checked_shl(shift)?,
        }
    } else if has("virtio,mmio") {
        match prop_str(node, "virtio-device")?? {
            "balloon" => DeviceKind::VirtioMmio(VirtioKind::Balloon),
            _ => return None,
        }
    } else {
        return None;
    };
    Some(DeviceSpec { kind, window })
}

/// A single-string property: `None` if absent, `Some(None)` if not one NUL-terminated UTF-8
/// string.
fn prop_str<'a>(node: FdtNode<'_, 'a>, name: &str) -> Option<Option<&'a str>> {
    let value = node.property(name)?.value;
    let ok = match value.split_last() {
        Some((0, body)) if !body.contains(&0) => core::str::from_utf8(body).ok(),
        _ => None,
    };
    Some(ok)
}

/// A `base size` property of two 64-bit numbers: `None` if absent, `Some(None)` if malformed.
fn prop_range(node: FdtNode<'_, '_>, name: &str) -> Option<Option<MemRange>> {
    let value = node.property(name)?.value;
    Some(be64_pair(value).map(|(base, size_bytes)| MemRange {
        base: Gpa::new(base),
        size_bytes,
    }))
}

fn be32_exact(value: &[u8]) -> Option<u32> {
    let b: [u8; 4] = value.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

/// A big-endian number of one or two cells (`<N>` or `/bits/ 64 <N>`).
fn be_number(value: &[u8]) -> Option<u64> {
    match value.len() {
        4 => be32_exact(value).map(u64::from),
        8 => Some(u64::from_be_bytes(value.try_into().ok()?)),
        _ => None,
    }
}

fn be64_pair(value: &[u8]) -> Option<(u64, u64)> {
    let b: &[u8; 16] = value.try_into().ok()?;
    let hi = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let lo = u64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
    Some((hi, lo))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    /// Writes flattened device trees the way dtc does (version 17, properties first).
    #[derive(Default)]
    struct Blob {
        structure: Vec<u8>,
        strings: Vec<u8>,
    }

    impl Blob {
        fn token(&mut self, t: u32) {
            self.structure.extend_from_slice(&t.to_be_bytes());
        }
        fn pad(&mut self) {
            while !self.structure.len().is_multiple_of(4) {
                self.structure.push(0);
            }
        }
        fn begin(&mut self, name: &str) -> &mut Self {
            self.token(FDT_BEGIN_NODE);
            self.structure.extend_from_slice(name.as_bytes());
            self.structure.push(0);
            self.pad();
            self
        }
        fn end(&mut self) -> &mut Self {
            self.token(FDT_END_NODE);
            self
        }
        fn prop(&mut self, name: &str, value: &[u8]) -> &mut Self {
            let offset = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            self.token(FDT_PROP);
            self.token(value.len() as u32);
            self.token(offset);
            self.structure.extend_from_slice(value);
            self.pad();
            self
        }
        fn str(&mut self, name: &str, value: &str) -> &mut Self {
            let mut v = value.as_bytes().to_vec();
            v.push(0);
            self.prop(name, &v)
        }
        fn u32s(&mut self, name: &str, values: &[u32]) -> &mut Self {
            let v: Vec<u8> = values.iter().flat_map(|x| x.to_be_bytes()).collect();
            self.prop(name, &v)
        }
        fn u64s(&mut self, name: &str, values: &[u64]) -> &mut Self {
            let v: Vec<u8> = values.iter().flat_map(|x| x.to_be_bytes()).collect();
            self.prop(name, &v)
        }
        fn finish(&mut self) -> Vec<u8> {
            self.token(FDT_END);
            let off_struct = FDT_HEADER_BYTES + 16; // after an empty reservation map
            let off_strings = off_struct + self.structure.len();
            let total = off_strings + self.strings.len();
            let header = [
                FDT_MAGIC,
                total as u32,
                off_struct as u32,
                off_strings as u32,
                FDT_HEADER_BYTES as u32,
                17,
                16,
                0,
                self.strings.len() as u32,
                self.structure.len() as u32,
            ];
            let mut out: Vec<u8> = header.iter().flat_map(|x| x.to_be_bytes()).collect();
            out.extend_from_slice(&[0; 16]);
            out.extend_from_slice(&self.structure);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// A blob with the given VMs, each written by `vm` (which adds properties and devices).
    fn config(names: &[&str], vm: impl Fn(&mut Blob, usize)) -> Vec<u8> {
        let mut b = Blob::default();
        b.begin("").str("compatible", COMPATIBLE).begin("vms");
        for (i, name) in names.iter().enumerate() {
            b.begin(name);
            vm(&mut b, i);
            b.end();
        }
        b.end().end().finish()
    }

    fn plain_vm(b: &mut Blob, _: usize) {
        b.str("image", "testguest").u64s("ram", &[0, 16 << 20]);
    }

    fn uart(b: &mut Blob, base: u64, size: u64) {
        b.begin("uart")
            .str("compatible", "ns16550a")
            .u64s("reg", &[base, size])
            .end();
    }

    #[test]
    fn minimal_vm_gets_defaults() {
        let layout = VmLayout::parse(&config(&["a"], plain_vm)).unwrap();
        let vm = &layout.vms[0];
        assert_eq!(vm.name, "a");
        assert_eq!(vm.image, "testguest");
        assert_eq!(
            vm.ram,
            MemRange {
                base: Gpa::new(0),
                size_bytes: 16 << 20
            }
        );
        assert_eq!(
            (vm.vcpus, vm.affinity, vm.trust_group, vm.rom),
            (1, None, None, None)
        );
        assert!(vm.devices.is_empty());
    }

    #[test]
    fn full_vm_is_parsed() {
        let blob = config(&["web@0"], |b, _| {
            plain_vm(b, 0);
            b.u64s("rom", &[0x1e00_0000, 0x1_0000])
                .u32s("vcpus", &[2])
                .u32s("cpu-affinity", &[1, 3])
                .u32s("trust-group", &[7]);
            b.begin("uart@1f000000")
                .str("compatible", "ns16550a")
                .u64s("reg", &[0x1f00_0000, 0x20])
                .u32s("reg-shift", &[2])
                .end();
            b.begin("virtio@1f001000")
                .prop("compatible", b"vendor,thing\0virtio,mmio\0")
                .u64s("reg", &[0x1f00_1000, 0x200])
                .str("virtio-device", "balloon")
                .end();
        });
        let vm = &VmLayout::parse(&blob).unwrap().vms[0];
        assert_eq!(vm.name, "web");
        assert_eq!(
            vm.rom,
            Some(MemRange {
                base: Gpa::new(0x1e00_0000),
                size_bytes: 0x1_0000
            })
        );
        assert_eq!(vm.vcpus, 2);
        assert_eq!(
            vm.affinity.map(|a| a.iter().collect::<Vec<_>>()),
            Some(vec![1, 3])
        );
        assert_eq!(vm.trust_group, Some(7));
        assert_eq!(vm.devices[0].kind, DeviceKind::Uart16550 { stride: 4 });
        assert_eq!(vm.devices[0].window.base(), Gpa::new(0x1f00_0000));
        assert_eq!(
            vm.devices[1].kind,
            DeviceKind::VirtioMmio(VirtioKind::Balloon)
        );
    }

    fn balloon(b: &mut Blob) {
        b.begin("virtio@1f001000")
            .str("compatible", "virtio,mmio")
            .u64s("reg", &[0x1f00_1000, 0x200])
            .str("virtio-device", "balloon")
            .end();
    }

    #[test]
    fn cpu_model_boot_protocol_and_bootargs() {
        let with =
            |cpu: Option<&'static str>, boot: Option<&'static str>, args: Option<&'static str>| {
                config(&["a"], move |b, _| {
                    plain_vm(b, 0);
                    if let Some(cpu) = cpu {
                        b.str("cpu", cpu);
                    }
                    if let Some(boot) = boot {
                        b.str("boot-protocol", boot);
                    }
                    if let Some(args) = args {
                        b.str("bootargs", args);
                    }
                })
            };
        let vm = &VmLayout::parse(&with(None, None, None)).unwrap().vms[0];
        assert_eq!(
            (vm.cpu, vm.boot, vm.bootargs.as_deref()),
            (CpuModel::Mips64R2, BootProtocol::None, None)
        );
        let vm = &VmLayout::parse(&with(Some("mips32r2"), Some("uhi"), Some("console=ttyS0")))
            .unwrap()
            .vms[0];
        assert_eq!(vm.cpu, CpuModel::Mips32R2);
        assert_eq!(vm.boot, BootProtocol::Uhi);
        assert_eq!(vm.bootargs.as_deref(), Some("console=ttyS0"));
        let vm = &VmLayout::parse(&with(Some("mips64r2"), Some("none"), None))
            .unwrap()
            .vms[0];
        assert_eq!((vm.cpu, vm.boot), (CpuModel::Mips64R2, BootProtocol::None));
        assert_eq!(
            VmLayout::parse(&with(Some("r4000"), None, None)),
            Err(ConfigError::UnknownCpuModel { vm: 0 })
        );
        assert_eq!(
            VmLayout::parse(&with(None, Some("yamon"), None)),
            Err(ConfigError::UnknownBootProtocol { vm: 0 })
        );
        let e = VmLayout::parse(&with(None, None, Some("quiet"))).unwrap_err();
        assert_eq!(e, ConfigError::BootargsWithoutDeviceTree { vm: 0 });
        assert!(e.to_string().contains("boot-protocol"));
        let long: &'static str =
            alloc::boxed::Box::leak("x".repeat(MAX_BOOTARGS_BYTES + 1).into_boxed_str());
        assert_eq!(
            VmLayout::parse(&with(None, Some("uhi"), Some(long))),
            Err(ConfigError::BadProperty {
                vm: 0,
                property: "bootargs"
            })
        );
        let bad_cpu = config(&["a"], |b, _| {
            plain_vm(b, 0);
            b.u32s("cpu", &[32]);
        });
        assert_eq!(
            VmLayout::parse(&bad_cpu),
            Err(ConfigError::BadProperty {
                vm: 0,
                property: "cpu"
            })
        );
    }

    #[test]
    fn memory_share_and_watchdog_are_parsed_and_checked() {
        let with = |props: &dyn Fn(&mut Blob)| {
            VmLayout::parse(&config(&["a", "b"], |b, i| {
                plain_vm(b, i);
                if i == 1 {
                    props(b);
                }
            }))
        };
        let layout = with(&|b| {
            b.u32s("mem-limit-mib", &[12])
                .u32s("mem-reservation-mib", &[4])
                .u32s("watchdog-ms", &[2000]);
        })
        .unwrap();
        assert_eq!(layout.vms[0].mem, MemShare::default());
        assert_eq!(layout.vms[0].watchdog_ms, None);
        assert_eq!(
            layout.vms[1].mem,
            MemShare {
                limit_mib: Some(12),
                reservation_mib: 4
            }
        );
        assert_eq!(layout.vms[1].watchdog_ms, Some(2000));
        // plain_vm has 16 MiB of RAM: a reservation above it, or above the limit, is refused.
        assert_eq!(
            with(&|b| {
                b.u32s("mem-reservation-mib", &[17]);
            }),
            Err(ConfigError::BadMemReservation { vm: 1 })
        );
        assert_eq!(
            with(&|b| {
                b.u32s("mem-limit-mib", &[3])
                    .u32s("mem-reservation-mib", &[4]);
            }),
            Err(ConfigError::BadMemReservation { vm: 1 })
        );
        assert_eq!(
            with(&|b| {
                b.u32s("mem-limit-mib", &[0]);
            }),
            Err(ConfigError::OutOfRange {
                vm: 1,
                property: "mem-limit-mib",
                min: 1,
                max: u64::from(MAX_SHARE_MIB)
            })
        );
        assert_eq!(
            with(&|b| {
                b.u32s("watchdog-ms", &[10]);
            }),
            Err(ConfigError::OutOfRange {
                vm: 1,
                property: "watchdog-ms",
                min: u64::from(MIN_WATCHDOG_MS),
                max: u64::from(MAX_WATCHDOG_MS)
            })
        );
        assert_eq!(
            with(&|b| {
                b.u64s("watchdog-ms", &[2000]);
            }),
            Err(ConfigError::BadProperty {
                vm: 1,
                property: "watchdog-ms"
            })
        );
        let err = with(&|b| {
            b.u32s("mem-limit-mib", &[0]);
        })
        .unwrap_err();
        assert_eq!(
            alloc::format!("{err}"),
            "vm 1: property \"mem-limit-mib\" must be in 1..=65536"
        );
    }

    #[test]
    fn reservations_must_fit_the_pool_and_the_error_names_the_vm() {
        let layout = VmLayout::parse(&config(&["a", "b", "c"], |b, i| {
            plain_vm(b, i);
            b.u32s("mem-reservation-mib", &[[6, 8, 2][i]]);
        }))
        .unwrap();
        assert_eq!(layout.check_reservations(MemShare::pages(16)), Ok(()));
        let err = layout.check_reservations(MemShare::pages(15)).unwrap_err();
        assert_eq!(
            err,
            ConfigError::ReservationsExceedPool {
                vm: 2,
                reservation_mib: 2,
                available_mib: 1,
                pool_mib: 15
            }
        );
        assert_eq!(err.vm(), Some(2));
        assert_eq!(
            layout
                .check_reservations(MemShare::pages(13))
                .unwrap_err()
                .vm(),
            Some(1)
        );
    }

    #[test]
    fn balloon_target_is_parsed_and_checked() {
        let with_target = |mib: u32, device: bool| {
            config(&["a"], move |b, _| {
                plain_vm(b, 0);
                b.u32s("balloon-target-mib", &[mib]);
                if device {
                    balloon(b);
                }
            })
        };
        let vm = &VmLayout::parse(&with_target(8, true)).unwrap().vms[0];
        assert_eq!(vm.balloon_target_mib, Some(8));
        // All of RAM (16 MiB) is a valid target; one MiB more is not.
        assert!(VmLayout::parse(&with_target(16, true)).is_ok());
        assert_eq!(
            VmLayout::parse(&with_target(17, true)),
            Err(ConfigError::BalloonTargetTooLarge { vm: 0 })
        );
        assert_eq!(
            VmLayout::parse(&with_target(u32::MAX, true)),
            Err(ConfigError::BalloonTargetTooLarge { vm: 0 })
        );
        assert_eq!(
            VmLayout::parse(&with_target(8, false)),
            Err(ConfigError::BalloonTargetWithoutBalloon { vm: 0 })
        );
        let wide = config(&["a"], |b, _| {
            plain_vm(b, 0);
            b.u64s("balloon-target-mib", &[8]);
            balloon(b);
        });
        assert_eq!(
            VmLayout::parse(&wide),
            Err(ConfigError::BadProperty {
                vm: 0,
                property: "balloon-target-mib"
            })
        );
        let absent = config(&["a"], |b, _| {
            plain_vm(b, 0);
            balloon(b);
        });
        assert_eq!(
            VmLayout::parse(&absent).unwrap().vms[0].balloon_target_mib,
            None
        );
        for e in [
            ConfigError::BalloonTargetTooLarge { vm: 3 },
            ConfigError::BalloonTargetWithoutBalloon { vm: 3 },
        ] {
            assert_eq!(e.vm(), Some(3));
            assert!(e.to_string().contains("balloon-target-mib"));
        }
    }

    #[test]
    fn property_errors() {
        let cases: Vec<(Vec<u8>, ConfigError)> = vec![
            (
                config(&["a"], |b, _| {
                    b.u64s("ram", &[0, 4096]);
                }),
                ConfigError::MissingProperty {
                    vm: 0,
                    property: "image",
                },
            ),
            (
                config(&["a"], |b, _| {
                    b.str("image", "x");
                }),
                ConfigError::MissingProperty {
                    vm: 0,
                    property: "ram",
                },
            ),
            (
                config(&["a"], |b, _| {
                    b.str("image", "x").u32s("ram", &[0, 4096]);
                }),
                ConfigError::BadProperty {
                    vm: 0,
                    property: "ram",
                },
            ),
            (
                config(&["a"], |b, _| {
                    b.prop("image", b"no-terminator").u64s("ram", &[0, 4096]);
                }),
                ConfigError::BadProperty {
                    vm: 0,
                    property: "image",
                },
            ),
            (
                config(&["a"], |b, _| {
                    plain_vm(b, 0);
                    b.prop("vcpus", &[0, 1]);
                }),
                ConfigError::BadProperty {
                    vm: 0,
                    property: "vcpus",
                },
            ),
            (
                config(&["a"], |b, _| {
                    plain_vm(b, 0);
                    b.prop("cpu-affinity", &[]);
                }),
                ConfigError::BadProperty {
                    vm: 0,
                    property: "cpu-affinity",
                },
            ),
            (
                config(&["a"], |b, _| {
                    plain_vm(b, 0);
                    b.u32s("cpu-affinity", &[64]);
                }),
                ConfigError::BadAffinity { vm: 0 },
            ),
        ];
        for (blob, expect) in cases {
            assert_eq!(VmLayout::parse(&blob), Err(expect));
        }
    }

    #[test]
    fn workloads_are_parsed() {
        let blob = config(&["a", "b", "c", "d"], |b, i| {
            plain_vm(b, i);
            match i {
                0 => {
                    b.str("workload", "dedup").u64s("workload-arg", &[1 << 40]);
                }
                1 => {
                    b.str("workload", "stress").u32s("workload-arg", &[300_000]);
                }
                2 => {
                    b.str("workload", "idle");
                }
                _ => {}
            }
        });
        let layout = VmLayout::parse(&blob).unwrap();
        let got: Vec<_> = layout.vms.iter().map(|v| v.workload).collect();
        assert_eq!(
            got,
            vec![
                Some(WorkloadSpec {
                    kind: Workload::Dedup,
                    arg: Some(1 << 40)
                }),
                Some(WorkloadSpec {
                    kind: Workload::Stress,
                    arg: Some(300_000)
                }),
                Some(WorkloadSpec {
                    kind: Workload::Idle,
                    arg: None
                }),
                None,
            ]
        );
        for kind in Workload::ALL {
            let blob = config(&["a"], |b, i| {
                plain_vm(b, i);
                b.str("workload", kind.name());
            });
            let vm = &VmLayout::parse(&blob).unwrap().vms[0];
            assert_eq!(vm.workload.map(|w| w.kind), Some(kind));
        }
    }

    #[test]
    fn workload_errors() {
        let with = |f: fn(&mut Blob)| {
            config(&["ok", "bad"], move |b, i| {
                plain_vm(b, i);
                if i == 1 {
                    f(b);
                }
            })
        };
        let cases: Vec<(Vec<u8>, ConfigError)> = vec![
            (
                with(|b| {
                    b.str("workload", "ksm");
                }),
                ConfigError::UnknownWorkload { vm: 1 },
            ),
            (
                with(|b| {
                    b.str("workload", "");
                }),
                ConfigError::UnknownWorkload { vm: 1 },
            ),
            (
                with(|b| {
                    b.prop("workload", b"dedup");
                }),
                ConfigError::BadProperty {
                    vm: 1,
                    property: "workload",
                },
            ),
            (
                with(|b| {
                    b.str("workload", "swap").prop("workload-arg", &[0, 0, 1]);
                }),
                ConfigError::BadProperty {
                    vm: 1,
                    property: "workload-arg",
                },
            ),
            (
                with(|b| {
                    b.str("workload", "swap").u64s("workload-arg", &[1, 2]);
                }),
                ConfigError::BadProperty {
                    vm: 1,
                    property: "workload-arg",
                },
            ),
            (
                with(|b| {
                    b.u64s("workload-arg", &[4]);
                }),
                ConfigError::WorkloadArgWithoutWorkload { vm: 1 },
            ),
        ];
        for (blob, expect) in cases {
            let err = VmLayout::parse(&blob).unwrap_err();
            assert_eq!(err, expect);
            assert_eq!(err.vm(), Some(1));
        }
        assert!(ConfigError::UnknownWorkload { vm: 1 }
            .to_string()
            .contains("\"stress\""));
    }

    #[test]
    fn balloon_gpa_is_the_first_balloon() {
        let mut vm = VmLayout::builtin_default().vms.remove(0);
        assert_eq!(vm.balloon_gpa(), Some(Gpa::new(DEFAULT_VIRTIO_GPA)));
        let second = DeviceSpec {
            kind: DeviceKind::VirtioMmio(VirtioKind::Balloon),
            window: MmioWindow::new(Gpa::new(0x1f00_2000), 0x200).unwrap(),
        };
        vm.devices.insert(0, vm.devices[0]);
        vm.devices.push(second);
        assert_eq!(vm.balloon_gpa(), Some(Gpa::new(DEFAULT_VIRTIO_GPA)));
        vm.devices.insert(1, second);
        assert_eq!(vm.balloon_gpa(), Some(Gpa::new(0x1f00_2000)));
        vm.devices
            .retain(|d| matches!(d.kind, DeviceKind::Uart16550 { .. }));
        assert_eq!(vm.balloon_gpa(), None);
    }

    #[test]
    fn layout_rules() {
        let two = |second_ram: [u64; 2]| {
            config(&["a", "b"], move |b, i| {
                b.str("image", "testguest");
                b.u64s("ram", if i == 0 { &[0, 4096] } else { &second_ram });
            })
        };
        assert_eq!(
            VmLayout::parse(&two([0, 0])),
            Err(ConfigError::ZeroRam { vm: 1 })
        );
        assert_eq!(
            VmLayout::parse(&two([0x800, 4096])),
            Err(ConfigError::BadRegion {
                vm: 1,
                region: Region::Ram
            })
        );
        assert_eq!(
            VmLayout::parse(&two([GUEST_PHYS_LIMIT - 4096, 8192])),
            Err(ConfigError::BadRegion {
                vm: 1,
                region: Region::Ram
            })
        );
        assert_eq!(
            VmLayout::parse(&two([!0xfff, 8192])),
            Err(ConfigError::BadRegion {
                vm: 1,
                region: Region::Ram
            })
        );
        let dup = config(&["a", "b", "a@1"], plain_vm);
        assert_eq!(
            VmLayout::parse(&dup),
            Err(ConfigError::DuplicateName {
                first: 0,
                second: 2
            })
        );
        let bad_name = config(&["no.dots"], plain_vm);
        assert_eq!(
            VmLayout::parse(&bad_name),
            Err(ConfigError::BadName { vm: 0 })
        );
        let long = config(&["abcdefghijklmnop"], plain_vm);
        assert_eq!(VmLayout::parse(&long), Err(ConfigError::BadName { vm: 0 }));
        let zero_vcpus = config(&["a"], |b, _| {
            plain_vm(b, 0);
            b.u32s("vcpus", &[0]);
        });
        assert_eq!(
            VmLayout::parse(&zero_vcpus),
            Err(ConfigError::BadVcpuCount { vm: 0, vcpus: 0 })
        );
        let no_vms = Blob::default()
            .begin("")
            .str("compatible", COMPATIBLE)
            .begin("vms")
            .end()
            .end()
            .finish();
        assert_eq!(VmLayout::parse(&no_vms), Err(ConfigError::NoVms));
        let not_config = Blob::default()
            .begin("")
            .str("compatible", "acme,board")
            .end()
            .finish();
        assert_eq!(VmLayout::parse(&not_config), Err(ConfigError::NotAConfig));
        let names: Vec<String> = (0..=MAX_VMS).map(|i| alloc::format!("v{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(
            VmLayout::parse(&config(&refs, plain_vm)),
            Err(ConfigError::TooManyVms(MAX_VMS + 1))
        );
    }

    #[test]
    fn overlapping_regions_are_refused() {
        let with = |rom: Option<[u64; 2]>, uart_at: u64| {
            config(&["a"], move |b, _| {
                plain_vm(b, 0);
                if let Some(r) = rom {
                    b.u64s("rom", &r);
                }
                uart(b, uart_at, 8);
                uart(b, 0x1f00_0100, 8);
            })
        };
        assert!(VmLayout::parse(&with(Some([0x1e00_0000, 4096]), 0x1f00_0000)).is_ok());
        assert_eq!(
            VmLayout::parse(&with(Some([0xff_f000, 8192]), 0x1f00_0000)),
            Err(ConfigError::Overlap {
                vm: 0,
                first: Region::Ram,
                second: Region::Rom
            })
        );
        assert_eq!(
            VmLayout::parse(&with(None, 0x10_0000)),
            Err(ConfigError::Overlap {
                vm: 0,
                first: Region::Ram,
                second: Region::Device(0)
            })
        );
        assert_eq!(
            VmLayout::parse(&with(None, 0x1f00_00fc)),
            Err(ConfigError::Overlap {
                vm: 0,
                first: Region::Device(0),
                second: Region::Device(1)
            })
        );
    }

    #[test]
    fn device_errors() {
        let with = |device: &dyn Fn(&mut Blob)| {
            config(&["a"], |b, _| {
                plain_vm(b, 0);
                device(b);
            })
        };
        let bad = Err(ConfigError::BadDevice { vm: 0, device: 0 });
        let unknown = with(&|b: &mut Blob| {
            b.begin("rtc")
                .str("compatible", "acme,rtc")
                .u64s("reg", &[0x1f00_0000, 8])
                .end();
        });
        assert_eq!(VmLayout::parse(&unknown), bad);
        let small_uart = with(&|b: &mut Blob| {
            b.begin("uart")
                .str("compatible", "ns16550a")
                .u64s("reg", &[0x1f00_0000, 8])
                .u32s("reg-shift", &[2])
                .end();
        });
        assert_eq!(VmLayout::parse(&small_uart), bad);
        let huge_shift = with(&|b: &mut Blob| {
            b.begin("uart")
                .str("compatible", "ns16550a")
                .u64s("reg", &[0x1f00_0000, 8])
                .u32s("reg-shift", &[99])
                .end();
        });
        assert_eq!(VmLayout::parse(&huge_shift), bad);
        let unknown_virtio = with(&|b: &mut Blob| {
            b.begin("virtio")
                .str("compatible", "virtio,mmio")
                .u64s("reg", &[0x1f00_1000, 0x200])
                .str("virtio-device", "gpu")
                .end();
        });
        assert_eq!(VmLayout::parse(&unknown_virtio), bad);
        let empty_window = with(&|b: &mut Blob| uart(b, 0x1f00_0000, 0));
        assert_eq!(VmLayout::parse(&empty_window), bad);
        let many = with(&|b: &mut Blob| {
            for i in 0..=MAX_DEVICES as u64 {
                uart(b, 0x1f00_0000 + 0x100 * i, 8);
            }
        });
        assert_eq!(
            VmLayout::parse(&many),
            Err(ConfigError::TooManyDevices { vm: 0 })
        );
    }

    #[test]
    fn host_checks() {
        let layout = VmLayout::parse(&config(&["a", "b"], |b, i| {
            plain_vm(b, i);
            if i == 1 {
                b.u32s("cpu-affinity", &[0, 3]);
            }
        }))
        .unwrap();
        assert_eq!(layout.check_host(&["testguest"], 4), Ok(()));
        assert_eq!(
            layout.check_host(&["testguest"], 2),
            Err(ConfigError::AffinityToMissingCpu {
                vm: 1,
                cpu: 3,
                cpu_count: 2
            })
        );
        assert_eq!(
            layout.check_host(&["other"], 4),
            Err(ConfigError::UnknownImage { vm: 0 })
        );
        let unknown = layout.check_host(&["other"], 4).unwrap_err();
        assert_eq!(unknown.vm().map(|i| layout.vms[i].name.as_str()), Some("a"));
        assert_eq!(ConfigError::NoVms.vm(), None);
        let text = alloc::format!("{}", layout.check_host(&["testguest"], 1).unwrap_err());
        assert_eq!(
            text,
            "vm 1: cpu-affinity names CPU 3, but only 1 CPUs are present"
        );
    }

    #[test]
    fn trust_groups_decide_page_sharing() {
        let layout = VmLayout::parse(&config(&["a", "b", "c", "d"], |b, i| {
            plain_vm(b, i);
            if i < 2 {
                b.u32s("trust-group", &[1]);
            } else if i == 3 {
                b.u32s("trust-group", &[2]);
            }
        }))
        .unwrap();
        assert!(layout.may_share_pages(0, 1));
        assert!(layout.may_share_pages(2, 2));
        assert!(!layout.may_share_pages(0, 2));
        assert!(!layout.may_share_pages(1, 3));
        assert!(!layout.may_share_pages(0, 9));
        assert_eq!(layout.find("c"), Some(2));
    }

    /// A one-VM blob with a `/services` node written by `services`.
    fn with_services(services: impl Fn(&mut Blob)) -> Vec<u8> {
        let mut b = Blob::default();
        b.begin("").str("compatible", COMPATIBLE).begin("vms");
        b.begin("a");
        plain_vm(&mut b, 0);
        b.end().end();
        b.begin("services");
        services(&mut b);
        b.end().end().finish()
    }

    #[test]
    fn services_node_is_optional_and_parsed() {
        let layout = VmLayout::parse(&config(&["a"], plain_vm)).unwrap();
        assert_eq!(layout.services, ServicesSpec::default());
        assert!(!layout.services.dedup);

        let blob = with_services(|b| {
            b.u32s("guest-pool-mib", &[96])
                .u32s("round-interval-us", &[500])
                .prop("dedup", &[])
                .u32s("dedup-pages-per-pass", &[64])
                .u32s("dedup-full-scan-ms", &[50])
                .u32s("dedup-cpu-budget-permille", &[250])
                .u32s("dedup-max-page-sharing", &[8])
                .prop("dedup-no-zero-pages", &[]);
        });
        let services = VmLayout::parse(&blob).unwrap().services;
        assert_eq!(
            services,
            ServicesSpec {
                guest_pool_mib: Some(96),
                round_interval_us: 500,
                dedup: true,
                dedup_pages_per_pass: Some(64),
                dedup_full_scan_ms: 50,
                dedup_cpu_budget_permille: 250,
                dedup_max_page_sharing: 8,
                dedup_no_zero_pages: true,
            }
        );
    }

    #[test]
    fn services_node_errors_are_clear() {
        let err = |services: &dyn Fn(&mut Blob)| VmLayout::parse(&with_services(services));
        let unknown = err(&|b| {
            b.u32s("dedup-pages-per-pas", &[1]);
        })
        .unwrap_err();
        assert_eq!(
            unknown,
            ConfigError::Services(ServicesError::UnknownProperty(PropertyName::new(
                "dedup-pages-per-pas"
            )))
        );
        let text = unknown.to_string();
        assert!(text.starts_with("/services: unknown property \"dedup-pages-per-pas\""));
        assert!(text.contains("dedup-pages-per-pass"), "{text}");
        assert_eq!(unknown.vm(), None);

        assert_eq!(
            err(&|b| {
                b.u64s("guest-pool-mib", &[64]);
            }),
            Err(ConfigError::Services(ServicesError::BadValue {
                property: "guest-pool-mib"
            }))
        );
        assert_eq!(
            err(&|b| {
                b.u32s("dedup", &[1]);
            }),
            Err(ConfigError::Services(ServicesError::BadValue {
                property: "dedup"
            }))
        );
        assert_eq!(
            err(&|b| {
                b.u32s("dedup-max-page-sharing", &[1]);
            }),
            Err(ConfigError::Services(ServicesError::OutOfRange {
                property: "dedup-max-page-sharing",
                min: 2,
                max: 1 << 20
            }))
        );
        assert_eq!(
            err(&|b| {
                b.u32s("guest-pool-mib", &[0]);
            })
            .unwrap_err()
            .to_string(),
            "/services: property \"guest-pool-mib\" must be in 1..=65536"
        );
        assert_eq!(
            err(&|b| {
                b.begin("swap").end();
            }),
            Err(ConfigError::Services(ServicesError::UnexpectedChild))
        );
        // Long names are cut, not refused, and stay printable.
        let long = "x".repeat(40);
        assert_eq!(PropertyName::new(&long).as_str().len(), MAX_PROPERTY_NAME);
    }

    #[test]
    fn builtin_default_is_valid() {
        let layout = VmLayout::builtin_default();
        assert_eq!(layout.check(), Ok(()));
        assert_eq!(layout.check_host(&[DEFAULT_IMAGE], 1), Ok(()));
        assert_eq!(layout.vms.len(), DEFAULT_VM_COUNT);
    }

    #[test]
    fn blob_structure_errors() {
        let good = config(&["a"], plain_vm);
        assert_eq!(check_blob(&good), Ok(()));
        assert_eq!(check_blob(&good[..20]), Err(BlobError::Truncated));
        assert_eq!(
            check_blob(&good[..good.len() - 1]),
            Err(BlobError::Truncated)
        );
        let mut bad_magic = good.clone();
        bad_magic[0] = 0;
        assert_eq!(check_blob(&bad_magic), Err(BlobError::BadMagic));
        let mut old = good.clone();
        old[20..24].copy_from_slice(&16u32.to_be_bytes());
        assert_eq!(check_blob(&old), Err(BlobError::BadVersion(16)));
        let mut far = good.clone();
        far[8..12].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        assert_eq!(check_blob(&far), Err(BlobError::BadBlocks));
        // A property after a child node, as the fdt crate cannot parse it.
        let late_prop = Blob::default()
            .begin("")
            .begin("c")
            .end()
            .str("x", "y")
            .end()
            .finish();
        assert!(matches!(
            check_blob(&late_prop),
            Err(BlobError::BadStructure(_))
        ));
        let unclosed = Blob::default().begin("").begin("c").end().finish();
        assert!(matches!(
            check_blob(&unclosed),
            Err(BlobError::BadStructure(_))
        ));
        let two_roots = Blob::default().begin("").end().begin("").end().finish();
        assert!(matches!(
            check_blob(&two_roots),
            Err(BlobError::BadStructure(_))
        ));
        let mut deep = Blob::default();
        for _ in 0..=MAX_DEPTH {
            deep.begin("n");
        }
        for _ in 0..=MAX_DEPTH {
            deep.end();
        }
        assert!(matches!(
            check_blob(&deep.finish()),
            Err(BlobError::BadStructure(_))
        ));
        assert_eq!(
            VmLayout::parse(&bad_magic),
            Err(ConfigError::Blob(BlobError::BadMagic))
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Corrupted blobs (bytes overwritten, truncated) never panic the parser or the
        /// fdt crate behind it: they parse or fail with an error.
        #[test]
        fn corrupted_blobs_never_panic(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let mut blob = config(&["a", "b"], |b, i| {
                plain_vm(b, i);
                uart(b, 0x1f00_0000, 8);
            });
            for (at, byte) in edits {
                let n = blob.len();
                blob[at % n] = byte;
            }
            let keep = blob.len() - cut % 16;
            let _ = VmLayout::parse(&blob[..keep]);
        }

        /// Random layouts survive the trip through a blob unchanged, and `check` agrees
        /// with what `parse` accepts.
        #[test]
        fn layouts_round_trip(
            vms in proptest::collection::vec(
                (1u64..64, 0u64..4, 1u32..4, proptest::option::of(0u32..3),
                 proptest::option::of(proptest::collection::vec(0u32..8, 1..4))),
                1..5),
        ) {
            let names: Vec<String> = (0..vms.len()).map(|i| alloc::format!("vm{i}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let blob = config(&refs, |b, i| {
                let (ram_mib, ram_base_mib, vcpus, group, cpus) = &vms[i];
                b.str("image", "testguest")
                    .u64s("ram", &[ram_base_mib << 20, ram_mib << 20])
                    .u32s("vcpus", &[*vcpus]);
                if let Some(g) = group {
                    b.u32s("trust-group", &[*g]);
                }
                if let Some(c) = cpus {
                    b.u32s("cpu-affinity", c);
                }
                uart(b, 0x1f00_0000, 8);
            });
            let layout = VmLayout::parse(&blob).unwrap();
            for (spec, (ram_mib, ram_base_mib, vcpus, group, cpus)) in layout.vms.iter().zip(&vms) {
                prop_assert_eq!(spec.ram.size_bytes, ram_mib << 20);
                prop_assert_eq!(spec.ram.base.raw(), ram_base_mib << 20);
                prop_assert_eq!(spec.vcpus, *vcpus);
                prop_assert_eq!(spec.trust_group, *group);
                prop_assert_eq!(spec.affinity, cpus.as_ref().and_then(|c| CpuSet::from_cpus(c)));
            }
            prop_assert_eq!(layout.check(), Ok(()));
        }
    }
}
