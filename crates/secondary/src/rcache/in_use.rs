//! A use of a registration in flight, which invalidation waits for.
//!
//! The one place of `mmun-secondary` with `unsafe`: a use holds its
//! registration by a counted raw pointer, so that taking one costs a single
//! read-modify-write (the count) instead of a reference count on top; and
//! a drain sleeps on the count's address until the last use wakes it
//! (`parking_lot_core`, what `parking_lot`'s own locks sleep on: no lock or
//! condition variable per registration, nothing to keep alive for the
//! waker).
#![allow(unsafe_code)]

use std::fmt;
use std::marker::PhantomData;
use std::ptr::NonNull;

use super::backend::{Primary, Registrar};
use super::registration::Registration;

/// A use in flight: while it exists, no invalidation of the registration
/// completes, so the primary still maps every registered page as it was
/// registered, and the registrar's handle stays registered.
///
/// So the thread holding it must not change those pages itself (unmap,
/// remap, free them): the invalidation would wait for this use, in the
/// same thread, for ever.
///
/// The use itself keeps the registration's memory alive, not whatever it
/// was found through (a [`RegHandle`](super::RegHandle), an index snapshot): a registration
/// leaves the index only killed, and the teardown that drops the index's
/// reference first waits for the uses in flight (`Rcache::finish`, and the
/// invalidation callback's drain). So an [`Rcache::acquire`](super::Rcache::acquire)
/// use needs no handle and may be ended on another thread.
pub struct InUse<'h, P: Primary, R: Registrar<P>> {
    reg: NonNull<Registration<P, R>>,
    /// The registration's acknowledged callbacks when the handle was
    /// looked up.
    acks: u64,
    /// Borrows what it was entered through (a handle, or the cache).
    _from: PhantomData<&'h Registration<P, R>>,
}

// SAFETY: an `InUse` is a counted reference to a `Registration`, which is
// `Sync` (atomics and immutable fields); ending the use from another
// thread is one atomic decrement.
unsafe impl<P: Primary, R: Registrar<P>> Send for InUse<'_, P, R> where Registration<P, R>: Sync {}
// SAFETY: `&InUse` only reads the registration, which is `Sync`.
unsafe impl<P: Primary, R: Registrar<P>> Sync for InUse<'_, P, R> where Registration<P, R>: Sync {}

impl<'h, P: Primary, R: Registrar<P>> InUse<'h, P, R> {
    /// A use of `reg`, entered (its `users` counts this use) while it was
    /// live, looked up when it had `acks`.
    #[inline(always)]
    pub(super) fn new(reg: &Registration<P, R>, acks: u64) -> Self {
        InUse {
            reg: NonNull::from(reg),
            acks,
            _from: PhantomData,
        }
    }

    /// The same use, borrowing `'a` instead of what it was entered
    /// through: sound for a use entered on a live registration (see the
    /// type's docs), which is what every `enter` that succeeds is unless an
    /// injected bug handed out a dead one.
    pub(super) fn rebind<'a>(self) -> InUse<'a, P, R> {
        let this = std::mem::ManuallyDrop::new(self);
        InUse {
            reg: this.reg,
            acks: this.acks,
            _from: PhantomData,
        }
    }

    #[inline(always)]
    pub(super) fn reg(&self) -> &Registration<P, R> {
        // SAFETY: this use is counted in the registration's `users`, and
        // the registration was live when it was entered; no teardown drops
        // the last reference to a registration before its uses drained
        // (see the type's docs), so it outlives this use.
        unsafe { self.reg.as_ref() }
    }

    /// What the registrar returned: valid for the device until this use
    /// is dropped.
    #[inline]
    pub fn registration(&self) -> &R::Handle {
        self.reg()
            .held()
            .expect("a handed-out registration was registered")
    }

    /// First byte of the registered range.
    pub fn start(&self) -> u64 {
        self.reg().start
    }

    /// One past the last byte of the registered range.
    pub fn end(&self) -> u64 {
        self.reg().end
    }

    /// Whether an invalidation callback of the registration returned
    /// since the handle was looked up — which a correct cache never lets
    /// happen while a use is in flight: the direct check of the "no use
    /// outlives the callback" rule (see the module docs).
    pub fn outlived_invalidation(&self) -> bool {
        self.reg().acks() != self.acks
    }
}

impl<P: Primary, R: Registrar<P>> Drop for InUse<'_, P, R> {
    #[inline]
    fn drop(&mut self) {
        self.reg().leave();
    }
}

impl<P: Primary, R: Registrar<P>> fmt::Debug for InUse<'_, P, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InUse")
            .field("id", &self.reg().id)
            .finish_non_exhaustive()
    }
}

/// Sleeps on `key` while `still_used()` holds; re-checked under the
/// sleepers' queue lock, so a [`wake_drains`] between the caller's last
/// check and the sleep is not lost.
pub(super) fn sleep_while_used(key: usize, still_used: impl Fn() -> bool) {
    // SAFETY: `still_used` only loads an atomic, and the two no-op
    // callbacks do nothing: none panics or calls into parking_lot, which is
    // all `park` asks of them. The key is an address the caller owns while
    // it sleeps, so no other kind of sleeper shares it.
    unsafe {
        parking_lot_core::park(
            key,
            still_used,
            || {},
            |_, _| {},
            parking_lot_core::DEFAULT_PARK_TOKEN,
            None,
        );
    }
}

/// Wakes every drain sleeping on `key`. The key is only hashed, never
/// dereferenced, so the registration it names may already be gone.
pub(super) fn wake_drains(key: usize) {
    // SAFETY: called from ordinary thread context (a use ending), never
    // from a signal handler, which is `unpark_all`'s one requirement.
    unsafe {
        parking_lot_core::unpark_all(key, parking_lot_core::DEFAULT_UNPARK_TOKEN);
    }
}
