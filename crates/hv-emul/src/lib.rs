//! Portable MIPS64 instruction decoding and emulation for trap-and-emulate guests.
//!
//! No register access: the firmware hands in the trapping instruction word and a copy of the
//! guest state; this crate decides what the instruction does and returns the outcome.
//!
//! - [`decode`]: instruction word to [`decode::Insn`].
//! - [`emulate`]: the one entry point, [`emulate::emulate`], and the vCPU state it works on.
//! - [`cp0`], [`guest_tlb`], [`timer`]: the guest's coprocessor 0, TLB and Count/Compare.
//! - [`derived`]: the host's copies of a vCPU's translations, tracked by what they were
//!   built from.
//! - [`branch`]: finishing a branch whose delay-slot instruction trapped.
//! - [`exception`]: delivering exceptions to the guest's own vectors.
//! - [`exit`]: sorting a host exception taken from a guest into the next action.
//! - [`abi`], [`hypercall`]: the guest address layout and hypercall interface
//!   (`docs/guest-abi.md`).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod abi;
pub mod branch;
pub mod cp0;
pub mod decode;
pub mod derived;
pub mod emulate;
pub mod exception;
pub mod exit;
pub mod guest_tlb;
pub mod hypercall;
pub mod regs;
pub mod timer;
