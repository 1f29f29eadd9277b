//! Per-thread state of the hooks: how deep this thread is inside a hook's
//! dispatch or a core registration path, and the changes it made while it
//! was (delivered late, once it is out).
//!
//! The thread-local is const-initialised and has no destructor, so touching
//! it never allocates and never registers a TLS destructor (glibc's
//! `__cxa_thread_atexit_impl` would call `calloc`) — hooks run inside
//! `free()` and `pthread_exit`.

use std::cell::Cell;

use mmun_core::Event;

use crate::record::Call;

/// One change made while this thread could not dispatch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// The call that made it.
    pub call: Call,
    /// The event Linux uses for it.
    pub event: Event,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

const EMPTY: Pending = Pending {
    call: Call::Munmap,
    event: Event::Unmap,
    start: 0,
    end: 0,
};

/// How many late changes a thread keeps before merging them.
pub const QUEUE: usize = 16;

struct State {
    /// Inside a hook's start … end (callbacks run there).
    dispatching: Cell<u32>,
    /// Inside a core registration path (see `mmun_core::MmObserver`).
    registering: Cell<u32>,
    queue: [Cell<Pending>; QUEUE],
    queued: Cell<usize>,
    /// Changes merged because the queue was full (a counter for tests).
    merged: Cell<u64>,
}

thread_local! {
    static STATE: State = const {
        State {
            dispatching: Cell::new(0),
            registering: Cell::new(0),
            queue: [const { Cell::new(EMPTY) }; QUEUE],
            queued: Cell::new(0),
            merged: Cell::new(0),
        }
    };
}

/// Whether this thread must not start an invalidation now: it is inside
/// one (a callback made this call), or inside a registration path that may
/// hold the core's locks.
#[inline]
pub fn busy() -> bool {
    STATE.with(|s| s.dispatching.get() != 0 || s.registering.get() != 0)
}

/// Whether this thread is inside a hook's dispatch (what an allocator that
/// must not be called from a hook checks).
#[inline]
pub fn in_hook() -> bool {
    STATE.with(|s| s.dispatching.get() != 0)
}

/// Marks this thread as dispatching until the guard drops.
pub fn dispatching() -> Scope {
    enter();
    Scope(())
}

/// Marks this thread as dispatching until [`leave`] (for states that span
/// two callbacks, like fork's prepare and parent handlers).
pub fn enter() {
    STATE.with(|s| s.dispatching.set(s.dispatching.get() + 1));
}

/// Ends one [`enter`].
pub fn leave() {
    STATE.with(|s| s.dispatching.set(s.dispatching.get().saturating_sub(1)));
}

/// Leaves the dispatching state when dropped.
#[derive(Debug)]
pub struct Scope(());

impl Drop for Scope {
    fn drop(&mut self) {
        leave();
    }
}

/// Enters (`true`) or leaves a registration path. Returns whether the
/// thread is now out of every registration path.
pub fn registration(entering: bool) -> bool {
    STATE.with(|s| {
        let now = if entering {
            s.registering.get() + 1
        } else {
            // Saturating: a fork child resets the count inside a scope.
            s.registering.get().saturating_sub(1)
        };
        s.registering.set(now);
        now == 0
    })
}

/// Queues a change for late delivery. A full queue merges the change into
/// its last entry (the union of both ranges, as an `Unmap`): more is
/// invalidated, nothing is lost.
pub fn defer(p: Pending) {
    STATE.with(|s| {
        let n = s.queued.get();
        if n < QUEUE {
            s.queue[n].set(p);
            s.queued.set(n + 1);
        } else {
            let last = s.queue[QUEUE - 1].get();
            s.queue[QUEUE - 1].set(Pending {
                call: last.call,
                event: Event::Unmap,
                start: last.start.min(p.start),
                end: last.end.max(p.end),
            });
            s.merged.set(s.merged.get() + 1);
        }
    });
}

/// Takes the oldest queued change.
pub fn pop() -> Option<Pending> {
    STATE.with(|s| {
        let n = s.queued.get();
        if n == 0 {
            return None;
        }
        let first = s.queue[0].get();
        for i in 1..n {
            s.queue[i - 1].set(s.queue[i].get());
        }
        s.queued.set(n - 1);
        Some(first)
    })
}

/// How many changes were merged into others because the queue was full.
pub fn merged() -> u64 {
    STATE.with(|s| s.merged.get())
}

/// After fork, in the child: the forking thread is the only one left; it is
/// not inside anything of the parent's address space any more.
pub fn reset_in_child() {
    STATE.with(|s| {
        s.queued.set(0);
        s.dispatching.set(0);
        s.registering.set(0);
    });
}
