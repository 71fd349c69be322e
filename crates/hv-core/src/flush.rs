//! Flush tokens: what derived translation state a mapping change requires invalidating.
//!
//! Trap-and-emulate has no hardware second stage: every host TLB entry and shadow table entry
//! for guest memory is *derived* from the GPA table. Each operation that changes the table
//! returns a [`FlushToken`] naming the guest frames whose derived translations may now grant
//! more than the table does. The token is `#[must_use]` (a compile-time warning if ignored) and
//! a debug build panics if a non-empty token is dropped without being applied or deferred.
//!
//! Tokens only ever over-approximate: merging two ranges yields the range covering both.

use core::fmt;

use crate::addr::{Gfn, GfnRange};

/// Something holding translations derived from the GPA table: the TLB, the T&E shadow tables,
/// or a remote-flush layer in front of them.
pub trait DerivedInvalidator {
    /// Drops every derived translation for any guest frame in `gfns` (a TLB entry maps an
    /// even/odd pair, so an entry touching the range at all must go).
    fn invalidate_gfns(&mut self, gfns: GfnRange);
    /// Drops every derived translation of the VM.
    fn invalidate_all(&mut self);
}

/// The plain description of a flush, without the must-apply obligation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FlushScope {
    /// Nothing hardware-visible could have been cached.
    #[default]
    Nothing,
    /// Derived translations of these guest frames.
    Gfns(GfnRange),
    /// Every derived translation of the VM.
    All,
}

impl FlushScope {
    /// The smallest scope covering both.
    pub fn merge(self, other: FlushScope) -> FlushScope {
        match (self, other) {
            (FlushScope::Nothing, x) | (x, FlushScope::Nothing) => x,
            (FlushScope::All, _) | (_, FlushScope::All) => FlushScope::All,
            (FlushScope::Gfns(a), FlushScope::Gfns(b)) => {
                let start = a.start().min(b.start());
                let end = a.end().max(b.end());
                // Both inputs are non-empty, so the hull is too.
                FlushScope::Gfns(GfnRange::new(start, end).expect("hull of two ranges"))
            }
        }
    }

    /// Performs the invalidation.
    pub fn apply(self, target: &mut impl DerivedInvalidator) {
        match self {
            FlushScope::Nothing => {}
            FlushScope::Gfns(range) => target.invalidate_gfns(range),
            FlushScope::All => target.invalidate_all(),
        }
    }
}

/// A must-use record of derived state to invalidate. Consume it with [`FlushToken::apply`],
/// or hand the obligation elsewhere with [`FlushToken::defer`].
#[must_use = "a mapping changed: apply the flush or defer it explicitly"]
#[derive(PartialEq, Eq)]
pub struct FlushToken {
    scope: FlushScope,
}

impl FlushToken {
    /// A token that needs nothing.
    pub const fn none() -> Self {
        FlushToken {
            scope: FlushScope::Nothing,
        }
    }

    /// A token for one guest frame.
    pub fn gfn(gfn: Gfn) -> Self {
        match GfnRange::single(gfn) {
            Ok(range) => FlushToken::range(range),
            // Only the very last frame number has no half-open range; flush everything then.
            Err(_) => FlushToken::all(),
        }
    }

    /// A token for a range of guest frames.
    pub const fn range(range: GfnRange) -> Self {
        FlushToken {
            scope: FlushScope::Gfns(range),
        }
    }

    /// A token for everything of the VM.
    pub const fn all() -> Self {
        FlushToken {
            scope: FlushScope::All,
        }
    }

    /// Re-arms a deferred scope.
    pub const fn from_scope(scope: FlushScope) -> Self {
        FlushToken { scope }
    }

    /// Whether nothing needs invalidating.
    pub fn is_empty(&self) -> bool {
        self.scope == FlushScope::Nothing
    }

    /// What the token asks for (inspection only; the token stays armed).
    pub fn scope(&self) -> FlushScope {
        self.scope
    }

    /// Combines two tokens into one covering both.
    pub fn merge(mut self, mut other: FlushToken) -> FlushToken {
        let scope = self.scope.merge(other.scope);
        self.scope = FlushScope::Nothing;
        other.scope = FlushScope::Nothing;
        FlushToken { scope }
    }

    /// Adds `other` into `self`.
    pub fn merge_in(&mut self, other: FlushToken) {
        let taken = core::mem::take(self);
        *self = taken.merge(other);
    }

    /// Performs the invalidation and consumes the token.
    pub fn apply(self, target: &mut impl DerivedInvalidator) {
        self.defer().apply(target);
    }

    /// Disarms the token, handing back the plain scope: the caller takes over the obligation
    /// (e.g. to batch it with others, or to flush after dropping a lock).
    pub fn defer(mut self) -> FlushScope {
        core::mem::take(&mut self.scope)
    }

    /// Same as [`FlushToken::defer`]; the name used when splitting a token for a remote flush.
    pub fn into_parts(self) -> FlushScope {
        self.defer()
    }
}

impl Default for FlushToken {
    fn default() -> Self {
        FlushToken::none()
    }
}

impl fmt::Debug for FlushToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FlushToken({:?})", self.scope)
    }
}

impl Drop for FlushToken {
    fn drop(&mut self) {
        #[cfg(test)]
        if std::thread::panicking() {
            // Already unwinding from another failure: do not turn it into an abort.
            return;
        }
        debug_assert!(
            self.scope == FlushScope::Nothing,
            "FlushToken dropped without apply() or defer(): {:?}",
            self.scope
        );
    }
}

/// A [`DerivedInvalidator`] that records what it was asked to do (for tests and accounting).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecordingInvalidator {
    /// Every range invalidated, in order.
    pub ranges: alloc::vec::Vec<GfnRange>,
    /// How many full invalidations were requested.
    pub all_count: u64,
}

impl DerivedInvalidator for RecordingInvalidator {
    fn invalidate_gfns(&mut self, gfns: GfnRange) {
        self.ranges.push(gfns);
    }

    fn invalidate_all(&mut self) {
        self.all_count += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(a: u64, b: u64) -> GfnRange {
        GfnRange::new(Gfn::new(a), Gfn::new(b)).unwrap()
    }

    #[test]
    fn empty_token_drops_silently() {
        let t = FlushToken::none();
        assert!(t.is_empty());
        drop(t);
        drop(FlushToken::default());
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "FlushToken dropped")]
    fn dropping_a_live_token_panics_in_debug() {
        drop(FlushToken::gfn(Gfn::new(3)));
    }

    #[test]
    fn merge_covers_both() {
        let t = FlushToken::range(r(10, 12)).merge(FlushToken::range(r(3, 5)));
        assert_eq!(t.scope(), FlushScope::Gfns(r(3, 12)));
        let t = t.merge(FlushToken::none());
        assert_eq!(t.scope(), FlushScope::Gfns(r(3, 12)));
        let t = FlushToken::none().merge(t);
        assert_eq!(t.scope(), FlushScope::Gfns(r(3, 12)));
        let t = t.merge(FlushToken::all());
        assert_eq!(t.scope(), FlushScope::All);
        let mut t2 = FlushToken::none();
        t2.merge_in(t);
        assert_eq!(t2.defer(), FlushScope::All);
    }

    #[test]
    fn apply_reaches_the_invalidator() {
        let mut rec = RecordingInvalidator::default();
        FlushToken::gfn(Gfn::new(7)).apply(&mut rec);
        FlushToken::none().apply(&mut rec);
        FlushToken::all().apply(&mut rec);
        assert_eq!(rec.ranges, [r(7, 8)]);
        assert_eq!(rec.all_count, 1);
    }

    #[test]
    fn defer_round_trips() {
        let scope = FlushToken::range(r(1, 9)).defer();
        assert_eq!(scope, FlushScope::Gfns(r(1, 9)));
        let t = FlushToken::from_scope(scope);
        assert_eq!(t.into_parts(), scope);
    }

    #[test]
    fn last_frame_falls_back_to_all() {
        assert_eq!(FlushToken::gfn(Gfn::new(u64::MAX)).defer(), FlushScope::All);
    }
}
