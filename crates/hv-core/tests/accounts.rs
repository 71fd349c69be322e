//! Memory accounts through the host layer: a page charges its VM's account when it gets a
//! frame and uncharges it when it loses it; limits and reservations decide `resolve`.
#![cfg(not(loom))]

mod common;

use std::ops::Range;

use common::pool;
use hv_core::accounts::{AccountSpec, AdmitError, Refusal};
use hv_core::host_mem::{HostMem, HostMemError};
use hv_core::memslot::BackingId;
use hv_core::notifier::{HostEntry, MmuNotifier};

/// A notifier for a layer no guest maps.
struct NoGuests;

impl MmuNotifier for NoGuests {
    fn invalidate_range_start(&self, _: BackingId, _: Range<u64>) {}
    fn invalidate_range_end(&self, _: BackingId, _: Range<u64>) {}
    fn set_entry(&self, _: BackingId, _: u64, _: HostEntry) {}
    fn clear_young(&self, _: BackingId, _: Range<u64>) -> bool {
        false
    }
    fn test_young(&self, _: BackingId, _: u64) -> bool {
        false
    }
}

fn touch(
    host: &HostMem<hv_core::frame_pool::VecFrameMemory>,
    b: BackingId,
    page: u64,
) -> Result<(), HostMemError> {
    let r = host.resolve(&NoGuests, b, page, true)?;
    host.release(r);
    Ok(())
}

#[test]
fn a_hog_cannot_take_a_reserved_frame_and_its_limit_holds() {
    let host = HostMem::new(pool(32));
    let reserved = host
        .admit_account(AccountSpec {
            limit: None,
            reservation: 12,
        })
        .unwrap();
    let hog = host
        .admit_account(AccountSpec {
            limit: Some(16),
            reservation: 0,
        })
        .unwrap();
    assert_eq!(
        host.admit_account(AccountSpec {
            limit: None,
            reservation: 21
        }),
        Err(AdmitError::ReservationsExceedPool {
            requested: 21,
            available: 20
        })
    );
    let small = host.create_backing_in(64, reserved).unwrap();
    let big = host.create_backing_in(64, hog).unwrap();
    for page in 0..16 {
        touch(&host, big, page).unwrap();
    }
    assert_eq!(
        touch(&host, big, 16),
        Err(HostMemError::Refused(Refusal::OverLimit))
    );
    // A general-account backing may take the 4 unreserved frames left, no more.
    let other = host.create_backing(64).unwrap();
    for page in 0..4 {
        touch(&host, other, page).unwrap();
    }
    assert_eq!(
        touch(&host, other, 4),
        Err(HostMemError::Refused(Refusal::PoolCommitted))
    );
    // The reserved VM gets all 12 of its frames although the pool is otherwise full.
    for page in 0..12 {
        touch(&host, small, page).unwrap();
    }
    assert_eq!(host.lock().pool().free_count(), 0);
    // Nothing is owed any more: the empty pool is the allocator's out-of-memory.
    assert_eq!(host.lock().accounts().owed(), 0);
    assert_eq!(touch(&host, small, 12), Err(HostMemError::OutOfMemory));
    // Ballooning and swapping uncharge; touching the same page again charges once.
    host.balloon(&NoGuests, big, 0..8).unwrap();
    assert_eq!(host.lock().account_usage(hog).unwrap().charged, 8);
    touch(&host, small, 12).unwrap();
    assert_eq!(host.lock().account_usage(reserved).unwrap().charged, 13);
    assert!(host.swap_out(&NoGuests, small, 12).unwrap());
    assert_eq!(host.lock().account_usage(reserved).unwrap().charged, 12);
    touch(&host, small, 3).unwrap();
    assert_eq!(host.lock().account_usage(reserved).unwrap().charged, 12);
    // A closed account takes nothing more and gives its reservation back.
    host.close_account(hog);
    assert_eq!(
        touch(&host, big, 0),
        Err(HostMemError::Refused(Refusal::OverLimit))
    );
    host.remove_backing(&NoGuests, big).unwrap();
    assert!(host.remove_account(hog));
    for b in [small, other] {
        host.remove_backing(&NoGuests, b).unwrap();
    }
    assert_eq!(host.lock().accounts().charged(), 0);
    assert!(host.remove_account(reserved));
    assert_eq!(host.lock().pool().allocated_count(), 0);
}

#[test]
fn merged_pages_stay_charged_and_copy_on_write_is_not_refused() {
    let host = HostMem::new(pool(4));
    let vm = host
        .admit_account(AccountSpec {
            limit: None,
            reservation: 4,
        })
        .unwrap();
    let b = host.create_backing_in(8, vm).unwrap();
    touch(&host, b, 0).unwrap();
    touch(&host, b, 1).unwrap();
    // Both zero: merge them onto one frame; both pages stay charged.
    assert!(host.merge(&NoGuests, (b, 1), (b, 0)).unwrap());
    assert_eq!(host.lock().account_usage(vm).unwrap().charged, 2);
    assert_eq!(host.lock().pool().free_count(), 3);
    touch(&host, b, 2).unwrap();
    touch(&host, b, 3).unwrap();
    // Breaking the sharing takes the frame the merge gave back.
    touch(&host, b, 1).unwrap();
    assert_eq!(host.lock().pool().free_count(), 0);
    assert_eq!(touch(&host, b, 4), Err(HostMemError::OutOfMemory));
    host.remove_backing(&NoGuests, b).unwrap();
    assert_eq!(host.lock().pool().allocated_count(), 0);
}
