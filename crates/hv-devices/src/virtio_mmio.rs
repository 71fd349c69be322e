//! The virtio-mmio transport, virtio 1.x register layout version 2 (virtio 1.2 section 4.2).
//!
//! [`VirtioMmio`] is the register file and the device-status state machine; the device type
//! itself (the balloon, later) is a [`VirtioDevice`] backend that owns feature bits, the
//! configuration space and what happens when a queue is notified. The transport owns the
//! VM's [`GuestMemory`] handle and interrupt line, so a `QueueNotify` store is processed
//! right away and the interrupt raised as the driver asked.
//!
//! The driver is untrusted. Protocol violations are not bus errors: the offending write is
//! ignored, counted, and remembered as [`DriverError`] (`last_error`), as a real device would
//! silently not cooperate. Broken queues put the device into `DEVICE_NEEDS_RESET` (section
//! 2.1.2) until the driver resets it. Only wrong access widths and misaligned accesses are
//! refused as [`AccessError`]s (section 4.2.2.2: registers are 32-bit, aligned).

use alloc::vec::Vec;
use core::fmt;

use hv_core::addr::Gpa;

use crate::bus::{AccessError, MmioDevice};
use crate::irq::IrqLine;
use crate::virtqueue::{
    GuestMemory, QueueError, QueueFeatures, QueueLayout, SplitQueue, MAX_QUEUE_SIZE,
};
use crate::Width;

/// `MagicValue`: "virt" in little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// `Version` of the register layout (2 = virtio 1.x, non-legacy).
pub const VERSION: u32 = 2;
/// `VendorID` reported by mipsvisor devices ("MVSR" in little-endian).
pub const VENDOR_ID: u32 = 0x5253_564d;
/// Size of the register window: registers below 0x100, configuration space above.
pub const WINDOW_BYTES: u64 = 0x200;
/// Most configuration-space bytes a backend may have.
pub const MAX_CONFIG_BYTES: u64 = WINDOW_BYTES - regs::CONFIG;
/// Most queues a backend may have.
pub const MAX_QUEUES: usize = 64;

/// Register offsets (section 4.2.2, table "MMIO Device Register Layout").
pub mod regs {
    /// R: 0x74726976.
    pub const MAGIC_VALUE: u64 = 0x000;
    /// R: 2.
    pub const VERSION: u64 = 0x004;
    /// R: virtio device type.
    pub const DEVICE_ID: u64 = 0x008;
    /// R: vendor.
    pub const VENDOR_ID: u64 = 0x00c;
    /// R: 32 device feature bits, selected by `DEVICE_FEATURES_SEL`.
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// W: which 32 device feature bits to show.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// W: 32 driver feature bits, selected by `DRIVER_FEATURES_SEL`.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// W: which 32 driver feature bits are written.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// W: queue the queue registers refer to.
    pub const QUEUE_SEL: u64 = 0x030;
    /// R: largest size of the selected queue (0 if it does not exist).
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// W: size of the selected queue.
    pub const QUEUE_NUM: u64 = 0x038;
    /// RW: the selected queue is ready.
    pub const QUEUE_READY: u64 = 0x044;
    /// W: queue index with new buffers.
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// R: pending interrupt causes.
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// W: acknowledges interrupt causes.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// RW: device status.
    pub const STATUS: u64 = 0x070;
    /// W: descriptor table address, low 32 bits.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// W: descriptor table address, high 32 bits.
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// W: available (driver) ring address, low 32 bits.
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    /// W: available (driver) ring address, high 32 bits.
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    /// W: used (device) ring address, low 32 bits.
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    /// W: used (device) ring address, high 32 bits.
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    /// W: shared memory region selector (none exist).
    pub const SHM_SEL: u64 = 0x0ac;
    /// R: shared memory region length, low (all ones: no such region).
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    /// R: shared memory region length, high.
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    /// R: shared memory region base, low.
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    /// R: shared memory region base, high.
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    /// R: changes whenever the device changes its configuration space.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of the device-specific configuration space.
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits (section 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready: queues may be used.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error and needs a reset (set by the device only).
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

/// Feature bit: indirect descriptors (section 6).
pub const VIRTIO_F_INDIRECT_DESC: u64 = 1 << 28;
/// Feature bit: `used_event` / `avail_event` suppression.
pub const VIRTIO_F_EVENT_IDX: u64 = 1 << 29;
/// Feature bit: virtio 1.x compliance; required by this transport.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Transport features this implementation handles, offered in addition to the backend's.
pub const TRANSPORT_FEATURES: u64 =
    VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX | VIRTIO_F_VERSION_1;

/// `InterruptStatus` bit: a queue has new used buffers.
pub const INT_USED_BUFFER: u32 = 1;
/// `InterruptStatus` bit: the configuration (or `DEVICE_NEEDS_RESET`) changed.
pub const INT_CONFIG_CHANGE: u32 = 2;

/// A virtio device type behind the transport.
pub trait VirtioDevice {
    /// Virtio device ID (section 5; the balloon is 5).
    fn device_id(&self) -> u32;
    /// Device-specific feature bits (bits 0..24 and above 50). Transport bits are added by
    /// [`TRANSPORT_FEATURES`] and must not be set here.
    fn device_features(&self) -> u64;
    /// The largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Bytes of configuration space (at most [`MAX_CONFIG_BYTES`]).
    fn config_len(&self) -> u64;
    /// Reads `data.len()` bytes of configuration space at `offset` (checked to fit).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes configuration space at `offset` (checked to fit, and only after
    /// `FEATURES_OK`). Fields the driver may not write are the device's to ignore.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set `DRIVER_OK` having negotiated `features`.
    fn activate(&mut self, features: u64);
    /// The driver reset the device: forget all driver-provided state.
    fn reset(&mut self);
    /// The driver turned `queue` off (`QueueReady` = 0): forget buffers held from it.
    fn queue_disabled(&mut self, _queue: u16) {}
    /// The driver notified `queue`: take chains from it and return them. An `Err` means the
    /// queue cannot be trusted any more; the transport sets `DEVICE_NEEDS_RESET`.
    fn process_queue(
        &mut self,
        queue: u16,
        vq: &mut SplitQueue,
        mem: &mut dyn GuestMemory,
    ) -> Result<(), QueueError>;
}

/// A protocol violation by the driver; the access was ignored (section numbers are where the
/// rule is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverError {
    /// A store to a read-only register.
    WriteToReadOnly {
        /// Register offset.
        offset: u64,
    },
    /// A load from a write-only register (reads as 0).
    ReadFromWriteOnly {
        /// Register offset.
        offset: u64,
    },
    /// An access to an offset that is no register.
    NoSuchRegister {
        /// Register offset.
        offset: u64,
    },
    /// A status write cleared bits without a reset (section 2.1.2).
    StatusBitsCleared {
        /// Status before.
        old: u32,
        /// Value written.
        new: u32,
    },
    /// `DRIVER_OK` before `FEATURES_OK` (section 3.1.1).
    DriverOkBeforeFeaturesOk,
    /// `FEATURES_OK` refused: features the device did not offer, or no `VIRTIO_F_VERSION_1`
    /// (section 2.2.1, 6.1).
    FeaturesRejected {
        /// The feature bits the driver asked for.
        requested: u64,
    },
    /// Driver features written after `FEATURES_OK` (section 3.1.1).
    FeaturesAfterFeaturesOk,
    /// Queue registers written before `FEATURES_OK` (section 3.1.1, 4.2.3.2).
    QueueSetupBeforeFeaturesOk,
    /// Queue registers of a queue the device does not have.
    NoSuchQueue {
        /// `QueueSel`.
        queue: u32,
    },
    /// `QueueNum` zero, not a power of two, or above `QueueNumMax` (section 2.7).
    BadQueueSize {
        /// Queue.
        queue: u16,
        /// Size written.
        size: u32,
    },
    /// Queue size or addresses written while the queue is ready (section 4.2.3.2).
    QueueChangedWhileReady {
        /// Queue.
        queue: u16,
    },
    /// `QueueReady` = 1 with a size or an area the device cannot use.
    QueueNotUsable {
        /// Queue.
        queue: u16,
        /// Why.
        error: QueueError,
    },
    /// `QueueNotify` before `DRIVER_OK` for a queue that is not ready, or while the device
    /// needs a reset (a ready queue's early notification is deferred, not refused).
    NotifyBeforeDriverOk,
    /// `QueueNotify` for a queue that does not exist or is not ready.
    NotifyNotReady {
        /// Queue index written.
        queue: u32,
    },
    /// A configuration-space write before `FEATURES_OK` (section 3.1.1).
    ConfigWriteBeforeFeaturesOk,
    /// A configuration-space access beyond the device's configuration.
    ConfigOutOfRange {
        /// Offset into configuration space.
        offset: u64,
    },
    /// A queue turned out to be broken while processing it; the device needs a reset.
    BrokenQueue {
        /// Queue.
        queue: u16,
        /// What was wrong.
        error: QueueError,
    },
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DriverError::WriteToReadOnly { offset } => {
                write!(f, "write to read-only register {offset:#x}")
            }
            DriverError::ReadFromWriteOnly { offset } => {
                write!(f, "read of write-only register {offset:#x}")
            }
            DriverError::NoSuchRegister { offset } => write!(f, "no register at {offset:#x}"),
            DriverError::StatusBitsCleared { old, new } => {
                write!(f, "status {new:#x} clears bits of {old:#x} without a reset")
            }
            DriverError::DriverOkBeforeFeaturesOk => write!(f, "DRIVER_OK before FEATURES_OK"),
            DriverError::FeaturesRejected { requested } => write!(
                f,
                "features {requested:#x} refused (not offered, or VERSION_1 missing)"
            ),
            DriverError::FeaturesAfterFeaturesOk => {
                write!(f, "driver features written after FEATURES_OK")
            }
            DriverError::QueueSetupBeforeFeaturesOk => {
                write!(f, "queue set up before FEATURES_OK")
            }
            DriverError::NoSuchQueue { queue } => write!(f, "queue {queue} does not exist"),
            DriverError::BadQueueSize { queue, size } => write!(
                f,
                "queue {queue}: size {size} is zero, not a power of two or above the maximum"
            ),
            DriverError::QueueChangedWhileReady { queue } => {
                write!(f, "queue {queue} changed while ready")
            }
            DriverError::QueueNotUsable { queue, error } => {
                write!(f, "queue {queue} cannot be made ready: {error}")
            }
            DriverError::NotifyBeforeDriverOk => write!(f, "queue notified before DRIVER_OK"),
            DriverError::NotifyNotReady { queue } => {
                write!(f, "notify for queue {queue}, which is not ready")
            }
            DriverError::ConfigWriteBeforeFeaturesOk => {
                write!(f, "configuration written before FEATURES_OK")
            }
            DriverError::ConfigOutOfRange { offset } => {
                write!(f, "configuration access at {offset:#x} beyond the device's")
            }
            DriverError::BrokenQueue { queue, error } => {
                write!(f, "queue {queue} is broken: {error}")
            }
        }
    }
}

/// Why a transport could not be built around a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportConfigError {
    /// No queues, or more than [`MAX_QUEUES`].
    QueueCount(usize),
    /// A queue maximum that is zero, not a power of two or above 32768.
    QueueMax {
        /// Queue.
        queue: usize,
        /// Its maximum.
        max: u16,
    },
    /// More configuration space than fits the window.
    ConfigTooLarge(u64),
    /// The backend claims transport feature bits itself.
    TransportFeatureBits(u64),
}

impl fmt::Display for TransportConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TransportConfigError::QueueCount(n) => {
                write!(f, "{n} queues; a device needs 1 to {MAX_QUEUES}")
            }
            TransportConfigError::QueueMax { queue, max } => {
                write!(
                    f,
                    "queue {queue}: maximum size {max} is not a power of two up to 32768"
                )
            }
            TransportConfigError::ConfigTooLarge(n) => {
                write!(
                    f,
                    "{n} bytes of configuration space; at most {MAX_CONFIG_BYTES}"
                )
            }
            TransportConfigError::TransportFeatureBits(bits) => {
                write!(f, "device features {bits:#x} overlap the transport's")
            }
        }
    }
}

/// Driver-visible state of one queue.
#[derive(Debug, Clone, Default)]
struct QueueSlot {
    max: u16,
    size: u16,
    desc: u64,
    driver: u64,
    device: u64,
    /// Present while the queue is ready.
    live: Option<SplitQueue>,
}

/// Counters for the stats console.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Protocol violations (each also recorded as `last_error`).
    pub driver_errors: u64,
    /// Device resets by the driver.
    pub resets: u64,
    /// Queue notifications processed.
    pub notifies: u64,
    /// Used-buffer interrupts raised.
    pub used_interrupts: u64,
    /// Notifications for ready queues before DRIVER_OK, deferred until it is set.
    pub early_notifies: u64,
}

/// One virtio-mmio device: transport registers around backend `B`, with the VM's guest
/// memory `M` and interrupt line `I`.
#[derive(Debug)]
pub struct VirtioMmio<B, M, I> {
    backend: B,
    mem: M,
    irq: I,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// The features in force once `FEATURES_OK` was accepted.
    negotiated: u64,
    queue_sel: u32,
    queues: Vec<QueueSlot>,
    interrupt_status: u32,
    config_generation: u32,
    irq_level: bool,
    /// Queues notified before DRIVER_OK (bit n = queue n), processed when it comes.
    pending_notify: u64,
    last_error: Option<DriverError>,
    stats: TransportStats,
}

impl<B: VirtioDevice, M: GuestMemory, I: IrqLine> VirtioMmio<B, M, I> {
    /// A transport in reset state for `backend`.
    pub fn new(backend: B, mem: M, irq: I) -> Result<Self, TransportConfigError> {
        let maxes = backend.queue_max_sizes();
        if maxes.is_empty() || maxes.len() > MAX_QUEUES {
            return Err(TransportConfigError::QueueCount(maxes.len()));
        }
        for (queue, &max) in maxes.iter().enumerate() {
            if max == 0 || max > MAX_QUEUE_SIZE || !max.is_power_of_two() {
                return Err(TransportConfigError::QueueMax { queue, max });
            }
        }
        if backend.config_len() > MAX_CONFIG_BYTES {
            return Err(TransportConfigError::ConfigTooLarge(backend.config_len()));
        }
        let overlap = backend.device_features() & TRANSPORT_FEATURES;
        if overlap != 0 {
            return Err(TransportConfigError::TransportFeatureBits(overlap));
        }
        let queues = maxes
            .iter()
            .map(|&max| QueueSlot {
                max,
                ..QueueSlot::default()
            })
            .collect();
        Ok(Self {
            backend,
            mem,
            irq,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            negotiated: 0,
            queue_sel: 0,
            queues,
            interrupt_status: 0,
            config_generation: 0,
            irq_level: false,
            pending_notify: 0,
            last_error: None,
            stats: TransportStats::default(),
        })
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably (for example to set the balloon target; then call
    /// [`VirtioMmio::config_changed`]).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The guest memory handle.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// The guest memory handle, mutably.
    pub fn memory_mut(&mut self) -> &mut M {
        &mut self.mem
    }

    /// The interrupt line.
    pub fn irq(&self) -> &I {
        &self.irq
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The negotiated features (0 before `FEATURES_OK`).
    pub fn negotiated_features(&self) -> u64 {
        self.negotiated
    }

    /// The most recent protocol violation.
    pub fn last_error(&self) -> Option<DriverError> {
        self.last_error
    }

    /// The counters.
    pub fn stats(&self) -> TransportStats {
        self.stats
    }

    /// All features offered to the driver.
    pub fn offered_features(&self) -> u64 {
        self.backend.device_features() | TRANSPORT_FEATURES
    }

    /// Whether the driver has set `DRIVER_OK` and the device is not broken.
    pub fn is_active(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & status::DEVICE_NEEDS_RESET == 0
    }

    /// Whether queue `queue` is ready.
    pub fn queue_ready(&self, queue: u16) -> bool {
        self.queues
            .get(usize::from(queue))
            .is_some_and(|q| q.live.is_some())
    }

    /// The device changed its configuration space: bump the generation and interrupt.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & status::DRIVER_OK != 0 {
            self.interrupt_status |= INT_CONFIG_CHANGE;
            self.update_irq();
        }
    }

    /// Runs `work` on ready queue `queue` outside a driver notification (for example a stats
    /// queue answered later), then raises the used-buffer interrupt if the driver wants it.
    /// Returns `None` if the device is not active or the queue not ready.
    pub fn with_queue<R>(
        &mut self,
        queue: u16,
        work: impl FnOnce(&mut B, &mut SplitQueue, &mut M) -> Result<R, QueueError>,
    ) -> Option<Result<R, QueueError>> {
        if !self.is_active() {
            return None;
        }
        let slot = self.queues.get_mut(usize::from(queue))?;
        let vq = slot.live.as_mut()?;
        let result = work(&mut self.backend, vq, &mut self.mem);
        self.after_queue_work(queue, result.as_ref().err().copied());
        Some(result)
    }

    fn reject(&mut self, error: DriverError) {
        self.stats.driver_errors += 1;
        self.last_error = Some(error);
    }

    fn update_irq(&mut self) {
        let level = self.interrupt_status != 0;
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    fn reset(&mut self) {
        self.backend.reset();
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.negotiated = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            *q = QueueSlot {
                max: q.max,
                ..QueueSlot::default()
            };
        }
        self.interrupt_status = 0;
        self.pending_notify = 0;
        self.stats.resets += 1;
        self.update_irq();
    }

    fn write_status(&mut self, new: u32) {
        if new == 0 {
            self.reset();
            return;
        }
        // DEVICE_NEEDS_RESET belongs to the device: keep it, whatever the driver writes.
        let kept = self.status & status::DEVICE_NEEDS_RESET;
        let old = self.status & !status::DEVICE_NEEDS_RESET;
        let mut new = new & 0xff & !status::DEVICE_NEEDS_RESET;
        if old & !new != 0 {
            self.reject(DriverError::StatusBitsCleared { old, new });
            return;
        }
        let rising = new & !old;
        if rising & status::FEATURES_OK != 0 {
            let requested = self.driver_features;
            let acceptable =
                requested & !self.offered_features() == 0 && requested & VIRTIO_F_VERSION_1 != 0;
            if acceptable {
                self.negotiated = requested;
            } else {
                // The driver reads FEATURES_OK back as clear and gives up (section 3.1.1).
                new &= !status::FEATURES_OK;
                self.reject(DriverError::FeaturesRejected { requested });
            }
        }
        if rising & status::DRIVER_OK != 0 {
            if new & status::FEATURES_OK == 0 {
                new &= !status::DRIVER_OK;
                self.reject(DriverError::DriverOkBeforeFeaturesOk);
            } else {
                self.backend.activate(self.negotiated);
            }
        }
        self.status = new | kept;
        if rising & self.status & status::DRIVER_OK != 0 && kept == 0 {
            let pending = core::mem::take(&mut self.pending_notify);
            for queue in 0..self.queues.len() {
                // Queue indices are below MAX_QUEUES = 64 (checked in new()).
                if pending & (1 << queue) != 0 && self.queues[queue].live.is_some() {
                    self.run_queue(queue as u16);
                }
            }
        }
    }

    fn features_ok(&self) -> bool {
        self.status & status::FEATURES_OK != 0
    }

    /// The selected queue for a setup write, if setup is allowed now.
    fn setup_queue(&mut self) -> Option<(u16, &mut QueueSlot)> {
        if !self.features_ok() {
            self.reject(DriverError::QueueSetupBeforeFeaturesOk);
            return None;
        }
        let sel = self.queue_sel;
        let Some(index) = u16::try_from(sel)
            .ok()
            .filter(|&i| usize::from(i) < self.queues.len())
        else {
            self.reject(DriverError::NoSuchQueue { queue: sel });
            return None;
        };
        if self.queues[usize::from(index)].live.is_some() {
            self.reject(DriverError::QueueChangedWhileReady { queue: index });
            return None;
        }
        Some((index, &mut self.queues[usize::from(index)]))
    }

    fn write_queue_num(&mut self, size: u32) {
        let Some((queue, slot)) = self.setup_queue() else {
            return;
        };
        let max = slot.max;
        match u16::try_from(size) {
            Ok(n) if n != 0 && n <= max && n.is_power_of_two() => slot.size = n,
            _ => self.reject(DriverError::BadQueueSize { queue, size }),
        }
    }

    /// Sets the low or high half of one of the selected queue's addresses.
    fn write_queue_addr(&mut self, offset: u64, value: u32) {
        let Some((_, slot)) = self.setup_queue() else {
            return;
        };
        let (field, high) = match offset {
            regs::QUEUE_DESC_LOW => (&mut slot.desc, false),
            regs::QUEUE_DESC_HIGH => (&mut slot.desc, true),
            regs::QUEUE_DRIVER_LOW => (&mut slot.driver, false),
            regs::QUEUE_DRIVER_HIGH => (&mut slot.driver, true),
            regs::QUEUE_DEVICE_LOW => (&mut slot.device, false),
            _ => (&mut slot.device, true),
        };
        *field = if high {
            (*field & 0xffff_ffff) | (u64::from(value) << 32)
        } else {
            (*field & !0xffff_ffff) | u64::from(value)
        };
    }

    fn write_queue_ready(&mut self, value: u32) {
        let sel = self.queue_sel;
        let Some(index) = u16::try_from(sel)
            .ok()
            .filter(|&i| usize::from(i) < self.queues.len())
        else {
            self.reject(DriverError::NoSuchQueue { queue: sel });
            return;
        };
        if value & 1 == 0 {
            // Turning a queue off is always allowed; its ring state is forgotten.
            if self.queues[usize::from(index)].live.take().is_some() {
                self.pending_notify &= !(1 << index);
                self.backend.queue_disabled(index);
            }
            return;
        }
        if !self.features_ok() {
            self.reject(DriverError::QueueSetupBeforeFeaturesOk);
            return;
        }
        let slot = &self.queues[usize::from(index)];
        if slot.live.is_some() {
            return;
        }
        let layout = QueueLayout {
            size: slot.size,
            desc: Gpa::new(slot.desc),
            avail: Gpa::new(slot.driver),
            used: Gpa::new(slot.device),
        };
        let features = QueueFeatures {
            indirect: self.negotiated & VIRTIO_F_INDIRECT_DESC != 0,
            event_idx: self.negotiated & VIRTIO_F_EVENT_IDX != 0,
        };
        // Address 0 is guest RAM on our layouts, but no driver puts a ring there: treat it
        // as "not set" (section 4.2.3.2 sets every address before QueueReady).
        let unset = [
            (slot.desc, crate::virtqueue::QueueArea::Descriptors),
            (slot.driver, crate::virtqueue::QueueArea::Available),
            (slot.device, crate::virtqueue::QueueArea::Used),
        ]
        .into_iter()
        .find(|(addr, _)| *addr == 0);
        let made = match unset {
            Some((_, area)) => Err(QueueError::AreaOutsideMemory {
                area,
                gpa: Gpa::new(0),
            }),
            None => SplitQueue::new(layout, features, &self.mem),
        };
        match made {
            Ok(vq) => self.queues[usize::from(index)].live = Some(vq),
            Err(error) => self.reject(DriverError::QueueNotUsable {
                queue: index,
                error,
            }),
        }
    }

    fn notify(&mut self, value: u32) {
        // Without VIRTIO_F_NOTIFICATION_DATA the value is just the queue index.
        let ready = u16::try_from(value).ok().filter(|&i| self.queue_ready(i));
        let broken = self.status & status::DEVICE_NEEDS_RESET != 0;
        if self.status & status::DRIVER_OK == 0 || broken {
            match ready {
                // Linux's balloon primes and kicks its statistics queue before DRIVER_OK
                // (init_vqs), then waits for the device. Buffers must not be used before
                // DRIVER_OK (section 3.1.1), so remember the kick and act on it then.
                Some(queue) if !broken => {
                    self.pending_notify |= 1 << queue;
                    self.stats.early_notifies += 1;
                }
                _ => self.reject(DriverError::NotifyBeforeDriverOk),
            }
            return;
        }
        let Some(queue) = ready else {
            self.reject(DriverError::NotifyNotReady { queue: value });
            return;
        };
        self.run_queue(queue);
    }

    /// Lets the backend process `queue` (ready, device active).
    fn run_queue(&mut self, queue: u16) {
        self.stats.notifies += 1;
        let slot = &mut self.queues[usize::from(queue)];
        let Some(vq) = slot.live.as_mut() else { return };
        let error = self.backend.process_queue(queue, vq, &mut self.mem).err();
        self.after_queue_work(queue, error);
    }

    /// After a queue was worked on: interrupt if the driver wants one, or mark the device
    /// broken if the queue failed.
    fn after_queue_work(&mut self, queue: u16, error: Option<QueueError>) {
        if let Some(error) = error {
            self.reject(DriverError::BrokenQueue { queue, error });
            self.status |= status::DEVICE_NEEDS_RESET;
            self.interrupt_status |= INT_CONFIG_CHANGE;
        } else if let Some(vq) = self.queues[usize::from(queue)].live.as_mut() {
            match vq.needs_notification(&self.mem) {
                Ok(true) => {
                    self.interrupt_status |= INT_USED_BUFFER;
                    self.stats.used_interrupts += 1;
                }
                Ok(false) => {}
                Err(error) => {
                    self.reject(DriverError::BrokenQueue { queue, error });
                    self.status |= status::DEVICE_NEEDS_RESET;
                    self.interrupt_status |= INT_CONFIG_CHANGE;
                }
            }
        }
        self.update_irq();
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        let selected = usize::try_from(self.queue_sel)
            .ok()
            .and_then(|i| self.queues.get(i));
        match offset {
            regs::MAGIC_VALUE => MAGIC,
            regs::VERSION => VERSION,
            regs::DEVICE_ID => self.backend.device_id(),
            regs::VENDOR_ID => VENDOR_ID,
            regs::DEVICE_FEATURES => {
                let features = self.offered_features();
                match self.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            regs::QUEUE_NUM_MAX => selected.map_or(0, |q| u32::from(q.max)),
            regs::QUEUE_READY => u32::from(selected.is_some_and(|q| q.live.is_some())),
            regs::INTERRUPT_STATUS => self.interrupt_status,
            regs::STATUS => self.status,
            regs::SHM_LEN_LOW | regs::SHM_LEN_HIGH | regs::SHM_BASE_LOW | regs::SHM_BASE_HIGH => {
                // No shared memory regions: a length of all ones (section 4.2.2).
                u32::MAX
            }
            regs::CONFIG_GENERATION => self.config_generation,
            regs::DEVICE_FEATURES_SEL
            | regs::DRIVER_FEATURES
            | regs::DRIVER_FEATURES_SEL
            | regs::QUEUE_SEL
            | regs::QUEUE_NUM
            | regs::QUEUE_NOTIFY
            | regs::INTERRUPT_ACK
            | regs::QUEUE_DESC_LOW
            | regs::QUEUE_DESC_HIGH
            | regs::QUEUE_DRIVER_LOW
            | regs::QUEUE_DRIVER_HIGH
            | regs::QUEUE_DEVICE_LOW
            | regs::QUEUE_DEVICE_HIGH
            | regs::SHM_SEL => {
                self.reject(DriverError::ReadFromWriteOnly { offset });
                0
            }
            _ => {
                self.reject(DriverError::NoSuchRegister { offset });
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            regs::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            regs::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            regs::DRIVER_FEATURES => {
                if self.features_ok() {
                    self.reject(DriverError::FeaturesAfterFeaturesOk);
                } else {
                    match self.driver_features_sel {
                        0 => {
                            self.driver_features =
                                (self.driver_features & !0xffff_ffff) | u64::from(value)
                        }
                        1 => {
                            self.driver_features =
                                (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                        }
                        // Feature bits above 63 do not exist; the driver may only write 0.
                        _ if value == 0 => {}
                        _ => self.reject(DriverError::FeaturesRejected {
                            requested: self.driver_features,
                        }),
                    }
                }
            }
            regs::QUEUE_SEL => self.queue_sel = value,
            regs::QUEUE_NUM => self.write_queue_num(value),
            regs::QUEUE_READY => self.write_queue_ready(value),
            regs::QUEUE_NOTIFY => self.notify(value),
            regs::INTERRUPT_ACK => {
                self.interrupt_status &= !value;
                self.update_irq();
            }
            regs::STATUS => self.write_status(value),
            regs::QUEUE_DESC_LOW
            | regs::QUEUE_DESC_HIGH
            | regs::QUEUE_DRIVER_LOW
            | regs::QUEUE_DRIVER_HIGH
            | regs::QUEUE_DEVICE_LOW
            | regs::QUEUE_DEVICE_HIGH => self.write_queue_addr(offset, value),
            regs::SHM_SEL => {}
            regs::MAGIC_VALUE
            | regs::VERSION
            | regs::DEVICE_ID
            | regs::VENDOR_ID
            | regs::DEVICE_FEATURES
            | regs::QUEUE_NUM_MAX
            | regs::INTERRUPT_STATUS
            | regs::SHM_LEN_LOW
            | regs::SHM_LEN_HIGH
            | regs::SHM_BASE_LOW
            | regs::SHM_BASE_HIGH
            | regs::CONFIG_GENERATION => self.reject(DriverError::WriteToReadOnly { offset }),
            _ => self.reject(DriverError::NoSuchRegister { offset }),
        }
    }

    /// Checks a configuration-space access; returns the offset into configuration space.
    fn config_access(&mut self, offset: u64, width: Width) -> Option<u64> {
        let at = offset - regs::CONFIG;
        if at + width.bytes() > self.backend.config_len() {
            self.reject(DriverError::ConfigOutOfRange { offset: at });
            return None;
        }
        Some(at)
    }
}

impl<B: VirtioDevice, M: GuestMemory, I: IrqLine> MmioDevice for VirtioMmio<B, M, I> {
    fn read(&mut self, offset: u64, width: Width) -> Result<u64, AccessError> {
        crate::bus::check_aligned_within(offset, width, WINDOW_BYTES)?;
        if offset >= regs::CONFIG {
            let Some(at) = self.config_access(offset, width) else {
                return Ok(0);
            };
            let mut bytes = [0u8; 8];
            // width.bytes() <= 8 by construction.
            self.backend
                .read_config(at, &mut bytes[..width.bytes() as usize]);
            return Ok(u64::from_le_bytes(bytes));
        }
        if width != Width::Word {
            return Err(AccessError::BadWidth { offset, width });
        }
        Ok(u64::from(self.read_register(offset)))
    }

    fn write(&mut self, offset: u64, width: Width, value: u64) -> Result<(), AccessError> {
        crate::bus::check_aligned_within(offset, width, WINDOW_BYTES)?;
        if offset >= regs::CONFIG {
            if !self.features_ok() {
                self.reject(DriverError::ConfigWriteBeforeFeaturesOk);
                return Ok(());
            }
            if let Some(at) = self.config_access(offset, width) {
                let bytes = value.to_le_bytes();
                self.backend
                    .write_config(at, &bytes[..width.bytes() as usize]);
            }
            return Ok(());
        }
        if width != Width::Word {
            return Err(AccessError::BadWidth { offset, width });
        }
        // A 32-bit store: the value was truncated to 32 bits by the bus.
        self.write_register(offset, value as u32);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::LatchedLine;
    use crate::virtqueue::{VecMemory, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
    use alloc::vec;
    use proptest::prelude::*;

    /// A test device: queue 0 reverses the readable bytes into the writable buffers.
    #[derive(Debug, Default)]
    struct Reverser {
        config: [u8; 12],
        activated: Option<u64>,
        resets: u32,
        maxes: Vec<u16>,
    }

    const DEVICE_ID: u32 = 0x2a;
    const FEATURE_A: u64 = 1 << 3;

    impl VirtioDevice for Reverser {
        fn device_id(&self) -> u32 {
            DEVICE_ID
        }
        fn device_features(&self) -> u64 {
            FEATURE_A
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.maxes
        }
        fn config_len(&self) -> u64 {
            self.config.len() as u64
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            let at = offset as usize;
            data.copy_from_slice(&self.config[at..at + data.len()]);
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            // Only the last four bytes are driver-writable.
            for (i, b) in data.iter().enumerate() {
                if offset as usize + i >= 8 {
                    self.config[offset as usize + i] = *b;
                }
            }
        }
        fn activate(&mut self, features: u64) {
            self.activated = Some(features);
        }
        fn reset(&mut self) {
            self.activated = None;
            self.resets += 1;
        }
        fn process_queue(
            &mut self,
            _queue: u16,
            vq: &mut SplitQueue,
            mem: &mut dyn GuestMemory,
        ) -> Result<(), QueueError> {
            while let Some(chain) = vq.pop(mem)? {
                let mut buf = [0u8; 64];
                let n = chain.read_into(mem, &mut buf).map_err(QueueError::Ring)?;
                buf[..n].reverse();
                let written = chain.write_from(mem, &buf[..n]).map_err(QueueError::Ring)?;
                vq.push_used(mem, chain.head, written)?;
            }
            Ok(())
        }
    }

    type Dev = VirtioMmio<Reverser, VecMemory, LatchedLine>;

    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const DATA: u64 = 0x8000;

    fn dev() -> Dev {
        let backend = Reverser {
            config: *b"\x01\x02\x03\x04\x05\x06\x07\x08abcd",
            maxes: vec![16, 8],
            ..Reverser::default()
        };
        VirtioMmio::new(
            backend,
            VecMemory::new(Gpa::new(0), 0x1_0000),
            LatchedLine::default(),
        )
        .unwrap()
    }

    fn w(d: &mut Dev, offset: u64, value: u32) {
        d.write(offset, Width::Word, u64::from(value)).unwrap();
    }

    fn r(d: &mut Dev, offset: u64) -> u32 {
        d.read(offset, Width::Word).unwrap() as u32
    }

    fn negotiate(d: &mut Dev, features: u64) -> bool {
        w(d, regs::STATUS, status::ACKNOWLEDGE);
        w(d, regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        for sel in 0..2 {
            w(d, regs::DRIVER_FEATURES_SEL, sel);
            w(d, regs::DRIVER_FEATURES, (features >> (32 * sel)) as u32);
        }
        w(
            d,
            regs::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        r(d, regs::STATUS) & status::FEATURES_OK != 0
    }

    fn set_queue(d: &mut Dev, queue: u32, size: u32) {
        w(d, regs::QUEUE_SEL, queue);
        w(d, regs::QUEUE_NUM, size);
        for (low, addr) in [
            (regs::QUEUE_DESC_LOW, DESC),
            (regs::QUEUE_DRIVER_LOW, AVAIL),
            (regs::QUEUE_DEVICE_LOW, USED),
        ] {
            w(d, low, addr as u32);
            w(d, low + 4, (addr >> 32) as u32);
        }
        w(d, regs::QUEUE_READY, 1);
    }

    fn driver_ok(d: &mut Dev) {
        let s = r(d, regs::STATUS);
        w(d, regs::STATUS, s | status::DRIVER_OK);
    }

    /// A ready device with queue 0 of size 16 and `features` negotiated.
    fn ready(features: u64) -> Dev {
        let mut d = dev();
        assert!(negotiate(&mut d, features));
        set_queue(&mut d, 0, 16);
        driver_ok(&mut d);
        assert!(d.is_active());
        d
    }

    fn put(d: &mut Dev, gpa: u64, data: &[u8]) {
        d.memory_mut().write(Gpa::new(gpa), data).unwrap();
    }

    fn desc(d: &mut Dev, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..].copy_from_slice(&next.to_le_bytes());
        put(d, DESC + 16 * u64::from(i), &b);
    }

    fn offer(d: &mut Dev, slot: u16, head: u16) {
        put(d, AVAIL + 4 + 2 * u64::from(slot % 16), &head.to_le_bytes());
        put(d, AVAIL + 2, &(slot + 1).to_le_bytes());
    }

    #[test]
    fn identity_registers() {
        let mut d = dev();
        assert_eq!(r(&mut d, regs::MAGIC_VALUE), 0x7472_6976);
        assert_eq!(r(&mut d, regs::VERSION), 2);
        assert_eq!(r(&mut d, regs::DEVICE_ID), DEVICE_ID);
        assert_eq!(r(&mut d, regs::VENDOR_ID), VENDOR_ID);
        let offered = FEATURE_A | TRANSPORT_FEATURES;
        for (sel, expect) in [(0, offered as u32), (1, (offered >> 32) as u32), (2, 0)] {
            w(&mut d, regs::DEVICE_FEATURES_SEL, sel);
            assert_eq!(r(&mut d, regs::DEVICE_FEATURES), expect);
        }
        for reg in [regs::SHM_LEN_LOW, regs::SHM_LEN_HIGH] {
            assert_eq!(r(&mut d, reg), u32::MAX);
        }
        assert_eq!(d.stats().driver_errors, 0);
    }

    #[test]
    fn read_only_and_write_only_registers() {
        let mut d = dev();
        w(&mut d, regs::MAGIC_VALUE, 0);
        assert_eq!(
            d.last_error(),
            Some(DriverError::WriteToReadOnly { offset: 0 })
        );
        assert_eq!(r(&mut d, regs::MAGIC_VALUE), MAGIC);
        w(&mut d, regs::QUEUE_NUM_MAX, 1);
        w(&mut d, regs::QUEUE_SEL, 0);
        assert_eq!(r(&mut d, regs::QUEUE_NUM_MAX), 16);
        assert_eq!(r(&mut d, regs::QUEUE_NOTIFY), 0);
        assert_eq!(
            d.last_error(),
            Some(DriverError::ReadFromWriteOnly {
                offset: regs::QUEUE_NOTIFY
            })
        );
        assert_eq!(r(&mut d, 0x0c8), 0);
        assert_eq!(
            d.last_error(),
            Some(DriverError::NoSuchRegister { offset: 0x0c8 })
        );
        assert_eq!(d.stats().driver_errors, 4);
    }

    #[test]
    fn access_width_rules() {
        let mut d = dev();
        assert_eq!(
            d.read(regs::STATUS, Width::Byte),
            Err(AccessError::BadWidth {
                offset: regs::STATUS,
                width: Width::Byte
            })
        );
        assert_eq!(
            d.write(regs::MAGIC_VALUE, Width::Double, 0),
            Err(AccessError::BadWidth {
                offset: 0,
                width: Width::Double
            })
        );
        assert_eq!(
            d.read(regs::STATUS + 2, Width::Word),
            Err(AccessError::Unaligned {
                offset: regs::STATUS + 2,
                width: Width::Word
            })
        );
        assert_eq!(
            d.read(0x200, Width::Byte),
            Err(AccessError::OutsideWindow {
                offset: 0x200,
                width: Width::Byte
            })
        );
    }

    #[test]
    fn feature_negotiation_requires_version_1_and_offered_bits() {
        let mut d = dev();
        assert!(!negotiate(&mut d, FEATURE_A));
        assert_eq!(
            d.last_error(),
            Some(DriverError::FeaturesRejected {
                requested: FEATURE_A
            })
        );
        w(&mut d, regs::STATUS, 0);
        let unoffered = VIRTIO_F_VERSION_1 | (1 << 7);
        assert!(!negotiate(&mut d, unoffered));
        w(&mut d, regs::STATUS, 0);
        let wanted = VIRTIO_F_VERSION_1 | FEATURE_A | VIRTIO_F_INDIRECT_DESC;
        assert!(negotiate(&mut d, wanted));
        assert_eq!(d.negotiated_features(), wanted);
        // Too late to change features now.
        w(&mut d, regs::DRIVER_FEATURES_SEL, 0);
        w(&mut d, regs::DRIVER_FEATURES, 0);
        assert_eq!(d.last_error(), Some(DriverError::FeaturesAfterFeaturesOk));
        assert_eq!(d.negotiated_features(), wanted);
        driver_ok(&mut d);
        assert_eq!(d.backend().activated, Some(wanted));
    }

    #[test]
    fn status_rules() {
        let mut d = dev();
        w(
            &mut d,
            regs::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
        );
        assert_eq!(d.last_error(), Some(DriverError::DriverOkBeforeFeaturesOk));
        assert_eq!(
            r(&mut d, regs::STATUS),
            status::ACKNOWLEDGE | status::DRIVER
        );
        w(&mut d, regs::STATUS, status::ACKNOWLEDGE);
        assert_eq!(
            d.last_error(),
            Some(DriverError::StatusBitsCleared { old: 3, new: 1 })
        );
        assert_eq!(r(&mut d, regs::STATUS), 3);
        // The driver cannot set DEVICE_NEEDS_RESET.
        w(&mut d, regs::STATUS, 3 | status::DEVICE_NEEDS_RESET);
        assert_eq!(r(&mut d, regs::STATUS), 3);
        w(&mut d, regs::STATUS, 0);
        assert_eq!(r(&mut d, regs::STATUS), 0);
        assert_eq!(d.backend().resets, 1);
    }

    #[test]
    fn queue_setup_rules() {
        let mut d = dev();
        w(&mut d, regs::QUEUE_SEL, 0);
        w(&mut d, regs::QUEUE_NUM, 8);
        assert_eq!(
            d.last_error(),
            Some(DriverError::QueueSetupBeforeFeaturesOk)
        );
        assert!(negotiate(&mut d, VIRTIO_F_VERSION_1));
        for size in [0, 3, 32, 1 << 16] {
            w(&mut d, regs::QUEUE_NUM, size);
            assert_eq!(
                d.last_error(),
                Some(DriverError::BadQueueSize { queue: 0, size })
            );
        }
        w(&mut d, regs::QUEUE_SEL, 2);
        assert_eq!(r(&mut d, regs::QUEUE_NUM_MAX), 0, "queue 2 does not exist");
        w(&mut d, regs::QUEUE_NUM, 4);
        assert_eq!(d.last_error(), Some(DriverError::NoSuchQueue { queue: 2 }));
        // Ready without addresses.
        w(&mut d, regs::QUEUE_SEL, 1);
        w(&mut d, regs::QUEUE_NUM, 8);
        w(&mut d, regs::QUEUE_READY, 1);
        assert!(matches!(
            d.last_error(),
            Some(DriverError::QueueNotUsable {
                queue: 1,
                error: QueueError::AreaOutsideMemory { .. }
            })
        ));
        assert_eq!(r(&mut d, regs::QUEUE_READY), 0);
        // Addresses outside guest RAM.
        w(&mut d, regs::QUEUE_DESC_LOW, DESC as u32);
        w(&mut d, regs::QUEUE_DRIVER_LOW, AVAIL as u32);
        w(&mut d, regs::QUEUE_DEVICE_LOW, USED as u32);
        w(&mut d, regs::QUEUE_DEVICE_HIGH, 1);
        w(&mut d, regs::QUEUE_READY, 1);
        assert!(matches!(
            d.last_error(),
            Some(DriverError::QueueNotUsable {
                queue: 1,
                error: QueueError::AreaOutsideMemory { .. }
            })
        ));
        w(&mut d, regs::QUEUE_DEVICE_HIGH, 0);
        w(&mut d, regs::QUEUE_READY, 1);
        assert_eq!(r(&mut d, regs::QUEUE_READY), 1);
        assert!(d.queue_ready(1));
        let errors = d.stats().driver_errors;
        w(&mut d, regs::QUEUE_NUM, 4);
        w(&mut d, regs::QUEUE_DESC_LOW, 0x4000);
        assert_eq!(
            d.last_error(),
            Some(DriverError::QueueChangedWhileReady { queue: 1 })
        );
        assert_eq!(d.stats().driver_errors, errors + 2);
        w(&mut d, regs::QUEUE_READY, 0);
        assert!(!d.queue_ready(1));
    }

    #[test]
    fn notify_runs_the_backend_and_interrupts() {
        let mut d = ready(VIRTIO_F_VERSION_1);
        put(&mut d, DATA, b"hello");
        desc(&mut d, 3, DATA, 5, VIRTQ_DESC_F_NEXT, 4);
        desc(&mut d, 4, DATA + 0x100, 16, VIRTQ_DESC_F_WRITE, 0);
        offer(&mut d, 0, 3);
        w(&mut d, regs::QUEUE_NOTIFY, 0);
        assert_eq!(&d.memory().bytes()[0x8100..0x8105], b"olleh");
        assert_eq!(r(&mut d, regs::INTERRUPT_STATUS), INT_USED_BUFFER);
        assert!(d.irq().asserted);
        w(&mut d, regs::INTERRUPT_ACK, INT_USED_BUFFER);
        assert!(!d.irq().asserted);
        assert_eq!(r(&mut d, regs::INTERRUPT_STATUS), 0);
        assert_eq!(d.stats().notifies, 1);
        assert_eq!(d.stats().used_interrupts, 1);
        assert_eq!(d.last_error(), None);
    }

    #[test]
    fn early_notify_is_deferred_until_driver_ok() {
        let mut d = dev();
        assert!(negotiate(&mut d, VIRTIO_F_VERSION_1));
        set_queue(&mut d, 0, 16);
        put(&mut d, DATA, b"ab");
        desc(&mut d, 0, DATA, 2, VIRTQ_DESC_F_NEXT, 1);
        desc(&mut d, 1, DATA + 0x100, 2, VIRTQ_DESC_F_WRITE, 0);
        offer(&mut d, 0, 0);
        w(&mut d, regs::QUEUE_NOTIFY, 0);
        assert_eq!(d.stats().early_notifies, 1);
        assert_eq!(d.stats().notifies, 0, "nothing used before DRIVER_OK");
        assert_eq!(&d.memory().bytes()[0x8100..0x8102], b"\0\0");
        assert_eq!(d.last_error(), None);
        driver_ok(&mut d);
        assert_eq!(d.stats().notifies, 1);
        assert_eq!(&d.memory().bytes()[0x8100..0x8102], b"ba");
        assert_eq!(r(&mut d, regs::INTERRUPT_STATUS), INT_USED_BUFFER);
    }

    #[test]
    fn notify_rules() {
        let mut d = dev();
        w(&mut d, regs::QUEUE_NOTIFY, 0);
        assert_eq!(d.last_error(), Some(DriverError::NotifyBeforeDriverOk));
        let mut d = ready(VIRTIO_F_VERSION_1);
        for queue in [1, 7, 0x1_0000] {
            w(&mut d, regs::QUEUE_NOTIFY, queue);
            assert_eq!(d.last_error(), Some(DriverError::NotifyNotReady { queue }));
        }
        assert_eq!(d.stats().notifies, 0);
    }

    #[test]
    fn broken_queue_needs_reset() {
        let mut d = ready(VIRTIO_F_VERSION_1);
        put(&mut d, AVAIL + 2, &100u16.to_le_bytes());
        w(&mut d, regs::QUEUE_NOTIFY, 0);
        assert!(matches!(
            d.last_error(),
            Some(DriverError::BrokenQueue {
                queue: 0,
                error: QueueError::AvailIndexJump { .. }
            })
        ));
        assert_ne!(r(&mut d, regs::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(r(&mut d, regs::INTERRUPT_STATUS), INT_CONFIG_CHANGE);
        assert!(!d.is_active());
        // Further notifications are refused until the driver resets.
        w(&mut d, regs::QUEUE_NOTIFY, 0);
        assert_eq!(d.last_error(), Some(DriverError::NotifyBeforeDriverOk));
        w(&mut d, regs::STATUS, 0);
        assert_eq!(r(&mut d, regs::STATUS), 0);
        assert_eq!(r(&mut d, regs::INTERRUPT_STATUS), 0);
        assert!(!d.irq().asserted);
        assert!(!d.queue_ready(0));
    }

    #[test]
    fn config_space_access() {
        let mut d = dev();
        assert_eq!(d.read(0x100, Width::Byte), Ok(1));
        assert_eq!(d.read(0x102, Width::Half), Ok(0x0403));
        assert_eq!(d.read(0x104, Width::Word), Ok(0x0807_0605));
        assert_eq!(d.read(0x100, Width::Double), Ok(0x0807_0605_0403_0201));
        assert_eq!(d.read(0x10c, Width::Byte), Ok(0));
        assert_eq!(
            d.last_error(),
            Some(DriverError::ConfigOutOfRange { offset: 0xc })
        );
        d.write(0x108, Width::Word, 0x1111_1111).unwrap();
        assert_eq!(
            d.last_error(),
            Some(DriverError::ConfigWriteBeforeFeaturesOk)
        );
        assert_eq!(
            d.read(0x108, Width::Word),
            Ok(u64::from(u32::from_le_bytes(*b"abcd")))
        );
        assert!(negotiate(&mut d, VIRTIO_F_VERSION_1));
        d.write(0x108, Width::Word, 0x1111_1111).unwrap();
        assert_eq!(d.read(0x108, Width::Word), Ok(0x1111_1111));
        d.write(0x108, Width::Double, 0).unwrap();
        assert_eq!(
            d.last_error(),
            Some(DriverError::ConfigOutOfRange { offset: 8 })
        );
    }

    #[test]
    fn config_change_bumps_generation_and_interrupts_when_active() {
        let mut d = dev();
        d.config_changed();
        assert_eq!(r(&mut d, regs::CONFIG_GENERATION), 1);
        assert_eq!(r(&mut d, regs::INTERRUPT_STATUS), 0, "no driver yet");
        let mut d = ready(VIRTIO_F_VERSION_1);
        d.config_changed();
        assert_eq!(r(&mut d, regs::INTERRUPT_STATUS), INT_CONFIG_CHANGE);
        assert!(d.irq().asserted);
    }

    #[test]
    fn with_queue_returns_buffers_later() {
        let mut d = ready(VIRTIO_F_VERSION_1);
        desc(&mut d, 0, DATA, 8, VIRTQ_DESC_F_WRITE, 0);
        offer(&mut d, 0, 0);
        assert!(
            d.with_queue(1, |_, _, _| Ok(())).is_none(),
            "queue 1 not ready"
        );
        let got = d.with_queue(0, |_, vq, mem| {
            let chain = vq.pop(mem)?.expect("a chain");
            vq.push_used(mem, chain.head, 0)?;
            Ok(chain.head)
        });
        assert_eq!(got, Some(Ok(0)));
        assert_eq!(r(&mut d, regs::INTERRUPT_STATUS), INT_USED_BUFFER);
    }

    #[test]
    fn bad_backends_are_refused() {
        let mem = || VecMemory::new(Gpa::new(0), 16);
        let with = |maxes: Vec<u16>| Reverser {
            maxes,
            ..Reverser::default()
        };
        assert_eq!(
            VirtioMmio::new(with(vec![]), mem(), ()).unwrap_err(),
            TransportConfigError::QueueCount(0)
        );
        assert_eq!(
            VirtioMmio::new(with(vec![8, 12]), mem(), ()).unwrap_err(),
            TransportConfigError::QueueMax { queue: 1, max: 12 }
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A live device whose rings hold arbitrary bytes, notified and poked at random:
        /// no panic, and a device that reports a broken queue stays inactive until reset.
        #[test]
        fn hostile_rings_through_the_transport(
            ring_bytes in proptest::collection::vec(any::<u8>(), 0x3100),
            avail_idx in prop_oneof![3 => 0u16..=16, 1 => any::<u16>()],
            ops in proptest::collection::vec(
                (prop_oneof![Just(regs::QUEUE_NOTIFY), Just(regs::INTERRUPT_ACK),
                             Just(regs::STATUS), Just(regs::QUEUE_READY), Just(regs::QUEUE_SEL)],
                 prop_oneof![0u32..3, any::<u32>()]),
                1..30),
        ) {
            let mut d = ready(VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX);
            put(&mut d, DESC, &ring_bytes);
            // A plausible avail.idx so processing gets past the index check.
            put(&mut d, AVAIL + 2, &avail_idx.to_le_bytes());
            for (offset, value) in ops {
                let was_broken = d.status() & status::DEVICE_NEEDS_RESET != 0;
                let _ = d.write(offset, Width::Word, u64::from(value));
                if was_broken && !(offset == regs::STATUS && value == 0) {
                    prop_assert!(!d.is_active());
                }
                prop_assert_eq!(d.irq().asserted, d.interrupt_status != 0);
            }
        }

        /// Random register traffic (any offset, width and value): no panic, identity
        /// registers never change, FEATURES_OK implies VERSION_1, DRIVER_OK implies
        /// FEATURES_OK, the IRQ line follows InterruptStatus.
        #[test]
        fn random_register_traffic_keeps_invariants(
            ops in proptest::collection::vec(
                (any::<bool>(),
                 prop_oneof![
                     4 => proptest::sample::select(vec![
                         regs::DEVICE_FEATURES_SEL, regs::DRIVER_FEATURES, regs::DRIVER_FEATURES_SEL,
                         regs::QUEUE_SEL, regs::QUEUE_NUM, regs::QUEUE_READY, regs::QUEUE_NOTIFY,
                         regs::INTERRUPT_ACK, regs::STATUS, regs::QUEUE_DESC_LOW,
                         regs::QUEUE_DRIVER_LOW, regs::QUEUE_DEVICE_LOW,
                     ]),
                     1 => (0u64..0x40).prop_map(|i| i * 4),
                     1 => 0u64..0x210,
                 ],
                 prop_oneof![3 => Just(2u8), 1 => 0u8..4],
                 prop_oneof![
                     // Status steps, selectors and queue numbers a driver would write.
                     3 => proptest::sample::select(vec![0u64, 1, 2, 3, 7, 8, 11, 15, 16]),
                     1 => 0u64..0x100,
                     1 => Just(0x1_0000_0000),
                     1 => any::<u64>(),
                 ]),
                0..300),
            start_ready in any::<bool>(),
        ) {
            // Half the runs start from a driven device, so the traffic also meets the
            // negotiated and running states.
            let mut d = if start_ready { ready(VIRTIO_F_VERSION_1 | FEATURE_A) } else { dev() };
            for (is_write, offset, w, value) in ops {
                let width = [Width::Byte, Width::Half, Width::Word, Width::Double][usize::from(w)];
                let value = value & width.value_mask();
                let _ = if is_write {
                    d.write(offset, width, value).map(|()| 0)
                } else {
                    d.read(offset, width)
                };
                prop_assert_eq!(d.read(regs::MAGIC_VALUE, Width::Word), Ok(u64::from(MAGIC)));
                prop_assert_eq!(d.read(regs::VERSION, Width::Word), Ok(2));
                prop_assert_eq!(d.read(regs::DEVICE_ID, Width::Word), Ok(u64::from(DEVICE_ID)));
                prop_assert_eq!(d.read(regs::VENDOR_ID, Width::Word), Ok(u64::from(VENDOR_ID)));
                let st = d.status();
                if st & status::FEATURES_OK != 0 {
                    prop_assert_ne!(d.negotiated_features() & VIRTIO_F_VERSION_1, 0);
                    prop_assert_eq!(d.negotiated_features() & !d.offered_features(), 0);
                }
                if st & status::DRIVER_OK != 0 {
                    prop_assert_ne!(st & status::FEATURES_OK, 0);
                }
                prop_assert_eq!(d.irq().asserted, d.interrupt_status != 0);
                for (q, max) in [(0u16, 16u16), (1, 8)] {
                    let slot = &d.queues[usize::from(q)];
                    prop_assert_eq!(slot.max, max);
                    prop_assert!(slot.size == 0 || (slot.size <= max && slot.size.is_power_of_two()));
                }
            }
        }
    }
}
