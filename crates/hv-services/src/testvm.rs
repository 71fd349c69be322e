//! Host-side VMs for the services' unit tests.

use std::sync::Arc;

use hv_core::addr::{Gfn, GfnRange, Gpa, Hfn};
use hv_core::fault::Vm;
use hv_core::flush::FlushScope;
use hv_core::frame_pool::{FramePool, VecFrameMemory};
use hv_core::host_mem::HostMem;
use hv_core::memslot::{BackingId, SlotFlags};
use hv_core::shootdown::RemoteFlush;
use hv_core::table_frames::ArenaTableFrames;

/// Remote flush with no other CPU to wait for.
#[derive(Debug, Default)]
pub struct NoRemote;

impl RemoteFlush for NoRemote {
    fn flush_remote(&self, _scope: FlushScope) {}
}

pub type TestVm = Vm<ArenaTableFrames, VecFrameMemory, NoRemote>;
/// A host memory layer several test VMs share.
pub type SharedHost = HostMem<VecFrameMemory>;

pub const POOL_BASE: Hfn = Hfn::new(0x4000);
/// First guest frame of the RAM slot.
pub const RAM_GFN: u64 = 0x100;

/// A VM whose pool has `frames` frames, with one backing of `ram_pages` pages mapped
/// writable at guest frame [`RAM_GFN`].
pub fn vm(frames: usize, ram_pages: u64) -> (Arc<TestVm>, BackingId) {
    let pool = FramePool::new(VecFrameMemory::new(POOL_BASE, frames), POOL_BASE, frames);
    let vm = Vm::new(
        ArenaTableFrames::with_base(Hfn::new(0x100_0000)),
        pool,
        NoRemote,
    )
    .expect("root table");
    let b = vm.host().create_backing(ram_pages).unwrap();
    let gfns = GfnRange::from_start_len(Gfn::new(RAM_GFN), ram_pages).unwrap();
    vm.add_memslot(gfns, b, 0, SlotFlags::empty()).unwrap();
    (Arc::new(vm), b)
}

/// Guest address of RAM page `i`.
pub fn gpa(i: u64) -> Gpa {
    Gfn::new(RAM_GFN + i).checked_addr().unwrap()
}

/// A guest store of `byte` over RAM page `i`: fault it in for writing, then fill the frame.
pub fn guest_fill(vm: &TestVm, b: BackingId, i: u64, byte: u8) {
    vm.map_page(gpa(i), true).unwrap();
    vm.host_write(b, i, 0, &[byte; 4096]).unwrap();
}

/// A guest load of RAM page `i`: fault it in for reading, then read its contents.
pub fn guest_read(vm: &TestVm, b: BackingId, i: u64) -> Vec<u8> {
    vm.map_page(gpa(i), false).unwrap();
    let mut buf = vec![0; 4096];
    vm.host().read(b, i, 0, &mut buf).unwrap();
    buf
}

/// Frees everything and checks that every host frame came back.
pub fn teardown_clean(vm: Arc<TestVm>) {
    let vm = Arc::try_unwrap(vm).expect("last reference");
    vm.check_invariants().unwrap();
    let (_, pool) = vm.teardown();
    assert_eq!(pool.allocated_count(), 0, "host frames leaked");
}

/// `count` VMs on one host memory layer of `frames` frames (the firmware's shared guest
/// pool), each with one backing of `ram_pages` pages mapped writable at [`RAM_GFN`].
pub fn shared_vms(
    frames: usize,
    count: usize,
    ram_pages: u64,
) -> (Arc<SharedHost>, Vec<(Arc<TestVm>, BackingId)>) {
    let pool = FramePool::new(VecFrameMemory::new(POOL_BASE, frames), POOL_BASE, frames);
    let host = Arc::new(HostMem::new(pool));
    let vms = (0..count)
        .map(|i| {
            let tables = ArenaTableFrames::with_base(Hfn::new(0x100_0000 + (i as u64) * 0x10_0000));
            let vm = Vm::with_host(tables, host.clone(), NoRemote).expect("root table");
            let b = vm.host().create_backing(ram_pages).unwrap();
            let gfns = GfnRange::from_start_len(Gfn::new(RAM_GFN), ram_pages).unwrap();
            vm.add_memslot(gfns, b, 0, SlotFlags::empty()).unwrap();
            (Arc::new(vm), b)
        })
        .collect();
    (host, vms)
}

/// Detaches every VM of a shared layer and checks that every host frame came back.
pub fn teardown_shared(host: Arc<SharedHost>, vms: Vec<(Arc<TestVm>, BackingId)>) {
    for (vm, _) in vms {
        let vm = Arc::try_unwrap(vm).expect("last reference");
        vm.check_invariants().unwrap();
        vm.detach();
    }
    let host = Arc::try_unwrap(host).expect("last reference to the layer");
    assert_eq!(host.into_pool().allocated_count(), 0, "host frames leaked");
}
