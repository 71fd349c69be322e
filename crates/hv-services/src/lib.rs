//! Portable memory services of mipsvisor: page dedup with copy-on-write, the balloon policy,
//! idle-page tracking and compressed swap, and the operator console's command language.
//!
//! Each service changes the host side of guest memory and reaches the GPA tables only through
//! the memory core's notifier protocol (`hv_core`); nothing here touches a register.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod balloon;
pub mod console;
pub mod dedup;
pub mod idle;
pub mod router;
pub mod savings;
pub mod swap;
pub mod watchdog;

#[cfg(test)]
mod testvm;
