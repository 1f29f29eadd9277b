//! The global domain's part of the fork protocol (`crate::fork`).
//!
//! A fork child has one thread, the forking one, and a copy of the parent's
//! memory as the parent's threads left it at the fork instant. For the
//! global domain that means: the queue lock, the grace-period turn and the
//! slot registry may be held by threads that do not exist in the child;
//! the `mmun-srcu` worker is marked spawned but is not there, its batch
//! marked running; and the slots of the parent's other threads, some with a
//! read section open, count as active readers that will never leave.
//!
//! [`lock`] (in the parent, before the fork) takes the three locks, so no
//! other thread is inside an update of what they protect at the fork
//! instant. Dropping the returned [`Held`] (after the fork, in the parent)
//! releases them. [`Held::reset_in_child`] (in the child) repairs the state
//! through the held guards, then releases them: a std mutex is a futex word
//! that the thread holding the guard unlocks like any other (in the child,
//! that thread is the forking one, which took them).
//!
//! Lock order: the callback queue, then the grace-period turn, then the
//! slot registry. Nowhere else is one of them taken while another is held
//! (`run_batch` drops the queue lock before its grace period, and the turn
//! is a flag, not a lock held across the grace period), so this order
//! cannot deadlock with the domain's own code. None of them is held for
//! long: the queue lock never across a callback, the turn's lock only to
//! test and set the flag, the registry lock only for a scan or a claim.

use super::deferred::Callbacks;
use super::srcu::SlotRef;
use super::{global, local};
use crate::sync::MutexGuard;

/// The global domain's locks, held across a fork by the forking thread.
pub(crate) struct Held {
    callbacks: MutexGuard<'static, Callbacks>,
    gp_running: MutexGuard<'static, bool>,
    slots: MutexGuard<'static, Vec<SlotRef>>,
}

/// Takes the global domain's locks, in the order above.
pub(crate) fn lock() -> Held {
    let inner = &*global().inner;
    let callbacks = inner.deferred.callbacks.lock();
    let gp_running = inner.gp_running.lock();
    let slots = inner.slots.lock();
    Held {
        callbacks,
        gp_running,
        slots,
    }
}

impl Held {
    /// In the child: the parent's grace period, worker and readers are gone;
    /// make the state say so, then release the locks (module docs).
    pub(crate) fn reset_in_child(self) {
        let Self {
            mut callbacks,
            mut gp_running,
            slots,
        } = self;
        let inner = &*global().inner;
        // A grace period that was running belonged to a thread of the
        // parent; a later one in the child starts afresh (the flip count
        // is a single word, consistent at any instant).
        *gp_running = false;
        if !local::is_worker_of(inner.id) {
            callbacks.forget_parent_work();
        }
        let (own, shared) = local::global_own_slot();
        inner.free_dead_readers(&slots, own, shared > 0);
    }
}
