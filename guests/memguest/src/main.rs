//! The mipsvisor memory-services guest (issue 6): a workload that gives the hypervisor's
//! dedup, swap and idle-tracking services something to do and checks they lose nothing.
//!
//! The workload comes from VM info key 9 (`workload` in the VM's configuration) and its
//! argument from key 10 (`workload-arg`):
//! - dedup (arg = seed): fill RAM with zero, VM-unique and shared pages, wait for two dedup
//!   full scans (key 11), write VM-unique data into every 7th shared page, verify all;
//! - swap (arg = waves, default 4): write RAM in waves, verifying all written so far after
//!   each wave;
//! - idle (arg = working-set pages, default 256): touch all RAM once, then keep touching
//!   the same pages until eight idle-tracking passes (key 12) went by;
//! - stress (arg = operations, default 300000): random page writes and verified reads
//!   against per-page versions kept in guest RAM;
//! - hog (arg = pages, default all free RAM): write every page once, then verify them all
//!   (a VM that goes over its memory limit when its limit is below its RAM);
//! - stuck-wait, stuck-yield, stuck-storm: never finish, in three ways the hypervisor's
//!   watchdog must catch (WAIT with only a never-raised interrupt line unmasked; the yield
//!   hypercall forever; BREAK and TEQ traps alternating between two PCs forever).
//!
//! Balloon is a workload too (code 2), but the `balloonguest` image runs it. Every page is
//! reached through the KSEG0 window (GPA = page * 4096), written whole and verified whole
//! against `guest_patterns::memwork`. Waits for the services are bounded: a guest that
//! never sees them progress says so and exits with [`status::NO_PROGRESS`].

#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

use guest_patterns::memwork::{
    self, PageFill, PageSpan, StressLayout, StressOp, StressRng, VersionBook, WaitBudget,
    PAGE_BYTES, PAGE_WORDS,
};
use guest_rt::hypercall::{self, HypercallError, VmInfoKey};
use guest_rt::{cp0, println};

guest_rt::entry!(main);

/// Exit statuses (besides guest-rt's 101 for a panic).
mod status {
    /// Every check passed.
    pub const PASS: u64 = 0;
    /// A page read back wrong.
    pub const BAD_MEMORY: u64 = 1;
    /// No usable workload, RAM size or free RAM.
    pub const SETUP: u64 = 2;
    /// Memory verified, but the service counter it waited for did not move in time.
    pub const NO_PROGRESS: u64 = 3;
}

/// Workload codes of VM info key 9.
mod workload {
    pub const DEDUP: u64 = 1;
    pub const BALLOON: u64 = 2;
    pub const SWAP: u64 = 3;
    pub const IDLE: u64 = 4;
    pub const STRESS: u64 = 5;
    pub const HOG: u64 = 6;
    pub const STUCK_WAIT: u64 = 7;
    pub const STUCK_YIELD: u64 = 8;
    pub const STUCK_STORM: u64 = 9;
}

/// Hog mode: pages between two progress lines.
const HOG_PROGRESS_PAGES: u64 = 4096;

/// Dedup full scans to wait for after the fill.
const DEDUP_SCANS_WANTED: u64 = 2;
/// Idle-tracking passes to keep the working set busy for.
const IDLE_PASSES_WANTED: u64 = 8;
/// Guest Count ticks a wait for a service counter may take before the guest gives up: about
/// 30 s (Count runs at about 200 MHz under QEMU; under -icount it is virtual time, like the
/// services' own pacing).
const WAIT_MAX_TICKS: u64 = 6_000_000_000;
/// Yields a wait may take whatever Count says (in case Count does not advance).
const WAIT_MAX_YIELDS: u64 = 5_000_000;
/// Swap mode's waves unless key 10 says otherwise.
const DEFAULT_SWAP_WAVES: u64 = 4;
/// Idle mode's working set in pages unless key 10 says otherwise.
const DEFAULT_IDLE_PAGES: u64 = 256;
/// Stress mode's operations unless key 10 says otherwise.
const DEFAULT_STRESS_OPS: u64 = 300_000;
/// Stress operations between progress lines.
const STRESS_PROGRESS_OPS: u64 = 100_000;
/// Bad pages described one by one before the guest only counts them.
const BAD_PAGES_SHOWN: u64 = 8;

/// What every workload knows: this VM's number and the RAM pages above the image.
struct Env {
    vm: u64,
    free: PageSpan,
}

fn main() -> u64 {
    let Ok(ram) = hypercall::vm_info(VmInfoKey::RamBytes) else {
        println!("memguest: FAIL no RAM size from VM info key 3");
        return status::SETUP;
    };
    let vm = hypercall::vm_info(VmInfoKey::VmNumber).unwrap_or(0);
    let first = guest_rt::image_end_gpa().div_ceil(PAGE_BYTES);
    let end = ram.min(guest_rt::WINDOW_BYTES) / PAGE_BYTES;
    if end <= first {
        println!("memguest: FAIL no RAM above the image ({ram} bytes)");
        return status::SETUP;
    }
    let env = Env {
        vm,
        free: PageSpan { start: first, end },
    };
    let code = match hypercall::vm_info(VmInfoKey::Workload) {
        Ok(code) => code,
        Err(e) => {
            println!("memguest: FAIL no workload from VM info key 9 ({e}); set `workload` in the VM's node");
            return status::SETUP;
        }
    };
    let arg = match hypercall::vm_info(VmInfoKey::WorkloadArg) {
        Ok(arg) => Some(arg),
        Err(HypercallError::BadArgument) => None,
        Err(e) => {
            println!("memguest: FAIL VM info key 10: {e}");
            return status::SETUP;
        }
    };
    // Key 13 is balloonguest's; shown so a run also checks the hypervisor's answer.
    let balloon = hypercall::vm_info(VmInfoKey::BalloonGpa).ok();
    println!(
        "memguest: vm {vm} workload {code} arg {} ram {} KiB, pages {first}..{end}, balloon {}",
        ArgText(arg),
        ram >> 10,
        GpaText(balloon)
    );
    match code {
        workload::DEDUP => dedup(&env, arg.unwrap_or(0)),
        workload::SWAP => swap(&env, arg.unwrap_or(DEFAULT_SWAP_WAVES)),
        workload::IDLE => idle(&env, arg.unwrap_or(DEFAULT_IDLE_PAGES)),
        workload::STRESS => stress(&env, arg.unwrap_or(DEFAULT_STRESS_OPS)),
        workload::HOG => hog(&env, arg),
        workload::STUCK_WAIT => stuck_wait(),
        workload::STUCK_YIELD => stuck_yield(),
        workload::STUCK_STORM => stuck_storm(),
        workload::BALLOON => {
            println!("memguest: FAIL workload balloon is run by the balloonguest image");
            status::SETUP
        }
        other => {
            println!("memguest: FAIL unknown workload code {other}");
            status::SETUP
        }
    }
}

/// Prints an optional argument as a number or `default`.
struct ArgText(Option<u64>);

impl core::fmt::Display for ArgText {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{v}"),
            None => f.write_str("default"),
        }
    }
}

/// Prints an optional guest physical address in hex, or `none`.
struct GpaText(Option<u64>);

impl core::fmt::Display for GpaText {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(gpa) => write!(f, "{gpa:#x}"),
            None => f.write_str("none"),
        }
    }
}

/// The window address of the first word of guest page `page`.
fn page_words(page: u64) -> *mut u64 {
    guest_rt::window_address(page * PAGE_BYTES) as *mut u64
}

/// Writes every word of `page`.
fn write_page(page: u64, fill: PageFill) {
    let words = page_words(page);
    for w in 0..PAGE_WORDS {
        // SAFETY: `page` is guest RAM above the image (callers stay inside `Env::free`),
        // reached through the window; nothing else in the guest refers to it.
        unsafe { words.add(w).write_volatile(fill.word(w)) };
    }
}

/// Words of `page` that differ from `fill` (every word is read).
fn page_mismatches(page: u64, fill: PageFill) -> usize {
    let words = page_words(page);
    // SAFETY: as in `write_page`; loads only.
    fill.mismatches(|w| unsafe { words.add(w).read_volatile() })
}

/// Counts and describes pages that read back wrong.
#[derive(Default)]
struct BadPages {
    count: u64,
}

impl BadPages {
    /// Checks `page` against `fill`; true if it is right.
    fn check(&mut self, page: u64, fill: PageFill, what: &str) -> bool {
        let wrong = page_mismatches(page, fill);
        if wrong == 0 {
            return true;
        }
        if self.count < BAD_PAGES_SHOWN {
            println!(
                "memguest: bad page {page} (GPA {:#x}, {what}): {wrong} of {PAGE_WORDS} words differ",
                page * PAGE_BYTES
            );
        }
        self.count += 1;
        false
    }
}

/// Reads a service counter; an error answer (an older hypervisor) counts as 0.
fn counter(key: VmInfoKey) -> u64 {
    hypercall::vm_info(key).unwrap_or(0)
}

/// Yields until counter `key` reached `target`, doing `between` before each yield.
/// Returns the counter's last value and the budget spent; `Err` if [`WAIT_MAX_TICKS`] of
/// Count or [`WAIT_MAX_YIELDS`] yields went by first.
fn wait_for(
    key: VmInfoKey,
    target: u64,
    mut between: impl FnMut(),
) -> Result<(u64, WaitBudget), (u64, WaitBudget)> {
    let mut budget = WaitBudget::new(WAIT_MAX_TICKS, WAIT_MAX_YIELDS, cp0::count());
    loop {
        let value = counter(key);
        if value >= target {
            return Ok((value, budget));
        }
        if !budget.tick(cp0::count()) {
            return Err((value, budget));
        }
        between();
        let _ = hypercall::yield_now();
        budget.yielded();
    }
}

/// Verifies every free page against `fill(page)` and prints the contract's summary line.
fn verify_all(env: &Env, what: &str, fill: impl Fn(u64) -> PageFill) -> u64 {
    let mut bad = BadPages::default();
    for page in env.free.start..env.free.end {
        bad.check(page, fill(page), what);
    }
    println!(
        "memguest: verified {} pages, {} bad",
        env.free.len(),
        bad.count
    );
    bad.count
}

/// Dedup mode: see the file comment. `seed` varies the VM-unique pages.
fn dedup(env: &Env, seed: u64) -> u64 {
    let vm = env.vm;
    // Pages per class: zero, unique, shared (what dedup could merge is zero + shared).
    let mut classes = [0u64; 3];
    for page in env.free.start..env.free.end {
        write_page(page, memwork::dedup_fill(vm, seed, page, false));
        classes[memwork::dedup_class(page) as usize] += 1;
    }
    let [zero, unique, shared] = classes;
    println!(
        "memguest: dedup filled {} pages ({zero} zero, {unique} unique, {shared} shared)",
        env.free.len()
    );
    let start = counter(VmInfoKey::DedupFullScans);
    let waited = wait_for(VmInfoKey::DedupFullScans, start + DEDUP_SCANS_WANTED, || {});
    match waited {
        Ok((now, w)) => println!(
            "memguest: dedup full scans {start} -> {now} after {} yields",
            w.yields
        ),
        Err((now, w)) => println!(
            "memguest: FAIL gave up waiting for dedup full scans: {start} -> {now} after {} yields, {} Mticks (want +{DEDUP_SCANS_WANTED}); is dedup running?",
            w.yields, w.ticks / 1_000_000
        ),
    }
    let mut written = 0u64;
    for page in (env.free.start..env.free.end).filter(|&p| memwork::dedup_cow_target(p)) {
        write_page(page, memwork::dedup_fill(vm, seed, page, true));
        written += 1;
    }
    println!("memguest: copy-on-write into {written} shared pages");
    let bad = verify_all(env, "dedup", |page| {
        memwork::dedup_fill(vm, seed, page, true)
    });
    match (bad, waited) {
        (0, Ok(_)) => status::PASS,
        (0, Err(_)) => status::NO_PROGRESS,
        _ => status::BAD_MEMORY,
    }
}

/// Swap mode: RAM written in `waves` pieces, everything so far verified after each.
fn swap(env: &Env, waves: u64) -> u64 {
    let waves = waves.clamp(1, env.free.len());
    let vm = env.vm;
    // The wave a page was written in: the piece holding it.
    let mut total_bad = 0;
    for wave in 0..waves {
        let Some(piece) = env.free.piece(waves, wave) else {
            break;
        };
        for page in piece.start..piece.end {
            write_page(page, memwork::swap_fill(vm, wave, page));
        }
        let mut bad = BadPages::default();
        let mut checked = 0;
        for done in 0..=wave {
            let Some(earlier) = env.free.piece(waves, done) else {
                break;
            };
            for page in earlier.start..earlier.end {
                bad.check(page, memwork::swap_fill(vm, done, page), "swap");
                checked += 1;
            }
        }
        println!(
            "memguest: swap wave {}/{waves} wrote {} pages, verified {checked} pages, {} bad",
            wave + 1,
            piece.len(),
            bad.count
        );
        total_bad += bad.count;
        // Give the services a chance to balance between waves.
        let _ = hypercall::yield_now();
    }
    println!(
        "memguest: verified {} pages, {total_bad} bad",
        env.free.len()
    );
    if total_bad == 0 {
        status::PASS
    } else {
        status::BAD_MEMORY
    }
}

/// Idle mode: a working set of `pages` pages at the bottom of free RAM stays busy while
/// the rest stays idle, until [`IDLE_PASSES_WANTED`] tracking passes went by.
fn idle(env: &Env, pages: u64) -> u64 {
    let vm = env.vm;
    for page in env.free.start..env.free.end {
        write_page(page, memwork::idle_fill(vm, page));
    }
    let pages = pages.clamp(1, env.free.len());
    let set = PageSpan {
        start: env.free.start,
        end: env.free.start + pages,
    };
    println!(
        "memguest: working set {pages} pages (GPA {:#x}..{:#x}), {} pages idle",
        set.start * PAGE_BYTES,
        set.end * PAGE_BYTES,
        env.free.len() - pages
    );
    let start = counter(VmInfoKey::IdlePasses);
    let mut loops = 0u64;
    let waited = wait_for(VmInfoKey::IdlePasses, start + IDLE_PASSES_WANTED, || {
        for page in set.start..set.end {
            let word = page_words(page);
            // SAFETY: as in `write_page`; one word read and written back unchanged.
            unsafe { word.write_volatile(word.read_volatile()) };
        }
        loops += 1;
    });
    match waited {
        Ok((now, _)) => println!("memguest: idle passes {start} -> {now} after {loops} loops"),
        Err((now, w)) => println!(
            "memguest: FAIL gave up waiting for idle passes: {start} -> {now} after {} yields, {} Mticks (want +{IDLE_PASSES_WANTED}); is idle tracking running?",
            w.yields, w.ticks / 1_000_000
        ),
    }
    let bad = verify_all(env, "idle", |page| memwork::idle_fill(vm, page));
    match (bad, waited) {
        (0, Ok(_)) => status::PASS,
        (0, Err(_)) => status::NO_PROGRESS,
        _ => status::BAD_MEMORY,
    }
}

/// Stress mode: `ops` random page writes and verified reads, then a final sweep.
fn stress(env: &Env, ops: u64) -> u64 {
    let vm = env.vm;
    let Some(layout) = StressLayout::new(env.free) else {
        println!("memguest: FAIL too little RAM for stress mode");
        return status::SETUP;
    };
    let tested = layout.tested;
    let table = page_words(layout.table.start) as *mut u32;
    // SAFETY: the table pages are guest RAM above the image, reached through the window,
    // used only through this slice, and large enough (StressLayout sizes them).
    let versions = unsafe { core::slice::from_raw_parts_mut(table, tested.len() as usize) };
    let mut book = VersionBook::new(versions);
    for page in tested.start..tested.end {
        write_page(page, memwork::stress_fill(vm, page, 0));
    }
    println!(
        "memguest: stress {ops} ops over {} pages ({} table pages)",
        tested.len(),
        layout.table.len()
    );
    let mut rng = StressRng::new(vm);
    let mut bad = BadPages::default();
    for op in 1..=ops {
        match rng.next_op(tested.len()) {
            StressOp::Write(index) => {
                let version = book.bump(index);
                let page = tested.start + index;
                write_page(page, memwork::stress_fill(vm, page, version));
            }
            StressOp::Read(index) => {
                let page = tested.start + index;
                let fill = memwork::stress_fill(vm, page, book.expected(index));
                if !bad.check(page, fill, "stress read") {
                    // Rewrite it so one loss is counted once.
                    let version = book.bump(index);
                    write_page(page, memwork::stress_fill(vm, page, version));
                }
            }
        }
        if op % STRESS_PROGRESS_OPS == 0 && op != ops {
            println!("memguest: stress {op}/{ops} ops, {} bad so far", bad.count);
        }
    }
    for index in 0..tested.len() {
        let page = tested.start + index;
        let fill = memwork::stress_fill(vm, page, book.expected(index));
        bad.check(page, fill, "stress final sweep");
    }
    println!("memguest: stress ops {ops} bad_pages {}", bad.count);
    if bad.count == 0 {
        status::PASS
    } else {
        status::BAD_MEMORY
    }
}

/// Hog mode: writes `pages` free pages (all of them by default) in order, one line every
/// [`HOG_PROGRESS_PAGES`], then verifies them.
fn hog(env: &Env, pages: Option<u64>) -> u64 {
    let count = pages.unwrap_or(env.free.len()).min(env.free.len());
    let span = PageSpan {
        start: env.free.start,
        end: env.free.start + count,
    };
    let fill = |page: u64| memwork::unique(env.vm, 0x40, page);
    for page in span.start..span.end {
        write_page(page, fill(page));
        let done = page - span.start + 1;
        if done.is_multiple_of(HOG_PROGRESS_PAGES) {
            println!("memguest: hog wrote {done} of {count} pages");
        }
    }
    let mut bad = BadPages::default();
    for page in span.start..span.end {
        bad.check(page, fill(page), "hog");
    }
    println!("memguest: hog verified {count} pages, {} bad", bad.count);
    if bad.count == 0 {
        status::PASS
    } else {
        status::BAD_MEMORY
    }
}

/// Status.IM6: hardware interrupt 4, a line no mipsvisor device drives.
const STATUS_IM6: u32 = 1 << 14;

/// Stuck-wait: WAIT forever with only IM6 unmasked (no device raises it, the timer is
/// masked), so nothing ever wakes the vCPU.
fn stuck_wait() -> u64 {
    println!("memguest: stuck-wait: WAIT with only IM6 unmasked");
    let status = cp0::status() & !(cp0::STATUS_IM_MASK | cp0::STATUS_IE);
    // SAFETY: only interrupt masks change; no handler is needed since none is enabled
    // that can be raised.
    unsafe { cp0::set_status(status | STATUS_IM6 | cp0::STATUS_IE) };
    loop {
        cp0::wait();
    }
}

/// Stuck-yield: the yield hypercall forever.
fn stuck_yield() -> u64 {
    println!("memguest: stuck-yield: yielding forever");
    loop {
        let _ = hypercall::yield_now();
    }
}

/// Steps over the BREAK or TEQ that trapped (both sit outside delay slots).
fn skip_trap(frame: &mut guest_rt::trap::TrapFrame, info: &guest_rt::trap::TrapInfo) {
    match info.exc_code() {
        9 | 13 => frame.skip_instruction(info.cause),
        _ => guest_rt::trap::unexpected(frame, info),
    }
}

/// Stuck-storm: BREAK and TEQ alternate forever, each reflected to our handler, which
/// steps over it: the exits alternate between two PCs (and the handler's few CP0 accesses).
fn stuck_storm() -> u64 {
    println!("memguest: stuck-storm: BREAK/TEQ forever");
    guest_rt::trap::install(skip_trap);
    loop {
        // SAFETY: both trap into our handler, which skips them; no registers change.
        unsafe {
            core::arch::asm!("break", "teq $zero, $zero", options(nostack, nomem));
        }
    }
}
