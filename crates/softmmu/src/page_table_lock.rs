//! The page-table locks: `state` (the PMD lock, `mm->page_table_lock`:
//! the upper tables and huge PMD entries) and one lock per PTE table
//! (`pte_lockptr`, taken inside the PMD lock when both are held). Both are
//! mutexes whose holding is recorded in the core's debug-build lock-order
//! graph (`mmun_core::lockdep`), so that the order DESIGN.md gives ("Lock
//! order") is checked where it can be.
//!
//! What the graph can see: a notifier callback runs under the
//! `invalidate_range_start` map, and a driver lock taken inside one records
//! `map → driver lock`. A start or an end under the page-table lock would
//! record `page-table lock → map`; a driver that then waits for the
//! page-table lock while holding its own lock (a walk under the driver
//! lock) closes the cycle, which is reported the first time all three
//! orders have been seen. Linux's order forbids the first edge
//! (`invalidate_range_start` comes before `pte_offset_map_lock`), which is
//! what leaves walks under a driver lock legal. A trylock records no order,
//! as a trylock cannot deadlock.

use std::ops::{Deref, DerefMut};

use mmun_core::lockdep::{self, LockClass};
use parking_lot::{Mutex, MutexGuard};

/// The PMD lock's class: one for every address space (a class, not an
/// instance, is a node of the graph, as in lockdep).
pub(crate) static PAGE_TABLE_LOCK: LockClass = LockClass::new("softmmu page-table lock");

/// The class of every PTE table's own lock (`ptlock_ptr`).
pub(crate) static PTE_LOCK: LockClass = LockClass::new("softmmu PTE table lock");

/// A held page-table lock.
pub(crate) struct PtlGuard<'a, T> {
    inner: MutexGuard<'a, T>,
    class: &'static LockClass,
    /// Whether the graph records it as held (a trylock is not).
    tracked: bool,
}

/// Takes the PMD lock `lock`, recording its class as held.
#[track_caller]
pub(crate) fn lock<T>(lock: &Mutex<T>) -> PtlGuard<'_, T> {
    lock_class(lock, &PAGE_TABLE_LOCK)
}

/// Takes `lock` of `class`, recording the class as held.
#[track_caller]
pub(crate) fn lock_class<'a, T>(lock: &'a Mutex<T>, class: &'static LockClass) -> PtlGuard<'a, T> {
    lockdep::acquire(class);
    PtlGuard {
        inner: lock.lock(),
        class,
        tracked: true,
    }
}

/// Takes the PMD lock `lock` if it is free; records no order.
pub(crate) fn try_lock<T>(lock: &Mutex<T>) -> Option<PtlGuard<'_, T>> {
    try_lock_class(lock, &PAGE_TABLE_LOCK)
}

/// Takes `lock` of `class` if it is free; records no order.
pub(crate) fn try_lock_class<'a, T>(
    lock: &'a Mutex<T>,
    class: &'static LockClass,
) -> Option<PtlGuard<'a, T>> {
    lock.try_lock().map(|inner| PtlGuard {
        inner,
        class,
        tracked: false,
    })
}

impl<T> PtlGuard<'_, T> {
    /// Runs `f` with the lock dropped (and recorded as not held), then
    /// takes it again.
    #[track_caller]
    pub(crate) fn unlocked<R>(&mut self, f: impl FnOnce() -> R) -> R {
        if self.tracked {
            lockdep::release(self.class);
        }
        let out = MutexGuard::unlocked(&mut self.inner, f);
        if self.tracked {
            lockdep::acquire(self.class);
        }
        out
    }
}

impl<T> Deref for PtlGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> DerefMut for PtlGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T> Drop for PtlGuard<'_, T> {
    fn drop(&mut self) {
        if self.tracked {
            lockdep::release(self.class);
        }
    }
}
