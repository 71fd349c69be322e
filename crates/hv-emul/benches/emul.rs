//! Host timing of the hot emulation paths: decode, MTC0 emulation, guest TLB lookup.
//!
//! Wall-clock numbers on the build machine, printed as `BENCH <name>=<value> ns`; they show
//! trends only. The instruction counts that matter for the firmware come from QEMU -icount.

use std::hint::black_box;
use std::time::Instant;

use hv_core::addr::Gva;
use hv_emul::cp0::{Cp0Config, Cp0Reg, Status};
use hv_emul::decode::decode;
use hv_emul::emulate::{emulate, GuestCpu, TrapInfo};
use hv_emul::guest_tlb::Access;
use hv_emul::regs::Gpr;

/// Runs `op` `iters` times, best of five rounds, and returns nanoseconds per call.
fn time_per_call(iters: u32, mut op: impl FnMut(u32)) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        for i in 0..iters {
            op(i);
        }
        best = best.min(start.elapsed().as_nanos() as f64 / f64::from(iters));
    }
    best
}

fn main() {
    const ITERS: u32 = 1_000_000;
    // A mix of what traps in practice: MFC0/MTC0, TLBWR, ERET, HYPCALL, a load, a branch.
    let words = [
        0x4008_6000u32,
        0x4089_7000,
        0x4200_0006,
        0x4200_0018,
        0x4200_0028,
        0x8ca6_0008,
        0x1085_ffff,
        0x7c03_e83b,
    ];
    let decode_ns = time_per_call(ITERS, |i| {
        black_box(decode(black_box(words[i as usize % words.len()])));
    });
    println!("BENCH decode_ns={decode_ns:.1} ns");

    let mut cpu = GuestCpu::new(Cp0Config::default(), 0x4000_0000).expect("default config");
    cpu.cp0
        .set_status(Status::IE | Status::from_bits_retain(0xff00));
    // mtc0 a0, EntryLo0 with a changing value.
    let mtc0 = 0x4084_1000;
    let trap = TrapInfo::default();
    let mtc0_ns = time_per_call(ITERS, |i| {
        cpu.gprs.set(Gpr::A0, u64::from(i));
        cpu.pc = 0x4000_0000;
        let _ = black_box(emulate(black_box(mtc0), &mut cpu, &trap));
    });
    println!("BENCH mtc0_emul_ns={mtc0_ns:.1} ns");

    // Fill the guest TLB, then look up the last entry (worst case for the linear search).
    for index in 0..64u64 {
        let _ = cpu.cp0.dmtc0(Cp0Reg::ENTRY_HI, 0x6000_0000 + (index << 13));
        let _ = cpu.cp0.dmtc0(Cp0Reg::ENTRY_LO0, (index << 6) | 0b110);
        let _ = cpu.cp0.dmtc0(Cp0Reg::ENTRY_LO1, (index << 6) | 0b110);
        let _ = cpu.cp0.mtc0(Cp0Reg::INDEX, index);
        let _ = cpu.tlb.write_indexed(&cpu.cp0).expect("index in range");
    }
    let lookup_ns = time_per_call(ITERS, |_| {
        let gva = Gva::new(black_box(0x6000_0000 + (63 << 13)));
        let _ = black_box(cpu.tlb.lookup(gva, 0, Access::Load));
    });
    println!("BENCH guest_tlb_lookup_ns={lookup_ns:.1} ns");
}
