//! The address space, as far as the notifier subsystem sees it.
//!
//! Kernel counterpart: the parts of `struct mm_struct` that
//! `mm/mmu_notifier.c` touches: `notifier_subscriptions`, `mm_users`,
//! `mmap_lock`, and the locks `mm_take_all_locks()` takes.
//!
//! # Locks
//!
//! * `mmap_lock`: the kernel's mmap lock. Registration holds it for write.
//! * `all_locks`: one reader-writer lock standing in for everything
//!   `mm_take_all_locks()` takes (VMA locks, `i_mmap_rwsem`, `anon_vma`
//!   locks). Paths that invalidate without the mmap lock (reclaim,
//!   migration, truncate) hold it for read; registration holds it for write.
//!
//! Every invalidation must show one of these held (a [`HeldMmLock`]) and
//! keep it until its end, so registration, which takes both for write, never
//! lands between a start and its end: a new notifier never sees an end
//! without a start (the rule `mm_take_all_locks()` enforces in Linux).
//!
//! Lock order: `mmap_lock` → `all_locks` → the subscriptions' internal lock.
//! No internal lock is ever held across a callback.

use std::fmt;
use std::sync::OnceLock;

use crate::observer::{MmObserver, RegistrationScope};
use crate::subscriptions::Subscriptions;
use crate::sync::atomic::{AtomicUsize, Ordering};
use crate::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use crate::warn::Warning;

/// An address space that notifiers can subscribe to (`struct mm_struct`).
///
/// `Arc<Mm>` plays the part of `mmgrab`/`mmdrop` (`mm_count`); the
/// [`Mm::users`] count plays `mm_users`, which drops to 0 at [`Mm::exit`].
pub struct Mm {
    /// Published once, on the first registration of either kind
    /// (`smp_store_release` in `__mmu_notifier_register`); never replaced.
    subscriptions: OnceLock<Arc<Subscriptions>>,
    /// `mm_users`: 1 while the address space is live, 0 once it exits.
    users: AtomicUsize,
    mmap_lock: RwLock<()>,
    all_locks: RwLock<()>,
    /// mmun extension: told about interval ranges and registration paths.
    observer: Option<&'static dyn MmObserver>,
}

impl Mm {
    /// A new, live address space with no subscriptions.
    pub fn new() -> Arc<Mm> {
        Self::build(None)
    }

    /// mmun extension: a new address space whose interval insertions,
    /// removals and registration paths are reported to `observer` (see
    /// [`MmObserver`]). Notifier users see no difference.
    pub fn with_observer(observer: &'static dyn MmObserver) -> Arc<Mm> {
        Self::build(Some(observer))
    }

    fn build(observer: Option<&'static dyn MmObserver>) -> Arc<Mm> {
        Arc::new(Mm {
            subscriptions: OnceLock::new(),
            users: AtomicUsize::new(1),
            mmap_lock: RwLock::new(()),
            all_locks: RwLock::new(()),
            observer,
        })
    }

    /// The observer given to [`Mm::with_observer`].
    #[inline]
    pub(crate) fn observer(&self) -> Option<&'static dyn MmObserver> {
        self.observer
    }

    /// Marks this thread as inside a registration path until the scope drops.
    #[inline]
    pub(crate) fn registration_scope(&self) -> RegistrationScope {
        RegistrationScope::enter(self.observer)
    }

    /// `mm_has_notifiers()`: whether anything ever subscribed. One atomic
    /// load, no lock; stays true once true, as in Linux.
    #[inline]
    pub fn has_notifiers(&self) -> bool {
        self.subscriptions().is_some()
    }

    /// `mm_users`: 1 while live, 0 after [`Mm::exit`].
    pub fn users(&self) -> usize {
        self.users.load(Ordering::Acquire)
    }

    /// Whether the address space has not exited yet.
    pub fn is_live(&self) -> bool {
        self.users() > 0
    }

    /// Takes the mmap lock for read (`mmap_read_lock`).
    #[inline]
    pub fn mmap_read(&self) -> MmapReadGuard<'_> {
        MmapReadGuard {
            mm: self,
            _guard: self.mmap_lock.read(),
        }
    }

    /// Takes the mmap lock for write (`mmap_write_lock`). The guard keeps
    /// the `Arc` it was taken through: the `*_locked` registrations take
    /// their address space from it.
    pub fn mmap_write(self: &Arc<Self>) -> MmapWriteGuard<'_> {
        let scope = self.registration_scope();
        MmapWriteGuard {
            mm: self,
            _guard: self.mmap_lock.write(),
            _scope: scope,
        }
    }

    /// Takes, for read, the stand-in for the rmap and VMA locks, which
    /// invalidating paths that do not hold the mmap lock hold instead.
    #[inline]
    pub fn rmap_lock(&self) -> RmapGuard<'_> {
        RmapGuard {
            mm: self,
            _guard: self.all_locks.read(),
        }
    }

    /// The last user is gone (`mmput` → `exit_mmap`): `mm_users` drops to 0
    /// and the notifiers are released (`mmu_notifier_release`). The caller
    /// then tears down the mappings with [`Event::Unmap`](crate::Event)
    /// over `[0, u64::MAX)`, which only interval notifiers still see.
    ///
    /// Returns `false`, doing nothing, if the address space had already
    /// exited.
    pub fn exit(&self) -> bool {
        if self.users.swap(0, Ordering::AcqRel) == 0 {
            return false;
        }
        if let Some(subscriptions) = self.subscriptions() {
            subscriptions.release(self);
        }
        true
    }

    /// The WARNs the subsystem raised on this address space, oldest first
    /// (the first 64; later ones are only logged). The first of each kind
    /// is also logged through `tracing` (target `mmun`).
    pub fn warnings(&self) -> Vec<Warning> {
        self.subscriptions()
            .map(|s| s.warnings())
            .unwrap_or_default()
    }

    /// The per-address-space notifier state, if any registration happened.
    #[inline]
    pub(crate) fn subscriptions(&self) -> Option<&Subscriptions> {
        if cfg!(feature = "disabled") {
            return None;
        }
        self.subscriptions.get().map(|s| &**s)
    }

    /// Panics naming `what` if this thread has an invalidation of this
    /// address space open: registration could never take its locks.
    #[track_caller]
    pub(crate) fn assert_not_registering_inside(&self, what: &str) {
        if let Some(subscriptions) = self.subscriptions() {
            crate::context::assert_not_registering_inside(subscriptions.id(), what);
        }
    }

    /// Creates the subscriptions on first use. Called with the mmap write
    /// lock held, which keeps the pointer from changing meanwhile.
    pub(crate) fn subscriptions_or_init(&self, _held: &MmapWriteGuard<'_>) -> &Subscriptions {
        self.subscriptions
            .get_or_init(|| Arc::new(Subscriptions::new()))
    }

    /// `mm_take_all_locks()`: waits until no invalidation that holds the
    /// rmap stand-in is in flight, and keeps new ones out.
    pub(crate) fn take_all_locks(&self, _held: &MmapWriteGuard<'_>) -> RwLockWriteGuard<'_, ()> {
        self.all_locks.write()
    }

    /// `mmu_notifier_clear_flush_young`: whether any notifier saw an access
    /// in `[start, end)`, clearing and flushing it; every notifier is asked.
    #[inline]
    pub fn clear_flush_young(&self, start: u64, end: u64) -> bool {
        self.subscriptions()
            .is_some_and(|s| s.hlist().clear_young(self, start, end, true))
    }

    /// `mmu_notifier_clear_young`: as `clear_flush_young`, flush optional.
    #[inline]
    pub fn clear_young(&self, start: u64, end: u64) -> bool {
        self.subscriptions()
            .is_some_and(|s| s.hlist().clear_young(self, start, end, false))
    }

    /// `mmu_notifier_test_young`: whether a notifier saw an access to the
    /// page at `address`; stops at the first that did. Clears nothing.
    #[inline]
    pub fn test_young(&self, address: u64) -> bool {
        self.subscriptions()
            .is_some_and(|s| s.hlist().test_young(self, address))
    }

    /// `mmu_notifier_change_pte` (`pte` is a [`PteValue`](crate::PteValue)),
    /// reached only through
    /// [`Invalidation::change_pte`]. Linux calls it inside a `Clear` or
    /// `Migrate` invalidation; another event records a warning.
    #[inline]
    pub(crate) fn change_pte(&self, address: u64, pte: u64) {
        if let Some(s) = self.subscriptions() {
            s.hlist().change_pte(self, address, pte);
        }
    }

    /// `mmu_notifier_invalidate_range`: flush secondary TLBs for
    /// `[start, end)` (v6.5; called under the page-table lock).
    #[inline]
    pub fn invalidate_range(&self, start: u64, end: u64) {
        if let Some(s) = self.subscriptions() {
            s.hlist().invalidate_range(self, start, end);
        }
    }

    /// Test hook (feature `test-hooks`): sets the interval sequence
    /// counter, to exercise wrap-around. It can corrupt the protocol, so
    /// only tests get it.
    #[doc(hidden)]
    #[cfg(feature = "test-hooks")]
    pub fn set_invalidate_seq_for_test(self: &Arc<Self>, seq: u64) {
        let guard = self.mmap_write();
        self.subscriptions_or_init(&guard).set_seq_for_test(seq);
    }
}

impl fmt::Debug for Mm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mm")
            .field("users", &self.users())
            .field("has_notifiers", &self.has_notifiers())
            .finish_non_exhaustive()
    }
}

/// Proof that the caller holds a lock of this address space that keeps
/// registration out: the mmap lock (either side) or the rmap stand-in.
/// Every invalidation's range is made from one ([`Range::new`](crate::Range::new))
/// and borrows it until the invalidation ends, so an invalidation under no
/// lock, or with a range of another address space than the lock's, does
/// not compile.
pub trait HeldMmLock: sealed::Sealed {
    /// The address space whose lock is held.
    fn mm(&self) -> &Mm;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::MmapReadGuard<'_> {}
    impl Sealed for super::MmapWriteGuard<'_> {}
    impl Sealed for super::RmapGuard<'_> {}
}

/// The mmap lock, held for read.
#[must_use = "the lock is released when the guard is dropped"]
pub struct MmapReadGuard<'a> {
    mm: &'a Mm,
    _guard: RwLockReadGuard<'a, ()>,
}

/// The mmap lock, held for write. The `*_locked` registration variants take
/// it as evidence.
#[must_use = "the lock is released when the guard is dropped"]
pub struct MmapWriteGuard<'a> {
    mm: &'a Arc<Mm>,
    _guard: RwLockWriteGuard<'a, ()>,
    /// Dropped after the lock (fields drop in order): the observer hears
    /// "left" only once the lock is free.
    _scope: RegistrationScope,
}

/// The rmap/VMA-lock stand-in, held for read.
#[must_use = "the lock is released when the guard is dropped"]
pub struct RmapGuard<'a> {
    mm: &'a Mm,
    _guard: RwLockReadGuard<'a, ()>,
}

macro_rules! held_lock {
    ($guard:ident) => {
        impl HeldMmLock for $guard<'_> {
            #[inline]
            fn mm(&self) -> &Mm {
                self.mm
            }
        }

        impl fmt::Debug for $guard<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($guard)).finish_non_exhaustive()
            }
        }
    };
}

held_lock!(MmapReadGuard);
held_lock!(MmapWriteGuard);
held_lock!(RmapGuard);

impl MmapWriteGuard<'_> {
    /// The address space whose mmap lock is held, as the registrations
    /// made under it keep it.
    pub fn mm_arc(&self) -> &Arc<Mm> {
        self.mm
    }
}
