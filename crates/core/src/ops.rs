//! What a secondary MMU implements.
//!
//! Kernel counterpart: `struct mmu_notifier_ops` and
//! `struct mmu_interval_notifier_ops` in `include/linux/mmu_notifier.h`
//! (the v6.5 generation, with `change_pte` and `invalidate_range`).
//!
//! [`NotifierOps`] is a table of optional function pointers, like the C
//! struct: a member left `None` is never called, which is observable (the
//! young callbacks are ORed only over notifiers that have them, and a start
//! failure sends `invalidate_range_end` only to notifiers that have one).
//! The table is `'static` and its address is its identity, which is what
//! [`SharedNotifier::get`](crate::SharedNotifier::get) matches on.

use crate::sync::Arc;
use std::fmt;

use crate::error::{Result, WouldBlock};
use crate::seq_word::IntervalSub;
use crate::{Mm, Range, Seq};

/// A raw primary PTE value, as handed to `change_pte` (`pte_t`).
pub type PteValue = u64;

/// `clear_flush_young` and `clear_young`: `(state, mm, start, end) -> young`.
pub type YoungFn<T> = fn(&T, &Mm, u64, u64) -> bool;

/// `alloc_notifier`: creates the driver state of a shared subscription.
pub type AllocFn<T> = fn(&Arc<Mm>) -> Result<T>;

/// The `invalidate_range_start` member. Whether it can fail is part of its
/// type, so the rule "a notifier whose start can fail must not have an end"
/// is checked when the ops are registered.
pub enum StartFn<T> {
    /// A start that never fails; it may sleep only when
    /// [`Range::is_blockable`].
    Infallible(fn(&T, &Range<'_>)),
    /// A start that may return [`WouldBlock`], and only for non-blockable
    /// ranges. Ops with such a start must leave `invalidate_range_end` empty.
    Fallible(fn(&T, &Range<'_>) -> Result<(), WouldBlock>),
}

impl<T> Clone for StartFn<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for StartFn<T> {}

impl<T> fmt::Debug for StartFn<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartFn::Infallible(_) => f.write_str("Infallible"),
            StartFn::Fallible(_) => f.write_str("Fallible"),
        }
    }
}

/// The callbacks of a whole-address-space notifier (`struct mmu_notifier_ops`).
///
/// `T` is the driver's state, reached from every callback as `&T` (the C
/// code uses `container_of` on the subscription).
///
/// # Contract
///
/// * `release`: may sleep. Tear down every secondary mapping and create no
///   new ones. May run twice, concurrently, when unregister races exit.
/// * `clear_flush_young`, `clear_young`, `test_young`, `change_pte`,
///   `invalidate_range`: atomic context (the primary's page-table lock is
///   held); must not sleep.
/// * `invalidate_range_start`: stop using every page in the range before
///   returning. May sleep only if the range is blockable.
/// * `invalidate_range_end`: the primary PTEs are updated; pages may already
///   be freed.
/// * `alloc_notifier`: called under the mmap write lock by `get`.
/// * `free_notifier`: called after the last `put`, once no callback can be
///   running; must not sleep.
pub struct NotifierOps<T: 'static> {
    /// The address space is exiting (`release`).
    pub release: Option<fn(&T, &Mm)>,
    /// Test and clear the accessed bit of `[start, end)` and flush the
    /// secondary TLB; the results of all notifiers are ORed.
    pub clear_flush_young: Option<YoungFn<T>>,
    /// Like `clear_flush_young`, flushing optional.
    pub clear_young: Option<YoungFn<T>>,
    /// Whether the page at the address was accessed; does not clear. The
    /// first notifier that says yes ends the walk.
    pub test_young: Option<fn(&T, &Mm, u64) -> bool>,
    /// The primary PTE at the address now maps a new frame or protection;
    /// always nested in a `Clear`/`Migrate` start..end covering it.
    pub change_pte: Option<fn(&T, &Mm, u64, PteValue)>,
    /// The range is about to change (`invalidate_range_start`).
    pub invalidate_range_start: Option<StartFn<T>>,
    /// The change is done (`invalidate_range_end`).
    pub invalidate_range_end: Option<fn(&T, &Range<'_>)>,
    /// Flush a secondary TLB that shares the CPU page tables
    /// (`invalidate_range`, v6.5; `arch_invalidate_secondary_tlbs` later).
    pub invalidate_range: Option<fn(&T, &Mm, u64, u64)>,
    /// Create the state of a shared subscription for `get`.
    pub alloc_notifier: Option<AllocFn<T>>,
    /// The shared subscription is gone and no callback runs any more.
    pub free_notifier: Option<fn(&T)>,
}

impl<T> NotifierOps<T> {
    /// A table with no callbacks, for `..NotifierOps::EMPTY` in initialisers.
    pub const EMPTY: NotifierOps<T> = NotifierOps {
        release: None,
        clear_flush_young: None,
        clear_young: None,
        test_young: None,
        change_pte: None,
        invalidate_range_start: None,
        invalidate_range_end: None,
        invalidate_range: None,
        alloc_notifier: None,
        free_notifier: None,
    };

    /// The registration-time rule: a start that can fail excludes an end.
    pub(crate) fn check(&self) -> Result<()> {
        let fallible = matches!(self.invalidate_range_start, Some(StartFn::Fallible(_)));
        if fallible && self.invalidate_range_end.is_some() {
            return Err(crate::Error::FallibleStartWithEnd);
        }
        Ok(())
    }
}

impl<T> fmt::Debug for NotifierOps<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut provided = Vec::new();
        let members = [
            ("release", self.release.is_some()),
            ("clear_flush_young", self.clear_flush_young.is_some()),
            ("clear_young", self.clear_young.is_some()),
            ("test_young", self.test_young.is_some()),
            ("change_pte", self.change_pte.is_some()),
            (
                "invalidate_range_start",
                self.invalidate_range_start.is_some(),
            ),
            ("invalidate_range_end", self.invalidate_range_end.is_some()),
            ("invalidate_range", self.invalidate_range.is_some()),
            ("alloc_notifier", self.alloc_notifier.is_some()),
            ("free_notifier", self.free_notifier.is_some()),
        ];
        for (name, present) in members {
            if present {
                provided.push(name);
            }
        }
        f.debug_struct("NotifierOps")
            .field("provided", &provided)
            .finish()
    }
}

/// The one callback of an interval notifier
/// (`struct mmu_interval_notifier_ops`).
///
/// The implementing type is the driver's per-interval state; the subscription
/// passed in is the one being invalidated, on which the driver calls
/// [`IntervalSub::set_seq`].
pub trait IntervalNotifierOps: Send + Sync + 'static {
    /// The range overlapping this interval is about to change.
    ///
    /// # Contract
    ///
    /// * Returns `true` after making sure no page of the overlap is used any
    ///   more, having called `sub.set_seq(cur_seq)` under the driver lock
    ///   that guards its `read_retry`.
    /// * Returns `false` only if the range is not blockable and the driver
    ///   would have to sleep (use `try_lock`); the core then aborts the whole
    ///   invalidation with `EAGAIN`.
    /// * Must not call [`IntervalNotifier::remove`](crate::IntervalNotifier::remove)
    ///   or [`IntervalNotifier::read_begin`](crate::IntervalNotifier::read_begin) on this address space: both wait for
    ///   the invalidation that is calling it.
    /// * `range` is the whole invalidated range, not clipped to the interval.
    fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool;
}
