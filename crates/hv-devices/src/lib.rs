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
//! [`vmconfig`] parses and validates the VM layout from a flattened device tree;
//! [`fdt_writer`] writes flattened device trees and [`guest_dt`] uses it to describe a VM to
//! its guest kernel (memory, CPU, interrupt controller, devices) for the UHI boot protocol.
//! [`bundle`] reads a layout and its guest images packed as one FIT image.
//! [`console_log`] keeps a VM's hypercall console transcript (display pieces, recorded
//! lines, the isolation tally).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod bundle;
pub mod bus;
pub mod console_log;
pub mod fdt_writer;
pub mod guest_dt;
pub mod irq;
#[cfg(any(test, feature = "test-driver"))]
pub mod test_driver;
pub mod uart16550;
pub mod virtio_balloon;
pub mod virtio_mmio;
pub mod virtqueue;
pub mod vmconfig;

pub use hv_emul::decode::Width;

#[cfg(test)]
mod tests {
    use crate::irq::LatchedLine;
    use crate::uart16550::{LinePrefixer, Uart16550};
    use crate::virtio_mmio::{VirtioDevice, VirtioMmio};
    use crate::virtqueue::VecMemory;
    use alloc::string::String;
    use alloc::vec::Vec;

    /// The firmware keeps each VM's bus behind a lock shared by its vCPUs' host CPUs, so the
    /// device types must be `Send` whenever what the firmware plugs into them is.
    #[test]
    fn devices_are_send_when_their_parts_are() {
        fn send<T: Send>() {}
        send::<Uart16550<LinePrefixer<Vec<String>>, LatchedLine>>();
        send::<crate::bus::MmioBus<alloc::boxed::Box<dyn crate::bus::MmioDevice + Send>>>();
        fn send_transport<B: VirtioDevice + Send>() {
            send::<VirtioMmio<B, VecMemory, LatchedLine>>();
        }
        struct Hooks;
        impl crate::virtio_balloon::BalloonHooks for Hooks {
            fn inflate(
                &mut self,
                _: hv_core::addr::Gfn,
            ) -> Result<(), crate::virtio_balloon::PageRefused> {
                Ok(())
            }
            fn deflate(
                &mut self,
                _: hv_core::addr::Gfn,
            ) -> Result<(), crate::virtio_balloon::PageRefused> {
                Ok(())
            }
            fn report_free(
                &mut self,
                _: hv_core::addr::Gpa,
                _: u32,
            ) -> Result<(), crate::virtio_balloon::PageRefused> {
                Ok(())
            }
            fn stats(&mut self, _: &[(u16, u64)]) {}
        }
        send_transport::<crate::virtio_balloon::VirtioBalloon<Hooks>>();
    }
}
