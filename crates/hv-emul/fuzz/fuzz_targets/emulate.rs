//! Fuzz target: arbitrary guest state plus a sequence of arbitrary trapping words.
//!
//! Input layout (missing bytes read as zero): 1 byte TLB size, 4 bytes Status, 32 x 8 bytes
//! GPRs, then records of 13 bytes: word (4), branch flag (1), branch word (4), guest Count
//! (4). Property: `emulate` never panics and Random stays inside the TLB.
#![no_main]

use hv_emul::cp0::{Cp0Config, Cp0Reg};
use hv_emul::emulate::{emulate, GuestCpu, TrapInfo};
use hv_emul::regs::Gprs;
use libfuzzer_sys::fuzz_target;

/// Reads little-endian integers from the input, padding with zeros at the end.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes(data);
    let tlb_entries = usize::from(input.take::<1>()[0] % 64) + 1;
    let config = Cp0Config {
        tlb_entries,
        ..Cp0Config::default()
    };
    let Ok(mut cpu) = GuestCpu::new(config, 0x4000_0000) else {
        return;
    };
    let _ = cpu.cp0.mtc0(Cp0Reg::STATUS, u64::from(input.u32()));
    let mut gprs = [0u64; 32];
    for value in &mut gprs {
        *value = input.u64();
    }
    cpu.gprs = Gprs::from_array(gprs);
    while !input.0.is_empty() {
        let word = input.u32();
        let has_branch = input.take::<1>()[0] & 1 != 0;
        let branch_word = input.u32();
        let trap = TrapInfo {
            branch: has_branch.then_some(branch_word),
            guest_count: input.u32(),
        };
        let _ = emulate(word, &mut cpu, &trap);
        assert!(cpu.cp0.get(Cp0Reg::RANDOM) < tlb_entries as u64);
    }
});
