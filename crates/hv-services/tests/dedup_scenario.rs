//! Dedup scenario on the host: five VMs on one host memory layer, four of them in one trust
//! group and one outside it, with mostly identical memory plus zero and unique pages. Two full
//! scans merge at least 99 % of what can be merged; the outsider shares nothing with the group;
//! guests then write (through the fault path) and every byte of every VM is checked; at the end
//! every frame comes back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use hv_core::addr::{Gfn, GfnRange, Hfn};
use hv_core::fault::Vm;
use hv_core::flush::FlushScope;
use hv_core::frame_pool::{FramePool, VecFrameMemory, FRAME_BYTES};
use hv_core::host_mem::{HostMem, PageState};
use hv_core::memslot::{BackingId, SlotFlags};
use hv_core::shootdown::RemoteFlush;
use hv_core::table_frames::ArenaTableFrames;
use hv_services::dedup::{Dedup, DedupConfig, TrustGroup, VmId};
use hv_services::router::BackingRouter;

struct NoRemote;

impl RemoteFlush for NoRemote {
    fn flush_remote(&self, _: FlushScope) {}
}

type ScenarioVm = Vm<ArenaTableFrames, VecFrameMemory, NoRemote>;

const VMS: usize = 5;
/// VM 4 is outside the trust group.
const OUTSIDER: usize = 4;
const PAGES: u64 = 64;
/// Pages `0..COMMON` hold one of `CLASSES` contents shared by every VM.
const COMMON: u64 = 40;
const CLASSES: u64 = 8;
/// Pages `COMMON..ZEROES` are touched but zero; the rest are unique.
const ZEROES: u64 = 52;
const RAM_GFN: u64 = 0x100;

/// A page of pseudo-random bytes from `seed`.
fn pattern(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..FRAME_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn initial(vm: usize, page: u64) -> Vec<u8> {
    match page {
        p if p < COMMON => pattern(1 + p % CLASSES),
        p if p < ZEROES => vec![0; FRAME_BYTES],
        p => pattern(1000 + vm as u64 * PAGES + p),
    }
}

/// A guest store: fault the page in for writing through the VM, then store through the
/// translation it returned (the frame the guest's TLB entry would name).
fn guest_write(vm: &ScenarioVm, page: u64, offset: usize, data: &[u8]) {
    let gfn = Gfn::new(RAM_GFN + page);
    let (even, odd) = vm.map_page(gfn.checked_addr().unwrap(), true).unwrap();
    let pte = if gfn.is_odd() { odd } else { even };
    assert!(pte.is_writable() && pte.is_dirty());
    let hfn = pte.hfn().unwrap();
    vm.host()
        .lock()
        .pool_mut()
        .write(hfn, offset, data)
        .unwrap();
}

/// A guest load of a whole page through a read fault's translation.
fn guest_read(vm: &ScenarioVm, page: u64) -> Vec<u8> {
    let gfn = Gfn::new(RAM_GFN + page);
    let (even, odd) = vm.map_page(gfn.checked_addr().unwrap(), false).unwrap();
    let hfn = if gfn.is_odd() { odd } else { even }.hfn().unwrap();
    let mut buf = vec![0; FRAME_BYTES];
    vm.host().lock().pool().read(hfn, 0, &mut buf).unwrap();
    buf
}

fn shared_frame(host: &HostMem<VecFrameMemory>, b: BackingId, page: u64) -> Option<Hfn> {
    match host.lock().page(b, page).unwrap() {
        PageState::Shared(h) => Some(h),
        _ => None,
    }
}

/// Pages that merging could save in one domain: per distinct non-zero content, all but one
/// page; plus the zero pages.
fn mergeable(contents: &[Vec<u8>]) -> (u64, u64) {
    let mut classes: BTreeMap<&[u8], u64> = BTreeMap::new();
    let mut zero = 0;
    for c in contents {
        if c.iter().all(|&b| b == 0) {
            zero += 1;
        } else {
            *classes.entry(c).or_default() += 1;
        }
    }
    (classes.values().map(|n| n - 1).sum(), zero)
}

fn verify(vms: &[ScenarioVm], backings: &[BackingId], shadow: &[Vec<Vec<u8>>], when: &str) {
    let host = vms[0].host();
    for (v, vm) in vms.iter().enumerate() {
        vm.check_invariants().unwrap();
        for p in 0..PAGES {
            let mut host_view = vec![0; FRAME_BYTES];
            host.read(backings[v], p, 0, &mut host_view).unwrap();
            assert!(
                host_view == shadow[v][p as usize],
                "{when}: VM {v} page {p} (host view)"
            );
            assert!(
                guest_read(vm, p) == shadow[v][p as usize],
                "{when}: VM {v} page {p} (guest view)"
            );
        }
    }
}

#[test]
fn dedup_scenario_merges_99_percent_in_two_scans_and_cow_keeps_every_byte() {
    let host = Arc::new(HostMem::new(FramePool::new(
        VecFrameMemory::new(Hfn::new(0x4000), 512),
        Hfn::new(0x4000),
        512,
    )));
    let mut vms = Vec::new();
    let mut backings = Vec::new();
    let mut shadow: Vec<Vec<Vec<u8>>> = Vec::new();
    for v in 0..VMS {
        let vm = Vm::with_host(
            ArenaTableFrames::with_base(Hfn::new(0x100_0000 * (v as u64 + 1))),
            Arc::clone(&host),
            NoRemote,
        )
        .unwrap();
        let b = host.create_backing(PAGES).unwrap();
        let gfns = GfnRange::from_start_len(Gfn::new(RAM_GFN), PAGES).unwrap();
        vm.add_memslot(gfns, b, 0, SlotFlags::empty()).unwrap();
        let contents: Vec<Vec<u8>> = (0..PAGES).map(|p| initial(v, p)).collect();
        for (p, c) in contents.iter().enumerate() {
            guest_write(&vm, p as u64, 0, c);
        }
        vms.push(vm);
        backings.push(b);
        shadow.push(contents);
    }
    let frames_before = host.lock().pool().allocated_count() as u64;

    let mut dedup = Dedup::new(DedupConfig {
        pages_per_pass: 50,
        ..DedupConfig::default()
    })
    .unwrap();
    let mut router = BackingRouter::new();
    for v in 0..VMS {
        let group = (v != OUTSIDER).then_some(TrustGroup(1));
        dedup
            .add_vm(&host, VmId(v as u32), group, &[backings[v]])
            .unwrap();
        router.route(backings[v], &vms[v]);
    }
    dedup.full_scans(&host, &router, 2).unwrap();
    let stats = dedup.stats(&host);

    let group: Vec<Vec<u8>> = (0..VMS)
        .filter(|&v| v != OUTSIDER)
        .flat_map(|v| shadow[v].clone())
        .collect();
    let (group_mergeable, group_zero) = mergeable(&group);
    let (out_mergeable, out_zero) = mergeable(&shadow[OUTSIDER]);
    let (mergeable_pages, zero_pages) = (group_mergeable + out_mergeable, group_zero + out_zero);
    println!("STAT mergeable_pages={mergeable_pages}");
    println!("STAT pages_sharing={}", stats.pages_sharing);
    println!("STAT zero_pages={zero_pages}");
    println!("STAT zero_pages_merged={}", stats.zero_pages_merged);
    println!("STAT pages_shared={}", stats.pages_shared);
    println!("STAT full_scans={}", stats.full_scans);
    println!(
        "STAT dedup_metadata_bytes_per_page={}",
        stats.metadata_bytes_per_page()
    );
    assert_eq!(stats.full_scans, 2);
    assert!(
        stats.pages_sharing * 100 >= mergeable_pages * 99,
        "{stats:?}"
    );
    assert!(
        stats.zero_pages_merged * 100 >= zero_pages * 99,
        "{stats:?}"
    );
    assert!(stats.pages_sharing <= mergeable_pages);
    assert_eq!(
        stats.pages_shared,
        2 * CLASSES,
        "one frame per content per domain"
    );
    assert!(stats.metadata_bytes_per_page() <= 16, "{stats:?}");
    // The frames really came back: one per saved page, less the two zero frames kept.
    let frames_after = host.lock().pool().allocated_count() as u64;
    assert_eq!(
        frames_before - frames_after,
        stats.pages_sharing + stats.zero_pages_merged - 2
    );

    // The outsider shares no frame with the group, though its common pages are identical.
    let frames_of = |v: usize| -> BTreeSet<Hfn> {
        (0..PAGES)
            .filter_map(|p| shared_frame(&host, backings[v], p))
            .collect()
    };
    let outsider = frames_of(OUTSIDER);
    assert!(!outsider.is_empty());
    for v in (0..VMS).filter(|&v| v != OUTSIDER) {
        assert!(
            frames_of(v).is_disjoint(&outsider),
            "VM {v} shares with the outsider"
        );
    }
    // Unique pages stay private.
    for &b in &backings {
        for p in ZEROES..PAGES {
            assert_eq!(shared_frame(&host, b, p), None);
        }
    }
    verify(&vms, &backings, &shadow, "after merging");

    // Guests write: every third page, common, zero and unique alike, at varying offsets.
    let mut shared_writes = 0;
    for (v, vm) in vms.iter().enumerate() {
        for p in (v as u64 % 3..PAGES).step_by(3) {
            shared_writes += u64::from(shared_frame(&host, backings[v], p).is_some());
            let offset = (p as usize * 97) % (FRAME_BYTES - 8);
            let data = (0xdead_0000_u64 + v as u64 * 1000 + p).to_le_bytes();
            guest_write(vm, p, offset, &data);
            shadow[v][p as usize][offset..offset + 8].copy_from_slice(&data);
        }
    }
    let after_cow = dedup.stats(&host);
    assert_eq!(after_cow.cow_breaks - stats.cow_breaks, shared_writes);
    verify(&vms, &backings, &shadow, "after copy-on-write");

    // Scanning on merges what is still identical and never breaks a written page.
    dedup.full_scans(&host, &router, 2).unwrap();
    verify(&vms, &backings, &shadow, "after rescanning");
    let rescanned = dedup.stats(&host);
    println!("STAT cow_breaks={}", rescanned.cow_breaks);
    println!(
        "STAT pages_sharing_after_writes={}",
        rescanned.pages_sharing
    );

    // Teardown: the service lets go of its frames, each VM detaches, every frame is back.
    dedup.release_all(&host).unwrap();
    drop(router);
    for vm in vms {
        assert_eq!(vm.detach().live_tables(), 0, "table frames leaked");
    }
    let pool = Arc::try_unwrap(host).unwrap().into_pool();
    assert_eq!(pool.allocated_count(), 0, "host frames leaked");
    println!("STAT frames_leaked={}", pool.allocated_count());
}
