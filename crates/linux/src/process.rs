//! The process's own address space: one [`Mm`] per process image.
//!
//! It is created on first use and published through an atomic pointer, so
//! that a hook finds it (or finds that nobody subscribed) with one load and
//! no lock. A fork child replaces it with a fresh one (Linux's child `mm`
//! starts without notifiers); the parent's object stays in the child's
//! memory, unreachable from the hooks, and is deliberately leaked: its
//! locks may be held by threads that do not exist in the child.

use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, Ordering};

use mmun_core::{Mm, MmObserver};

use crate::{dispatch, net, thread};

/// A leaked `Arc<Mm>`, or null before first use (and in a fresh fork child).
static CURRENT: AtomicPtr<Arc<Mm>> = AtomicPtr::new(std::ptr::null_mut());

/// The calling process's address space. Interval and list notifiers
/// registered on it see what happens to the process's real memory once
/// [`install`](crate::install) ran (or the preload library is loaded).
///
/// ```
/// let mm = mmun_linux::process_mm();
/// assert!(std::sync::Arc::ptr_eq(mm, mmun_linux::process_mm()));
/// ```
pub fn process_mm() -> &'static Arc<Mm> {
    let current = CURRENT.load(Ordering::Acquire);
    if !current.is_null() {
        // SAFETY: non-null values are leaked boxes, never freed.
        return unsafe { &*current };
    }
    let fresh = Box::into_raw(Box::new(Mm::with_observer(&OBSERVER)));
    match CURRENT.compare_exchange(
        std::ptr::null_mut(),
        fresh,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        // SAFETY: we just published our leaked box.
        Ok(_) => unsafe { &*fresh },
        Err(winner) => {
            // SAFETY: `fresh` was never published; we still own it.
            drop(unsafe { Box::from_raw(fresh) });
            // SAFETY: published values are leaked boxes, never freed.
            unsafe { &*winner }
        }
    }
}

/// The address space if it exists and ever had a subscriber: what a hook
/// asks first. One load, no lock, no allocation.
#[inline]
pub fn subscribed() -> Option<&'static Mm> {
    let current = CURRENT.load(Ordering::Acquire);
    if current.is_null() {
        return None;
    }
    // SAFETY: non-null values are leaked boxes, never freed.
    let mm: &'static Mm = unsafe { &*current };
    mm.has_notifiers().then_some(mm)
}

/// In a fork child: forget the parent's address space (the next
/// [`process_mm`] makes a fresh one).
pub fn reset_in_child() {
    CURRENT.store(std::ptr::null_mut(), Ordering::Release);
}

/// Feeds interval ranges to the userfaultfd net and registration scopes to
/// the per-thread state.
struct Observer;

static OBSERVER: Observer = Observer;

impl MmObserver for Observer {
    fn interval_inserted(&self, start: u64, last: u64) {
        net::watch(start, last.saturating_add(1));
    }

    fn interval_removed(&self, start: u64, last: u64) {
        net::unwatch(start, last.saturating_add(1));
    }

    fn registration(&self, entering: bool) {
        if thread::registration(entering) {
            dispatch::deliver_deferred();
        }
    }
}
