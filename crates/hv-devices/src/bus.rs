//! The MMIO bus of one VM: non-overlapping guest-physical windows, each owned by a device.
//!
//! The firmware gets here when a guest load or store hits a guest physical address with no
//! memslot (hv-emul's `EmulOutcome::Mmio`). [`MmioBus::access`] finds the window, hands the
//! device the offset into it, and returns the loaded value for `complete_mmio`. An address
//! no device owns is [`BusError::Unmapped`]: the firmware then applies its policy (the guest
//! ABI stops the VM, since bus errors are never delivered to guests).
//!
//! Width and alignment rules belong to each device ([`AccessError`]); the bus only checks
//! that the whole access lies inside one window.

use alloc::vec::Vec;
use core::fmt;

use hv_core::addr::Gpa;
use hv_emul::emulate::{MmioKind, MmioReq};

use crate::Width;

/// Why a device refused an access. The access had no effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessError {
    /// The device does not accept this width at this offset.
    BadWidth {
        /// Offset into the device's window.
        offset: u64,
        /// The width used.
        width: Width,
    },
    /// The offset is not a multiple of the access width.
    Unaligned {
        /// Offset into the device's window.
        offset: u64,
        /// The width used.
        width: Width,
    },
    /// The access does not fit the device's register window.
    OutsideWindow {
        /// Offset into the device's window.
        offset: u64,
        /// The width used.
        width: Width,
    },
}

impl fmt::Display for AccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            AccessError::BadWidth { offset, width } => {
                write!(
                    f,
                    "{}-byte access not supported at offset {offset:#x}",
                    width.bytes()
                )
            }
            AccessError::Unaligned { offset, width } => {
                write!(
                    f,
                    "unaligned {}-byte access at offset {offset:#x}",
                    width.bytes()
                )
            }
            AccessError::OutsideWindow { offset, width } => write!(
                f,
                "{}-byte access at offset {offset:#x} is outside the device",
                width.bytes()
            ),
        }
    }
}

/// Checks that a `width` access at `offset` is naturally aligned and fits `size_bytes`.
pub fn check_aligned_within(offset: u64, width: Width, size_bytes: u64) -> Result<(), AccessError> {
    if !offset.is_multiple_of(width.bytes()) {
        return Err(AccessError::Unaligned { offset, width });
    }
    match offset.checked_add(width.bytes()) {
        Some(end) if end <= size_bytes => Ok(()),
        _ => Err(AccessError::OutsideWindow { offset, width }),
    }
}

/// A device reached through loads and stores to its register window.
///
/// `offset` is relative to the window's base; the bus guarantees `offset + width <= size`
/// of the window the device was inserted with. Stored values arrive already truncated to the
/// width; loaded values are returned in the low bits (the caller extends them).
pub trait MmioDevice {
    /// A load of `width` bytes at `offset`.
    fn read(&mut self, offset: u64, width: Width) -> Result<u64, AccessError>;
    /// A store of the low `width` bytes of `value` at `offset`.
    fn write(&mut self, offset: u64, width: Width, value: u64) -> Result<(), AccessError>;
}

impl<T: MmioDevice + ?Sized> MmioDevice for alloc::boxed::Box<T> {
    fn read(&mut self, offset: u64, width: Width) -> Result<u64, AccessError> {
        (**self).read(offset, width)
    }

    fn write(&mut self, offset: u64, width: Width, value: u64) -> Result<(), AccessError> {
        (**self).write(offset, width, value)
    }
}

/// A half-open, non-empty guest-physical byte range `[base, base + size_bytes)`.
///
/// Device windows are byte ranges, not page ranges: a 16550 occupies 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioWindow {
    base: Gpa,
    size_bytes: u64,
}

impl MmioWindow {
    /// A window of `size_bytes` at `base`; `None` if empty or if it would wrap the address
    /// space.
    pub fn new(base: Gpa, size_bytes: u64) -> Option<Self> {
        (size_bytes != 0 && base.raw().checked_add(size_bytes).is_some())
            .then_some(Self { base, size_bytes })
    }

    /// First byte of the window.
    pub fn base(&self) -> Gpa {
        self.base
    }

    /// Length in bytes (never zero).
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// One past the last byte. Cannot overflow: checked in [`MmioWindow::new`].
    pub fn end_raw(&self) -> u64 {
        self.base.raw() + self.size_bytes
    }

    /// Whether the windows share at least one byte.
    pub fn overlaps(&self, other: &MmioWindow) -> bool {
        self.base.raw() < other.end_raw() && other.base.raw() < self.end_raw()
    }

    /// Whether `gpa` lies inside the window.
    pub fn contains(&self, gpa: Gpa) -> bool {
        gpa.raw() >= self.base.raw() && gpa.raw() < self.end_raw()
    }
}

/// Why a bus access failed. The access had no effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusError {
    /// No device owns the address.
    Unmapped {
        /// The address accessed.
        gpa: Gpa,
    },
    /// The access starts inside a window but runs past its end.
    Straddles {
        /// The address accessed.
        gpa: Gpa,
        /// The width used.
        width: Width,
    },
    /// The device refused the access.
    Device {
        /// The address accessed.
        gpa: Gpa,
        /// The device's reason.
        error: AccessError,
    },
    /// A device window would overlap an existing one (from [`MmioBus::insert`]).
    Overlap {
        /// The window being inserted.
        new: MmioWindow,
        /// The window already on the bus.
        existing: MmioWindow,
    },
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BusError::Unmapped { gpa } => write!(f, "no device at GPA {:#x}", gpa.raw()),
            BusError::Straddles { gpa, width } => write!(
                f,
                "{}-byte access at GPA {:#x} runs past the end of a device",
                width.bytes(),
                gpa.raw()
            ),
            BusError::Device { gpa, error } => {
                write!(
                    f,
                    "device at GPA {:#x} refused the access: {error}",
                    gpa.raw()
                )
            }
            BusError::Overlap { new, existing } => write!(
                f,
                "device window {:#x}..{:#x} overlaps {:#x}..{:#x}",
                new.base.raw(),
                new.end_raw(),
                existing.base.raw(),
                existing.end_raw()
            ),
        }
    }
}

/// Index of a device on its bus, as returned by [`MmioBus::insert`]. Stable: devices are
/// never removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceIndex(pub usize);

/// Devices of one VM by guest-physical window.
///
/// `D` is whatever the firmware stores: an enum of its device types, or
/// `Box<dyn MmioDevice + Send>`.
#[derive(Debug)]
pub struct MmioBus<D> {
    devices: Vec<(MmioWindow, D)>,
    /// Indices into `devices`, sorted by window base, for lookup by binary search.
    by_base: Vec<usize>,
}

impl<D> Default for MmioBus<D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D> MmioBus<D> {
    /// An empty bus.
    pub const fn new() -> Self {
        Self {
            devices: Vec::new(),
            by_base: Vec::new(),
        }
    }

    /// Adds `device` at `window`; fails if the window overlaps one already on the bus.
    pub fn insert(&mut self, window: MmioWindow, device: D) -> Result<DeviceIndex, BusError> {
        let pos = self
            .by_base
            .partition_point(|&i| self.devices[i].0.base.raw() < window.base.raw());
        // Only the neighbours can overlap, since existing windows are disjoint and sorted.
        for neighbour in [pos.checked_sub(1), Some(pos)].into_iter().flatten() {
            if let Some(&i) = self.by_base.get(neighbour) {
                let existing = self.devices[i].0;
                if existing.overlaps(&window) {
                    return Err(BusError::Overlap {
                        new: window,
                        existing,
                    });
                }
            }
        }
        let index = self.devices.len();
        self.devices.push((window, device));
        self.by_base.insert(pos, index);
        Ok(DeviceIndex(index))
    }

    /// Number of devices on the bus.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether the bus has no devices.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The device at `index` and its window.
    pub fn get(&self, index: DeviceIndex) -> Option<(&MmioWindow, &D)> {
        self.devices.get(index.0).map(|(w, d)| (w, d))
    }

    /// The device at `index`, mutably (to inject input, poll queues, read counters).
    pub fn get_mut(&mut self, index: DeviceIndex) -> Option<&mut D> {
        self.devices.get_mut(index.0).map(|(_, d)| d)
    }

    /// The devices in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (DeviceIndex, &MmioWindow, &D)> {
        self.devices
            .iter()
            .enumerate()
            .map(|(i, (w, d))| (DeviceIndex(i), w, d))
    }

    /// The device whose window holds `gpa`, with the offset of `gpa` in it.
    pub fn find(&self, gpa: Gpa) -> Option<(DeviceIndex, u64)> {
        let pos = self
            .by_base
            .partition_point(|&i| self.devices[i].0.base.raw() <= gpa.raw());
        let index = *self.by_base.get(pos.checked_sub(1)?)?;
        let window = self.devices[index].0;
        window
            .contains(gpa)
            .then(|| (DeviceIndex(index), gpa.raw() - window.base.raw()))
    }

    /// Finds the device for a `width` access at `gpa`: index and offset.
    fn route(&self, gpa: Gpa, width: Width) -> Result<(usize, u64), BusError> {
        let (index, offset) = self.find(gpa).ok_or(BusError::Unmapped { gpa })?;
        let window = self.devices[index.0].0;
        // offset < size_bytes, so offset + width cannot overflow a u64 meaningfully.
        if offset + width.bytes() > window.size_bytes {
            return Err(BusError::Straddles { gpa, width });
        }
        Ok((index.0, offset))
    }
}

impl<D: MmioDevice> MmioBus<D> {
    /// A load of `width` bytes at `gpa`.
    pub fn read(&mut self, gpa: Gpa, width: Width) -> Result<u64, BusError> {
        let (index, offset) = self.route(gpa, width)?;
        self.devices[index]
            .1
            .read(offset, width)
            .map(|v| v & width.value_mask())
            .map_err(|error| BusError::Device { gpa, error })
    }

    /// A store of the low `width` bytes of `value` at `gpa`.
    pub fn write(&mut self, gpa: Gpa, width: Width, value: u64) -> Result<(), BusError> {
        let (index, offset) = self.route(gpa, width)?;
        self.devices[index]
            .1
            .write(offset, width, value & width.value_mask())
            .map_err(|error| BusError::Device { gpa, error })
    }

    /// Performs a trapped guest access: returns the loaded value (for
    /// `hv_emul::emulate::complete_mmio`), or 0 for a store.
    pub fn access(&mut self, req: &MmioReq) -> Result<u64, BusError> {
        match req.kind {
            MmioKind::Load { .. } => self.read(req.gpa, req.width),
            MmioKind::Store { value } => self.write(req.gpa, req.width, value).map(|()| 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use hv_core::addr::Gva;
    use hv_emul::regs::Gpr;
    use proptest::prelude::*;

    /// A device of plain memory that logs what it saw.
    #[derive(Debug, Default)]
    struct Scratch {
        bytes: Vec<u8>,
        log: Vec<(bool, u64, Width)>,
    }

    impl Scratch {
        fn sized(n: usize) -> Self {
            Self {
                bytes: vec![0; n],
                log: Vec::new(),
            }
        }
    }

    impl MmioDevice for Scratch {
        fn read(&mut self, offset: u64, width: Width) -> Result<u64, AccessError> {
            check_aligned_within(offset, width, self.bytes.len() as u64)?;
            self.log.push((false, offset, width));
            let start = offset as usize;
            let mut v = 0u64;
            for (i, b) in self.bytes[start..start + width.bytes() as usize]
                .iter()
                .enumerate()
            {
                v |= u64::from(*b) << (8 * i);
            }
            Ok(v)
        }

        fn write(&mut self, offset: u64, width: Width, value: u64) -> Result<(), AccessError> {
            check_aligned_within(offset, width, self.bytes.len() as u64)?;
            self.log.push((true, offset, width));
            let start = offset as usize;
            for i in 0..width.bytes() as usize {
                self.bytes[start + i] = (value >> (8 * i)) as u8;
            }
            Ok(())
        }
    }

    fn window(base: u64, size: u64) -> MmioWindow {
        MmioWindow::new(Gpa::new(base), size).unwrap()
    }

    #[test]
    fn window_rejects_empty_and_wrapping() {
        assert!(MmioWindow::new(Gpa::new(0x1000), 0).is_none());
        assert!(MmioWindow::new(Gpa::new(u64::MAX), 1).is_none());
        assert!(MmioWindow::new(Gpa::new(u64::MAX - 1), 1).is_some());
    }

    #[test]
    fn insert_rejects_overlap_on_either_side() {
        let mut bus = MmioBus::new();
        bus.insert(window(0x1000, 0x100), Scratch::sized(0x100))
            .unwrap();
        bus.insert(window(0x3000, 0x100), Scratch::sized(0x100))
            .unwrap();
        for (base, size) in [(0xf00, 0x101), (0x10ff, 1), (0x2f00, 0x101), (0x0, 0x10000)] {
            let err = bus
                .insert(window(base, size), Scratch::sized(1))
                .unwrap_err();
            assert!(
                matches!(err, BusError::Overlap { .. }),
                "{base:#x}+{size:#x}"
            );
        }
        // Touching is fine: windows are half-open.
        bus.insert(window(0x1100, 0x100), Scratch::sized(0x100))
            .unwrap();
        bus.insert(window(0xf00, 0x100), Scratch::sized(0x100))
            .unwrap();
        assert_eq!(bus.len(), 4);
    }

    #[test]
    fn unmapped_addresses_are_errors() {
        let mut bus = MmioBus::new();
        bus.insert(window(0x1000, 0x10), Scratch::sized(0x10))
            .unwrap();
        for gpa in [0x0, 0xfff, 0x1010, u64::MAX] {
            assert_eq!(
                bus.read(Gpa::new(gpa), Width::Byte),
                Err(BusError::Unmapped { gpa: Gpa::new(gpa) })
            );
        }
        let empty: &mut MmioBus<Scratch> = &mut MmioBus::new();
        assert!(matches!(
            empty.write(Gpa::new(0), Width::Word, 1),
            Err(BusError::Unmapped { .. })
        ));
    }

    #[test]
    fn routes_offsets_to_the_right_device() {
        let mut bus = MmioBus::new();
        let a = bus
            .insert(window(0x2000, 0x10), Scratch::sized(0x10))
            .unwrap();
        let b = bus
            .insert(window(0x1000, 0x10), Scratch::sized(0x10))
            .unwrap();
        bus.write(Gpa::new(0x1004), Width::Word, 0xdead_beef)
            .unwrap();
        bus.write(Gpa::new(0x2008), Width::Double, 0x0102_0304_0506_0708)
            .unwrap();
        assert_eq!(bus.get_mut(b).unwrap().log, vec![(true, 4, Width::Word)]);
        assert_eq!(bus.get_mut(a).unwrap().log, vec![(true, 8, Width::Double)]);
        assert_eq!(bus.read(Gpa::new(0x1004), Width::Half).unwrap(), 0xbeef);
        assert_eq!(
            bus.read(Gpa::new(0x200c), Width::Word).unwrap(),
            0x0102_0304
        );
        assert_eq!(bus.find(Gpa::new(0x100f)), Some((b, 0xf)));
    }

    #[test]
    fn straddling_and_device_errors_have_no_effect() {
        let mut bus = MmioBus::new();
        let d = bus
            .insert(window(0x1000, 0x10), Scratch::sized(0x10))
            .unwrap();
        assert_eq!(
            bus.write(Gpa::new(0x100c), Width::Double, 1),
            Err(BusError::Straddles {
                gpa: Gpa::new(0x100c),
                width: Width::Double
            })
        );
        assert_eq!(
            bus.read(Gpa::new(0x1002), Width::Word),
            Err(BusError::Device {
                gpa: Gpa::new(0x1002),
                error: AccessError::Unaligned {
                    offset: 2,
                    width: Width::Word
                }
            })
        );
        assert!(bus.get_mut(d).unwrap().log.is_empty());
    }

    #[test]
    fn access_performs_loads_and_stores_from_mmio_requests() {
        let mut bus = MmioBus::new();
        bus.insert(window(0x1f00_0000, 0x10), Scratch::sized(0x10))
            .unwrap();
        let store = MmioReq {
            gva: Gva::new(0x5f00_0000),
            gpa: Gpa::new(0x1f00_0000),
            width: Width::Word,
            kind: MmioKind::Store { value: 0x1234_5678 },
            next_pc: 0,
        };
        assert_eq!(bus.access(&store), Ok(0));
        let load = MmioReq {
            width: Width::Half,
            kind: MmioKind::Load {
                rt: Gpr::V0,
                signed: true,
            },
            ..store
        };
        assert_eq!(bus.access(&load), Ok(0x5678));
    }

    #[test]
    fn errors_display_addresses() {
        let text = alloc::format!(
            "{}",
            BusError::Unmapped {
                gpa: Gpa::new(0x1f00_0040)
            }
        );
        assert_eq!(text, "no device at GPA 0x1f000040");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Lookup agrees with a linear scan over whatever windows were accepted.
        #[test]
        fn find_matches_linear_scan(
            windows in proptest::collection::vec((0u64..0x1000, 1u64..0x80), 0..12),
            probes in proptest::collection::vec(0u64..0x1100, 0..40),
        ) {
            let mut bus = MmioBus::new();
            let mut accepted: Vec<(MmioWindow, DeviceIndex)> = Vec::new();
            for (base, size) in windows {
                let w = window(base, size);
                match bus.insert(w, ()) {
                    Ok(i) => accepted.push((w, i)),
                    Err(BusError::Overlap { .. }) => {
                        prop_assert!(accepted.iter().any(|(a, _)| a.overlaps(&w)));
                    }
                    Err(e) => prop_assert!(false, "unexpected {e:?}"),
                }
            }
            for p in probes {
                let expect = accepted
                    .iter()
                    .find(|(w, _)| w.contains(Gpa::new(p)))
                    .map(|(w, i)| (*i, p - w.base().raw()));
                prop_assert_eq!(bus.find(Gpa::new(p)), expect);
            }
        }
    }
}
