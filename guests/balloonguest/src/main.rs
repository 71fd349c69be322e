//! The mipsvisor balloon guest (issue 6, scenario `balloon`).
//!
//! A polling virtio-mmio balloon driver (`virtio.rs`) and the workload of the services
//! contract, section 2:
//!
//! 1. Finds the balloon (VM-info key 13, else GPA `0x1f00_1000` as in configs/balloon.dts),
//!    checks magic, version and device id, negotiates VERSION_1, STATS_VQ, DEFLATE_ON_OOM
//!    and REPORTING when offered, sets up its queues and posts a statistics buffer.
//! 2. Hostile requests, each of which the host must refuse and count: PFNs beyond RAM and
//!    in the device hole, a duplicate inflate and a deflate of a page not inflated, a
//!    descriptor outside RAM, a chain of more PFNs than allowed, a PFN array of odd length,
//!    a descriptor loop and an unaligned free page report. Prints
//!    `BALLOON hostile sent=N ...` (N = refusals the host should count).
//! 3. Fills its free RAM with a pattern; reports a small scratch range as free (free page
//!    reporting) and checks that it reads zero afterwards.
//! 4. Takes the balloon's interrupt (hardware line 1, Cause.IP3): the handler acknowledges
//!    it and counts configuration changes and used buffers. The driver does not depend on
//!    it: it polls the configuration each yield, and inflates (pages from the top of RAM, at most 256
//!    PFNs a chain) while `num_pages > actual`, deflates while `num_pages < actual`, updates
//!    `actual`, answers statistics requests. Ends once it has inflated to a nonzero target
//!    and is back at 0 (bounded number of polls).
//! 5. Re-touches and verifies: pages it kept hold the pattern, pages it gave back read
//!    zero; then writes and verifies the pattern everywhere. Prints
//!    `BALLOON verify pages=N zero=N bad=N` and exits 0 iff everything held.

#![no_std]
#![no_main]

mod virtio;

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicU64, Ordering};
use guest_rt::hypercall::{self, VmInfoKey};
use guest_rt::trap::{self, exc, TrapFrame, TrapInfo};
use guest_rt::{cp0, println, window_address};
use virtio::{Desc, Queue, Transport, VirtioError, DESC_F_NEXT, DESC_F_WRITE};

guest_rt::entry!(main);

/// Exit statuses.
mod exit {
    pub const PASS: u64 = 0;
    pub const MEMORY: u64 = 1;
    pub const SETUP: u64 = 2;
    pub const DEVICE: u64 = 3;
    pub const HOSTILE: u64 = 4;
    pub const TIMEOUT: u64 = 5;
}

/// Where configs/balloon.dts puts the balloon when key 13 is not answered.
const FALLBACK_BALLOON_GPA: u64 = 0x1f00_1000;
/// Virtio device id of the balloon.
const BALLOON_ID: u32 = 5;

/// Balloon feature bits.
const F_STATS_VQ: u64 = 1 << 1;
const F_DEFLATE_ON_OOM: u64 = 1 << 2;
const F_REPORTING: u64 = 1 << 5;
/// Configuration offsets.
const CFG_NUM_PAGES: u64 = 0;
const CFG_ACTUAL: u64 = 4;

const PAGE: u64 = 4096;
/// PFNs in one inflate or deflate chain (as Linux sends).
const PFNS_PER_CHAIN: usize = 256;
/// The device's limit: a chain with more PFNs is refused whole.
const DEVICE_MAX_PFNS: usize = 1024;
/// Pages at the bottom of free RAM used as scratch (hostile inflate, free page report).
const SCRATCH_PAGES: u64 = 16;
/// Polls of the configuration before giving up (each one yields).
const MAX_POLLS: u64 = 400_000;
/// Statistics tags (virtio 1.2, section 5.5.6.3).
const STAT_MEMFREE: u16 = 4;
const STAT_MEMTOT: u16 = 5;
const STAT_AVAIL: u16 = 6;

/// Cause.IP3 / Status.IM3: the balloon's interrupt line (docs/guest-abi.md, section 4).
const BALLOON_IP: u32 = 1 << 11;
/// InterruptStatus bits.
const INT_USED_BUFFER: u32 = 1;
const INT_CONFIG_CHANGE: u32 = 2;

/// The balloon's registers, for the interrupt handler (set before interrupts are enabled).
static DEVICE_GPA: AtomicU64 = AtomicU64::new(0);
/// Interrupts taken that reported a configuration change.
static CONFIG_IRQS: AtomicU64 = AtomicU64::new(0);
/// Interrupts taken that reported used buffers.
static USED_IRQS: AtomicU64 = AtomicU64::new(0);

/// PFN arrays and the statistics buffer handed to the device.
static mut PFNS: [u32; DEVICE_MAX_PFNS + 4] = [0; DEVICE_MAX_PFNS + 4];
static mut STATS: [u8; 30] = [0; 30];

/// The pattern word at guest physical address `gpa` of VM `vm`.
fn pattern(vm: u64, gpa: u64) -> u64 {
    (gpa ^ (vm << 56) ^ 0x0b41_100e).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
}

fn word_ptr(gpa: u64) -> *mut u64 {
    window_address(gpa) as *mut u64
}

/// Writes the pattern over pages `pages`.
fn fill(vm: u64, pages: core::ops::Range<u64>) {
    for gpa in (pages.start * PAGE..pages.end * PAGE).step_by(8) {
        // SAFETY: the page is RAM of this VM above the image (callers pass free pages).
        unsafe { write_volatile(word_ptr(gpa), pattern(vm, gpa)) };
    }
}

/// Whether page `page` holds the pattern (`Some(true)`), zeros (`Some(false)`) or
/// anything else (`None`).
fn page_contents(vm: u64, page: u64) -> Option<bool> {
    let (mut pattern_ok, mut zero_ok) = (true, true);
    for gpa in (page * PAGE..(page + 1) * PAGE).step_by(8) {
        // SAFETY: as for `fill`.
        let word = unsafe { read_volatile(word_ptr(gpa)) };
        pattern_ok &= word == pattern(vm, gpa);
        zero_ok &= word == 0;
    }
    match (pattern_ok, zero_ok) {
        (true, _) => Some(true),
        (false, true) => Some(false),
        _ => None,
    }
}

/// The balloon driver's state.
struct Balloon {
    dev: Transport,
    inflate: Queue,
    deflate: Queue,
    stats: Option<Queue>,
    reporting: Option<Queue>,
    /// Balloon pages are taken from the top: page `top - 1 - i` is the i-th one inflated.
    top: u64,
    /// Pages the balloon may hold (free RAM above the scratch pages).
    limit: u64,
    actual: u64,
    ram_bytes: u64,
    stats_sent: u64,
}

fn pfn_buffer() -> *mut u32 {
    &raw mut PFNS as *mut u32
}

impl Balloon {
    fn open(gpa: u64) -> Result<(Self, u64), VirtioError> {
        let dev = Transport::at(gpa);
        dev.probe(BALLOON_ID)?;
        let features = dev.negotiate(F_STATS_VQ | F_DEFLATE_ON_OOM | F_REPORTING)?;
        // Queues that exist are numbered consecutively (as Linux's virtio-mmio driver does).
        let inflate = dev.setup_queue(0)?;
        let deflate = dev.setup_queue(1)?;
        let mut next = 2;
        let stats = if features & F_STATS_VQ != 0 {
            next += 1;
            Some(dev.setup_queue(next - 1)?)
        } else {
            None
        };
        let reporting = if features & F_REPORTING != 0 {
            Some(dev.setup_queue(next)?)
        } else {
            None
        };
        let ram_bytes = hypercall::vm_info(VmInfoKey::RamBytes).unwrap_or(0);
        let top = ram_bytes / PAGE;
        let first_free = guest_rt::image_end_gpa().div_ceil(PAGE) + SCRATCH_PAGES;
        let mut balloon = Self {
            dev,
            inflate,
            deflate,
            stats,
            reporting,
            top,
            limit: top.saturating_sub(first_free),
            actual: 0,
            ram_bytes,
            stats_sent: 0,
        };
        dev.driver_ok();
        balloon.post_stats();
        Ok((balloon, features))
    }

    /// Puts fresh numbers in the statistics buffer and makes it available (the device
    /// keeps it until the host wants newer ones).
    fn post_stats(&mut self) {
        let free = (self.limit - self.actual) * PAGE;
        let entries = [
            (STAT_MEMFREE, free),
            (STAT_MEMTOT, self.ram_bytes),
            (STAT_AVAIL, free),
        ];
        let Some(q) = self.stats.as_mut() else {
            return;
        };
        let buf = &raw mut STATS as *mut u8;
        for (i, (tag, value)) in entries.iter().enumerate() {
            let mut entry = [0u8; 10];
            entry[..2].copy_from_slice(&tag.to_le_bytes());
            entry[2..].copy_from_slice(&value.to_le_bytes());
            for (j, b) in entry.iter().enumerate() {
                // SAFETY: 3 entries of 10 bytes fill the 30-byte static exactly.
                unsafe { write_volatile(buf.add(10 * i + j), *b) };
            }
        }
        q.put_descriptors(&[Desc {
            addr: virtio::gpa_of(buf),
            len: 30,
            flags: 0,
            next: 0,
        }]);
        q.publish(0);
        self.stats_sent += 1;
    }

    /// Writes `pfns` into the PFN buffer.
    fn load_pfns(pfns: impl Iterator<Item = u32>) -> u32 {
        let mut n = 0usize;
        for pfn in pfns.take(DEVICE_MAX_PFNS + 4) {
            // SAFETY: `n` stays below the buffer's length.
            unsafe { write_volatile(pfn_buffer().add(n), pfn) };
            n += 1;
        }
        n as u32
    }

    /// Sends the PFN array `pfns` on the inflate (`true`) or deflate queue; returns the
    /// used length (0 from this device).
    fn send_pfns(
        &mut self,
        inflate: bool,
        pfns: impl Iterator<Item = u32>,
    ) -> Result<u32, VirtioError> {
        let n = Self::load_pfns(pfns);
        let desc = Desc {
            addr: virtio::gpa_of(pfn_buffer()),
            len: 4 * n,
            flags: 0,
            next: 0,
        };
        let q = if inflate {
            &mut self.inflate
        } else {
            &mut self.deflate
        };
        q.submit(&[desc]).map(|used| used.len)
    }

    /// Inflates or deflates by up to one chain toward `target`; returns pages moved.
    fn step_toward(&mut self, target: u64) -> Result<u64, VirtioError> {
        let target = target.min(self.limit);
        let (top, actual) = (self.top, self.actual);
        if target > actual {
            let n = (target - actual).min(PFNS_PER_CHAIN as u64);
            // The next pages down from the top.
            self.send_pfns(true, (actual..actual + n).map(|i| (top - 1 - i) as u32))?;
            self.actual += n;
            Ok(n)
        } else if target < actual {
            let n = (actual - target).min(PFNS_PER_CHAIN as u64);
            // The most recently inflated pages first.
            self.send_pfns(false, (actual - n..actual).map(|i| (top - 1 - i) as u32))?;
            self.actual -= n;
            Ok(n)
        } else {
            Ok(0)
        }
    }

    /// Answers a statistics request (the device gave our buffer back).
    fn serve_stats(&mut self) {
        let returned = self.stats.as_mut().is_some_and(|q| q.poll_used().is_some());
        if returned {
            self.post_stats();
        }
    }
}

/// Exceptions: only the balloon's interrupt is expected. The handler acknowledges what the
/// device reports (which lowers the line) and counts it.
fn handle_exception(frame: &mut TrapFrame, info: &TrapInfo) {
    let pending = info.cause & info.status & cp0::STATUS_IM_MASK;
    if info.exc_code() != exc::INT || pending & BALLOON_IP == 0 {
        trap::unexpected(frame, info);
    }
    let status = Transport::at(DEVICE_GPA.load(Ordering::Relaxed)).ack_interrupts();
    if status & INT_CONFIG_CHANGE != 0 {
        CONFIG_IRQS.fetch_add(1, Ordering::Relaxed);
    }
    if status & INT_USED_BUFFER != 0 {
        USED_IRQS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sends the hostile requests; returns how many refusals the host should have counted.
fn hostile(b: &mut Balloon, scratch: u64) -> Result<u64, &'static str> {
    let ram_pages = (b.ram_bytes / PAGE) as u32;
    let mut sent = 0u64;
    let device_err = |_| "device error during a hostile request";
    // PFNs that are no RAM: beyond RAM, and the balloon's own register page.
    b.send_pfns(
        true,
        [ram_pages + 16, (FALLBACK_BALLOON_GPA / PAGE) as u32].into_iter(),
    )
    .map_err(device_err)?;
    sent += 2;
    // The same page twice in one inflate chain: the second is a duplicate.
    let x = scratch as u32;
    b.send_pfns(true, [x, x].into_iter()).map_err(device_err)?;
    sent += 1;
    // Deflate it (fine), then deflate it again (not inflated: a duplicate).
    b.send_pfns(false, [x].into_iter()).map_err(device_err)?;
    b.send_pfns(false, [x].into_iter()).map_err(device_err)?;
    sent += 1;
    // A descriptor pointing outside RAM.
    let outside = Desc {
        addr: b.ram_bytes + 0x10_0000,
        len: 64,
        flags: 0,
        next: 0,
    };
    b.inflate.submit(&[outside]).map_err(device_err)?;
    sent += 1;
    // An oversized chain: one PFN more than the device takes.
    let n = Balloon::load_pfns((0..=DEVICE_MAX_PFNS as u32).map(|i| x + (i % 4)));
    let big = Desc {
        addr: virtio::gpa_of(pfn_buffer()),
        len: 4 * n,
        flags: 0,
        next: 0,
    };
    b.inflate.submit(&[big]).map_err(device_err)?;
    sent += 1;
    // A PFN array whose length is no multiple of 4 bytes.
    let odd = Desc { len: 6, ..big };
    b.deflate.submit(&[odd]).map_err(device_err)?;
    sent += 1;
    // A descriptor that links to itself: the walk must stop, not loop.
    b.inflate.put_descriptors(&[Desc {
        len: 4,
        flags: DESC_F_NEXT,
        next: 0,
        ..big
    }]);
    b.inflate.publish(0);
    b.inflate.wait_used().map_err(device_err)?;
    sent += 1;
    // An unaligned free page report.
    if let Some(q) = b.reporting.as_mut() {
        let report = Desc {
            addr: scratch * PAGE + 1,
            len: PAGE as u32,
            flags: DESC_F_WRITE,
            next: 0,
        };
        q.submit(&[report]).map_err(device_err)?;
        sent += 1;
    }
    if b.dev.needs_reset() {
        return Err("the device asks for a reset after hostile requests");
    }
    Ok(sent)
}

/// Fills scratch pages, reports them free and checks they read zero afterwards.
fn report_scratch(b: &mut Balloon, vm: u64, scratch: u64) -> Result<bool, VirtioError> {
    let Some(q) = b.reporting.as_mut() else {
        return Ok(false);
    };
    fill(vm, scratch..scratch + SCRATCH_PAGES);
    q.submit(&[Desc {
        addr: scratch * PAGE,
        len: (SCRATCH_PAGES * PAGE) as u32,
        flags: DESC_F_WRITE,
        next: 0,
    }])?;
    Ok((scratch..scratch + SCRATCH_PAGES).all(|p| page_contents(vm, p) == Some(false)))
}

fn main() -> u64 {
    let vm = hypercall::vm_info(VmInfoKey::VmNumber).unwrap_or(0);
    let gpa = hypercall::vm_info(VmInfoKey::BalloonGpa).unwrap_or(FALLBACK_BALLOON_GPA);
    let (mut b, features) = match Balloon::open(gpa) {
        Ok(opened) => opened,
        Err(e) => {
            println!("balloonguest: FAIL balloon at {gpa:#x}: {e}");
            return exit::DEVICE;
        }
    };
    DEVICE_GPA.store(gpa, Ordering::Relaxed);
    trap::install(handle_exception);
    // SAFETY: the handler above serves the only interrupt unmasked here.
    unsafe { cp0::set_status(cp0::status() | BALLOON_IP | cp0::STATUS_IE) };
    let scratch = guest_rt::image_end_gpa().div_ceil(PAGE);
    println!(
        "balloonguest: balloon at {gpa:#x}, features {features:#x}, ram {} MiB, up to {} pages",
        b.ram_bytes >> 20,
        b.limit
    );
    if b.limit == 0 {
        println!("balloonguest: FAIL no free RAM to balloon");
        return exit::SETUP;
    }

    println!("balloonguest: sending deliberately bad requests; the host must refuse each one");
    let sent = match hostile(&mut b, scratch) {
        Ok(sent) => sent,
        Err(why) => {
            println!("balloonguest: FAIL {why}");
            return exit::HOSTILE;
        }
    };
    println!("BALLOON hostile sent={sent}");

    let (first, top) = (scratch + SCRATCH_PAGES, b.top);
    fill(vm, first..top);
    let reported = match report_scratch(&mut b, vm, scratch) {
        Ok(r) => r,
        Err(e) => {
            println!("balloonguest: FAIL free page report: {e}");
            return exit::DEVICE;
        }
    };
    if b.reporting.is_some() && !reported {
        println!("balloonguest: FAIL reported pages do not read zero");
        return exit::MEMORY;
    }
    println!(
        "balloonguest: filled {} pages, reported {} free",
        top - first,
        if reported { SCRATCH_PAGES } else { 0 }
    );

    // Follow the target until we have been inflated and are back at 0.
    let mut most = 0u64;
    let mut polls = 0u64;
    loop {
        if polls == MAX_POLLS {
            println!(
                "balloonguest: FAIL target never came back to 0 (actual {}, most {most})",
                b.actual
            );
            return exit::TIMEOUT;
        }
        polls += 1;
        let _ = hypercall::yield_now();
        b.dev.ack_interrupts();
        b.serve_stats();
        let target = u64::from(b.dev.config_u32(CFG_NUM_PAGES));
        loop {
            match b.step_toward(target) {
                Ok(0) => break,
                Ok(_) => b.dev.set_config_u32(CFG_ACTUAL, b.actual as u32),
                Err(e) => {
                    println!("balloonguest: FAIL balloon request: {e}");
                    return exit::DEVICE;
                }
            }
        }
        if b.actual > most {
            most = b.actual;
            println!("balloonguest: inflated to {most} pages");
        }
        if most > 0 && target == 0 && b.actual == 0 {
            break;
        }
    }
    println!(
        "balloonguest: deflated to 0 after {polls} polls, {} statistics updates",
        b.stats_sent
    );
    println!(
        "BALLOON interrupts config={} used={}",
        CONFIG_IRQS.load(Ordering::Relaxed),
        USED_IRQS.load(Ordering::Relaxed)
    );

    // Pages the balloon held read zero; the others kept the pattern.
    let given_back = top - most..top;
    let (mut zero, mut bad) = (0u64, 0u64);
    for page in first..top {
        let want_zero = given_back.contains(&page);
        match page_contents(vm, page) {
            Some(false) if want_zero => zero += 1,
            Some(true) if !want_zero => {}
            _ => bad += 1,
        }
    }
    // Re-touch everything and read it back.
    fill(vm, first..top);
    bad += (first..top)
        .filter(|&p| page_contents(vm, p) != Some(true))
        .count() as u64;
    println!("BALLOON verify pages={} zero={zero} bad={bad}", top - first);
    if bad == 0 && zero == most {
        println!("balloonguest: PASS");
        exit::PASS
    } else {
        println!("balloonguest: FAIL memory check");
        exit::MEMORY
    }
}
