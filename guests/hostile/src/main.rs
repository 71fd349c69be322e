//! The hostile guest of the isolation scenario (issue 5).
//!
//! It tries forbidden things one at a time. Before each it prints `ATTEMPT <n> <name>`;
//! after each that gives control back it prints `OUTCOME <n> <name>: <what happened>`, where
//! a reflected exception (recorded by its handler, which steps over the faulting
//! instruction) or an error code is the expected answer. A `BREACH` word in an outcome
//! means the guest saw something it must not (a write to read-only memory that stuck, a
//! protected CP0 field that changed). After the last returning attempt it prints
//! `HOSTILE SUMMARY attempted=N survived=N breaches=N`, then starts the final attempt, a
//! runaway loop with interrupts masked that never yields: the hypervisor must keep
//! preempting it and, after its budget, stop this VM.
//!
//! Attempts 12 to 15 are the page drill (drill.rs, issue 11): mappings shadowed by
//! duplicate TLB entries (a machine check each), then the page taken away by the host at
//! the next yield.
//!
//! Everything is deterministic; nothing depends on timing.

#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod attempts;
mod drill;
mod probe;

use guest_rt::{cp0, println, trap};

guest_rt::entry!(main);

fn main() -> u64 {
    trap::install(probe::handle_exception);
    // SAFETY: interrupts stay masked for the whole run (the runaway loop relies on it).
    unsafe { cp0::set_status(cp0::status() & !(cp0::STATUS_IE | cp0::STATUS_IM_MASK)) };
    let ram = guest_rt::hypercall::vm_info(guest_rt::hypercall::VmInfoKey::RamBytes).unwrap_or(0);
    println!("hostile: starting, ram {} KiB", ram >> 10);

    let mut attempted = 0u64;
    let mut breaches = 0u64;
    for (number, attempt) in attempts::ALL.iter().enumerate() {
        let n = number + 1;
        println!("ATTEMPT {n} {}", attempt.name);
        attempted += 1;
        let result = (attempt.run)(ram);
        if result.breach {
            breaches += 1;
        }
        println!(
            "OUTCOME {n} {}: {}{}",
            attempt.name,
            if result.breach { "BREACH " } else { "" },
            result.text.as_str()
        );
    }
    println!("HOSTILE SUMMARY attempted={attempted} survived={attempted} breaches={breaches}");
    println!("ATTEMPT {} runaway-loop", attempted + 1);
    attempts::runaway_loop()
}
