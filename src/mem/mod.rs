//! Physical memory: the frame allocator over probed RAM and the kernel heap.

pub mod frame;
#[cfg(target_arch = "mips64")]
pub mod heap;
