//! Console output through the console-write hypercall, with `print!`/`println!` macros.
//!
//! Text is gathered into lines so that each line reaches the hypervisor in one hypercall
//! (the hypervisor prefixes each VM's output with its name, and whole lines keep the output
//! of several VMs readable).

use crate::hypercall::{self, CONSOLE_CHUNK};
use core::fmt;

/// A line buffer that flushes on newline, when full and when dropped.
#[derive(Debug)]
pub struct LineWriter {
    buf: [u8; CONSOLE_CHUNK],
    len: usize,
}

impl LineWriter {
    /// An empty writer.
    pub const fn new() -> Self {
        LineWriter {
            buf: [0; CONSOLE_CHUNK],
            len: 0,
        }
    }

    /// Sends what is buffered. Errors are dropped: a guest has no other place to report them.
    pub fn flush(&mut self) {
        if self.len > 0 {
            let _ = hypercall::console_write(&self.buf[..self.len]);
            self.len = 0;
        }
    }

    fn push(&mut self, byte: u8) {
        if self.len == self.buf.len() {
            self.flush();
        }
        self.buf[self.len] = byte;
        self.len += 1;
        if byte == b'\n' {
            self.flush();
        }
    }
}

impl Default for LineWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Write for LineWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        s.bytes().for_each(|b| self.push(b));
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Formats `args` and writes them to the console (used by the macros).
pub fn print_fmt(args: fmt::Arguments<'_>) {
    let mut writer = LineWriter::new();
    let _ = fmt::write(&mut writer, args);
}

/// Prints to the VM console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::print_fmt(format_args!($($arg)*)) };
}

/// Prints a line to the VM console.
#[macro_export]
macro_rules! println {
    () => { $crate::console::print_fmt(format_args!("\n")) };
    ($($arg:tt)*) => {
        $crate::console::print_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}
