//! Portable MIPS64 instruction decoding and emulation for trap-and-emulate guests.
//!
//! No register access: the firmware hands in the trapping instruction word and a copy of the
//! guest state; this crate decides what the instruction does and returns the outcome.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod abi;
pub mod branch;
pub mod cp0;
pub mod decode;
pub mod emulate;
pub mod exception;
pub mod guest_tlb;
pub mod hypercall;
pub mod regs;
pub mod timer;
