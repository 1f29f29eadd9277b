//! Whole-address-space notifiers: register, unregister, get, put.
//!
//! Kernel counterpart: `struct mmu_notifier`, `mmu_notifier_register`,
//! `__mmu_notifier_register`, `mmu_notifier_unregister`,
//! `mmu_notifier_get_locked`, `mmu_notifier_put` and
//! `mmu_notifier_synchronize` in `mm/mmu_notifier.c`.
//!
//! Two lifecycles, two handle types:
//!
//! * [`Notifier`] (`register` … `unregister`): owned by one driver instance.
//!   Unregister calls `release` unless exit already did, then waits for a
//!   grace period, so no callback runs once it returns.
//! * [`SharedNotifier`] (`get` … `put`): one subscription per ops table per
//!   address space, reference counted. The last put unlinks it and defers
//!   `free_notifier` past a grace period; `release` is never called by put.
//!
//! Both unregister or put when dropped, so "double unregister" and
//! "put without get" cannot be written.

use std::fmt;
use std::ops::Deref;

use crate::Mm;
use crate::error::{Error, Result};
use crate::mm::MmapWriteGuard;
use crate::ops::NotifierOps;
use crate::rcu;
use crate::subscriptions::list::ListEntry;
use crate::subscriptions::subscription::{Subscription, new_subscription, ops_id, register_locked};
use crate::sync::Arc;
use crate::sync::atomic::Ordering;
use crate::warn::Warning;

/// A registered whole-address-space notifier; unregisters when dropped.
///
/// ```
/// use mmun_core::{Mm, Notifier, NotifierOps, Range, StartFn};
/// use std::sync::atomic::{AtomicUsize, Ordering};
///
/// struct Counter(AtomicUsize);
/// static OPS: NotifierOps<Counter> = NotifierOps {
///     invalidate_range_start: Some(StartFn::Infallible(|c, _range| {
///         c.0.fetch_add(1, Ordering::Relaxed);
///     })),
///     ..NotifierOps::EMPTY
/// };
///
/// let mm = Mm::new();
/// let notifier = Notifier::register(&mm, &OPS, Counter(AtomicUsize::new(0))).unwrap();
/// let lock = mm.mmap_read();
/// mmun_core::Invalidation::start(Range::new(&lock, mmun_core::Event::Unmap, 0, 4096)).end();
/// assert_eq!(notifier.0.load(Ordering::Relaxed), 1);
/// ```
pub struct Notifier<T: Send + Sync + 'static> {
    sub: Option<Arc<Subscription<T>>>,
}

impl<T: Send + Sync + 'static> Notifier<T> {
    /// `mmu_notifier_register`: takes the mmap write lock and registers.
    ///
    /// # Errors
    ///
    /// [`Error::NoUsers`] after exit, [`Error::FallibleStartWithEnd`] for
    /// ops that break that rule, [`Error::Disabled`] in the disabled build.
    ///
    /// # Panics
    ///
    /// If this thread has an invalidation of `mm` open (from a callback, or
    /// between start and end): registration takes the locks it holds.
    pub fn register(mm: &Arc<Mm>, ops: &'static NotifierOps<T>, data: T) -> Result<Notifier<T>> {
        mm.assert_not_registering_inside("mmu_notifier_register()");
        let guard = mm.mmap_write();
        Self::register_locked(&guard, ops, data)
    }

    /// `__mmu_notifier_register`: the caller already holds the mmap write
    /// lock; the notifier goes on that lock's address space.
    pub fn register_locked(
        guard: &MmapWriteGuard<'_>,
        ops: &'static NotifierOps<T>,
        data: T,
    ) -> Result<Notifier<T>> {
        let sub = new_subscription(guard.mm_arc(), ops, data)?;
        register_locked(guard, Some(ListEntry::new(sub.clone())))?;
        Ok(Notifier { sub: Some(sub) })
    }

    /// `mmu_notifier_unregister`: calls `release` unless exit already
    /// unlinked this notifier, unlinks it, and waits until no callback of
    /// it is running. The same happens on drop.
    ///
    /// # Panics
    ///
    /// If called from inside a notifier callback (an SRCU read section): it
    /// would wait for itself.
    pub fn unregister(mut self) {
        if let Some(sub) = self.sub.take() {
            unregister(sub);
        }
    }

    /// The address space this notifier is registered on.
    pub fn mm(&self) -> &Arc<Mm> {
        &self.subscription().mm
    }

    fn subscription(&self) -> &Subscription<T> {
        self.sub.as_ref().expect("present until unregister")
    }
}

fn unregister<T: Send + Sync + 'static>(sub: Arc<Subscription<T>>) {
    let _scope = sub.mm.registration_scope();
    // Checked without the lock, as in Linux: exit may be unlinking it right
    // now and calling `release` too, so `release` may run twice.
    if sub.hashed.load(Ordering::Acquire) {
        {
            let _read = rcu::global().read_lock();
            if let Some(release) = sub.ops.release {
                release(&sub.data, &sub.mm);
            }
        }
        if let Some(subscriptions) = sub.mm.subscriptions() {
            subscriptions.hlist().unlink(&ListEntry::new(sub.clone()));
        }
    }
    // Always: a `release` started by exit may still be running.
    rcu::global().synchronize();
}

impl<T: Send + Sync + 'static> Deref for Notifier<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.subscription().data
    }
}

impl<T: Send + Sync + 'static> Drop for Notifier<T> {
    fn drop(&mut self) {
        if let Some(sub) = self.sub.take() {
            unregister(sub);
        }
    }
}

impl<T: Send + Sync + fmt::Debug + 'static> fmt::Debug for Notifier<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("data", &self.subscription().data)
            .finish_non_exhaustive()
    }
}

/// A reference to the one subscription of an ops table on an address space
/// (`mmu_notifier_get` … `mmu_notifier_put`); puts when dropped.
pub struct SharedNotifier<T: Send + Sync + 'static> {
    sub: Option<Arc<Subscription<T>>>,
}

impl<T: Send + Sync + 'static> SharedNotifier<T> {
    /// `mmu_notifier_get`: takes the mmap write lock, then as
    /// [`SharedNotifier::get_locked`].
    pub fn get(mm: &Arc<Mm>, ops: &'static NotifierOps<T>) -> Result<SharedNotifier<T>> {
        mm.assert_not_registering_inside("mmu_notifier_get()");
        let guard = mm.mmap_write();
        Self::get_locked(&guard, ops)
    }

    /// `mmu_notifier_get_locked`: the subscription registered on `mm` with
    /// this very ops table, with one more user; or a new one made by
    /// `alloc_notifier` and registered.
    ///
    /// # Errors
    ///
    /// [`Error::Overflow`] at `u32::MAX` users; [`Error::NoAllocNotifier`];
    /// whatever `alloc_notifier` returned; registration errors, after which
    /// `free_notifier` has already run.
    pub fn get_locked(
        guard: &MmapWriteGuard<'_>,
        ops: &'static NotifierOps<T>,
    ) -> Result<SharedNotifier<T>> {
        // Everything that refuses without needing the driver state comes
        // first, so a refused get never calls `alloc_notifier` (nor then
        // `free_notifier`): the disabled build, bad ops.
        if cfg!(feature = "disabled") {
            return Err(Error::Disabled);
        }
        let mm = guard.mm_arc();
        if let Some(sub) = find_and_get(mm, ops)? {
            return Ok(SharedNotifier { sub: Some(sub) });
        }
        ops.check()?;
        let alloc = ops.alloc_notifier.ok_or(Error::NoAllocNotifier)?;
        let data = alloc(mm)?;
        let sub = new_subscription(mm, ops, data)?;
        if let Err(e) = register_locked(guard, Some(ListEntry::new(sub.clone()))) {
            free_now(ops, &sub.data);
            return Err(e);
        }
        Ok(SharedNotifier { sub: Some(sub) })
    }

    /// `mmu_notifier_put`: drops this user; the last one unlinks the
    /// subscription and frees it after a grace period. Never calls
    /// `release`. May be called from inside `release`. Same on drop.
    pub fn put(mut self) {
        if let Some(sub) = self.sub.take() {
            put(sub);
        }
    }

    /// The current number of users (`users`).
    pub fn users(&self) -> u32 {
        self.subscription().users.load(Ordering::Relaxed)
    }

    /// The address space this notifier is registered on.
    pub fn mm(&self) -> &Arc<Mm> {
        &self.subscription().mm
    }

    /// Test hook: sets the user count, to reach the overflow check.
    #[doc(hidden)]
    pub fn set_users_for_test(&self, users: u32) {
        if let Some(subscriptions) = self.mm().subscriptions() {
            let _locked = subscriptions.lock();
            self.subscription().users.store(users, Ordering::Relaxed);
        }
    }

    fn subscription(&self) -> &Subscription<T> {
        self.sub.as_ref().expect("present until put")
    }
}

fn free_now<T>(ops: &'static NotifierOps<T>, data: &T) {
    if let Some(free) = ops.free_notifier {
        free(data);
    }
}

fn find_and_get<T: Send + Sync + 'static>(
    mm: &Mm,
    ops: &'static NotifierOps<T>,
) -> Result<Option<Arc<Subscription<T>>>> {
    let Some(subscriptions) = mm.subscriptions() else {
        return Ok(None);
    };
    let locked = subscriptions.lock();
    let Some(entry) = subscriptions.hlist().find_ops(&locked, ops_id(ops)) else {
        return Ok(None);
    };
    let sub = Arc::clone(entry.subscription())
        .into_any()
        .downcast::<Subscription<T>>()
        .unwrap_or_else(|_| unreachable!("one ops table has one driver type"));
    let users = sub.users.load(Ordering::Relaxed);
    if users == u32::MAX {
        return Err(Error::Overflow);
    }
    sub.users.store(users + 1, Ordering::Relaxed);
    Ok(Some(sub))
}

fn put<T: Send + Sync + 'static>(sub: Arc<Subscription<T>>) {
    let _scope = sub.mm.registration_scope();
    let subscriptions = sub.mm.subscriptions().expect("registered, so present");
    {
        let mut locked = subscriptions.lock();
        let users = sub.users.load(Ordering::Relaxed);
        if users == 0 {
            drop(locked);
            subscriptions.warn(Warning::PutWithoutUsers);
            return;
        }
        sub.users.store(users - 1, Ordering::Relaxed);
        if users > 1 {
            return;
        }
        // Unlink in the same critical section as the last decrement, as
        // Linux does: otherwise a concurrent `get` could find the dying
        // subscription, revive it from 0 users, and its own `put` would
        // queue a second `free_notifier` (found by tests/loom.rs).
        subscriptions
            .hlist()
            .unlink_locked(&mut locked, &ListEntry::new(sub.clone()));
    }
    rcu::global().call(Box::new(move || {
        if let Some(free) = sub.ops.free_notifier {
            free(&sub.data);
        }
        drop(sub);
    }));
}

impl<T: Send + Sync + 'static> Deref for SharedNotifier<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.subscription().data
    }
}

impl<T: Send + Sync + 'static> Drop for SharedNotifier<T> {
    fn drop(&mut self) {
        if let Some(sub) = self.sub.take() {
            put(sub);
        }
    }
}

impl<T: Send + Sync + fmt::Debug + 'static> fmt::Debug for SharedNotifier<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedNotifier")
            .field("data", &self.subscription().data)
            .field("users", &self.users())
            .finish()
    }
}

/// `mmu_notifier_synchronize`: waits until every `free_notifier` queued by
/// a `put` so far has run. Unlike v6.5's `synchronize_srcu`, this is a true
/// barrier (spec §5, latent issue (e)).
///
/// # Panics
///
/// If called inside a notifier callback.
pub fn synchronize() {
    if cfg!(feature = "disabled") {
        return;
    }
    rcu::global().barrier();
}
