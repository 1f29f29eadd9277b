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
//! subscriptions are collected under the lock instead, in batches of a fixed
//! size kept on the stack (so a start never allocates): the tree cannot
//! change between the first batch and the end of the epoch, so resuming
//! the paused walk visits exactly the set the kernel's walk would, in the
//! same order (ascending start, equal starts in the order they were linked
//! into the tree, as the kernel's in-order walk meets them).

use smallvec::SmallVec;

use super::node::{NodeHeader, NodePtr};
use super::{Locked, Subscriptions};

use crate::context::{self, NonBlock};
use crate::error::WouldBlock;
use crate::interval_btree::{Cursor, Key, Overlapping};
use crate::lockdep;
use crate::seq_word::IntervalSub;
use crate::sync::atomic::Ordering;
use crate::warn::Warning;
use crate::{Event, Mm, Range, Seq};

/// How many hits one visit under the lock collects.
const BATCH: usize = 16;

/// One batch of the nodes a start collected. Never holds more than
/// `BATCH`, so it never spills to the heap: a start allocates nothing
/// however many intervals it hits.
type Hits = SmallVec<[NodePtr; BATCH]>;

/// Closes the epoch opened by a start unless disarmed: the failure and the
/// unwinding paths of a start both end up here. While it lives, the epoch
/// is open, which is what lets callbacks reach the driver state collected
/// in it (`NodePtr::get`).
pub(crate) struct EpochGuard<'a> {
    subscriptions: &'a Subscriptions,
    armed: bool,
}

impl Drop for EpochGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.subscriptions.itree().inv_end();
        }
    }
}

/// The interval half of an address space's subscriptions (`mn_itree_*`):
/// a view of them, from `Subscriptions::itree`.
#[derive(Clone, Copy)]
pub(crate) struct Itree<'s>(pub(super) &'s Subscriptions);

impl std::ops::Deref for Itree<'_> {
    type Target = Subscriptions;

    /// The state both halves share (the lock, the seq words, the list).
    fn deref(&self) -> &Subscriptions {
        self.0
    }
}

impl<'s> Itree<'s> {
    /// `mn_itree_inv_start_range`: counts the range and, if it hits any
    /// interval, enters full exclusion (`seq |= 1`). Fills `hits` with the
    /// first batch and returns where to resume if there may be more (see
    /// [`Itree::next_batch`]).
    fn inv_start_range(self, range: &Range<'_>, hits: &mut Hits) -> (Seq, Option<Cursor>) {
        let mut locked = self.lock();
        locked.active += 1;
        let more = match range.last() {
            Some(last) => collect(locked.tree.overlapping(range.start(), last), hits),
            None => None,
        };
        if !hits.is_empty() {
            let odd = locked.invalidate_seq | 1;
            self.set_invalidate_seq(&mut locked, odd);
        }
        (Seq(locked.invalidate_seq), more)
    }

    /// The next batch of hits, from where the last one stopped. Only called
    /// once a batch was found, so the seq is odd and this range still
    /// counted: the tree is frozen (inserts and removes are deferred), and
    /// the paused walk goes on as one walk would have (`resume` checks
    /// that the tree did not change).
    fn next_batch(self, cursor: Cursor, hits: &mut Hits) -> Option<Cursor> {
        hits.clear();
        let locked = self.lock();
        collect(locked.tree.resume(cursor), hits)
    }

    /// `mn_itree_invalidate`: calls every overlapping interval notifier. A
    /// refusal of a non-blockable range closes the epoch again and aborts.
    pub(crate) fn invalidate(self, range: &Range<'_>) -> Result<(), WouldBlock> {
        let mut hits = Hits::new();
        let (cur_seq, mut more) = self.inv_start_range(range, &mut hits);
        let mut epoch = EpochGuard {
            subscriptions: self.0,
            armed: true,
        };
        loop {
            for node in &hits {
                let _non_block = NonBlock::enter(!range.is_blockable());
                if node.invalidate(&epoch, range, cur_seq) {
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
            let Some(cursor) = more else { break };
            more = self.next_batch(cursor, &mut hits);
        }
        epoch.armed = false;
        Ok(())
    }

    /// `mn_itree_inv_end`: the last running range closes the epoch, applies
    /// the deferred updates and wakes the waiters.
    pub(crate) fn inv_end(self) {
        let mut locked = self.lock();
        locked.active -= 1;
        if locked.active != 0 || locked.invalidate_seq & 1 == 0 {
            return;
        }
        let even = locked.invalidate_seq.wrapping_add(1);
        self.set_invalidate_seq(&mut locked, even);
        apply_deferred(&mut locked);
        let waiters = locked.waiters;
        drop(locked);
        // Waiters count themselves and re-check the seq under the lock, so
        // seeing none here (under the lock, after the seq moved) means none
        // can miss the change, and waking after unlocking loses nothing.
        // Skipping the wake matters: std's `notify_all` is a system call.
        if waiters > 0 {
            self.wq.notify_all();
        }
    }

    /// `mn_itree_release`: `Release` over the whole address space, blockable.
    pub(crate) fn release(self, mm: &Mm) {
        let mut range = Range::of(mm, Event::Release, 0, u64::MAX);
        range.set_blockable(true);
        let mut hits = Hits::new();
        let (cur_seq, mut more) = self.inv_start_range(&range, &mut hits);
        let epoch = EpochGuard {
            subscriptions: self.0,
            armed: true,
        };
        loop {
            for node in &hits {
                if !node.invalidate(&epoch, &range, cur_seq) {
                    self.warn(Warning::IntervalRefusedRelease);
                }
            }
            let Some(cursor) = more else { break };
            more = self.next_batch(cursor, &mut hits);
        }
    }

    /// `__mmu_interval_notifier_insert`, after the tree was enabled: links
    /// `node` (whose `start` and `mm` are set, `mm` being the address space
    /// of these subscriptions) as `[start, last]`, or queues it for the end
    /// of the running epoch.
    pub(crate) fn insert(self, node: &NodeHeader, last: u64) {
        let key = node.key();
        let sub = &node.sub;
        let mut locked = self.lock();
        let seq = locked.invalidate_seq;
        if locked.active > 0 && seq & 1 == 1 {
            // Fully excluded: the tree is frozen, join it when the epoch ends.
            sub.set_seq_locked(seq);
            locked.pending_inserts.push((key, last));
            let pending = locked.pending_inserts.len();
            // Applying the queue at the epoch's end must not allocate: that
            // end runs on the dispatch path.
            locked.tree.reserve(pending);
        } else if locked.active > 0 {
            // Partially excluded: a running range might cover the new
            // interval, so treat it as covered and make readers wait.
            let odd = locked.invalidate_seq | 1;
            self.set_invalidate_seq(&mut locked, odd);
            sub.set_seq_locked(locked.invalidate_seq);
            locked.tree.insert(key, last, ());
        } else {
            if seq & 1 == 1 {
                drop(locked);
                self.warn(Warning::OddSeqWhileIdle);
                locked = self.lock();
            }
            // Odd and different from the (even) idle seq: read_begin returns
            // at once.
            sub.set_seq_locked(locked.invalidate_seq.wrapping_sub(1));
            locked.tree.insert(key, last, ());
        }
    }

    /// `mmu_interval_notifier_remove`: takes `node` out of the tree (or out
    /// of the queue of deferred inserts), waiting for the epoch to close if
    /// a callback may still be running for it. Returns the interval's
    /// `last`.
    ///
    /// Refuses, changing nothing, when it would have to wait for an
    /// invalidation this thread has open: the caller then still owns a
    /// linked node, which it must not free.
    pub(crate) fn remove(self, node: &NodeHeader) -> Result<u64, WouldWaitOnSelf> {
        context::might_sleep();
        let key = node.key();
        let (last, wait_for) = self.unlink_or_defer(key)?;
        lockdep::acquire_release(&lockdep::INVALIDATE_RANGE_START_MAP);
        if let Some(seq) = wait_for {
            // Read under the lock (Linux fix 319561669a59): the closing
            // `inv_end` finishes with the tree and the deferred queues
            // before it unlocks, so seeing the new seq means it is done with
            // `key`.
            self.wait_for_seq_change(seq);
        }
        // Either the node never reached the tree, or it left it while no
        // epoch was open, or the epoch that could have called it is closed.
        Ok(last)
    }

    /// The interval's `last` and, if the removal had to be deferred, the
    /// seq of the epoch to wait out.
    fn unlink_or_defer(self, key: Key) -> Result<(u64, Option<u64>), WouldWaitOnSelf> {
        // Asked before anything changes: a refusal leaves the node linked.
        let waits_on_self = context::would_wait_on_self(self.id());
        let mut locked = self.lock();
        if locked.invalidate_seq & 1 == 0 {
            let removed = locked.tree.remove(key);
            drop(locked);
            let Some((last, ())) = removed else {
                self.warn(Warning::RemoveNotInTree);
                return Ok((key.start, None));
            };
            return Ok((last, None));
        }
        let pending = locked.pending_inserts.iter().position(|(k, _)| *k == key);
        if let Some(at) = pending {
            // Never reached the tree: nothing can be calling it. `remove`,
            // not `swap_remove`: the queue's order is the order the others
            // will be linked in (`apply_deferred`).
            let (_, last) = locked.pending_inserts.remove(at);
            return Ok((last, None));
        }
        if waits_on_self {
            return Err(WouldWaitOnSelf);
        }
        let (last, ()) = locked
            .tree
            .get(key)
            .expect("an inserted node that is not pending is in the tree");
        locked.pending_removes.push(key);
        Ok((last, Some(locked.invalidate_seq)))
    }

    /// The `last` of the inserted `node`, from the tree or the queue of
    /// deferred inserts.
    pub(crate) fn last_of(self, node: &NodeHeader) -> u64 {
        let key = node.key();
        let locked = self.lock();
        if let Some((last, ())) = locked.tree.get(key) {
            return last;
        }
        let pending = locked.pending_inserts.iter().find(|(k, _)| *k == key);
        pending
            .expect("an inserted node is in the tree or queued")
            .1
    }

    /// `mmu_interval_read_begin`: the seq to check with `read_retry`,
    /// after waiting out an epoch that already covers `sub`.
    ///
    /// Lock-free unless it has to wait (Linux takes the spinlock to read
    /// the two seqs): the subscription's seq is loaded first, with Acquire.
    /// If it holds the `cur_seq` of a running epoch, it was stored by that
    /// epoch's callback (`set_seq`, Release), which ran after the epoch's
    /// start published that seq, so the load of the published seq that
    /// follows sees it, or the later value of the epoch's end: never an
    /// older one that would let a covered reader through without waiting.
    /// (An insert stores the subscription's first seq under the lock after
    /// the seq it compares against, with the same effect.)
    pub(crate) fn read_begin(self, sub: &IntervalSub) -> Seq {
        let waits_on_self = |id| {
            context::assert_not_waiting_on_self(id, "mmu_interval_read_begin()");
            false
        };
        self.read_begin_unless(sub, waits_on_self)
            .expect("the check panics instead of refusing")
    }

    /// [`Self::itree_read_begin`] that returns `None` instead of waiting
    /// for an invalidation this thread has open.
    pub(crate) fn try_read_begin(self, sub: &IntervalSub) -> Option<Seq> {
        self.read_begin_unless(sub, context::would_wait_on_self)
    }

    /// The body of both: `waits_on_self(id)` is asked only when the call
    /// has to wait, and a `true` answer returns `None` instead.
    #[inline(always)]
    fn read_begin_unless(
        self,
        sub: &IntervalSub,
        waits_on_self: impl FnOnce(usize) -> bool,
    ) -> Option<Seq> {
        let seq = sub.load_seq();
        // Acquire: pairs with the Release store in `set_invalidate_seq`
        // (the seq read above already orders this load after it whenever
        // it matters; Acquire costs nothing on x86 and keeps the argument
        // local).
        let is_invalidating = seq == self.published_seq.load(Ordering::Acquire);
        lockdep::acquire_release(&lockdep::INVALIDATE_RANGE_START_MAP);
        context::might_sleep();
        if is_invalidating {
            if waits_on_self(self.id()) {
                return None;
            }
            if !self.spin_for_seq_change(seq) {
                self.wait_for_seq_change(seq);
            }
        }
        Some(Seq(seq))
    }
}

impl<'s> Itree<'s> {
    /// Sets `invalidate_seq` (under the lock) and publishes it for the
    /// lock-free `read_begin`.
    fn set_invalidate_seq(self, locked: &mut Locked, seq: u64) {
        locked.invalidate_seq = seq;
        // Release: pairs with the Acquire load in `itree_read_begin`.
        self.published_seq.store(seq, Ordering::Release);
    }

    /// Sleeps until the interval seq is no longer `seq` (the kernel's
    /// `wait_event(subscriptions->wq, READ_ONCE(invalidate_seq) != seq)`).
    fn wait_for_seq_change(self, seq: u64) {
        let mut locked = self.lock();
        while locked.invalidate_seq == seq {
            locked.waiters += 1;
            locked = self.wq.wait(locked);
            locked.waiters -= 1;
        }
    }
}

/// How many times a waiter checks the published seq before it sleeps.
/// An epoch usually ends within a few microseconds (its callbacks zap a
/// few entries), and the thread ending it runs on another CPU: a short
/// spin spares both the sleep and the wake, each a system call and a
/// context switch. About 1-5 µs of `pause`s, depending on the CPU.
#[cfg(not(mmun_loom))]
const SEQ_SPINS: u32 = 128;

impl Itree<'_> {
    /// Watches the published seq for a while; whether it moved from `seq`.
    /// For `read_begin` only: its condition in the kernel reads
    /// `invalidate_seq` without the lock too, and the Acquire load pairs
    /// with the Release store of [`Itree::set_invalidate_seq`], so the
    /// caller sees every callback of the epoch done. A removal must not
    /// use it: the seq is published before `inv_end` applies the deferred
    /// removals, so it reads the seq under the lock (see [`Itree::remove`]).
    #[cfg(not(mmun_loom))]
    fn spin_for_seq_change(self, seq: u64) -> bool {
        for _ in 0..SEQ_SPINS {
            if self.published_seq.load(Ordering::Acquire) != seq {
                return true;
            }
            std::hint::spin_loop();
        }
        false
    }

    /// Under loom, a spin would multiply the schedules for nothing: the
    /// model checks the sleeping wait.
    #[cfg(mmun_loom)]
    fn spin_for_seq_change(self, _seq: u64) -> bool {
        false
    }
}

/// A removal that would wait for an invalidation the calling thread has
/// open (from its callback, or between its start and end): it can never
/// end, so it is refused.
#[derive(Debug)]
pub(crate) struct WouldWaitOnSelf;

/// Fills `hits` with up to `BATCH` more entries of `walk`; returns where
/// to resume if the batch is full.
fn collect(mut walk: Overlapping<'_, ()>, hits: &mut Hits) -> Option<Cursor> {
    for (key, _, ()) in walk.by_ref() {
        hits.push(NodePtr::from_key(key));
        if hits.len() == BATCH {
            return Some(walk.into_cursor());
        }
    }
    None
}

/// Applies the updates deferred while the tree was frozen. Allocates
/// nothing: the inserts' room was reserved when they were queued, and
/// removals only free.
///
/// The order of the inserts is the kernel's: `mn_itree_inv_end` walks its
/// deferred list from the head, and each deferral was added at the head,
/// so the last one queued is linked first and, among equal starts, called
/// first. Popping the queue from its end does the same. Removals name
/// other nodes (a node whose removal is deferred cannot be queued for
/// insertion before the epoch ends), so when they happen does not matter.
fn apply_deferred(locked: &mut Locked) {
    while let Some(key) = locked.pending_removes.pop() {
        locked.tree.remove(key);
    }
    while let Some((key, last)) = locked.pending_inserts.pop() {
        locked.tree.insert(key, last, ());
    }
}
