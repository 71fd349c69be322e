//! Split virtqueues (virtio 1.x section 2.7) processed over untrusted guest memory.
//!
//! Everything a guest driver writes is hostile input: descriptor addresses and lengths,
//! `next` links, flags, ring indices. [`SplitQueue::pop`] walks one available chain and
//! either returns it with every buffer checked against guest RAM, or a [`QueueError`] that
//! says what was wrong; it never panics and never loops (a walk is bounded by the size of the
//! table it walks). [`SplitQueue::push_used`] returns a chain, and
//! [`SplitQueue::needs_notification`] applies the driver's interrupt suppression
//! (`VIRTQ_AVAIL_F_NO_INTERRUPT`, or `used_event` with `VIRTIO_F_EVENT_IDX`).
//!
//! Guest RAM is reached through [`GuestMemory`]: the firmware implements it over memslots,
//! host tests with [`VecMemory`]. All ring fields are little-endian (section 2.7, "legacy
//! interfaces" aside).

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use hv_core::addr::Gpa;

/// Why a guest memory access failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemError {
    /// Some byte of `[gpa, gpa + len)` is not guest RAM (or the range wraps).
    OutOfRange {
        /// Start of the access.
        gpa: Gpa,
        /// Its length in bytes.
        len: u64,
    },
    /// A write to guest memory the device must not change (a read-only memslot).
    ReadOnly {
        /// Start of the access.
        gpa: Gpa,
    },
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MemError::OutOfRange { gpa, len } => {
                write!(f, "{len} bytes at GPA {:#x} are not guest RAM", gpa.raw())
            }
            MemError::ReadOnly { gpa } => {
                write!(f, "GPA {:#x} is read-only guest memory", gpa.raw())
            }
        }
    }
}

/// Bounds-checked access to one VM's guest physical memory.
pub trait GuestMemory {
    /// Fills `buf` from guest memory at `gpa`; on error nothing is guaranteed about `buf`.
    fn read(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), MemError>;
    /// Copies `data` into guest memory at `gpa`; on error nothing was written.
    fn write(&mut self, gpa: Gpa, data: &[u8]) -> Result<(), MemError>;
    /// Whether all of `[gpa, gpa + len)` is guest RAM (a zero-length range at a RAM address
    /// or at the end of a RAM range is fine).
    fn check_range(&self, gpa: Gpa, len: u64) -> Result<(), MemError>;
    /// Orders guest memory accesses before and after the call, against other CPUs (the
    /// firmware issues `sync`; virtio section 2.7.7 and 2.7.13 place the barriers).
    fn barrier(&self) {}
}

/// Reads a little-endian u16 from guest memory.
pub fn read_u16<M: GuestMemory + ?Sized>(mem: &M, gpa: Gpa) -> Result<u16, MemError> {
    let mut b = [0; 2];
    mem.read(gpa, &mut b)?;
    Ok(u16::from_le_bytes(b))
}

/// Reads a little-endian u32 from guest memory.
pub fn read_u32<M: GuestMemory + ?Sized>(mem: &M, gpa: Gpa) -> Result<u32, MemError> {
    let mut b = [0; 4];
    mem.read(gpa, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// Reads a little-endian u64 from guest memory.
pub fn read_u64<M: GuestMemory + ?Sized>(mem: &M, gpa: Gpa) -> Result<u64, MemError> {
    let mut b = [0; 8];
    mem.read(gpa, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Guest RAM as one contiguous `Vec`, for host tests and tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VecMemory {
    base: Gpa,
    bytes: Vec<u8>,
}

impl VecMemory {
    /// `size_bytes` of zeroed RAM starting at `base`.
    pub fn new(base: Gpa, size_bytes: usize) -> Self {
        Self {
            base,
            bytes: vec![0; size_bytes],
        }
    }

    /// The RAM contents.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The RAM contents, mutably.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    /// Byte index range of `[gpa, gpa + len)`, if it is all RAM.
    fn span(&self, gpa: Gpa, len: u64) -> Result<core::ops::Range<usize>, MemError> {
        let err = MemError::OutOfRange { gpa, len };
        let start = gpa.raw().checked_sub(self.base.raw()).ok_or(err)?;
        let end = start.checked_add(len).ok_or(err)?;
        if end > self.bytes.len() as u64 {
            return Err(err);
        }
        // Both fit in usize: end <= bytes.len().
        Ok(start as usize..end as usize)
    }
}

impl GuestMemory for VecMemory {
    fn read(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), MemError> {
        let span = self.span(gpa, buf.len() as u64)?;
        buf.copy_from_slice(&self.bytes[span]);
        Ok(())
    }

    fn write(&mut self, gpa: Gpa, data: &[u8]) -> Result<(), MemError> {
        let span = self.span(gpa, data.len() as u64)?;
        self.bytes[span].copy_from_slice(data);
        Ok(())
    }

    fn check_range(&self, gpa: Gpa, len: u64) -> Result<(), MemError> {
        self.span(gpa, len).map(|_| ())
    }
}

/// Descriptor flag: the chain continues at `next` (section 2.7.5).
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of descriptors (section 2.7.5.3).
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Available ring flag: the driver does not want used-buffer interrupts (section 2.7.6).
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: the device does not want notifications (section 2.7.8).
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;

/// Largest split queue (section 2.7: "Queue Size ... maximum 32768").
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Size of one descriptor in bytes.
pub const DESC_BYTES: u64 = 16;
/// Default cap on descriptors in one chain, direct and indirect together.
pub const DEFAULT_MAX_CHAIN_DESCS: u32 = 1024;
/// Default cap on the total buffer bytes of one chain.
pub const DEFAULT_MAX_CHAIN_BYTES: u64 = 16 << 20;

/// The three areas of a split queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueArea {
    /// The descriptor table (16-byte aligned).
    Descriptors,
    /// The available (driver) ring (2-byte aligned).
    Available,
    /// The used (device) ring (4-byte aligned).
    Used,
}

/// What went wrong with a queue or a chain. The `head` fields name the chain's first
/// descriptor, which the device may still return to the driver as used with length 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// Queue size not a power of two in `1..=32768`.
    BadSize(u16),
    /// A queue area is not aligned as section 2.7 requires.
    Misaligned {
        /// Which area.
        area: QueueArea,
        /// Its address.
        gpa: Gpa,
    },
    /// A queue area is not (entirely) guest RAM.
    AreaOutsideMemory {
        /// Which area.
        area: QueueArea,
        /// Its address.
        gpa: Gpa,
    },
    /// Reading or writing a ring failed (guest memory changed under the queue).
    Ring(MemError),
    /// The driver's `avail.idx` ran more than a queue size ahead of what the device consumed.
    AvailIndexJump {
        /// The driver's index.
        avail_idx: u16,
        /// The next entry the device would consume.
        next_avail: u16,
    },
    /// An available ring entry names a descriptor beyond the table.
    HeadOutOfRange {
        /// The index found in the ring.
        index: u16,
    },
    /// A `next` link points beyond its table.
    NextOutOfRange {
        /// Chain head.
        head: u16,
        /// The link.
        next: u16,
    },
    /// The chain visits more descriptors than its table holds: it loops.
    ChainLoop {
        /// Chain head.
        head: u16,
    },
    /// The chain has more descriptors than the device accepts.
    ChainTooLong {
        /// Chain head.
        head: u16,
        /// The device's limit.
        limit: u32,
    },
    /// The chain's buffers add up to more bytes than the device accepts.
    ChainTooLarge {
        /// Chain head.
        head: u16,
        /// The device's limit.
        limit: u64,
    },
    /// A buffer (or an indirect table) is not entirely guest RAM.
    BufferOutsideMemory {
        /// Chain head.
        head: u16,
        /// The buffer's address.
        gpa: Gpa,
        /// Its length.
        len: u32,
    },
    /// A device-readable buffer follows a device-writable one (section 2.7.4.2).
    ReadableAfterWritable {
        /// Chain head.
        head: u16,
    },
    /// An indirect descriptor without `VIRTIO_F_INDIRECT_DESC` negotiated.
    IndirectNotNegotiated {
        /// Chain head.
        head: u16,
    },
    /// An indirect descriptor inside an indirect table (section 2.7.5.3.1).
    NestedIndirect {
        /// Chain head.
        head: u16,
    },
    /// A descriptor with both `INDIRECT` and `NEXT` (section 2.7.5.3.1).
    IndirectWithNext {
        /// Chain head.
        head: u16,
    },
    /// An indirect table length that is zero or not a multiple of 16.
    BadIndirectLength {
        /// Chain head.
        head: u16,
        /// The length given.
        len: u32,
    },
    /// `push_used` with a head index beyond the queue (a device bug).
    UsedHeadOutOfRange {
        /// The head passed.
        head: u16,
    },
    /// `push_used` with no chain outstanding (a device bug).
    NothingInFlight,
}

impl QueueError {
    /// The head of the chain the error is about, when the chain could be identified (the
    /// device may then return it as used with length 0 and go on).
    pub fn head(&self) -> Option<u16> {
        match *self {
            QueueError::NextOutOfRange { head, .. }
            | QueueError::ChainLoop { head }
            | QueueError::ChainTooLong { head, .. }
            | QueueError::ChainTooLarge { head, .. }
            | QueueError::BufferOutsideMemory { head, .. }
            | QueueError::ReadableAfterWritable { head }
            | QueueError::IndirectNotNegotiated { head }
            | QueueError::NestedIndirect { head }
            | QueueError::IndirectWithNext { head }
            | QueueError::BadIndirectLength { head, .. } => Some(head),
            _ => None,
        }
    }
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            QueueError::BadSize(n) => write!(f, "queue size {n} is not a power of two up to 32768"),
            QueueError::Misaligned { area, gpa } => {
                write!(f, "{area:?} area at GPA {:#x} is misaligned", gpa.raw())
            }
            QueueError::AreaOutsideMemory { area, gpa } => {
                write!(f, "{area:?} area at GPA {:#x} is not guest RAM", gpa.raw())
            }
            QueueError::Ring(e) => write!(f, "ring access failed: {e}"),
            QueueError::AvailIndexJump {
                avail_idx,
                next_avail,
            } => write!(
                f,
                "avail.idx {avail_idx} is more than a queue ahead of {next_avail}"
            ),
            QueueError::HeadOutOfRange { index } => {
                write!(
                    f,
                    "available ring names descriptor {index} beyond the table"
                )
            }
            QueueError::NextOutOfRange { head, next } => {
                write!(f, "chain {head}: next link {next} beyond the table")
            }
            QueueError::ChainLoop { head } => write!(f, "chain {head} loops"),
            QueueError::ChainTooLong { head, limit } => {
                write!(f, "chain {head} has more than {limit} descriptors")
            }
            QueueError::ChainTooLarge { head, limit } => {
                write!(f, "chain {head} has more than {limit} bytes")
            }
            QueueError::BufferOutsideMemory { head, gpa, len } => write!(
                f,
                "chain {head}: buffer of {len} bytes at GPA {:#x} is not guest RAM",
                gpa.raw()
            ),
            QueueError::ReadableAfterWritable { head } => {
                write!(f, "chain {head}: readable buffer after a writable one")
            }
            QueueError::IndirectNotNegotiated { head } => {
                write!(f, "chain {head}: indirect descriptor not negotiated")
            }
            QueueError::NestedIndirect { head } => {
                write!(
                    f,
                    "chain {head}: indirect descriptor inside an indirect table"
                )
            }
            QueueError::IndirectWithNext { head } => {
                write!(f, "chain {head}: descriptor has both INDIRECT and NEXT")
            }
            QueueError::BadIndirectLength { head, len } => {
                write!(
                    f,
                    "chain {head}: indirect table length {len} is not a multiple of 16"
                )
            }
            QueueError::UsedHeadOutOfRange { head } => {
                write!(f, "used entry names descriptor {head} beyond the table")
            }
            QueueError::NothingInFlight => write!(f, "used entry with no chain outstanding"),
        }
    }
}

/// Where a queue lives and how big it is, as the driver configured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLayout {
    /// Number of descriptors (a power of two).
    pub size: u16,
    /// Descriptor table.
    pub desc: Gpa,
    /// Available (driver) ring.
    pub avail: Gpa,
    /// Used (device) ring.
    pub used: Gpa,
}

impl QueueLayout {
    /// Bytes of each area for this size: (descriptors, available ring, used ring), with the
    /// event-index fields (section 2.7).
    pub fn area_bytes(&self) -> (u64, u64, u64) {
        let n = u64::from(self.size);
        (DESC_BYTES * n, 6 + 2 * n, 6 + 8 * n)
    }

    /// Checks size, alignment and that each area is guest RAM.
    pub fn validate<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<(), QueueError> {
        if self.size == 0 || self.size > MAX_QUEUE_SIZE || !self.size.is_power_of_two() {
            return Err(QueueError::BadSize(self.size));
        }
        let (desc_bytes, avail_bytes, used_bytes) = self.area_bytes();
        for (area, gpa, align, len) in [
            (QueueArea::Descriptors, self.desc, 16, desc_bytes),
            (QueueArea::Available, self.avail, 2, avail_bytes),
            (QueueArea::Used, self.used, 4, used_bytes),
        ] {
            if !gpa.raw().is_multiple_of(align) {
                return Err(QueueError::Misaligned { area, gpa });
            }
            if mem.check_range(gpa, len).is_err() {
                return Err(QueueError::AreaOutsideMemory { area, gpa });
            }
        }
        Ok(())
    }
}

/// Negotiated features that change queue processing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueFeatures {
    /// `VIRTIO_F_INDIRECT_DESC`.
    pub indirect: bool,
    /// `VIRTIO_F_EVENT_IDX`.
    pub event_idx: bool,
}

/// Limits a device puts on one chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainLimits {
    /// Most descriptors, direct and indirect together.
    pub max_descs: u32,
    /// Most buffer bytes in total.
    pub max_bytes: u64,
}

impl Default for ChainLimits {
    fn default() -> Self {
        Self {
            max_descs: DEFAULT_MAX_CHAIN_DESCS,
            max_bytes: DEFAULT_MAX_CHAIN_BYTES,
        }
    }
}

/// One checked buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    /// Guest physical address (the whole buffer is guest RAM).
    pub gpa: Gpa,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (else device-readable).
    pub writable: bool,
}

/// A descriptor chain taken from the available ring, all buffers checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescChain {
    /// Index of the head descriptor: what goes back in the used ring.
    pub head: u16,
    /// The buffers in chain order: all readable ones first.
    pub buffers: Vec<Buffer>,
}

impl DescChain {
    /// The device-readable buffers.
    pub fn readable(&self) -> impl Iterator<Item = &Buffer> {
        self.buffers.iter().filter(|b| !b.writable)
    }

    /// The device-writable buffers.
    pub fn writable(&self) -> impl Iterator<Item = &Buffer> {
        self.buffers.iter().filter(|b| b.writable)
    }

    /// Total bytes of the readable buffers.
    pub fn readable_bytes(&self) -> u64 {
        self.readable().map(|b| u64::from(b.len)).sum()
    }

    /// Total bytes of the writable buffers.
    pub fn writable_bytes(&self) -> u64 {
        self.writable().map(|b| u64::from(b.len)).sum()
    }

    /// Copies the readable buffers, in order, into `out` until it is full; returns the bytes
    /// copied.
    pub fn read_into<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        out: &mut [u8],
    ) -> Result<usize, MemError> {
        let mut done = 0;
        for b in self.readable() {
            if done == out.len() {
                break;
            }
            let n = (out.len() - done).min(b.len as usize);
            mem.read(b.gpa, &mut out[done..done + n])?;
            done += n;
        }
        Ok(done)
    }

    /// Copies `data` into the writable buffers in order, as far as they reach; returns the
    /// bytes written (the used length to report).
    pub fn write_from<M: GuestMemory + ?Sized>(
        &self,
        mem: &mut M,
        data: &[u8],
    ) -> Result<u32, MemError> {
        let mut done = 0usize;
        for b in self.writable() {
            if done == data.len() {
                break;
            }
            let n = (data.len() - done).min(b.len as usize);
            mem.write(b.gpa, &data[done..done + n])?;
            done += n;
        }
        // done <= writable_bytes of a chain capped by max_bytes; saturate to be safe.
        Ok(u32::try_from(done).unwrap_or(u32::MAX))
    }
}

/// A raw descriptor as the driver wrote it.
#[derive(Debug, Clone, Copy)]
struct RawDesc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn read_desc<M: GuestMemory + ?Sized>(mem: &M, gpa: Gpa) -> Result<RawDesc, MemError> {
    let mut b = [0u8; 16];
    mem.read(gpa, &mut b)?;
    Ok(RawDesc {
        addr: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        flags: u16::from_le_bytes([b[12], b[13]]),
        next: u16::from_le_bytes([b[14], b[15]]),
    })
}

/// The device side of one split virtqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitQueue {
    layout: QueueLayout,
    features: QueueFeatures,
    limits: ChainLimits,
    /// Next available-ring entry to consume.
    next_avail: u16,
    /// Next used-ring entry to fill (== the used.idx the device last published).
    next_used: u16,
    /// Chains popped and not yet pushed back.
    in_flight: u32,
    /// used.idx at the last interrupt decision, for `VIRTIO_F_EVENT_IDX`.
    signalled_used: Option<u16>,
}

impl SplitQueue {
    /// A queue over a validated layout, with both ring indices at 0 (a fresh queue).
    pub fn new<M: GuestMemory + ?Sized>(
        layout: QueueLayout,
        features: QueueFeatures,
        mem: &M,
    ) -> Result<Self, QueueError> {
        layout.validate(mem)?;
        Ok(Self {
            layout,
            features,
            limits: ChainLimits::default(),
            next_avail: 0,
            next_used: 0,
            in_flight: 0,
            signalled_used: None,
        })
    }

    /// Replaces the chain limits.
    pub fn with_limits(mut self, limits: ChainLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The layout.
    pub fn layout(&self) -> QueueLayout {
        self.layout
    }

    /// The next available-ring entry the device will consume.
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// The used index the device has published.
    pub fn next_used(&self) -> u16 {
        self.next_used
    }

    /// Chains popped and not yet returned.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    fn avail_idx<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<u16, QueueError> {
        read_u16(mem, self.avail_field(2)).map_err(QueueError::Ring)
    }

    /// Address `offset` bytes into the available ring. Cannot overflow: the layout was
    /// validated to lie in guest RAM, and offsets stay within the ring.
    fn avail_field(&self, offset: u64) -> Gpa {
        Gpa::new(self.layout.avail.raw() + offset)
    }

    fn used_field(&self, offset: u64) -> Gpa {
        Gpa::new(self.layout.used.raw() + offset)
    }

    /// Whether the driver has made chains available that the device has not taken.
    pub fn has_available<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<bool, QueueError> {
        Ok(self.avail_idx(mem)? != self.next_avail)
    }

    /// Takes the next available chain: `Ok(None)` when the ring is empty.
    ///
    /// On a chain error the entry is consumed (so the device can return the head as used with
    /// length 0, see [`QueueError::head`], and go on) and counted as in flight when the head
    /// was valid. Ring-level errors (`Ring`, `AvailIndexJump`) consume nothing: the queue is
    /// broken until the driver resets it.
    pub fn pop<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &mut M,
    ) -> Result<Option<DescChain>, QueueError> {
        let mut avail_idx = self.avail_idx(mem)?;
        if avail_idx == self.next_avail && self.features.event_idx {
            // Ask for a notification at the next entry, then look again so a chain made
            // available meanwhile is not missed (section 2.7.10 / 2.7.7.2).
            let size = u64::from(self.layout.size);
            mem.write(
                self.used_field(4 + 8 * size),
                &self.next_avail.to_le_bytes(),
            )
            .map_err(QueueError::Ring)?;
            mem.barrier();
            avail_idx = self.avail_idx(mem)?;
        }
        let pending = avail_idx.wrapping_sub(self.next_avail);
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.layout.size {
            return Err(QueueError::AvailIndexJump {
                avail_idx,
                next_avail: self.next_avail,
            });
        }
        // Read the ring entry only after seeing the index that covers it.
        mem.barrier();
        let slot = u64::from(self.next_avail % self.layout.size);
        let index = read_u16(mem, self.avail_field(4 + 2 * slot)).map_err(QueueError::Ring)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        if index >= self.layout.size {
            return Err(QueueError::HeadOutOfRange { index });
        }
        self.in_flight = self.in_flight.saturating_add(1);
        self.walk_chain(mem, index).map(Some)
    }

    /// Follows the chain starting at `head`, checking every rule.
    fn walk_chain<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        head: u16,
    ) -> Result<DescChain, QueueError> {
        let mut buffers = Vec::new();
        let mut table = self.layout.desc;
        let mut table_len = u32::from(self.layout.size);
        let mut in_indirect = false;
        let mut index = head;
        // Descriptors visited in the current table: more than table_len means a loop.
        let mut visited_in_table = 0u32;
        let mut total_descs = 0u32;
        let mut total_bytes = 0u64;
        let mut seen_writable = false;
        loop {
            visited_in_table += 1;
            if visited_in_table > table_len {
                return Err(QueueError::ChainLoop { head });
            }
            // index < table_len and the table lies in guest RAM, so this cannot overflow.
            let at = Gpa::new(table.raw() + DESC_BYTES * u64::from(index));
            let desc = read_desc(mem, at).map_err(|_| QueueError::BufferOutsideMemory {
                head,
                gpa: table,
                len: table_len.saturating_mul(16),
            })?;
            if desc.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                if !self.features.indirect {
                    return Err(QueueError::IndirectNotNegotiated { head });
                }
                if in_indirect {
                    return Err(QueueError::NestedIndirect { head });
                }
                if desc.flags & VIRTQ_DESC_F_NEXT != 0 {
                    return Err(QueueError::IndirectWithNext { head });
                }
                if desc.len == 0 || desc.len % 16 != 0 {
                    return Err(QueueError::BadIndirectLength {
                        head,
                        len: desc.len,
                    });
                }
                let gpa = Gpa::new(desc.addr);
                if mem.check_range(gpa, u64::from(desc.len)).is_err() {
                    return Err(QueueError::BufferOutsideMemory {
                        head,
                        gpa,
                        len: desc.len,
                    });
                }
                table = gpa;
                table_len = desc.len / 16;
                in_indirect = true;
                index = 0;
                visited_in_table = 0;
                continue;
            }
            total_descs += 1;
            if total_descs > self.limits.max_descs {
                return Err(QueueError::ChainTooLong {
                    head,
                    limit: self.limits.max_descs,
                });
            }
            let writable = desc.flags & VIRTQ_DESC_F_WRITE != 0;
            if !writable && seen_writable {
                return Err(QueueError::ReadableAfterWritable { head });
            }
            seen_writable |= writable;
            let gpa = Gpa::new(desc.addr);
            if mem.check_range(gpa, u64::from(desc.len)).is_err() {
                return Err(QueueError::BufferOutsideMemory {
                    head,
                    gpa,
                    len: desc.len,
                });
            }
            total_bytes += u64::from(desc.len);
            if total_bytes > self.limits.max_bytes {
                return Err(QueueError::ChainTooLarge {
                    head,
                    limit: self.limits.max_bytes,
                });
            }
            buffers.push(Buffer {
                gpa,
                len: desc.len,
                writable,
            });
            if desc.flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(DescChain { head, buffers });
            }
            if u32::from(desc.next) >= table_len {
                return Err(QueueError::NextOutOfRange {
                    head,
                    next: desc.next,
                });
            }
            index = desc.next;
        }
    }

    /// Returns chain `head` to the driver with `written_len` bytes written into it.
    pub fn push_used<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        head: u16,
        written_len: u32,
    ) -> Result<(), QueueError> {
        if head >= self.layout.size {
            return Err(QueueError::UsedHeadOutOfRange { head });
        }
        if self.in_flight == 0 {
            return Err(QueueError::NothingInFlight);
        }
        let slot = u64::from(self.next_used % self.layout.size);
        let mut entry = [0u8; 8];
        entry[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        entry[4..].copy_from_slice(&written_len.to_le_bytes());
        mem.write(self.used_field(4 + 8 * slot), &entry)
            .map_err(QueueError::Ring)?;
        // The entry must be visible before the index that publishes it (section 2.7.8.2).
        mem.barrier();
        let next = self.next_used.wrapping_add(1);
        mem.write(self.used_field(2), &next.to_le_bytes())
            .map_err(QueueError::Ring)?;
        self.next_used = next;
        self.in_flight -= 1;
        Ok(())
    }

    /// Whether the driver wants an interrupt for the used entries published since the last
    /// call (section 2.7.7.2 and 2.7.10).
    pub fn needs_notification<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, QueueError> {
        let new = self.next_used;
        let old = self.signalled_used.replace(new);
        if old == Some(new) {
            return Ok(false);
        }
        // Publish used.idx before reading the driver's suppression state.
        mem.barrier();
        if self.features.event_idx {
            let size = u64::from(self.layout.size);
            let used_event =
                read_u16(mem, self.avail_field(4 + 2 * size)).map_err(QueueError::Ring)?;
            let Some(old) = old else { return Ok(true) };
            // vring_need_event: has used.idx moved past used_event since `old`?
            Ok(new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old))
        } else {
            let flags = read_u16(mem, self.avail_field(0)).map_err(QueueError::Ring)?;
            Ok(flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BASE: u64 = 0x10_0000;
    const RAM: usize = 0x2_0000;
    const DATA: u64 = BASE + 0x8000;

    fn layout(size: u16) -> QueueLayout {
        QueueLayout {
            size,
            desc: Gpa::new(BASE),
            avail: Gpa::new(BASE + 0x4000),
            used: Gpa::new(BASE + 0x5000),
        }
    }

    fn mem() -> VecMemory {
        VecMemory::new(Gpa::new(BASE), RAM)
    }

    fn put(mem: &mut VecMemory, gpa: u64, data: &[u8]) {
        mem.write(Gpa::new(gpa), data).unwrap();
    }

    fn desc(mem: &mut VecMemory, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..].copy_from_slice(&next.to_le_bytes());
        put(mem, table + 16 * u64::from(i), &b);
    }

    /// Appends `heads` to the available ring and publishes them.
    fn offer(mem: &mut VecMemory, l: &QueueLayout, heads: &[u16]) {
        let mut idx = read_u16(mem, Gpa::new(l.avail.raw() + 2)).unwrap();
        for &h in heads {
            let slot = u64::from(idx % l.size);
            put(mem, l.avail.raw() + 4 + 2 * slot, &h.to_le_bytes());
            idx = idx.wrapping_add(1);
        }
        put(mem, l.avail.raw() + 2, &idx.to_le_bytes());
    }

    fn queue(m: &VecMemory, size: u16, features: QueueFeatures) -> SplitQueue {
        SplitQueue::new(layout(size), features, m).unwrap()
    }

    const INDIRECT: QueueFeatures = QueueFeatures {
        indirect: true,
        event_idx: false,
    };

    #[test]
    fn layout_validation() {
        let m = mem();
        for size in [0, 3, 100, 65535] {
            assert_eq!(layout(size).validate(&m), Err(QueueError::BadSize(size)));
        }
        assert_eq!(
            SplitQueue::new(
                QueueLayout {
                    size: 8,
                    ..layout(8)
                },
                QueueFeatures::default(),
                &m
            )
            .map(|q| q.layout().size),
            Ok(8)
        );
        let cases = [
            (
                QueueLayout {
                    desc: Gpa::new(BASE + 8),
                    ..layout(8)
                },
                QueueArea::Descriptors,
                false,
            ),
            (
                QueueLayout {
                    avail: Gpa::new(BASE + 0x4001),
                    ..layout(8)
                },
                QueueArea::Available,
                false,
            ),
            (
                QueueLayout {
                    used: Gpa::new(BASE + 0x5002),
                    ..layout(8)
                },
                QueueArea::Used,
                false,
            ),
            (
                QueueLayout {
                    desc: Gpa::new(0),
                    ..layout(8)
                },
                QueueArea::Descriptors,
                true,
            ),
            (
                QueueLayout {
                    used: Gpa::new(BASE + RAM as u64 - 8),
                    ..layout(8)
                },
                QueueArea::Used,
                true,
            ),
        ];
        for (l, area, outside) in cases {
            let err = l.validate(&m).unwrap_err();
            if outside {
                assert!(matches!(err, QueueError::AreaOutsideMemory { area: a, .. } if a == area));
            } else {
                assert!(matches!(err, QueueError::Misaligned { area: a, .. } if a == area));
            }
        }
    }

    #[test]
    fn pops_a_chain_and_returns_it() {
        let mut m = mem();
        let l = layout(8);
        let mut q = queue(&m, 8, QueueFeatures::default());
        assert_eq!(q.pop(&mut m), Ok(None));
        desc(&mut m, BASE, 5, DATA, 16, VIRTQ_DESC_F_NEXT, 2);
        desc(&mut m, BASE, 2, DATA + 16, 4, VIRTQ_DESC_F_NEXT, 7);
        desc(&mut m, BASE, 7, DATA + 64, 32, VIRTQ_DESC_F_WRITE, 0);
        put(&mut m, DATA, b"0123456789abcdefWXYZ");
        offer(&mut m, &l, &[5]);
        let chain = q.pop(&mut m).unwrap().unwrap();
        assert_eq!(chain.head, 5);
        assert_eq!(chain.buffers.len(), 3);
        assert_eq!((chain.readable_bytes(), chain.writable_bytes()), (20, 32));
        let mut out = [0u8; 18];
        assert_eq!(chain.read_into(&m, &mut out), Ok(18));
        assert_eq!(&out, b"0123456789abcdefWX");
        assert_eq!(chain.write_from(&mut m, b"reply"), Ok(5));
        assert_eq!(&m.bytes()[0x8040..0x8045], b"reply");
        assert_eq!(q.pop(&mut m), Ok(None));
        assert_eq!(q.in_flight(), 1);
        q.push_used(&mut m, chain.head, 5).unwrap();
        assert_eq!(read_u16(&m, Gpa::new(l.used.raw() + 2)), Ok(1));
        assert_eq!(read_u32(&m, Gpa::new(l.used.raw() + 4)), Ok(5));
        assert_eq!(read_u32(&m, Gpa::new(l.used.raw() + 8)), Ok(5));
        assert_eq!(q.push_used(&mut m, 5, 0), Err(QueueError::NothingInFlight));
    }

    #[test]
    fn ring_indices_wrap() {
        let mut m = mem();
        let l = layout(4);
        let mut q = queue(&m, 4, QueueFeatures::default());
        desc(&mut m, BASE, 0, DATA, 1, 0, 0);
        for round in 0..70_000u32 {
            offer(&mut m, &l, &[0]);
            let c = q.pop(&mut m).unwrap().unwrap();
            q.push_used(&mut m, c.head, round).unwrap();
        }
        assert_eq!(q.next_avail(), (70_000u32 % 65_536) as u16);
        assert_eq!(q.next_used(), q.next_avail());
    }

    #[test]
    fn loops_and_bad_links_are_errors() {
        let mut m = mem();
        let l = layout(8);
        let mut q = queue(&m, 8, QueueFeatures::default());
        desc(&mut m, BASE, 0, DATA, 1, VIRTQ_DESC_F_NEXT, 1);
        desc(&mut m, BASE, 1, DATA, 1, VIRTQ_DESC_F_NEXT, 0);
        desc(&mut m, BASE, 3, DATA, 1, VIRTQ_DESC_F_NEXT, 3);
        desc(&mut m, BASE, 4, DATA, 1, VIRTQ_DESC_F_NEXT, 8);
        offer(&mut m, &l, &[0, 3, 4, 9]);
        assert_eq!(q.pop(&mut m), Err(QueueError::ChainLoop { head: 0 }));
        assert_eq!(q.pop(&mut m), Err(QueueError::ChainLoop { head: 3 }));
        assert_eq!(
            q.pop(&mut m),
            Err(QueueError::NextOutOfRange { head: 4, next: 8 })
        );
        let err = q.pop(&mut m).unwrap_err();
        assert_eq!(err, QueueError::HeadOutOfRange { index: 9 });
        assert_eq!(err.head(), None);
        // Three chains with a valid head are outstanding and can be returned.
        assert_eq!(q.in_flight(), 3);
        assert_eq!(q.pop(&mut m), Ok(None));
    }

    #[test]
    fn avail_index_jump_is_an_error_and_consumes_nothing() {
        let mut m = mem();
        let l = layout(8);
        let mut q = queue(&m, 8, QueueFeatures::default());
        put(&mut m, l.avail.raw() + 2, &9u16.to_le_bytes());
        let err = QueueError::AvailIndexJump {
            avail_idx: 9,
            next_avail: 0,
        };
        assert_eq!(q.pop(&mut m), Err(err));
        assert_eq!(q.pop(&mut m), Err(err));
        assert_eq!(q.next_avail(), 0);
    }

    #[test]
    fn buffers_outside_ram_are_errors() {
        let mut m = mem();
        let l = layout(8);
        let mut q = queue(&m, 8, QueueFeatures::default());
        desc(&mut m, BASE, 0, BASE - 1, 2, 0, 0);
        desc(&mut m, BASE, 1, BASE + RAM as u64 - 4, 5, 0, 0);
        desc(&mut m, BASE, 2, u64::MAX - 2, 16, 0, 0);
        desc(&mut m, BASE, 3, BASE + RAM as u64, 0, 0, 0);
        offer(&mut m, &l, &[0, 1, 2, 3]);
        for head in 0..3 {
            let err = q.pop(&mut m).unwrap_err();
            assert!(matches!(err, QueueError::BufferOutsideMemory { head: h, .. } if h == head));
            assert_eq!(err.head(), Some(head));
        }
        // An empty buffer right at the end of RAM is still inside it.
        assert_eq!(q.pop(&mut m).unwrap().unwrap().buffers[0].len, 0);
    }

    #[test]
    fn readable_after_writable_is_an_error() {
        let mut m = mem();
        let l = layout(8);
        let mut q = queue(&m, 8, QueueFeatures::default());
        desc(
            &mut m,
            BASE,
            0,
            DATA,
            8,
            VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
            1,
        );
        desc(&mut m, BASE, 1, DATA, 8, 0, 0);
        offer(&mut m, &l, &[0]);
        assert_eq!(
            q.pop(&mut m),
            Err(QueueError::ReadableAfterWritable { head: 0 })
        );
    }

    #[test]
    fn chain_limits_are_enforced() {
        let mut m = mem();
        let l = layout(8);
        let limits = ChainLimits {
            max_descs: 2,
            max_bytes: 100,
        };
        let mut q = queue(&m, 8, QueueFeatures::default()).with_limits(limits);
        desc(&mut m, BASE, 0, DATA, 1, VIRTQ_DESC_F_NEXT, 1);
        desc(&mut m, BASE, 1, DATA, 1, VIRTQ_DESC_F_NEXT, 2);
        desc(&mut m, BASE, 2, DATA, 1, 0, 0);
        desc(&mut m, BASE, 3, DATA, 60, VIRTQ_DESC_F_NEXT, 4);
        desc(&mut m, BASE, 4, DATA, 41, 0, 0);
        desc(&mut m, BASE, 5, DATA, 60, VIRTQ_DESC_F_NEXT, 6);
        desc(&mut m, BASE, 6, DATA, 40, 0, 0);
        offer(&mut m, &l, &[0, 3, 5]);
        assert_eq!(
            q.pop(&mut m),
            Err(QueueError::ChainTooLong { head: 0, limit: 2 })
        );
        assert_eq!(
            q.pop(&mut m),
            Err(QueueError::ChainTooLarge {
                head: 3,
                limit: 100
            })
        );
        assert_eq!(q.pop(&mut m).unwrap().unwrap().readable_bytes(), 100);
    }

    #[test]
    fn indirect_tables() {
        let mut m = mem();
        let l = layout(8);
        let table = DATA + 0x1000;
        desc(&mut m, table, 0, DATA, 8, VIRTQ_DESC_F_NEXT, 2);
        desc(&mut m, table, 2, DATA + 8, 8, VIRTQ_DESC_F_WRITE, 0);
        desc(&mut m, BASE, 0, table, 48, VIRTQ_DESC_F_INDIRECT, 0);

        let mut plain = queue(&m, 8, QueueFeatures::default());
        offer(&mut m, &l, &[0]);
        assert_eq!(
            plain.pop(&mut m),
            Err(QueueError::IndirectNotNegotiated { head: 0 })
        );

        let mut q = queue(&m, 8, INDIRECT);
        let chain = q.pop(&mut m).unwrap().unwrap();
        assert_eq!(
            chain.buffers,
            vec![
                Buffer {
                    gpa: Gpa::new(DATA),
                    len: 8,
                    writable: false
                },
                Buffer {
                    gpa: Gpa::new(DATA + 8),
                    len: 8,
                    writable: true
                },
            ]
        );

        // A direct descriptor may lead to the indirect one.
        desc(&mut m, BASE, 1, DATA, 4, VIRTQ_DESC_F_NEXT, 0);
        offer(&mut m, &l, &[1]);
        assert_eq!(q.pop(&mut m).unwrap().unwrap().buffers.len(), 3);

        let bad = [
            (
                table,
                48,
                VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT,
                QueueError::IndirectWithNext { head: 3 },
            ),
            (
                table,
                20,
                VIRTQ_DESC_F_INDIRECT,
                QueueError::BadIndirectLength { head: 3, len: 20 },
            ),
            (
                table,
                0,
                VIRTQ_DESC_F_INDIRECT,
                QueueError::BadIndirectLength { head: 3, len: 0 },
            ),
            (
                BASE + RAM as u64 - 16,
                32,
                VIRTQ_DESC_F_INDIRECT,
                QueueError::BufferOutsideMemory {
                    head: 3,
                    gpa: Gpa::new(BASE + RAM as u64 - 16),
                    len: 32,
                },
            ),
        ];
        for (addr, len, flags, expect) in bad {
            desc(&mut m, BASE, 3, addr, len, flags, 0);
            offer(&mut m, &l, &[3]);
            assert_eq!(q.pop(&mut m), Err(expect));
        }

        // Nested indirect and a loop inside the indirect table.
        let nested = DATA + 0x2000;
        desc(&mut m, nested, 0, table, 16, VIRTQ_DESC_F_INDIRECT, 0);
        desc(&mut m, BASE, 3, nested, 16, VIRTQ_DESC_F_INDIRECT, 0);
        offer(&mut m, &l, &[3]);
        assert_eq!(q.pop(&mut m), Err(QueueError::NestedIndirect { head: 3 }));
        desc(&mut m, nested, 0, DATA, 1, VIRTQ_DESC_F_NEXT, 1);
        desc(&mut m, nested, 1, DATA, 1, VIRTQ_DESC_F_NEXT, 0);
        desc(&mut m, BASE, 3, nested, 32, VIRTQ_DESC_F_INDIRECT, 0);
        offer(&mut m, &l, &[3]);
        assert_eq!(q.pop(&mut m), Err(QueueError::ChainLoop { head: 3 }));
    }

    #[test]
    fn interrupt_suppression_by_flag() {
        let mut m = mem();
        let l = layout(8);
        let mut q = queue(&m, 8, QueueFeatures::default());
        desc(&mut m, BASE, 0, DATA, 1, 0, 0);
        offer(&mut m, &l, &[0, 0]);
        let c = q.pop(&mut m).unwrap().unwrap();
        q.push_used(&mut m, c.head, 0).unwrap();
        assert_eq!(q.needs_notification(&m), Ok(true));
        assert_eq!(q.needs_notification(&m), Ok(false), "nothing new since");
        put(
            &mut m,
            l.avail.raw(),
            &VIRTQ_AVAIL_F_NO_INTERRUPT.to_le_bytes(),
        );
        let c = q.pop(&mut m).unwrap().unwrap();
        q.push_used(&mut m, c.head, 0).unwrap();
        assert_eq!(q.needs_notification(&m), Ok(false));
    }

    #[test]
    fn event_index_suppression_and_avail_event() {
        let mut m = mem();
        let l = layout(8);
        let features = QueueFeatures {
            indirect: false,
            event_idx: true,
        };
        let mut q = queue(&m, 8, features);
        let used_event_at = l.avail.raw() + 4 + 2 * 8;
        let avail_event_at = l.used.raw() + 4 + 8 * 8;
        desc(&mut m, BASE, 0, DATA, 1, 0, 0);
        offer(&mut m, &l, &[0, 0, 0]);
        for _ in 0..3 {
            let c = q.pop(&mut m).unwrap().unwrap();
            q.push_used(&mut m, c.head, 0).unwrap();
        }
        // The empty pop asked the driver to notify at entry 3.
        assert_eq!(q.pop(&mut m), Ok(None));
        assert_eq!(read_u16(&m, Gpa::new(avail_event_at)), Ok(3));
        assert_eq!(
            q.needs_notification(&m),
            Ok(true),
            "first decision always notifies"
        );
        // The driver wants an interrupt once used.idx passes 4 (used_event = 4).
        put(&mut m, used_event_at, &4u16.to_le_bytes());
        offer(&mut m, &l, &[0, 0]);
        let c = q.pop(&mut m).unwrap().unwrap();
        q.push_used(&mut m, c.head, 0).unwrap(); // used.idx = 4
        assert_eq!(q.needs_notification(&m), Ok(false));
        let c = q.pop(&mut m).unwrap().unwrap();
        q.push_used(&mut m, c.head, 0).unwrap(); // used.idx = 5 crosses used_event + 1
        assert_eq!(q.needs_notification(&m), Ok(true));
    }

    #[test]
    fn push_used_rejects_device_bugs() {
        let mut m = mem();
        let mut q = queue(&m, 8, QueueFeatures::default());
        assert_eq!(
            q.push_used(&mut m, 8, 0),
            Err(QueueError::UsedHeadOutOfRange { head: 8 })
        );
        assert_eq!(q.push_used(&mut m, 0, 0), Err(QueueError::NothingInFlight));
    }

    #[test]
    fn vec_memory_bounds() {
        let mut m = VecMemory::new(Gpa::new(0x1000), 0x10);
        assert!(m.write(Gpa::new(0x100f), &[1]).is_ok());
        assert_eq!(
            m.write(Gpa::new(0x100f), &[1, 2]),
            Err(MemError::OutOfRange {
                gpa: Gpa::new(0x100f),
                len: 2
            })
        );
        assert!(m.check_range(Gpa::new(0x0fff), 1).is_err());
        assert!(m.check_range(Gpa::new(u64::MAX), 2).is_err());
        assert!(m.check_range(Gpa::new(0x1010), 0).is_ok());
        assert_eq!(read_u64(&m, Gpa::new(0x1008)), Ok(0x0100_0000_0000_0000));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Arbitrary bytes in every queue area (and arbitrary limits and features): pop
        /// never panics, and whatever it returns as a chain obeys every rule.
        #[test]
        fn hostile_rings_never_panic(
            size_log2 in 0u32..6,
            descs in proptest::collection::vec(
                (prop_oneof![3 => Just(DATA), 1 => Just(BASE - 8), 1 => any::<u64>(),
                             3 => BASE..BASE + RAM as u64],
                 prop_oneof![4 => 0u32..64, 1 => any::<u32>()],
                 prop_oneof![3 => 0u16..4, 1 => 0u16..8],
                 any::<u16>()),
                32),
            ring in proptest::collection::vec(prop_oneof![4 => 0u16..32, 1 => any::<u16>()], 32),
            avail_idx in prop_oneof![4 => 0u16..=32, 1 => any::<u16>()],
            features in (any::<bool>(), any::<bool>()),
            max_descs in 1u32..40,
        ) {
            let size = 1u16 << size_log2;
            let mut m = mem();
            let l = layout(size);
            for (i, (addr, len, flags, next)) in descs.iter().enumerate() {
                // Some descriptors point at the table itself, as indirect tables.
                let addr = if *flags & VIRTQ_DESC_F_INDIRECT != 0 && i % 2 == 0 { BASE } else { *addr };
                desc(&mut m, BASE, i as u16, addr, *len, *flags, *next % 40);
            }
            for (i, h) in ring.iter().enumerate() {
                put(&mut m, l.avail.raw() + 4 + 2 * i as u64, &(h % 40).to_le_bytes());
            }
            put(&mut m, l.avail.raw() + 2, &avail_idx.to_le_bytes());
            let features = QueueFeatures { indirect: features.0, event_idx: features.1 };
            let limits = ChainLimits { max_descs, max_bytes: 4096 };
            let mut q = queue(&m, size, features).with_limits(limits);
            for _ in 0..2 * u32::from(size) + 2 {
                match q.pop(&mut m) {
                    Ok(None) => break,
                    Ok(Some(chain)) => {
                        prop_assert!(chain.head < size);
                        prop_assert!(!chain.buffers.is_empty());
                        prop_assert!(chain.buffers.len() as u32 <= max_descs);
                        prop_assert!(chain.readable_bytes() + chain.writable_bytes() <= 4096);
                        let first_writable = chain.buffers.iter().position(|b| b.writable);
                        if let Some(w) = first_writable {
                            prop_assert!(chain.buffers[w..].iter().all(|b| b.writable));
                        }
                        for b in &chain.buffers {
                            prop_assert!(m.check_range(b.gpa, u64::from(b.len)).is_ok());
                        }
                        q.push_used(&mut m, chain.head, 0).unwrap();
                    }
                    Err(e) => {
                        // Every error has a message; ring-level ones stop the queue.
                        let text = alloc::format!("{e}");
                        prop_assert!(!text.is_empty());
                        if let Some(head) = e.head() {
                            prop_assert!(head < size);
                            q.push_used(&mut m, head, 0).unwrap();
                        } else if matches!(e, QueueError::AvailIndexJump { .. } | QueueError::Ring(_)) {
                            break;
                        }
                    }
                }
                let _ = q.needs_notification(&m).unwrap();
            }
        }

        /// Well-formed chains written by a model driver come back exactly as written.
        #[test]
        fn valid_chains_round_trip(
            chains in proptest::collection::vec(
                proptest::collection::vec((0u32..256, any::<bool>()), 1..4), 1..16),
        ) {
            let size = 16u16;
            let mut m = mem();
            let l = layout(size);
            let mut q = queue(&m, size, QueueFeatures::default());
            let mut next_free = 0u16;
            let mut expected = Vec::new();
            for (n, chain) in chains.iter().enumerate() {
                let mut sorted = chain.clone();
                sorted.sort_by_key(|(_, w)| *w); // readable first
                if usize::from(next_free) + sorted.len() > usize::from(size) {
                    break;
                }
                let head = next_free;
                let mut buffers = Vec::new();
                for (i, (len, writable)) in sorted.iter().enumerate() {
                    let idx = next_free;
                    next_free += 1;
                    let last = i + 1 == sorted.len();
                    let addr = DATA + 0x100 * u64::from(idx);
                    let flags = if *writable { VIRTQ_DESC_F_WRITE } else { 0 }
                        | if last { 0 } else { VIRTQ_DESC_F_NEXT };
                    desc(&mut m, BASE, idx, addr, *len, flags, next_free);
                    buffers.push(Buffer { gpa: Gpa::new(addr), len: *len, writable: *writable });
                }
                offer(&mut m, &l, &[head]);
                expected.push(DescChain { head, buffers });
                let _ = n;
            }
            for want in expected {
                let got = q.pop(&mut m).unwrap().unwrap();
                prop_assert_eq!(&got, &want);
                q.push_used(&mut m, got.head, 0).unwrap();
            }
            prop_assert_eq!(q.pop(&mut m), Ok(None));
        }
    }
}
