//! The driver state of an interval notifier, owned by its handle and
//! reached by the tree through a raw pointer.
//!
//! This is the kernel's arrangement: `struct mmu_interval_notifier` lives
//! in the driver's structure and the interval tree links to it, and
//! `mmu_interval_notifier_remove` waits until no callback can be running
//! before the driver may free it. Keeping the state out of a reference
//! count is what lets a subscription cost one tree slot and one seq word
//! (`DESIGN.md`, "Memory per interval notifier").
//!
//! The rule every `unsafe` here rests on: an [`OpsPtr`] is dereferenced
//! only while the epoch in which it was collected from the tree is still
//! open (proved by borrowing that epoch's guard); and an [`OpsBox`] is freed
//! only with an [`Unsubscribed`] token, which `itree_remove` hands out once
//! the node is out of the tree and that epoch is over.

#![allow(unsafe_code)]

use std::fmt;
use std::ptr::NonNull;

use super::itree::EpochGuard;
use crate::ops::IntervalNotifierOps;

/// Proof that a subscription is out of the tree and that no callback
/// collected before its removal can still be running.
#[derive(Debug)]
pub(crate) struct Unsubscribed(());

impl Unsubscribed {
    /// Only `itree_remove` may call this, after it waited out the epoch.
    pub(crate) fn after_waiting_out_callbacks() -> Unsubscribed {
        Unsubscribed(())
    }
}

/// Heap-allocated driver state, owned like a `Box<O>` but without the
/// uniqueness a `Box` claims, because the tree holds a pointer to it too.
///
/// Dropping an `OpsBox` leaks the state: that is what happens if removal
/// panics, when the tree may still point at it. [`OpsBox::free`] is the
/// only way to free it.
pub(crate) struct OpsBox<O: IntervalNotifierOps> {
    /// From `Box::into_raw`; valid until `free`.
    ptr: NonNull<O>,
}

// SAFETY: `OpsBox<O>` owns an `O` like `Box<O>` does, and `O: Send + Sync`.
unsafe impl<O: IntervalNotifierOps> Send for OpsBox<O> {}
// SAFETY: shared access only hands out `&O`, and `O: Sync`.
unsafe impl<O: IntervalNotifierOps> Sync for OpsBox<O> {}

impl<O: IntervalNotifierOps> OpsBox<O> {
    pub(crate) fn new(ops: O) -> OpsBox<O> {
        OpsBox {
            ptr: NonNull::from(Box::leak(Box::new(ops))),
        }
    }

    pub(crate) fn get(&self) -> &O {
        // SAFETY: `ptr` came from a leaked `Box` and is freed only by
        // `free(self)`, which consumes the `OpsBox`; until then it is valid
        // and only ever shared immutably.
        unsafe { self.ptr.as_ref() }
    }

    /// The pointer the tree keeps.
    pub(crate) fn erased(&self) -> OpsPtr {
        let erased: NonNull<dyn IntervalNotifierOps> = self.ptr;
        OpsPtr(erased)
    }

    /// Frees the state once the subscription is gone.
    pub(crate) fn free(self, _proof: Unsubscribed) {
        // SAFETY: `ptr` came from `Box::leak` and is freed only here, once.
        // The token says the node is out of the tree and every callback
        // that could have loaded the pointer has returned, so no
        // `OpsPtr::get` reference outlives this.
        drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
    }
}

impl<O: IntervalNotifierOps + fmt::Debug> fmt::Debug for OpsBox<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.get(), f)
    }
}

/// The tree's pointer to a subscription's driver state.
#[derive(Clone, Copy)]
pub(crate) struct OpsPtr(NonNull<dyn IntervalNotifierOps>);

// SAFETY: the pointee is `Send + Sync` (a supertrait of
// `IntervalNotifierOps`), and the pointer itself is only read.
unsafe impl Send for OpsPtr {}
// SAFETY: as above.
unsafe impl Sync for OpsPtr {}

impl OpsPtr {
    /// The driver state, for as long as `epoch` (the epoch in which the
    /// caller collected this pointer from the tree) stays open.
    pub(crate) fn get<'e>(self, _epoch: &'e EpochGuard<'_>) -> &'e dyn IntervalNotifierOps {
        // SAFETY: the pointer was collected from a linked node while
        // `epoch` was opened, and an `EpochGuard` lives only between a start
        // and the point where its range is counted for `end`; the epoch
        // closes no earlier. The owner's removal waits for that (or defers
        // to it) before it gets the `Unsubscribed` token that frees the
        // state, so the state outlives `'e`.
        unsafe { self.0.as_ref() }
    }
}

impl fmt::Debug for OpsPtr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OpsPtr")
    }
}
