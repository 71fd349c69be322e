//! Running code in guest user mode and getting control back from a trap handler.

use crate::cp0;
use crate::trap::TrapFrame;
use core::arch::global_asm;

global_asm!(include_str!("user.s"));

extern "C" {
    fn guest_rt_enter_user(pc: u64, sp: u64, arg: u64, status: u64) -> UserExit;
    fn guest_rt_user_return();
}

/// What a trap handler reported when it ended a user-mode run.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserExit {
    /// Reason code chosen by the handler.
    pub reason: u64,
    /// Value chosen by the handler.
    pub value: u64,
}

/// Runs user code at `pc` with stack `sp` and `$a0 = arg` until a trap handler calls
/// [`return_to_kernel`], and returns what that handler passed.
///
/// Interrupts keep their Status.IE/IM setting in user mode.
///
/// # Safety
/// `pc` and `sp` must be user addresses mapped (or refilled on demand) by the guest's TLB
/// handler, and the installed trap handler must end the run with [`return_to_kernel`];
/// callee-saved registers are kept in one static slot, so runs cannot nest.
pub unsafe fn enter_user(pc: u64, sp: u64, arg: u64) -> UserExit {
    // CU0 clear: user code must not reach CP0 (the guest kernel never sets it anyway).
    let status = (cp0::status() & !(cp0::STATUS_KSU_MASK | cp0::STATUS_CU0))
        | cp0::STATUS_KSU_USER
        | cp0::STATUS_EXL;
    // SAFETY: forwarded contract; the asm saves and restores the callee-saved registers
    // and returns like an extern "C" function.
    unsafe { guest_rt_enter_user(pc, sp, arg, status as u64) }
}

/// From a trap handler that interrupted user code: makes the trap return into the kernel,
/// to the caller of [`enter_user`], which receives `exit`.
pub fn return_to_kernel(frame: &mut TrapFrame, exit: UserExit) {
    frame.epc = guest_rt_user_return as *const () as u64;
    frame.regs[2] = exit.reason;
    frame.regs[3] = exit.value;
    let status = cp0::status() & !cp0::STATUS_KSU_MASK;
    // SAFETY: EXL is set while a handler runs, so kernel mode takes effect only at ERET,
    // which goes to guest_rt_user_return, kernel code.
    unsafe { cp0::set_status(status) };
}
