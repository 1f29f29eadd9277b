//! Per-thread checks of the execution context, standing in for the
//! kernel's `might_sleep()`, `non_block_start()`/`non_block_end()` and the
//! "this would wait for itself" deadlocks lockdep reports. Loom models,
//! whose threads are not OS threads, compile all of it out.
//!
//! * **Non-block sections** (debug builds only, like `might_sleep()` in a
//!   production kernel). Callbacks of a non-blockable range, and the
//!   atomic-context callbacks (young, `change_pte`, `invalidate_range`), run
//!   inside one. [`might_sleep`] there is a bug in the callback and panics.
//! * **Open invalidations** (every build: the check is one thread-local
//!   scan of a few words). Every start pushes its range on a per-thread
//!   stack until its end. Waiting for an invalidation epoch (interval
//!   `read_begin`, `remove`) or taking the registration locks while this
//!   thread has one open on the same address space can never finish, so it
//!   panics naming the rule instead of hanging. The stack is a fixed array
//!   in a destructor-less thread-local: pushing never allocates, also on a
//!   thread's first start, so the dispatch path stays hook-safe. Past
//!   16 nested invalidations on one thread the deeper ones go
//!   unrecorded, which only makes the checks miss them, never misfire.

use crate::event::Event;

#[cfg(all(debug_assertions, not(mmun_loom)))]
mod imp {
    use std::cell::Cell;

    thread_local! {
        pub(super) static NON_BLOCK: Cell<u32> = const { Cell::new(0) };
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
    #[cfg(not(mmun_loom))]
    id: u64,
}

impl OpenInvalidation {
    /// No record: the address space has no subscriptions.
    #[inline]
    pub(crate) fn none() -> OpenInvalidation {
        OpenInvalidation {
            #[cfg(not(mmun_loom))]
            id: 0,
        }
    }

    #[inline]
    pub(crate) fn push(subscriptions: usize, start: u64, end: u64, event: u8) -> OpenInvalidation {
        #[cfg(not(mmun_loom))]
        {
            OpenInvalidation {
                id: open::push(open::Open {
                    subscriptions,
                    start,
                    end,
                    event,
                }),
            }
        }
        #[cfg(mmun_loom)]
        {
            let _ = (subscriptions, start, end, event);
            OpenInvalidation {}
        }
    }

    /// Removes the record (idempotent).
    #[inline]
    pub(crate) fn pop(&mut self) {
        #[cfg(not(mmun_loom))]
        if self.id != 0 {
            open::pop(std::mem::replace(&mut self.id, 0));
        }
    }
}

impl Drop for OpenInvalidation {
    #[inline]
    fn drop(&mut self) {
        self.pop();
    }
}

/// Whether this thread has an invalidation open on `subscriptions`, which
/// a wait for the running invalidations would then wait for.
pub(crate) fn would_wait_on_self(subscriptions: usize) -> bool {
    #[cfg(not(mmun_loom))]
    {
        open::any(|x| x.subscriptions == subscriptions)
    }
    #[cfg(mmun_loom)]
    {
        let _ = subscriptions;
        false
    }
}

/// Panics if this thread has an invalidation open on `subscriptions`, since
/// `what` is about to wait for that invalidation to end.
#[track_caller]
pub(crate) fn assert_not_waiting_on_self(subscriptions: usize, what: &str) {
    #[cfg(not(mmun_loom))]
    if !std::thread::panicking() && would_wait_on_self(subscriptions) {
        panic!(
            "{what} would wait for an invalidation of the same mm that this thread has open \
             (it must not be called from an invalidate callback or between start and end)"
        );
    }
    #[cfg(mmun_loom)]
    let _ = (subscriptions, what);
}

/// Panics if this thread has an invalidation open on `subscriptions`:
/// registration takes every lock of the address space for write, and the
/// open invalidation holds one of them until its end.
#[track_caller]
pub(crate) fn assert_not_registering_inside(subscriptions: usize, what: &str) {
    #[cfg(not(mmun_loom))]
    if !std::thread::panicking() && open::any(|x| x.subscriptions == subscriptions) {
        panic!(
            "{what} takes every lock of the mm, which an invalidation this thread has open \
             holds until its end (it must not be called from a notifier callback or between \
             start and end)"
        );
    }
    #[cfg(mmun_loom)]
    let _ = (subscriptions, what);
}

/// Whether this thread has a `Clear` or `Migrate` invalidation open on
/// `subscriptions` that covers `address` (the nesting `change_pte` relies on).
/// Always true under loom, and for nesting deeper than [`open::DEPTH`].
pub(crate) fn change_pte_is_nested(subscriptions: usize, address: u64) -> bool {
    #[cfg(not(mmun_loom))]
    {
        open::overflowed()
            || open::any(|x| {
                x.subscriptions == subscriptions
                    && (x.event == Event::Clear as u8 || x.event == Event::Migrate as u8)
                    && x.start <= address
                    && address < x.end
            })
    }
    #[cfg(mmun_loom)]
    {
        let _ = (subscriptions, address);
        true
    }
}

/// The per-thread stack of open invalidations: a fixed array in a
/// thread-local without a destructor, so that no access ever allocates or
/// registers a thread-exit hook.
///
/// A record's id is its position plus one, so a push is a few stores and the
/// usual pop (the top record, ends nested in their starts) one compare and
/// one store. A record ended out of order is marked dead (`subscriptions`
/// 0, which matches no address space) and stays until the records above it
/// are gone; popping the top also drops the dead ones right below it. A
/// position is thus reused only once its record is popped or dead, so a
/// live record's id never names another record.
#[cfg(not(mmun_loom))]
pub(crate) mod open {
    use std::cell::Cell;

    /// How many nested open invalidations one thread records.
    pub(crate) const DEPTH: usize = 16;

    /// The fields are not in the range's order on purpose: with `start`
    /// and `end` side by side, as in `Range`, the compiler copied both with
    /// one 16-byte load from the range the caller had just stored as two
    /// 8-byte words, a load that store forwarding cannot serve: it stalled
    /// until the stores retired, a quarter of a list-notifier start+end.
    #[derive(Clone, Copy)]
    #[repr(C)]
    pub(crate) struct Open {
        pub(crate) start: u64,
        /// The address space's id; 0 once the record is dead.
        pub(crate) subscriptions: usize,
        pub(crate) end: u64,
        /// The `Event`'s discriminant: stored as the range holds it.
        pub(crate) event: u8,
    }

    const EMPTY: Open = Open {
        start: 0,
        subscriptions: 0,
        end: 0,
        event: 0,
    };

    struct Stack {
        len: Cell<usize>,
        /// Pushes that found the stack full and were not recorded.
        overflow: Cell<usize>,
        entries: [Cell<Open>; DEPTH],
    }

    thread_local! {
        static STACK: Stack = const {
            Stack {
                len: Cell::new(0),
                overflow: Cell::new(0),
                entries: [const { Cell::new(EMPTY) }; DEPTH],
            }
        };
    }

    /// The id of a push that found the stack full.
    const UNRECORDED: u64 = u64::MAX;

    /// Records `open` and returns its id (never 0).
    #[inline(always)]
    pub(crate) fn push(open: Open) -> u64 {
        STACK.with(|stack| {
            let len = stack.len.get();
            if len == DEPTH {
                stack.overflow.set(stack.overflow.get() + 1);
                return UNRECORDED;
            }
            stack.entries[len].set(open);
            stack.len.set(len + 1);
            len as u64 + 1
        })
    }

    /// Removes the record `id`: the top one in the usual nesting, any one
    /// otherwise (ends may come in any order).
    #[inline(always)]
    pub(crate) fn pop(id: u64) {
        STACK.with(|stack| {
            if stack.len.get() as u64 == id {
                pop_top(stack);
            } else {
                pop_slow(stack, id);
            }
        });
    }

    /// Drops the top record and the dead ones right below it.
    #[inline(always)]
    fn pop_top(stack: &Stack) {
        let mut len = stack.len.get() - 1;
        while len > 0 && stack.entries[len - 1].get().subscriptions == 0 {
            len -= 1;
        }
        stack.len.set(len);
    }

    #[cold]
    fn pop_slow(stack: &Stack, id: u64) {
        if id == UNRECORDED {
            stack.overflow.set(stack.overflow.get() - 1);
            return;
        }
        // Below the top (the top is `pop`'s case): mark it dead.
        let at = id as usize - 1;
        debug_assert!(at < stack.len.get(), "an open record outlived its position");
        if let Some(entry) = stack.entries.get(at) {
            entry.set(EMPTY);
        }
    }

    /// Whether a recorded open invalidation satisfies `f` (dead records
    /// never do: no address space has id 0).
    pub(crate) fn any(f: impl Fn(&Open) -> bool) -> bool {
        STACK.with(|stack| {
            (0..stack.len.get()).any(|i| {
                let open = stack.entries[i].get();
                open.subscriptions != 0 && f(&open)
            })
        })
    }

    /// Whether some open invalidation of this thread went unrecorded.
    pub(crate) fn overflowed() -> bool {
        STACK.with(|stack| stack.overflow.get() > 0)
    }

    /// How many records the stack holds, dead ones included.
    #[cfg(test)]
    pub(super) fn len() -> usize {
        STACK.with(|stack| stack.len.get())
    }
}

#[cfg(all(test, not(mmun_loom)))]
mod tests {
    use super::open::{self, Open};
    use crate::Event;

    fn rec(subscriptions: usize) -> Open {
        Open {
            subscriptions,
            start: 0,
            end: 0x1000,
            event: Event::Clear as u8,
        }
    }

    fn open_on(subscriptions: usize) -> bool {
        open::any(|x| x.subscriptions == subscriptions)
    }

    #[test]
    fn an_end_out_of_order_forgets_its_record_and_keeps_the_others() {
        let a = open::push(rec(0xa0));
        let b = open::push(rec(0xb0));
        open::pop(a);
        assert!(!open_on(0xa0), "an ended invalidation still counts as open");
        assert!(open_on(0xb0), "ending another invalidation lost this one");
        let c = open::push(rec(0xc0));
        open::pop(b);
        assert!(!open_on(0xb0));
        assert!(open_on(0xc0));
        open::pop(c);
        assert_eq!(
            open::len(),
            0,
            "dead records below the top were not dropped"
        );
    }

    #[test]
    fn nested_ends_in_order_empty_the_stack() {
        let ids: Vec<u64> = (1..=5).map(|i| open::push(rec(i * 0x10))).collect();
        for (n, &id) in ids.iter().enumerate().rev() {
            open::pop(id);
            assert_eq!(open::len(), n);
        }
    }

    #[test]
    fn pushes_past_the_depth_go_unrecorded_until_popped() {
        let ids: Vec<u64> = (0..open::DEPTH + 1)
            .map(|i| open::push(rec(0x100 + i)))
            .collect();
        assert!(open::overflowed());
        assert!(!open_on(0x100 + open::DEPTH), "the extra push was recorded");
        open::pop(ids[open::DEPTH]);
        assert!(!open::overflowed());
        for &id in ids[..open::DEPTH].iter().rev() {
            open::pop(id);
        }
        assert_eq!(open::len(), 0);
    }
}
