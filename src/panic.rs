//! The panic path: print where and why, then fail the run through semihosting.

use crate::arch::{cpu_id, semihost};
use crate::scenario::{abort_run, ExitCode};
use core::fmt::Write;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

/// Set by the first panic; a panic while reporting one exits at once.
static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    if PANICKING.swap(true, Ordering::Relaxed) {
        semihost::exit(ExitCode::Panic as u32);
    }
    let mut out = crate::console::panic_writer();
    match info.location() {
        Some(at) => {
            let _ = writeln!(
                out,
                "PANIC on cpu{} at {}:{}:{}: {}",
                cpu_id(),
                at.file(),
                at.line(),
                at.column(),
                info.message()
            );
        }
        None => {
            let _ = writeln!(out, "PANIC on cpu{}: {}", cpu_id(), info.message());
        }
    }
    drop(out);
    abort_run(ExitCode::Panic, format_args!("panic: {}", info.message()))
}
