//! Dispatch to interval notifiers, and their deferred insert and remove.
//!
//! Kernel counterpart: `mn_itree_*` and `__mmu_interval_notifier_insert`,
//! `mmu_interval_notifier_remove`, `mmu_interval_read_begin` in
//! `mm/mmu_notifier.c`. The protocol and its diagrams are in `DESIGN.md`.
//!
//! | state | `active` | `invalidate_seq` | tree |
//! |---|---|---|---|
//! | idle | 0 | even | may change |
//! | partially excluded | > 0 | even | may change |
//! | fully excluded | > 0 | odd | frozen: inserts and removes are deferred |
//!
//! The kernel walks the frozen tree without the lock. Here the overlapping
//! subscriptions are collected under the lock instead: the tree cannot change
//! between that moment and the end of the epoch, so the set is the one the
//! kernel's walk would visit, in the same (ascending start) order.

use smallvec::SmallVec;

use super::{Locked, Subscriptions};
use crate::context::{self, NonBlock};
use crate::error::WouldBlock;
use crate::interval_notifier::{DynIntervalSub, TreeState};
use crate::lockdep;
use crate::sync::Arc;
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::warn::Warning;
use crate::{Event, Mm, Range, Seq};

type Hits = SmallVec<[Arc<DynIntervalSub>; 4]>;

/// Closes the epoch opened by a start unless disarmed: the failure and the
/// unwinding paths of a start both end up here.
struct EpochGuard<'a> {
    subscriptions: &'a Subscriptions,
    armed: bool,
}

impl Drop for EpochGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.subscriptions.itree_inv_end();
        }
    }
}

impl Subscriptions {
    /// `mn_itree_inv_start_range`: counts the range and, if it hits any
    /// interval, enters full exclusion (`seq |= 1`).
    fn itree_inv_start_range(&self, range: &Range<'_>) -> (Seq, Hits) {
        let mut locked = self.lock();
        locked.active += 1;
        let hits: Hits = match range.last() {
            Some(last) => locked
                .tree
                .overlapping(range.start(), last)
                .map(|(_, sub)| Arc::clone(sub))
                .collect(),
            None => Hits::new(),
        };
        if !hits.is_empty() {
            locked.invalidate_seq |= 1;
        }
        (Seq(locked.invalidate_seq), hits)
    }

    /// `mn_itree_invalidate`: calls every overlapping interval notifier. A
    /// refusal of a non-blockable range closes the epoch again and aborts.
    pub(crate) fn itree_invalidate(&self, range: &Range<'_>) -> Result<(), WouldBlock> {
        let (cur_seq, hits) = self.itree_inv_start_range(range);
        let mut epoch = EpochGuard {
            subscriptions: self,
            armed: true,
        };
        for sub in &hits {
            let _non_block = NonBlock::enter(!range.is_blockable());
            if sub.ops().invalidate(sub, range, cur_seq) {
                continue;
            }
            if range.is_blockable() {
                self.warn(Warning::IntervalRefusedBlockable);
                continue;
            }
            // The guard closes the epoch; notifiers already called have
            // bumped their seq, which only forces their readers to retry.
            return Err(WouldBlock);
        }
        epoch.armed = false;
        Ok(())
    }

    /// `mn_itree_inv_end`: the last running range closes the epoch, applies
    /// the deferred updates and wakes the waiters.
    pub(crate) fn itree_inv_end(&self) {
        let mut locked = self.lock();
        locked.active -= 1;
        if locked.active != 0 || locked.invalidate_seq & 1 == 0 {
            return;
        }
        locked.invalidate_seq = locked.invalidate_seq.wrapping_add(1);
        let applied = apply_deferred(&mut locked);
        drop(locked);
        // Waiters re-check the seq under the lock, so waking after unlocking
        // loses nothing; the removed subscriptions are dropped outside it.
        self.wq.notify_all();
        drop(applied);
    }

    /// `mn_itree_release`: `Release` over the whole address space, blockable.
    pub(crate) fn itree_release(&self, mm: &Mm) {
        let mut range = Range::new(mm, Event::Release, 0, u64::MAX);
        range.set_blockable(true);
        let (cur_seq, hits) = self.itree_inv_start_range(&range);
        let _epoch = EpochGuard {
            subscriptions: self,
            armed: true,
        };
        for sub in &hits {
            if !sub.ops().invalidate(sub, &range, cur_seq) {
                self.warn(Warning::IntervalRefusedRelease);
            }
        }
    }

    /// `__mmu_interval_notifier_insert`, after the tree was enabled.
    pub(crate) fn itree_insert(&self, sub: Arc<DynIntervalSub>) {
        let mut locked = self.lock();
        let seq = locked.invalidate_seq;
        if locked.active > 0 && seq & 1 == 1 {
            // Fully excluded: the tree is frozen, join it when the epoch ends.
            sub.set_seq_locked(seq);
            sub.set_tree_state(TreeState::PendingInsert);
            locked.deferred.push(sub);
        } else if locked.active > 0 {
            // Partially excluded: a running range might cover the new
            // interval, so treat it as covered and make readers wait.
            locked.invalidate_seq |= 1;
            sub.set_seq_locked(locked.invalidate_seq);
            insert_now(&mut locked, sub);
        } else {
            if seq & 1 == 1 {
                drop(locked);
                self.warn(Warning::OddSeqWhileIdle);
                locked = self.lock();
            }
            // Odd and different from the (even) idle seq: read_begin returns
            // at once.
            sub.set_seq_locked(locked.invalidate_seq.wrapping_sub(1));
            insert_now(&mut locked, sub);
        }
    }

    /// `mmu_interval_notifier_remove`: takes `sub` out of the tree, waiting
    /// for the epoch to close if a callback may still be running for it.
    pub(crate) fn itree_remove(&self, sub: &Arc<DynIntervalSub>) {
        context::might_sleep();
        let wait_for = self.unlink_or_defer(sub);
        lockdep::acquire_release(&lockdep::INVALIDATE_RANGE_START_MAP);
        if let Some(seq) = wait_for {
            context::assert_not_waiting_on_self(self.id(), "mmu_interval_notifier_remove()");
            // Read under the lock (Linux fix 319561669a59): the closing
            // `inv_end` finishes with the tree and the deferred list before
            // it unlocks, so seeing the new seq means it is done with `sub`.
            let mut locked = self.lock();
            while locked.invalidate_seq == seq {
                locked = self.wq.wait(locked);
            }
        }
    }

    fn unlink_or_defer(&self, sub: &Arc<DynIntervalSub>) -> Option<u64> {
        let mut locked = self.lock();
        if locked.invalidate_seq & 1 == 1 {
            match sub.tree_state() {
                TreeState::PendingInsert => {
                    // Never reached the tree: nothing can be calling it.
                    sub.set_tree_state(TreeState::Cancelled);
                    None
                }
                TreeState::InTree(node) => {
                    sub.set_tree_state(TreeState::PendingRemove(node));
                    locked.deferred.push(Arc::clone(sub));
                    Some(locked.invalidate_seq)
                }
                TreeState::PendingRemove(_) | TreeState::Cancelled | TreeState::Detached => None,
            }
        } else {
            match sub.tree_state() {
                TreeState::InTree(node) => {
                    let removed = locked.tree.remove(node);
                    sub.set_tree_state(TreeState::Detached);
                    drop(locked);
                    drop(removed);
                }
                _ => {
                    drop(locked);
                    self.warn(Warning::RemoveNotInTree);
                }
            }
            None
        }
    }

    /// `mmu_interval_read_begin`: the seq to check with `read_retry`,
    /// after waiting out an epoch that already covers `sub`.
    pub(crate) fn itree_read_begin(&self, sub_seq: &AtomicU64) -> Seq {
        let locked = self.lock();
        // Pairs with the Release store in `set_seq`.
        let seq = sub_seq.load(Ordering::Acquire);
        let is_invalidating = seq == locked.invalidate_seq;
        drop(locked);
        lockdep::acquire_release(&lockdep::INVALIDATE_RANGE_START_MAP);
        context::might_sleep();
        if is_invalidating {
            context::assert_not_waiting_on_self(self.id(), "mmu_interval_read_begin()");
            let mut locked = self.lock();
            while locked.invalidate_seq == seq {
                locked = self.wq.wait(locked);
            }
        }
        Seq(seq)
    }
}

fn insert_now(locked: &mut Locked, sub: Arc<DynIntervalSub>) {
    let (start, last) = (sub.start(), sub.last());
    let keep = Arc::clone(&sub);
    let node = locked.tree.insert(start, last, sub);
    keep.set_tree_state(TreeState::InTree(node));
}

/// Applies the deferred list newest first, as the kernel's hlist walk does.
/// Returns the subscriptions taken out of the tree, to drop after unlocking.
fn apply_deferred(locked: &mut Locked) -> Vec<Arc<DynIntervalSub>> {
    let mut removed = Vec::new();
    while let Some(sub) = locked.deferred.pop() {
        match sub.tree_state() {
            TreeState::PendingInsert => insert_now(locked, sub),
            TreeState::PendingRemove(node) => {
                removed.push(locked.tree.remove(node));
                sub.set_tree_state(TreeState::Detached);
            }
            TreeState::Cancelled => sub.set_tree_state(TreeState::Detached),
            TreeState::InTree(_) | TreeState::Detached => {}
        }
    }
    removed
}
