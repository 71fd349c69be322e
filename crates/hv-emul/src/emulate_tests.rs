//! Tests of `emulate`: one or more per emulated instruction, delay slots, and a fuzz run.

use super::*;
use crate::cp0::{Cause, ExcCode, RegSpec, STATUS_WRITABLE};
use crate::hypercall::nr;
use proptest::prelude::*;

const PC: u64 = 0x4000_2000;
/// General exception vector for EBase at guest KSEG0 0x8000_1000.
const VECTOR: u64 = 0x4000_1180;

fn mfc0(rt: u32, rd: u32, sel: u32) -> u32 {
    0x4000_0000 | rt << 16 | rd << 11 | sel
}
fn dmfc0(rt: u32, rd: u32, sel: u32) -> u32 {
    0x4020_0000 | rt << 16 | rd << 11 | sel
}
fn mtc0(rt: u32, rd: u32, sel: u32) -> u32 {
    0x4080_0000 | rt << 16 | rd << 11 | sel
}
fn dmtc0(rt: u32, rd: u32, sel: u32) -> u32 {
    0x40a0_0000 | rt << 16 | rd << 11 | sel
}
const TLBR: u32 = 0x4200_0001;
const TLBWI: u32 = 0x4200_0002;
const TLBWR: u32 = 0x4200_0006;
const TLBP: u32 = 0x4200_0008;
const ERET: u32 = 0x4200_0018;
const WAIT: u32 = 0x4200_0020;
const HYPCALL: u32 = 0x4200_0028;
const SYSCALL: u32 = 0x0000_000c;
const BREAK: u32 = 0x0000_000d;
const SDBBP: u32 = 0x7000_003f;

fn t(r: u32) -> Gpr {
    Gpr::from_field(r)
}

/// A guest in kernel mode (EXL/ERL clear, BEV clear, EBase = 0x8000_1000), PC at `PC`.
fn kernel_cpu() -> GuestCpu {
    let mut cpu = GuestCpu::new(Cp0Config::default(), PC).unwrap();
    cpu.cp0.set_status(Status::from_bits_retain(0xff00));
    let _ = cpu.cp0.mtc0(Cp0Reg::EBASE, 0x8000_1000);
    cpu
}

/// A guest in user mode.
fn user_cpu() -> GuestCpu {
    let mut cpu = kernel_cpu();
    cpu.cp0
        .set_status(cpu.cp0.status() | Status::UM | Status::IE);
    cpu
}

fn run(cpu: &mut GuestCpu, word: u32) -> EmulOutcome {
    emulate(word, cpu, &TrapInfo::default())
}

fn run_done(cpu: &mut GuestCpu, word: u32) -> HostAction {
    let pc = cpu.pc;
    match run(cpu, word) {
        EmulOutcome::Done(action) => {
            assert_eq!(cpu.pc, pc + 4, "{word:#x} advances the PC");
            action
        }
        other => panic!("{word:#x}: expected Done, got {other:?}"),
    }
}

#[test]
fn mfc0_sign_extends_and_dmfc0_reads_64_bits() {
    let mut cpu = kernel_cpu();
    cpu.cp0.set_raw(Cp0Reg::EPC, 0x1234_5678_8000_0010);
    assert_eq!(run_done(&mut cpu, mfc0(8, 14, 0)), HostAction::None);
    assert_eq!(cpu.gprs.get(t(8)), 0xffff_ffff_8000_0010);
    assert_eq!(run_done(&mut cpu, dmfc0(9, 14, 0)), HostAction::None);
    assert_eq!(cpu.gprs.get(t(9)), 0x1234_5678_8000_0010);
    // EBase.CPUNum and PRId read back through MFC0.
    let _ = run_done(&mut cpu, mfc0(10, 15, 0));
    assert_eq!(cpu.gprs.get(t(10)), 0x0001_8900);
}

#[test]
fn mfc0_count_reads_the_host_derived_count() {
    let mut cpu = kernel_cpu();
    let trap = TrapInfo {
        branch: None,
        guest_count: 0x9000_0000,
    };
    assert_eq!(
        emulate(mfc0(2, 9, 0), &mut cpu, &trap),
        EmulOutcome::Done(HostAction::None)
    );
    assert_eq!(cpu.gprs.get(Gpr::V0), 0xffff_ffff_9000_0000);
}

#[test]
fn mtc0_applies_mask_and_reports_effects() {
    let mut cpu = kernel_cpu();
    cpu.gprs.set(t(4), u64::MAX);
    let action = run_done(&mut cpu, mtc0(4, 12, 0));
    assert_eq!(cpu.cp0.get(Cp0Reg::STATUS), STATUS_WRITABLE);
    assert!(matches!(
        action,
        HostAction::Cp0(Cp0Effect::StatusChanged { .. })
    ));
    // PRId is read-only.
    let _ = run_done(&mut cpu, mtc0(4, 15, 0));
    assert_eq!(cpu.cp0.get(Cp0Reg::PRID), 0x0001_8900);

    let mut cpu = kernel_cpu();
    cpu.gprs.set(t(5), 0x6000_0007);
    assert_eq!(
        run_done(&mut cpu, dmtc0(5, 10, 0)),
        HostAction::Cp0(Cp0Effect::AsidChanged { old: 0, new: 7 })
    );
    cpu.gprs.set(t(6), 500);
    cpu.cp0.raise_timer();
    assert_eq!(
        run_done(&mut cpu, mtc0(6, 11, 0)),
        HostAction::Cp0(Cp0Effect::TimerAck { compare: 500 })
    );
    assert!(!cpu.cp0.cause().contains(Cause::TI));
    assert_eq!(
        run_done(&mut cpu, mtc0(6, 9, 0)),
        HostAction::Cp0(Cp0Effect::CountRebase { count: 500 })
    );
    // Writes to unimplemented registers are ignored.
    assert_eq!(run_done(&mut cpu, mtc0(6, 18, 0)), HostAction::None);
}

#[test]
fn di_and_ei() {
    let mut cpu = kernel_cpu();
    cpu.cp0.set_status(cpu.cp0.status() | Status::IE);
    // di t0
    let action = run_done(&mut cpu, 0x4168_6000);
    assert_eq!(cpu.gprs.get(t(8)), 0xff01);
    assert!(!cpu.cp0.status().contains(Status::IE));
    assert!(matches!(
        action,
        HostAction::Cp0(Cp0Effect::StatusChanged { .. })
    ));
    // ei zero
    let _ = run_done(&mut cpu, 0x4160_6020);
    assert!(cpu.cp0.status().contains(Status::IE));
    assert_eq!(run_done(&mut cpu, 0x4160_6020), HostAction::None);
}

/// Loads EntryHi/EntryLo0/EntryLo1/PageMask/Index through emulated MTC0s.
fn stage_entry(cpu: &mut GuestCpu, hi: u64, lo0: u64, lo1: u64, mask: u64, index: u64) {
    for (value, word) in [
        (hi, dmtc0(8, 10, 0)),
        (lo0, dmtc0(8, 2, 0)),
        (lo1, dmtc0(8, 3, 0)),
        (mask, mtc0(8, 5, 0)),
        (index, mtc0(8, 0, 0)),
    ] {
        cpu.gprs.set(t(8), value);
        let _ = run_done(cpu, word);
    }
}

#[test]
fn tlb_write_probe_and_read() {
    let mut cpu = kernel_cpu();
    stage_entry(
        &mut cpu,
        0x6000_0000 | 3,
        0x40 << 6 | 0b111,
        0x41 << 6 | 0b010,
        0,
        5,
    );
    let HostAction::TlbWrite(w) = run_done(&mut cpu, TLBWI) else {
        panic!("TLBWI must report the write");
    };
    assert_eq!(
        (w.index, w.old.present, w.new.entry_hi),
        (5, false, 0x6000_0003)
    );
    // Probe from another index.
    stage_entry(&mut cpu, 0x6000_0000 | 3, 0, 0, 0, 0);
    assert_eq!(run_done(&mut cpu, TLBP), HostAction::None);
    assert_eq!(cpu.cp0.get(Cp0Reg::INDEX), 5);
    // Probe for an ASID that is not there.
    stage_entry(&mut cpu, 0x6000_0000 | 4, 0, 0, 0, 0);
    let _ = run_done(&mut cpu, TLBP);
    assert_ne!(cpu.cp0.get(Cp0Reg::INDEX) & (1 << 31), 0);
    // Read entry 5 back: the ASID changes from 4 to 3.
    let _ = cpu.cp0.mtc0(Cp0Reg::INDEX, 5);
    assert_eq!(
        run_done(&mut cpu, TLBR),
        HostAction::Cp0(Cp0Effect::AsidChanged { old: 4, new: 3 })
    );
    assert_eq!(cpu.cp0.get(Cp0Reg::ENTRY_LO0), 0x40 << 6 | 0b110);
    assert_eq!(cpu.cp0.get(Cp0Reg::ENTRY_LO1), 0x41 << 6 | 0b010);
    // A guest kernel load through the entry now translates.
    assert!(cpu
        .tlb
        .lookup(Gva::new(0x6000_1000), 3, Access::Load)
        .is_ok());
}

#[test]
fn tlbwr_respects_wired_and_out_of_range_index_is_ignored() {
    let mut cpu = GuestCpu::new(
        Cp0Config {
            tlb_entries: 48,
            ..Cp0Config::default()
        },
        PC,
    )
    .unwrap();
    cpu.cp0.set_status(Status::empty());
    let _ = cpu.cp0.mtc0(Cp0Reg::WIRED, 40);
    for n in 0..20u64 {
        // A new pair each time: the same one twice would be a duplicate match.
        let _ = cpu.cp0.dmtc0(Cp0Reg::ENTRY_HI, 0x10_0000 + (n << 13));
        let HostAction::TlbWrite(w) = run_done(&mut cpu, TLBWR) else {
            panic!("TLBWR must write");
        };
        assert!((40..48).contains(&w.index));
    }
    let _ = cpu.cp0.mtc0(Cp0Reg::INDEX, 50);
    assert_eq!(
        run_done(&mut cpu, TLBWI),
        HostAction::Ignored(Ignored::TlbIndex(TlbOpError::IndexOutOfRange(50)))
    );
}

#[test]
fn duplicate_tlb_match_is_a_machine_check_and_writes_nothing() {
    let mut cpu = GuestCpu::new(
        Cp0Config {
            tlb_entries: 16,
            ..Cp0Config::default()
        },
        PC,
    )
    .unwrap();
    cpu.cp0.set_status(Status::empty());
    let _ = cpu.cp0.mtc0(Cp0Reg::EBASE, 0x8000_1000);
    let _ = cpu.cp0.dmtc0(Cp0Reg::ENTRY_HI, 0x6000_0000 | 3);
    let _ = cpu.cp0.dmtc0(Cp0Reg::ENTRY_LO0, 0x100 << 6 | 0x1e);
    let _ = cpu.cp0.mtc0(Cp0Reg::INDEX, 5);
    let HostAction::TlbWrite(_) = run_done(&mut cpu, TLBWI) else {
        panic!("the first write must be done");
    };
    // The same pair under the same ASID at another index: refused with a machine check.
    cpu.pc = PC;
    let _ = cpu.cp0.mtc0(Cp0Reg::INDEX, 2);
    let _ = cpu.cp0.dmtc0(Cp0Reg::ENTRY_LO0, 0x200 << 6 | 0x1e);
    let before = cpu.tlb.clone();
    let out = emulate(TLBWI, &mut cpu, &TrapInfo::default());
    assert_eq!(
        out,
        EmulOutcome::Injected(GuestException::MachineCheck {
            index: 2,
            conflict: 5
        })
    );
    assert_eq!(cpu.tlb, before, "a refused write changes nothing");
    assert_eq!(cpu.cp0.get(Cp0Reg::EPC), PC);
    assert!(cpu.cp0.status().contains(Status::TS | Status::EXL));
    assert_eq!(cpu.cp0.cause().exc_code(), Some(ExcCode::MCheck));
    // Rewriting the same index is no duplicate.
    cpu.cp0.set_status(Status::empty());
    cpu.pc = PC;
    let _ = cpu.cp0.mtc0(Cp0Reg::INDEX, 5);
    let HostAction::TlbWrite(w) = run_done(&mut cpu, TLBWI) else {
        panic!("rewriting entry 5 must be done");
    };
    assert_eq!(w.changed_ranges()[0], Some((0x6000_0000, 0x6000_2000)));
}

#[test]
fn eret_from_exception_and_from_error() {
    let mut cpu = kernel_cpu();
    cpu.cp0
        .set_status(cpu.cp0.status() | Status::EXL | Status::UM);
    cpu.cp0.set_raw(Cp0Reg::EPC, 0x1000_0000);
    let outcome = run(&mut cpu, ERET);
    assert!(matches!(
        outcome,
        EmulOutcome::Done(HostAction::Cp0(Cp0Effect::StatusChanged { .. }))
    ));
    assert_eq!(cpu.pc, 0x1000_0000);
    assert!(!cpu.cp0.status().contains(Status::EXL));
    assert_eq!(cpu.cp0.mode(), GuestMode::User);

    let mut cpu = kernel_cpu();
    cpu.cp0
        .set_status(cpu.cp0.status() | Status::ERL | Status::EXL);
    cpu.cp0.set_raw(Cp0Reg::ERROR_EPC, 0x4000_0100);
    cpu.cp0.set_raw(Cp0Reg::EPC, 0x1000_0000);
    let _ = run(&mut cpu, ERET);
    assert_eq!(cpu.pc, 0x4000_0100);
    assert!(!cpu.cp0.status().contains(Status::ERL));
    assert!(cpu.cp0.status().contains(Status::EXL));
}

#[test]
fn eret_in_delay_slot_is_reserved() {
    let mut cpu = kernel_cpu();
    let trap = TrapInfo {
        branch: Some(0x1000_0004),
        guest_count: 0,
    };
    let outcome = emulate(ERET, &mut cpu, &trap);
    assert_eq!(
        outcome,
        EmulOutcome::Injected(GuestException::ReservedInstruction)
    );
    assert_eq!(cpu.cp0.get(Cp0Reg::EPC), PC);
    assert!(cpu.cp0.cause().contains(Cause::BD));
}

#[test]
fn wait_idles_or_halts() {
    let mut cpu = kernel_cpu();
    assert_eq!(run(&mut cpu, WAIT), EmulOutcome::Wait);
    assert_eq!(cpu.pc, PC + 4);
    cpu.cp0.set_status(Status::empty());
    assert_eq!(
        run(&mut cpu, WAIT),
        EmulOutcome::Halt(HaltReason::WaitForever)
    );
}

#[test]
fn cache_is_a_counted_no_op() {
    let mut cpu = kernel_cpu();
    cpu.gprs.set(t(4), 0x4000_0000);
    assert_eq!(
        run_done(&mut cpu, 0xbc99_0010),
        HostAction::Cache {
            op: 0x19,
            gva: Gva::new(0x4000_0010)
        }
    );
}

#[test]
fn rdhwr_in_kernel_and_user_mode() {
    let trap = TrapInfo {
        branch: None,
        guest_count: 1234,
    };
    let mut cpu = GuestCpu::new(
        Cp0Config {
            cpu_num: 3,
            ..Cp0Config::default()
        },
        PC,
    )
    .unwrap();
    cpu.cp0.set_status(Status::empty());
    let _ = cpu.cp0.dmtc0(Cp0Reg::USER_LOCAL, 0xdead_beef_0000_1000);
    let rdhwr = |rd: u32| 0x7c00_003b | 3 << 16 | rd << 11;
    for (rd, expected) in [
        (0, 3),
        (1, 32),
        (2, 1234),
        (3, GUEST_CC_RES),
        (29, 0xdead_beef_0000_1000),
    ] {
        assert_eq!(
            emulate(rdhwr(rd), &mut cpu, &trap),
            EmulOutcome::Done(HostAction::None)
        );
        assert_eq!(cpu.gprs.get(Gpr::V1), expected, "rdhwr {rd}");
    }
    assert_eq!(
        emulate(rdhwr(5), &mut cpu, &trap),
        EmulOutcome::Injected(GuestException::ReservedInstruction)
    );
    // User mode: only what HWREna enables.
    let mut cpu = GuestCpu::new(Cp0Config::default(), PC).unwrap();
    let _ = cpu.cp0.mtc0(Cp0Reg::HWRENA, 1 << 29);
    cpu.cp0.set_status(Status::UM);
    assert_eq!(
        emulate(rdhwr(29), &mut cpu, &trap),
        EmulOutcome::Done(HostAction::None)
    );
    let outcome = emulate(rdhwr(2), &mut cpu, &trap);
    assert_eq!(
        outcome,
        EmulOutcome::Injected(GuestException::ReservedInstruction)
    );
    assert_eq!(cpu.cp0.cause().exc_code(), Some(ExcCode::Ri));
    assert_eq!(cpu.cp0.get(Cp0Reg::EPC), PC + 4);
}

#[test]
fn privileged_instructions_in_user_mode_raise_cpu() {
    for word in [
        mfc0(2, 12, 0),
        mtc0(2, 12, 0),
        TLBWI,
        ERET,
        WAIT,
        HYPCALL,
        0xbc99_0010,
        0x4168_6000,
    ] {
        let mut cpu = user_cpu();
        let before = cpu.cp0.get(Cp0Reg::STATUS);
        let outcome = run(&mut cpu, word);
        assert_eq!(
            outcome,
            EmulOutcome::Injected(GuestException::CoprocessorUnusable { unit: 0 })
        );
        assert_eq!(cpu.pc, VECTOR);
        assert_eq!(cpu.cp0.get(Cp0Reg::EPC), PC);
        assert_eq!(cpu.cp0.cause().exc_code(), Some(ExcCode::CpU));
        assert_eq!(cpu.cp0.cause().ce(), 0);
        assert_eq!(
            cpu.cp0.get(Cp0Reg::STATUS),
            before | u64::from(Status::EXL.bits())
        );
    }
    // Status.CU0 grants user mode access.
    let mut cpu = user_cpu();
    cpu.cp0.set_status(cpu.cp0.status() | Status::CU0);
    assert_eq!(run_done(&mut cpu, mfc0(2, 12, 0)), HostAction::None);
}

#[test]
fn hypercalls_valid_and_refused() {
    let mut cpu = kernel_cpu();
    cpu.gprs.set(Gpr::V0, nr::EXIT);
    cpu.gprs.set(Gpr::A0, 7);
    assert_eq!(
        run(&mut cpu, HYPCALL),
        EmulOutcome::Hypercall(Hypercall::Exit { status: 7 })
    );
    assert_eq!(cpu.pc, PC + 4);
    cpu.gprs.set(Gpr::V0, 0x777);
    assert_eq!(
        run_done(&mut cpu, HYPCALL),
        HostAction::Ignored(Ignored::Hypercall(HypercallError::UnknownCall))
    );
    assert_eq!(
        cpu.gprs.get(Gpr::V0) as i64,
        HypercallError::UnknownCall.code()
    );
}

#[test]
fn syscall_break_and_unknown_are_reflected() {
    for (word, exc, code) in [
        (SYSCALL, GuestException::Syscall, ExcCode::Sys),
        (BREAK, GuestException::Break, ExcCode::Bp),
        (
            0x4600_0000,
            GuestException::ReservedInstruction,
            ExcCode::Ri,
        ),
        (
            0x4200_003f,
            GuestException::ReservedInstruction,
            ExcCode::Ri,
        ),
    ] {
        let mut cpu = user_cpu();
        assert_eq!(run(&mut cpu, word), EmulOutcome::Injected(exc));
        assert_eq!(cpu.cp0.cause().exc_code(), Some(code));
        assert_eq!(cpu.pc, VECTOR);
    }
}

#[test]
fn sdbbp_is_a_reserved_instruction_in_both_modes() {
    for mut cpu in [kernel_cpu(), user_cpu()] {
        assert_eq!(
            run(&mut cpu, SDBBP | (1 << 6)),
            EmulOutcome::Injected(GuestException::ReservedInstruction)
        );
        assert_eq!(cpu.cp0.cause().exc_code(), Some(ExcCode::Ri));
        assert!(!cpu.cp0.cause().contains(Cause::BD));
        assert_eq!(cpu.cp0.get(Cp0Reg::EPC), PC);
        assert_eq!(cpu.pc, VECTOR);
    }
}

#[test]
fn sdbbp_in_delay_slot_reports_the_branch() {
    let mut cpu = kernel_cpu();
    // beq zero, zero, +16 (taken); delay slot: sdbbp.
    let trap = TrapInfo {
        branch: Some(0x1000_0004),
        guest_count: 0,
    };
    assert_eq!(
        emulate(SDBBP, &mut cpu, &trap),
        EmulOutcome::Injected(GuestException::ReservedInstruction)
    );
    assert_eq!(cpu.cp0.get(Cp0Reg::EPC), PC);
    assert!(cpu.cp0.cause().contains(Cause::BD));
    assert_eq!(cpu.pc, VECTOR);
}

#[test]
fn branch_outside_delay_slot_is_a_host_error() {
    let mut cpu = kernel_cpu();
    let before = cpu.clone();
    assert_eq!(
        run(&mut cpu, 0x1000_0004),
        EmulOutcome::Fail(EmulError::NotTrapping(0x1000_0004))
    );
    assert_eq!(cpu, before);
}

// ---- delay slots ----

#[test]
fn taken_branch_with_cp0_read_in_delay_slot() {
    let mut cpu = kernel_cpu();
    cpu.gprs.set(t(8), 5);
    // bne t0, zero, +16 ; delay slot: mfc0 t0, Status (overwrites the branch operand).
    let trap = TrapInfo {
        branch: Some(0x1500_0010),
        guest_count: 0,
    };
    assert_eq!(
        emulate(mfc0(8, 12, 0), &mut cpu, &trap),
        EmulOutcome::Done(HostAction::None)
    );
    assert_eq!(cpu.pc, PC + 4 + 64);
    assert_eq!(cpu.gprs.get(t(8)), 0xff00);
}

#[test]
fn not_taken_branch_continues_after_slot() {
    let mut cpu = kernel_cpu();
    let trap = TrapInfo {
        branch: Some(0x1500_0010),
        guest_count: 0,
    };
    let _ = emulate(mfc0(9, 12, 0), &mut cpu, &trap);
    assert_eq!(cpu.pc, PC + 8);
}

#[test]
fn jal_links_and_delay_slot_write_wins() {
    let mut cpu = kernel_cpu();
    // jal to index 0x10_0040 in the current region; delay slot: mtc0 ra, EPC.
    let jal = 0x0c10_0040;
    cpu.gprs.set(Gpr::RA, 0x99);
    let trap = TrapInfo {
        branch: Some(jal),
        guest_count: 0,
    };
    let _ = emulate(mtc0(31, 14, 0), &mut cpu, &trap);
    assert_eq!(cpu.pc, 0x4040_0100);
    assert_eq!(cpu.gprs.get(Gpr::RA), PC + 8);
    // The delay slot reads $ra *after* the link: EPC gets the new value.
    assert_eq!(cpu.cp0.get(Cp0Reg::EPC), PC + 8);
    // jal ; delay slot mfc0 ra, Status: the delay-slot result wins over the link.
    let mut cpu = kernel_cpu();
    let _ = emulate(mfc0(31, 12, 0), &mut cpu, &trap);
    assert_eq!(cpu.gprs.get(Gpr::RA), 0xff00);
}

#[test]
fn jr_with_wait_in_delay_slot() {
    let mut cpu = kernel_cpu();
    cpu.gprs.set(Gpr::RA, 0x4000_3000);
    let trap = TrapInfo {
        branch: Some(0x03e0_0008),
        guest_count: 0,
    };
    assert_eq!(emulate(WAIT, &mut cpu, &trap), EmulOutcome::Wait);
    assert_eq!(cpu.pc, 0x4000_3000);
}

#[test]
fn exception_in_delay_slot_restarts_the_branch() {
    let mut cpu = user_cpu();
    cpu.gprs.set(Gpr::RA, 0x1111);
    // bltzal zero, +4 (never taken, always links) ; delay slot: mfc0 in user mode.
    let trap = TrapInfo {
        branch: Some(0x0410_0004),
        guest_count: 0,
    };
    let outcome = emulate(mfc0(2, 12, 0), &mut cpu, &trap);
    assert_eq!(
        outcome,
        EmulOutcome::Injected(GuestException::CoprocessorUnusable { unit: 0 })
    );
    assert_eq!(cpu.gprs.get(Gpr::RA), 0x1111, "link undone");
    assert_eq!(cpu.cp0.get(Cp0Reg::EPC), PC);
    assert!(cpu.cp0.cause().contains(Cause::BD));
    assert_eq!(cpu.pc, VECTOR);
}

#[test]
fn inconsistent_delay_slot_reports_fail_without_changes() {
    let mut cpu = kernel_cpu();
    cpu.gprs.set(Gpr::RA, 3);
    let before = cpu.clone();
    let trap = TrapInfo {
        branch: Some(SYSCALL),
        guest_count: 0,
    };
    assert_eq!(
        emulate(mfc0(2, 12, 0), &mut cpu, &trap),
        EmulOutcome::Fail(EmulError::Branch(BranchError::NotABranch(SYSCALL)))
    );
    assert_eq!(cpu, before);
    // beql t0, t1 not taken: its delay slot cannot have trapped.
    cpu.gprs.set(t(8), 1);
    let before = cpu.clone();
    let trap = TrapInfo {
        branch: Some(0x5109_0004),
        guest_count: 0,
    };
    assert_eq!(
        emulate(mfc0(2, 12, 0), &mut cpu, &trap),
        EmulOutcome::Fail(EmulError::NullifiedDelaySlot)
    );
    assert_eq!(cpu, before);
}

// ---- MMIO ----

#[test]
fn mmio_load_through_kseg_window() {
    let mut cpu = kernel_cpu();
    cpu.gprs.set(t(5), 0x5000_0000);
    // lw a2, 8(a1)
    let word = 0x8ca6_0008;
    let EmulOutcome::Mmio(req) = run(&mut cpu, word) else {
        panic!("expected MMIO")
    };
    assert_eq!(req.gpa, Gpa::new(0x1000_0008));
    assert_eq!(req.gva, Gva::new(0x5000_0008));
    assert_eq!(req.width, Width::Word);
    assert_eq!(
        req.kind,
        MmioKind::Load {
            rt: t(6),
            signed: true
        }
    );
    assert_eq!(cpu.pc, PC, "PC moves only on completion");
    complete_mmio(&mut cpu, &req, 0x1_8000_0001);
    assert_eq!(cpu.gprs.get(t(6)), 0xffff_ffff_8000_0001);
    assert_eq!(cpu.pc, PC + 4);
}

#[test]
fn mmio_load_zero_extension_and_store_truncation() {
    let mut cpu = kernel_cpu();
    cpu.gprs.set(t(5), 0x5000_0003);
    // lbu a2, 0(a1)
    let EmulOutcome::Mmio(req) = run(&mut cpu, 0x90a6_0000) else {
        panic!("expected MMIO")
    };
    complete_mmio(&mut cpu, &req, 0xfff0);
    assert_eq!(cpu.gprs.get(t(6)), 0xf0);
    // lh a2, -1(a1) at 0x5000_0002
    let EmulOutcome::Mmio(req) = run(&mut cpu, 0x84a6_ffff) else {
        panic!("expected MMIO")
    };
    complete_mmio(&mut cpu, &req, 0x8001);
    assert_eq!(cpu.gprs.get(t(6)), 0xffff_ffff_ffff_8001);
    // sh a2, 1(a1): value truncated to 16 bits.
    cpu.gprs.set(t(6), 0x1234_5678);
    let EmulOutcome::Mmio(req) = run(&mut cpu, 0xa4a6_ffff) else {
        panic!("expected MMIO")
    };
    assert_eq!(req.kind, MmioKind::Store { value: 0x5678 });
    assert_eq!(req.gpa, Gpa::new(0x1000_0002));
    // sd to a mapped KSEG2 page through the guest TLB.
    stage_entry(&mut cpu, 0x6000_0000, 0x1f00 << 6 | 0b110, 0, 0, 0);
    let _ = run_done(&mut cpu, TLBWI);
    cpu.gprs.set(t(7), 0x6000_0ff8);
    // sd a2, 0(a3)
    let EmulOutcome::Mmio(req) = run(&mut cpu, 0xfce6_0000) else {
        panic!("expected MMIO")
    };
    assert_eq!(req.gpa, Gpa::new(0x1f0_0ff8));
    assert_eq!(req.kind, MmioKind::Store { value: 0x1234_5678 });
}

#[test]
fn mmio_faults_become_guest_exceptions() {
    // Misaligned word load.
    let mut cpu = kernel_cpu();
    cpu.gprs.set(t(5), 0x5000_0002);
    let outcome = run(&mut cpu, 0x8ca6_0000);
    assert_eq!(
        outcome,
        EmulOutcome::Injected(GuestException::AddressError {
            bad_vaddr: 0x5000_0002,
            access: Access::Load
        })
    );
    assert_eq!(cpu.cp0.get(Cp0Reg::BAD_VADDR), 0x5000_0002);
    // User-mode store to the kernel window.
    let mut cpu = user_cpu();
    cpu.gprs.set(t(5), 0x5000_0000);
    let outcome = run(&mut cpu, 0xaca6_0000);
    assert_eq!(
        outcome,
        EmulOutcome::Injected(GuestException::AddressError {
            bad_vaddr: 0x5000_0000,
            access: Access::Store
        })
    );
    assert_eq!(cpu.cp0.cause().exc_code(), Some(ExcCode::AdES));
    // Kernel load from unmapped KSEG2: refill at offset 0.
    let mut cpu = kernel_cpu();
    cpu.gprs.set(t(5), 0x6000_4000);
    let outcome = run(&mut cpu, 0x8ca6_0000);
    assert!(matches!(
        outcome,
        EmulOutcome::Injected(GuestException::TlbRefill { .. })
    ));
    assert_eq!(cpu.pc, 0x4000_1000);
    assert_eq!(cpu.cp0.get(Cp0Reg::ENTRY_HI) & !0xff, 0x6000_4000);
}

// ---- fuzz ----

/// Bits of each register that the hypervisor itself may change, beyond the guest mask.
fn hardware_owned(reg: Cp0Reg) -> u64 {
    match reg {
        // BD, TI, CE, IP7..IP2, ExcCode.
        Cp0Reg::CAUSE => 0xf000_fc7c,
        Cp0Reg::BAD_VADDR => u64::MAX,
        Cp0Reg::CONTEXT => 0x7f_fff0,
        Cp0Reg::XCONTEXT => 0x1_ffff_fff0,
        Cp0Reg::INDEX => 1 << 31,
        Cp0Reg::RANDOM => 0x3f,
        _ => 0,
    }
}

fn interesting_word() -> impl Strategy<Value = u32> {
    prop_oneof![
        any::<u32>(),
        // Well-formed MFC0/DMFC0/MTC0/DMTC0 on any register, and raw COP0 words.
        (
            prop::sample::select(vec![0u32, 1, 4, 5]),
            0u32..32,
            0u32..32,
            0u32..8
        )
            .prop_map(|(op, rt, rd, sel)| 0x4000_0000
                | op << 21
                | rt << 16
                | rd << 11
                | sel),
        (0u32..0x0400_0000).prop_map(|low| 0x4000_0000 | low),
        (0u32..0x40).prop_map(|f| 0x4200_0000 | f),
        // Loads, stores, CACHE.
        (0x20u32..0x40, any::<u16>(), 0u32..32, 0u32..32)
            .prop_map(|(op, imm, rs, rt)| op << 26 | rs << 21 | rt << 16 | u32::from(imm)),
        // RDHWR.
        (0u32..32, 0u32..32).prop_map(|(rt, rd)| 0x7c00_003b | rt << 16 | rd << 11),
    ]
}

fn branch_word() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![
        Just(None),
        any::<u32>().prop_map(Some),
        // BEQ..BGTZ, likely forms, REGIMM, J/JAL.
        (
            prop::sample::select(vec![1u32, 2, 3, 4, 5, 6, 7, 0x14, 0x15, 0x16, 0x17]),
            any::<u32>()
        )
            .prop_map(|(op, low)| Some(op << 26 | (low & 0x03ff_ffff))),
    ]
}

fn register_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        0u64..0x8000_0000,
        (0u64..0x8000_0000).prop_map(|v| v & !7),
        Just(0),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary words on arbitrary guest states: emulate never panics, read-only CP0 bits
    /// never change, Random stays in range, and $zero stays zero.
    #[test]
    fn emulate_never_panics_and_keeps_read_only_bits(
        writes in prop::collection::vec((0u8..32, 0u8..8, any::<u64>()), 0..24),
        status in any::<u32>(),
        gprs in prop::array::uniform32(register_value()),
        steps in prop::collection::vec((interesting_word(), branch_word(), any::<u32>()), 1..8),
        pc in register_value(),
        tlb_entries in 1usize..=64,
    ) {
        let config = Cp0Config { tlb_entries, cpu_num: 1, ..Cp0Config::default() };
        let mut cpu = GuestCpu::new(config, pc & !3).unwrap();
        for (reg, sel, value) in writes {
            let _ = cpu.cp0.dmtc0(Cp0Reg::new(reg, sel), value);
        }
        let _ = cpu.cp0.mtc0(Cp0Reg::STATUS, u64::from(status));
        cpu.gprs = Gprs::from_array(gprs);
        for (word, branch, guest_count) in steps {
            let before = cpu.cp0.clone();
            let _ = emulate(word, &mut cpu, &TrapInfo { branch, guest_count });
            for reg in Cp0Reg::all() {
                let spec = cpu.cp0.spec(reg).unwrap_or(RegSpec { writable: 0, wide: true });
                let fixed = !(spec.writable | hardware_owned(reg));
                prop_assert_eq!(
                    (before.get(reg) ^ cpu.cp0.get(reg)) & fixed, 0,
                    "read-only bits of {:?} changed by {:#x}", reg, word
                );
            }
            prop_assert!(cpu.cp0.get(Cp0Reg::RANDOM) < tlb_entries as u64);
            prop_assert_eq!(cpu.gprs.get(Gpr::ZERO), 0);
        }
    }
}
