//! Hypercalls of the mipsvisor guest ABI (docs/guest-abi.md, section 5).
//!
//! The call number goes in `$v0` ($2), arguments in `$a0..$a3` ($4..$7), the result comes
//! back in `$v0`; a negative result is an error code. The instruction is the `HYPCALL`
//! word `0x4200_0028`: under trap-and-emulate it traps like any COP0 instruction, on VZ
//! hardware it is the hypercall instruction itself.

use core::arch::asm;
use core::fmt;

/// Console write: `a0` = buffer, `a1` = length (at most [`CONSOLE_CHUNK`]).
pub const CONSOLE_WRITE: u64 = 1;
/// Exit with status `a0` (0 = success); never returns.
pub const EXIT: u64 = 2;
/// VM info: `a0` = key ([`VmInfoKey`]).
pub const VM_INFO: u64 = 3;
/// Yield the vCPU.
pub const YIELD: u64 = 4;

/// Largest buffer one console write accepts.
pub const CONSOLE_CHUNK: usize = 256;

/// The raw `HYPCALL` instruction word (code field 0).
pub const HYPCALL_WORD: u32 = 0x4200_0028;

/// Keys of the VM-info hypercall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmInfoKey {
    /// Guest ABI version (1).
    AbiVersion,
    /// This vCPU's number.
    VcpuNumber,
    /// Number of vCPUs of this VM.
    VcpuCount,
    /// Guest RAM size in bytes (RAM starts at GPA 0).
    RamBytes,
    /// This VM's number.
    VmNumber,
    /// Proposed extension (guests/README.md): bytes of RAM the test guest should test.
    TestBytes,
    /// Proposed extension (guests/README.md): rounds of the test guest's memory test.
    TestRounds,
    /// GPA of the VM's read-only memory slot (-2 when it has none).
    ReadOnlyBase,
    /// Size in bytes of that read-only slot (-2 when it has none).
    ReadOnlyBytes,
    /// The VM's memory-services workload: 1 dedup, 2 balloon, 3 swap, 4 idle, 5 stress.
    Workload,
    /// The workload's argument.
    WorkloadArg,
    /// Dedup full scans completed so far (0 when dedup is off).
    DedupFullScans,
    /// Idle-tracking passes completed over this VM (0 when idle tracking is off).
    IdlePasses,
    /// GPA of the VM's first virtio-mmio balloon transport.
    BalloonGpa,
}

impl VmInfoKey {
    /// The key's number as passed in `$a0`.
    pub const fn number(self) -> u64 {
        match self {
            VmInfoKey::AbiVersion => 0,
            VmInfoKey::VcpuNumber => 1,
            VmInfoKey::VcpuCount => 2,
            VmInfoKey::RamBytes => 3,
            VmInfoKey::VmNumber => 4,
            VmInfoKey::TestBytes => 5,
            VmInfoKey::TestRounds => 6,
            VmInfoKey::ReadOnlyBase => 7,
            VmInfoKey::ReadOnlyBytes => 8,
            VmInfoKey::Workload => 9,
            VmInfoKey::WorkloadArg => 10,
            VmInfoKey::DedupFullScans => 11,
            VmInfoKey::IdlePasses => 12,
            VmInfoKey::BalloonGpa => 13,
        }
    }
}

/// An error code returned by a hypercall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HypercallError {
    /// -1: unknown call number or non-zero code field.
    UnknownCall,
    /// -2: argument out of range.
    BadArgument,
    /// -3: buffer not readable by the guest, or wrapping around.
    BadBuffer,
    /// Any other negative value (not defined by ABI version 1).
    Other(i64),
}

impl HypercallError {
    /// Classifies a raw negative result.
    pub const fn from_raw(raw: i64) -> Self {
        match raw {
            -1 => HypercallError::UnknownCall,
            -2 => HypercallError::BadArgument,
            -3 => HypercallError::BadBuffer,
            other => HypercallError::Other(other),
        }
    }
}

impl fmt::Display for HypercallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HypercallError::UnknownCall => f.write_str("unknown call (-1)"),
            HypercallError::BadArgument => f.write_str("bad argument (-2)"),
            HypercallError::BadBuffer => f.write_str("bad buffer (-3)"),
            HypercallError::Other(raw) => write!(f, "undefined error ({raw})"),
        }
    }
}

/// Issues a raw hypercall and returns `$v0` unchanged.
///
/// Safe: the hypervisor only reads guest memory the guest itself could read, writes none,
/// and preserves every register but `$v0`. Exit (number 2) does not return, which the
/// compiler need not know: code after it is simply never reached.
#[inline(always)]
pub fn raw(nr: u64, a0: u64, a1: u64, a2: u64, a3: u64) -> i64 {
    let result: i64;
    // SAFETY: see above; the asm touches only the named registers.
    unsafe {
        // No `nomem`: console write reads the buffer, so pending stores to it must be done
        // first. No `preserves_flags` needed (MIPS has no flags). nostack: no stack use.
        asm!(
            ".word {word}",
            word = const HYPCALL_WORD,
            inlateout("$2") nr => result,
            in("$4") a0,
            in("$5") a1,
            in("$6") a2,
            in("$7") a3,
            options(nostack),
        );
    }
    result
}

/// Issues a raw hypercall through a `HYPCALL` word with the given 10-bit code field
/// (bits 20:11); ABI version 1 defines only code 0, so others must return -1.
#[inline(always)]
pub fn raw_with_code<const CODE: u32>(nr: u64, a0: u64) -> i64 {
    let result: i64;
    // SAFETY: as for `raw`.
    unsafe {
        // Same options as `raw`.
        asm!(
            ".word {word}",
            word = const HYPCALL_WORD | ((CODE & 0x3ff) << 11),
            inlateout("$2") nr => result,
            in("$4") a0,
            options(nostack),
        );
    }
    result
}

fn check(raw: i64) -> Result<u64, HypercallError> {
    if raw < 0 {
        Err(HypercallError::from_raw(raw))
    } else {
        Ok(raw as u64)
    }
}

/// Writes `bytes` to this VM's console, in chunks of at most [`CONSOLE_CHUNK`].
pub fn console_write(bytes: &[u8]) -> Result<(), HypercallError> {
    for chunk in bytes.chunks(CONSOLE_CHUNK) {
        check(raw(
            CONSOLE_WRITE,
            chunk.as_ptr() as u64,
            chunk.len() as u64,
            0,
            0,
        ))?;
    }
    Ok(())
}

/// Ends the VM with `status` (0 = success).
pub fn exit(status: u64) -> ! {
    raw(EXIT, status, 0, 0, 0);
    // The hypervisor never resumes a VM after exit; if it did, keep the guest quiet.
    loop {
        raw(YIELD, 0, 0, 0, 0);
    }
}

/// Asks the hypervisor for one VM-info value.
pub fn vm_info(key: VmInfoKey) -> Result<u64, HypercallError> {
    check(raw(VM_INFO, key.number(), 0, 0, 0))
}

/// Gives up the rest of this vCPU's time slice.
pub fn yield_now() -> Result<(), HypercallError> {
    check(raw(YIELD, 0, 0, 0, 0)).map(|_| ())
}
