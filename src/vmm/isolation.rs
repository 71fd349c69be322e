//! The `isolation` scenario: a hostile guest tries forbidden things one by one while a
//! well-behaved VM runs beside it.
//!
//! The hostile guest (guests/hostile) announces each try on its console as
//! `ATTEMPT <n> <name>` and reports what it saw as `OUTCOME <n> <name>: ...` (the word
//! `BREACH` in an outcome means it observed a containment failure). Its last try is a
//! runaway loop with interrupts masked, which the host must preempt and finally stop. The
//! firmware counts an attempt as contained when its outcome came back without `BREACH`, or
//! when the VM was stopped during it with a reason (the hypervisor's answer to it).

use super::vm::{Vm, VmOutcome};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use hv_devices::console_log::tally_attempts;

/// What the hostile guest's console said, and what became of it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Attempts announced.
    pub attempted: u64,
    /// Attempts contained (see the module notes).
    pub contained: u64,
    /// Outcomes that reported a breach (or were too long to judge).
    pub breaches: u64,
    /// ATTEMPT/OUTCOME lines that break the protocol (an outcome of another attempt, ...).
    pub malformed: u64,
    /// Recorded lines lost because the record was full.
    pub dropped: u64,
    /// Name of the attempt during which the VM was stopped, if any.
    pub stopped_during: Option<String>,
}

/// Counts attempts and contained ones from the VM's recorded console lines
/// (hv_devices::console_log: only whole lines from their real start are recorded, with
/// control bytes escaped, so padding or control bytes cannot forge or hide one).
pub fn tally(vm: &Arc<Vm>) -> Tally {
    let lines = vm.recorded_lines();
    let dropped = vm.recorded_dropped();
    let counted = tally_attempts(&lines);
    let mut tally = Tally {
        attempted: counted.attempted,
        contained: counted.contained,
        breaches: counted.breaches,
        malformed: counted.malformed,
        dropped,
        stopped_during: None,
    };
    if let (Some((_, name)), Some(VmOutcome::Stopped(_))) = (counted.open, vm.outcome()) {
        // The VM was stopped with a reason while this attempt ran: contained.
        tally.contained += 1;
        tally.stopped_during = Some(name);
    }
    tally
}

/// Checks the scenario's outcome: every VM but `hostile` exited 0, and the hostile VM's
/// attempts (at least `min_attempts`) were all contained.
pub fn judge(
    vms: &[Arc<Vm>],
    hostile: &Arc<Vm>,
    tally: &Tally,
    min_attempts: u64,
) -> Result<(), String> {
    let mut problems: Vec<String> = Vec::new();
    for vm in vms.iter().filter(|vm| !Arc::ptr_eq(vm, hostile)) {
        if vm.outcome() != Some(VmOutcome::Exited(0)) {
            problems.push(format!("well-behaved VM {} did not exit 0", vm.name));
        }
    }
    if tally.attempted < min_attempts {
        problems.push(format!(
            "hostile guest announced {} attempts, {min_attempts} expected",
            tally.attempted
        ));
    }
    if tally.malformed != 0 || tally.dropped != 0 {
        problems.push(format!(
            "console record unreliable: {} malformed ATTEMPT/OUTCOME lines, {} lines dropped",
            tally.malformed, tally.dropped
        ));
    }
    if tally.contained != tally.attempted {
        problems.push(format!(
            "{} of {} attempts contained",
            tally.contained, tally.attempted
        ));
    }
    if matches!(hostile.outcome(), Some(VmOutcome::Exited(0))) {
        problems.push(String::from(
            "hostile guest exited 0 instead of being stopped",
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The page drill (issue 11): while the hostile guest holds guest-TLB mappings of some of
/// its pages (and has tried to shadow them with duplicate entries), the host takes those
/// pages away by each trigger in turn, one per guest yield, and hands the freed frames to a
/// host-owned witness at once (the frame pool is LIFO, so the witness gets exactly them,
/// unless another CPU allocates in between). The guest then uses its mappings again. The
/// host judges from what it saw: the derived entries built from the pages were dropped
/// (flushed halves), the guest's next access came back to the memory core (a refault), and
/// the witness still holds its pattern at the end (no store through a stale entry).
///
/// Shared with guests/hostile (`drill.rs`): the pages are the last [`DRILL_PAGES`] of the
/// hostile VM's RAM (balloon: pages 0-1, swap-out: 2-3, dedup merge: 4 merged onto 5) and
/// its read-only memslot (memslot removal), in that order, one per yield.
pub mod drill {
    use super::super::vm::{Vm, VmStats};
    use alloc::format;
    use alloc::string::String;
    use alloc::vec::Vec;
    use core::ops::Range;
    use core::sync::atomic::{AtomicU64, Ordering};
    use hv_core::addr::{Gpa, PAGE_SIZE};
    use hv_core::memslot::{BackingId, SlotId};
    use spin::Mutex;

    /// Pages at the end of the hostile VM's RAM the drill works on.
    pub const DRILL_PAGES: u64 = 8;
    /// Pages of the witness backing (enough for every trigger's frames).
    const WITNESS_PAGES: u64 = 64;

    /// How a page is taken away.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Trigger {
        /// Balloon inflation: frames back to the pool, pages read as zero.
        Balloon,
        /// Swap-out: frames freed, contents in the compressed store.
        SwapOut,
        /// Dedup merge: page 4 shares page 5's frame, its own frame is freed.
        Merge,
        /// Memslot removal: the read-only memslot goes, its backing's frames are freed.
        RemoveMemslot,
    }

    /// The triggers in the order of the guest's yields.
    pub const TRIGGERS: [Trigger; 4] = [
        Trigger::Balloon,
        Trigger::SwapOut,
        Trigger::Merge,
        Trigger::RemoveMemslot,
    ];

    impl Trigger {
        /// Name in logs and STAT lines.
        pub fn name(self) -> &'static str {
            match self {
                Trigger::Balloon => "balloon",
                Trigger::SwapOut => "swap_out",
                Trigger::Merge => "dedup_merge",
                Trigger::RemoveMemslot => "memslot_removal",
            }
        }
    }

    /// What the host saw of one trigger.
    #[derive(Debug, Clone)]
    pub struct TriggerReport {
        /// Which.
        pub trigger: Trigger,
        /// Its pages that had a GPA entry just before (the guest had touched them).
        pub mapped_before: u64,
        /// What the operation said (or its error).
        pub outcome: Result<String, String>,
        /// The VM's flushed root-TLB halves before the trigger.
        flushed_before: u64,
        /// ... and before the next trigger (or at the end).
        flushed_after: Option<u64>,
    }

    impl TriggerReport {
        /// Root-TLB halves dropped between this trigger and the next.
        pub fn dropped(&self) -> u64 {
            self.flushed_after.unwrap_or(0) - self.flushed_before
        }
    }

    /// The drill's state for one VM (inside `Vm`).
    #[derive(Debug, Default)]
    pub struct DrillSlot {
        state: Mutex<Option<Drill>>,
        /// Bit per trigger done: faults on its pages are counted from then on.
        armed: AtomicU64,
        refaults: [AtomicU64; 4],
        /// GFN of the first RAM drill page and of the read-only slot.
        first_gfn: AtomicU64,
        rom_gfn: AtomicU64,
        rom_pages: AtomicU64,
    }

    #[derive(Debug)]
    struct Drill {
        rom: Option<(SlotId, BackingId)>,
        witness: BackingId,
        witness_used: u64,
        reports: Vec<TriggerReport>,
    }

    impl DrillSlot {
        /// Arms the drill on `vm`: its last RAM pages and `rom` (memslot and backing).
        pub fn arm(vm: &Vm, rom: Option<(SlotId, BackingId)>) -> Result<(), String> {
            let witness = vm
                .memory
                .host()
                .create_backing(WITNESS_PAGES)
                .map_err(|e| format!("drill witness: {e}"))?;
            let slot = &vm.drill;
            slot.first_gfn
                .store(vm.ram_bytes / PAGE_SIZE - DRILL_PAGES, Ordering::Relaxed);
            if let Some((base, bytes, _)) = vm.rom {
                slot.rom_gfn
                    .store(base.raw() / PAGE_SIZE, Ordering::Relaxed);
                slot.rom_pages.store(bytes / PAGE_SIZE, Ordering::Relaxed);
            }
            *slot.state.lock() = Some(Drill {
                rom,
                witness,
                witness_used: 0,
                reports: Vec::new(),
            });
            Ok(())
        }

        fn pages(&self, trigger: Trigger) -> Range<u64> {
            let first = self.first_gfn.load(Ordering::Relaxed);
            match trigger {
                Trigger::Balloon => first..first + 2,
                Trigger::SwapOut => first + 2..first + 4,
                Trigger::Merge => first + 4..first + 6,
                Trigger::RemoveMemslot => {
                    let rom = self.rom_gfn.load(Ordering::Relaxed);
                    rom..rom + self.rom_pages.load(Ordering::Relaxed)
                }
            }
        }

        /// A guest access to `gpa` reached the memory core (fault path or fast lane).
        pub fn note_fault(&self, gpa: Gpa) {
            let armed = self.armed.load(Ordering::Relaxed);
            if armed == 0 {
                return;
            }
            let gfn = gpa.raw() / PAGE_SIZE;
            for (n, trigger) in TRIGGERS.iter().enumerate() {
                if armed & (1 << n) != 0 && self.pages(*trigger).contains(&gfn) {
                    self.refaults[n].fetch_add(1, Ordering::Relaxed);
                }
            }
        }

        /// The guest yielded: runs the next trigger, if the drill is armed and not done.
        pub fn on_yield(vm: &Vm) {
            let slot = &vm.drill;
            let mut state = slot.state.lock();
            let Some(drill) = state.as_mut() else { return };
            let n = drill.reports.len();
            let Some(&trigger) = TRIGGERS.get(n) else {
                return;
            };
            let flushed_now = VmStats::get(&vm.stats.flushed_entries);
            if let Some(last) = drill.reports.last_mut() {
                last.flushed_after = Some(flushed_now);
            }
            let pages = slot.pages(trigger);
            let mapped_before = pages
                .clone()
                .filter(|&g| vm.memory.lookup(Gpa::new(g * PAGE_SIZE)).is_some())
                .count() as u64;
            let backing = vm.ram_backing;
            let outcome = match trigger {
                Trigger::Balloon => vm
                    .memory
                    .balloon(backing, pages.clone())
                    .map(|()| String::from("2 pages ballooned"))
                    .map_err(|e| format!("{e}")),
                Trigger::SwapOut => vm
                    .memory
                    .swap_out_range(backing, pages.clone())
                    .map(|n| format!("{n} pages swapped out"))
                    .map_err(|e| format!("{e}")),
                Trigger::Merge => vm
                    .memory
                    .merge((backing, pages.start), (backing, pages.start + 1))
                    .map_err(|e| format!("{e}"))
                    .and_then(|merged| {
                        if merged {
                            Ok(String::from("page 4 merged onto page 5"))
                        } else {
                            Err(String::from(
                                "pages not merged (not identical or not resident)",
                            ))
                        }
                    }),
                Trigger::RemoveMemslot => match drill.rom {
                    None => Err(String::from("the VM has no read-only memslot")),
                    Some((id, rom_backing)) => vm
                        .remove_rom_slot(id)
                        .and_then(|()| {
                            vm.memory
                                .host()
                                .remove_backing(vm.memory.as_ref(), rom_backing)
                                .map_err(|e| format!("{e}"))
                        })
                        .map(|()| String::from("read-only memslot removed, backing freed")),
                },
            };
            slot.armed.fetch_or(1 << n, Ordering::Relaxed);
            // The frames just freed are on top of the pool: the witness takes them.
            let take = mapped_before.max(1);
            let start = drill.witness_used.min(WITNESS_PAGES - take);
            let witness = start..start + take;
            for page in witness.clone() {
                let bytes = witness_page(page);
                if let Err(e) = vm.memory.host_write(drill.witness, page, 0, &bytes) {
                    crate::log!("VM {}: drill witness page {page}: {e}", vm.name);
                }
            }
            drill.witness_used = witness.end;
            crate::log!(
                "VM {}: drill {}: GPA pages {:#x}..{:#x} ({mapped_before} mapped): {}; \
                 witness pages {}..{} written",
                vm.name,
                trigger.name(),
                pages.start,
                pages.end,
                match &outcome {
                    Ok(s) => s.as_str(),
                    Err(e) => e.as_str(),
                },
                witness.start,
                witness.end
            );
            drill.reports.push(TriggerReport {
                trigger,
                mapped_before,
                outcome,
                flushed_before: flushed_now,
                flushed_after: None,
            });
        }

        /// The reports, with the refault counts, after the run; checks the witness.
        pub fn finish(vm: &Vm) -> Option<DrillVerdict> {
            let slot = &vm.drill;
            let mut state = slot.state.lock();
            let drill = state.as_mut()?;
            let flushed_now = VmStats::get(&vm.stats.flushed_entries);
            if let Some(last) = drill.reports.last_mut() {
                last.flushed_after.get_or_insert(flushed_now);
            }
            let mut witness_bad = 0;
            for page in 0..drill.witness_used {
                let mut bytes = alloc::vec![0u8; PAGE_SIZE as usize];
                let ok = vm
                    .memory
                    .host()
                    .read(drill.witness, page, 0, &mut bytes)
                    .is_ok()
                    && bytes == witness_page(page);
                if !ok {
                    witness_bad += 1;
                }
            }
            let refaults = core::array::from_fn(|n| slot.refaults[n].load(Ordering::Relaxed));
            Some(DrillVerdict {
                reports: drill.reports.clone(),
                refaults,
                witness_pages: drill.witness_used,
                witness_bad,
            })
        }
    }

    fn witness_page(page: u64) -> Vec<u8> {
        (0..PAGE_SIZE / 8)
            .flat_map(|word| (0x5717_0000_0000_0000u64 ^ (page << 20) ^ word).to_le_bytes())
            .collect()
    }

    /// What the drill found.
    #[derive(Debug, Clone)]
    pub struct DrillVerdict {
        /// One per trigger run.
        pub reports: Vec<TriggerReport>,
        /// Guest accesses that came back to the memory core after each trigger.
        pub refaults: [u64; 4],
        /// Witness pages written.
        pub witness_pages: u64,
        /// Witness pages whose pattern changed (a store through a stale entry).
        pub witness_bad: u64,
    }

    impl DrillVerdict {
        /// Problems found; empty when the drill shows containment.
        pub fn problems(&self) -> Vec<String> {
            let mut problems = Vec::new();
            if self.reports.len() != TRIGGERS.len() {
                problems.push(format!(
                    "drill ran {} of {} triggers (the hostile guest yields once per trigger)",
                    self.reports.len(),
                    TRIGGERS.len()
                ));
            }
            for (n, r) in self.reports.iter().enumerate() {
                let name = r.trigger.name();
                if let Err(e) = &r.outcome {
                    problems.push(format!("drill {name}: {e}"));
                }
                if r.mapped_before == 0 {
                    problems.push(format!("drill {name}: the guest had no page mapped"));
                }
                if r.dropped() == 0 {
                    problems.push(format!("drill {name}: no derived entry was dropped"));
                }
                if self.refaults[n] == 0 {
                    problems.push(format!(
                        "drill {name}: the guest's next access never reached the memory core"
                    ));
                }
            }
            if self.witness_bad != 0 {
                problems.push(format!(
                    "drill: {} of {} witness pages changed (a store through a stale entry)",
                    self.witness_bad, self.witness_pages
                ));
            }
            problems
        }

        /// STAT lines.
        pub fn print(&self) {
            for (n, r) in self.reports.iter().enumerate() {
                crate::println!(
                    "STAT drill_{}_mapped={} drill_{}_dropped_halves={} drill_{}_refaults={}",
                    r.trigger.name(),
                    r.mapped_before,
                    r.trigger.name(),
                    r.dropped(),
                    r.trigger.name(),
                    self.refaults[n]
                );
            }
            crate::println!("STAT drill_triggers={}", self.reports.len());
            crate::println!(
                "STAT drill_witness_pages={} drill_witness_bad={}",
                self.witness_pages,
                self.witness_bad
            );
        }
    }
}
