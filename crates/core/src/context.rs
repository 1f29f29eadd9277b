//! Debug-build checks of the execution context, standing in for the
//! kernel's `might_sleep()`, `non_block_start()`/`non_block_end()` and the
//! "this would wait for itself" deadlocks lockdep reports.
//!
//! All of it is per thread and compiled out of release builds (and of loom
//! models, whose threads are not OS threads): the functions stay callable
//! and do nothing.
//!
//! * **Non-block sections.** Callbacks of a non-blockable range, and the
//!   atomic-context callbacks (young, `change_pte`, `invalidate_range`), run
//!   inside one. [`might_sleep`] there is a bug in the callback and panics.
//! * **Open invalidations.** Every start pushes its range on a per-thread
//!   list until its end. Waiting for an invalidation epoch (interval
//!   `read_begin`, `remove`) while this thread has one open on the same
//!   address space can never finish, so it panics naming the rule instead of
//!   hanging.

#[cfg(all(debug_assertions, not(mmun_loom)))]
mod imp {
    use std::cell::{Cell, RefCell};

    use crate::Event;

    #[derive(Clone, Copy)]
    pub(super) struct Open {
        pub(super) id: u64,
        pub(super) subscriptions: usize,
        pub(super) start: u64,
        pub(super) end: u64,
        pub(super) event: Event,
    }

    thread_local! {
        pub(super) static NON_BLOCK: Cell<u32> = const { Cell::new(0) };
        pub(super) static OPEN: RefCell<Vec<Open>> = const { RefCell::new(Vec::new()) };
        pub(super) static NEXT_ID: Cell<u64> = const { Cell::new(1) };
    }
}

/// Announces that the caller may sleep (`might_sleep()`).
///
/// # Panics
///
/// In debug builds, if called inside a non-blockable notifier callback:
/// such a callback must return `false`/[`WouldBlock`](crate::WouldBlock)
/// instead of sleeping.
#[inline]
#[track_caller]
pub fn might_sleep() {
    #[cfg(all(debug_assertions, not(mmun_loom)))]
    if imp::NON_BLOCK.with(|d| d.get()) > 0 && !std::thread::panicking() {
        panic!(
            "might_sleep(): a notifier callback may block only if mmu_notifier_range_blockable() \
             (this one runs in a non-blockable range or in atomic context)"
        );
    }
}

/// Whether the current thread is inside a non-blockable callback.
pub fn in_non_block() -> bool {
    #[cfg(all(debug_assertions, not(mmun_loom)))]
    {
        imp::NON_BLOCK.with(|d| d.get()) > 0
    }
    #[cfg(not(all(debug_assertions, not(mmun_loom))))]
    {
        false
    }
}

/// `non_block_start()` … `non_block_end()` as a guard; a no-op when
/// `active` is false.
#[must_use]
pub(crate) struct NonBlock {
    #[cfg(all(debug_assertions, not(mmun_loom)))]
    active: bool,
}

impl NonBlock {
    #[inline]
    pub(crate) fn enter(active: bool) -> NonBlock {
        #[cfg(all(debug_assertions, not(mmun_loom)))]
        {
            if active {
                imp::NON_BLOCK.with(|d| d.set(d.get() + 1));
            }
            NonBlock { active }
        }
        #[cfg(not(all(debug_assertions, not(mmun_loom))))]
        {
            let _ = active;
            NonBlock {}
        }
    }
}

impl Drop for NonBlock {
    #[inline]
    fn drop(&mut self) {
        #[cfg(all(debug_assertions, not(mmun_loom)))]
        if self.active {
            imp::NON_BLOCK.with(|d| d.set(d.get() - 1));
        }
    }
}

/// Records an invalidation this thread has started and not yet ended.
pub(crate) struct OpenInvalidation {
    /// The record's id, 0 for none.
    #[cfg(all(debug_assertions, not(mmun_loom)))]
    id: u64,
}

impl OpenInvalidation {
    /// No record: the address space has no subscriptions.
    #[inline]
    pub(crate) fn none() -> OpenInvalidation {
        OpenInvalidation {
            #[cfg(all(debug_assertions, not(mmun_loom)))]
            id: 0,
        }
    }

    #[inline]
    pub(crate) fn push(subscriptions: usize, range: &crate::Range<'_>) -> OpenInvalidation {
        #[cfg(all(debug_assertions, not(mmun_loom)))]
        {
            let id = imp::NEXT_ID.with(|n| {
                let id = n.get();
                n.set(id + 1);
                id
            });
            let open = imp::Open {
                id,
                subscriptions,
                start: range.start(),
                end: range.end(),
                event: range.event(),
            };
            // A thread past its TLS destructors (glibc releases its stack
            // after them, and a real-process primary invalidates that)
            // goes unrecorded: the checks then miss it, never misfire.
            match imp::OPEN.try_with(|o| o.borrow_mut().push(open)) {
                Ok(()) => OpenInvalidation { id },
                Err(_) => OpenInvalidation { id: 0 },
            }
        }
        #[cfg(not(all(debug_assertions, not(mmun_loom))))]
        {
            let _ = (subscriptions, range);
            OpenInvalidation {}
        }
    }

    /// Removes the record (idempotent).
    #[inline]
    pub(crate) fn pop(&mut self) {
        #[cfg(all(debug_assertions, not(mmun_loom)))]
        if self.id != 0 {
            let id = std::mem::replace(&mut self.id, 0);
            let _ = imp::OPEN.try_with(|o| o.borrow_mut().retain(|open| open.id != id));
        }
    }
}

impl Drop for OpenInvalidation {
    #[inline]
    fn drop(&mut self) {
        self.pop();
    }
}

/// Panics if this thread has an invalidation open on `subscriptions`, since
/// `what` is about to wait for that invalidation to end.
#[track_caller]
pub(crate) fn assert_not_waiting_on_self(subscriptions: usize, what: &str) {
    #[cfg(all(debug_assertions, not(mmun_loom)))]
    if !std::thread::panicking()
        && imp::OPEN
            .try_with(|o| o.borrow().iter().any(|x| x.subscriptions == subscriptions))
            .unwrap_or(false)
    {
        panic!(
            "{what} would wait for an invalidation of the same mm that this thread has open \
             (it must not be called from an invalidate callback or between start and end)"
        );
    }
    #[cfg(not(all(debug_assertions, not(mmun_loom))))]
    let _ = (subscriptions, what);
}

/// Whether this thread has a `Clear` or `Migrate` invalidation open on
/// `subscriptions` that covers `address` (the nesting `change_pte` relies on).
/// Always true when the checks are compiled out.
pub(crate) fn change_pte_is_nested(subscriptions: usize, address: u64) -> bool {
    #[cfg(all(debug_assertions, not(mmun_loom)))]
    {
        use crate::Event;
        imp::OPEN
            .try_with(|o| {
                o.borrow().iter().any(|x| {
                    x.subscriptions == subscriptions
                        && matches!(x.event, Event::Clear | Event::Migrate)
                        && x.start <= address
                        && address < x.end
                })
            })
            .unwrap_or(true)
    }
    #[cfg(not(all(debug_assertions, not(mmun_loom))))]
    {
        let _ = (subscriptions, address);
        true
    }
}
