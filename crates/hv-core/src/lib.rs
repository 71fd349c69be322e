//! Portable memory core of mipsvisor.
//!
//! Everything here is plain `no_std` Rust with no register access: it is compiled and tested
//! on the host and linked unchanged into the MIPS firmware. Hardware effects (TLB flushes,
//! frame memory) reach this crate only through small traits that the firmware implements.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;
// `host-yield` (host tests only) yields to the OS scheduler while waiting.
#[cfg(feature = "host-yield")]
extern crate std;

pub mod addr;
pub mod dirty_log;
pub mod fault;
pub mod flush;
pub mod frame_pool;
pub mod gpa_table;
pub mod host_mem;
pub mod memslot;
pub mod notifier;
pub mod pte;
pub mod shootdown;
pub mod sync;
pub mod table_frames;
