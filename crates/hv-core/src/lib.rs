//! Portable memory core of mipsvisor.
//!
//! Everything here is plain `no_std` Rust with no register access: it is compiled and tested
//! on the host and linked unchanged into the MIPS firmware. Hardware effects (TLB flushes,
//! frame memory) reach this crate only through small traits that the firmware implements.
//!
//! How the pieces fit: a [`fault::Vm`] owns one VM's [`gpa_table::GpaTable`] (table frames from
//! a [`table_frames::TableFrames`]), its [`memslot::Memslots`] with dirty logs, and its
//! [`host_mem::HostMem`] (guest RAM in refcounted frames of a [`frame_pool::FramePool`], whose
//! contents a [`frame_pool::FrameMemory`] reaches). Host-side changes reach the table through
//! the [`notifier::MmuNotifier`] protocol; every table change yields a [`flush::FlushToken`],
//! applied through the firmware's [`shootdown::RemoteFlush`] (IPIs, or the portable
//! [`shootdown::QuiescenceTracker`]). Guest faults enter through [`fault::Vm::map_page`].
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;
// `host-yield` (host tests only) yields to the OS scheduler while waiting.
#[cfg(feature = "host-yield")]
extern crate std;

pub mod accounts;
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
pub mod swap_store;
pub mod sync;
pub mod table_frames;
