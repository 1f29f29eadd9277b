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
use crate::interval_tree::NodeId;
use crate::mm::MmapWriteGuard;
use crate::notifier::register_locked;
use crate::ops::IntervalNotifierOps;
use crate::sync::Arc;
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::{Mm, Seq};

/// `struct mmu_interval_notifier`: one subscribed interval and the driver
/// state `O` that handles its invalidations.
///
/// # Invariants
///
/// `invalidate_seq` is odd from insertion on: it is set to an odd value by
/// insert, and `set_seq` is only ever given the odd `cur_seq` of a running
/// invalidation.
pub struct IntervalSub<O: ?Sized + IntervalNotifierOps> {
    /// Written by `set_seq` under the driver lock, read by `read_retry`
    /// under the same lock and by `read_begin` under the subscriptions lock.
    invalidate_seq: AtomicU64,
    start: u64,
    last: u64,
    /// `mmgrab`: the address space outlives the subscription.
    mm: Arc<Mm>,
    /// Where the subscription is with respect to the tree. Accessed only
    /// under the subscriptions lock, so relaxed ordering suffices.
    tree_state: AtomicU64,
    ops: O,
}

/// An interval subscription of any driver type, as the tree holds it.
pub type DynIntervalSub = IntervalSub<dyn IntervalNotifierOps>;

/// Tree membership, encoded in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TreeState {
    /// Not in the tree and not queued (before insert, after remove).
    Detached,
    /// Queued to be inserted when the running epoch closes.
    PendingInsert,
    /// In the tree at this node.
    InTree(NodeId),
    /// In the tree, queued to be removed when the running epoch closes.
    PendingRemove(NodeId),
    /// Removed before its deferred insert happened.
    Cancelled,
}

impl TreeState {
    const TAG_SHIFT: u32 = 32;

    fn encode(self) -> u64 {
        let (tag, node) = match self {
            TreeState::Detached => (0, 0),
            TreeState::PendingInsert => (1, 0),
            TreeState::InTree(n) => (2, n.index()),
            TreeState::PendingRemove(n) => (3, n.index()),
            TreeState::Cancelled => (4, 0),
        };
        (tag << Self::TAG_SHIFT) | u64::from(node)
    }

    fn decode(word: u64) -> TreeState {
        let node = NodeId::from_index(word as u32);
        match word >> Self::TAG_SHIFT {
            0 => TreeState::Detached,
            1 => TreeState::PendingInsert,
            2 => TreeState::InTree(node),
            3 => TreeState::PendingRemove(node),
            _ => TreeState::Cancelled,
        }
    }
}

impl<O: ?Sized + IntervalNotifierOps> IntervalSub<O> {
    /// `mmu_interval_read_begin`: a sequence number for
    /// [`IntervalSub::read_retry`]. If an invalidation that covers this
    /// interval is running, waits until every running invalidation of the
    /// address space has ended. The result may already be stale; callers
    /// loop (see the module docs).
    ///
    /// # Panics
    ///
    /// In debug builds, if it would have to wait while this thread has an
    /// invalidation of the same address space open (from a callback, or
    /// between start and end), or inside a non-blockable callback.
    #[must_use = "pass the seq to read_retry"]
    pub fn read_begin(&self) -> Seq {
        let subscriptions = self.mm.subscriptions().expect("inserted, so present");
        subscriptions.itree_read_begin(&self.invalidate_seq)
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
        &self.mm
    }

    /// The driver state.
    pub fn ops(&self) -> &O {
        &self.ops
    }

    pub(crate) fn set_seq_locked(&self, seq: u64) {
        self.invalidate_seq.store(seq, Ordering::Release);
    }

    pub(crate) fn tree_state(&self) -> TreeState {
        TreeState::decode(self.tree_state.load(Ordering::Relaxed))
    }

    pub(crate) fn set_tree_state(&self, state: TreeState) {
        self.tree_state.store(state.encode(), Ordering::Relaxed);
    }
}

impl<O: ?Sized + IntervalNotifierOps> fmt::Debug for IntervalSub<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntervalSub")
            .field("start", &format_args!("{:#x}", self.start))
            .field("last", &format_args!("{:#x}", self.last))
            .field(
                "invalidate_seq",
                &self.invalidate_seq.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

/// An inserted interval notifier; removes itself when dropped.
///
/// Dereferences to its [`IntervalSub`], which carries the retry protocol.
pub struct IntervalNotifier<O: IntervalNotifierOps> {
    sub: Option<Arc<IntervalSub<O>>>,
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
            let guard = mm.mmap_write();
            register_locked(&guard, mm, None)?;
        }
        Self::insert_enabled(mm, start, last, ops)
    }

    /// `mmu_interval_notifier_insert_locked`: the same, with the mmap write
    /// lock of `mm` already held.
    pub fn insert_locked(
        guard: &MmapWriteGuard<'_>,
        mm: &Arc<Mm>,
        start: u64,
        length: u64,
        ops: O,
    ) -> Result<IntervalNotifier<O>> {
        let last = checked_last(start, length)?;
        register_locked(guard, mm, None)?;
        Self::insert_enabled(mm, start, last, ops)
    }

    fn insert_enabled(mm: &Arc<Mm>, start: u64, last: u64, ops: O) -> Result<IntervalNotifier<O>> {
        if !mm.is_live() {
            return Err(Error::NoUsers);
        }
        let subscriptions = mm.subscriptions().ok_or(Error::Disabled)?;
        let sub = Arc::new(IntervalSub {
            invalidate_seq: AtomicU64::new(0),
            start,
            last,
            mm: Arc::clone(mm),
            tree_state: AtomicU64::new(TreeState::Detached.encode()),
            ops,
        });
        let erased: Arc<DynIntervalSub> = sub.clone();
        subscriptions.itree_insert(erased);
        Ok(IntervalNotifier { sub: Some(sub) })
    }

    /// `mmu_interval_notifier_remove`: unsubscribes, waiting until no
    /// `invalidate` for this interval can be running. Same on drop.
    ///
    /// # Panics
    ///
    /// In debug builds, when called from this address space's invalidate
    /// callback (it would wait for its own invalidation).
    pub fn remove(mut self) {
        self.remove_now();
    }

    fn remove_now(&mut self) {
        let Some(sub) = self.sub.take() else { return };
        let mm = Arc::clone(&sub.mm);
        let subscriptions = mm.subscriptions().expect("inserted, so present");
        let erased: Arc<DynIntervalSub> = sub;
        subscriptions.itree_remove(&erased);
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
    type Target = IntervalSub<O>;
    fn deref(&self) -> &IntervalSub<O> {
        self.sub.as_ref().expect("present until remove")
    }
}

impl<O: IntervalNotifierOps> Drop for IntervalNotifier<O> {
    fn drop(&mut self) {
        self.remove_now();
    }
}

impl<O: IntervalNotifierOps> fmt::Debug for IntervalNotifier<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}
