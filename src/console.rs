//! The console: UART output, the `println!`/`log!` macros and a lock-breaking panic writer.
//!
//! Lines are written whole under a spin lock with interrupts off, so output of several
//! CPUs does not interleave inside a line. The panic/fatal path must print even if the
//! lock is held (by a CPU that died, or by the interrupted code on this CPU), so
//! [`panic_writer`] waits only a bounded time for the lock and then writes without it.
//!
//! The operator console (`console_op`) leaves its prompt and the operator's typing on an
//! open line ([`echo`]). Any whole line printed meanwhile first ends that open line, so every
//! `STAT` and `RESULT` line still starts at the beginning of a line; the operator console
//! redraws its prompt and line when the next key arrives.

use crate::arch::irq::IrqGuard;
use crate::drivers::uart16550::Uart16550;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};
use spin::{Mutex, MutexGuard, Once};

static UART: Once<Uart16550> = Once::new();
static LINE_LOCK: Mutex<()> = Mutex::new(());
/// The cursor is not at the start of a line: the operator console's prompt or echo is
/// open. Changed with `LINE_LOCK` held (the panic path excepted, which may lack it).
static LINE_OPEN: AtomicBool = AtomicBool::new(false);

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

/// Ends the operator console's open line, if there is one, so the next output starts a line.
/// Caller holds `LINE_LOCK` (or, on the panic path, tried to).
fn close_open_line() {
    if LINE_OPEN.swap(false, Ordering::Relaxed) {
        let _ = RawWriter.write_str("\n");
    }
}

/// Prints one line (the `println!` back end).
pub fn print_line(args: fmt::Arguments<'_>) {
    let _irq = IrqGuard::new();
    let _line = LINE_LOCK.lock();
    close_open_line();
    let _ = RawWriter.write_fmt(args);
    let _ = RawWriter.write_str("\n");
}

/// Prints one line prefixed with the CPU number (the `log!` back end).
pub fn log_line(args: fmt::Arguments<'_>) {
    let _irq = IrqGuard::new();
    let _line = LINE_LOCK.lock();
    close_open_line();
    let _ = write!(RawWriter, "[cpu{}] ", crate::arch::cpu_id());
    let _ = RawWriter.write_fmt(args);
    let _ = RawWriter.write_str("\n");
}

/// Continues the operator console's open line with `echo`. If other output ended that line
/// since, writes `redraw` (the prompt and the line as it stands now) instead, then the end
/// of the line if `echo` ends one. Checked and written under the line lock, so no other line
/// can slip in between.
pub fn echo(echo: &str, redraw: &dyn Fn(&mut dyn Write) -> fmt::Result) {
    if echo.is_empty() {
        return;
    }
    let _irq = IrqGuard::new();
    let _line = LINE_LOCK.lock();
    if LINE_OPEN.load(Ordering::Relaxed) {
        let _ = RawWriter.write_str(echo);
    } else {
        let _ = redraw(&mut RawWriter);
        if echo.ends_with('\n') {
            let _ = RawWriter.write_str("\n");
        }
    }
    LINE_OPEN.store(!echo.ends_with('\n'), Ordering::Relaxed);
}

/// Prints every line of `text` with `prefix` in front, as one block no other line splits.
pub fn print_prefixed(prefix: &str, text: &str) {
    let _irq = IrqGuard::new();
    let _line = LINE_LOCK.lock();
    close_open_line();
    for line in text.lines() {
        let _ = RawWriter.write_str(prefix);
        let _ = RawWriter.write_str(line);
        let _ = RawWriter.write_str("\n");
    }
}

/// Takes one byte the operator typed, if any (never waits).
pub fn try_read_byte() -> Option<u8> {
    UART.get()?.try_read_byte()
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
    close_open_line();
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
