//! The console: UART output, the `println!`/`log!` macros and a lock-breaking panic writer.
//!
//! Lines are written whole under a spin lock with interrupts off, so output of several
//! CPUs does not interleave inside a line. The panic/fatal path must print even if the
//! lock is held (by a CPU that died, or by the interrupted code on this CPU), so
//! [`panic_writer`] waits only a bounded time for the lock and then writes without it.

use crate::arch::irq::IrqGuard;
use crate::drivers::uart16550::Uart16550;
use core::fmt::{self, Write};
use spin::{Mutex, MutexGuard, Once};

static UART: Once<Uart16550> = Once::new();
static LINE_LOCK: Mutex<()> = Mutex::new(());

/// Sets up the board UART. Called once by CPU 0 before anything prints.
pub fn init(uart: Uart16550) {
    let uart = UART.call_once(|| uart);
    uart.init();
}

/// Writer over the raw UART (translates `\n` into `\r\n`).
#[derive(Debug)]
pub struct RawWriter;

impl Write for RawWriter {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        if let Some(uart) = UART.get() {
            for byte in text.bytes() {
                if byte == b'\n' {
                    uart.write_byte(b'\r');
                }
                uart.write_byte(byte);
            }
        }
        Ok(())
    }
}

/// Prints one line (the `println!` back end).
pub fn print_line(args: fmt::Arguments<'_>) {
    let _irq = IrqGuard::new();
    let _line = LINE_LOCK.lock();
    let _ = RawWriter.write_fmt(args);
    let _ = RawWriter.write_str("\n");
}

/// Prints one line prefixed with the CPU number (the `log!` back end).
pub fn log_line(args: fmt::Arguments<'_>) {
    let _irq = IrqGuard::new();
    let _line = LINE_LOCK.lock();
    let _ = write!(RawWriter, "[cpu{}] ", crate::arch::cpu_id());
    let _ = RawWriter.write_fmt(args);
    let _ = RawWriter.write_str("\n");
}

/// Writer for the panic and fatal-exception paths; holds the line lock if it got it.
#[derive(Debug)]
pub struct PanicWriter {
    _line: Option<MutexGuard<'static, ()>>,
    _irq: IrqGuard,
}

impl Write for PanicWriter {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        RawWriter.write_str(text)
    }
}

/// Attempts to take the line lock for this many polls before writing without it.
const PANIC_LOCK_POLLS: u32 = 1_000_000;

/// A writer for last words; see the module notes.
pub fn panic_writer() -> PanicWriter {
    let irq = IrqGuard::new();
    let mut line = None;
    for _ in 0..PANIC_LOCK_POLLS {
        if let Some(guard) = LINE_LOCK.try_lock() {
            line = Some(guard);
            break;
        }
        core::hint::spin_loop();
    }
    PanicWriter {
        _line: line,
        _irq: irq,
    }
}

/// Prints a line to the console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::console::print_line(format_args!($($arg)*))
    };
}

/// Prints a line prefixed with `[cpuN]`.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::console::log_line(format_args!($($arg)*))
    };
}
