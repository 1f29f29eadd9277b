//! Interval notifiers and the collision-retry protocol.
//!
//! Kernel counterpart: `struct mmu_interval_notifier`,
//! `mmu_interval_notifier_insert{,_locked}`, `mmu_interval_notifier_remove`,
//! `mmu_interval_read_begin`, `mmu_interval_read_retry`,
//! `mmu_interval_check_retry` and `mmu_interval_set_seq`.
//!
//! # The retry loop
//!
//! A driver mirrors a range into its own page table like this
//! (`Documentation/mm/hmm.rst`):
//!
//! ```text
//! again:
//!     seq = sub.read_begin()              // may wait for a running invalidation
//!     pfns = walk the primary page table  // no driver lock held
//!     lock(driver)
//!     if sub.read_retry(seq) { unlock; goto again }
//!     program the device PTEs from pfns
//!     unlock(driver)
//! ```
//!
//! and its [`IntervalNotifierOps::invalidate`] takes the same driver lock,
//! calls `sub.set_seq(cur_seq)`, zaps its PTEs for the range and unlocks.
//! Any invalidation that starts after `read_begin` either has already set
//! the new seq when the driver checks `read_retry` (so the driver retries), or
//! waits for the driver lock and zaps what the driver just programmed.
//! `DESIGN.md` draws both interleavings.

use std::fmt;
use std::ops::Deref;

use crate::error::{Error, Result};
use crate::mm::MmapWriteGuard;
use crate::ops::IntervalNotifierOps;
pub use crate::seq_word::IntervalSub;
use crate::subscriptions::ops_ptr::OpsBox;
use crate::subscriptions::seq_arena::SeqHandle;
use crate::subscriptions::subscription::register_locked;
use crate::sync::Arc;
use crate::{Mm, Seq};

/// `struct mmu_interval_notifier`: an inserted interval notifier with its
/// driver state `O`. Removes itself when dropped.
///
/// Dereferences to its [`IntervalSub`], which carries `read_retry`,
/// `check_retry` and `set_seq`; `read_begin` is a method of the handle
/// because it may wait on the address space.
pub struct IntervalNotifier<O: IntervalNotifierOps> {
    /// The seq word, with the address space (`mmgrab`: it outlives the
    /// subscription).
    seq: SeqHandle,
    /// First address; with the seq word's id it finds the tree entry.
    start: u64,
    last: u64,
    /// `None` once removed (the state is freed then).
    ops: Option<OpsBox<O>>,
}

/// Where an interval's retry protocol lives, for code that inlines the
/// fast paths of `read_begin` and `read_retry` outside Rust:
///
/// * `read_begin`: `s` = `*interval` (acquire); if `s == *invalidating`
///   (acquire), an invalidation covering the interval is running: call
///   the real `read_begin` (which waits); otherwise `s` is the sequence.
/// * `read_retry(s)`, under the driver lock: `*interval != s` (relaxed:
///   the lock orders it after the callback's `set_seq`).
///
/// Only ever read the words, with atomic loads. Both stay at their
/// addresses while the address space lives (the interval's word is one of
/// its subscriptions' arena, which never moves); after the interval is
/// removed its word may be reused by a later interval, so reading it then
/// is the caller's bug, as using a removed notifier is.
#[cfg(not(mmun_loom))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqWords {
    /// The interval's sequence word (`mmu_interval_notifier.invalidate_seq`).
    pub interval: *const u64,
    /// The address space's running invalidation's sequence
    /// (`mmu_notifier_subscriptions.invalidate_seq`), as the lock-free
    /// `read_begin` reads it.
    pub invalidating: *const u64,
}

impl<O: IntervalNotifierOps> IntervalNotifier<O> {
    /// `mmu_interval_notifier_insert`: subscribes `[start, start + length)`.
    /// Takes the mmap write lock the first time the address space gets an
    /// interval notifier.
    ///
    /// # Errors
    ///
    /// [`Error::Overflow`] for a zero length or an interval past `u64::MAX`;
    /// [`Error::NoUsers`] after exit; [`Error::Disabled`] in the disabled
    /// build.
    pub fn insert(mm: &Arc<Mm>, start: u64, length: u64, ops: O) -> Result<IntervalNotifier<O>> {
        let last = checked_last(start, length)?;
        let enabled = mm.subscriptions().is_some_and(|s| s.has_itree());
        if !enabled {
            mm.assert_not_registering_inside("mmu_interval_notifier_insert()");
            let guard = mm.mmap_write();
            register_locked(&guard, None)?;
        }
        Self::insert_enabled(mm, start, last, ops)
    }

    /// `mmu_interval_notifier_insert_locked`: the same, with the mmap write
    /// lock already held; the interval goes on that lock's address space.
    pub fn insert_locked(
        guard: &MmapWriteGuard<'_>,
        start: u64,
        length: u64,
        ops: O,
    ) -> Result<IntervalNotifier<O>> {
        let last = checked_last(start, length)?;
        register_locked(guard, None)?;
        Self::insert_enabled(guard.mm_arc(), start, last, ops)
    }

    fn insert_enabled(mm: &Arc<Mm>, start: u64, last: u64, ops: O) -> Result<IntervalNotifier<O>> {
        if !mm.is_live() {
            return Err(Error::NoUsers);
        }
        let subscriptions = mm.subscriptions().ok_or(Error::Disabled)?;
        let scope = mm.registration_scope();
        let ops = OpsBox::new(ops);
        let seq = subscriptions.itree().insert(mm, start, last, ops.erased());
        drop(scope);
        if let Some(observer) = mm.observer() {
            observer.interval_inserted(start, last);
        }
        Ok(IntervalNotifier {
            seq,
            start,
            last,
            ops: Some(ops),
        })
    }

    /// `mmu_interval_read_begin`: a sequence number for
    /// [`IntervalSub::read_retry`]. If an invalidation that covers this
    /// interval is running, waits until every running invalidation of the
    /// address space has ended. The result may already be stale; callers
    /// loop (see the module docs).
    ///
    /// # Panics
    ///
    /// If it would have to wait while this thread has an invalidation of
    /// the same address space open (from a callback, or between start and
    /// end), in every build; in debug builds also inside a non-blockable
    /// callback (`might_sleep`).
    #[must_use = "pass the seq to read_retry"]
    pub fn read_begin(&self) -> Seq {
        let subscriptions = self.mm().subscriptions().expect("inserted, so present");
        subscriptions.itree().read_begin(&self.seq)
    }

    /// The two words [`IntervalNotifier::read_begin`]'s lock-free path and
    /// [`IntervalSub::read_retry`] read, for a caller that inlines them in
    /// another language (the C API's `mmun_interval_seq`).
    #[cfg(not(mmun_loom))]
    #[must_use]
    pub fn seq_words(&self) -> SeqWords {
        let subscriptions = self.mm().subscriptions().expect("inserted, so present");
        SeqWords {
            interval: self.seq.word_ptr(),
            invalidating: subscriptions.published_seq.as_ptr(),
        }
    }

    /// [`IntervalNotifier::read_begin`] that returns `None` where that one
    /// panics: when it would have to wait for an invalidation this thread
    /// has open (it was called from a callback, or between a start and its
    /// end). For callers that report the rule as an error code (the C API).
    #[must_use = "pass the seq to read_retry"]
    pub fn try_read_begin(&self) -> Option<Seq> {
        let subscriptions = self.mm().subscriptions().expect("inserted, so present");
        subscriptions.itree().try_read_begin(&self.seq)
    }

    /// `mmu_interval_notifier_remove`: unsubscribes, waiting until no
    /// `invalidate` for this interval can be running. Same on drop.
    ///
    /// # Panics
    ///
    /// When called from this address space's invalidate callback, or
    /// between a start and its end on this thread (it would wait for its
    /// own invalidation), in every build.
    pub fn remove(mut self) {
        self.remove_now();
    }

    fn remove_now(&mut self) {
        if self.ops.is_none() {
            return;
        }
        let mm = self.seq.mm();
        let subscriptions = mm.subscriptions().expect("inserted, so present");
        // If this panics the state stays allocated (an `OpsBox` leaks when
        // dropped): the tree may still point at it.
        let Some(ops) = self.ops.take() else { return };
        let scope = mm.registration_scope();
        let unsubscribed = subscriptions
            .itree()
            .remove(self.start, &self.seq, ops.erased());
        ops.free(unsubscribed);
        drop(scope);
        if let Some(observer) = mm.observer() {
            observer.interval_removed(self.start, self.last);
        }
    }

    /// First address of the interval.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Last address of the interval (inclusive).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The address space.
    pub fn mm(&self) -> &Arc<Mm> {
        self.seq.mm()
    }

    /// The driver state.
    pub fn ops(&self) -> &O {
        self.ops.as_ref().expect("present until remove").get()
    }
}

/// `[start, start + length - 1]`, or `EOVERFLOW`.
fn checked_last(start: u64, length: u64) -> Result<u64> {
    length
        .checked_sub(1)
        .and_then(|l| start.checked_add(l))
        .ok_or(Error::Overflow)
}

impl<O: IntervalNotifierOps> Deref for IntervalNotifier<O> {
    type Target = IntervalSub;
    #[inline]
    fn deref(&self) -> &IntervalSub {
        &self.seq
    }
}

impl<O: IntervalNotifierOps> Drop for IntervalNotifier<O> {
    fn drop(&mut self) {
        self.remove_now();
    }
}

impl<O: IntervalNotifierOps> fmt::Debug for IntervalNotifier<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntervalNotifier")
            .field("start", &format_args!("{:#x}", self.start))
            .field("last", &format_args!("{:#x}", self.last))
            .field("seq", &*self.seq)
            .finish_non_exhaustive()
    }
}
