//! Dispatch to whole-address-space notifiers under the SRCU domain.
//!
//! Kernel counterpart: `mn_hlist_*`, `__mmu_notifier_release`, the young,
//! `change_pte` and `invalidate_range` dispatchers of `mm/mmu_notifier.c`.
//!
//! Readers load the current list snapshot inside a read section of the
//! global SRCU domain and call into every entry. Writers build a new snapshot
//! under `lock`. An entry that was unlinked may still be called by a reader
//! that loaded the old snapshot; unregistration therefore waits for a grace
//! period, and `put` defers `free_notifier` until after one.

use super::Subscriptions;
use super::direct::DirectSubscription;
use super::subscription::{ErasedSubscription, Subscription, caps};
use crate::context::{self, NonBlock};
use crate::error::WouldBlock;
use crate::ops::PteValue;
use crate::rcu;
use crate::sync::Arc;
use crate::sync::atomic::Ordering;
use crate::warn::Warning;
use crate::{Mm, Range};

/// One list entry: a registered subscription, type-erased, with the set of
/// callbacks its ops provide, so that dispatch skips absent ones without a
/// virtual call (the kernel tests the ops pointer for NULL the same way),
/// and its start and end callbacks erased for one direct call each.
#[derive(Clone)]
pub(crate) struct ListEntry {
    sub: DirectSubscription,
    caps: u16,
}

impl ListEntry {
    pub(crate) fn new<T: Send + Sync + 'static>(sub: Arc<Subscription<T>>) -> ListEntry {
        let caps = sub.caps();
        ListEntry {
            sub: DirectSubscription::new(sub),
            caps,
        }
    }

    /// `invalidate_range_start`, `None` if the ops have none.
    #[inline]
    fn start(&self, range: &Range<'_>) -> Option<Result<(), WouldBlock>> {
        self.sub.start(range)
    }

    /// `invalidate_range_end`, if the ops have one.
    #[inline]
    fn end(&self, range: &Range<'_>) {
        self.sub.end(range);
    }

    /// Whether the ops provide the callback `cap` (a `caps::*` bit).
    #[inline]
    pub(crate) fn has(&self, cap: u16) -> bool {
        self.caps & cap != 0
    }

    /// Whether both entries are the same subscription.
    pub(crate) fn same(&self, other: &ListEntry) -> bool {
        Arc::ptr_eq(self.subscription(), other.subscription())
    }

    pub(crate) fn subscription(&self) -> &Arc<dyn ErasedSubscription> {
        self.sub.subscription()
    }
}

impl std::ops::Deref for ListEntry {
    type Target = dyn ErasedSubscription;
    fn deref(&self) -> &Self::Target {
        &**self.subscription()
    }
}

/// The list half of an address space's subscriptions (`mn_hlist_*`): a
/// view of them, from `Subscriptions::hlist`.
#[derive(Clone, Copy)]
pub(crate) struct Hlist<'s>(pub(super) &'s Subscriptions);

impl std::ops::Deref for Hlist<'_> {
    type Target = Subscriptions;

    /// The state both halves share (the lock, the seq words, the list).
    fn deref(&self) -> &Subscriptions {
        self.0
    }
}

impl<'s> Hlist<'s> {
    #[inline(always)]
    fn may_be_nonempty(self) -> bool {
        // Pairs with the Release store in `publish_list`.
        self.has_list.load(Ordering::Acquire)
    }

    /// Runs `f` over a snapshot of the list inside an SRCU read section.
    #[inline]
    fn with_list<R>(&self, f: impl FnOnce(&[ListEntry]) -> R) -> Option<R> {
        if !self.may_be_nonempty() {
            return None;
        }
        Some(self.list.with(|list| f(list)))
    }

    /// Replaces the readers' snapshot with the locked list.
    fn publish_list(self, locked: &super::Locked) {
        self.list.replace(locked.list.clone());
        self.has_list
            .store(!locked.list.is_empty(), Ordering::Release);
    }

    /// `hlist_add_head_rcu` under the lock: new notifiers are called first.
    pub(crate) fn add_head(self, entry: ListEntry) {
        // The list is about to be walked under SRCU on the dispatch path:
        // ready the global domain's slots for new threads now.
        rcu::prepare_global_readers();
        let mut locked = self.lock();
        entry.set_hashed(true);
        locked.list.insert(0, entry);
        self.publish_list(&locked);
    }

    /// `hlist_del_init_rcu` under the lock; idempotent.
    pub(crate) fn unlink(self, entry: &ListEntry) {
        let mut locked = self.lock();
        self.unlink_locked(&mut locked, entry);
    }

    /// [`Subscriptions::list_unlink`] with the lock already held (`put`
    /// must drop the last user and unlink in one critical section).
    pub(crate) fn unlink_locked(self, locked: &mut super::Locked, entry: &ListEntry) {
        let before = locked.list.len();
        locked.list.retain(|e| !e.same(entry));
        entry.set_hashed(false);
        if locked.list.len() != before {
            self.publish_list(locked);
        }
    }

    /// Finds the entry registered with this ops table (for `get`).
    pub(crate) fn find_ops(self, locked: &super::Locked, ops: usize) -> Option<ListEntry> {
        locked.list.iter().find(|e| e.ops_id() == ops).cloned()
    }

    /// `mn_hlist_invalidate_range_start`: every start is called, even after
    /// one failed; on failure the tree's count is closed and every notifier
    /// with an end gets it. If a start unwinds, the tree's count is closed
    /// and the notifiers whose start returned, or that have none, get their
    /// end; the one that unwound and those after it do not.
    ///
    /// `tree` is the interval tree's count when the address space has
    /// interval notifiers; without, there is nothing to close, and the
    /// list-only path (every page-table change of an address space with only
    /// list notifiers) is this function with `None` folded in.
    #[inline(always)]
    pub(crate) fn invalidate_range_start(
        self,
        range: &Range<'_>,
        tree: Option<&mut super::ItreeCount<'_>>,
    ) -> Result<(), WouldBlock> {
        if !self.may_be_nonempty() {
            return Ok(());
        }
        self.list.with(|list| {
            let mut unwind = StartUnwind {
                range,
                list,
                tree,
                started: 0,
                armed: true,
            };
            let mut result = Ok(());
            for (index, entry) in list.iter().enumerate() {
                unwind.started = index;
                // `start` is `None` without a start callback: no caps test.
                let outcome = {
                    let _non_block = NonBlock::enter(!range.is_blockable());
                    entry.start(range)
                };
                if let Some(Err(refused)) = outcome {
                    self.warn_failed_start(range, entry);
                    result = Err(refused);
                }
            }
            unwind.armed = false;
            if result.is_err() {
                refused_start(unwind.tree.as_deref_mut(), list, range);
            }
            result
        })
    }

    /// The WARNs of a failed start. (Linux also `pr_info`s every failure;
    /// not here: a refusal of a non-blockable range is normal operation on
    /// the hook-safe path, and logging may allocate.)
    #[cold]
    #[inline(never)]
    fn warn_failed_start(self, range: &Range<'_>, entry: &ListEntry) {
        if range.is_blockable() {
            self.warn(Warning::StartFailedBlockable);
        }
        if entry.has(caps::END) {
            self.warn(Warning::FailingStartHasEnd);
        }
    }

    /// `mn_hlist_invalidate_end`: `invalidate_range` (unless `only_end`),
    /// then `invalidate_range_end`, per notifier.
    #[inline(always)]
    pub(crate) fn invalidate_range_end(self, range: &Range<'_>, only_end: bool) {
        if !self.may_be_nonempty() {
            return;
        }
        self.list.with(|list| {
            if only_end {
                end_all(list, range, true);
            } else {
                end_all(list, range, false);
            }
        });
    }

    /// The end of a start that unwound before the list was reached: only
    /// notifiers with no start callback get it.
    pub(crate) fn invalidate_range_end_started(self, range: &Range<'_>, started: usize) {
        self.with_list(|list| end_each(list, range, false, started));
    }

    /// `__mmu_notifier_clear_flush_young` / `_clear_young`: the OR of every
    /// notifier's answer, no short cut.
    pub(crate) fn clear_young(self, mm: &Mm, start: u64, end: u64, flush: bool) -> bool {
        self.with_list(|list| {
            let _atomic = NonBlock::enter(true);
            list.iter().fold(false, |young, entry| {
                let this = if flush {
                    entry.clear_flush_young(mm, start, end)
                } else {
                    entry.clear_young(mm, start, end)
                };
                young | this
            })
        })
        .unwrap_or(false)
    }

    /// `__mmu_notifier_test_young`: the first notifier that says young wins.
    pub(crate) fn test_young(self, mm: &Mm, address: u64) -> bool {
        self.with_list(|list| {
            let _atomic = NonBlock::enter(true);
            list.iter().any(|entry| entry.test_young(mm, address))
        })
        .unwrap_or(false)
    }

    /// `__mmu_notifier_change_pte`.
    pub(crate) fn change_pte(self, mm: &Mm, address: u64, pte: PteValue) {
        if !context::change_pte_is_nested(self.id(), address) {
            self.warn(Warning::ChangePteNotNested);
        }
        self.with_list(|list| {
            let _atomic = NonBlock::enter(true);
            for entry in list {
                entry.change_pte(mm, address, pte);
            }
        });
    }

    /// `__mmu_notifier_invalidate_range` (secondary TLB flush).
    pub(crate) fn invalidate_range(self, mm: &Mm, start: u64, end: u64) {
        self.with_list(|list| {
            let _atomic = NonBlock::enter(true);
            for entry in list {
                entry.invalidate_range(mm, start, end);
            }
        });
    }

    /// `mn_hlist_release`: call every `release` first, then unlink all, then
    /// wait for concurrent callers (an unregister's `release`) to finish.
    pub(crate) fn release(self, mm: &Mm) {
        let released = self.with_list(|list| {
            for entry in list.iter().filter(|e| e.has(caps::RELEASE)) {
                entry.release(mm);
            }
            let mut locked = self.lock();
            let unlinked = std::mem::take(&mut locked.list);
            for entry in &unlinked {
                entry.set_hashed(false);
            }
            self.publish_list(&locked);
            unlinked
        });
        if released.is_some() {
            rcu::global().synchronize();
        }
    }
}

/// Ends `range` on every entry of `list` (every start is done), in a loop
/// of its own for each `only_end`: the end every page-table change takes.
#[inline(always)]
fn end_all(list: &[ListEntry], range: &Range<'_>, only_end: bool) {
    for entry in list {
        if !only_end && entry.has(caps::INVALIDATE_RANGE) {
            invalidate_range_in_end(entry, range);
        }
        // `end` does nothing without an end callback: no caps test.
        let _non_block = NonBlock::enter(!range.is_blockable());
        entry.end(range);
    }
}

/// An entry's `invalidate_range` from the end's walk, out of line: inlined,
/// the walk loaded the range's fields for it before every end, whether or
/// not any entry has the callback.
#[inline(never)]
fn invalidate_range_in_end(entry: &ListEntry, range: &Range<'_>) {
    let _atomic = NonBlock::enter(true);
    entry.invalidate_range(range.mm(), range.start(), range.end());
}

/// Ends `range` on every entry of `list` whose start is done: the first
/// `started` entries, and any entry without a start callback.
#[inline(always)]
fn end_each(list: &[ListEntry], range: &Range<'_>, only_end: bool, started: usize) {
    for (index, entry) in list.iter().enumerate() {
        if index >= started && entry.has(caps::START) {
            continue;
        }
        if !only_end && entry.has(caps::INVALIDATE_RANGE) {
            let _atomic = NonBlock::enter(true);
            entry.invalidate_range(range.mm(), range.start(), range.end());
        }
        if entry.has(caps::END) {
            let _non_block = NonBlock::enter(!range.is_blockable());
            entry.end(range);
        }
    }
}

/// A start refused: the tree's count (if any) is closed and every entry
/// with an end gets it.
#[cold]
fn refused_start(tree: Option<&mut super::ItreeCount<'_>>, list: &[ListEntry], range: &Range<'_>) {
    if let Some(tree) = tree {
        tree.close();
    }
    for entry in list.iter().filter(|e| e.has(caps::END)) {
        entry.end(range);
    }
}

/// Unwinding out of the list's starts: closes the tree's count, then ends
/// the entries whose start is done, in the same SRCU section and snapshot
/// as the starts (so positions mean the same entries).
struct StartUnwind<'a, 'r, 't> {
    range: &'a Range<'r>,
    list: &'a [ListEntry],
    tree: Option<&'a mut super::ItreeCount<'t>>,
    /// Entries before this one have finished their start.
    started: usize,
    armed: bool,
}

impl Drop for StartUnwind<'_, '_, '_> {
    // Inline, with the unwinding itself out of line: then the guard's fields
    // stay in registers on the path that returns (an outlined drop takes
    // the guard's address, and the start loop stored every field and every
    // `started` to the stack).
    #[inline(always)]
    fn drop(&mut self) {
        if self.armed {
            unwind_start(self.tree.take(), self.list, self.range, self.started);
        }
    }
}

/// What [`StartUnwind`] does when armed.
#[cold]
#[inline(never)]
fn unwind_start(
    tree: Option<&mut super::ItreeCount<'_>>,
    list: &[ListEntry],
    range: &Range<'_>,
    started: usize,
) {
    if let Some(tree) = tree {
        tree.close();
    }
    end_each(list, range, false, started);
}
