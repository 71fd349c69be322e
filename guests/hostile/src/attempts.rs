//! The forbidden things, in the order they are tried (least disruptive first, so that a
//! hypervisor that stops the VM on one of the later ones still sees the earlier ones).

use crate::probe::{self, Probe};
use core::fmt::Write as _;
use guest_rt::hypercall::{self, VmInfoKey};
use guest_rt::{cp0, tlb, window_address};

/// Text of one outcome line.
pub type Text = heapless_line::Line;

/// What one attempt found.
#[derive(Debug)]
pub struct AttemptResult {
    /// Human-readable summary.
    pub text: Text,
    /// Whether the guest observed a containment failure.
    pub breach: bool,
}

/// One forbidden thing.
#[derive(Debug)]
pub struct Attempt {
    /// Name printed in ATTEMPT/OUTCOME lines.
    pub name: &'static str,
    /// Runs it; the argument is the RAM size from VM info.
    pub run: fn(u64) -> AttemptResult,
}

/// Every attempt that returns, in order; the runaway loop comes after them.
pub const ALL: [Attempt; 15] = [
    Attempt {
        name: "hypercall-unknown",
        run: hypercall_unknown,
    },
    Attempt {
        name: "hypercall-malformed",
        run: hypercall_malformed,
    },
    Attempt {
        name: "privileged-refused",
        run: privileged_refused,
    },
    Attempt {
        name: "host-kernel-address",
        run: host_kernel_address,
    },
    Attempt {
        name: "xkphys-and-64bit-segments",
        run: xkphys,
    },
    Attempt {
        name: "exception-storm",
        run: exception_storm,
    },
    Attempt {
        name: "gpa-outside-memslots",
        run: gpa_outside_memslots,
    },
    Attempt {
        name: "other-vm-memory",
        run: other_vm_memory,
    },
    Attempt {
        name: "write-readonly-memslot",
        run: write_readonly,
    },
    Attempt {
        name: "debug-breakpoint",
        run: debug_breakpoint,
    },
    Attempt {
        name: "console-forgery",
        run: console_forgery,
    },
    // The page drill (drill.rs): one host trigger per attempt, in the host's order.
    Attempt {
        name: "shadowed-tlb-then-balloon",
        run: crate::drill::balloon,
    },
    Attempt {
        name: "shadowed-tlb-then-swap-out",
        run: crate::drill::swap_out,
    },
    Attempt {
        name: "shadowed-tlb-then-dedup-merge",
        run: crate::drill::merge,
    },
    Attempt {
        name: "shadowed-tlb-then-memslot-removal",
        run: crate::drill::memslot_removal,
    },
];

/// A fixed-size line buffer (no allocator in the guest).
pub mod heapless_line {
    /// Bytes of outcome text kept. mipsvisor shows lines longer than 200 characters in
    /// pieces but records them whole, which the `console-forgery` attempt relies on.
    const LINE_CAPACITY: usize = 400;

    /// Up to [`LINE_CAPACITY`] bytes of text; longer text is cut.
    pub struct Line {
        buf: [u8; LINE_CAPACITY],
        len: usize,
    }

    impl Line {
        /// An empty line.
        pub const fn new() -> Self {
            Line {
                buf: [0; LINE_CAPACITY],
                len: 0,
            }
        }

        /// The text.
        pub fn as_str(&self) -> &str {
            core::str::from_utf8(&self.buf[..self.len]).unwrap_or("(invalid utf-8)")
        }
    }

    impl core::fmt::Write for Line {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let take = s.len().min(self.buf.len() - self.len);
            self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
            self.len += take;
            Ok(())
        }
    }

    impl core::fmt::Debug for Line {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str(self.as_str())
        }
    }
}

fn result(breach: bool, args: core::fmt::Arguments<'_>) -> AttemptResult {
    let mut text = Text::new();
    let _ = text.write_fmt(args);
    AttemptResult { text, breach }
}

/// Unknown call numbers and a non-zero HYPCALL code field: each must return -1.
fn hypercall_unknown(_ram: u64) -> AttemptResult {
    let unknown = hypercall::raw(999, 1, 2, 3, 4);
    let zero = hypercall::raw(0, 0, 0, 0, 0);
    let huge = hypercall::raw(u64::MAX, 0, 0, 0, 0);
    let coded = hypercall::raw_with_code::<0x155>(hypercall::CONSOLE_WRITE, 0);
    let all = [unknown, zero, huge, coded];
    let ok = all.iter().all(|&r| r == -1);
    result(
        !ok,
        format_args!("nr 999 -> {unknown}, nr 0 -> {zero}, nr -1 -> {huge}, code 0x155 -> {coded} (all must be -1)"),
    )
}

/// Console writes with bad lengths and buffers, a bad VM-info key: errors, nothing printed.
fn hypercall_malformed(ram: u64) -> AttemptResult {
    let msg = b"MUST NOT APPEAR\n";
    let buf = msg.as_ptr() as u64;
    let cw = |addr: u64, len: u64| hypercall::raw(hypercall::CONSOLE_WRITE, addr, len, 0, 0);
    let too_long = cw(buf, 100_000);
    let host = cw(0xffff_ffff_8010_0000, 16);
    let unmapped_user = cw(0x1000, 16);
    let wraps = cw(u64::MAX - 7, 16);
    let beyond_ram = cw(window_address(ram + 0x10_0000), 16);
    let xkphys = cw(0x9800_0000_0010_0000, 16);
    let bad_key = hypercall::raw(hypercall::VM_INFO, 9999, 0, 0, 0);
    let all = [
        too_long,
        host,
        unmapped_user,
        wraps,
        beyond_ram,
        xkphys,
        bad_key,
    ];
    let ok = all.iter().all(|&r| r < 0);
    result(
        !ok,
        format_args!(
            "len 100000 {too_long}, host {host}, unmapped {unmapped_user}, wrapping {wraps}, \
             beyond RAM {beyond_ram}, xkphys {xkphys}, info key 9999 {bad_key}"
        ),
    )
}

/// CP0 writes the emulator must refuse or mask, CACHE on host addresses, SYSCALL.
fn privileged_refused(_ram: u64) -> AttemptResult {
    let mut breach = false;
    let prid = cp0::read32::<15, 0>();
    // SAFETY: PRId is read-only; the write must be ignored.
    unsafe { cp0::write32::<15, 0>(!prid) };
    let prid_after = cp0::read32::<15, 0>();
    breach |= prid_after != prid;

    // EBase pointing at host memory: the writable bits keep the vectors in the window.
    let ebase = cp0::ebase();
    // SAFETY: no exception can happen between this write and the restore below (no
    // interrupt is unmasked, the instructions in between cannot fault).
    unsafe { cp0::write32::<15, 1>(0x8000_0000 | 0x0010_0000) };
    let ebase_host = cp0::ebase();
    // SAFETY: puts the guest's own vectors back.
    unsafe { cp0::write32::<15, 1>(ebase) };

    // Supervisor mode and 64-bit segments: ABI section 6 says these read as 0 / do nothing.
    let status = cp0::status();
    // SAFETY: KSU = supervisor while EXL is clear would change the guest's privilege on a
    // real CPU; the ABI has no supervisor mode, so the field must read back without it.
    unsafe { cp0::set_status(status | (1 << 3) | (1 << 5) | (1 << 6) | (1 << 7)) };
    let status_after = cp0::status();
    // SAFETY: restores the original Status.
    unsafe { cp0::set_status(status) };
    breach |= status_after & (1 << 3) != 0;

    // Unimplemented register (22) and the Config register's read-only fields.
    // SAFETY: writes to an unimplemented register are ignored.
    unsafe { cp0::write32::<22, 0>(0xffff_ffff) };
    let r22 = cp0::read32::<22, 0>();
    let config = cp0::read32::<16, 0>();
    // SAFETY: only Config.K0 is writable; the cacheability of the window is not observable
    // to this guest's code.
    unsafe { cp0::write32::<16, 0>(!config & !7 | (config & 7)) };
    let config_after = cp0::read32::<16, 0>();
    breach |= config_after != config;

    // Index beyond the TLB: the masked index must stay inside it.
    // SAFETY: writes an invalid entry (unused VPN2 in the window) wherever it lands.
    unsafe {
        cp0::write32::<0, 0>(0x7fff_ffc0 | 63);
        tlb::write_indexed(
            0x7fff_ffff,
            &tlb::TlbEntry {
                hi: tlb::entry_hi(0x5000_0000, 0),
                lo0: 0,
                lo1: 0,
                page_mask: 0,
            },
        );
    }
    let cache_host = probe::cache_writeback_invalidate(0xffff_ffff_8010_0000);
    let cache_xkphys = probe::cache_writeback_invalidate(0x9800_0000_0000_0000);
    let sys = probe::syscall();
    guest_rt::println!(
        "  PRId {prid:#x}->{prid_after:#x} EBase(host) {ebase_host:#x} Status {status_after:#x} \
         reg22 {r22:#x} Config {config:#x}->{config_after:#x}"
    );
    result(
        breach,
        format_args!("cache host {cache_host}; cache xkphys {cache_xkphys}; syscall {sys}"),
    )
}

/// Loads and stores at host kernel addresses (KSEG0, KSEG1 incl. the host UART, KSEG2/3).
fn host_kernel_address(_ram: u64) -> AttemptResult {
    let loads = [
        probe::load(0xffff_ffff_8000_0000),
        probe::load(0xffff_ffff_8010_0000),
        probe::load(0xffff_ffff_a000_0000),
        probe::load(0xffff_ffff_c000_0000),
        probe::load(0xffff_ffff_e000_0000),
    ];
    // SAFETY: none of these is memory this guest uses.
    let stores = unsafe {
        [
            probe::store(0xffff_ffff_8010_0000, 0xbad0_bad0),
            probe::store(0xffff_ffff_b800_03f8, 0x21),
            probe::store(0xffff_ffff_c000_0000, 0xbad0_bad0),
        ]
    };
    let trapped = loads
        .iter()
        .chain(stores.iter())
        .filter(|p| matches!(p, Probe::Trapped(..)))
        .count();
    result(
        trapped != loads.len() + stores.len(),
        format_args!(
            "{trapped}/{} trapped; load 0xffffffff80000000 {}; store host UART {}",
            loads.len() + stores.len(),
            loads[0],
            stores[1]
        ),
    )
}

/// xkphys (host physical memory, cached and uncached), xkseg, xsseg and 64-bit xuseg.
fn xkphys(_ram: u64) -> AttemptResult {
    let loads = [
        probe::load(0x9800_0000_0010_0000),
        probe::load(0x9000_0000_0000_0000),
        probe::load(0xc000_0000_0000_0000),
        probe::load(0x4000_0000_0000_0000),
        probe::load(0x0000_0001_0000_0000),
    ];
    // SAFETY: not this guest's memory.
    let stores = unsafe {
        [
            probe::store(0x9000_0000_1800_03f8, 0x21),
            probe::store(0x9800_0000_0010_0000, 0xbad0_bad0),
        ]
    };
    let trapped = loads
        .iter()
        .chain(stores.iter())
        .filter(|p| matches!(p, Probe::Trapped(..)))
        .count();
    result(
        trapped != loads.len() + stores.len(),
        format_args!(
            "{trapped}/{} trapped; load xkphys {}; load xuseg 4 GiB {}",
            loads.len() + stores.len(),
            loads[0],
            loads[4]
        ),
    )
}

/// Exceptions in a tight loop: breakpoints, traps, address errors.
fn exception_storm(_ram: u64) -> AttemptResult {
    const EACH: u64 = 2000;
    let before = probe::exceptions();
    for _ in 0..EACH {
        probe::breakpoint();
        probe::trap_always();
        probe::load(0xffff_ffff_8000_0000);
    }
    let taken = probe::exceptions() - before;
    result(
        taken != 3 * EACH,
        format_args!("{taken} of {} exceptions reflected and handled", 3 * EACH),
    )
}

/// Guest physical addresses with no memory slot, through the window and the guest TLB.
fn gpa_outside_memslots(ram: u64) -> AttemptResult {
    let window = [
        probe::load(window_address(ram + (16 << 20))),
        probe::load(window_address(0x1000_0000)),
        probe::load(window_address(0x1d00_0000)),
    ];
    // A 36-bit GPA (32 GiB) mapped through the guest's own TLB at the mapped kernel segment.
    let entry = tlb::TlbEntry {
        hi: tlb::entry_hi(0x6100_0000, 0),
        lo0: tlb::entry_lo(
            0x8_0000_0000,
            tlb::LO_VALID | tlb::LO_DIRTY | tlb::LO_CACHED | tlb::LO_GLOBAL,
        ),
        lo1: tlb::entry_lo(
            0x8_0000_1000,
            tlb::LO_VALID | tlb::LO_DIRTY | tlb::LO_CACHED | tlb::LO_GLOBAL,
        ),
        page_mask: tlb::PAGE_MASK_4K,
    };
    // SAFETY: maps an address this guest does not otherwise use.
    unsafe { tlb::write_indexed(1, &entry) };
    let via_tlb = probe::load(0x6100_0000);
    // SAFETY: as above; the target is not this guest's memory.
    let via_tlb_store = unsafe { probe::store(0x6100_1000, 0xbad0_bad0) };
    guest_rt::println!(
        "  window: GPA ram+16MiB {}; GPA 0x10000000 {}; GPA 0x1d000000 {}",
        window[0],
        window[1],
        window[2]
    );
    result(
        false,
        format_args!("TLB to GPA 32GiB: load {via_tlb}; store {via_tlb_store}"),
    )
}

/// Memory right above this VM's RAM and where other VMs' RAM typically lives, through the
/// window and through a 16 MiB TLB page; stores carry a marker another VM would notice.
fn other_vm_memory(ram: u64) -> AttemptResult {
    let mut completed_loads = 0;
    let mut nonzero = 0;
    let mut line = Text::new();
    let targets = [
        ram,
        ram + 0x1000,
        ram + (1 << 20),
        0x0200_0000,
        0x0400_0000,
        0x0800_0000,
    ];
    for gpa in targets {
        if let Probe::Completed(v) = probe::load(window_address(gpa)) {
            completed_loads += 1;
            if v != 0 && v != u64::MAX {
                nonzero += 1;
            }
        }
    }
    // SAFETY: none of the targets is this guest's memory (all at or above its RAM size).
    let stores = unsafe {
        [
            probe::store(window_address(ram), 0x0bad_c0de_0bad_c0de),
            probe::store(window_address(ram + (1 << 20)), 0x0bad_c0de_0bad_c0de),
        ]
    };
    // A 16 MiB page pair over GPA [16 MiB-aligned above RAM, +32 MiB).
    let base = (ram + (16 << 20) - 1) & !((16 << 20) - 1);
    let entry = tlb::TlbEntry {
        hi: tlb::entry_hi(0x6200_0000, 0),
        lo0: tlb::entry_lo(
            base,
            tlb::LO_VALID | tlb::LO_DIRTY | tlb::LO_CACHED | tlb::LO_GLOBAL,
        ),
        lo1: tlb::entry_lo(
            base + (16 << 20),
            tlb::LO_VALID | tlb::LO_DIRTY | tlb::LO_CACHED | tlb::LO_GLOBAL,
        ),
        page_mask: tlb::PAGE_MASK_16M,
    };
    // SAFETY: maps addresses this guest does not otherwise use.
    unsafe { tlb::write_indexed(2, &entry) };
    let big_load = probe::load(0x6200_0000 + 0x10_0000);
    // SAFETY: not this guest's memory.
    let big_store = unsafe { probe::store(0x6300_0000 + 0x8000, 0x0bad_c0de_0bad_c0de) };
    let _ = write!(
        line,
        "{completed_loads}/{} loads done ({nonzero} with data); store at RAM end {}; \
         16MiB page load {} store {}",
        targets.len(),
        stores[0],
        big_load,
        big_store
    );
    // Reading non-zero data above our RAM could be another VM's memory.
    AttemptResult {
        text: line,
        breach: nonzero > 0,
    }
}

/// The architectural boot ROM region (GPA of 0xbfc0_0000), never guest RAM.
const BOOT_ROM_GPA: u64 = 0x1fc0_0000;

/// Stores to the read-only memory slot (VM info keys 7 and 8: its first, a middle and its
/// last double word) and to the boot ROM region; a breach if a stored value can be read
/// back. A VM without such a slot (key 7 answers -2) still tries the boot ROM.
fn write_readonly(_ram: u64) -> AttemptResult {
    let slot = match (
        hypercall::vm_info(VmInfoKey::ReadOnlyBase),
        hypercall::vm_info(VmInfoKey::ReadOnlyBytes),
    ) {
        (Ok(base), Ok(bytes)) if bytes >= 8 => Some((base, bytes)),
        _ => None,
    };
    let mut targets: [(u64, &str); 4] = [(BOOT_ROM_GPA, "boot ROM"); 4];
    let mut count = 1;
    if let Some((base, bytes)) = slot {
        targets = [
            (base, "rom start"),
            (base + ((bytes / 2) & !7), "rom middle"),
            (base + bytes - 8, "rom end"),
            (BOOT_ROM_GPA, "boot ROM"),
        ];
        count = 4;
    }
    let mut text = Text::new();
    match slot {
        Some((base, bytes)) => {
            let _ = write!(text, "slot {base:#x}+{bytes:#x}: ");
        }
        None => {
            let _ = write!(text, "no read-only slot offered (VM info 7/8): ");
        }
    }
    let mut stuck = false;
    for &(gpa, what) in &targets[..count] {
        let addr = window_address(gpa);
        let before = probe::load(addr);
        const MARK: u64 = 0x0bad_0bad_0bad_0bad;
        // SAFETY: a read-only region (or no memory at all); not this guest's memory.
        let store = unsafe { probe::store(addr, MARK) };
        let after = probe::load(addr);
        let changed = after == Probe::Completed(MARK) && before != Probe::Completed(MARK);
        stuck |= changed;
        guest_rt::println!("  {what} {gpa:#x}: load {before}, store {store}, reload {after}");
        let _ = write!(
            text,
            "{what} {}; ",
            if changed { "CHANGED" } else { "unchanged" }
        );
    }
    AttemptResult {
        text,
        breach: stuck,
    }
}

/// Exit status the semihosting-shaped SDBBP asks for: if QEMU ever took the call, the run
/// would end with this status instead of the hypervisor's own.
const UHI_EXIT_STATUS: u64 = 77;

/// SDBBP, the EJTAG software breakpoint, which on the host CPU enters debug mode instead of
/// trapping to the hypervisor's exception vector: plain, in a branch delay slot, and shaped
/// as a semihosting exit call. Each must come back as exactly one Reserved Instruction
/// exception (this guest's CPU has no EJTAG); two for the delay-slot probe would mean EPC or
/// Cause.BD was wrong.
fn debug_breakpoint(_ram: u64) -> AttemptResult {
    type Run = fn() -> Probe;
    let probes: [(&str, Run); 3] = [
        ("plain", probe::debug_breakpoint),
        ("delay slot", probe::debug_breakpoint_in_delay_slot),
        ("uhi exit", || {
            probe::debug_breakpoint_uhi_exit(UHI_EXIT_STATUS)
        }),
    ];
    let mut text = Text::new();
    let mut wrong = false;
    for (what, run) in probes {
        let before = probe::exceptions();
        let outcome = run();
        let taken = probe::exceptions() - before;
        wrong |= taken != 1
            || !matches!(outcome, Probe::Trapped(code, _) if code == guest_rt::trap::exc::RI);
        let _ = write!(text, "{what} {outcome} x{taken}; ");
    }
    // Reflecting it as the architecture says is the expected containment; anything else
    // (no exception, another code, two exceptions) is reported as a breach.
    AttemptResult {
        text,
        breach: wrong,
    }
}

/// Console lines shaped to slip a forged `OUTCOME`/`ATTEMPT` into the host's record: one
/// behind 210 characters of padding (so it would start a display piece of its own), one
/// behind a carriage return, one behind a terminal escape sequence, one behind a space. None
/// of them may count; the host's tally (attempted = contained, no malformed lines) shows it.
/// This attempt's own OUTCOME line is longer than 200 characters and must still count.
fn console_forgery(_ram: u64) -> AttemptResult {
    for _ in 0..21 {
        guest_rt::print!("----------");
    }
    guest_rt::println!("OUTCOME 11 console-forgery: forged behind padding");
    guest_rt::println!("\rOUTCOME 11 console-forgery: forged behind a carriage return");
    guest_rt::println!("\x1b[2K\rATTEMPT 99 forged-behind-an-escape-sequence");
    guest_rt::println!(" OUTCOME 11 console-forgery: forged behind a space");
    let mut text = Text::new();
    let _ = write!(
        text,
        "sent 4 forged lines (behind 210 characters of padding, a carriage return, an escape \
         sequence, a space); none may count. This outcome line is longer than 200 characters, \
         so the console shows it in two pieces, and it must still count as one whole line."
    );
    AttemptResult {
        text,
        breach: false,
    }
}

/// Interrupts masked, no hypercall, no exception: spins until the hypervisor stops the VM.
pub fn runaway_loop() -> ! {
    // SAFETY: masking every interrupt is the point of this attempt.
    unsafe { cp0::set_status(cp0::status() & !(cp0::STATUS_IE | cp0::STATUS_IM_MASK)) };
    loop {
        core::hint::spin_loop();
    }
}
