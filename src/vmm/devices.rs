//! Guest device accesses: loads and stores to guest-physical addresses without RAM.
//!
//! No device model is attached yet, so every such address reads as all ones (what a bus
//! without a responder returns on most boards) and ignores stores. Each VM's first few
//! accesses are logged so that a guest poking at empty space is visible.

use super::vm::{Vm, VmStats};
use alloc::string::String;
use hv_emul::emulate::{MmioKind, MmioReq};

/// Unbacked accesses logged per VM.
const LOGGED_ACCESSES: u64 = 4;

/// Performs `request` for `vm`; returns the value a load reads.
pub fn access(vm: &Vm, request: &MmioReq) -> Result<u64, String> {
    let count = VmStats::get(&vm.stats.mmio);
    if count <= LOGGED_ACCESSES {
        let what = match request.kind {
            MmioKind::Load { .. } => "load from",
            MmioKind::Store { .. } => "store to",
        };
        crate::log!(
            "VM {}: {}-byte {what} GPA {:#x} (no RAM, no device): {}",
            vm.name,
            request.width.bytes(),
            request.gpa.raw(),
            if matches!(request.kind, MmioKind::Load { .. }) {
                "reads as all ones"
            } else {
                "ignored"
            }
        );
    }
    Ok(request.width.value_mask())
}
