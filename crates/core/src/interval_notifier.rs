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
use std::pin::Pin;

use crate::error::Result;
use crate::interval_node::IntervalNode;
#[cfg(not(mmun_loom))]
pub use crate::interval_node::SeqWords;
use crate::mm::MmapWriteGuard;
use crate::ops::IntervalNotifierOps;
pub use crate::seq_word::IntervalSub;
use crate::sync::Arc;
use crate::{Mm, Seq};

/// `struct mmu_interval_notifier`: an inserted interval notifier with its
/// driver state `O`, movable. Removes itself when dropped.
///
/// A box around one pinned [`IntervalNode`] (one pointer): the node is what
/// the subsystem's tree points at. A driver that holds many intervals can
/// embed the nodes in its own pinned storage instead and save the box.
///
/// Dereferences to its [`IntervalSub`], which carries `read_retry`,
/// `check_retry` and `set_seq`; `read_begin` is a method of the handle
/// because it may wait on the address space.
pub struct IntervalNotifier<O: IntervalNotifierOps> {
    /// Inserted for as long as the handle lives; `None` only once removed.
    node: Option<Pin<Box<IntervalNode<O>>>>,
}

impl<O: IntervalNotifierOps> IntervalNotifier<O> {
    /// `mmu_interval_notifier_insert`: subscribes `[start, start + length)`.
    /// Takes the mmap write lock the first time the address space gets an
    /// interval notifier.
    ///
    /// # Errors
    ///
    /// [`Error::Overflow`](crate::Error::Overflow) for a zero length or an
    /// interval past `u64::MAX`; [`Error::NoUsers`](crate::Error::NoUsers)
    /// after exit; [`Error::Disabled`](crate::Error::Disabled) in the
    /// disabled build.
    pub fn insert(mm: &Arc<Mm>, start: u64, length: u64, ops: O) -> Result<IntervalNotifier<O>> {
        let mut node = Box::pin(IntervalNode::new(ops));
        node.as_mut().insert(mm, start, length)?;
        Ok(IntervalNotifier { node: Some(node) })
    }

    /// `mmu_interval_notifier_insert_locked`: the same, with the mmap write
    /// lock already held; the interval goes on that lock's address space.
    ///
    /// # Errors
    ///
    /// As [`IntervalNotifier::insert`].
    pub fn insert_locked(
        guard: &MmapWriteGuard<'_>,
        start: u64,
        length: u64,
        ops: O,
    ) -> Result<IntervalNotifier<O>> {
        let mut node = Box::pin(IntervalNode::new(ops));
        node.as_mut().insert_locked(guard, start, length)?;
        Ok(IntervalNotifier { node: Some(node) })
    }

    fn node(&self) -> &IntervalNode<O> {
        self.node.as_ref().expect("present until removed")
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
        self.node().read_begin()
    }

    /// The two words [`IntervalNotifier::read_begin`]'s lock-free path and
    /// [`IntervalSub::read_retry`] read, for a caller that inlines them in
    /// another language (the C API's `mmun_interval_seq`).
    #[cfg(not(mmun_loom))]
    #[must_use]
    pub fn seq_words(&self) -> SeqWords {
        self.node().seq_words()
    }

    /// [`IntervalNotifier::read_begin`] that returns `None` where that one
    /// panics: when it would have to wait for an invalidation this thread
    /// has open (it was called from a callback, or between a start and its
    /// end). For callers that report the rule as an error code (the C API).
    #[must_use = "pass the seq to read_retry"]
    pub fn try_read_begin(&self) -> Option<Seq> {
        self.node().try_read_begin()
    }

    /// `mmu_interval_notifier_remove`: unsubscribes, waiting until no
    /// `invalidate` for this interval can be running. Same on drop.
    ///
    /// # Panics
    ///
    /// When called from this address space's invalidate callback, or
    /// between a start and its end on this thread (it would wait for its
    /// own invalidation), in every build. The interval then stays
    /// subscribed for good and its node (with the driver state and a
    /// reference to the address space) is leaked: the tree may still call
    /// it, so it cannot be freed.
    pub fn remove(mut self) {
        self.remove_now();
    }

    fn remove_now(&mut self) {
        let Some(mut node) = self.node.take() else {
            return;
        };
        if let Err(refused) = node.as_mut().try_remove() {
            std::mem::forget(node);
            refused.panic_unless_panicking();
        }
    }

    /// First address of the interval.
    pub fn start(&self) -> u64 {
        self.node().start()
    }

    /// Last address of the interval (inclusive): looked up in the tree,
    /// under the subscriptions lock.
    pub fn last(&self) -> u64 {
        self.node().last()
    }

    /// The address space.
    pub fn mm(&self) -> &Arc<Mm> {
        self.node().mm().expect("inserted until removed")
    }

    /// The driver state.
    pub fn ops(&self) -> &O {
        self.node().ops()
    }
}

impl<O: IntervalNotifierOps> Deref for IntervalNotifier<O> {
    type Target = IntervalSub;
    #[inline]
    fn deref(&self) -> &IntervalSub {
        self.node()
    }
}

impl<O: IntervalNotifierOps> Drop for IntervalNotifier<O> {
    fn drop(&mut self) {
        self.remove_now();
    }
}

impl<O: IntervalNotifierOps> fmt::Debug for IntervalNotifier<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.node {
            Some(node) => f
                .debug_struct("IntervalNotifier")
                .field("start", &format_args!("{:#x}", node.start()))
                .field("seq", &***node)
                .finish_non_exhaustive(),
            None => f.write_str("IntervalNotifier(removed)"),
        }
    }
}
