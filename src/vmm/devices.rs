//! A VM's emulated devices on its MMIO bus: a 16550 console per VM (output goes to the host
//! console as `[vmname] line`) and virtio-mmio transports, from the portable models in
//! hv-devices. Guest loads and stores that hit no memslot arrive here decoded by hv-emul.
//!
//! The virtio backend attached today is a minimal balloon (device ID 5): inflate requests
//! give the named guest pages back through the memory core (which flushes their derived
//! translations); deflate requests are acknowledged and the pages come back, zeroed, on
//! their next touch. Feature negotiation, statistics and the config-space target are the
//! memory-services work's to fill in.

use super::vm::GuestMemory;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use hv_core::addr::{Gpa, PAGE_SIZE};
use hv_core::memslot::BackingId;
use hv_devices::bus::{MmioBus, MmioDevice};
use hv_devices::uart16550::{LinePrefixer, LineWriter, Uart16550, UartSink};
use hv_devices::virtio_mmio::{VirtioDevice, VirtioMmio};
use hv_devices::virtqueue::{self, MemError, QueueError, SplitQueue};
use hv_devices::vmconfig::{DeviceKind, DeviceSpec, VirtioKind};

/// A device on a VM's bus.
pub type BusDevice = Box<dyn MmioDevice + Send>;

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

/// UART output: bytes into `[name] line` records.
#[derive(Debug)]
struct ConsoleSink(LinePrefixer<HostConsole>);

impl UartSink for ConsoleSink {
    fn write_byte(&mut self, byte: u8) {
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

    /// The backing page of `gpa`, if it is RAM.
    fn page_of(&self, gpa: Gpa) -> Option<u64> {
        let offset = gpa.raw().checked_sub(self.base)?;
        (offset < self.bytes).then_some(offset / PAGE_SIZE)
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

/// Queue size of the balloon's two queues.
const BALLOON_QUEUE_SIZE: u16 = 64;
/// Page frame numbers read from one inflate/deflate buffer at most.
const BALLOON_PFNS_PER_CHAIN: usize = 256;

/// The minimal balloon backend (see the module notes).
struct Balloon {
    ram: RamView,
    /// Config space: num_pages (what the host asks for) and actual (what the driver has).
    config: [u8; 8],
    inflated: u64,
}

impl VirtioDevice for Balloon {
    fn device_id(&self) -> u32 {
        5
    }

    fn device_features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[BALLOON_QUEUE_SIZE, BALLOON_QUEUE_SIZE]
    }

    fn config_len(&self) -> u64 {
        self.config.len() as u64
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let at = offset as usize;
        data.copy_from_slice(&self.config[at..at + data.len()]);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (bytes 4..8) is the driver's to write.
        let at = offset as usize;
        if at >= 4 {
            self.config[at..at + data.len()].copy_from_slice(data);
        }
    }

    fn activate(&mut self, _features: u64) {}

    fn reset(&mut self) {
        self.config[4..].fill(0);
    }

    fn process_queue(
        &mut self,
        queue: u16,
        vq: &mut SplitQueue,
        mem: &mut dyn virtqueue::GuestMemory,
    ) -> Result<(), QueueError> {
        while let Some(chain) = vq.pop(mem)? {
            let mut buf = [0u8; BALLOON_PFNS_PER_CHAIN * 4];
            let n = chain.read_into(mem, &mut buf).map_err(QueueError::Ring)?;
            if queue == 0 {
                for pfn in buf[..n - n % 4].chunks_exact(4) {
                    let pfn = u32::from_le_bytes([pfn[0], pfn[1], pfn[2], pfn[3]]);
                    let gpa = Gpa::new(u64::from(pfn) * PAGE_SIZE);
                    // Pages outside RAM are ignored, as a device would.
                    if let Some(page) = self.ram.page_of(gpa) {
                        if self
                            .ram
                            .memory
                            .balloon(self.ram.backing, page..page + 1)
                            .is_ok()
                        {
                            self.inflated += 1;
                        }
                    }
                }
            }
            vq.push_used(mem, chain.head, 0)?;
        }
        Ok(())
    }
}

/// Builds the devices of a VM from its configuration.
pub fn build_bus(
    name: &str,
    specs: &[DeviceSpec],
    ram: &RamView,
) -> Result<MmioBus<BusDevice>, String> {
    let mut bus: MmioBus<BusDevice> = MmioBus::new();
    for spec in specs {
        let device: BusDevice = match spec.kind {
            DeviceKind::Uart16550 { stride } => {
                let sink = ConsoleSink(LinePrefixer::new(name, CONSOLE_LINE_BYTES, HostConsole));
                Box::new(
                    Uart16550::new(stride, sink, ())
                        .map_err(|e| alloc::format!("VM {name}: UART: {e}"))?,
                )
            }
            DeviceKind::VirtioMmio(VirtioKind::Balloon) => {
                let backend = Balloon {
                    ram: ram.clone(),
                    config: [0; 8],
                    inflated: 0,
                };
                Box::new(
                    VirtioMmio::new(backend, ram.clone(), ())
                        .map_err(|e| alloc::format!("VM {name}: virtio-mmio: {e:?}"))?,
                )
            }
        };
        bus.insert(spec.window, device)
            .map_err(|e| alloc::format!("VM {name}: device window: {e:?}"))?;
    }
    Ok(bus)
}
