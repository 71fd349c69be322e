//! A VM's emulated devices on its MMIO bus: a 16550 console per VM (output goes to the host
//! console as `[vmname] line`) and virtio-mmio transports, from the portable models in
//! hv-devices. Guest loads and stores that hit no memslot arrive here decoded by hv-emul.
//!
//! The virtio device attached is the balloon (device ID 5, see `balloon.rs`): hv-devices'
//! full device model with hv-services' memory policy, shared with the host side so targets
//! can change at run time.

use super::liveness::VmProgress;
use super::vm::GuestMemory;
use crate::services::balloon::Balloon;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use hv_core::addr::{Gpa, PAGE_SIZE};
use hv_core::memslot::BackingId;
use hv_devices::bus::{MmioBus, MmioDevice};
use hv_devices::irq::IrqLine;
use hv_devices::uart16550::{LinePrefixer, LineWriter, Uart16550, UartSink};
use hv_devices::virtqueue::{self, MemError};
use hv_devices::vmconfig::{DeviceKind, DeviceSpec, VirtioKind};

/// A device on a VM's bus.
pub type BusDevice = Box<dyn MmioDevice + Send>;

/// A console's interrupt line: its level, for the vCPUs to sample before each entry (as
/// for the balloon's line). Shared by every UART of the VM (one Cause.IP line).
#[derive(Debug, Clone, Default)]
pub struct UartIrq {
    level: Arc<AtomicBool>,
}

impl UartIrq {
    /// Whether a UART wants attention now.
    pub fn asserted(&self) -> bool {
        self.level.load(Ordering::Acquire)
    }
}

impl IrqLine for UartIrq {
    fn set_level(&mut self, asserted: bool) {
        self.level.store(asserted, Ordering::Release);
    }
}

/// Longest console line before it is cut.
const CONSOLE_LINE_BYTES: usize = 160;

/// Prints finished console records on the host console.
#[derive(Debug)]
struct HostConsole;

impl LineWriter for HostConsole {
    fn write_line(&mut self, record: &str) {
        crate::println!("{record}");
    }
}

/// UART output: bytes into `[name] line` records; each byte is progress for the watchdog.
#[derive(Debug)]
struct ConsoleSink(LinePrefixer<HostConsole>, Arc<VmProgress>);

impl UartSink for ConsoleSink {
    fn write_byte(&mut self, byte: u8) {
        self.1.made(crate::arch::guest::host_count());
        self.0.push_byte(byte);
    }
}

/// Guest RAM as the virtio queues see it: the RAM memslot, through the memory core's host
/// layer (so pages are resolved, swapped in or copied exactly as for the guest).
#[derive(Clone)]
pub struct RamView {
    memory: Arc<GuestMemory>,
    backing: BackingId,
    base: u64,
    bytes: u64,
}

impl core::fmt::Debug for RamView {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RamView")
            .field("base", &self.base)
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl RamView {
    /// The RAM slot `[base, base + bytes)` backed by `backing` page 0 onwards.
    pub fn new(memory: Arc<GuestMemory>, backing: BackingId, base: Gpa, bytes: u64) -> Self {
        Self {
            memory,
            backing,
            base: base.raw(),
            bytes,
        }
    }

    /// The VM's memory.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.memory
    }

    /// Splits `[gpa, gpa + len)` into per-page pieces: (backing page, offset, length).
    fn pieces(&self, gpa: Gpa, len: u64) -> Result<Vec<(u64, usize, usize)>, MemError> {
        let out_of_range = MemError::OutOfRange { gpa, len };
        let start = gpa.raw().checked_sub(self.base).ok_or(out_of_range)?;
        let end = start.checked_add(len).ok_or(out_of_range)?;
        if end > self.bytes {
            return Err(out_of_range);
        }
        let mut pieces = Vec::new();
        let mut at = start;
        while at < end {
            let take = (PAGE_SIZE - at % PAGE_SIZE).min(end - at);
            pieces.push((at / PAGE_SIZE, (at % PAGE_SIZE) as usize, take as usize));
            at += take;
        }
        Ok(pieces)
    }
}

impl virtqueue::GuestMemory for RamView {
    fn read(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), MemError> {
        let mut done = 0;
        for (page, offset, len) in self.pieces(gpa, buf.len() as u64)? {
            self.memory
                .host()
                .read(self.backing, page, offset, &mut buf[done..done + len])
                .map_err(|_| MemError::OutOfRange {
                    gpa,
                    len: buf.len() as u64,
                })?;
            done += len;
        }
        Ok(())
    }

    fn write(&mut self, gpa: Gpa, data: &[u8]) -> Result<(), MemError> {
        let pieces = self.pieces(gpa, data.len() as u64)?;
        let mut done = 0;
        for (page, offset, len) in pieces {
            self.memory
                .host_write(self.backing, page, offset, &data[done..done + len])
                .map_err(|_| MemError::OutOfRange {
                    gpa,
                    len: data.len() as u64,
                })?;
            done += len;
        }
        Ok(())
    }

    fn check_range(&self, gpa: Gpa, len: u64) -> Result<(), MemError> {
        self.pieces(gpa, len).map(|_| ())
    }

    fn barrier(&self) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }
}

/// A VM's bus and the balloons on it.
pub struct Devices {
    /// The bus.
    pub bus: MmioBus<BusDevice>,
    /// The balloons (also reachable by VM name through `balloon::find`).
    pub balloons: Vec<Arc<Balloon>>,
    /// The consoles' interrupt line.
    pub uart_irq: UartIrq,
}

/// Builds the devices of a VM from its configuration; `balloon_target_mib` is the initial
/// target of its balloons.
pub fn build_bus(
    name: &str,
    specs: &[DeviceSpec],
    ram: &RamView,
    balloon_target_mib: Option<u32>,
    progress: &Arc<VmProgress>,
) -> Result<Devices, String> {
    let mut bus: MmioBus<BusDevice> = MmioBus::new();
    let mut balloons = Vec::new();
    let uart_irq = UartIrq::default();
    for spec in specs {
        let device: BusDevice = match spec.kind {
            DeviceKind::Uart16550 { stride } => {
                let sink = ConsoleSink(
                    LinePrefixer::new(name, CONSOLE_LINE_BYTES, HostConsole),
                    progress.clone(),
                );
                Box::new(
                    Uart16550::new(stride, sink, uart_irq.clone())
                        .map_err(|e| alloc::format!("VM {name}: UART: {e}"))?,
                )
            }
            DeviceKind::VirtioMmio(VirtioKind::Balloon) => {
                let balloon = Balloon::create(name, ram, ram.bytes, balloon_target_mib)
                    .map_err(|e| alloc::format!("VM {name}: {e}"))?;
                let device = Box::new(balloon.bus_device());
                balloons.push(balloon);
                device
            }
        };
        bus.insert(spec.window, device)
            .map_err(|e| alloc::format!("VM {name}: device window: {e:?}"))?;
    }
    Ok(Devices {
        bus,
        balloons,
        uart_irq,
    })
}
