//! The sequence word of an interval subscription, the one piece of
//! `struct mmu_interval_notifier` that drivers touch directly: below the
//! subscriptions (whose nodes hold the words) and the ops tables
//! (whose `invalidate` receives one), above nothing but `Seq`.
//! Re-exported as [`crate::interval_notifier::IntervalSub`].

use std::fmt;

use crate::Seq;
use crate::sync::atomic::{AtomicU64, Ordering};

/// The sequence word of one interval subscription: the part of
/// `struct mmu_interval_notifier` that the retry protocol reads and writes.
///
/// A driver reaches it through its
/// [`IntervalNotifier`](crate::IntervalNotifier) (which dereferences to it)
/// and, in its `invalidate` callback, through the `sub` argument.
///
/// # Invariants
///
/// The seq is odd from insertion on: insert sets an odd value, and
/// `set_seq` is only ever given the odd `cur_seq` of a running
/// invalidation.
pub struct IntervalSub {
    /// Written by `set_seq` under the driver lock, read by `read_retry`
    /// under the same lock and by `read_begin` under the subscriptions lock.
    invalidate_seq: AtomicU64,
}

impl IntervalSub {
    /// Seq 0: not yet inserted (an insert sets an odd seq).
    pub(crate) fn new() -> IntervalSub {
        IntervalSub {
            invalidate_seq: AtomicU64::new(0),
        }
    }

    /// `mmu_interval_read_retry`: whether an invalidation has started since
    /// `read_begin` returned `seq`. Call it under the driver lock that the
    /// `invalidate` callback takes around `set_seq`; then `false` is
    /// reliable.
    #[inline]
    #[must_use]
    pub fn read_retry(&self, seq: Seq) -> bool {
        // The driver lock orders this load after any `set_seq` made under
        // it, so relaxed suffices (Linux uses a plain load here).
        self.invalidate_seq.load(Ordering::Relaxed) != seq.0
    }

    /// `mmu_interval_check_retry`: [`IntervalSub::read_retry`] without the
    /// lock, as a hint to give up early: `true` is reliable, `false` is not.
    #[inline]
    #[must_use]
    pub fn check_retry(&self, seq: Seq) -> bool {
        // Pairs with the Release store in `set_seq`.
        self.invalidate_seq.load(Ordering::Acquire) != seq.0
    }

    /// `mmu_interval_set_seq`: records that an invalidation with `cur_seq`
    /// reached this interval. Call it from `invalidate`, under the driver
    /// lock that guards `read_retry`, every time it returns `true`.
    #[inline]
    pub fn set_seq(&self, cur_seq: Seq) {
        debug_assert!(
            cur_seq.is_odd(),
            "set_seq() takes the odd cur_seq of a callback"
        );
        // Pairs with the Acquire load in `check_retry`.
        self.invalidate_seq.store(cur_seq.0, Ordering::Release);
    }

    pub(crate) fn set_seq_locked(&self, seq: u64) {
        self.invalidate_seq.store(seq, Ordering::Release);
    }

    /// The word itself, for a foreign caller that inlines `read_retry`
    /// (see [`crate::SeqWords`]).
    #[cfg(not(mmun_loom))]
    pub(crate) fn word_ptr(&self) -> *const u64 {
        self.invalidate_seq.as_ptr()
    }

    /// The seq as `read_begin` reads it, under the subscriptions lock.
    pub(crate) fn load_seq(&self) -> u64 {
        // Pairs with the Release store in `set_seq`.
        self.invalidate_seq.load(Ordering::Acquire)
    }
}

impl fmt::Debug for IntervalSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntervalSub")
            .field(
                "invalidate_seq",
                &self.invalidate_seq.load(Ordering::Relaxed),
            )
            .finish()
    }
}
