//! The per-address-space notifier state and the dispatch of every event.
//!
//! Kernel counterpart: `struct mmu_notifier_subscriptions` and the
//! `__mmu_notifier_*` functions of `mm/mmu_notifier.c`.
//!
//! # Two kinds of subscribers
//!
//! * **Interval notifiers** ([`itree`]) sit in an interval tree and hear
//!   only about ranges that overlap them. They are dispatched first, at
//!   start and at end, under the collision-retry protocol of `DESIGN.md`.
//! * **List notifiers** ([`list`]) hear about everything. They are walked in
//!   an SRCU read section, newest first, so callbacks may sleep and
//!   unregistration waits for them.
//!
//! # Invalidation
//!
//! `start` runs the tree, then the list; `end` closes the tree epoch, then
//! runs the list. A non-blockable start that a subscriber refuses returns
//! [`WouldBlock`] and leaves nothing counted: the caller must not call end.
//!
//! # Locking
//!
//! `lock` (the kernel's spinlock) guards the list, the tree, the sequence
//! counter and the deferred updates. It is never held across a callback.
//! `wq` waits on `lock` for the sequence to move. `has_itree` and `has_list`
//! are read without the lock: they change only under `mm_take_all_locks`
//! (`has_itree`) or are re-checked under SRCU (`has_list`).

mod direct;
pub(crate) mod itree;
pub(crate) mod list;
pub(crate) mod node;
mod snapshot;
pub(crate) mod subscription;

use crate::error::WouldBlock;
use crate::interval_btree::{IntervalBTree, Key};
use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crate::sync::{Condvar, Mutex, MutexGuard};
use crate::warn::Warning;
use crate::{Mm, Range};

use list::ListEntry;
use snapshot::SrcuPtr;

/// How many WARNs an address space records (`Mm::warnings`); later ones are
/// dropped, so that recording one never allocates.
const WARNINGS_KEPT: usize = 64;

/// `struct mmu_notifier_subscriptions`.
pub(crate) struct Subscriptions {
    /// "An interval notifier was ever registered". False → true once, under
    /// `mm_take_all_locks`, so a start/end pair always agrees on it.
    has_itree: AtomicBool,
    /// Whether the list may be non-empty; written under `lock`.
    has_list: AtomicBool,
    /// Snapshot of the list for SRCU readers, replaced under `lock`.
    list: SrcuPtr<Vec<ListEntry>>,
    lock: Mutex<Locked>,
    /// `Locked::invalidate_seq`, published for the lock-free check of
    /// `read_begin`; stored under `lock` whenever that changes.
    pub(crate) published_seq: AtomicU64,
    /// Waiters for the sequence to move (`read_begin`, `remove`).
    wq: Condvar,
    warnings: Mutex<Vec<Warning>>,
}

/// Everything `lock` protects.
pub(crate) struct Locked {
    /// `invalidate_seq`: even ⇔ the tree may change. Starts at 2.
    pub(crate) invalidate_seq: u64,
    /// `active_invalidate_ranges`: starts counted by the tree code whose end
    /// has not run. `invalidate_seq` odd ⇒ `active > 0`.
    pub(crate) active: u64,
    /// Interval notifiers by `[start, last]`, in start order and, for
    /// equal starts, in the order they were linked (the kernel's); an
    /// entry's key is its start and node address (the pointer to the
    /// node). Frozen while the seq is odd.
    pub(crate) tree: IntervalBTree<()>,
    /// Inserts that arrived while the tree was frozen (the kernel's
    /// `deferred_list`), linked when the epoch closes, last queued first
    /// as the kernel's list does (`apply_deferred`): key and `last`.
    pub(crate) pending_inserts: Vec<(Key, u64)>,
    /// Removals of linked nodes that arrived while the tree was frozen,
    /// applied when the epoch closes (their callers wait for that).
    pub(crate) pending_removes: Vec<Key>,
    /// The list notifiers, newest first (`hlist_add_head_rcu`).
    pub(crate) list: Vec<ListEntry>,
    /// Threads sleeping on `wq`; the epoch's end wakes them only if any.
    pub(crate) waiters: usize,
}

/// A counted tree range, ended on drop while armed.
pub(crate) struct ItreeCount<'a> {
    subscriptions: &'a Subscriptions,
    armed: bool,
}

impl ItreeCount<'_> {
    /// Ends the tree's count now, if it is still armed (idempotent).
    pub(crate) fn close(&mut self) {
        if std::mem::replace(&mut self.armed, false) {
            self.subscriptions.itree().inv_end();
        }
    }
}

impl Drop for ItreeCount<'_> {
    fn drop(&mut self) {
        self.close();
    }
}

/// While an interval callback runs, the list has started nobody: if the
/// callback unwinds, only the list notifiers without a start callback get
/// their end (as they would have after a completed start).
struct UnstartedListEnds<'a, 'r> {
    subscriptions: &'a Subscriptions,
    range: &'a Range<'r>,
    armed: bool,
}

impl Drop for UnstartedListEnds<'_, '_> {
    fn drop(&mut self) {
        if self.armed {
            self.subscriptions
                .hlist()
                .invalidate_range_end_started(self.range, 0);
        }
    }
}

impl Subscriptions {
    /// The interval half (`itree.rs`).
    #[inline(always)]
    pub(crate) fn itree(&self) -> itree::Itree<'_> {
        itree::Itree(self)
    }

    /// The list half (`list.rs`).
    #[inline(always)]
    pub(crate) fn hlist(&self) -> list::Hlist<'_> {
        list::Hlist(self)
    }

    pub(crate) fn new() -> Subscriptions {
        Subscriptions {
            has_itree: AtomicBool::new(false),
            has_list: AtomicBool::new(false),
            list: SrcuPtr::new(Vec::new()),
            published_seq: AtomicU64::new(2),
            lock: Mutex::new(Locked {
                invalidate_seq: 2,
                active: 0,
                tree: IntervalBTree::new(),
                pending_inserts: Vec::new(),
                pending_removes: Vec::new(),
                list: Vec::new(),
                waiters: 0,
            }),
            wq: Condvar::new(),
            warnings: Mutex::new(Vec::with_capacity(WARNINGS_KEPT)),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Locked> {
        self.lock.lock()
    }

    /// The identity used by the per-thread deadlock checks.
    pub(crate) fn id(&self) -> usize {
        std::ptr::from_ref(self).addr()
    }

    #[inline(always)]
    pub(crate) fn has_itree(&self) -> bool {
        // Pairs with the Release store in `mark_has_itree`.
        self.has_itree.load(Ordering::Acquire)
    }

    /// Called with all locks of the mm held: no invalidation is in flight.
    pub(crate) fn mark_has_itree(&self) {
        self.has_itree.store(true, Ordering::Release);
    }

    /// `__mmu_notifier_invalidate_range_start`. On success, tells whether
    /// the tree counted this range (its end must then close it).
    ///
    /// If a callback unwinds, this ends what was started before the unwind
    /// leaves: the tree's count is closed, and a list notifier gets its end
    /// only if its start returned or it has no start callback. The caller's
    /// `Invalidation` must not end anything then.
    #[inline(always)]
    pub(crate) fn invalidate_range_start(&self, range: &Range<'_>) -> Result<bool, WouldBlock> {
        if self.has_itree() {
            return self.invalidate_range_start_with_itree(range);
        }
        // No tree: nothing to count or close, whatever the list does.
        // Inline into the caller (`Invalidation::start`), like the end's
        // walk: a call here cost a frame of six saved registers per start.
        self.hlist().invalidate_range_start(range, None)?;
        Ok(false)
    }

    /// [`Subscriptions::invalidate_range_start`] of an address space with
    /// interval notifiers. Out of line: its batch of hits would otherwise
    /// give the list-only path a frame of half a kilobyte to set up.
    #[inline(never)]
    fn invalidate_range_start_with_itree(&self, range: &Range<'_>) -> Result<bool, WouldBlock> {
        // Closes the tree's epoch unless the list accepts the range: when a
        // list notifier refuses it (Linux leaves the tree side counted here,
        // spec §5 latent issue (a), stranding `active` and hanging readers;
        // the caller may not call end, so close it ourselves), and when a
        // list callback panics.
        let mut tree = ItreeCount {
            subscriptions: self,
            armed: false,
        };
        let mut unstarted = UnstartedListEnds {
            subscriptions: self,
            range,
            armed: true,
        };
        let outcome = self.itree().invalidate(range);
        // A refusal calls no list notifier at all, not even an end.
        unstarted.armed = false;
        outcome?;
        tree.armed = true;
        self.hlist()
            .invalidate_range_start(range, Some(&mut tree))?;
        let counted = tree.armed;
        tree.armed = false;
        Ok(counted)
    }

    /// `__mmu_notifier_invalidate_range_end`.
    #[inline(always)]
    pub(crate) fn invalidate_range_end(&self, range: &Range<'_>, only_end: bool, counted: bool) {
        if counted {
            self.itree().inv_end();
        }
        self.hlist().invalidate_range_end(range, only_end);
    }

    /// `__mmu_notifier_release`: interval notifiers get `Release` over the
    /// whole address space, then list notifiers get `release` and are
    /// unlinked.
    pub(crate) fn release(&self, mm: &Mm) {
        if self.has_itree() {
            self.itree().release(mm);
        }
        self.hlist().release(mm);
    }

    /// Records a kernel `WARN` (and logs the first of each kind through
    /// `tracing`). The record never allocates: it has room for
    /// `WARNINGS_KEPT` and drops later ones. Logging happens only on misuse
    /// and may allocate if a `tracing` subscriber is installed.
    pub(crate) fn warn(&self, warning: Warning) {
        let mut warnings = self.warnings.lock();
        if !warnings.contains(&warning) {
            tracing::warn!(target: "mmun", "WARN: {warning}");
        }
        if warnings.len() < WARNINGS_KEPT {
            warnings.push(warning);
        }
    }

    pub(crate) fn warnings(&self) -> Vec<Warning> {
        self.warnings.lock().clone()
    }

    #[cfg(feature = "test-hooks")]
    pub(crate) fn set_seq_for_test(&self, seq: u64) {
        let mut locked = self.lock();
        assert_eq!(locked.active, 0, "set the seq only while idle");
        assert!(seq.is_multiple_of(2), "an idle seq is even");
        locked.invalidate_seq = seq;
        self.published_seq.store(seq, Ordering::Release);
    }
}
