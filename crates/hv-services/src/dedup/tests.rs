//! Policy tests of the dedup service on a host memory layer with no VM attached (the
//! notifier is silent; the scenario tests use real VMs).

use super::*;
use hv_core::frame_pool::{FramePool, VecFrameMemory};
use hv_core::notifier::NoGuestMappings;

fn host(frames: usize) -> HostMem<VecFrameMemory> {
    let base = Hfn::new(0x1000);
    HostMem::new(FramePool::new(
        VecFrameMemory::new(base, frames),
        base,
        frames,
    ))
}

/// Fills a page with `byte` (0 makes it resident and zero).
fn fill(host: &HostMem<VecFrameMemory>, b: BackingId, page: u64, byte: u8) {
    host.write(&NoGuestMappings, b, page, 0, &[byte; FRAME_BYTES])
        .unwrap();
}

fn frame(host: &HostMem<VecFrameMemory>, b: BackingId, page: u64) -> PageState {
    host.lock().page(b, page).unwrap()
}

fn config(pages_per_pass: u64) -> DedupConfig {
    DedupConfig {
        pages_per_pass,
        ..DedupConfig::default()
    }
}

#[test]
fn page_metadata_is_eight_bytes() {
    assert_eq!(size_of::<PageMeta>(), 8);
}

#[test]
fn checksum_gate_waits_one_full_scan_and_stops_volatile_pages() {
    let host = host(16);
    let b = host.create_backing(4).unwrap();
    for p in 0..4 {
        fill(&host, b, p, 7);
    }
    let mut dedup = Dedup::new(config(3)).unwrap();
    dedup.add_vm(&host, VmId(0), None, &[b]).unwrap();
    dedup.full_scans(&host, &NoGuestMappings, 1).unwrap();
    let s = dedup.stats(&host);
    assert_eq!((s.merges, s.pages_sharing, s.full_scans), (0, 0, 1));
    assert!(matches!(frame(&host, b, 0), PageState::Private(_)));
    // Page 3 changes between the scans: volatile, not a candidate.
    fill(&host, b, 3, 8);
    dedup.full_scans(&host, &NoGuestMappings, 1).unwrap();
    let s = dedup.stats(&host);
    assert_eq!(s.pages_volatile, 1);
    assert_eq!((s.pages_shared, s.pages_sharing), (1, 2));
    assert!(matches!(frame(&host, b, 3), PageState::Private(_)));
    // Stable again at the next scan: it is a candidate, but has no partner.
    dedup.full_scans(&host, &NoGuestMappings, 1).unwrap();
    let s = dedup.stats(&host);
    assert_eq!((s.pages_volatile, s.pages_unshared), (0, 1));
    assert!(matches!(frame(&host, b, 3), PageState::Private(_)));
}

#[test]
fn unstable_match_makes_a_stable_frame_that_later_pages_join() {
    let host = host(16);
    let b = host.create_backing(6).unwrap();
    for p in 0..3 {
        fill(&host, b, p, 1);
    }
    fill(&host, b, 3, 2);
    let mut dedup = Dedup::new(config(64)).unwrap();
    dedup.add_vm(&host, VmId(0), None, &[b]).unwrap();
    dedup.full_scans(&host, &NoGuestMappings, 2).unwrap();
    let PageState::Shared(h) = frame(&host, b, 0) else {
        panic!("page 0 not merged")
    };
    assert_eq!(frame(&host, b, 1), PageState::Shared(h));
    assert_eq!(frame(&host, b, 2), PageState::Shared(h));
    assert!(matches!(frame(&host, b, 3), PageState::Private(_)));
    assert_eq!(host.lock().pool().refcount(h), 4, "3 pages + the service");
    let s = dedup.stats(&host);
    assert_eq!(
        (s.pages_shared, s.pages_sharing, s.pages_unshared),
        (1, 2, 1)
    );
    // A page filled later with the same bytes joins the stable frame (no partner needed).
    fill(&host, b, 5, 1);
    dedup.full_scans(&host, &NoGuestMappings, 2).unwrap();
    assert_eq!(frame(&host, b, 5), PageState::Shared(h));
    let mut buf = [0u8; 4];
    host.read(b, 5, 100, &mut buf).unwrap();
    assert_eq!(buf, [1; 4]);
}

#[test]
fn sharing_limit_caps_each_frame() {
    let host = host(16);
    let b = host.create_backing(5).unwrap();
    for p in 0..5 {
        fill(&host, b, p, 9);
    }
    let mut dedup = Dedup::new(DedupConfig {
        max_page_sharing: 2,
        ..config(64)
    })
    .unwrap();
    dedup.add_vm(&host, VmId(0), None, &[b]).unwrap();
    dedup.full_scans(&host, &NoGuestMappings, 3).unwrap();
    let st = host.lock();
    let mut frames: Vec<Hfn> = (0..5)
        .filter_map(|p| match st.page(b, p).unwrap() {
            PageState::Shared(h) => Some(h),
            _ => None,
        })
        .collect();
    frames.sort();
    frames.dedup();
    assert_eq!(frames.len(), 2);
    for h in &frames {
        assert_eq!(st.pool().refcount(*h), 3, "2 sharers + the service");
    }
    drop(st);
    let s = dedup.stats(&host);
    assert_eq!((s.pages_shared, s.pages_sharing), (2, 2));
}

#[test]
fn zero_pages_go_to_one_zero_frame_and_are_counted_apart() {
    let host = host(16);
    let b = host.create_backing(5).unwrap();
    for p in 0..4 {
        fill(&host, b, p, 0);
    }
    fill(&host, b, 4, 3);
    let mut dedup = Dedup::new(config(64)).unwrap();
    dedup.add_vm(&host, VmId(0), None, &[b]).unwrap();
    dedup.full_scans(&host, &NoGuestMappings, 2).unwrap();
    let PageState::Shared(z) = frame(&host, b, 0) else {
        panic!("zero page not merged")
    };
    for p in 1..4 {
        assert_eq!(frame(&host, b, p), PageState::Shared(z));
    }
    let s = dedup.stats(&host);
    assert_eq!(s.zero_pages_merged, 4);
    assert_eq!(s.zero_frames, 1);
    assert_eq!(s.saved_frames(), 3, "four zero pages live in one frame");
    assert_eq!((s.frames_held, s.net_saved_frames()), (1, 3));
    assert_eq!((s.pages_shared, s.pages_sharing), (0, 0));
    assert_eq!(s.merges, 3, "the first zero page became the frame");
    // With zero merging off, zero pages are ordinary content.
    let host2 = self::host(16);
    let b2 = host2.create_backing(3).unwrap();
    for p in 0..3 {
        fill(&host2, b2, p, 0);
    }
    let mut plain = Dedup::new(DedupConfig {
        merge_zero_pages: false,
        ..config(64)
    })
    .unwrap();
    plain.add_vm(&host2, VmId(0), None, &[b2]).unwrap();
    plain.full_scans(&host2, &NoGuestMappings, 2).unwrap();
    let s = plain.stats(&host2);
    assert_eq!((s.zero_pages_merged, s.pages_sharing), (0, 2));
    assert_eq!((s.zero_frames, s.saved_frames()), (0, 2));
}

#[test]
fn failing_pages_are_skipped_with_growing_backoff() {
    let mut meta = PageMeta::default();
    let skip_after = 2;
    meta.record_failure(10, skip_after);
    assert!(
        !meta.skipped_at(11, skip_after),
        "one failure: not skipped yet"
    );
    meta.record_failure(11, skip_after);
    // Second failure: skipped for 1 scan.
    assert!(meta.skipped_at(11, skip_after));
    assert!(!meta.skipped_at(12, skip_after));
    meta.record_failure(12, skip_after);
    assert!(meta.skipped_at(13, skip_after));
    assert!(!meta.skipped_at(14, skip_after), "then 2 scans");
    for n in 14..40 {
        meta.record_failure(n, skip_after);
    }
    assert!(meta.skipped_at(39 + 31, skip_after), "capped at 32 scans");
    assert!(!meta.skipped_at(39 + 32, skip_after));
    // Wrapping scan numbers.
    let mut meta = PageMeta::default();
    meta.record_failure(u16::MAX, 1);
    assert!(meta.skipped_at(u16::MAX, 1));
    assert!(!meta.skipped_at(0, 1));
}

#[test]
fn trust_groups_share_and_outsiders_never_do() {
    let host = host(32);
    let backings: Vec<BackingId> = (0..4).map(|_| host.create_backing(3).unwrap()).collect();
    for &b in &backings {
        for p in 0..3 {
            fill(&host, b, p, 0x42);
        }
    }
    let mut dedup = Dedup::new(config(5)).unwrap();
    let group = Some(TrustGroup(1));
    dedup.add_vm(&host, VmId(0), group, &[backings[0]]).unwrap();
    dedup.add_vm(&host, VmId(1), group, &[backings[1]]).unwrap();
    dedup.add_vm(&host, VmId(2), None, &[backings[2]]).unwrap();
    dedup
        .add_vm(&host, VmId(3), Some(TrustGroup(2)), &[backings[3]])
        .unwrap();
    dedup.full_scans(&host, &NoGuestMappings, 2).unwrap();
    let frames_of = |b: BackingId| -> Vec<Hfn> {
        let st = host.lock();
        (0..3)
            .map(|p| match st.page(b, p).unwrap() {
                PageState::Shared(h) => h,
                other => panic!("page {p} of {b:?} not merged: {other:?}"),
            })
            .collect()
    };
    let group_frames = frames_of(backings[0]);
    assert_eq!(frames_of(backings[1]), group_frames, "group members share");
    assert!(group_frames.iter().all(|&h| h == group_frames[0]));
    for outsider in [backings[2], backings[3]] {
        let own = frames_of(outsider);
        assert!(own.iter().all(|&h| h == own[0]), "merged within itself");
        assert_ne!(own[0], group_frames[0], "never with the group");
    }
    assert_ne!(frames_of(backings[2])[0], frames_of(backings[3])[0]);
    assert_eq!(dedup.frames_of_vm(VmId(0)), dedup.frames_of_vm(VmId(1)));
    assert!(!dedup
        .frames_of_vm(VmId(0))
        .contains(&frames_of(backings[2])[0]));
    let s = dedup.stats(&host);
    assert_eq!((s.pages_shared, s.pages_sharing), (3, 5 + 2 + 2));
}

#[test]
fn registration_errors_and_clean_release() {
    let host = host(16);
    let b0 = host.create_backing(2).unwrap();
    let b1 = host.create_backing(2).unwrap();
    assert_eq!(
        Dedup::new(DedupConfig {
            max_page_sharing: 1,
            ..config(1)
        })
        .unwrap_err(),
        DedupError::BadConfig
    );
    assert_eq!(Dedup::new(config(0)).unwrap_err(), DedupError::BadConfig);
    let mut dedup = Dedup::new(config(8)).unwrap();
    dedup.add_vm(&host, VmId(0), None, &[b0]).unwrap();
    assert_eq!(
        dedup.add_vm(&host, VmId(1), None, &[b0]),
        Err(DedupError::AlreadyTracked)
    );
    assert_eq!(
        dedup.add_vm(&host, VmId(1), None, &[b1, b1]),
        Err(DedupError::AlreadyTracked)
    );
    assert_eq!(
        dedup.add_vm(&host, VmId(0), Some(TrustGroup(3)), &[b1]),
        Err(DedupError::OtherDomain)
    );
    assert_eq!(
        dedup.add_vm(&host, VmId(1), None, &[BackingId(9)]),
        Err(DedupError::Host(HostMemError::NoSuchBacking))
    );
    assert_eq!(dedup.remove_vm(VmId(5)), Err(DedupError::UnknownVm));
    dedup.add_vm(&host, VmId(1), None, &[b1]).unwrap();
    for b in [b0, b1] {
        fill(&host, b, 0, 5);
        fill(&host, b, 1, 5);
    }
    dedup.full_scans(&host, &NoGuestMappings, 2).unwrap();
    assert_eq!(dedup.stats(&host).pages_sharing, 2);
    assert!(dedup.stats(&host).metadata_bytes_per_page() > 0);
    dedup.remove_vm(VmId(0)).unwrap();
    dedup.release_all(&host).unwrap();
    host.remove_backing(&NoGuestMappings, b0).unwrap();
    host.remove_backing(&NoGuestMappings, b1).unwrap();
    assert_eq!(host.lock().pool().allocated_count(), 0, "no frame leaked");
    // Nothing tracked any more after removing VM 1 too: passes do nothing.
    dedup.remove_vm(VmId(1)).unwrap();
    assert_eq!(
        dedup.scan_pass(&host, &NoGuestMappings),
        Ok(PassReport::default())
    );
}

#[test]
fn unused_stable_frames_are_let_go_at_the_end_of_a_full_scan() {
    let host = host(16);
    let b = host.create_backing(2).unwrap();
    fill(&host, b, 0, 4);
    fill(&host, b, 1, 4);
    let mut dedup = Dedup::new(config(64)).unwrap();
    dedup.add_vm(&host, VmId(0), None, &[b]).unwrap();
    dedup.full_scans(&host, &NoGuestMappings, 2).unwrap();
    assert_eq!(host.lock().pool().allocated_count(), 1);
    let s = dedup.stats(&host);
    assert_eq!(
        (s.frames_held, s.saved_frames(), s.net_saved_frames()),
        (1, 1, 1)
    );
    // Both pages written: both copy away (the service's reference keeps the frame shared).
    fill(&host, b, 0, 6);
    fill(&host, b, 1, 7);
    assert_eq!(host.lock().pool().allocated_count(), 3);
    let s = dedup.stats(&host);
    assert_eq!(s.cow_breaks, 2);
    // 3 frames for 2 pages: the held frame nobody shares costs one.
    assert_eq!(
        (s.frames_held, s.saved_frames(), s.net_saved_frames()),
        (1, 0, -1)
    );
    dedup.full_scans(&host, &NoGuestMappings, 1).unwrap();
    assert_eq!(
        host.lock().pool().allocated_count(),
        2,
        "stable frame freed"
    );
    let s = dedup.stats(&host);
    assert_eq!((s.pages_shared, s.pages_sharing), (0, 0));
    assert_eq!((s.frames_held, s.net_saved_frames()), (0, 0));
}
