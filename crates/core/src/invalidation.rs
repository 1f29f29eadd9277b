//! The invalidation entry points the core VM calls around a page-table
//! change.
//!
//! Kernel counterpart: `mmu_notifier_invalidate_range_start`,
//! `mmu_notifier_invalidate_range_start_nonblock`,
//! `mmu_notifier_invalidate_range_end` and
//! `mmu_notifier_invalidate_range_only_end` (v6.5).
//!
//! A start returns an [`Invalidation`] that must be ended; its type makes the
//! kernel's pairing rules hold by construction:
//!
//! * it borrows a held lock of the address space ([`HeldMmLock`]) until it
//!   ends, so registration (which takes all of them) cannot land inside;
//! * a refused non-blockable start returns no `Invalidation`, so there is no
//!   end to call by mistake;
//! * dropping it without [`Invalidation::end`] (say, while unwinding) ends
//!   it, so no subscriber is left with an unmatched start;
//! * a callback that unwinds out of the start sends an end only to the
//!   subscribers whose start returned (or that have no start callback), so
//!   none gets an end without its start.

use std::fmt;
use std::marker::PhantomData;

use crate::Range;
use crate::context::{self, OpenInvalidation};
use crate::error::WouldBlock;
use crate::lockdep::MapHeld;
#[cfg(doc)]
use crate::mm::HeldMmLock;
use crate::notify::{PAGE_SIZE, PMD_SIZE, PUD_SIZE, clear_flush_notify};
use crate::ops::PteValue;
use crate::subscriptions::Subscriptions;

const COUNTED: usize = 1;
const ENDED: usize = 2;

/// A started invalidation of a range; end it once the page tables changed.
///
/// ```
/// use mmun_core::{Event, Invalidation, Mm, Range};
/// let mm = Mm::new();
/// let lock = mm.mmap_read();
/// let inv = Invalidation::start(Range::new(&lock, Event::Clear, 0x1000, 0x3000));
/// // ... clear the primary PTEs of [0x1000, 0x3000) ...
/// inv.end();
/// ```
#[must_use = "an invalidation must be ended after the page tables change"]
pub struct Invalidation<'a> {
    range: Range<'a>,
    subscriptions: Option<&'a Subscriptions>,
    /// `COUNTED` (the tree counted this range at start, so its end closes
    /// it) and `ENDED`. A full word on purpose: a byte store followed by
    /// the word load that moves the struct stalled store forwarding and
    /// tripled the cost of the no-subscriber path.
    state: usize,
    open: OpenInvalidation,
    /// The per-thread debug bookkeeping needs start and end on one thread.
    _not_send: PhantomData<*const ()>,
}

impl<'a> Invalidation<'a> {
    /// `mmu_notifier_invalidate_range_start`: sets the range blockable and
    /// tells every overlapping interval notifier, then every list notifier.
    /// It cannot fail.
    #[inline(always)]
    pub fn start(mut range: Range<'a>) -> Invalidation<'a> {
        context::might_sleep();
        range.set_blockable(true);
        let Some(subscriptions) = range.mm().subscriptions() else {
            return Self::unsubscribed(range);
        };
        let open = Self::record(subscriptions, &range);
        let _map = MapHeld::acquire();
        // Blockable: subscribers may not refuse (a refusal was WARNed and
        // already unwound, the tree included). Linux ignores it too.
        // One path out whatever the outcome: with a branch per outcome
        // each copied the range into the `Invalidation` on its own.
        let counted = subscriptions.invalidate_range_start(&range) == Ok(true);
        Self::started(range, subscriptions, counted, open)
    }

    /// `mmu_notifier_invalidate_range_start_nonblock`: the same with the
    /// range non-blockable, for the OOM reaper. If a subscriber would have to
    /// sleep, returns [`WouldBlock`] with everything already undone: interval
    /// notifiers are not counted any more and list notifiers that have an
    /// end got it. There is nothing to end.
    #[inline]
    pub fn start_nonblock(mut range: Range<'a>) -> Result<Invalidation<'a>, WouldBlock> {
        range.set_blockable(false);
        let Some(subscriptions) = range.mm().subscriptions() else {
            return Ok(Self::unsubscribed(range));
        };
        let open = Self::record(subscriptions, &range);
        let _map = MapHeld::acquire();
        let counted = subscriptions.invalidate_range_start(&range)?;
        Ok(Self::started(range, subscriptions, counted, open))
    }

    // The start runs on the caller's `range`, and the `Invalidation` is built
    // only once it returned: had the subscribers been handed the range inside
    // it, its address would have escaped, and `end` (which takes it by value)
    // would have copied all 64 bytes of it on every end. If a start callback
    // unwinds there is no `Invalidation` yet; the start ended what it started
    // itself, and dropping `open` removes the record.

    /// An invalidation of an address space without subscriptions: nothing
    /// to tell, nothing to end.
    #[inline(always)]
    fn unsubscribed(range: Range<'a>) -> Invalidation<'a> {
        Invalidation {
            range,
            subscriptions: None,
            state: 0,
            open: OpenInvalidation::none(),
            _not_send: PhantomData,
        }
    }

    /// Records `range` as open on this thread until its end (the
    /// self-deadlock checks read the record).
    #[inline(always)]
    fn record(subscriptions: &Subscriptions, range: &Range<'a>) -> OpenInvalidation {
        OpenInvalidation::push(
            subscriptions.id(),
            range.start(),
            range.end(),
            range.event_code(),
        )
    }

    /// The invalidation whose start returned; `counted` if the tree
    /// counted it (its end then closes the epoch).
    #[inline(always)]
    fn started(
        range: Range<'a>,
        subscriptions: &'a Subscriptions,
        counted: bool,
        open: OpenInvalidation,
    ) -> Invalidation<'a> {
        Invalidation {
            range,
            subscriptions: Some(subscriptions),
            state: if counted { COUNTED } else { 0 },
            open,
            _not_send: PhantomData,
        }
    }

    /// The range, with its blockable flag as the subscribers saw it.
    #[inline]
    pub fn range(&self) -> &Range<'a> {
        &self.range
    }

    /// `mmu_notifier_invalidate_range_end`: closes the interval epoch, then
    /// calls every list notifier's `invalidate_range` and
    /// `invalidate_range_end`.
    #[inline(always)]
    pub fn end(mut self) {
        self.finish::<false>();
        // Ended: the drop glue would only find that out. Forgetting `self`
        // (rather than moving it into a `ManuallyDrop` before the end) keeps
        // it where it is: the move was a 64-byte copy on every end. Nothing
        // is leaked: the record is popped and the range is `Copy`.
        std::mem::forget(self);
    }

    /// `mmu_notifier_invalidate_range_only_end`: as [`Invalidation::end`]
    /// but without `invalidate_range`, for callers that already flushed
    /// secondary TLBs under the page-table lock (`*_clear_flush_notify`).
    #[inline]
    pub fn only_end(mut self) {
        self.finish::<true>();
        std::mem::forget(self);
    }

    /// Ends the invalidation unless it is ended. Marks it ended before any
    /// end callback runs, so that one unwinding does not end it twice.
    #[inline(always)]
    fn finish<const ONLY_END: bool>(&mut self) {
        let Some(subscriptions) = self.subscriptions else {
            return;
        };
        if self.state & ENDED != 0 {
            return;
        }
        let counted = self.state & COUNTED != 0;
        self.state = ENDED;
        // End callbacks may wait for interval epochs again (the tree's end
        // runs first), so this range no longer counts as open.
        self.open.pop();
        end_slow::<ONLY_END>(subscriptions, &self.range, counted);
    }
}

/// The end's dispatch, inline like the start's: out of line, its call
/// saved and restored six registers per end (a list notifier's start+end
/// measured 8.5 ns with both walks out of line, 6.4 ns with both inline).
/// The no-subscriber path passes it by with one test. One copy per
/// `ONLY_END`, each with the one walk it needs.
#[inline(always)]
fn end_slow<const ONLY_END: bool>(subscriptions: &Subscriptions, range: &Range<'_>, counted: bool) {
    if range.is_blockable() {
        context::might_sleep();
    }
    let _map = MapHeld::acquire();
    subscriptions.invalidate_range_end(range, ONLY_END, counted);
}

impl Invalidation<'_> {
    /// Panics unless `[start, end)` lies inside this invalidation's range.
    #[track_caller]
    fn assert_inside(&self, what: &str, start: u64, end: u64) {
        let r = self.range();
        assert!(
            r.start() <= start && end <= r.end() && start < end,
            "{what} [{start:#x}, {end:#x}) outside the invalidation [{:#x}, {:#x}) it must be nested in",
            r.start(),
            r.end()
        );
    }

    /// `mmu_notifier_change_pte` inside this invalidation: the PTE at
    /// `address` now holds `pte`.
    ///
    /// # Panics
    ///
    /// If `address` is outside this invalidation's range.
    #[track_caller]
    pub fn change_pte(&self, address: u64, pte: PteValue) {
        self.assert_inside("change_pte at", address, address + 1);
        self.range().mm().change_pte(address, pte);
    }

    /// `set_pte_at_notify`: tell the notifiers first (`change_pte`), then
    /// set the primary PTE (`primary`).
    ///
    /// # Panics
    ///
    /// As [`Invalidation::change_pte`].
    #[track_caller]
    pub fn set_pte_at_notify(&self, address: u64, pte: PteValue, primary: impl FnOnce(PteValue)) {
        self.change_pte(address, pte);
        primary(pte);
    }

    /// `mmu_notifier_invalidate_range` inside this invalidation (a
    /// secondary TLB flush under the page-table lock).
    ///
    /// # Panics
    ///
    /// If `[start, end)` is not inside this invalidation's range.
    #[track_caller]
    pub fn invalidate_range(&self, start: u64, end: u64) {
        self.assert_inside("invalidate_range", start, end);
        self.range().mm().invalidate_range(start, end);
    }

    #[track_caller]
    fn clear_flush<T>(&self, address: u64, size: u64, primary: impl FnOnce() -> T) -> T {
        let start = address & !(size - 1);
        self.assert_inside("the flushed entry", start, start + size);
        clear_flush_notify(self.range().mm(), address, size, primary)
    }

    /// [`ptep_clear_flush_notify`](crate::notify::ptep_clear_flush_notify) inside this invalidation.
    ///
    /// # Panics
    ///
    /// If the page is not inside this invalidation's range.
    #[track_caller]
    pub fn ptep_clear_flush_notify<T>(&self, address: u64, primary: impl FnOnce() -> T) -> T {
        self.clear_flush(address, PAGE_SIZE, primary)
    }

    /// [`pmdp_huge_clear_flush_notify`](crate::notify::pmdp_huge_clear_flush_notify) inside this invalidation.
    ///
    /// # Panics
    ///
    /// If the 2 MiB entry is not inside this invalidation's range.
    #[track_caller]
    pub fn pmdp_huge_clear_flush_notify<T>(&self, address: u64, primary: impl FnOnce() -> T) -> T {
        self.clear_flush(address, PMD_SIZE, primary)
    }

    /// [`pudp_huge_clear_flush_notify`](crate::notify::pudp_huge_clear_flush_notify) inside this invalidation.
    ///
    /// # Panics
    ///
    /// If the 1 GiB entry is not inside this invalidation's range.
    #[track_caller]
    pub fn pudp_huge_clear_flush_notify<T>(&self, address: u64, primary: impl FnOnce() -> T) -> T {
        self.clear_flush(address, PUD_SIZE, primary)
    }
}

impl Drop for Invalidation<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        self.finish::<false>();
    }
}

impl fmt::Debug for Invalidation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invalidation")
            .field("range", &self.range)
            .field("ended", &(self.state & ENDED != 0))
            .finish_non_exhaustive()
    }
}
