//! Polled driver for a 16550-compatible UART.
//!
//! Register offsets are in units of `stride` bytes (1 on Malta's PIIX4 SuperIO). Only what
//! the consoles need: 8N1 set-up, polled transmit (LSR.THRE before each byte) and
//! non-blocking receive (LSR.DR, then the receive buffer) for the operator console.

use core::ptr::NonNull;
use volatile::VolatilePtr;

/// Transmit holding register (write) / receive buffer (read), DLAB = 0.
const THR: usize = 0;
/// Interrupt enable register, DLAB = 0; divisor latch high byte with DLAB = 1.
const IER: usize = 1;
/// FIFO control register (write) / interrupt identification register (read).
const FCR: usize = 2;
/// FCR bit: FIFOs enabled.
const FCR_ENABLE: u8 = 1 << 0;
/// FCR bit: clear the transmit FIFO.
const FCR_CLEAR_TX: u8 = 1 << 2;
/// IIR bits 7:6: both set while the FIFOs are enabled.
const IIR_FIFOS_ON: u8 = 0xc0;
/// Line control register.
const LCR: usize = 3;
/// Modem control register.
const MCR: usize = 4;
/// Line status register.
const LSR: usize = 5;
/// LSR bit: data ready (the receive buffer or FIFO holds a byte).
const LSR_DR: u8 = 1 << 0;
/// LSR bit: transmit holding register empty.
const LSR_THRE: u8 = 1 << 5;
/// LCR bit: divisor latch access.
const LCR_DLAB: u8 = 1 << 7;
/// LCR value for 8 data bits, no parity, 1 stop bit.
const LCR_8N1: u8 = 0x03;

/// One 16550 register block.
#[derive(Debug)]
pub struct Uart16550 {
    base: NonNull<u8>,
    stride: usize,
}

// SAFETY: the driver only does single-byte volatile MMIO accesses; callers serialise whole
// lines with the console lock, and interleaved bytes from two CPUs are harmless.
unsafe impl Send for Uart16550 {}
// SAFETY: as for Send.
unsafe impl Sync for Uart16550 {}

impl Uart16550 {
    /// Creates the driver for the register block at `base`.
    ///
    /// # Safety
    /// `base` must be the uncached virtual address of a 16550 register block whose
    /// registers are `stride` bytes apart, mapped for the life of the program, and not
    /// driven by anyone else in a conflicting way.
    pub unsafe fn new(base: u64, stride: usize) -> Self {
        let base = NonNull::new(base as *mut u8).expect("UART base must not be null");
        Self { base, stride }
    }

    fn register(&self, index: usize) -> VolatilePtr<'_, u8> {
        // SAFETY: `new`'s contract makes base + index * stride a valid device register for
        // every index below 8, which is all this driver uses.
        unsafe { VolatilePtr::new(self.base.add(index * self.stride)) }
    }

    /// Programs 8N1 at divisor 1 (115200 baud with the usual 1.8432 MHz clock), masks the
    /// UART's interrupts, and leaves the FIFOs on or off as it finds them.
    ///
    /// Why not switch the FIFOs on: a 16550 flushes its receiver when the FIFO-enable bit
    /// changes, and input may already be waiting (QEMU hands piped stdin to the UART from
    /// the first instant), so that would drop a byte of the operator's input. Polled
    /// transmit does not need the FIFO; if a loader left it on, it stays on, unflushed.
    pub fn init(&self) {
        // Read as IIR: bits 7:6 are set while the FIFOs are enabled.
        let fifos_on = self.register(FCR).read() & IIR_FIFOS_ON == IIR_FIFOS_ON;
        self.register(IER).write(0);
        self.register(LCR).write(LCR_DLAB);
        self.register(THR).write(1);
        self.register(IER).write(0);
        self.register(LCR).write(LCR_8N1);
        if fifos_on {
            // Same enable bit, so nothing is flushed; bit 2 clears the transmit FIFO only.
            self.register(FCR).write(FCR_ENABLE | FCR_CLEAR_TX);
        }
        self.register(MCR).write(0x03);
    }

    /// Sends one byte, waiting until the transmitter can take it.
    pub fn write_byte(&self, byte: u8) {
        while self.register(LSR).read() & LSR_THRE == 0 {
            core::hint::spin_loop();
        }
        self.register(THR).write(byte);
    }

    /// Takes one received byte if there is one, without waiting.
    ///
    /// Reading the receive buffer pops it from the FIFO; a byte with a framing or parity
    /// error is returned like any other (the console's parser rejects what it cannot use).
    pub fn try_read_byte(&self) -> Option<u8> {
        if self.register(LSR).read() & LSR_DR == 0 {
            return None;
        }
        // THR's offset is the receive buffer register when read with DLAB = 0.
        Some(self.register(THR).read())
    }
}
