//! Physical memory: the frame allocator over probed RAM and the kernel heap.

pub mod frame;
pub mod heap;
