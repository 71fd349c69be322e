//! Routing of host-memory notifications to the VM that owns each backing object.
//!
//! VMs of one trust group share a host memory layer, so one host-side change (a merge that
//! touches a page of VM A and a page of VM B) must notify each VM about its own backing only.

use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use hv_core::memslot::BackingId;
use hv_core::notifier::{HostEntry, MmuNotifier};

/// An [`MmuNotifier`] forwarding each call to the notifier registered for its backing.
/// Calls for an unregistered backing go to every registered notifier (a VM that does not
/// map the backing finds nothing to change), which is always safe.
pub struct BackingRouter<'a> {
    routes: Vec<(BackingId, &'a dyn MmuNotifier)>,
}

impl fmt::Debug for BackingRouter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackingRouter")
            .field("routes", &self.routes.len())
            .finish()
    }
}

impl Default for BackingRouter<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> BackingRouter<'a> {
    /// A router with no routes.
    pub fn new() -> Self {
        Self { routes: Vec::new() }
    }

    /// Sends notifications about `backing` to `to` (replacing an earlier route).
    pub fn route(&mut self, backing: BackingId, to: &'a dyn MmuNotifier) {
        match self.routes.iter_mut().find(|(b, _)| *b == backing) {
            Some(route) => route.1 = to,
            None => self.routes.push((backing, to)),
        }
    }

    fn each(&self, backing: BackingId, mut f: impl FnMut(&dyn MmuNotifier)) {
        match self.routes.iter().find(|(b, _)| *b == backing) {
            Some((_, to)) => f(*to),
            None => self.routes.iter().for_each(|(_, to)| f(*to)),
        }
    }
}

impl MmuNotifier for BackingRouter<'_> {
    fn invalidate_range_start(&self, backing: BackingId, pages: Range<u64>) {
        self.each(backing, |n| {
            n.invalidate_range_start(backing, pages.clone())
        });
    }

    fn invalidate_range_end(&self, backing: BackingId, pages: Range<u64>) {
        self.each(backing, |n| n.invalidate_range_end(backing, pages.clone()));
    }

    fn set_entry(&self, backing: BackingId, page: u64, entry: HostEntry) {
        self.each(backing, |n| n.set_entry(backing, page, entry));
    }

    fn clear_young(&self, backing: BackingId, pages: Range<u64>) -> bool {
        let mut young = false;
        self.each(backing, |n| young |= n.clear_young(backing, pages.clone()));
        young
    }

    fn test_young(&self, backing: BackingId, page: u64) -> bool {
        let mut young = false;
        self.each(backing, |n| young |= n.test_young(backing, page));
        young
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::RefCell;
    use hv_core::addr::Hfn;

    #[derive(Default)]
    struct Log(RefCell<Vec<(BackingId, &'static str)>>);

    impl MmuNotifier for Log {
        fn invalidate_range_start(&self, b: BackingId, _: Range<u64>) {
            self.0.borrow_mut().push((b, "start"));
        }
        fn invalidate_range_end(&self, b: BackingId, _: Range<u64>) {
            self.0.borrow_mut().push((b, "end"));
        }
        fn set_entry(&self, b: BackingId, _: u64, _: HostEntry) {
            self.0.borrow_mut().push((b, "set"));
        }
        fn clear_young(&self, b: BackingId, _: Range<u64>) -> bool {
            self.0.borrow_mut().push((b, "age"));
            b == BackingId(1)
        }
        fn test_young(&self, b: BackingId, _: u64) -> bool {
            self.0.borrow_mut().push((b, "test"));
            false
        }
    }

    #[test]
    fn each_backing_reaches_its_own_vm_and_unknown_ones_reach_all() {
        let (a, b) = (Log::default(), Log::default());
        let mut router = BackingRouter::new();
        router.route(BackingId(0), &a);
        router.route(BackingId(1), &b);
        let entry = HostEntry {
            hfn: Hfn::new(1),
            writable: false,
            dirty: false,
        };
        router.set_entry(BackingId(0), 3, entry);
        assert!(router.clear_young(BackingId(1), 0..2));
        router.invalidate_range_start(BackingId(7), 0..1);
        router.invalidate_range_end(BackingId(7), 0..1);
        assert!(!router.test_young(BackingId(0), 0));
        assert_eq!(
            a.0.into_inner(),
            [
                (BackingId(0), "set"),
                (BackingId(7), "start"),
                (BackingId(7), "end"),
                (BackingId(0), "test")
            ]
        );
        assert_eq!(
            b.0.into_inner(),
            [
                (BackingId(1), "age"),
                (BackingId(7), "start"),
                (BackingId(7), "end")
            ]
        );
    }
}
