//! Boot entry glue: assembles boot.s, brings each CPU into a known state, hands over to
//! `boot_main` (CPU 0) or `secondary_main` (the others), and reads the loader's arguments.

use super::{addr, cp0, tlb, trap, MAX_CPUS};
use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, Ordering};
use hv_core::addr::Hpa;

/// log2 of the boot stack size of each CPU (64 KiB). 32 KiB was too little: building a VM
/// and its vCPUs on CPU 0 (build_vms, Vcpu::new, GuestCpu::new) takes about 29 KiB of stack
/// alone, and CPU 0's stack sits right above the firmware's statics, which an overflow
/// silently overwrote (the shared guest pool was created twice).
const STACK_SHIFT: u32 = 16;

/// Status at entry: CU0 | BEV | KX | UX; everything else (IE, EXL, ERL, KSU, IM) clear.
const STATUS_BOOT: u32 = (1 << 28) | (1 << 22) | (1 << 7) | (1 << 5);

/// Set to 1 by CPU 0 once the secondaries may run Rust code. Lives in .data, not .bss:
/// CPU 0 clears .bss while the secondaries already poll this word.
#[link_section = ".data.secondary_release"]
static SECONDARY_RELEASE: AtomicU32 = AtomicU32::new(0);

global_asm!(
    include_str!("boot.s"),
    status_boot = const STATUS_BOOT,
    status_bev = const cp0::Status::BEV.bits(),
    ebase_mask = const cp0::EBase::BASE_MASK,
    max_cpus = const MAX_CPUS,
    stack_shift = const STACK_SHIFT,
    release = sym SECONDARY_RELEASE,
    rust_entry = sym rust_entry,
);

extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

/// What the boot loader passed to CPU 0 (raw register values).
#[derive(Debug, Clone, Copy)]
pub struct LoaderRegs {
    /// a0: argc, if the loader set it (QEMU with -semihosting does not).
    pub argc: i64,
    /// a1: argv, an array of 32-bit sign-extended string pointers.
    pub argv: u64,
    /// a2: envp, same format, name and value in consecutive entries.
    pub envp: u64,
    /// a3: RAM size below the I/O hole, as the loader saw it.
    pub low_ram_bytes: u64,
}

/// First Rust code of every CPU, called from boot.s with this CPU's stack set up.
extern "C" fn rust_entry(
    cpu: usize,
    argv: u64,
    envp: u64,
    low_ram: u64,
    stack_top: u64,
    argc: i64,
) -> ! {
    trap::set_kernel_stack(cpu, stack_top);
    init_this_cpu();
    if cpu == 0 {
        crate::boot_main(LoaderRegs {
            argc,
            argv,
            envp,
            low_ram_bytes: low_ram,
        })
    } else {
        crate::secondary_main(cpu)
    }
}

/// Per-CPU hardware set-up that boot.s leaves to Rust: a clean TLB, then the wired mapping
/// of this CPU's fast-lane area (the refill vector needs it from the first refill on).
fn init_this_cpu() {
    tlb::flush_all();
    super::percpu::install();
}

/// Lets the secondary CPUs leave boot.s. Called once by CPU 0 when console, vectors and
/// memory are ready.
pub fn release_secondaries() {
    // Release: everything CPU 0 set up before is visible to a CPU that sees the 1
    // (pairs with the `sync` after the poll loop in boot.s).
    SECONDARY_RELEASE.store(1, Ordering::Release);
}

/// Physical range the firmware image occupies (text, data, bss, stacks), half-open.
pub fn image_range() -> (Hpa, Hpa) {
    let start = &raw const __image_start as u64;
    let end = &raw const __image_end as u64;
    (addr::kseg0_to_phys(start), addr::kseg0_to_phys(end))
}

/// The loader's strings live in the first MiB of RAM, which the firmware never allocates.
const LOADER_AREA_END: u64 = 0x10_0000;
/// Longest string read from the loader area.
const MAX_LOADER_STRING: usize = 1024;
/// Most argv/envp entries looked at.
const MAX_LOADER_ENTRIES: usize = 64;

/// Reads entry `index` of a loader pointer array and returns the string it points to, or
/// `None` for a null entry or anything outside the loader area.
fn loader_string(array: u64, index: usize) -> Option<&'static str> {
    let slot = array.checked_add(4 * index as u64)?;
    let slot_pa = addr::virt_to_phys(slot)?;
    if slot_pa.raw() + 4 > LOADER_AREA_END || slot % 4 != 0 {
        return None;
    }
    // SAFETY: `slot` is an aligned KSEG0/xkphys address of RAM below 1 MiB, which exists
    // on every Malta, holds only loader data and is never handed to Rust allocations.
    let raw = unsafe { core::ptr::read_volatile(slot as *const i32) };
    if raw == 0 {
        return None;
    }
    let string = raw as i64 as u64;
    let string_pa = addr::virt_to_phys(string)?;
    if string_pa.raw() >= LOADER_AREA_END {
        return None;
    }
    let room = (LOADER_AREA_END - string_pa.raw()) as usize;
    let limit = room.min(MAX_LOADER_STRING);
    // SAFETY: [string, string + limit) lies in the loader area (same argument as above);
    // the area is not written after boot, so a shared 'static slice is sound.
    let bytes = unsafe { core::slice::from_raw_parts(string as *const u8, limit) };
    let len = bytes.iter().position(|&b| b == 0)?;
    core::str::from_utf8(&bytes[..len]).ok()
}

/// Most command line words kept.
const MAX_CMDLINE_WORDS: usize = 32;

/// Physical range `[start, end)` of the initrd the loader placed in low RAM
/// (`rd_start=` is its KSEG0 address), or `None` when absent or outside RAM below `low_end`.
pub fn initrd_range(
    rd_start: Option<u64>,
    rd_size: Option<u64>,
    low_end: Hpa,
) -> Option<(Hpa, Hpa)> {
    let start = addr::virt_to_phys(rd_start?)?;
    let size = rd_size?;
    let end = start.raw().checked_add(size)?;
    (size > 0 && start.raw() >= LOADER_AREA_END && end <= low_end.raw())
        .then(|| (start, Hpa::new(end)))
}

/// The initrd's bytes. `range` must come from [`initrd_range`] and be kept out of the frame
/// allocator (boot does that), so nothing else ever writes it.
pub fn initrd_bytes(range: (Hpa, Hpa)) -> &'static [u8] {
    let va = addr::phys_to_virt(range.0);
    let len = (range.1.raw() - range.0.raw()) as usize;
    // Boot excluded the range from the frame allocator and the heap lies below it.
    // SAFETY: [start, end) is RAM below the I/O hole (initrd_range checked it) holding the
    // initrd, never written after boot, so a shared 'static slice is sound.
    unsafe { core::slice::from_raw_parts(va as *const u8, len) }
}

/// The loader's command line: argv[1..argc]. QEMU puts all of `-append` in argv[1];
/// YAMON passes one word per entry. When argc is not usable (QEMU with -semihosting leaves
/// a0 unset) only argv[1] is read, and entries from envp on are never taken for arguments.
#[derive(Debug, Clone, Copy)]
pub struct LoaderCmdline {
    words: [&'static str; MAX_CMDLINE_WORDS],
    count: usize,
}

impl LoaderCmdline {
    /// The argument strings (each may hold several words).
    pub fn args(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.words[..self.count].iter().copied()
    }
}

impl core::fmt::Display for LoaderCmdline {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, word) in self.args().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(word)?;
        }
        Ok(())
    }
}

/// Reads the command line the loader passed (see [`LoaderCmdline`]).
pub fn loader_cmdline(regs: &LoaderRegs) -> LoaderCmdline {
    let mut cmdline = LoaderCmdline {
        words: [""; MAX_CMDLINE_WORDS],
        count: 0,
    };
    if regs.argv == 0 {
        return cmdline;
    }
    let argc = match usize::try_from(regs.argc) {
        Ok(n) if (2..=MAX_CMDLINE_WORDS).contains(&n) => n,
        _ => 2,
    };
    for index in 1..argc {
        let slot = regs.argv + 4 * index as u64;
        if regs.envp > regs.argv && slot >= regs.envp {
            break;
        }
        match loader_string(regs.argv, index) {
            Some(word) => {
                cmdline.words[cmdline.count] = word;
                cmdline.count += 1;
            }
            None => break,
        }
    }
    cmdline
}

/// Looks up `name` in the loader environment: YAMON-style name/value entry pairs, or a
/// single `name=value` entry.
pub fn loader_env(regs: &LoaderRegs, name: &str) -> Option<&'static str> {
    if regs.envp == 0 {
        return None;
    }
    let mut index = 0;
    while index < MAX_LOADER_ENTRIES {
        let entry = loader_string(regs.envp, index)?;
        if let Some(value) = entry.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            return Some(value);
        }
        if entry == name {
            return loader_string(regs.envp, index + 1);
        }
        index += if entry.contains('=') { 1 } else { 2 };
    }
    None
}
