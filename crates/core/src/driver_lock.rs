//! The driver lock of `Documentation/mm/hmm.rst` as a type.
//!
//! Kernel counterpart: the `take_lock(driver->update)` … `release_lock`
//! pair that hmm.rst, `lib/test_hmm.c` (`dmirror->mutex`), nouveau
//! (`svmm->mutex`) and amdgpu (`adev->notifier_lock`) put around
//! `mmu_interval_read_retry` on the fault side and around
//! `mmu_interval_set_seq` in the `invalidate` callback. The protocol is
//! only correct if both calls happen *under that one lock*: it is what
//! orders `set_seq` before `read_retry` (or makes the invalidation wait and
//! zap what the fault programmed). [`DriverLock`] makes those the only two
//! ways in:
//!
//! | side | call | what it does |
//! |---|---|---|
//! | fault | [`DriverLock::lock_if_current`] | lock, then `read_retry`: the guard if no invalidation collided, else [`Retry`] with the lock released |
//! | invalidate | [`DriverLock::lock_for_invalidate`] | lock (or `try_lock` for a non-blockable range: `None` means return `false`), then `set_seq` |
//! | anything else | [`DriverLock::lock`] | a plain guard, for reads and for changes the driver makes outside the protocol |
//!
//! So `set_seq` cannot be forgotten, done before the lock or done after
//! unlocking, and a fault cannot program from a guard it got without the
//! retry check, as long as the driver goes through this type rather than
//! calling [`IntervalSub::set_seq`] itself (which stays public: it is the
//! C API).
//!
//! ```
//! use std::sync::Arc;
//! use mmun_core::driver_lock::{DriverLock, Retry};
//! use mmun_core::lockdep::LockClass;
//! use mmun_core::{Event, IntervalNotifier, IntervalNotifierOps, IntervalSub};
//! use mmun_core::{Invalidation, Mm, Range, Seq};
//!
//! static MIRROR_LOCK: LockClass = LockClass::new("mirror->lock");
//!
//! /// The device page table: page → frame.
//! struct Mirror { ptes: DriverLock<Vec<(u64, u64)>> }
//!
//! impl IntervalNotifierOps for Mirror {
//!     fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool {
//!         // Locked (or refused when it may not sleep), and set_seq done.
//!         let Some(mut ptes) = self.ptes.lock_for_invalidate(sub, range, cur_seq) else {
//!             return false;
//!         };
//!         ptes.retain(|&(page, _)| !range.overlaps(page, page + 0x1000));
//!         true
//!     }
//! }
//!
//! let mm = Mm::new();
//! let mirror = IntervalNotifier::insert(&mm, 0, 0x1000, Mirror {
//!     ptes: DriverLock::new(&MIRROR_LOCK, Vec::new()),
//! })?;
//! let walk_primary = |page: u64| page >> 12; // stands for hmm_range_fault
//! loop {
//!     let seq = mirror.read_begin();
//!     let pfn = walk_primary(0);                   // no driver lock held
//!     match mirror.ops().ptes.lock_if_current(&mirror, seq) {
//!         Ok(mut ptes) => { ptes.push((0, pfn)); break; }
//!         Err(Retry) => continue,                  // an invalidation collided
//!     }
//! }
//! assert_eq!(mirror.ops().ptes.lock().len(), 1);
//!
//! let lock = mm.mmap_read();
//! Invalidation::start(Range::new(&lock, Event::Unmap, 0, 0x1000)).end();
//! assert!(mirror.ops().ptes.lock().is_empty());
//! # Ok::<(), mmun_core::Error>(())
//! ```
//!
//! # Locking
//!
//! The lock is a [`lockdep::Mutex`](crate::lockdep::Mutex) of the class the
//! driver names, so holding it around `Invalidation::start` or `read_begin`
//! is reported as the deadlock it is (debug builds). Under `--cfg
//! mmun_loom` it is loom's mutex, so loom models explore the driver side
//! too.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use crate::lockdep::LockClass;
use crate::seq_word::IntervalSub;
use crate::{Range, Seq};

#[cfg(not(mmun_loom))]
type Inner<T> = crate::lockdep::Mutex<T>;
#[cfg(not(mmun_loom))]
type InnerGuard<'a, T> = crate::lockdep::MutexGuard<'a, T>;
#[cfg(mmun_loom)]
type Inner<T> = loom::sync::Mutex<T>;
#[cfg(mmun_loom)]
type InnerGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

/// A driver's lock around the state its secondary MMU programs and zaps
/// (see the module docs for the protocol it enforces).
pub struct DriverLock<T> {
    inner: Inner<T>,
    class: &'static LockClass,
}

/// [`DriverLock::lock_if_current`] found that an invalidation collided
/// with the walk since `read_begin`: walk again. The lock is not held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry;

impl fmt::Display for Retry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an invalidation collided with the walk: read_begin again")
    }
}

impl std::error::Error for Retry {}

/// Marker: the guard was taken by [`DriverLock::lock_if_current`].
#[derive(Debug)]
pub enum Current {}
/// Marker: the guard was taken by [`DriverLock::lock_for_invalidate`].
#[derive(Debug)]
pub enum Invalidating {}
/// Marker: the guard was taken by [`DriverLock::lock`].
#[derive(Debug)]
pub enum Plain {}

/// The held driver lock; `How` records which door it came through, so a
/// driver can demand a [`FaultGuard`] where it programs translations.
#[must_use = "the driver lock is released when the guard is dropped"]
pub struct DriverGuard<'a, T, How = Plain> {
    inner: InnerGuard<'a, T>,
    how: PhantomData<How>,
}

/// The lock, held after `read_retry` said the walk is still current: what
/// the walk found may be programmed.
pub type FaultGuard<'a, T> = DriverGuard<'a, T, Current>;

/// The lock, held inside an `invalidate` callback after `set_seq`: zap.
pub type InvalidateGuard<'a, T> = DriverGuard<'a, T, Invalidating>;

impl<T> DriverLock<T> {
    /// A driver lock of lockdep class `class` around `value`.
    pub fn new(class: &'static LockClass, value: T) -> DriverLock<T> {
        DriverLock {
            #[cfg(not(mmun_loom))]
            inner: crate::lockdep::Mutex::new(class, value),
            #[cfg(mmun_loom)]
            inner: loom::sync::Mutex::new(value),
            class,
        }
    }

    /// The fault side: takes the lock and checks
    /// [`read_retry`](IntervalSub::read_retry)`(seq)` under it. `Ok` if no
    /// invalidation reached `sub` since `read_begin` returned `seq` (and
    /// none can until the guard drops: an invalidation waits for the lock
    /// and then zaps what was programmed); `Err(Retry)` otherwise.
    ///
    /// # Panics
    ///
    /// In debug builds, in a non-blockable callback (it may sleep), or on a
    /// lock-order cycle (see [`lockdep`](crate::lockdep)).
    #[track_caller]
    pub fn lock_if_current(&self, sub: &IntervalSub, seq: Seq) -> Result<FaultGuard<'_, T>, Retry> {
        let inner = self.lock_inner();
        if sub.read_retry(seq) {
            return Err(Retry);
        }
        Ok(DriverGuard::new(inner))
    }

    /// The invalidate side, for `invalidate(sub, range, cur_seq)`: takes the
    /// lock (waiting if `range` is blockable, trying once otherwise) and
    /// calls [`set_seq`](IntervalSub::set_seq)`(cur_seq)` under it.
    /// `None`: the range is not blockable and the lock is busy; the
    /// callback must return `false` without touching anything.
    #[track_caller]
    pub fn lock_for_invalidate(
        &self,
        sub: &IntervalSub,
        range: &Range<'_>,
        cur_seq: Seq,
    ) -> Option<InvalidateGuard<'_, T>> {
        let inner = self.lock_for_range(range)?;
        sub.set_seq(cur_seq);
        Some(DriverGuard::new(inner))
    }

    /// The lock for everything outside the retry protocol: reading the
    /// state, or changes the driver makes on its own (a migration it skips
    /// the notification of, a teardown).
    #[track_caller]
    pub fn lock(&self) -> DriverGuard<'_, T> {
        DriverGuard::new(self.lock_inner())
    }

    /// [`DriverLock::lock`] if the lock is free.
    pub fn try_lock(&self) -> Option<DriverGuard<'_, T>> {
        self.try_lock_inner().map(DriverGuard::new)
    }

    /// The lockdep class.
    pub fn class(&self) -> &'static LockClass {
        self.class
    }

    /// Blocking for a blockable range, one try otherwise.
    #[track_caller]
    fn lock_for_range(&self, range: &Range<'_>) -> Option<InnerGuard<'_, T>> {
        if range.is_blockable() {
            Some(self.lock_inner())
        } else {
            self.try_lock_inner()
        }
    }

    #[cfg(not(mmun_loom))]
    #[track_caller]
    fn lock_inner(&self) -> InnerGuard<'_, T> {
        self.inner.lock()
    }

    #[cfg(not(mmun_loom))]
    fn try_lock_inner(&self) -> Option<InnerGuard<'_, T>> {
        self.inner.try_lock()
    }

    #[cfg(mmun_loom)]
    fn lock_inner(&self) -> InnerGuard<'_, T> {
        // No driver code panics under the lock in the models.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[cfg(mmun_loom)]
    fn try_lock_inner(&self) -> Option<InnerGuard<'_, T>> {
        self.inner.try_lock().ok()
    }
}

#[cfg(feature = "test-hooks")]
impl<T> DriverLock<T> {
    /// **Broken on purpose** (feature `test-hooks`): what
    /// [`DriverLock::lock_for_invalidate`] does without `set_seq`, so tests
    /// and `mmun stress --inject no-set-seq` can show the bug is caught.
    #[doc(hidden)]
    #[track_caller]
    pub fn lock_for_invalidate_without_set_seq(
        &self,
        range: &Range<'_>,
    ) -> Option<InvalidateGuard<'_, T>> {
        self.lock_for_range(range).map(DriverGuard::new)
    }

    /// **Broken on purpose** (feature `test-hooks`): a fault guard taken
    /// without `read_retry`.
    #[doc(hidden)]
    #[track_caller]
    pub fn lock_unchecked(&self) -> FaultGuard<'_, T> {
        DriverGuard::new(self.lock_inner())
    }
}

impl<'a, T, How> DriverGuard<'a, T, How> {
    fn new(inner: InnerGuard<'a, T>) -> Self {
        DriverGuard {
            inner,
            how: PhantomData,
        }
    }
}

impl<T, How> Deref for DriverGuard<'_, T, How> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T, How> DerefMut for DriverGuard<'_, T, How> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: fmt::Debug, How> fmt::Debug for DriverGuard<'_, T, How> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.inner, f)
    }
}

impl<T> fmt::Debug for DriverLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DriverLock")
            .field("class", &self.class.name())
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, mmun_loom))]
mod loom_tests;
