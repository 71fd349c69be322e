//! An emulated 16550A UART: one guest console per VM.
//!
//! Eight byte-wide registers at a configurable stride (1 on the Malta SuperIO, 4 for
//! `reg-shift = <2>` layouts). Transmission is instant: a byte written to THR goes straight to
//! the [`UartSink`] and THR reads as empty again, so the THR-empty interrupt re-arms after every
//! write. Received bytes come from [`Uart16550::push_input`] into a 16-byte FIFO (1 byte with
//! the FIFO disabled). The baud-rate divisor, line control and scratch registers are stored
//! and read back but change nothing. Loopback (MCR bit 4) routes THR to the receiver and the
//! modem outputs to the modem inputs, which is what Linux's 8250 probe checks.
//!
//! Register semantics follow the PC16550D data sheet (National Semiconductor, 1995), table
//! "Register Addresses" and section 8 (register descriptions).
//!
//! [`LinePrefixer`] is the console side: it turns the byte stream into `[vmname] line`
//! records with control characters made visible, so a guest cannot forge another VM's
//! prefix or send terminal escape sequences to the operator console.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

use crate::bus::{AccessError, MmioDevice};
use crate::irq::IrqLine;
use crate::Width;

/// Register indices (offset / stride), PC16550D table 2.
pub mod reg {
    /// Receiver buffer (read), transmitter holding (write); divisor latch low with DLAB.
    pub const RBR_THR_DLL: u64 = 0;
    /// Interrupt enable; divisor latch high with DLAB.
    pub const IER_DLM: u64 = 1;
    /// Interrupt identification (read), FIFO control (write).
    pub const IIR_FCR: u64 = 2;
    /// Line control.
    pub const LCR: u64 = 3;
    /// Modem control.
    pub const MCR: u64 = 4;
    /// Line status (read-only).
    pub const LSR: u64 = 5;
    /// Modem status (read-only).
    pub const MSR: u64 = 6;
    /// Scratch.
    pub const SCR: u64 = 7;
    /// Number of registers.
    pub const COUNT: u64 = 8;
}

/// IER: received data available.
pub const IER_RDA: u8 = 1 << 0;
/// IER: transmitter holding register empty.
pub const IER_THRE: u8 = 1 << 1;
/// IER: receiver line status.
pub const IER_RLS: u8 = 1 << 2;
/// IER: modem status.
pub const IER_MS: u8 = 1 << 3;
/// IER bits that exist on a 16550A.
const IER_MASK: u8 = 0x0f;

/// IIR: no interrupt pending.
pub const IIR_NONE: u8 = 0x01;
/// IIR: receiver line status (highest priority).
pub const IIR_RLS: u8 = 0x06;
/// IIR: received data available.
pub const IIR_RDA: u8 = 0x04;
/// IIR: transmitter holding register empty.
pub const IIR_THRE: u8 = 0x02;
/// IIR: modem status (lowest priority).
pub const IIR_MS: u8 = 0x00;
/// IIR: FIFOs enabled (both bits set on a 16550A).
pub const IIR_FIFO_ENABLED: u8 = 0xc0;

/// FCR: enable FIFOs.
pub const FCR_ENABLE: u8 = 1 << 0;
/// FCR: clear the receive FIFO.
pub const FCR_CLEAR_RX: u8 = 1 << 1;
/// FCR: clear the transmit FIFO.
pub const FCR_CLEAR_TX: u8 = 1 << 2;

/// LCR: divisor latch access bit.
pub const LCR_DLAB: u8 = 1 << 7;

/// MCR: data terminal ready.
pub const MCR_DTR: u8 = 1 << 0;
/// MCR: request to send.
pub const MCR_RTS: u8 = 1 << 1;
/// MCR: OUT1.
pub const MCR_OUT1: u8 = 1 << 2;
/// MCR: OUT2.
pub const MCR_OUT2: u8 = 1 << 3;
/// MCR: loopback.
pub const MCR_LOOP: u8 = 1 << 4;
/// MCR bits that exist on a 16550A.
const MCR_MASK: u8 = 0x1f;

/// LSR: data ready.
pub const LSR_DR: u8 = 1 << 0;
/// LSR: overrun error.
pub const LSR_OE: u8 = 1 << 1;
/// LSR: transmitter holding register empty.
pub const LSR_THRE: u8 = 1 << 5;
/// LSR: transmitter empty.
pub const LSR_TEMT: u8 = 1 << 6;

/// MSR: delta clear to send.
pub const MSR_DCTS: u8 = 1 << 0;
/// MSR: delta data set ready.
pub const MSR_DDSR: u8 = 1 << 1;
/// MSR: trailing edge ring indicator.
pub const MSR_TERI: u8 = 1 << 2;
/// MSR: delta data carrier detect.
pub const MSR_DDCD: u8 = 1 << 3;
/// MSR: clear to send.
pub const MSR_CTS: u8 = 1 << 4;
/// MSR: data set ready.
pub const MSR_DSR: u8 = 1 << 5;
/// MSR: ring indicator.
pub const MSR_RI: u8 = 1 << 6;
/// MSR: data carrier detect.
pub const MSR_DCD: u8 = 1 << 7;

/// Receive FIFO depth of a 16550A.
pub const FIFO_DEPTH: usize = 16;

/// Where transmitted bytes go.
pub trait UartSink {
    /// One byte the guest wrote to THR (outside loopback).
    fn write_byte(&mut self, byte: u8);
}

impl UartSink for () {
    fn write_byte(&mut self, _byte: u8) {}
}

impl UartSink for Vec<u8> {
    fn write_byte(&mut self, byte: u8) {
        self.push(byte);
    }
}

/// Why a UART could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UartConfigError {
    /// The register stride must be 1, 2, 4 or 8 bytes.
    BadStride(u64),
}

impl core::fmt::Display for UartConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            UartConfigError::BadStride(s) => {
                write!(f, "UART register stride {s} is not 1, 2, 4 or 8")
            }
        }
    }
}

/// Counters for the stats console.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UartStats {
    /// Bytes sent to the sink.
    pub tx_bytes: u64,
    /// Bytes delivered to the guest through RBR.
    pub rx_bytes: u64,
    /// Received bytes dropped because the FIFO was full (loopback only; host input is
    /// refused instead).
    pub rx_overruns: u64,
    /// Accesses refused for width or alignment.
    pub bad_accesses: u64,
}

/// One emulated 16550A.
#[derive(Debug)]
pub struct Uart16550<S, I> {
    stride: u64,
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    fifo_enabled: bool,
    divisor_low: u8,
    divisor_high: u8,
    /// Latched error bits of LSR (only OE can happen here), cleared by reading LSR.
    lsr_errors: u8,
    /// MSR delta bits, cleared by reading MSR.
    msr_deltas: u8,
    rx: VecDeque<u8>,
    /// THR empty and not yet acknowledged by an IIR read (PC16550D table 4).
    thre_pending: bool,
    irq_level: bool,
    stats: UartStats,
    sink: S,
    irq: I,
}

impl<S: UartSink, I: IrqLine> Uart16550<S, I> {
    /// A UART in its reset state with registers `stride` bytes apart.
    pub fn new(stride: u64, sink: S, irq: I) -> Result<Self, UartConfigError> {
        if !matches!(stride, 1 | 2 | 4 | 8) {
            return Err(UartConfigError::BadStride(stride));
        }
        Ok(Self {
            stride,
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            fifo_enabled: false,
            divisor_low: 0,
            divisor_high: 0,
            lsr_errors: 0,
            msr_deltas: 0,
            rx: VecDeque::with_capacity(FIFO_DEPTH),
            thre_pending: false,
            irq_level: false,
            stats: UartStats::default(),
            sink,
            irq,
        })
    }

    /// Size of the register window in bytes.
    pub fn window_bytes(&self) -> u64 {
        reg::COUNT * self.stride
    }

    /// The counters.
    pub fn stats(&self) -> UartStats {
        self.stats
    }

    /// The output sink (for example to flush a partial line when the VM stops).
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// The interrupt line.
    pub fn irq(&self) -> &I {
        &self.irq
    }

    /// The 16-bit baud-rate divisor the guest programmed.
    pub fn divisor(&self) -> u16 {
        u16::from_le_bytes([self.divisor_low, self.divisor_high])
    }

    /// Free space in the receiver: how many bytes [`Uart16550::push_input`] will take now.
    pub fn rx_space(&self) -> usize {
        self.rx_capacity().saturating_sub(self.rx.len())
    }

    /// Queues host input for the guest; returns how many bytes fitted. Input is refused
    /// rather than overrun, so the caller can retry later.
    pub fn push_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.rx_space());
        self.rx.extend(&bytes[..n]);
        self.update_irq();
        n
    }

    fn rx_capacity(&self) -> usize {
        if self.fifo_enabled {
            FIFO_DEPTH
        } else {
            1
        }
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    /// The current interrupt identification, highest priority first (PC16550D table 4).
    fn interrupt_id(&self) -> u8 {
        if self.ier & IER_RLS != 0 && self.lsr_errors != 0 {
            IIR_RLS
        } else if self.ier & IER_RDA != 0 && !self.rx.is_empty() {
            IIR_RDA
        } else if self.ier & IER_THRE != 0 && self.thre_pending {
            IIR_THRE
        } else if self.ier & IER_MS != 0 && self.msr_deltas != 0 {
            IIR_MS
        } else {
            IIR_NONE
        }
    }

    fn iir(&self) -> u8 {
        let fifo = if self.fifo_enabled {
            IIR_FIFO_ENABLED
        } else {
            0
        };
        self.interrupt_id() | fifo
    }

    fn lsr(&self) -> u8 {
        let ready = if self.rx.is_empty() { 0 } else { LSR_DR };
        // Transmission is instant, so THR and the shift register are always empty.
        ready | LSR_THRE | LSR_TEMT | self.lsr_errors
    }

    /// The modem status inputs (MSR bits 7:4): wired to the outputs in loopback, otherwise a
    /// connected line (carrier, data set ready, clear to send).
    fn modem_inputs(&self) -> u8 {
        if self.mcr & MCR_LOOP != 0 {
            let mut v = 0;
            if self.mcr & MCR_RTS != 0 {
                v |= MSR_CTS;
            }
            if self.mcr & MCR_DTR != 0 {
                v |= MSR_DSR;
            }
            if self.mcr & MCR_OUT1 != 0 {
                v |= MSR_RI;
            }
            if self.mcr & MCR_OUT2 != 0 {
                v |= MSR_DCD;
            }
            v
        } else {
            MSR_DCD | MSR_DSR | MSR_CTS
        }
    }

    fn set_mcr(&mut self, value: u8) {
        let before = self.modem_inputs();
        self.mcr = value & MCR_MASK;
        let after = self.modem_inputs();
        let changed = before ^ after;
        if changed & MSR_CTS != 0 {
            self.msr_deltas |= MSR_DCTS;
        }
        if changed & MSR_DSR != 0 {
            self.msr_deltas |= MSR_DDSR;
        }
        if before & MSR_RI != 0 && after & MSR_RI == 0 {
            self.msr_deltas |= MSR_TERI;
        }
        if changed & MSR_DCD != 0 {
            self.msr_deltas |= MSR_DDCD;
        }
    }

    fn transmit(&mut self, byte: u8) {
        if self.mcr & MCR_LOOP != 0 {
            if self.rx.len() < self.rx_capacity() {
                self.rx.push_back(byte);
            } else {
                self.lsr_errors |= LSR_OE;
                self.stats.rx_overruns += 1;
            }
        } else {
            self.sink.write_byte(byte);
            self.stats.tx_bytes += 1;
        }
        self.thre_pending = true;
    }

    fn write_fcr(&mut self, value: u8) {
        let enable = value & FCR_ENABLE != 0;
        if enable != self.fifo_enabled || value & FCR_CLEAR_RX != 0 {
            // Changing the FIFO mode clears the FIFOs (PC16550D, FCR bit 0).
            self.rx.clear();
        }
        self.fifo_enabled = enable;
    }

    fn update_irq(&mut self) {
        let level = self.interrupt_id() & IIR_NONE == 0;
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    /// Reads register `index` with its side effects.
    pub fn read_register(&mut self, index: u64) -> u8 {
        let value = match index {
            reg::RBR_THR_DLL if self.dlab() => self.divisor_low,
            reg::RBR_THR_DLL => match self.rx.pop_front() {
                Some(b) => {
                    self.stats.rx_bytes += 1;
                    b
                }
                None => 0,
            },
            reg::IER_DLM if self.dlab() => self.divisor_high,
            reg::IER_DLM => self.ier,
            reg::IIR_FCR => {
                let iir = self.iir();
                // Reading IIR while it names THRE acknowledges that interrupt.
                if iir & 0x0f == IIR_THRE {
                    self.thre_pending = false;
                }
                iir
            }
            reg::LCR => self.lcr,
            reg::MCR => self.mcr,
            reg::LSR => {
                let lsr = self.lsr();
                self.lsr_errors = 0;
                lsr
            }
            reg::MSR => {
                let msr = self.modem_inputs() | self.msr_deltas;
                self.msr_deltas = 0;
                msr
            }
            reg::SCR => self.scr,
            _ => 0,
        };
        self.update_irq();
        value
    }

    /// Writes register `index` with its side effects.
    pub fn write_register(&mut self, index: u64, value: u8) {
        match index {
            reg::RBR_THR_DLL if self.dlab() => self.divisor_low = value,
            reg::RBR_THR_DLL => self.transmit(value),
            reg::IER_DLM if self.dlab() => self.divisor_high = value,
            reg::IER_DLM => {
                let was = self.ier;
                self.ier = value & IER_MASK;
                // Enabling the THRE interrupt while THR is empty raises it at once.
                if was & IER_THRE == 0 && self.ier & IER_THRE != 0 {
                    self.thre_pending = true;
                }
            }
            reg::IIR_FCR => self.write_fcr(value),
            reg::LCR => self.lcr = value,
            reg::MCR => self.set_mcr(value),
            // LSR and MSR are read-only here (writing them is a factory-test feature).
            reg::LSR | reg::MSR => {}
            reg::SCR => self.scr = value,
            _ => {}
        }
        self.update_irq();
    }

    /// Turns a window offset and width into a register index, by the access rules: the
    /// access starts at a register boundary and is no wider than the stride.
    fn register_index(&mut self, offset: u64, width: Width) -> Result<u64, AccessError> {
        let checked = if width.bytes() > self.stride {
            Err(AccessError::BadWidth { offset, width })
        } else if !offset.is_multiple_of(self.stride) {
            Err(AccessError::Unaligned { offset, width })
        } else if offset >= self.window_bytes() {
            Err(AccessError::OutsideWindow { offset, width })
        } else {
            Ok(offset / self.stride)
        };
        if checked.is_err() {
            self.stats.bad_accesses += 1;
        }
        checked
    }
}

impl<S: UartSink, I: IrqLine> MmioDevice for Uart16550<S, I> {
    fn read(&mut self, offset: u64, width: Width) -> Result<u64, AccessError> {
        let index = self.register_index(offset, width)?;
        Ok(u64::from(self.read_register(index)))
    }

    fn write(&mut self, offset: u64, width: Width, value: u64) -> Result<(), AccessError> {
        let index = self.register_index(offset, width)?;
        // Registers are a byte wide; the rest of a wider store is ignored.
        self.write_register(index, value.to_le_bytes()[0]);
        Ok(())
    }
}

/// Receives finished console records.
pub trait LineWriter {
    /// One record, `[vmname] text`, without a line terminator.
    fn write_line(&mut self, record: &str);
}

impl LineWriter for Vec<String> {
    fn write_line(&mut self, record: &str) {
        self.push(String::from(record));
    }
}

/// Longest line content before a record is cut and continued.
pub const DEFAULT_MAX_LINE_BYTES: usize = 160;

/// Buffers a VM's console bytes into `[vmname] line` records.
///
/// A newline ends a record; carriage returns are dropped; tabs and printable ASCII are kept;
/// every other byte shows as `.`. Lines longer than the limit are emitted in pieces.
#[derive(Debug)]
pub struct LinePrefixer<W> {
    /// `[name] ` followed by the line so far.
    record: String,
    prefix_len: usize,
    max_line_bytes: usize,
    /// The last record was cut at the length limit and nothing followed yet: a newline now
    /// ends that line instead of making an empty record.
    just_cut: bool,
    writer: W,
}

impl<W: LineWriter> LinePrefixer<W> {
    /// Records prefixed with `[name] `, cut after `max_line_bytes` (at least 1) bytes.
    pub fn new(name: &str, max_line_bytes: usize, writer: W) -> Self {
        let mut record = String::with_capacity(name.len() + 3 + max_line_bytes);
        record.push('[');
        // The name comes from configuration; make it as harmless as guest output.
        record.extend(name.bytes().map(visible_char));
        record.push_str("] ");
        let prefix_len = record.len();
        Self {
            record,
            prefix_len,
            max_line_bytes: max_line_bytes.max(1),
            just_cut: false,
            writer,
        }
    }

    /// Adds one console byte.
    pub fn push_byte(&mut self, byte: u8) {
        match byte {
            b'\n' => {
                if !self.just_cut {
                    self.emit();
                }
                self.just_cut = false;
            }
            b'\r' => {}
            _ => {
                self.record.push(visible_char(byte));
                self.just_cut = false;
                if self.record.len() - self.prefix_len >= self.max_line_bytes {
                    self.emit();
                    self.just_cut = true;
                }
            }
        }
    }

    /// Emits a partial line, if any (when the VM stops).
    pub fn flush(&mut self) {
        if self.record.len() > self.prefix_len {
            self.emit();
        }
    }

    /// The record writer.
    pub fn writer(&self) -> &W {
        &self.writer
    }

    fn emit(&mut self) {
        self.writer.write_line(&self.record);
        self.record.truncate(self.prefix_len);
    }
}

impl<W: LineWriter> UartSink for LinePrefixer<W> {
    fn write_byte(&mut self, byte: u8) {
        self.push_byte(byte);
    }
}

/// The character shown for a console byte: printable ASCII and tab as is, others as `.`.
fn visible_char(byte: u8) -> char {
    if byte == b'\t' || (0x20..0x7f).contains(&byte) {
        char::from(byte)
    } else {
        '.'
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::LatchedLine;
    use alloc::vec;
    use proptest::prelude::*;

    type TestUart = Uart16550<Vec<u8>, LatchedLine>;

    fn uart() -> TestUart {
        Uart16550::new(1, Vec::new(), LatchedLine::default()).unwrap()
    }

    #[test]
    fn rejects_bad_strides() {
        for s in [0, 3, 5, 16] {
            assert_eq!(
                Uart16550::new(s, (), ()).unwrap_err(),
                UartConfigError::BadStride(s)
            );
        }
    }

    #[test]
    fn reset_state_matches_the_data_sheet() {
        let mut u = uart();
        assert_eq!(u.read_register(reg::IER_DLM), 0);
        assert_eq!(u.read_register(reg::IIR_FCR), IIR_NONE);
        assert_eq!(u.read_register(reg::LCR), 0);
        assert_eq!(u.read_register(reg::MCR), 0);
        assert_eq!(u.read_register(reg::LSR), LSR_THRE | LSR_TEMT);
        assert_eq!(u.read_register(reg::MSR), MSR_DCD | MSR_DSR | MSR_CTS);
        assert!(!u.irq().asserted);
    }

    #[test]
    fn thr_writes_reach_the_sink() {
        let mut u = uart();
        for b in b"hi\n" {
            u.write(0, Width::Byte, u64::from(*b)).unwrap();
        }
        assert_eq!(u.sink_mut().as_slice(), b"hi\n");
        assert_eq!(u.stats().tx_bytes, 3);
    }

    #[test]
    fn dlab_switches_to_the_divisor_latch() {
        let mut u = uart();
        u.write_register(reg::IER_DLM, IER_RDA);
        u.write_register(reg::LCR, LCR_DLAB | 0x03);
        u.write_register(reg::RBR_THR_DLL, 0x01);
        u.write_register(reg::IER_DLM, 0x02);
        assert_eq!(u.divisor(), 0x0201);
        assert_eq!(u.read_register(reg::RBR_THR_DLL), 0x01);
        assert_eq!(u.read_register(reg::IER_DLM), 0x02);
        // Nothing was transmitted and IER kept its value.
        assert!(u.sink_mut().is_empty());
        u.write_register(reg::LCR, 0x03);
        assert_eq!(u.read_register(reg::IER_DLM), IER_RDA);
        assert_eq!(u.read_register(reg::LCR), 0x03);
    }

    #[test]
    fn ier_keeps_only_defined_bits() {
        let mut u = uart();
        u.write_register(reg::IER_DLM, 0xff);
        assert_eq!(u.read_register(reg::IER_DLM), 0x0f);
    }

    #[test]
    fn received_bytes_set_data_ready_and_interrupt() {
        let mut u = uart();
        u.write_register(reg::IER_DLM, IER_RDA);
        assert_eq!(u.push_input(b"ab"), 1, "without FIFO only one byte fits");
        assert_eq!(u.read_register(reg::LSR) & LSR_DR, LSR_DR);
        assert!(u.irq().asserted);
        assert_eq!(u.read_register(reg::IIR_FCR), IIR_RDA);
        assert_eq!(u.read_register(reg::RBR_THR_DLL), b'a');
        assert_eq!(u.read_register(reg::LSR) & LSR_DR, 0);
        assert!(!u.irq().asserted);
        assert_eq!(u.read_register(reg::RBR_THR_DLL), 0, "empty RBR reads 0");
    }

    #[test]
    fn fifo_holds_sixteen_bytes_and_clears() {
        let mut u = uart();
        u.write_register(reg::IIR_FCR, FCR_ENABLE);
        assert_eq!(u.read_register(reg::IIR_FCR), IIR_NONE | IIR_FIFO_ENABLED);
        assert_eq!(u.push_input(&[7; 20]), FIFO_DEPTH);
        assert_eq!(u.rx_space(), 0);
        u.write_register(reg::IIR_FCR, FCR_ENABLE | FCR_CLEAR_RX | FCR_CLEAR_TX);
        assert_eq!(u.rx_space(), FIFO_DEPTH);
        assert_eq!(u.read_register(reg::LSR) & LSR_DR, 0);
    }

    #[test]
    fn thre_interrupt_arms_on_enable_and_write_and_clears_on_iir_read() {
        let mut u = uart();
        u.write_register(reg::IER_DLM, IER_THRE);
        assert!(u.irq().asserted);
        assert_eq!(u.read_register(reg::IIR_FCR), IIR_THRE);
        assert!(!u.irq().asserted);
        assert_eq!(u.read_register(reg::IIR_FCR), IIR_NONE);
        u.write_register(reg::RBR_THR_DLL, b'x');
        assert!(u.irq().asserted);
        assert_eq!(u.irq().rising_edges, 2);
    }

    #[test]
    fn interrupt_priority_is_line_status_then_data_then_thre() {
        let mut u = uart();
        u.write_register(reg::MCR, MCR_LOOP);
        u.write_register(reg::IER_DLM, IER_RDA | IER_THRE | IER_RLS | IER_MS);
        // Loopback without FIFO: the second byte overruns.
        u.write_register(reg::RBR_THR_DLL, 1);
        u.write_register(reg::RBR_THR_DLL, 2);
        assert_eq!(u.stats().rx_overruns, 1);
        assert_eq!(u.read_register(reg::IIR_FCR), IIR_RLS);
        assert_eq!(
            u.read_register(reg::LSR) & (LSR_OE | LSR_DR),
            LSR_OE | LSR_DR
        );
        assert_eq!(u.read_register(reg::IIR_FCR), IIR_RDA);
        assert_eq!(u.read_register(reg::RBR_THR_DLL), 1);
        assert_eq!(u.read_register(reg::IIR_FCR), IIR_THRE);
        // Entering loopback dropped CTS, DSR and DCD: a modem status interrupt remains.
        assert_eq!(u.read_register(reg::IIR_FCR), IIR_MS);
        assert_eq!(u.read_register(reg::MSR), MSR_DCTS | MSR_DDSR | MSR_DDCD);
        assert_eq!(u.read_register(reg::IIR_FCR), IIR_NONE);
        assert!(
            u.sink_mut().is_empty(),
            "loopback bytes never reach the sink"
        );
    }

    #[test]
    fn loopback_mirrors_modem_outputs_as_linux_probes_it() {
        let mut u = uart();
        // drivers/tty/serial/8250: MCR = LOOP | OUT2 | RTS, expect MSR & 0xf0 == 0x90.
        u.write_register(reg::MCR, MCR_LOOP | MCR_OUT2 | MCR_RTS);
        assert_eq!(u.read_register(reg::MSR) & 0xf0, 0x90);
        u.write_register(reg::MCR, MCR_LOOP | MCR_DTR | MCR_OUT1);
        assert_eq!(u.read_register(reg::MSR) & 0xf0, MSR_DSR | MSR_RI);
        u.write_register(reg::MCR, MCR_LOOP);
        assert_eq!(u.read_register(reg::MSR) & MSR_TERI, MSR_TERI);
        u.write_register(reg::MCR, 0xff);
        assert_eq!(u.read_register(reg::MCR), 0x1f);
    }

    #[test]
    fn lsr_msr_writes_are_ignored_and_scratch_holds_a_value() {
        let mut u = uart();
        u.write_register(reg::LSR, 0);
        u.write_register(reg::MSR, 0);
        assert_eq!(u.read_register(reg::LSR), LSR_THRE | LSR_TEMT);
        assert_eq!(u.read_register(reg::MSR), MSR_DCD | MSR_DSR | MSR_CTS);
        u.write_register(reg::SCR, 0x5a);
        assert_eq!(u.read_register(reg::SCR), 0x5a);
    }

    #[test]
    fn stride_and_width_rules() {
        let mut u = Uart16550::new(4, Vec::new(), ()).unwrap();
        assert_eq!(u.window_bytes(), 32);
        u.write(7 * 4, Width::Word, 0xabcd_ef42).unwrap();
        assert_eq!(u.read(7 * 4, Width::Byte), Ok(0x42));
        assert_eq!(
            u.read(7 * 4 + 1, Width::Byte),
            Err(AccessError::Unaligned {
                offset: 29,
                width: Width::Byte
            })
        );
        assert_eq!(
            u.write(0, Width::Double, 0),
            Err(AccessError::BadWidth {
                offset: 0,
                width: Width::Double
            })
        );
        assert_eq!(
            u.read(32, Width::Byte),
            Err(AccessError::OutsideWindow {
                offset: 32,
                width: Width::Byte
            })
        );
        assert_eq!(u.stats().bad_accesses, 3);
        assert!(u.sink_mut().is_empty());
    }

    #[test]
    fn line_prefixer_builds_records() {
        let mut p = LinePrefixer::new("vm1", 8, Vec::new());
        for b in b"hello\r\nbad\x1b[2Jx\n\n0123456789" {
            p.push_byte(*b);
        }
        p.flush();
        p.flush();
        assert_eq!(
            p.writer(),
            &vec![
                "[vm1] hello".to_string(),
                "[vm1] bad.[2Jx".to_string(),
                "[vm1] ".to_string(),
                "[vm1] 01234567".to_string(),
                "[vm1] 89".to_string(),
            ]
        );
    }

    #[test]
    fn uart_feeds_a_line_prefixer() {
        let mut u = Uart16550::new(1, LinePrefixer::new("guest", 80, Vec::new()), ()).unwrap();
        for b in b"boot ok\n" {
            u.write(0, Width::Byte, u64::from(*b)).unwrap();
        }
        assert_eq!(u.sink_mut().writer(), &vec!["[guest] boot ok".to_string()]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Random register traffic never panics, the IRQ line always equals "IIR says
        /// pending", LSR's THRE/TEMT never drop, MCR/IER never show undefined bits.
        #[test]
        fn random_register_traffic_keeps_invariants(
            ops in proptest::collection::vec((any::<bool>(), 0u64..10, 0u8..4, any::<u64>()), 0..200),
            input in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut u = Uart16550::new(1, Vec::new(), LatchedLine::default()).unwrap();
            u.push_input(&input);
            for (is_write, offset, w, value) in ops {
                let width = [Width::Byte, Width::Half, Width::Word, Width::Double][usize::from(w)];
                if is_write {
                    let r = u.write(offset, width, value);
                    prop_assert_eq!(r.is_ok(), width == Width::Byte && offset < 8);
                } else if let Ok(v) = u.read(offset, width) {
                    prop_assert!(v <= 0xff);
                }
                prop_assert_eq!(u.irq().asserted, u.interrupt_id() != IIR_NONE);
                prop_assert_eq!(u.lsr() & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
                prop_assert_eq!(u.mcr & !MCR_MASK, 0);
                prop_assert_eq!(u.ier & !IER_MASK, 0);
                prop_assert!(u.rx.len() <= FIFO_DEPTH);
            }
        }
    }
}
