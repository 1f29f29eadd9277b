//! The list notifiers' published snapshot: an SRCU-protected pointer, the
//! userspace form of `rcu_assign_pointer` / `srcu_dereference` on the
//! kernel's hlist.
//!
//! Readers load the pointer inside a read section of the global domain and
//! use the snapshot for as long as the section lasts. A writer (serialised by
//! the subscriptions lock) swaps in a new snapshot and hands the old one to
//! `call`, which frees it only after a grace period: every reader that could
//! have loaded it has left its section by then.
//!
//! This replaces an `ArcSwap` whose load cost about as much as the rest of
//! the dispatch; the read side is now one Acquire load.

#![allow(unsafe_code)]

use crate::rcu;
use crate::sync::atomic::{AtomicPtr, Ordering};

/// A heap value published to SRCU readers and replaced copy-on-write.
pub(crate) struct SrcuPtr<T: Send + Sync + 'static> {
    /// Always the result of `Box::into_raw`; never null.
    ptr: AtomicPtr<T>,
    /// `rcu::global()`, looked up once (its `OnceLock` test was a cost
    /// per section): for `call`, and for the read side's cold path (the
    /// fast path reads the global domain's statics).
    domain: &'static rcu::Srcu,
}

impl<T: Send + Sync + 'static> SrcuPtr<T> {
    pub(crate) fn new(value: T) -> Self {
        SrcuPtr {
            ptr: AtomicPtr::new(Box::into_raw(Box::new(value))),
            domain: rcu::global(),
        }
    }

    /// Runs `f` on the current value inside a read section of the global
    /// SRCU domain; the section lasts until `f` returns.
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        let _section = self.domain.read_lock_global();
        // Acquire: pairs with the Release half of the swap in `replace`, so
        // the snapshot's contents are visible.
        let ptr = self.ptr.load(Ordering::Acquire);
        // SAFETY: `ptr` came from `Box::into_raw` (in `new` or `replace`). It
        // is freed either by `Drop` (which has `&mut self`, so no `with` can
        // be running) or by the callback `replace` queues with `call` after
        // unpublishing it; that callback runs only after a grace period of
        // the global domain that began after the unpublish, and this read
        // section began before it (we loaded `ptr` while it was published)
        // and lasts until `f` returns. So the value outlives the borrow.
        let value = unsafe { &*ptr };
        f(value)
    }

    /// Publishes `value` and frees the previous one after a grace period.
    /// Writers must be serialised by the caller.
    pub(crate) fn replace(&self, value: T) {
        let new = Box::into_raw(Box::new(value));
        // AcqRel: Release publishes the new value to `with`'s Acquire load;
        // Acquire makes the old value's contents ours to drop.
        let old = self.ptr.swap(new, Ordering::AcqRel);
        let old = Retired(old);
        self.domain.call(Box::new(move || drop(old)));
    }
}

impl<T: Send + Sync + 'static> Drop for SrcuPtr<T> {
    fn drop(&mut self) {
        // Acquire: pairs with the last `replace`'s Release.
        let ptr = self.ptr.load(Ordering::Acquire);
        // SAFETY: `&mut self` means no reader holds the value, and `ptr` is
        // the live result of `Box::into_raw`, freed nowhere else.
        drop(unsafe { Box::from_raw(ptr) });
    }
}

/// An unpublished value, owned by the deferred callback that frees it.
struct Retired<T>(*mut T);

// SAFETY: the pointer is the unique owner of a `Box<T>` with `T: Send`; the
// callback that carries it to another thread is its only user.
unsafe impl<T: Send> Send for Retired<T> {}

impl<T> Drop for Retired<T> {
    fn drop(&mut self) {
        // SAFETY: `self.0` came from `Box::into_raw` and was unpublished by
        // `replace`; the grace period that ran before this callback means no
        // reader can still reach it, and only this `Retired` frees it.
        drop(unsafe { Box::from_raw(self.0) });
    }
}
