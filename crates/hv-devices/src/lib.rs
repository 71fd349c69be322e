//! Portable emulated devices of mipsvisor, and the VM layout as configuration data.
//!
//! Everything here is plain `no_std` Rust with no register access, tested on the host and
//! linked unchanged into the firmware. The firmware turns a trapped guest load or store
//! (hv-emul's `MmioReq`) into [`bus::MmioBus::access`], and supplies the effects the devices
//! need through small traits: [`irq::IrqLine`] for interrupt lines,
//! [`uart16550::UartSink`] for console output, [`virtqueue::GuestMemory`] for guest RAM.
//!
//! Device models (register maps in `docs/devices.md`):
//! - [`uart16550`]: a 16550A console per VM;
//! - [`virtio_mmio`]: the virtio 1.x MMIO transport (version 2 registers) over
//!   [`virtqueue`]'s split queues;
//! - [`virtio_balloon`]: the balloon backend for that transport, with the memory policy left
//!   to the firmware ([`virtio_balloon::BalloonHooks`]).
//!
//! [`vmconfig`] parses and validates the VM layout from a flattened device tree.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod bus;
pub mod irq;
pub mod uart16550;
pub mod virtio_balloon;
pub mod virtio_mmio;
pub mod virtqueue;
pub mod vmconfig;

pub use hv_emul::decode::Width;
