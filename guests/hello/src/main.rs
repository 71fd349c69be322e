//! The smallest mipsvisor guest: prints one line by the console-write hypercall and exits
//! with status 0 by the exit hypercall. It uses nothing else (no CP0, no vectors, no VM
//! info), so it runs as soon as a hypervisor has the window and those two hypercalls.

#![no_std]
#![no_main]

use guest_rt::hypercall;

guest_rt::entry!(main);

fn main() -> u64 {
    match hypercall::console_write(b"hello from a mipsvisor guest\n") {
        Ok(()) => 0,
        // Nothing can be printed; the exit status tells the error apart.
        Err(_) => 1,
    }
}
