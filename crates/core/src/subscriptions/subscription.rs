//! The whole-address-space subscription behind [`Notifier`] and
//! [`SharedNotifier`] (`struct mmu_notifier` with the driver state it is
//! embedded in), its object-safe view the list holds, the capability bits
//! the list dispatches on, and `__mmu_notifier_register`, which both
//! notifier kinds and interval notifiers go through.
//!
//! [`Notifier`]: crate::Notifier
//! [`SharedNotifier`]: crate::SharedNotifier

use std::any::Any;

use super::list::ListEntry;
use crate::Mm;
use crate::error::{Error, Result};
use crate::mm::MmapWriteGuard;
use crate::ops::{NotifierOps, PteValue};
use crate::sync::Arc;
use crate::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// `struct mmu_notifier` together with the driver state `T` it is embedded
/// in.
pub(crate) struct Subscription<T: 'static> {
    pub(crate) ops: &'static NotifierOps<T>,
    pub(crate) mm: Arc<Mm>,
    /// `users`, for get/put. Changed only under the subscriptions lock.
    pub(crate) users: AtomicU32,
    /// On the list (`!hlist_unhashed`). Read without the lock by unregister,
    /// which is why `release` can run twice (see `Notifier::unregister`).
    pub(crate) hashed: AtomicBool,
    pub(crate) data: T,
}

impl<T> Subscription<T> {
    /// The driver state.
    pub(crate) fn data(&self) -> &T {
        &self.data
    }

    /// The ops table.
    pub(crate) fn ops(&self) -> &'static NotifierOps<T> {
        self.ops
    }
}

/// Bits for the callbacks an ops table provides.
pub(crate) mod caps {
    pub(crate) const RELEASE: u16 = 1 << 0;
    pub(crate) const START: u16 = 1 << 1;
    pub(crate) const END: u16 = 1 << 2;
    pub(crate) const INVALIDATE_RANGE: u16 = 1 << 3;
}

/// The object-safe view of a [`Subscription`] that the list holds.
pub(crate) trait ErasedSubscription: Send + Sync {
    /// The `caps::*` bits of the callbacks the ops provide.
    fn caps(&self) -> u16;
    fn ops_id(&self) -> usize;
    fn set_hashed(&self, hashed: bool);
    fn release(&self, mm: &Mm);
    fn clear_flush_young(&self, mm: &Mm, start: u64, end: u64) -> bool;
    fn clear_young(&self, mm: &Mm, start: u64, end: u64) -> bool;
    fn test_young(&self, mm: &Mm, address: u64) -> bool;
    fn change_pte(&self, mm: &Mm, address: u64, pte: PteValue);
    fn invalidate_range(&self, mm: &Mm, start: u64, end: u64);
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

/// The identity of an ops table: what `get` looks a shared notifier up by.
pub(crate) fn ops_id<T>(ops: &'static NotifierOps<T>) -> usize {
    std::ptr::from_ref(ops).addr()
}

impl<T: Send + Sync + 'static> ErasedSubscription for Subscription<T> {
    fn caps(&self) -> u16 {
        let ops = self.ops;
        [
            (ops.release.is_some(), caps::RELEASE),
            (ops.invalidate_range_start.is_some(), caps::START),
            (ops.invalidate_range_end.is_some(), caps::END),
            (ops.invalidate_range.is_some(), caps::INVALIDATE_RANGE),
        ]
        .into_iter()
        .filter(|(present, _)| *present)
        .fold(0, |bits, (_, cap)| bits | cap)
    }
    fn ops_id(&self) -> usize {
        ops_id(self.ops)
    }
    fn set_hashed(&self, hashed: bool) {
        self.hashed.store(hashed, Ordering::Release);
    }
    fn release(&self, mm: &Mm) {
        if let Some(f) = self.ops.release {
            f(&self.data, mm);
        }
    }
    fn clear_flush_young(&self, mm: &Mm, start: u64, end: u64) -> bool {
        self.ops
            .clear_flush_young
            .is_some_and(|f| f(&self.data, mm, start, end))
    }
    fn clear_young(&self, mm: &Mm, start: u64, end: u64) -> bool {
        self.ops
            .clear_young
            .is_some_and(|f| f(&self.data, mm, start, end))
    }
    fn test_young(&self, mm: &Mm, address: u64) -> bool {
        self.ops
            .test_young
            .is_some_and(|f| f(&self.data, mm, address))
    }
    fn change_pte(&self, mm: &Mm, address: u64, pte: PteValue) {
        if let Some(f) = self.ops.change_pte {
            f(&self.data, mm, address, pte);
        }
    }
    fn invalidate_range(&self, mm: &Mm, start: u64, end: u64) {
        if let Some(f) = self.ops.invalidate_range {
            f(&self.data, mm, start, end);
        }
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

/// `__mmu_notifier_register(subscription_or_NULL, mm)`: the caller holds the
/// mmap write lock. `None` enables the interval tree.
pub(crate) fn register_locked(guard: &MmapWriteGuard<'_>, entry: Option<ListEntry>) -> Result<()> {
    if cfg!(feature = "disabled") {
        return Err(Error::Disabled);
    }
    let mm = guard.mm_arc();
    mm.assert_not_registering_inside("mmu_notifier_register()");
    if !mm.is_live() {
        return Err(Error::NoUsers);
    }
    let subscriptions = mm.subscriptions_or_init(guard);
    // With every lock an invalidation may hold taken, none is between its
    // start and its end: the new subscriber cannot see an unpaired end.
    let _all_locks = mm.take_all_locks(guard);
    match entry {
        Some(entry) => subscriptions.hlist().add_head(entry),
        None => subscriptions.mark_has_itree(),
    }
    Ok(())
}

/// A subscription of `ops` with one user, not yet on the list; rejects
/// ops tables that break a registration rule.
pub(crate) fn new_subscription<T: Send + Sync>(
    mm: &Arc<Mm>,
    ops: &'static NotifierOps<T>,
    data: T,
) -> Result<Arc<Subscription<T>>> {
    ops.check()?;
    Ok(Arc::new(Subscription {
        ops,
        mm: Arc::clone(mm),
        users: AtomicU32::new(1),
        hashed: AtomicBool::new(false),
        data,
    }))
}
