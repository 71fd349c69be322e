//! General-purpose register names and the guest's GPR file.
//!
//! `$zero` is hard-wired: writes to it are dropped here, once, so no emulation path has to
//! remember the rule.

use core::fmt;

/// A general-purpose register number, always in `0..32`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gpr(u8);

impl Gpr {
    /// `$zero`, reads as 0, writes are ignored.
    pub const ZERO: Gpr = Gpr(0);
    /// `$v0`, hypercall result.
    pub const V0: Gpr = Gpr(2);
    /// `$v1`.
    pub const V1: Gpr = Gpr(3);
    /// `$a0`, first hypercall argument.
    pub const A0: Gpr = Gpr(4);
    /// `$a1`.
    pub const A1: Gpr = Gpr(5);
    /// `$a2`.
    pub const A2: Gpr = Gpr(6);
    /// `$a3`.
    pub const A3: Gpr = Gpr(7);
    /// `$sp`.
    pub const SP: Gpr = Gpr(29);
    /// `$ra`, the link register of JAL and the REGIMM linking branches.
    pub const RA: Gpr = Gpr(31);

    /// The register numbered by the low five bits of `field` (instruction fields are 5 bits).
    pub const fn from_field(field: u32) -> Self {
        // Masking makes the value a valid register number by construction.
        Gpr((field & 0x1f) as u8)
    }

    /// The register number, `0..32`.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Debug for Gpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${}", self.0)
    }
}

/// The 32 guest general-purpose registers, 64 bits each.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Gprs([u64; 32]);

impl Gprs {
    /// All registers zero.
    pub const fn new() -> Self {
        Gprs([0; 32])
    }

    /// Builds a register file from raw values; `$zero` is forced to 0.
    pub fn from_array(mut values: [u64; 32]) -> Self {
        values[0] = 0;
        Gprs(values)
    }

    /// The register values, `$zero` first.
    pub fn as_array(&self) -> &[u64; 32] {
        &self.0
    }

    /// Replaces every register with `values` through `copy` (a block copy the caller
    /// supplies, e.g. one tuned for the host); `$zero` is forced to 0 afterwards.
    pub fn copy_from_with(
        &mut self,
        values: &[u64; 32],
        copy: impl FnOnce(&mut [u64; 32], &[u64; 32]),
    ) {
        copy(&mut self.0, values);
        self.0[0] = 0;
    }

    /// Reads `reg`.
    pub fn get(&self, reg: Gpr) -> u64 {
        self.0[reg.index()]
    }

    /// Writes `reg`; a write to `$zero` is dropped.
    pub fn set(&mut self, reg: Gpr, value: u64) {
        if reg != Gpr::ZERO {
            self.0[reg.index()] = value;
        }
    }
}

impl fmt::Debug for Gprs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().enumerate().filter(|(_, v)| **v != 0))
            .finish()
    }
}

/// Sign-extends the low 32 bits of `value` to 64 bits, as every 32-bit MIPS64 result is.
pub const fn sign_extend32(value: u64) -> u64 {
    value as u32 as i32 as i64 as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_from_with_keeps_zero_hardwired() {
        let mut regs = Gprs::new();
        let values: [u64; 32] = core::array::from_fn(|i| 100 + i as u64);
        regs.copy_from_with(&values, |dst, src| *dst = *src);
        assert_eq!(regs.as_array()[0], 0);
        assert_eq!(regs.as_array()[1..], values[1..]);
    }

    #[test]
    fn zero_register_ignores_writes() {
        let mut regs = Gprs::new();
        regs.set(Gpr::ZERO, 5);
        regs.set(Gpr::RA, 7);
        assert_eq!(regs.get(Gpr::ZERO), 0);
        assert_eq!(regs.get(Gpr::RA), 7);
        let mut raw = [1u64; 32];
        raw[0] = 9;
        assert_eq!(Gprs::from_array(raw).get(Gpr::ZERO), 0);
    }

    #[test]
    fn field_is_masked_to_five_bits() {
        assert_eq!(Gpr::from_field(0x3f).index(), 31);
        assert_eq!(Gpr::from_field(4), Gpr::A0);
    }

    #[test]
    fn sign_extension_of_32_bit_results() {
        assert_eq!(sign_extend32(0x8000_0000), 0xffff_ffff_8000_0000);
        assert_eq!(sign_extend32(0x1234_7fff_ffff), 0x7fff_ffff);
    }
}
