//! An mmun extension, not in Linux: a primary that is not a page table
//! learns which intervals its notifiers cover, and when a thread is inside
//! the core's registration paths.
//!
//! The real-process backend (`mmun-linux`) needs both: interval notifiers'
//! ranges are what its userfaultfd safety net watches, and a libc hook that
//! fires while the same thread registers (an allocation inside registration
//! that makes `free()` trim the heap) must not start an invalidation that
//! would wait for locks this thread holds. The core API stays the same for
//! notifier users; only the primary builds its [`Mm`](crate::Mm) with
//! [`Mm::with_observer`](crate::Mm::with_observer).

use std::fmt;

/// Told about interval insertions and removals and about registration
/// paths of one address space. Never called from invalidation dispatch.
///
/// The calls run in the registering thread, outside every core lock except
/// where noted; they must not register or unregister on the same address
/// space.
pub trait MmObserver: Send + Sync {
    /// An interval notifier covering `[start, last]` was inserted (it is in
    /// the tree or queued to be).
    fn interval_inserted(&self, start: u64, last: u64);

    /// The interval notifier covering `[start, last]` was removed.
    fn interval_removed(&self, start: u64, last: u64);

    /// This thread enters (`true`) or leaves (`false`) a registration path:
    /// list or interval register/unregister/get/put, or any holder of the
    /// mmap write lock. In between it may hold core locks and allocate.
    /// Enter/leave nest and pair up.
    fn registration(&self, _entering: bool) {}
}

/// Calls [`MmObserver::registration`] with `true` now and `false` on drop.
pub(crate) struct RegistrationScope {
    observer: Option<&'static dyn MmObserver>,
}

impl RegistrationScope {
    #[inline]
    pub(crate) fn enter(observer: Option<&'static dyn MmObserver>) -> RegistrationScope {
        if let Some(observer) = observer {
            observer.registration(true);
        }
        RegistrationScope { observer }
    }
}

impl Drop for RegistrationScope {
    #[inline]
    fn drop(&mut self) {
        if let Some(observer) = self.observer {
            observer.registration(false);
        }
    }
}

impl fmt::Debug for RegistrationScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrationScope")
            .field("observed", &self.observer.is_some())
            .finish()
    }
}
