//! A polling virtio-mmio (register layout version 2) driver for the balloon device: probe,
//! feature negotiation, split virtqueues set up in the guest's own memory, one request at a
//! time.
//!
//! Everything the device reads or writes lives in this image's .bss, which is guest RAM at
//! GPA `address & WINDOW_GPA_MASK`. The device handles a notification while the store to
//! QueueNotify traps, so a request is normally complete when [`Queue::submit`] returns;
//! waits are bounded all the same.

use core::ptr::{addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};
use guest_rt::{hypercall, window_address, WINDOW_GPA_MASK};

/// Register offsets (virtio 1.2, section 4.2.2).
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits.
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// "virt" in little endian.
pub const MAGIC: u32 = 0x7472_6976;
/// Feature bit 32: virtio 1.x.
pub const F_VERSION_1: u64 = 1 << 32;
/// Descriptor flags.
pub const DESC_F_NEXT: u16 = 1;
/// The device writes this buffer.
pub const DESC_F_WRITE: u16 = 2;

/// Entries of every queue this driver sets up.
pub const QUEUE_SIZE: usize = 32;
/// Queues the driver can set up.
pub const MAX_QUEUES: usize = 4;
/// Polls of the used ring before a request counts as lost.
const USED_POLLS: u32 = 10_000;

/// Why the device could not be driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioError {
    /// No virtio-mmio magic at the address.
    NoDevice(u32),
    /// Not register layout version 2.
    Version(u32),
    /// Another device type.
    DeviceId(u32),
    /// FEATURES_OK did not stick.
    FeaturesRefused,
    /// A queue does not exist or is too small.
    QueueMissing(u16),
    /// The device did not use a request within the poll bound.
    Timeout(u16),
    /// The device asks for a reset (it found our ring broken).
    NeedsReset,
}

impl core::fmt::Display for VirtioError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoDevice(m) => write!(f, "no virtio-mmio device (magic {m:#x})"),
            Self::Version(v) => write!(f, "virtio-mmio version {v}, need 2"),
            Self::DeviceId(id) => write!(f, "device id {id}, need 5 (balloon)"),
            Self::FeaturesRefused => f.write_str("device refused our features"),
            Self::QueueMissing(q) => write!(f, "queue {q} missing or too small"),
            Self::Timeout(q) => write!(f, "queue {q}: request not used in time"),
            Self::NeedsReset => f.write_str("device needs reset"),
        }
    }
}

/// One split-virtqueue descriptor.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct Desc {
    /// Guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// `DESC_F_*`.
    pub flags: u16,
    /// Next descriptor when `DESC_F_NEXT`.
    pub next: u16,
}

/// Ring memory of one queue: descriptor table, available ring, used ring.
#[repr(C, align(16))]
struct RingMemory {
    desc: [Desc; QUEUE_SIZE],
    /// flags, idx, ring[QUEUE_SIZE], used_event.
    avail: [u16; QUEUE_SIZE + 3],
    /// Keeps the used ring 4-byte aligned.
    _pad: u16,
    /// flags | idx << 16, then (id, len) pairs, then avail_event.
    used: [u32; 1 + 2 * QUEUE_SIZE + 1],
}

const EMPTY_RING: RingMemory = RingMemory {
    desc: [Desc {
        addr: 0,
        len: 0,
        flags: 0,
        next: 0,
    }; QUEUE_SIZE],
    avail: [0; QUEUE_SIZE + 3],
    _pad: 0,
    used: [0; 1 + 2 * QUEUE_SIZE + 1],
};

static mut RINGS: [RingMemory; MAX_QUEUES] = [EMPTY_RING; MAX_QUEUES];

/// The guest physical address of a guest pointer (window addresses only).
pub fn gpa_of<T>(p: *const T) -> u64 {
    p as u64 & WINDOW_GPA_MASK
}

/// A virtio-mmio transport at a guest physical address.
#[derive(Debug, Clone, Copy)]
pub struct Transport {
    base: u64,
}

impl Transport {
    /// The transport whose registers start at `gpa`.
    pub fn at(gpa: u64) -> Self {
        Self {
            base: window_address(gpa),
        }
    }

    /// A 32-bit register load.
    pub fn read(&self, offset: u64) -> u32 {
        // SAFETY: the window maps the device's registers; a load has no side effect on
        // guest memory (the hypervisor emulates it).
        unsafe { read_volatile((self.base + offset) as *const u32) }
    }

    /// A 32-bit register store.
    pub fn write(&self, offset: u64, value: u32) {
        fence(Ordering::SeqCst);
        // SAFETY: as for `read`; the device may write our rings, which we only read
        // through volatile loads after this store.
        unsafe { write_volatile((self.base + offset) as *mut u32, value) };
        fence(Ordering::SeqCst);
    }

    /// Checks magic, version and device id.
    pub fn probe(&self, device_id: u32) -> Result<(), VirtioError> {
        let magic = self.read(reg::MAGIC);
        if magic != MAGIC {
            return Err(VirtioError::NoDevice(magic));
        }
        let version = self.read(reg::VERSION);
        if version != 2 {
            return Err(VirtioError::Version(version));
        }
        let id = self.read(reg::DEVICE_ID);
        if id != device_id {
            return Err(VirtioError::DeviceId(id));
        }
        Ok(())
    }

    /// Resets the device and negotiates `wanted & offered` (plus VERSION_1); returns the
    /// features in use.
    pub fn negotiate(&self, wanted: u64) -> Result<u64, VirtioError> {
        self.write(reg::STATUS, 0);
        self.write(reg::STATUS, status::ACKNOWLEDGE);
        self.write(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        let mut offered = 0u64;
        for sel in 0..2u32 {
            self.write(reg::DEVICE_FEATURES_SEL, sel);
            offered |= u64::from(self.read(reg::DEVICE_FEATURES)) << (32 * sel);
        }
        if offered & F_VERSION_1 == 0 {
            return Err(VirtioError::FeaturesRefused);
        }
        let features = offered & (wanted | F_VERSION_1);
        for sel in 0..2u32 {
            self.write(reg::DRIVER_FEATURES_SEL, sel);
            self.write(reg::DRIVER_FEATURES, (features >> (32 * sel)) as u32);
        }
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.write(reg::STATUS, s);
        if self.read(reg::STATUS) & status::FEATURES_OK == 0 {
            self.write(reg::STATUS, s | status::FAILED);
            return Err(VirtioError::FeaturesRefused);
        }
        Ok(features)
    }

    /// Sets up queue `index` in ring memory slot `index`.
    pub fn setup_queue(&self, index: u16) -> Result<Queue, VirtioError> {
        if usize::from(index) >= MAX_QUEUES {
            return Err(VirtioError::QueueMissing(index));
        }
        self.write(reg::QUEUE_SEL, u32::from(index));
        let max = self.read(reg::QUEUE_NUM_MAX) as usize;
        if max < QUEUE_SIZE {
            return Err(VirtioError::QueueMissing(index));
        }
        // SAFETY: each ring slot belongs to one queue; only its `Queue` touches it.
        let ring = unsafe { &raw mut RINGS[usize::from(index)] };
        // SAFETY: `ring` points into a static; the fields' addresses are taken, not read.
        let (desc, avail, used) = unsafe {
            (
                addr_of_mut!((*ring).desc) as *mut Desc,
                addr_of_mut!((*ring).avail) as *mut u16,
                addr_of_mut!((*ring).used) as *mut u32,
            )
        };
        self.write(reg::QUEUE_NUM, QUEUE_SIZE as u32);
        for (low, p) in [
            (reg::QUEUE_DESC_LOW, gpa_of(desc)),
            (reg::QUEUE_DRIVER_LOW, gpa_of(avail)),
            (reg::QUEUE_DEVICE_LOW, gpa_of(used)),
        ] {
            // The high half of each address register follows the low half.
            self.write(low, p as u32);
            self.write(low + 4, (p >> 32) as u32);
        }
        self.write(reg::QUEUE_READY, 1);
        if self.read(reg::QUEUE_READY) != 1 {
            return Err(VirtioError::QueueMissing(index));
        }
        Ok(Queue {
            transport: *self,
            index,
            desc,
            avail,
            used,
            next_avail: 0,
            last_used: 0,
        })
    }

    /// Sets DRIVER_OK.
    pub fn driver_ok(&self) {
        let s = self.read(reg::STATUS);
        self.write(reg::STATUS, s | status::DRIVER_OK);
    }

    /// Whether the device asks for a reset.
    pub fn needs_reset(&self) -> bool {
        self.read(reg::STATUS) & status::DEVICE_NEEDS_RESET != 0
    }

    /// A 32-bit configuration field.
    pub fn config_u32(&self, offset: u64) -> u32 {
        self.read(reg::CONFIG + offset)
    }

    /// Writes a 32-bit configuration field.
    pub fn set_config_u32(&self, offset: u64, value: u32) {
        self.write(reg::CONFIG + offset, value);
    }

    /// Acknowledges whatever interrupts are pending (a polling driver still keeps the line
    /// low); returns them.
    pub fn ack_interrupts(&self) -> u32 {
        let pending = self.read(reg::INTERRUPT_STATUS);
        if pending != 0 {
            self.write(reg::INTERRUPT_ACK, pending);
        }
        pending
    }
}

/// One set-up virtqueue. Requests go one at a time and always use descriptors from 0 up.
#[derive(Debug)]
pub struct Queue {
    transport: Transport,
    index: u16,
    desc: *mut Desc,
    avail: *mut u16,
    used: *mut u32,
    next_avail: u16,
    last_used: u16,
}

/// A used element: head and bytes written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor of the chain.
    pub id: u32,
    /// Bytes the device wrote.
    pub len: u32,
}

impl Queue {
    /// Writes descriptors `0..descs.len()` as given (links included) without notifying.
    pub fn put_descriptors(&mut self, descs: &[Desc]) {
        for (i, d) in descs.iter().take(QUEUE_SIZE).enumerate() {
            // SAFETY: `i` is below QUEUE_SIZE, inside this queue's descriptor table.
            unsafe { write_volatile(self.desc.add(i), *d) };
        }
    }

    /// Makes chain `head` available and notifies the device.
    pub fn publish(&mut self, head: u16) {
        let slot = 2 + usize::from(self.next_avail) % QUEUE_SIZE;
        // SAFETY: `slot` is inside the available ring (flags, idx, ring[QUEUE_SIZE]).
        unsafe { write_volatile(self.avail.add(slot), head) };
        fence(Ordering::SeqCst);
        self.next_avail = self.next_avail.wrapping_add(1);
        // SAFETY: index 1 is avail.idx.
        unsafe { write_volatile(self.avail.add(1), self.next_avail) };
        self.transport
            .write(reg::QUEUE_NOTIFY, u32::from(self.index));
    }

    /// The used ring's index as the device last wrote it.
    fn used_idx(&self) -> u16 {
        // SAFETY: word 0 of the used ring holds flags (low half) and idx (high half).
        (unsafe { read_volatile(self.used) } >> 16) as u16
    }

    /// Takes the next used element if the device has used one.
    pub fn poll_used(&mut self) -> Option<Used> {
        if self.used_idx() == self.last_used {
            return None;
        }
        fence(Ordering::SeqCst);
        let at = 1 + 2 * (usize::from(self.last_used) % QUEUE_SIZE);
        // SAFETY: `at` and `at + 1` are inside the used ring's element array.
        let used = unsafe {
            Used {
                id: read_volatile(self.used.add(at)),
                len: read_volatile(self.used.add(at + 1)),
            }
        };
        self.last_used = self.last_used.wrapping_add(1);
        Some(used)
    }

    /// Waits (bounded, yielding) for the next used element.
    pub fn wait_used(&mut self) -> Result<Used, VirtioError> {
        for _ in 0..USED_POLLS {
            if let Some(used) = self.poll_used() {
                return Ok(used);
            }
            if self.transport.needs_reset() {
                return Err(VirtioError::NeedsReset);
            }
            let _ = hypercall::yield_now();
        }
        Err(VirtioError::Timeout(self.index))
    }

    /// Sends one chain of `descs` (linked in order, `DESC_F_NEXT` added) and waits until
    /// the device used it.
    pub fn submit(&mut self, descs: &[Desc]) -> Result<Used, VirtioError> {
        let mut linked = [Desc::default(); QUEUE_SIZE];
        let n = descs.len().min(QUEUE_SIZE);
        for (i, d) in descs.iter().take(n).enumerate() {
            linked[i] = *d;
            if i + 1 < n {
                linked[i].flags |= DESC_F_NEXT;
                linked[i].next = (i + 1) as u16;
            }
        }
        self.put_descriptors(&linked[..n]);
        self.publish(0);
        self.wait_used()
    }
}
