//! mipsvisor firmware: boot, per-CPU bring-up and scenario dispatch on 64-bit MIPS.
//!
//! Boot order on CPU 0: console, command line, RAM probe, heap and frame allocator, then
//! the other CPUs are released from boot.s. Every CPU runs the exception self-test, starts
//! its timer and marks itself online; CPU 0 then runs the scenario named on the command
//! line and ends the run with its result. Hardware access lives in `arch/mips`, the board
//! description in `boards/`.
//!
//! The crate only means something on `mips64`; on any other target it builds to a stub
//! so that `cargo build --workspace` on a development host still works, and
//! `cargo test -p mipsvisor` runs the unit tests of the register-free modules
//! (command line, board layout, frame allocator bookkeeping) on the host.
#![cfg_attr(target_arch = "mips64", no_std)]
#![cfg_attr(target_arch = "mips64", no_main)]
#![cfg_attr(target_arch = "mips64", feature(asm_experimental_arch))]
// On the host only the unit tests use the portable modules (cmdline, board, frame
// allocator); the rest of their items exist for the MIPS build.
#![cfg_attr(not(target_arch = "mips64"), allow(dead_code))]

// Unconditional: modules unit-tested on the host (mem::frame) use `alloc` paths too.
extern crate alloc;

#[cfg(target_arch = "mips64")]
mod console;
#[cfg(target_arch = "mips64")]
mod console_op;

#[cfg(target_arch = "mips64")]
#[path = "arch/mips/mod.rs"]
mod arch;
#[cfg(any(target_arch = "mips64", test))]
#[path = "../boards/malta.rs"]
mod board;
#[cfg(any(target_arch = "mips64", test))]
mod cmdline;
#[cfg(target_arch = "mips64")]
mod drivers;
#[cfg(any(target_arch = "mips64", test))]
mod mem;
#[cfg(target_arch = "mips64")]
mod panic;
#[cfg(target_arch = "mips64")]
mod percpu;
#[cfg(target_arch = "mips64")]
mod scenario;
#[cfg(target_arch = "mips64")]
mod selftest;
#[cfg(target_arch = "mips64")]
mod services;
#[cfg(target_arch = "mips64")]
mod smp;
#[cfg(target_arch = "mips64")]
mod vmm;

#[cfg(target_arch = "mips64")]
pub use firmware::{boot_main, secondary_main};

#[cfg(target_arch = "mips64")]
mod firmware {
    use crate::arch::addr::{phys_to_uncached, phys_to_virt};
    use crate::arch::boot::{self, LoaderRegs};
    use crate::arch::{cp0, timer};
    use crate::cmdline::{self, parse_number};
    use crate::drivers::uart16550::Uart16550;
    use crate::mem::frame::FRAMES;
    use crate::scenario::{self, BootInfo, ExitCode};
    use crate::{board, console, log, percpu, println, selftest, smp};
    use core::sync::atomic::Ordering;
    use hv_core::addr::Hpa;

    /// Kernel heap size.
    const HEAP_BYTES: usize = 8 << 20;

    /// RAM size in bytes and where it came from: the loader environment (`ememsize` is
    /// all RAM, `memsize` only what lies below the I/O hole), else the loader's a3.
    fn probe_ram(regs: &LoaderRegs) -> (u64, &'static str) {
        for name in ["ememsize", "memsize"] {
            if let Some(bytes) = boot::loader_env(regs, name).and_then(parse_number) {
                return (bytes, name);
            }
        }
        (regs.low_ram_bytes, "a3")
    }

    /// Rust entry of CPU 0 (from boot.s via arch::boot).
    pub fn boot_main(regs: LoaderRegs) -> ! {
        // SAFETY: UART0 is the board's console 16550; KSEG1 keeps the access uncached and
        // only the console module drives it.
        let uart = unsafe { Uart16550::new(phys_to_uncached(board::UART0), board::UART_STRIDE) };
        console::init(uart);
        println!("mipsvisor {} on {}", env!("CARGO_PKG_VERSION"), board::NAME);

        let line = boot::loader_cmdline(&regs);
        println!("cmdline: {line}");
        let options = match cmdline::parse(line.args()) {
            Ok(options) => options,
            Err(error) => {
                scenario::abort_run(ExitCode::Fail, format_args!("bad command line: {error}"))
            }
        };
        let Some(chosen) = scenario::find(options.scenario) else {
            scenario::set_current(options.scenario);
            scenario::reject_unknown(options.scenario)
        };
        scenario::set_current(chosen.name);

        let (ram_bytes, ram_source) = probe_ram(&regs);
        let ram = board::ram_layout(ram_bytes);
        let (image_start, image_end) = boot::image_range();
        log!(
            "image {image_start}..{image_end}, RAM {} MiB (from {ram_source}), PRId {:#x}",
            ram.total_bytes >> 20,
            cp0::prid()
        );

        let heap_start = image_end
            .checked_page_align_up()
            .expect("image end is low RAM");
        let heap_end = Hpa::new(heap_start.raw() + HEAP_BYTES as u64);
        if heap_end.raw() > ram.low.1.raw() {
            scenario::abort_run(ExitCode::Fail, format_args!("RAM too small for the heap"));
        }
        // SAFETY: [heap_start, heap_end) is RAM right after the image; the frame
        // allocator below only gets memory above heap_end, so nothing else uses it.
        unsafe { crate::mem::heap::init(phys_to_virt(heap_start), HEAP_BYTES) };
        {
            let mut frames = FRAMES.lock();
            // Below heap_end: loader area (first MiB), image, heap. All reserved, and so is
            // an initrd (a guest image the loader placed near the top of low RAM).
            let initrd = boot::initrd_range(options.rd_start, options.rd_size, ram.low.1)
                .filter(|&(start, _)| start.raw() >= heap_end.raw());
            let low_regions = match initrd {
                Some((start, end)) => [(heap_end, start), (end, ram.low.1)],
                None => [(heap_end, ram.low.1), (ram.low.1, ram.low.1)],
            };
            for (start, end) in low_regions {
                if end.raw().saturating_sub(start.raw()) < 4096 {
                    continue;
                }
                if let Err(error) = frames.add_region(start, end) {
                    scenario::abort_run(ExitCode::Fail, format_args!("low RAM: {error}"));
                }
            }
            if let Some((start, end)) = initrd {
                log!(
                    "initrd {start}..{end} ({} bytes) kept for a guest image",
                    end.raw() - start.raw()
                );
            }
            if let Some((start, end)) = ram.high {
                if let Err(error) = frames.add_region(start, end) {
                    scenario::abort_run(ExitCode::Fail, format_args!("high RAM: {error}"));
                }
            }
        }

        boot::release_secondaries();
        bring_up_this_cpu();

        let info = BootInfo {
            options,
            ram,
            ram_source,
            heap_bytes: HEAP_BYTES,
        };
        scenario::run(chosen, &info)
    }

    /// Exception self-test, timer, online: the part of bring-up every CPU does.
    fn bring_up_this_cpu() {
        let me = percpu::this();
        let result = selftest::exceptions();
        if let Err(why) = result {
            log!("exception self-test failed: {why}");
        }
        me.selftest.call_once(|| result);
        timer::start_this_cpu();
        // Release: CPU 0 reading `online` also sees the self-test result.
        me.online.store(true, Ordering::Release);
    }

    /// Rust entry of every other CPU.
    pub fn secondary_main(cpu: usize) -> ! {
        log!("cpu{cpu} up");
        bring_up_this_cpu();
        smp::idle_loop()
    }
}

#[cfg(not(target_arch = "mips64"))]
fn main() {
    eprintln!("mipsvisor is firmware for 64-bit MIPS; build it with tools/build-fw.sh");
    std::process::exit(2);
}
