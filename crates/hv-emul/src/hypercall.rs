//! The mipsvisor hypercall interface: numbers, argument validation and error codes.
//!
//! A guest kernel runs `HYPCALL` (code field 0) with the call number in `$v0` and up to four
//! arguments in `$a0..$a3`; the result comes back in `$v0`. Negative results are errors.
//! Validation happens here, before the host does anything: an unknown number, a non-zero
//! code field or a bad argument never reaches the firmware's handlers and never stops the
//! host; the guest just gets an error code. The full ABI is in `docs/guest-abi.md`.

use hv_core::addr::{Gpa, Gva, PAGE_SIZE};

use crate::abi::translate;
use crate::cp0::GuestMode;
use crate::guest_tlb::{Access, GuestTlb};
use crate::regs::{Gpr, Gprs};

/// Version of the hypercall ABI reported by [`VmInfoKey::AbiVersion`].
pub const ABI_VERSION: u64 = 1;

/// Largest console write accepted in one call, in bytes.
pub const CONSOLE_WRITE_MAX_BYTES: u64 = 256;

/// Hypercall numbers (`$v0` on entry).
pub mod nr {
    /// Write bytes to the VM's console: `a0` = buffer address, `a1` = length.
    pub const CONSOLE_WRITE: u64 = 1;
    /// Stop the VM with exit status `a0`.
    pub const EXIT: u64 = 2;
    /// Read one VM property: `a0` = [`super::VmInfoKey`] number.
    pub const VM_INFO: u64 = 3;
    /// Give up the rest of the time slice.
    pub const YIELD: u64 = 4;
    /// Restart the VM: its image (and device tree) loaded again, vCPU 0 from reset.
    pub const RESTART: u64 = 5;
}

/// Error codes returned in `$v0` (as negative numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HypercallError {
    /// No such hypercall (or a non-zero HYPCALL code field).
    UnknownCall,
    /// An argument is out of range.
    BadArgument,
    /// A buffer is not mapped in the guest, or not accessible from the guest's mode.
    BadAddress,
}

impl HypercallError {
    /// The value the guest sees in `$v0`.
    pub const fn code(self) -> i64 {
        match self {
            HypercallError::UnknownCall => -1,
            HypercallError::BadArgument => -2,
            HypercallError::BadAddress => -3,
        }
    }
}

impl core::fmt::Display for HypercallError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            HypercallError::UnknownCall => "unknown hypercall",
            HypercallError::BadArgument => "bad hypercall argument",
            HypercallError::BadAddress => "bad hypercall buffer address",
        })
    }
}

/// Properties a guest can ask for with [`nr::VM_INFO`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmInfoKey {
    /// [`ABI_VERSION`].
    AbiVersion = 0,
    /// This vCPU's number within the VM.
    VcpuId = 1,
    /// Number of vCPUs of the VM.
    VcpuCount = 2,
    /// Guest RAM size in bytes.
    RamBytes = 3,
    /// The VM's number.
    VmId = 4,
    /// Guest physical address of the VM's read-only memory slot; -2 when it has none.
    ReadOnlyBase = 7,
    /// Size in bytes of that read-only slot; -2 when the VM has none.
    ReadOnlyBytes = 8,
    /// The VM's configured workload, as a [`Workload::code`] (error when none is set).
    Workload = 9,
    /// The workload's argument (error when none is set).
    WorkloadArg = 10,
    /// Full scans the dedup service has completed so far (all VMs; 0 when dedup is off).
    DedupFullScans = 11,
    /// Idle-tracking passes completed over this VM (0 when idle tracking is off).
    IdlePasses = 12,
    /// Guest physical address of the VM's first virtio-mmio balloon transport (error when
    /// the VM has none).
    BalloonGpa = 13,
}

impl VmInfoKey {
    fn from_raw(raw: u64) -> Option<Self> {
        Some(match raw {
            0 => VmInfoKey::AbiVersion,
            1 => VmInfoKey::VcpuId,
            2 => VmInfoKey::VcpuCount,
            3 => VmInfoKey::RamBytes,
            4 => VmInfoKey::VmId,
            7 => VmInfoKey::ReadOnlyBase,
            8 => VmInfoKey::ReadOnlyBytes,
            9 => VmInfoKey::Workload,
            10 => VmInfoKey::WorkloadArg,
            11 => VmInfoKey::DedupFullScans,
            12 => VmInfoKey::IdlePasses,
            13 => VmInfoKey::BalloonGpa,
            _ => return None,
        })
    }
}

/// What a memory-services test guest should do, chosen per VM by the configuration and
/// reported as [`VmInfoKey::Workload`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Fill memory with mergeable pages, wait for dedup scans, copy-on-write, verify.
    Dedup,
    /// Drive a virtio-balloon device.
    Balloon,
    /// Touch all memory in waves and verify it (for swap).
    Swap,
    /// Keep a known working set busy (for idle-page tracking).
    Idle,
    /// Random page writes and verified reads.
    Stress,
    /// Touch pages of RAM (the argument's count, or all of it) and verify them: a VM that
    /// may go over its memory limit.
    Hog,
    /// Stuck: WAIT with only an interrupt line unmasked that is never raised.
    StuckWait,
    /// Stuck: the yield hypercall forever.
    StuckYield,
    /// Stuck: BREAK and TEQ traps alternating between two PCs forever.
    StuckStorm,
}

impl Workload {
    /// Every workload, in code order.
    pub const ALL: [Workload; 9] = [
        Workload::Dedup,
        Workload::Balloon,
        Workload::Swap,
        Workload::Idle,
        Workload::Stress,
        Workload::Hog,
        Workload::StuckWait,
        Workload::StuckYield,
        Workload::StuckStorm,
    ];

    /// The number a guest reads from [`VmInfoKey::Workload`].
    pub const fn code(self) -> u64 {
        match self {
            Workload::Dedup => 1,
            Workload::Balloon => 2,
            Workload::Swap => 3,
            Workload::Idle => 4,
            Workload::Stress => 5,
            Workload::Hog => 6,
            Workload::StuckWait => 7,
            Workload::StuckYield => 8,
            Workload::StuckStorm => 9,
        }
    }

    /// The name used in configurations (`workload = "dedup";`).
    pub const fn name(self) -> &'static str {
        match self {
            Workload::Dedup => "dedup",
            Workload::Balloon => "balloon",
            Workload::Swap => "swap",
            Workload::Idle => "idle",
            Workload::Stress => "stress",
            Workload::Hog => "hog",
            Workload::StuckWait => "stuck-wait",
            Workload::StuckYield => "stuck-yield",
            Workload::StuckStorm => "stuck-storm",
        }
    }

    /// The workload called `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.name() == name)
    }
}

impl core::fmt::Display for Workload {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// A validated hypercall for the firmware to carry out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hypercall {
    /// Print `len` bytes from guest virtual address `buf`. The firmware copies them through
    /// [`for_each_buffer_chunk`], which refuses buffers the guest could not read itself.
    ConsoleWrite {
        /// Start of the buffer.
        buf: Gva,
        /// Length in bytes, `1..=CONSOLE_WRITE_MAX_BYTES`, or 0 (nothing to print).
        len: u64,
    },
    /// Stop the VM with this status.
    Exit {
        /// Exit status (0 = success).
        status: u64,
    },
    /// Report a VM property in `$v0`.
    VmInfo(VmInfoKey),
    /// Yield the CPU.
    Yield,
    /// Restart the VM from its image (a guest reboot).
    Restart,
}

/// Validates the hypercall the guest asked for: HYPCALL `code` and the registers.
pub fn parse(code: u16, gprs: &Gprs) -> Result<Hypercall, HypercallError> {
    if code != 0 {
        return Err(HypercallError::UnknownCall);
    }
    let a0 = gprs.get(Gpr::A0);
    let a1 = gprs.get(Gpr::A1);
    match gprs.get(Gpr::V0) {
        nr::CONSOLE_WRITE => {
            if a1 > CONSOLE_WRITE_MAX_BYTES {
                return Err(HypercallError::BadArgument);
            }
            // The buffer must not wrap around the address space.
            a0.checked_add(a1).ok_or(HypercallError::BadAddress)?;
            Ok(Hypercall::ConsoleWrite {
                buf: Gva::new(a0),
                len: a1,
            })
        }
        nr::EXIT => Ok(Hypercall::Exit { status: a0 }),
        nr::VM_INFO => VmInfoKey::from_raw(a0)
            .map(Hypercall::VmInfo)
            .ok_or(HypercallError::BadArgument),
        nr::YIELD => Ok(Hypercall::Yield),
        nr::RESTART => Ok(Hypercall::Restart),
        _ => Err(HypercallError::UnknownCall),
    }
}

/// Translates the guest buffer `[buf, buf + len)` as the guest itself would read it (guest
/// `mode`, `asid`, its TLB) and calls `chunk` for each piece that lies in one page, in order.
/// Nothing is called unless the whole buffer translates; a hole is [`HypercallError::BadAddress`].
pub fn for_each_buffer_chunk(
    buf: Gva,
    len: u64,
    mode: GuestMode,
    asid: u8,
    tlb: &GuestTlb,
    mut chunk: impl FnMut(Gpa, u64),
) -> Result<(), HypercallError> {
    let end = buf
        .raw()
        .checked_add(len)
        .ok_or(HypercallError::BadAddress)?;
    // Two passes so a partly mapped buffer produces no output at all.
    for pass in 0..2 {
        let mut at = buf.raw();
        while at < end {
            let piece = (PAGE_SIZE - (at % PAGE_SIZE)).min(end - at);
            let gpa = translate(Gva::new(at), mode, asid, tlb, Access::Load)
                .map_err(|_| HypercallError::BadAddress)?;
            if pass == 1 {
                chunk(gpa, piece);
            }
            // Cannot overflow: at + piece <= end.
            at += piece;
        }
    }
    Ok(())
}

/// Writes a hypercall's result to `$v0`: a value, or the negative error code.
pub fn set_result(gprs: &mut Gprs, result: Result<u64, HypercallError>) {
    let value = match result {
        Ok(v) => v,
        Err(e) => e.code() as u64,
    };
    gprs.set(Gpr::V0, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(v0: u64, a0: u64, a1: u64) -> Gprs {
        let mut g = Gprs::new();
        g.set(Gpr::V0, v0);
        g.set(Gpr::A0, a0);
        g.set(Gpr::A1, a1);
        g
    }

    #[test]
    fn valid_calls() {
        assert_eq!(
            parse(0, &regs(nr::CONSOLE_WRITE, 0x4000_1000, 12)),
            Ok(Hypercall::ConsoleWrite {
                buf: Gva::new(0x4000_1000),
                len: 12
            })
        );
        assert_eq!(
            parse(0, &regs(nr::EXIT, 3, 0)),
            Ok(Hypercall::Exit { status: 3 })
        );
        assert_eq!(
            parse(0, &regs(nr::VM_INFO, 3, 0)),
            Ok(Hypercall::VmInfo(VmInfoKey::RamBytes))
        );
        assert_eq!(parse(0, &regs(nr::YIELD, 0, 0)), Ok(Hypercall::Yield));
        assert_eq!(parse(0, &regs(nr::RESTART, 0, 0)), Ok(Hypercall::Restart));
        assert_eq!(parse(0, &regs(6, 0, 0)), Err(HypercallError::UnknownCall));
    }

    #[test]
    fn memory_service_keys() {
        let expected = [
            (9, VmInfoKey::Workload),
            (10, VmInfoKey::WorkloadArg),
            (11, VmInfoKey::DedupFullScans),
            (12, VmInfoKey::IdlePasses),
            (13, VmInfoKey::BalloonGpa),
        ];
        for (raw, key) in expected {
            assert_eq!(
                parse(0, &regs(nr::VM_INFO, raw, 0)),
                Ok(Hypercall::VmInfo(key))
            );
            assert_eq!(key as u64, raw);
        }
        assert_eq!(
            parse(0, &regs(nr::VM_INFO, 14, 0)),
            Err(HypercallError::BadArgument)
        );
    }

    #[test]
    fn workload_names_and_codes() {
        for (i, w) in Workload::ALL.into_iter().enumerate() {
            assert_eq!(w.code(), i as u64 + 1);
            assert_eq!(Workload::from_name(w.name()), Some(w));
        }
        assert_eq!(Workload::from_name("Dedup"), None);
        assert_eq!(Workload::from_name(""), None);
        assert_eq!(Workload::from_name("dedup "), None);
    }

    #[test]
    fn rejected_calls() {
        assert_eq!(parse(0, &regs(0, 0, 0)), Err(HypercallError::UnknownCall));
        assert_eq!(parse(0, &regs(99, 0, 0)), Err(HypercallError::UnknownCall));
        assert_eq!(
            parse(1, &regs(nr::YIELD, 0, 0)),
            Err(HypercallError::UnknownCall)
        );
        assert_eq!(
            parse(0, &regs(nr::CONSOLE_WRITE, 0, CONSOLE_WRITE_MAX_BYTES + 1)),
            Err(HypercallError::BadArgument)
        );
        assert_eq!(
            parse(0, &regs(nr::CONSOLE_WRITE, u64::MAX - 2, 8)),
            Err(HypercallError::BadAddress)
        );
        for unknown_key in [5, 6, 14, 9999, u64::MAX] {
            assert_eq!(
                parse(0, &regs(nr::VM_INFO, unknown_key, 0)),
                Err(HypercallError::BadArgument),
                "key {unknown_key}"
            );
        }
    }

    #[test]
    fn read_only_slot_keys() {
        assert_eq!(
            parse(0, &regs(nr::VM_INFO, 7, 0)),
            Ok(Hypercall::VmInfo(VmInfoKey::ReadOnlyBase))
        );
        assert_eq!(
            parse(0, &regs(nr::VM_INFO, 8, 0)),
            Ok(Hypercall::VmInfo(VmInfoKey::ReadOnlyBytes))
        );
        assert_eq!(VmInfoKey::ReadOnlyBase as u64, 7);
        assert_eq!(VmInfoKey::ReadOnlyBytes as u64, 8);
    }

    #[test]
    fn buffer_chunks_follow_pages() {
        use crate::cp0::{Cp0, Cp0Config};
        let cp0 = Cp0::new(Cp0Config::default()).unwrap();
        let tlb = GuestTlb::new(&cp0);
        let mut chunks = [(Gpa::new(0), 0u64); 4];
        let mut n = 0;
        for_each_buffer_chunk(
            Gva::new(0x4000_0ff0),
            0x30,
            GuestMode::Kernel,
            0,
            &tlb,
            |g, l| {
                chunks[n] = (g, l);
                n += 1;
            },
        )
        .unwrap();
        assert_eq!(
            &chunks[..n],
            &[(Gpa::new(0xff0), 0x10), (Gpa::new(0x1000), 0x20)]
        );
        // Crossing from the window into the unmapped KSEG2 area: nothing is emitted.
        let mut called = false;
        let result = for_each_buffer_chunk(
            Gva::new(0x5fff_fff0),
            0x20,
            GuestMode::Kernel,
            0,
            &tlb,
            |_, _| called = true,
        );
        assert_eq!(result, Err(HypercallError::BadAddress));
        assert!(!called);
        // User mode may not read the kernel window.
        let result = for_each_buffer_chunk(
            Gva::new(0x4000_0000),
            1,
            GuestMode::User,
            0,
            &tlb,
            |_, _| {},
        );
        assert_eq!(result, Err(HypercallError::BadAddress));
    }

    #[test]
    fn results_in_v0() {
        let mut g = Gprs::new();
        set_result(&mut g, Ok(42));
        assert_eq!(g.get(Gpr::V0), 42);
        set_result(&mut g, Err(HypercallError::BadAddress));
        assert_eq!(g.get(Gpr::V0) as i64, -3);
    }
}
