//! Fork safety: the protocol that keeps a `fork()` child of a process using
//! mmun-core from inheriting the core's process-global state half-updated,
//! as glibc's own `malloc` atfork handling does for its arenas.
//!
//! A child has one thread (the forking one) and a copy of memory as the
//! parent's threads left it at the fork instant. Without this protocol it
//! may inherit the global SRCU domain's callback queue lock held by a
//! parent thread (a hang at its first `call_srcu`), a callback worker that
//! is marked spawned but absent (every `srcu_barrier` — a list notifier's
//! release at exit — hangs), and parent threads' open read sections that
//! never end (every grace period hangs).
//!
//! * [`prepare`] (before the fork, forking thread): takes the global
//!   locks, in this order: the SRCU domain's callback queue, its
//!   grace-period turn, its reader-slot registry (see `rcu/fork.rs`), then
//!   lockdep's graph (debug builds). No other thread is inside an update
//!   they protect at the fork instant.
//! * [`parent`] (after the fork, parent): releases them.
//! * [`child`] (after the fork, child): repairs the state through the held
//!   locks and releases them. The parent's grace period is forgotten; the
//!   `mmun-srcu` worker is marked absent, so the next `call_srcu` spawns
//!   the child's own; the parent's queued callbacks are leaked unrun and
//!   counted done (they belong to the parent, which runs them; running or
//!   dropping them here would repeat their side effects); the reader slots
//!   of every thread but the forking one are balanced (their open sections
//!   count as ended, since their threads do not exist here) and freed.
//!
//! The first registration of a notifier installs these three as
//! `pthread_atfork` handlers, once per process, so a plain user of
//! mmun-core who forks is covered. A caller with atfork handlers of its own
//! that dispatch notifiers (the real-process backend, `mmun-linux`, starts
//! invalidations in its prepare handler and ends them in its parent
//! handler) calls [`run_from_own_handlers`] once and then calls the three
//! functions itself: [`prepare`] after its own dispatching, [`parent`] and
//! [`child`] before. The core's automatic handlers cannot be ordered that
//! way (glibc runs prepare handlers in reverse order of registration, and
//! the core registers lazily), and a dispatch with these locks held would
//! deadlock on the slot registry or the callback queue.
//!
//! All three are idempotent per fork: [`prepare`] does nothing if this
//! thread already holds the locks, [`parent`] and [`child`] nothing if it
//! does not. Not covered by the automatic handlers: `_Fork` and `clone`
//! (glibc runs no atfork handlers for them; `mmun-linux` calls the three
//! functions around their system calls itself); SRCU domains other than the
//! global one (`Srcu::new`, used by tests); per-`Mm` locks (a child gets a
//! fresh `Mm` from `mmun-linux`; a plain user who keeps using a parent's
//! `Mm` in the child gets no repair of it); a fork from inside an SRCU
//! callback (the forking thread is the worker: the child keeps it as its
//! worker, and it finishes the parent's batch there); a read section the
//! forking thread itself counted in the shared fallback slot (from a
//! thread-local destructor), in which case parent threads' sections there
//! are not cleared either.

#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// What [`prepare`] holds until [`parent`] or [`child`].
struct Held {
    srcu: crate::rcu::fork::Held,
    _lockdep: crate::lockdep::GraphForkGuard,
}

/// Where [`prepare`] keeps the held locks: a static, not a thread-local,
/// because a thread-local with a destructor allocates on first use, and
/// `mmun-linux` calls [`prepare`] after snapshotting the address space (an
/// allocation can grow the heap it has just announced).
struct Stash(UnsafeCell<Option<Held>>);

// SAFETY: only the thread recorded in `OWNER` touches the cell (see
// `OWNER`), so no two threads ever access it at once.
unsafe impl Sync for Stash {}

static STASH: Stash = Stash(UnsafeCell::new(None));

/// The thread (`pthread_self`) whose held locks are in `STASH`, or 0. Set
/// after the locks are taken and the cell filled, cleared before the cell
/// is emptied and the locks released: while one thread is recorded, every
/// other thread's `prepare` waits on the SRCU queue lock, and its `parent`
/// or `child` sees another owner and does nothing. A fork child's only
/// thread has the forking thread's `pthread_self`.
static OWNER: AtomicUsize = AtomicUsize::new(0);

/// `run_from_own_handlers` was called: the automatic handlers do nothing.
static EXTERNAL: AtomicBool = AtomicBool::new(false);

fn this_thread() -> usize {
    // SAFETY: `pthread_self` has no preconditions.
    let id = unsafe { libc::pthread_self() };
    id as usize
}

/// Before a fork, on the forking thread: takes the core's global locks in
/// the documented order (module docs). Does nothing if this thread already
/// holds them. May allocate (glibc runs prepare handlers before taking
/// malloc's locks). Until [`parent`] or [`child`], this thread must not
/// dispatch, register or call into SRCU (it would wait for itself).
pub fn prepare() {
    let me = this_thread();
    // Acquire/Release on OWNER: orders the cell's contents between the
    // prepare and the parent/child of the same thread (trivially, same
    // thread) and against another thread's earlier release.
    if OWNER.load(Ordering::Acquire) == me {
        return;
    }
    let held = Held {
        srcu: crate::rcu::fork::lock(),
        _lockdep: crate::lockdep::lock_graph_for_fork(),
    };
    // SAFETY: we hold the SRCU queue lock, so no other thread is between
    // its own `prepare` and `parent`; any earlier owner emptied the cell
    // before releasing that lock, and OWNER is not yet us, so nobody else
    // touches the cell now (see `OWNER`).
    unsafe { *STASH.0.get() = Some(held) };
    OWNER.store(me, Ordering::Release);
}

/// Takes the held locks out of the stash if this thread put them there.
fn take_held() -> Option<Held> {
    let me = this_thread();
    if OWNER.load(Ordering::Acquire) != me {
        return None;
    }
    OWNER.store(0, Ordering::Release);
    // SAFETY: this thread is the recorded owner and still holds the SRCU
    // queue lock, so no other thread touches the cell (see `OWNER`).
    unsafe { (*STASH.0.get()).take() }
}

/// After a fork, in the parent: releases what [`prepare`] took.
pub fn parent() {
    drop(take_held());
}

/// After a fork, in the child: resets the global state the parent's other
/// threads left (module docs), then releases the locks.
pub fn child() {
    if let Some(held) = take_held() {
        held.srcu.reset_in_child();
    }
}

/// The caller runs [`prepare`], [`parent`] and [`child`] from atfork
/// handlers of its own; the core's automatic ones do nothing from now on.
/// Call it before the first fork.
pub fn run_from_own_handlers() {
    EXTERNAL.store(true, Ordering::Relaxed);
}

extern "C" fn auto_prepare() {
    if !EXTERNAL.load(Ordering::Relaxed) {
        prepare();
    }
}

extern "C" fn auto_parent() {
    if !EXTERNAL.load(Ordering::Relaxed) {
        parent();
    }
}

extern "C" fn auto_child() {
    if !EXTERNAL.load(Ordering::Relaxed) {
        child();
    }
}

/// Installs the automatic `pthread_atfork` handlers, once per process.
/// Called at registration (may allocate). If glibc cannot register them
/// (out of memory), forks stay unprotected; nothing else can be done here.
pub(crate) fn register_atfork_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: the handlers are `extern "C" fn()` with static lifetime.
        let _ = unsafe {
            libc::pthread_atfork(Some(auto_prepare), Some(auto_parent), Some(auto_child))
        };
    });
}
