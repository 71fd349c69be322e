//! A virtual CPU and its exit dispatcher.
//!
//! [`Vcpu::run_slice`] enters the guest (arch::guest), and for every exit decodes the host
//! Cause into one named handler per ExcCode. Handlers use the portable emulator (hv-emul) for
//! everything guest-visible and the memory core (`map_page`) for guest-physical memory; the
//! only hardware they touch directly is the root TLB, through arch::guest.
//!
//! Root-TLB entries for a guest are built only from copies of GPA-table entries (the pair
//! `map_page` returns), for a guest virtual page translated the guest's own way (KSEG0
//! window or guest TLB): D is set only if both the GPA entry is dirty and the guest
//! allows writes, and G is never set. They live under the vCPU's host ASIDs (asid.rs).
//!
//! Each one is recorded, before it is written, in the vCPU's derived set
//! (hv_emul::derived) with the guest frame and host frame it was built from, and removed only
//! as the set says: a flush of a GFN range drops exactly the entries built from it, whatever
//! the guest TLB says now; a guest TLB write drops the entries in the replaced entry's range
//! and the new entry's; fresh host ASIDs empty the set. A guest TLB write that would create
//! a duplicate match is a machine check for the guest (hv_emul::guest_tlb) and is logged.

use super::asid::{self, AsidPair};
use super::flush::{self, PendingFlush};
use super::vm::{Vm, VmOutcome, VmStats};
use crate::arch::guest::{self, GuestContext, EXIT_DEBUG, EXIT_REFILL};
use crate::arch::timer;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use hv_core::addr::{GfnRange, Gpa, Gva};
use hv_core::fault::FaultError;
use hv_emul::abi::{self, GuestTranslation};
use hv_emul::cp0::{Cause, Cp0Config, Cp0Effect, Cp0Reg, ExcCode, GuestMode};
use hv_emul::derived::{DerivedSet, DerivedSlot, DropPair, HostSpace, Source, DEFAULT_SLOTS};
use hv_emul::emulate::Ignored;
use hv_emul::emulate::{self, EmulOutcome, GuestCpu, HostAction, MmioReq, TrapInfo};
use hv_emul::exception::{self, FaultSite, GuestException};
use hv_emul::guest_tlb::{Access, TlbWrite};
use hv_emul::hypercall::{self, Hypercall, HypercallError, VmInfoKey};
use hv_emul::regs::Gpr;
use hv_emul::timer::GuestTimer;
use hv_services::watchdog::{Novelty, Verdict};

/// EntryLo.V.
const ENTRY_LO_V: u64 = 1 << 1;
/// EntryLo.D.
const ENTRY_LO_D: u64 = 1 << 2;
/// Guest machine checks (duplicate TLB matches) logged per VM; all are counted.
const LOGGED_MACHINE_CHECKS: u64 = 4;
/// Identical exits in a row (same PC, same cause) after which the VM is stopped as stuck in
/// an exception storm.
pub const STORM_LIMIT: u32 = 20_000;
/// Whole slices in a row in which a vCPU took no exit but host interrupts (it neither
/// faults, traps, calls nor takes guest interrupts) after which its VM is stopped as a
/// runaway. It is preempted every slice meanwhile, so other VMs run regardless.
pub const RUNAWAY_SLICES: u32 = 400;

/// The root-TLB EntryLo for a copy of GPA entry bits `entry_lo`: D only if the guest's own
/// translation allows writes as well, and never G.
fn derived_entry_lo(entry_lo: u64, guest_writable: bool) -> u64 {
    let lo = entry_lo & !1;
    if guest_writable {
        lo
    } else {
        lo & !ENTRY_LO_D
    }
}

/// How a time slice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceEnd {
    /// The host timer ticked: the slice is used up.
    Preempted,
    /// The guest yielded by hypercall.
    Yielded,
    /// The guest executes WAIT and no interrupt is pending.
    Waiting,
    /// The VM ended (exit hypercall, or stopped).
    Finished,
}

/// What a handler wants next.
enum Flow {
    /// Re-enter the guest.
    Resume,
    /// Leave the slice.
    End(SliceEnd),
}

/// A virtual CPU.
pub struct Vcpu {
    /// Its VM.
    pub vm: Arc<Vm>,
    /// Number within the VM.
    pub index: usize,
    /// CPU that ran the previous slice (scheduler bookkeeping).
    pub last_cpu: Option<usize>,
    ctx: GuestContext,
    cpu: GuestCpu,
    timer: GuestTimer,
    last_timer_check: u32,
    asids: Option<AsidPair>,
    /// Every root-TLB and refill-cache entry under `asids`, with what it was built from.
    derived: DerivedSet<Box<[DerivedSlot]>>,
    local_generation: u64,
    /// Position in the VM's flush log up to which this vCPU has dropped entries.
    flush_seen: u64,
    waiting: bool,
    last_exit: (u64, u32),
    repeats: u32,
    quiet_slices: u32,
    /// The fast lane served a fault since the last look (counts as activity).
    fast_served: bool,
    /// Recent guest-caused exit PCs (a new one is progress for the watchdog). Boxed, as
    /// is everything big here: a Vcpu is built and moved on the 32 KiB boot stack.
    exit_pcs: Box<Novelty>,
    /// Recent guest pages of general-exit memory faults (a new one is progress).
    fault_pages: Box<Novelty>,
}

impl core::fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Vcpu")
            .field("vm", &self.vm.name)
            .field("index", &self.index)
            .field("pc", &self.cpu.pc)
            .finish_non_exhaustive()
    }
}

impl Vcpu {
    /// vCPU `index` of `vm`, in reset state at the VM's entry point.
    pub fn new(vm: Arc<Vm>, index: usize, tlb_entries: usize) -> Result<Self, String> {
        let config = Cp0Config {
            tlb_entries,
            cpu_num: index as u16,
            model: vm.cpu,
        };
        let mut cpu = GuestCpu::new(config, vm.entry).map_err(|e| format!("guest CP0: {e}"))?;
        if index == 0 {
            cpu.gprs.set(Gpr::A0, vm.boot_args[0]);
            cpu.gprs.set(Gpr::A1, vm.boot_args[1]);
        }
        let now = guest::host_count();
        let vm_flush_position = vm.memory.remote_flush().log_position();
        let slots = alloc::vec![DerivedSlot::EMPTY; DEFAULT_SLOTS].into_boxed_slice();
        let derived = DerivedSet::new(slots).map_err(|e| format!("derived set: {e}"))?;
        Ok(Self {
            ctx: GuestContext::new(vm.entry),
            vm,
            index,
            last_cpu: None,
            cpu,
            timer: GuestTimer::new(now, 0),
            last_timer_check: now,
            asids: None,
            derived,
            local_generation: 0,
            flush_seen: vm_flush_position,
            waiting: false,
            last_exit: (0, 0),
            repeats: 0,
            quiet_slices: 0,
            fast_served: false,
            exit_pcs: Box::new(Novelty::new()),
            fault_pages: Box::new(Novelty::new()),
        })
    }

    /// Whether the vCPU sits in WAIT with nothing to wake it yet.
    pub fn is_waiting(&mut self) -> bool {
        if self.waiting {
            self.update_timer();
            self.update_device_lines();
            if self.wake_pending() {
                self.waiting = false;
            }
        }
        self.waiting
    }

    fn wake_pending(&self) -> bool {
        self.cpu.cp0.cause().pending() & self.cpu.cp0.status().interrupt_mask() != 0
    }

    /// Raises the guest timer interrupt if the guest Count passed Compare since last look.
    fn update_timer(&mut self) {
        let now = guest::host_count();
        let compare = self.cpu.cp0.get(Cp0Reg::COMPARE) as u32;
        if self.timer.reached(compare, self.last_timer_check, now) {
            self.cpu.cp0.raise_timer();
            VmStats::bump(&self.vm.stats.timer_interrupts);
        }
        self.last_timer_check = now;
    }

    /// Copies the levels of the VM's device interrupt lines into Cause.IP6..IP2.
    fn update_device_lines(&mut self) {
        self.cpu.cp0.set_hw_interrupts(self.vm.device_irq_lines());
    }

    /// Whether the VM's watchdog window ran out (the scheduler then runs the vCPU even if
    /// it waits, so that [`Self::run_slice`] stops it).
    pub fn watchdog_expired(&self) -> bool {
        self.vm.watchdog_ms.is_some()
            && matches!(
                self.vm
                    .progress
                    .verdict(guest::host_count(), self.vm.watchdog_ms),
                Verdict::Expired { .. }
            )
    }

    fn progress(&self) {
        self.vm.progress.made(guest::host_count());
    }

    fn guest_count(&self) -> u32 {
        self.timer.guest_count(guest::host_count())
    }

    /// Runs the guest on this CPU until the host timer ticks, or the guest yields, waits or
    /// ends.
    pub fn run_slice(&mut self) -> SliceEnd {
        let cpu = guest::this_cpu();
        let start_ticks = timer::ticks(cpu);
        let mut busy = false;
        if self.vm.outcome().is_none() {
            if let Verdict::Expired {
                quiet_ms,
                window_ms,
            } = self
                .vm
                .progress
                .verdict(guest::host_count(), self.vm.watchdog_ms)
            {
                self.stop(super::liveness::expired_reason(quiet_ms, window_ms));
                return SliceEnd::Finished;
            }
        }
        loop {
            if self.vm.outcome().is_some() {
                return SliceEnd::Finished;
            }
            if self.is_waiting() {
                return SliceEnd::Waiting;
            }
            self.update_timer();
            self.update_device_lines();
            if let Some(handler) =
                exception::deliver_pending_interrupt(&mut self.cpu.cp0, self.cpu.pc)
            {
                self.cpu.pc = handler;
            }
            guest::copy_gprs(&mut self.ctx.gpr, self.cpu.gprs.as_array());
            self.ctx.pc = self.cpu.pc;
            self.ctx.entry_status = guest::guest_entry_status();
            let tracker = flush::tracker();
            tracker
                .enter_guest(cpu, || {})
                .expect("CPU numbers are below MAX_CPUS");
            let pending = self
                .vm
                .memory
                .remote_flush()
                .pending_since(&mut self.flush_seen);
            if pending == PendingFlush::Everything {
                self.local_generation += 1;
            }
            let pair = asid::ensure(
                self.asids,
                cpu,
                self.vm.memory.remote_flush().generation(),
                self.local_generation,
            );
            if self.asids != Some(pair) {
                // Entries under the old pair can never be matched again (asid.rs).
                self.derived.clear();
            } else if let PendingFlush::Ranges(ranges) = pending {
                // A pair kept from before is the only one that can have entries to drop.
                self.drop_derived(pair, &ranges);
            }
            self.asids = Some(pair);
            self.ctx.entry_hi = u64::from(self.host_asid(pair));
            guest::enter_with_fast_lane(self);
            tracker
                .exit_guest(cpu)
                .expect("CPU numbers are below MAX_CPUS");
            self.cpu
                .gprs
                .copy_from_with(&self.ctx.gpr, guest::copy_gprs);
            self.cpu.pc = self.ctx.pc;
            VmStats::bump(&self.vm.stats.exits);
            if self.ctx.exit_kind == EXIT_REFILL {
                VmStats::bump(&self.vm.stats.refill_exits);
            }
            busy |= self.ctx.exit_cause & 0x7c != 0 || core::mem::take(&mut self.fast_served);
            if let Flow::End(end) = self.dispatch() {
                self.quiet_slices = 0;
                if end == SliceEnd::Yielded {
                    // A yield loop (a parked secondary vCPU) gives its CPU away each time:
                    // the same exit over and over, but no storm.
                    self.repeats = 0;
                }
                return end;
            }
            if timer::ticks(cpu) != start_ticks {
                VmStats::bump(&self.vm.stats.preemptions);
                self.quiet_slices = if busy { 0 } else { self.quiet_slices + 1 };
                if self.quiet_slices >= RUNAWAY_SLICES {
                    self.stop(format!(
                        "runaway: {RUNAWAY_SLICES} time slices in a row without a single \
                         trap, fault, hypercall or guest interrupt"
                    ));
                    return SliceEnd::Finished;
                }
                return SliceEnd::Preempted;
            }
        }
    }

    /// Removes this CPU's root-TLB and refill-cache halves under `pair` that were built from
    /// a guest frame in one of `ranges`, as recorded when they were installed; what the guest
    /// TLB translates now does not matter.
    fn drop_derived(&mut self, pair: AsidPair, ranges: &[GfnRange]) {
        let mut removed = 0;
        for range in ranges {
            removed += self
                .derived
                .drop_gfns(range, |d| Self::drop_host_pair(pair, d));
        }
        self.vm
            .stats
            .flushed_entries
            .fetch_add(removed as u64, core::sync::atomic::Ordering::Relaxed);
    }

    /// Executes one drop the derived set asked for, on this CPU (the pair is valid only here).
    fn drop_host_pair(pair: AsidPair, d: DropPair) {
        let asid = match d.space {
            HostSpace::Kernel => pair.kernel,
            HostSpace::User => pair.user,
        };
        guest::drop_guest_pair(asid, d.pair_va, d.halves);
    }

    fn host_asid(&self, pair: AsidPair) -> u8 {
        match self.cpu.cp0.mode() {
            GuestMode::Kernel => pair.kernel,
            GuestMode::User => pair.user,
        }
    }

    /// Stops the VM with `why` and ends the slice.
    fn stop(&mut self, why: String) -> Flow {
        self.vm.console_flush();
        self.vm.finish(VmOutcome::Stopped(format!(
            "{why} (vcpu{} pc={:#x})",
            self.index, self.cpu.pc
        )));
        Flow::End(SliceEnd::Finished)
    }

    /// The exit dispatcher: one handler per host ExcCode.
    fn dispatch(&mut self) -> Flow {
        if self.ctx.exit_kind == EXIT_DEBUG {
            if let Err(why) = self.debug_exit_as_reserved_instruction() {
                return self.stop(why);
            }
        }
        let cause = Cause::from_bits_retain(self.ctx.exit_cause as u32);
        let key = (self.ctx.pc, self.ctx.exit_cause as u32 & 0x7c);
        if key == self.last_exit && cause.exc_code() != Some(ExcCode::Int) {
            self.repeats += 1;
            if self.repeats >= STORM_LIMIT {
                return self.stop(format!(
                    "exception storm: {STORM_LIMIT} identical exits (ExcCode {}) in a row",
                    cause.exc_code_bits()
                ));
            }
        } else {
            self.last_exit = key;
            self.repeats = 0;
        }
        // Liveness: an exit the guest caused (not a host interrupt) at a PC it has not
        // exited at lately is progress.
        if cause.exc_code() != Some(ExcCode::Int) && self.exit_pcs.observe(self.ctx.pc) {
            self.progress();
        }
        let Some(code) = cause.exc_code() else {
            return self.handle_fatal(cause);
        };
        match code {
            ExcCode::Int => self.handle_interrupt(),
            ExcCode::TlbL | ExcCode::TlbS if self.ctx.exit_kind == EXIT_REFILL => {
                self.handle_tlb_refill(code)
            }
            ExcCode::TlbL => self.handle_tlb_load(),
            ExcCode::TlbS => self.handle_tlb_store(),
            ExcCode::Mod => self.handle_tlb_mod(),
            ExcCode::AdEL | ExcCode::AdES => self.handle_address_error(code),
            ExcCode::Sys => self.handle_syscall(cause),
            ExcCode::Bp => self.handle_break(cause),
            ExcCode::Ri => self.handle_reserved_instruction(cause),
            ExcCode::CpU => self.handle_cop_unusable(cause),
            ExcCode::Ov | ExcCode::Tr => self.handle_trap_or_overflow(code, cause),
            _ => self.handle_fatal(cause),
        }
    }

    /// A guest SDBBP came back through the EJTAG stub (debug_vector.rs) with a stale Cause:
    /// rewrite the exit as the Reserved Instruction trap a CPU without EJTAG would take
    /// (BD from decoding the restart address), so the usual path emulates and reflects it.
    fn debug_exit_as_reserved_instruction(&mut self) -> Result<(), String> {
        let epc = self.ctx.pc;
        let at_epc = self.fetch(epc)?;
        let found =
            hv_emul::exit::locate_debug_breakpoint(at_epc, || self.fetch(epc.wrapping_add(4)).ok())
                .map_err(|e| format!("{e}"))?;
        let mut cause = Cause::empty().with_exception(ExcCode::Ri, 0);
        cause.set(Cause::BD, found.in_delay_slot);
        self.ctx.exit_cause = u64::from(cause.bits());
        self.ctx.exit_kind = guest::EXIT_GENERAL;
        Ok(())
    }

    /// Host interrupt while the guest ran: the host handler ran as soon as `run_guest`
    /// restored Status; the guest just continues (or the slice ends on the tick).
    fn handle_interrupt(&mut self) -> Flow {
        Flow::Resume
    }

    /// Root-TLB refill (XTLB vector): the guest touched a page with no root entry yet.
    fn handle_tlb_refill(&mut self, code: ExcCode) -> Flow {
        let access = if code == ExcCode::TlbS {
            Access::Store
        } else {
            Access::Load
        };
        self.memory_fault(access)
    }

    /// TLB load/fetch exception on an invalid root entry (the other half of a pair).
    fn handle_tlb_load(&mut self) -> Flow {
        self.memory_fault(Access::Load)
    }

    /// TLB store exception on an invalid root entry.
    fn handle_tlb_store(&mut self) -> Flow {
        self.memory_fault(Access::Store)
    }

    /// Store to a root entry without D: a clean page's first write, or a guest read-only
    /// page (then the guest gets its own TLB Modified exception).
    fn handle_tlb_mod(&mut self) -> Flow {
        self.memory_fault(Access::Store)
    }

    /// Address error: a misaligned access or an address outside the guest's segments, which
    /// the guest's CPU would report the same way.
    fn handle_address_error(&mut self, code: ExcCode) -> Flow {
        let access = if code == ExcCode::AdES {
            Access::Store
        } else {
            Access::Load
        };
        self.reflect(GuestException::AddressError {
            bad_vaddr: self.ctx.exit_bad_vaddr,
            access,
        })
    }

    /// SYSCALL: the guest's own business.
    fn handle_syscall(&mut self, _cause: Cause) -> Flow {
        self.reflect(GuestException::Syscall)
    }

    /// BREAK: the guest's own business.
    fn handle_break(&mut self, _cause: Cause) -> Flow {
        self.reflect(GuestException::Break)
    }

    /// Reserved instruction: RDHWR is emulated; anything else the emulator reflects.
    fn handle_reserved_instruction(&mut self, cause: Cause) -> Flow {
        self.emulate_trapping(cause)
    }

    /// Coprocessor Unusable: CE = 0 is a COP0 instruction, CACHE or HYPCALL (emulated);
    /// other units (no FPU) go back to the guest.
    fn handle_cop_unusable(&mut self, cause: Cause) -> Flow {
        if cause.ce() == 0 {
            self.emulate_trapping(cause)
        } else {
            self.reflect(GuestException::CoprocessorUnusable { unit: cause.ce() })
        }
    }

    /// Trap and integer overflow: reflected.
    fn handle_trap_or_overflow(&mut self, code: ExcCode, _cause: Cause) -> Flow {
        self.reflect(if code == ExcCode::Tr {
            GuestException::Trap
        } else {
            GuestException::Overflow
        })
    }

    /// Anything the design does not expect from a guest (bus errors, machine check, ...).
    fn handle_fatal(&mut self, cause: Cause) -> Flow {
        self.stop(format!(
            "unexpected guest exit: ExcCode {} BadVAddr={:#x}",
            cause.exc_code_bits(),
            self.ctx.exit_bad_vaddr
        ))
    }

    fn in_delay_slot(&self) -> bool {
        self.ctx.exit_cause & (1 << 31) != 0
    }

    /// Delivers `exception` to the guest at the exit's site.
    fn reflect(&mut self, exception: GuestException) -> Flow {
        let site = FaultSite::from_epc(self.ctx.pc, self.in_delay_slot());
        if matches!(exception, GuestException::TlbRefill { .. }) {
            VmStats::bump(&self.vm.stats.guest_tlb_refills);
        }
        VmStats::bump(&self.vm.stats.reflected);
        self.cpu.pc = exception::deliver(exception, &mut self.cpu.cp0, site);
        Flow::Resume
    }

    /// Translates `gva` the guest's way in its current mode.
    fn translate(&self, gva: u64, access: Access) -> Result<GuestTranslation, GuestException> {
        let cp0 = &self.cpu.cp0;
        abi::translate_access(Gva::new(gva), cp0.mode(), cp0.asid(), &self.cpu.tlb, access)
    }

    /// [`Self::translate`], plus the other page of the pair (`gva ^ 0x1000`) for a load if
    /// valid, in one guest TLB lookup.
    fn translate_with_buddy(
        &self,
        gva: u64,
        access: Access,
    ) -> Result<(GuestTranslation, Option<GuestTranslation>), GuestException> {
        let cp0 = &self.cpu.cp0;
        abi::translate_with_buddy(Gva::new(gva), cp0.mode(), cp0.asid(), &self.cpu.tlb, access)
    }

    /// A guest memory access missed in the root TLB (or hit a clean/invalid half).
    fn memory_fault(&mut self, access: Access) -> Flow {
        let gva = self.ctx.exit_bad_vaddr;
        let (translation, buddy) = match self.translate_with_buddy(gva, access) {
            Ok(t) => t,
            Err(exception) => return self.reflect(exception),
        };
        if self.fault_pages.observe(translation.gpa.frame().raw()) {
            self.progress();
        }
        match self.vm.map_page(translation.gpa, access == Access::Store) {
            Ok(pair) => {
                if !self.install_derived(gva, &translation, buddy, pair, false) {
                    return self.stop(format!(
                        "memory core returned an invalid entry for GPA {:#x}",
                        translation.gpa.raw()
                    ));
                }
                Flow::Resume
            }
            Err(FaultError::NoMemslot | FaultError::ReadOnlyWrite) => {
                let fetch_pc = self.faulting_pc();
                if gva == fetch_pc {
                    return self.stop(format!(
                        "instruction fetch from GPA {:#x}, which is not RAM",
                        translation.gpa.raw()
                    ));
                }
                self.emulate_trapping(Cause::from_bits_retain(self.ctx.exit_cause as u32))
            }
            // The guest pool is empty: swap evicts a batch of cold pages and the guest
            // retries the access (it faults again and finds a frame).
            Err(FaultError::OutOfMemory) if crate::services::swap::reclaim_for_fault() => {
                Flow::Resume
            }
            // The VM's memory account refused the frame, or the pool is empty and swap freed
            // nothing: the VM that pays (vmm::limits) is swapped or stopped, then the access
            // is retried. An empty pool is paid for as a committed one.
            Err(error @ (FaultError::Refused(_) | FaultError::OutOfMemory)) => {
                let refusal = match error {
                    FaultError::Refused(refusal) => refusal,
                    _ => hv_core::accounts::Refusal::PoolCommitted,
                };
                match super::limits::on_refused(&self.vm, refusal) {
                    super::limits::AfterRefusal::Retry => Flow::Resume,
                    super::limits::AfterRefusal::AlreadyStopped => Flow::End(SliceEnd::Finished),
                    super::limits::AfterRefusal::StopSelf(why) => {
                        let flow = self.stop(why);
                        super::limits::release_after_stop(&self.vm);
                        flow
                    }
                }
            }
            Err(error) => self.stop(format!(
                "guest memory at GPA {:#x}: {error}",
                translation.gpa.raw()
            )),
        }
    }

    /// Writes the root-TLB entry for guest page `gva` from `translation` and the GPA entry
    /// pair `map_page` returned. False (and nothing written) if the entry is not valid.
    /// `buddy` is the guest's translation of the other page of the pair, if valid;
    /// `known_absent` says the root TLB has no entry for the pair (a refill is being taken).
    fn install_derived(
        &mut self,
        gva: u64,
        translation: &GuestTranslation,
        buddy: Option<GuestTranslation>,
        (even, odd): hv_core::fault::PtePair,
        known_absent: bool,
    ) -> bool {
        let gfn = translation.gpa.frame();
        let (pte, buddy_pte) = if gfn.is_odd() {
            (odd, even)
        } else {
            (even, odd)
        };
        let lo = derived_entry_lo(pte.entrylo(), translation.writable);
        if lo & ENTRY_LO_V == 0 {
            return false;
        }
        // The other page of the root pair, when the guest maps it onto the other page of
        // the GPA pair (the window, guest pages of 8 KiB and more) and the memory core has
        // it young: one refill then serves both.
        let buddy_lo = match buddy {
            Some(t) if t.gpa.frame() == gfn.buddy() => {
                Some(derived_entry_lo(buddy_pte.entrylo(), t.writable))
                    .filter(|lo| lo & ENTRY_LO_V != 0)
            }
            _ => None,
        };
        let Some(pair) = self.asids else {
            return false;
        };
        let space = match self.cpu.cp0.mode() {
            GuestMode::Kernel => HostSpace::Kernel,
            GuestMode::User => HostSpace::User,
        };
        // Recorded before the entry exists, so a flush can never miss it; a pair evicted
        // from the set leaves the host first.
        let Some(hfn) = pte.hfn() else {
            return false;
        };
        let buddy_source = buddy_lo.and_then(|_| buddy_pte.hfn()).map(|hfn| Source {
            gfn: gfn.buddy(),
            hfn,
        });
        let buddy_lo = buddy_lo.filter(|_| buddy_source.is_some());
        // Halves of the root pair by guest page: this page's, and its buddy's if installed.
        let odd = usize::from(gva & 0x1000 != 0);
        let mut halves = [None; 2];
        halves[odd] = Some(Source { gfn, hfn });
        halves[1 - odd] = buddy_source;
        if let Some(evicted) = self.derived.record_pair(space, gva, halves) {
            Self::drop_host_pair(pair, evicted);
            VmStats::bump(&self.vm.stats.derived_evictions);
        }
        guest::install_guest_page(gva, self.host_asid(pair), lo, buddy_lo, known_absent);
        true
    }

    /// The fast lane (arch::guest): serves a guest TLB exception on the exception path when
    /// the guest's own translation allows the access and the GPA entry is present, with the
    /// same root entry `memory_fault` would write. Anything else (a fault to reflect, a page
    /// to fetch, MMIO) returns false and takes the general exit, which redoes it all.
    ///
    /// The CPU still counts as in the guest for the quiescence tracker meanwhile, exactly as
    /// if the guest had run on: a flush that removes the GPA entry after it was read here
    /// waits for this CPU's next real exit, and the entry written here is dropped from the
    /// flush log before the guest is entered again. The MMU lock is the only lock taken, and
    /// nobody waits for a flush while holding it.
    fn fast_tlb(&mut self, refill: bool) -> bool {
        let access = match (guest::exit_cause_now() >> 2) & 0x1f {
            2 => Access::Load,
            3 => Access::Store,
            1 if !refill => Access::Store,
            _ => return false,
        };
        let gva = guest::exit_bad_vaddr_now();
        let Ok((translation, buddy)) = self.translate_with_buddy(gva, access) else {
            return false;
        };
        let Some(pair) = self
            .vm
            .memory
            .map_page_resident(translation.gpa, access == Access::Store)
        else {
            return false;
        };
        self.vm.drill.note_fault(translation.gpa);
        if !self.install_derived(gva, &translation, buddy, pair, refill) {
            return false;
        }
        let stats = &self.vm.stats;
        VmStats::bump(&stats.gpa_faults);
        VmStats::bump(&stats.exits);
        if refill {
            VmStats::bump(&stats.refill_exits);
        }
        self.fast_served = true;
        true
    }

    /// Address of the instruction that caused the exit (EPC, or EPC + 4 in a delay slot).
    fn faulting_pc(&self) -> u64 {
        if self.in_delay_slot() {
            self.ctx.pc.wrapping_add(4)
        } else {
            self.ctx.pc
        }
    }

    /// Reads the instruction word at guest virtual `pc` the way the guest fetched it.
    fn fetch(&self, pc: u64) -> Result<u32, String> {
        let t = self
            .translate(pc, Access::Load)
            .map_err(|e| format!("instruction at {pc:#x} no longer translates ({e:?})"))?;
        let mut word = [0u8; 4];
        self.vm
            .read_ram(t.gpa, &mut word)
            .map_err(|e| format!("instruction at GPA {:#x}: {e}", t.gpa.raw()))?;
        Ok(u32::from_le_bytes(word))
    }

    /// Emulates the instruction that trapped (COP0, HYPCALL, CACHE, RDHWR, MMIO access).
    fn emulate_trapping(&mut self, _cause: Cause) -> Flow {
        let epc = self.ctx.pc;
        let bd = self.in_delay_slot();
        let word = match self.fetch(self.faulting_pc()) {
            Ok(word) => word,
            Err(why) => return self.stop(why),
        };
        let branch = if bd {
            match self.fetch(epc) {
                Ok(word) => Some(word),
                Err(why) => return self.stop(why),
            }
        } else {
            None
        };
        self.cpu.pc = epc;
        let trap = TrapInfo {
            branch,
            guest_count: self.guest_count(),
        };
        VmStats::bump(&self.vm.stats.emulated);
        match emulate::emulate(word, &mut self.cpu, &trap) {
            EmulOutcome::Done(action) => self.host_action(action),
            EmulOutcome::Mmio(request) => self.mmio(request),
            EmulOutcome::Injected(exception) => {
                if matches!(exception, GuestException::TlbRefill { .. }) {
                    VmStats::bump(&self.vm.stats.guest_tlb_refills);
                }
                if let GuestException::MachineCheck { index, conflict } = exception {
                    self.machine_check(index, conflict);
                }
                VmStats::bump(&self.vm.stats.reflected);
                Flow::Resume
            }
            EmulOutcome::Hypercall(call) => self.hypercall(call),
            EmulOutcome::Wait => {
                self.waiting = true;
                if self.is_waiting() {
                    Flow::End(SliceEnd::Waiting)
                } else {
                    Flow::Resume
                }
            }
            EmulOutcome::Halt(reason) => self.stop(format!("guest halted: {reason:?}")),
            EmulOutcome::Fail(error) => self.stop(format!("cannot emulate {word:#010x}: {error}")),
        }
    }

    /// Carries out what an emulated instruction left for the host.
    fn host_action(&mut self, action: HostAction) -> Flow {
        match action {
            HostAction::Cp0(Cp0Effect::AsidChanged { .. }) => {
                // Mapped-segment entries were derived for the old guest ASID.
                self.local_generation += 1;
            }
            HostAction::Cp0(Cp0Effect::CountRebase { count }) => {
                self.timer.rebase(guest::host_count(), count);
            }
            HostAction::Cp0(Cp0Effect::CauseChanged { old, new })
                if old.contains(Cause::DC) != new.contains(Cause::DC) =>
            {
                self.timer
                    .set_stopped(guest::host_count(), new.contains(Cause::DC));
            }
            HostAction::TlbWrite(write) => self.guest_tlb_written(write),
            HostAction::Ignored(Ignored::Hypercall(_)) => {
                // Refused calls count as hypercalls too (VmStats::hypercalls).
                VmStats::bump(&self.vm.stats.hypercalls);
                VmStats::bump(&self.vm.stats.hypercalls_refused);
            }
            _ => {}
        }
        Flow::Resume
    }

    /// Drops the derived entries whose guest translation the write may have changed: those
    /// in the replaced entry's range and in the new entry's.
    fn guest_tlb_written(&mut self, write: TlbWrite) {
        let Some(pair) = self.asids else { return };
        // The pair is valid only on the CPU this vCPU runs on, so this CPU's TLB and refill
        // cache are the only ones that can hold entries under it.
        for (start, end) in write.changed_ranges().into_iter().flatten() {
            let _ = self
                .derived
                .drop_va_range(start, end, |d| Self::drop_host_pair(pair, d));
        }
    }

    /// The guest's TLB write would have duplicated entry `conflict`'s match at `index`: the
    /// emulator refused it and reflected a machine check. Counted, the first few logged.
    fn machine_check(&self, index: usize, conflict: usize) {
        let stats = &self.vm.stats;
        if VmStats::get(&stats.machine_checks) < LOGGED_MACHINE_CHECKS {
            crate::log!(
                "VM {}: vcpu{} pc={:#x}: guest TLB write to entry {index} would duplicate \
                 entry {conflict}'s match (EntryHi {:#x}): refused, machine check reflected",
                self.vm.name,
                self.index,
                self.ctx.pc,
                self.cpu.cp0.get(Cp0Reg::ENTRY_HI)
            );
        }
        VmStats::bump(&stats.machine_checks);
    }

    /// A device access (no memslot at the GPA, or a store to a read-only slot).
    fn mmio(&mut self, request: MmioReq) -> Flow {
        let value = match self.vm.mmio_access(&request) {
            Ok(value) => value,
            Err(why) => return self.stop(why),
        };
        emulate::complete_mmio(&mut self.cpu, &request, value);
        Flow::Resume
    }

    /// Serves a validated hypercall.
    fn hypercall(&mut self, call: Hypercall) -> Flow {
        VmStats::bump(&self.vm.stats.hypercalls);
        let result = match call {
            Hypercall::ConsoleWrite { buf, len } => self.console_write(buf, len),
            Hypercall::Exit { status } if self.index != 0 => {
                // The VM ends with vCPU 0; another vCPU that exits just stops running.
                crate::log!(
                    "VM {}: vcpu{} exited with {status}",
                    self.vm.name,
                    self.index
                );
                return Flow::End(SliceEnd::Finished);
            }
            Hypercall::Exit { status } => {
                self.vm.console_flush();
                self.vm.finish(VmOutcome::Exited(status));
                return Flow::End(SliceEnd::Finished);
            }
            Hypercall::VmInfo(key) => self.vm_info(key),
            Hypercall::Restart => return self.restart(),
            Hypercall::Yield => {
                if let Err(why) = self.vm.on_yield() {
                    return self.stop(why);
                }
                hypercall::set_result(&mut self.cpu.gprs, Ok(0));
                return Flow::End(SliceEnd::Yielded);
            }
        };
        hypercall::set_result(&mut self.cpu.gprs, result);
        Flow::Resume
    }

    /// A guest restart (reboot): the VM's image and device tree are loaded again and this
    /// vCPU starts over from the reset state at the entry point, with a new host ASID pair so
    /// that nothing derived from the old guest TLB can match. The devices keep their state
    /// until the guest resets them (Linux resets virtio devices and reprograms the UART when
    /// it probes them). Only a VM of one vCPU can restart.
    fn restart(&mut self) -> Flow {
        if self.vm.vcpus != 1 {
            return self.stop(String::from(
                "guest restart of a VM with several vCPUs is not supported",
            ));
        }
        let restarts = match self.vm.reload() {
            Ok(n) => n,
            Err(why) => return self.stop(why),
        };
        let config = Cp0Config {
            tlb_entries: self.cpu.cp0.tlb_entries(),
            cpu_num: self.index as u16,
            model: self.vm.cpu,
        };
        let mut cpu = match GuestCpu::new(config, self.vm.entry) {
            Ok(cpu) => cpu,
            Err(e) => return self.stop(format!("guest CP0: {e}")),
        };
        cpu.gprs.set(Gpr::A0, self.vm.boot_args[0]);
        cpu.gprs.set(Gpr::A1, self.vm.boot_args[1]);
        self.cpu = cpu;
        self.timer = GuestTimer::new(guest::host_count(), 0);
        self.waiting = false;
        // A new local generation makes the next entry take a new ASID pair.
        self.local_generation += 1;
        VmStats::bump(&self.vm.stats.restarts);
        crate::log!("VM {}: guest restart {restarts}", self.vm.name);
        Flow::End(SliceEnd::Preempted)
    }

    /// The answer to VM-info `key`; keys about something the VM lacks are `BadArgument`.
    fn vm_info(&self, key: VmInfoKey) -> Result<u64, HypercallError> {
        let unset = HypercallError::BadArgument;
        Ok(match key {
            VmInfoKey::AbiVersion => hypercall::ABI_VERSION,
            VmInfoKey::VcpuId => self.index as u64,
            VmInfoKey::VcpuCount => self.vm.vcpus as u64,
            VmInfoKey::RamBytes => self.vm.ram_bytes,
            VmInfoKey::VmId => self.vm.id as u64,
            VmInfoKey::ReadOnlyBase => self.vm.rom.ok_or(unset)?.0.raw(),
            VmInfoKey::ReadOnlyBytes => self.vm.rom.ok_or(unset)?.1,
            VmInfoKey::Workload => self.vm.workload.ok_or(unset)?.kind.code(),
            VmInfoKey::WorkloadArg => self.vm.workload.and_then(|w| w.arg).ok_or(unset)?,
            // Kept by the services task; 0 while the service is not running.
            VmInfoKey::DedupFullScans => crate::services::dedup_full_scans(),
            VmInfoKey::IdlePasses => crate::services::idle_passes(self.vm.id),
            VmInfoKey::BalloonGpa => self.vm.balloon_gpa.ok_or(unset)?.raw(),
        })
    }

    fn console_write(&mut self, buf: Gva, len: u64) -> Result<u64, HypercallError> {
        let cp0 = &self.cpu.cp0;
        let mut pieces: Vec<(Gpa, u64)> = Vec::new();
        hypercall::for_each_buffer_chunk(
            buf,
            len,
            cp0.mode(),
            cp0.asid(),
            &self.cpu.tlb,
            |gpa, n| {
                pieces.push((gpa, n));
            },
        )?;
        let mut bytes = alloc::vec![0u8; len as usize];
        let mut at = 0usize;
        for (gpa, n) in pieces {
            let n = n as usize;
            self.vm
                .read_ram(gpa, &mut bytes[at..at + n])
                .map_err(|_| HypercallError::BadAddress)?;
            at += n;
        }
        self.vm.console_write(&bytes);
        Ok(len)
    }
}

impl guest::FastLane for Vcpu {
    fn context(&mut self) -> &mut GuestContext {
        &mut self.ctx
    }

    fn serve_tlb_exception(&mut self, refill: bool) -> bool {
        self.fast_tlb(refill)
    }
}
