//! Per-VM memory accounts in the shared frame pool: limits, reservations, and who pays.
//!
//! Every backing object belongs to an [`AccountId`] (a VM's RAM and read-only slot share
//! one; backings created without one belong to the general account, [`GENERAL`], which has
//! no limit and no reservation). An account is *charged* one page for every page of its
//! backings that holds a frame (private or shared), so a merged frame is charged once to
//! each page that names it.
//!
//! The rules, all decided here under the host layer's lock:
//!
//! - **Limit**: a page that would take an account above its limit is refused
//!   ([`Refusal::OverLimit`]); the account itself pays (its pages are swapped, or it is
//!   stopped).
//! - **Reservation**: an account below its reservation always gets its next page. That
//!   holds because the pool never *commits* more than it has:
//!   `committed = Σ max(charged, reservation) <= capacity` at all times. A charge below the
//!   reservation leaves `committed` unchanged; a charge at or above it adds one and is
//!   refused ([`Refusal::PoolCommitted`]) if that would pass the capacity, or if the free
//!   frames would drop below the frames still owed to reservations (frames held outside
//!   any page, say by a service, are covered by that second check). While no reservation is
//!   owed anything, nothing is refused here: an empty pool is then the allocator's plain
//!   out-of-memory, and the firmware makes the same VM pay as for a refusal. Copy-on-write keeps
//!   the charge (the page was charged already), and since every allocated frame is charged
//!   to at least one page when no service holds extra ones, `free >= Σ (reservation -
//!   charged)` follows from the first rule: a page within its reservation finds a frame.
//! - **Admission**: a new account's reservation is admitted only if `committed` stays
//!   within the capacity ([`AdmitError::ReservationsExceedPool`]).
//! - **Who pays** when the pool is committed: [`MemAccounts::payer`] names the account with
//!   the most pages beyond its reservation (the requester on a tie), because that account
//!   holds the memory nobody guaranteed it.
//!
//! A stopped VM's account is [`MemAccounts::close`]d: its limit drops to what it holds, its
//! reservation to zero (giving it back to the pool), so nothing it still runs can take more.

use alloc::vec::Vec;
use core::fmt;

/// An account of the shared pool (index into [`MemAccounts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccountId(pub u32);

/// The general account: backings created without an account; no limit, no reservation.
pub const GENERAL: AccountId = AccountId(0);

/// What an account may hold, in pages (4 KiB frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountSpec {
    /// Most pages charged at once; `None` for no limit.
    pub limit: Option<u64>,
    /// Pages the account always gets, set aside at admission.
    pub reservation: u64,
}

impl AccountSpec {
    /// No limit, no reservation.
    pub const UNLIMITED: Self = Self {
        limit: None,
        reservation: 0,
    };
}

/// Why a new account was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmitError {
    /// The reservation does not fit: `available` pages are still uncommitted.
    ReservationsExceedPool {
        /// Pages asked for.
        requested: u64,
        /// Pages the pool can still commit.
        available: u64,
    },
    /// The limit is below the reservation.
    LimitBelowReservation,
    /// More accounts than `u32` numbers.
    TooManyAccounts,
}

impl fmt::Display for AdmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdmitError::ReservationsExceedPool {
                requested,
                available,
            } => write!(
                f,
                "reservation of {requested} pages does not fit: the pool can commit only {available} more"
            ),
            AdmitError::LimitBelowReservation => f.write_str("limit below reservation"),
            AdmitError::TooManyAccounts => f.write_str("too many memory accounts"),
        }
    }
}

/// Why a page was not charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The account holds its limit already.
    OverLimit,
    /// The account is at or above its reservation and the pool has nothing uncommitted
    /// left (the rest is owed to other accounts' reservations).
    PoolCommitted,
    /// No such account (a broken caller).
    NoSuchAccount,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::OverLimit => "the VM is at its memory limit",
            Refusal::PoolCommitted => {
                "the VM is beyond its reservation and the rest of the pool is reserved or in use"
            }
            Refusal::NoSuchAccount => "no such memory account",
        })
    }
}

/// One account's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountUsage {
    /// Pages charged now.
    pub charged: u64,
    /// Highest charge seen.
    pub peak: u64,
    /// The limit (`None`: none).
    pub limit: Option<u64>,
    /// The reservation.
    pub reservation: u64,
    /// Charges refused at the limit.
    pub refused_at_limit: u64,
    /// Charges refused because the pool was committed.
    pub refused_pool: u64,
    /// Whether the account was closed.
    pub closed: bool,
}

impl AccountUsage {
    /// Pages beyond the reservation.
    pub fn excess(&self) -> u64 {
        self.charged.saturating_sub(self.reservation)
    }
}

/// Every account of one pool.
#[derive(Debug, Clone)]
pub struct MemAccounts {
    capacity: u64,
    accounts: Vec<Option<AccountUsage>>,
    /// Σ charged.
    charged: u64,
    /// Σ max(0, reservation - charged): frames owed to reservations.
    owed: u64,
}

impl MemAccounts {
    /// Accounts of a pool of `capacity` frames, with the general account.
    pub fn new(capacity: u64) -> Self {
        let general = AccountUsage {
            charged: 0,
            peak: 0,
            limit: None,
            reservation: 0,
            refused_at_limit: 0,
            refused_pool: 0,
            closed: false,
        };
        Self {
            capacity,
            accounts: alloc::vec![Some(general)],
            charged: 0,
            owed: 0,
        }
    }

    /// Frames in the pool.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Σ max(charged, reservation) over the accounts.
    pub fn committed(&self) -> u64 {
        self.charged + self.owed
    }

    /// Frames still owed to reservations (Σ max(0, reservation - charged)).
    pub fn owed(&self) -> u64 {
        self.owed
    }

    /// Pages charged over all accounts.
    pub fn charged(&self) -> u64 {
        self.charged
    }

    /// Adds an account; refused if its reservation does not fit.
    pub fn admit(&mut self, spec: AccountSpec) -> Result<AccountId, AdmitError> {
        if spec.limit.is_some_and(|limit| limit < spec.reservation) {
            return Err(AdmitError::LimitBelowReservation);
        }
        let available = self.capacity.saturating_sub(self.committed());
        if spec.reservation > available {
            return Err(AdmitError::ReservationsExceedPool {
                requested: spec.reservation,
                available,
            });
        }
        let id = u32::try_from(self.accounts.len()).map_err(|_| AdmitError::TooManyAccounts)?;
        self.accounts.push(Some(AccountUsage {
            charged: 0,
            peak: 0,
            limit: spec.limit,
            reservation: spec.reservation,
            refused_at_limit: 0,
            refused_pool: 0,
            closed: false,
        }));
        self.owed += spec.reservation;
        Ok(AccountId(id))
    }

    /// The figures of an account.
    pub fn usage(&self, id: AccountId) -> Option<AccountUsage> {
        *self.accounts.get(id.0 as usize)?
    }

    /// Every live account with its figures.
    pub fn iter(&self) -> impl Iterator<Item = (AccountId, AccountUsage)> + '_ {
        self.accounts
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.map(|a| (AccountId(i as u32), a)))
    }

    fn get_mut(&mut self, id: AccountId) -> Option<&mut AccountUsage> {
        self.accounts.get_mut(id.0 as usize)?.as_mut()
    }

    /// Whether `id` may take one more page now, with `free` frames free in the pool
    /// (counts a refusal). Does not charge: [`MemAccounts::charge`] does once the page
    /// has its frame.
    pub fn check(&mut self, id: AccountId, free: u64) -> Result<(), Refusal> {
        let capacity = self.capacity;
        let committed = self.committed();
        let owed = self.owed;
        let account = self.get_mut(id).ok_or(Refusal::NoSuchAccount)?;
        if account.closed || account.limit.is_some_and(|limit| account.charged >= limit) {
            account.refused_at_limit += 1;
            return Err(Refusal::OverLimit);
        }
        if account.charged < account.reservation {
            // Within the reservation: committed already, and `free >= owed >= 1`.
            return Ok(());
        }
        // With nothing owed there is no reservation to protect: the pool itself decides (an
        // empty pool is the allocator's out-of-memory, as without accounts).
        if owed > 0 && (committed >= capacity || free <= owed) {
            account.refused_pool += 1;
            return Err(Refusal::PoolCommitted);
        }
        Ok(())
    }

    /// Records that a page of `id` now holds a frame (bookkeeping, never refused).
    pub fn charge(&mut self, id: AccountId) {
        let Some(account) = self.get_mut(id) else {
            return;
        };
        let below = account.charged < account.reservation;
        account.charged += 1;
        account.peak = account.peak.max(account.charged);
        if below {
            self.owed -= 1;
        }
        self.charged += 1;
    }

    /// Records that a page of `id` gave up its frame.
    pub fn uncharge(&mut self, id: AccountId) {
        let Some(account) = self.get_mut(id) else {
            return;
        };
        if account.charged == 0 {
            return;
        }
        account.charged -= 1;
        let below = account.charged < account.reservation;
        if below {
            self.owed += 1;
        }
        self.charged -= 1;
    }

    /// Closes an account (its VM was stopped): no more pages, reservation given back.
    pub fn close(&mut self, id: AccountId) {
        let Some(account) = self.get_mut(id) else {
            return;
        };
        let owed = account.reservation.saturating_sub(account.charged);
        account.reservation = 0;
        account.limit = Some(account.charged);
        account.closed = true;
        self.owed -= owed;
    }

    /// Removes an account that holds no page any more (its VM was torn down). Returns
    /// whether it was removed (the general account and busy accounts stay).
    pub fn remove(&mut self, id: AccountId) -> bool {
        if id == GENERAL {
            return false;
        }
        let Some(account) = self.usage(id) else {
            return false;
        };
        if account.charged != 0 {
            return false;
        }
        self.owed -= account.reservation;
        self.accounts[id.0 as usize] = None;
        true
    }

    /// Who pays when `requester` was refused with `refusal`: at its limit the requester
    /// itself; when the pool is committed the account with the most pages beyond its
    /// reservation (the requester when it holds as many), never a closed account.
    pub fn payer(&self, requester: AccountId, refusal: Refusal) -> AccountId {
        if refusal != Refusal::PoolCommitted {
            return requester;
        }
        let mine = self.usage(requester).map_or(0, |a| a.excess());
        self.iter()
            .filter(|(_, a)| !a.closed)
            .filter(|(id, a)| *id != requester && a.excess() > mine)
            .max_by_key(|(id, a)| (a.excess(), core::cmp::Reverse(*id)))
            .map_or(requester, |(id, _)| id)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(limit: Option<u64>, reservation: u64) -> AccountSpec {
        AccountSpec { limit, reservation }
    }

    #[test]
    fn reservations_are_admitted_only_while_they_fit() {
        let mut a = MemAccounts::new(100);
        let x = a.admit(spec(None, 60)).unwrap();
        assert_eq!(
            a.admit(spec(None, 41)),
            Err(AdmitError::ReservationsExceedPool {
                requested: 41,
                available: 40
            })
        );
        let y = a.admit(spec(Some(50), 40)).unwrap();
        assert_ne!(x, y);
        assert_eq!(a.committed(), 100);
        assert_eq!(
            a.admit(spec(Some(3), 4)),
            Err(AdmitError::LimitBelowReservation)
        );
        // Pages charged beyond a reservation are committed too.
        let mut b = MemAccounts::new(10);
        for _ in 0..8 {
            b.check(GENERAL, 10).unwrap();
            b.charge(GENERAL);
        }
        assert!(b.admit(spec(None, 3)).is_err());
        assert!(b.admit(spec(None, 2)).is_ok());
    }

    #[test]
    fn limit_refuses_and_the_requester_pays() {
        let mut a = MemAccounts::new(100);
        let x = a.admit(spec(Some(2), 0)).unwrap();
        for _ in 0..2 {
            a.check(x, 100).unwrap();
            a.charge(x);
        }
        assert_eq!(a.check(x, 98), Err(Refusal::OverLimit));
        assert_eq!(a.payer(x, Refusal::OverLimit), x);
        assert_eq!(a.usage(x).unwrap().refused_at_limit, 1);
        a.uncharge(x);
        assert!(a.check(x, 99).is_ok());
    }

    #[test]
    fn reservation_survives_a_hog_and_the_hog_pays() {
        let mut a = MemAccounts::new(10);
        let small = a.admit(spec(None, 4)).unwrap();
        let hog = a.admit(spec(None, 0)).unwrap();
        let mut free = 10;
        // The hog takes everything not reserved.
        while a.check(hog, free).is_ok() {
            a.charge(hog);
            free -= 1;
        }
        assert_eq!(a.usage(hog).unwrap().charged, 6);
        // The small VM still gets its 4 pages.
        for _ in 0..4 {
            a.check(small, free).unwrap();
            a.charge(small);
            free -= 1;
        }
        assert_eq!(free, 0);
        // Nothing is owed now: an empty pool is the allocator's to refuse, and whoever asks
        // next, the hog is the one holding memory beyond its reservation.
        assert_eq!(a.check(small, free), Ok(()));
        assert_eq!(a.payer(small, Refusal::PoolCommitted), hog);
        assert_eq!(a.payer(hog, Refusal::PoolCommitted), hog);
        // Once the hog is closed and its pages given back, the small VM may grow.
        a.close(hog);
        assert_eq!(a.check(hog, free), Err(Refusal::OverLimit));
        for _ in 0..6 {
            a.uncharge(hog);
            free += 1;
        }
        assert!(a.remove(hog));
        assert!(a.check(small, free).is_ok());
    }

    #[test]
    fn frames_held_outside_pages_do_not_eat_reservations() {
        let mut a = MemAccounts::new(10);
        let r = a.admit(spec(None, 5)).unwrap();
        // A service holds 5 frames no page is charged for: 5 free, all owed to r.
        assert_eq!(a.check(GENERAL, 5), Err(Refusal::PoolCommitted));
        assert!(a.check(r, 5).is_ok());
    }

    #[test]
    fn closing_gives_the_reservation_back() {
        let mut a = MemAccounts::new(10);
        let x = a.admit(spec(None, 8)).unwrap();
        a.charge(x);
        a.close(x);
        assert_eq!(a.owed(), 0);
        assert_eq!(a.committed(), 1);
        assert!(!a.remove(x), "still holds a page");
        a.uncharge(x);
        assert!(a.remove(x));
        assert!(a.admit(spec(None, 10)).is_ok());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit(Option<u64>, u64),
        Touch(usize),
        Release(usize),
        Close(usize),
        Remove(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (proptest::option::of(0u64..40), 0u64..30).prop_map(|(l, r)| Op::Admit(l, r)),
            (0usize..6).prop_map(Op::Touch),
            (0usize..6).prop_map(Op::Touch),
            (0usize..6).prop_map(Op::Touch),
            (0usize..6).prop_map(Op::Release),
            (0usize..6).prop_map(Op::Close),
            (0usize..6).prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// Against a reference model of pages and frames (no sharing): the pool never
        /// commits more than its capacity, no account passes its limit, an account below its
        /// reservation is never refused (and a frame is always free for it), a refusal at
        /// the pool names a payer holding at least as much excess as the requester.
        #[test]
        fn policy_holds_against_a_model(capacity in 1u64..80, ops in proptest::collection::vec(op(), 1..300)) {
            let mut a = MemAccounts::new(capacity);
            let mut ids = alloc::vec![GENERAL];
            let mut model: Vec<(Option<u64>, u64, u64, bool)> = alloc::vec![(None, 0, 0, false)];
            let mut free = capacity;
            for op in ops {
                match op {
                    Op::Admit(limit, reservation) => {
                        let committed: u64 = model.iter().map(|m| m.2.max(m.1)).sum();
                        let fits = committed + reservation <= capacity
                            && limit.is_none_or(|l| l >= reservation);
                        match a.admit(spec(limit, reservation)) {
                            Ok(id) => {
                                prop_assert!(fits);
                                ids.push(id);
                                model.push((limit, reservation, 0, false));
                            }
                            Err(_) => prop_assert!(!fits),
                        }
                    }
                    Op::Touch(i) => {
                        let Some(&id) = ids.get(i) else { continue };
                        let m = model[i];
                        let result = a.check(id, free);
                        if m.2 < m.1 && !m.3 {
                            prop_assert!(result.is_ok(), "below its reservation but refused");
                            prop_assert!(free >= 1, "no frame for a reserved page");
                        }
                        if m.3 || m.0.is_some_and(|l| m.2 >= l) {
                            prop_assert_eq!(result, Err(Refusal::OverLimit));
                        }
                        match result {
                            // An empty pool with nothing owed: the allocator refuses.
                            Ok(()) if free == 0 => prop_assert_eq!(a.owed(), 0),
                            Ok(()) => {
                                a.charge(id);
                                free -= 1;
                                model[i].2 += 1;
                            }
                            Err(Refusal::PoolCommitted) => {
                                let payer = a.payer(id, Refusal::PoolCommitted);
                                let excess = |u: AccountUsage| u.excess();
                                prop_assert!(excess(a.usage(payer).unwrap()) >= excess(a.usage(id).unwrap()));
                            }
                            Err(_) => {}
                        }
                    }
                    Op::Release(i) => {
                        let Some(&id) = ids.get(i) else { continue };
                        if model[i].2 > 0 {
                            a.uncharge(id);
                            free += 1;
                            model[i].2 -= 1;
                        }
                    }
                    Op::Close(i) => {
                        let Some(&id) = ids.get(i) else { continue };
                        a.close(id);
                        model[i].0 = Some(model[i].2);
                        model[i].1 = 0;
                        model[i].3 = true;
                    }
                    Op::Remove(i) => {
                        if i == 0 { continue; }
                        let Some(&id) = ids.get(i) else { continue };
                        if a.remove(id) {
                            prop_assert_eq!(model[i].2, 0);
                            ids.remove(i);
                            model.remove(i);
                        }
                    }
                }
                let committed: u64 = model.iter().map(|m| m.2.max(m.1)).sum();
                prop_assert_eq!(a.committed(), committed);
                prop_assert!(committed <= capacity);
                let owed: u64 = model.iter().map(|m| m.1.saturating_sub(m.2)).sum();
                prop_assert!(free >= owed, "free {} < owed {}", free, owed);
                for (i, m) in model.iter().enumerate() {
                    if let Some(l) = m.0 { prop_assert!(m.2 <= l); }
                    prop_assert_eq!(a.usage(ids[i]).unwrap().charged, m.2);
                }
            }
        }
    }
}
