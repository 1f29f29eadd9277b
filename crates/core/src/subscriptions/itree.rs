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
//! after the last key collected visits exactly the set the kernel's walk
//! would, in the same (ascending start) order.

use smallvec::SmallVec;

use super::ops_ptr::{OpsPtr, Unsubscribed};
use super::{Locked, Subscriptions};

use super::seq_arena::SeqHandle;
use crate::context::{self, NonBlock};
use crate::error::WouldBlock;
use crate::interval_btree::Key;
use crate::lockdep;
use crate::seq_word::IntervalSub;
use crate::sync::Arc;
use crate::sync::atomic::Ordering;
use crate::warn::Warning;
use crate::{Event, Mm, Range, Seq};

/// How many hits one visit under the lock collects.
const BATCH: usize = 16;

/// One batch of the subscriptions a start collected: each driver's state
/// and seq word. Never holds more than `BATCH`, so it never spills to the
/// heap: a start allocates nothing however many intervals it hits.
type Hits<'s> = SmallVec<[(OpsPtr, &'s IntervalSub); BATCH]>;

/// Closes the epoch opened by a start unless disarmed: the failure and the
/// unwinding paths of a start both end up here. While it lives, the epoch
/// is open, which is what lets callbacks reach the driver state collected
/// in it (`OpsPtr::get`).
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
    /// first batch and returns the key to resume after if there may be
    /// more (see [`Subscriptions::itree_next_batch`]).
    fn inv_start_range(self, range: &Range<'_>, hits: &mut Hits<'s>) -> (Seq, Option<Key>) {
        let mut locked = self.lock();
        locked.active += 1;
        let more = self.collect(&locked, range, None, hits);
        if !hits.is_empty() {
            let odd = locked.invalidate_seq | 1;
            self.set_invalidate_seq(&mut locked, odd);
        }
        (Seq(locked.invalidate_seq), more)
    }

    /// The next batch of hits after `after`. Only called once a batch was
    /// found, so the seq is odd and this range still counted: the tree is
    /// frozen (inserts and removes are deferred), and resuming finds exactly
    /// what one walk would have, in the same order.
    fn next_batch(self, range: &Range<'_>, after: Key, hits: &mut Hits<'s>) -> Option<Key> {
        hits.clear();
        let locked = self.lock();
        self.collect(&locked, range, Some(after), hits)
    }

    /// Fills `hits` with up to `BATCH` overlaps of `range` after `after`;
    /// returns the last key if the batch is full.
    fn collect(
        self,
        locked: &Locked,
        range: &Range<'_>,
        after: Option<Key>,
        hits: &mut Hits<'s>,
    ) -> Option<Key> {
        let last = range.last()?;
        for (key, _, ops) in locked.tree.overlapping_after(range.start(), last, after) {
            hits.push((*ops, self.0.seq_words.get(key.id)));
            if hits.len() == BATCH {
                return Some(key);
            }
        }
        None
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
            for (ops, sub) in &hits {
                let _non_block = NonBlock::enter(!range.is_blockable());
                if ops.get(&epoch).invalidate(sub, range, cur_seq) {
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
            let Some(after) = more else { break };
            more = self.next_batch(range, after, &mut hits);
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
            for (ops, sub) in &hits {
                if !ops.get(&epoch).invalidate(sub, &range, cur_seq) {
                    self.warn(Warning::IntervalRefusedRelease);
                }
            }
            let Some(after) = more else { break };
            more = self.next_batch(&range, after, &mut hits);
        }
    }

    /// `__mmu_interval_notifier_insert`, after the tree was enabled: returns
    /// the subscription's seq word (whose id, with the start, names its
    /// tree entry). `mm` is the address space of these subscriptions.
    pub(crate) fn insert(self, mm: &Arc<Mm>, start: u64, last: u64, ops: OpsPtr) -> SeqHandle {
        let mut locked = self.lock();
        let key = locked.ids.alloc(start);
        let sub = self.0.seq_words.ensure(key.id);
        let seq = locked.invalidate_seq;
        if locked.active > 0 && seq & 1 == 1 {
            // Fully excluded: the tree is frozen, join it when the epoch ends.
            sub.set_seq_locked(seq);
            locked.ids.set(key.id, TreeState::PendingInsert);
            defer(&mut locked, Deferred { key, last, ops });
        } else if locked.active > 0 {
            // Partially excluded: a running range might cover the new
            // interval, so treat it as covered and make readers wait.
            let odd = locked.invalidate_seq | 1;
            self.set_invalidate_seq(&mut locked, odd);
            sub.set_seq_locked(locked.invalidate_seq);
            link_now(&mut locked, key, last, ops);
        } else {
            if seq & 1 == 1 {
                drop(locked);
                self.warn(Warning::OddSeqWhileIdle);
                locked = self.lock();
            }
            // Odd and different from the (even) idle seq: read_begin returns
            // at once.
            sub.set_seq_locked(locked.invalidate_seq.wrapping_sub(1));
            link_now(&mut locked, key, last, ops);
        }
        drop(locked);
        SeqHandle::new(mm, sub)
    }

    /// `mmu_interval_notifier_remove`: takes the subscription that starts
    /// at `start` and has the seq word `word` out of the tree, waiting for
    /// the epoch to close if a callback may still be running for it.
    pub(crate) fn remove(self, start: u64, word: &IntervalSub, ops: OpsPtr) -> Unsubscribed {
        context::might_sleep();
        let id = self
            .seq_words
            .id_of(word)
            .expect("a handle's seq word is in its subscriptions' arena");
        let wait_for = self.unlink_or_defer(start, id, ops);
        lockdep::acquire_release(&lockdep::INVALIDATE_RANGE_START_MAP);
        if let Some(seq) = wait_for {
            context::assert_not_waiting_on_self(self.id(), "mmu_interval_notifier_remove()");
            // Read under the lock (Linux fix 319561669a59): the closing
            // `inv_end` finishes with the tree and the deferred list before
            // it unlocks, so seeing the new seq means it is done with `key`.
            self.wait_for_seq_change(seq);
        }
        // Either the entry never reached the tree, or it left it while no
        // epoch was open, or the epoch that could have called it is closed.
        Unsubscribed::after_waiting_out_callbacks()
    }

    fn unlink_or_defer(self, start: u64, id: u32, ops: OpsPtr) -> Option<u64> {
        let mut locked = self.lock();
        let state = locked.ids.get(id);
        if locked.invalidate_seq & 1 == 1 {
            match state {
                Some(TreeState::PendingInsert) => {
                    // Never reached the tree: nothing can be calling it. The
                    // epoch's end frees the id, keeping its seq word unused
                    // until then.
                    locked.ids.set(id, TreeState::Cancelled);
                    None
                }
                Some(TreeState::InTree) => {
                    let key = tree_key(&locked, start, id);
                    locked.ids.set(id, TreeState::PendingRemove);
                    defer(&mut locked, Deferred { key, last: 0, ops });
                    Some(locked.invalidate_seq)
                }
                Some(TreeState::PendingRemove | TreeState::Cancelled) | None => None,
            }
        } else {
            if state == Some(TreeState::InTree) {
                let key = tree_key(&locked, start, id);
                locked.tree.remove(key);
                locked.ids.free(id);
            } else {
                drop(locked);
                self.warn(Warning::RemoveNotInTree);
            }
            None
        }
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
            self.wait_for_seq_change(seq);
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

/// An insert or remove waiting for the epoch to close.
pub(crate) struct Deferred {
    key: Key,
    /// The interval's last address (inserts only).
    last: u64,
    ops: OpsPtr,
}

/// Subscription ids: each names a seq word and records its `TreeState`.
/// Ids are reused, so the seq words stay dense; an id is freed only when
/// nothing can refer to it any more.
#[derive(Default)]
pub(crate) struct Ids {
    /// `TreeState as u8` per id, 0 when free.
    states: Vec<u8>,
    free: Vec<u32>,
    /// Insertion counter: equal starts keep insertion order, as the
    /// kernel's tree does (it wraps after 2^32 inserts, which can only
    /// reorder equal starts inserted that far apart).
    next_order: u32,
}

impl Ids {
    fn alloc(&mut self, start: u64) -> Key {
        let id = self.free.pop().unwrap_or_else(|| {
            self.states.push(0);
            u32::try_from(self.states.len() - 1).expect("at most 2^32 interval notifiers per mm")
        });
        let order = self.next_order;
        self.next_order = order.wrapping_add(1);
        Key { start, order, id }
    }

    fn get(&self, id: u32) -> Option<TreeState> {
        TreeState::from_tag(self.states[id as usize])
    }

    fn set(&mut self, id: u32, state: TreeState) {
        self.states[id as usize] = state as u8;
    }

    /// Room for `n` more frees without allocating.
    fn reserve_frees(&mut self, n: usize) {
        self.free.reserve(n);
    }

    fn free(&mut self, id: u32) {
        self.states[id as usize] = 0;
        self.free.push(id);
    }
}

/// Queues `deferred` for the end of the epoch, and makes sure applying the
/// whole queue there allocates nothing: that end runs on the dispatch path.
fn defer(locked: &mut Locked, deferred: Deferred) {
    locked.deferred.push(deferred);
    let pending = locked.deferred.len();
    locked.tree.reserve(pending);
    locked.ids.reserve_frees(pending);
}

/// The key of the linked entry `id`, which starts at `start`: the handle
/// keeps neither the insertion order nor the id (its seq word's address
/// gives the id), so look among the entries that start there, usually one.
fn tree_key(locked: &Locked, start: u64, id: u32) -> Key {
    let before = start.checked_sub(1).map(|s| Key {
        start: s,
        order: u32::MAX,
        id: u32::MAX,
    });
    locked
        .tree
        .overlapping_after(start, start, before)
        .map(|(key, _, _)| key)
        .find(|key| key.id == id)
        .expect("an entry in the tree is found at its start")
}

fn link_now(locked: &mut Locked, key: Key, last: u64, ops: OpsPtr) {
    locked.tree.insert(key, last, ops);
    locked.ids.set(key.id, TreeState::InTree);
}

/// Applies the deferred list newest first, as the kernel's hlist walk does.
fn apply_deferred(locked: &mut Locked) {
    while let Some(Deferred { key, last, ops }) = locked.deferred.pop() {
        match locked.ids.get(key.id) {
            Some(TreeState::PendingInsert) => link_now(locked, key, last, ops),
            Some(TreeState::PendingRemove) => {
                locked.tree.remove(key);
                locked.ids.free(key.id);
            }
            Some(TreeState::Cancelled) => locked.ids.free(key.id),
            Some(TreeState::InTree) | None => {}
        }
    }
}

/// Tree membership of a subscription, one byte per id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TreeState {
    /// Queued to be linked when the running epoch closes.
    PendingInsert = 1,
    /// Linked into the tree.
    InTree = 2,
    /// Linked, queued to be taken out when the running epoch closes.
    PendingRemove = 3,
    /// Removed before its deferred insert happened; its id is freed at
    /// epoch end.
    Cancelled = 4,
}

impl TreeState {
    fn from_tag(tag: u8) -> Option<TreeState> {
        match tag {
            1 => Some(TreeState::PendingInsert),
            2 => Some(TreeState::InTree),
            3 => Some(TreeState::PendingRemove),
            4 => Some(TreeState::Cancelled),
            _ => None,
        }
    }
}
