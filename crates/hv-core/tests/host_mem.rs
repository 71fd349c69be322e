//! The host memory layer calls the notifier before it lets go of any frame, in the right
//! order, and reports bad input as errors.
#![cfg(not(loom))]

mod common;

use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;

use common::pool;
use hv_core::addr::Hfn;
use hv_core::frame_pool::FrameEpochs;
use hv_core::host_mem::{HostMem, HostMemError, PageState};
use hv_core::memslot::BackingId;
use hv_core::notifier::{HostEntry, MmuNotifier};

#[derive(Debug, PartialEq)]
enum Event {
    Start(Range<u64>),
    End(Range<u64>),
    SetEntry(u64, HostEntry),
    ClearYoung(Range<u64>),
    TestYoung(u64),
}

/// Records every call, and at each call the free epoch of the frames being watched.
struct Recorder {
    epochs: Arc<FrameEpochs>,
    watch: Vec<Hfn>,
    events: RefCell<Vec<(Event, Vec<u64>)>>,
}

impl Recorder {
    fn new(host: &HostMem<hv_core::frame_pool::VecFrameMemory>, watch: Vec<Hfn>) -> Self {
        Self {
            epochs: host.lock().pool().epochs(),
            watch,
            events: RefCell::new(Vec::new()),
        }
    }

    fn record(&self, e: Event) {
        let epochs = self
            .watch
            .iter()
            .map(|&h| self.epochs.epoch(h).unwrap())
            .collect();
        self.events.borrow_mut().push((e, epochs));
    }
}

impl MmuNotifier for Recorder {
    fn invalidate_range_start(&self, _: BackingId, pages: Range<u64>) {
        self.record(Event::Start(pages));
    }
    fn invalidate_range_end(&self, _: BackingId, pages: Range<u64>) {
        self.record(Event::End(pages));
    }
    fn set_entry(&self, _: BackingId, page: u64, entry: HostEntry) {
        self.record(Event::SetEntry(page, entry));
    }
    fn clear_young(&self, _: BackingId, pages: Range<u64>) -> bool {
        self.record(Event::ClearYoung(pages));
        true
    }
    fn test_young(&self, _: BackingId, page: u64) -> bool {
        self.record(Event::TestYoung(page));
        false
    }
}

/// A layer with one 4-page backing whose pages 0 and 1 are resident with equal contents.
fn setup() -> (
    HostMem<hv_core::frame_pool::VecFrameMemory>,
    BackingId,
    Hfn,
    Hfn,
) {
    let host = HostMem::new(pool(8));
    let b = host.create_backing(4).unwrap();
    let quiet = Recorder::new(&host, vec![]);
    let r0 = host.resolve(&quiet, b, 0, false).unwrap();
    let r1 = host.resolve(&quiet, b, 1, true).unwrap();
    host.release(r0);
    host.release(r1);
    assert!(
        quiet.events.borrow().is_empty(),
        "becoming resident notifies nothing"
    );
    (host, b, r0.hfn, r1.hfn)
}

#[test]
fn swap_out_frees_the_frame_only_between_start_and_end() {
    let (host, b, h0, _) = setup();
    let rec = Recorder::new(&host, vec![h0]);
    assert_eq!(host.swap_out(&rec, b, 0), Ok(true));
    let events = rec.events.into_inner();
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0],
        (Event::Start(0..1), vec![0]),
        "still allocated at start"
    );
    assert_eq!(events[1], (Event::End(0..1), vec![1]), "freed before end");
    assert!(matches!(
        host.lock().page(b, 0),
        Ok(PageState::SwappedOut(_))
    ));
}

#[test]
fn merge_remaps_before_dropping_the_old_frame() {
    let (host, b, h0, h1) = setup();
    let rec = Recorder::new(&host, vec![h0, h1]);
    assert_eq!(host.merge(&rec, (b, 0), (b, 1)), Ok(true));
    let shared = HostEntry {
        hfn: h1,
        writable: false,
        dirty: false,
    };
    assert_eq!(
        rec.events.into_inner(),
        [
            // Both write-protected before the comparison, then page 0 moved over.
            (Event::SetEntry(1, shared), vec![0, 0]),
            (
                Event::SetEntry(0, HostEntry { hfn: h0, ..shared }),
                vec![0, 0]
            ),
            (Event::SetEntry(0, shared), vec![0, 0]),
        ]
    );
    let st = host.lock();
    assert_eq!(
        st.pool().refcount(h0),
        0,
        "merged-away frame freed after the remap"
    );
    assert_eq!(st.pool().refcount(h1), 2);
    assert_eq!(st.page(b, 0), Ok(PageState::Shared(h1)));
}

#[test]
fn copy_on_write_installs_the_copy_before_dropping_the_share() {
    let (host, b, _, h1) = setup();
    let quiet = Recorder::new(&host, vec![]);
    host.merge(&quiet, (b, 0), (b, 1)).unwrap();
    let rec = Recorder::new(&host, vec![h1]);
    let r = host.resolve(&rec, b, 0, true).unwrap();
    assert!(r.writable && r.hfn != h1);
    let events = rec.events.into_inner();
    assert_eq!(
        events,
        [(
            Event::SetEntry(
                0,
                HostEntry {
                    hfn: r.hfn,
                    writable: true,
                    dirty: true
                }
            ),
            vec![0]
        )]
    );
    host.release(r);
    let st = host.lock();
    assert_eq!(
        st.pool().refcount(h1),
        1,
        "page 1 still holds the shared frame"
    );
    assert_eq!(st.page(b, 0), Ok(PageState::Private(r.hfn)));
}

#[test]
fn balloon_and_age_and_remove_notify_the_whole_range() {
    let (host, b, _, _) = setup();
    let rec = Recorder::new(&host, vec![]);
    assert_eq!(host.age(&rec, b, 1..3), Ok(true));
    assert_eq!(host.test_age(&rec, b, 2), Ok(false));
    host.balloon(&rec, b, 0..3).unwrap();
    host.remove_backing(&rec, b).unwrap();
    let events: Vec<Event> = rec
        .events
        .into_inner()
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert_eq!(
        events,
        [
            Event::ClearYoung(1..3),
            Event::TestYoung(2),
            Event::Start(0..3),
            Event::End(0..3),
            Event::Start(0..4),
            Event::End(0..4),
        ]
    );
    assert_eq!(host.lock().pool().allocated_count(), 0);
    assert_eq!(host.lock().page(b, 0), Err(HostMemError::NoSuchBacking));
}

#[test]
fn bad_input_is_an_error_and_notifies_nothing() {
    let (host, b, _, _) = setup();
    let rec = Recorder::new(&host, vec![]);
    let mut buf = [0u8; 8];
    assert_eq!(host.swap_out(&rec, b, 4), Err(HostMemError::PageOutOfRange));
    assert_eq!(
        host.swap_out(&rec, BackingId(3), 0),
        Err(HostMemError::NoSuchBacking)
    );
    assert_eq!(host.balloon(&rec, b, 2..2), Err(HostMemError::EmptyRange));
    assert_eq!(
        host.balloon(&rec, b, 3..5),
        Err(HostMemError::PageOutOfRange)
    );
    assert_eq!(host.age(&rec, b, 0..9), Err(HostMemError::PageOutOfRange));
    assert_eq!(
        host.test_age(&rec, b, u64::MAX),
        Err(HostMemError::PageOutOfRange)
    );
    assert_eq!(
        host.merge(&rec, (b, 0), (b, 9)),
        Err(HostMemError::PageOutOfRange)
    );
    assert_eq!(host.merge(&rec, (b, 0), (b, 0)), Ok(false));
    assert_eq!(
        host.merge(&rec, (b, 0), (b, 2)),
        Ok(false),
        "page 2 not resident"
    );
    assert_eq!(
        host.write(&rec, b, 0, 4090, &buf),
        Err(HostMemError::BadOffset)
    );
    assert_eq!(
        host.read(b, 0, usize::MAX, &mut buf),
        Err(HostMemError::BadOffset)
    );
    assert!(rec.events.borrow().is_empty());
    // Out of frames: the fault-in fails cleanly and leaves the page untouched.
    host.lock().pool_mut().inject_alloc_failure(Some(0));
    assert_eq!(
        host.resolve(&rec, b, 3, false),
        Err(HostMemError::OutOfMemory)
    );
    assert_eq!(host.lock().page(b, 3), Ok(PageState::NotTouched));
}

#[test]
fn merge_of_different_pages_write_protects_and_changes_nothing_else() {
    let (host, b, h0, h1) = setup();
    let rec = Recorder::new(&host, vec![]);
    host.write(&rec, b, 0, 100, &[1]).unwrap();
    let rec = Recorder::new(&host, vec![]);
    assert_eq!(host.merge(&rec, (b, 0), (b, 1)), Ok(false));
    let ro = |hfn| HostEntry {
        hfn,
        writable: false,
        dirty: false,
    };
    let events: Vec<Event> = rec
        .events
        .into_inner()
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert_eq!(
        events,
        [Event::SetEntry(1, ro(h1)), Event::SetEntry(0, ro(h0))]
    );
    let st = host.lock();
    assert_eq!(st.page(b, 0), Ok(PageState::Private(h0)));
    assert_eq!(st.page(b, 1), Ok(PageState::Private(h1)));
}

#[test]
fn share_page_then_merge_onto_its_frame_and_release() {
    let (host, b, h0, h1) = setup();
    let rec = Recorder::new(&host, vec![h0]);
    assert_eq!(host.share_page(&rec, (b, 2)), Ok(None), "not resident");
    assert_eq!(host.share_page(&rec, (b, 1)), Ok(Some(h1)));
    assert_eq!(host.lock().page(b, 1), Ok(PageState::Shared(h1)));
    assert_eq!(host.lock().pool().refcount(h1), 2, "page + caller");
    assert_eq!(
        host.merge_onto(&rec, (b, 1), h1),
        Ok(false),
        "already on it"
    );
    assert_eq!(host.merge_onto(&rec, (b, 2), h1), Ok(false), "not resident");
    assert_eq!(host.merge_onto(&rec, (b, 0), h1), Ok(true));
    let ro = |hfn| HostEntry {
        hfn,
        writable: false,
        dirty: false,
    };
    assert_eq!(
        rec.events.into_inner(),
        [
            (Event::SetEntry(1, ro(h1)), vec![0]),
            (Event::SetEntry(0, ro(h0)), vec![0]),
            (Event::SetEntry(0, ro(h1)), vec![0]),
        ],
        "write-protected, compared, remapped, and only then freed"
    );
    {
        let st = host.lock();
        assert_eq!(st.page(b, 0), Ok(PageState::Shared(h1)));
        assert_eq!(st.pool().refcount(h0), 0);
        assert_eq!(st.pool().refcount(h1), 3);
    }
    // A page with other bytes is refused and stays private.
    let quiet = Recorder::new(&host, vec![]);
    host.write(&quiet, b, 3, 0, &[9]).unwrap();
    let h3 = host.lock().page(b, 3).unwrap().frame().unwrap();
    assert_eq!(host.merge_onto(&quiet, (b, 3), h1), Ok(false));
    assert_eq!(host.lock().page(b, 3), Ok(PageState::Private(h3)));
    // The caller's reference keeps the frame shared even with one page left on it.
    let r = host.resolve(&quiet, b, 0, true).unwrap();
    assert_ne!(r.hfn, h1, "copied: page 1 still shares the frame");
    host.release(r);
    host.release_frame(h1).unwrap();
    assert_eq!(host.lock().pool().refcount(h1), 1);
    assert_eq!(
        host.release_frame(Hfn::new(0x1)),
        Err(HostMemError::NotResident)
    );
    let sum = host.lock().with_page_contents(b, 3, |bytes| {
        bytes.iter().map(|&x| u32::from(x)).sum::<u32>()
    });
    assert_eq!(sum, Ok(Some(9)));
    assert_eq!(
        host.lock().with_page_contents(b, 4, <[u8]>::len),
        Err(HostMemError::PageOutOfRange)
    );
}

#[test]
fn last_sharer_takes_the_frame_itself_on_write() {
    let (host, b, _, h1) = setup();
    let quiet = Recorder::new(&host, vec![]);
    host.merge(&quiet, (b, 0), (b, 1)).unwrap();
    let r = host.resolve(&quiet, b, 0, true).unwrap();
    host.release(r);
    assert_ne!(r.hfn, h1, "first writer copies");
    assert_eq!(host.lock().pool().refcount(h1), 1, "only page 1 left on it");
    let rec = Recorder::new(&host, vec![h1]);
    let r = host.resolve(&rec, b, 1, true).unwrap();
    assert_eq!(
        r,
        hv_core::host_mem::Resolved {
            hfn: h1,
            writable: true
        }
    );
    host.release(r);
    assert_eq!(
        rec.events.into_inner(),
        [(
            Event::SetEntry(
                1,
                HostEntry {
                    hfn: h1,
                    writable: true,
                    dirty: true
                }
            ),
            vec![0]
        )]
    );
    assert_eq!(host.lock().page(b, 1), Ok(PageState::Private(h1)));
    assert_eq!(host.lock().pool().allocated_count(), 2);
    assert_eq!(host.lock().cow_breaks(), 2, "one copy, one takeover");
}
