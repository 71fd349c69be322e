//! The kernel side of the test guest's user mode: runs the user program (user_prog.s)
//! through the guest's own mappings, serves its system calls and checks that forbidden
//! user actions come back to the kernel as the right exceptions.

use crate::paging::{self, KERNEL_ASID, USER_ASID};
use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};
use guest_rt::hypercall;
use guest_rt::trap::{exc, TrapFrame, TrapInfo};
use guest_rt::user::{self as rt_user, UserExit};
use guest_rt::{println, tlb};

global_asm!(
    include_str!("user_prog.s"),
    data_hi = const paging::USER_DATA_VA >> 16,
    words = const USER_WORDS,
);

/// Words the user program writes and sums (its whole data segment).
const USER_WORDS: u64 = paging::USER_DATA_BYTES / 8;

/// System call numbers of the user program.
const SYS_WRITE: u64 = 1;
const SYS_EXIT: u64 = 2;

/// Why a user run ended.
const REASON_EXIT: u64 = 1;
const REASON_KILLED: u64 = 2;

/// Value the user program exits with when a forbidden instruction did not trap.
const NOT_TRAPPED: u64 = 0xdead;

static USER_WRITES: AtomicU64 = AtomicU64::new(0);
static LAST_KILL_BADVADDR: AtomicU64 = AtomicU64::new(0);

/// Handles an exception raised in user mode (other than a TLB miss the page table serves
/// and the timer interrupt).
pub fn handle_user_exception(frame: &mut TrapFrame, info: &TrapInfo) {
    if info.exc_code() == exc::SYS {
        match frame.regs[2] {
            SYS_WRITE => {
                // The buffer is a user address: the hypervisor must read it through the
                // guest TLB with the user's ASID, which is still current. The page holds
                // the SYSCALL just executed, so the guest TLB maps it.
                let r =
                    hypercall::raw(hypercall::CONSOLE_WRITE, frame.regs[4], frame.regs[5], 0, 0);
                frame.regs[2] = r as u64;
                USER_WRITES.fetch_add(1, Ordering::Relaxed);
                frame.skip_instruction(info.cause);
            }
            SYS_EXIT => rt_user::return_to_kernel(
                frame,
                UserExit {
                    reason: REASON_EXIT,
                    value: frame.regs[4],
                },
            ),
            _ => {
                frame.regs[2] = u64::MAX;
                frame.skip_instruction(info.cause);
            }
        }
        return;
    }
    LAST_KILL_BADVADDR.store(info.bad_vaddr, Ordering::Relaxed);
    rt_user::return_to_kernel(
        frame,
        UserExit {
            reason: REASON_KILLED,
            value: info.exc_code().into(),
        },
    );
}

/// What mode 0 of the user program must exit with.
fn expected_user_sum() -> u64 {
    (0..USER_WORDS).fold(0u64, |s, i| s.rotate_left(1).wrapping_add(user_word(i)))
}

fn user_word(i: u64) -> u64 {
    (i << 40) ^ (i << 20) ^ i ^ 0x5a5a
}

fn run(mode: u64) -> UserExit {
    tlb::set_asid(USER_ASID);
    // SAFETY: USER_CODE_VA and the stack are user regions of the page table, which the
    // exception handler serves; the handler ends every run with return_to_kernel.
    let exit = unsafe {
        rt_user::enter_user(
            paging::USER_CODE_VA,
            paging::USER_STACK_VA + paging::USER_STACK_BYTES,
            mode,
        )
    };
    tlb::set_asid(KERNEL_ASID);
    exit
}

/// Runs the user program's normal mode and its four forbidden actions.
pub fn run_all() -> Result<(), &'static str> {
    let exit = run(0);
    if exit.reason != REASON_EXIT {
        println!(
            "testguest: user program killed by {} at {:#x}",
            exc::name(exit.value as u32),
            LAST_KILL_BADVADDR.load(Ordering::Relaxed)
        );
        return Err("user program did not exit normally");
    }
    if exit.value != expected_user_sum() {
        println!(
            "testguest: user sum {:#x}, expected {:#x}",
            exit.value,
            expected_user_sum()
        );
        return Err("user program computed a wrong sum");
    }
    if USER_WRITES.load(Ordering::Relaxed) != 1 {
        return Err("user program's write system call was not seen once");
    }
    // What the user stored through its TLB mapping must be in guest RAM where the page
    // table says: read it back through the window.
    let data = guest_rt::window_address(paging::user_data_gpa()) as *const u64;
    for i in 0..USER_WORDS {
        // SAFETY: the user data area lies in guest RAM right after the image (checked
        // against the RAM size before the memory test plan is made; the image leaves room).
        let word = unsafe { data.add(i as usize).read_volatile() };
        if word != user_word(i) {
            return Err("user data is not where the page table maps it");
        }
    }

    let forbidden: [(u64, u32, &str); 4] = [
        (1, exc::ADEL, "load from the kernel window"),
        (2, exc::MOD, "store to a read-only page"),
        (3, exc::CPU, "MFC0"),
        (4, exc::CPU, "HYPCALL"),
    ];
    for (mode, want, what) in forbidden {
        let exit = run(mode);
        if exit.reason != REASON_KILLED || exit.value != u64::from(want) {
            println!(
                "testguest: user {what}: reason {} value {:#x}, expected exception {}",
                exit.reason,
                exit.value,
                exc::name(want)
            );
            return Err(if exit.value == NOT_TRAPPED {
                "a forbidden user action did not trap"
            } else {
                "a forbidden user action raised the wrong exception"
            });
        }
    }
    if LAST_KILL_BADVADDR.load(Ordering::Relaxed) == 0 {
        return Err("no BadVAddr reported for the user faults");
    }
    println!(
        "testguest: user mode ok (sum {:#x}, 4 forbidden actions trapped)",
        exit.value
    );
    Ok(())
}
