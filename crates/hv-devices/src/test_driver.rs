//! A scripted virtio-mmio driver for tests (this crate's, and other crates' through the
//! `test-driver` feature): brings a device up and posts buffers through split rings in a
//! [`VecMemory`].
//!
//! Queue `q` lives at `0x4000 * (q + 1)`: 16 descriptors, the available ring at +0x1000 and
//! the used ring at +0x2000.

use crate::bus::MmioDevice;
use crate::irq::IrqLine;
use crate::virtio_mmio::{regs, status, VirtioDevice, VirtioMmio, VIRTIO_F_VERSION_1};
use crate::virtqueue::{read_u16, GuestMemory, VecMemory};
use crate::Width;
use hv_core::addr::Gpa;

/// Entries of every queue the driver sets up.
pub const QUEUE_SIZE: u16 = 16;

/// Where queue `q` starts (its descriptor table).
pub fn queue_base(q: u16) -> u64 {
    0x4000 * (u64::from(q) + 1)
}

/// Writes the 32-bit register at `offset`; panics if the transport refuses the access.
pub fn write_reg<B: VirtioDevice, I: IrqLine>(
    d: &mut VirtioMmio<B, VecMemory, I>,
    offset: u64,
    value: u32,
) {
    d.write(offset, Width::Word, u64::from(value)).unwrap();
}

/// Runs the driver's side of initialisation: acknowledge, negotiate `features` (plus
/// VERSION_1), set up queues `0..queues`, then DRIVER_OK. Panics unless the device is live.
pub fn bring_up<B: VirtioDevice, I: IrqLine>(
    d: &mut VirtioMmio<B, VecMemory, I>,
    features: u64,
    queues: u16,
) {
    write_reg(d, regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    let all = features | VIRTIO_F_VERSION_1;
    write_reg(d, regs::DRIVER_FEATURES_SEL, 0);
    write_reg(d, regs::DRIVER_FEATURES, all as u32);
    write_reg(d, regs::DRIVER_FEATURES_SEL, 1);
    write_reg(d, regs::DRIVER_FEATURES, (all >> 32) as u32);
    write_reg(
        d,
        regs::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    for q in 0..queues {
        let base = queue_base(q);
        write_reg(d, regs::QUEUE_SEL, u32::from(q));
        write_reg(d, regs::QUEUE_NUM, u32::from(QUEUE_SIZE));
        write_reg(d, regs::QUEUE_DESC_LOW, base as u32);
        write_reg(d, regs::QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
        write_reg(d, regs::QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
        write_reg(d, regs::QUEUE_READY, 1);
    }
    let s = d.read(regs::STATUS, Width::Word).unwrap() as u32;
    write_reg(d, regs::STATUS, s | status::DRIVER_OK);
    assert!(d.is_active(), "{:?}", d.last_error());
}

/// Writes descriptor `i` of queue `q`.
pub fn desc<B: VirtioDevice, I: IrqLine>(
    d: &mut VirtioMmio<B, VecMemory, I>,
    q: u16,
    i: u16,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&addr.to_le_bytes());
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b[12..14].copy_from_slice(&flags.to_le_bytes());
    b[14..].copy_from_slice(&next.to_le_bytes());
    let at = Gpa::new(queue_base(q) + 16 * u64::from(i));
    d.memory_mut().write(at, &b).unwrap();
}

/// Makes chain `head` available on queue `q` and notifies the device.
pub fn kick<B: VirtioDevice, I: IrqLine>(d: &mut VirtioMmio<B, VecMemory, I>, q: u16, head: u16) {
    let avail = queue_base(q) + 0x1000;
    let idx = read_u16(d.memory(), Gpa::new(avail + 2)).unwrap();
    let slot = Gpa::new(avail + 4 + 2 * u64::from(idx % QUEUE_SIZE));
    d.memory_mut().write(slot, &head.to_le_bytes()).unwrap();
    let next = idx.wrapping_add(1).to_le_bytes();
    d.memory_mut().write(Gpa::new(avail + 2), &next).unwrap();
    write_reg(d, regs::QUEUE_NOTIFY, u32::from(q));
}
