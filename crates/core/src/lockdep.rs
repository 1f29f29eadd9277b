//! lockdep-lite: lock-order checking by class, in debug builds.
//!
//! Kernel counterpart: lockdep and `__mmu_notifier_invalidate_range_start_map`
//! in `mm/mmu_notifier.c`. The map is a pseudo-lock with no lock behind it:
//! the invalidation entry points hold it around the start and end callbacks,
//! and interval `read_begin` and `remove` take and drop it before they wait.
//! So a driver lock taken inside a callback records `map → lock`, and the
//! same lock held around an invalidation start or a `read_begin` records
//! `lock → map`: the cycle is the deadlock-in-waiting, reported the first
//! time both orders have been *seen*, even if they never raced.
//!
//! Drivers opt in by guarding their state with [`Mutex`] under a
//! [`LockClass`]:
//!
//! ```
//! use mmun_core::lockdep::{LockClass, Mutex};
//! static DEVICE_LOCK: LockClass = LockClass::new("dmirror->mutex");
//! let pages = Mutex::new(&DEVICE_LOCK, Vec::<u64>::new());
//! pages.lock().push(0x1000);
//! ```
//!
//! Classes, not instances, are the nodes of the graph (as in lockdep), so
//! one driver lock class covers every device. In release builds (and loom
//! models) [`Mutex`] is a plain `std::sync::Mutex` (poisoning ignored) and
//! nothing is tracked.
//!
//! The held-lock record is a fixed array per thread, so tracking allocates
//! nothing on a thread's first lock; only recording an edge never seen
//! before allocates (the first time that lock order happens anywhere).

use std::fmt;
use std::ops::{Deref, DerefMut};

/// A class of locks: the node of the lock-order graph.
#[derive(Debug)]
pub struct LockClass {
    name: &'static str,
}

impl LockClass {
    /// A class with a name for reports. Declare it as a `static`: its address
    /// is its identity.
    pub const fn new(name: &'static str) -> LockClass {
        LockClass { name }
    }

    /// The name given at declaration.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// `__mmu_notifier_invalidate_range_start_map`.
pub static INVALIDATE_RANGE_START_MAP: LockClass =
    LockClass::new("__mmu_notifier_invalidate_range_start_map");

/// Records that the current thread acquires a lock of `class`
/// (`lock_map_acquire`). Panics on a possible circular locking.
#[inline]
#[track_caller]
pub fn acquire(class: &'static LockClass) {
    #[cfg(all(debug_assertions, not(mmun_loom)))]
    graph::acquire(class, true);
    #[cfg(not(all(debug_assertions, not(mmun_loom))))]
    let _ = class;
}

/// Records the release of the most recent acquisition of `class`
/// (`lock_map_release`).
#[inline]
pub fn release(class: &'static LockClass) {
    #[cfg(all(debug_assertions, not(mmun_loom)))]
    graph::release(class);
    #[cfg(not(all(debug_assertions, not(mmun_loom))))]
    let _ = class;
}

/// Acquire and release at once: "this may wait for holders of `class`".
#[inline]
#[track_caller]
pub fn acquire_release(class: &'static LockClass) {
    acquire(class);
    release(class);
}

/// The held pseudo-lock map, released on drop (also when a callback panics).
#[must_use]
pub(crate) struct MapHeld;

impl MapHeld {
    #[inline]
    #[track_caller]
    pub(crate) fn acquire() -> MapHeld {
        acquire(&INVALIDATE_RANGE_START_MAP);
        MapHeld
    }
}

impl Drop for MapHeld {
    #[inline]
    fn drop(&mut self) {
        release(&INVALIDATE_RANGE_START_MAP);
    }
}

/// A mutex whose acquisitions are checked against the lock-order graph.
pub struct Mutex<T> {
    class: &'static LockClass,
    /// std's futex mutex: waiting never allocates (see `sync::std_backend`),
    /// so drivers may take it from hook-safe callbacks.
    inner: std::sync::Mutex<T>,
}

impl<T> Mutex<T> {
    /// A mutex of `class` holding `value`.
    pub const fn new(class: &'static LockClass, value: T) -> Mutex<T> {
        Mutex {
            class,
            inner: std::sync::Mutex::new(value),
        }
    }

    /// Blocks until the lock is held. May sleep, so it must not be called in
    /// a non-blockable callback ([`might_sleep`](crate::might_sleep)).
    #[track_caller]
    pub fn lock(&self) -> MutexGuard<'_, T> {
        crate::context::might_sleep();
        acquire(self.class);
        MutexGuard {
            class: self.class,
            inner: self
                .inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        }
    }

    /// Takes the lock if it is free: the idiom of non-blockable callbacks.
    /// A trylock cannot deadlock, so it records no ordering of its own.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        let inner = match self.inner.try_lock() {
            Ok(inner) => inner,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        #[cfg(all(debug_assertions, not(mmun_loom)))]
        graph::acquire(self.class, false);
        Some(MutexGuard {
            class: self.class,
            inner,
        })
    }

    /// The class this mutex belongs to.
    pub fn class(&self) -> &'static LockClass {
        self.class
    }
}

impl<T: fmt::Debug> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mutex")
            .field("class", &self.class.name)
            .field("inner", &self.inner)
            .finish()
    }
}

/// The guard of a [`Mutex`]; releases the class on drop.
#[must_use = "the lock is released when the guard is dropped"]
pub struct MutexGuard<'a, T> {
    class: &'static LockClass,
    inner: std::sync::MutexGuard<'a, T>,
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        release(self.class);
    }
}

impl<T: fmt::Debug> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.inner, f)
    }
}

/// The lock-order graph's lock, held across a fork by the forking thread
/// (`crate::fork`): a parent thread recording an edge at the fork instant
/// would leave the child a lock nobody releases and a half-updated graph.
#[cfg(all(unix, debug_assertions, not(mmun_loom)))]
pub(crate) type GraphForkGuard = graph::GraphGuard;
/// Without the graph (release builds) there is nothing to hold.
#[cfg(all(unix, not(debug_assertions), not(mmun_loom)))]
pub(crate) type GraphForkGuard = ();

/// Takes the graph's lock for a fork (see [`GraphForkGuard`]).
#[cfg(all(unix, not(mmun_loom)))]
pub(crate) fn lock_graph_for_fork() -> GraphForkGuard {
    #[cfg(debug_assertions)]
    return graph::lock_for_fork();
}

#[cfg(all(debug_assertions, not(mmun_loom)))]
mod graph {
    use std::cell::Cell;
    use std::collections::{HashMap, HashSet};

    use super::LockClass;

    type Class = &'static LockClass;

    fn key(class: Class) -> usize {
        std::ptr::from_ref(class).addr()
    }

    /// Edges `a → b`: b was acquired while a was held. Global, like lockdep's.
    static EDGES: std::sync::Mutex<Option<HashMap<usize, HashSet<usize>>>> =
        std::sync::Mutex::new(None);

    /// The graph's lock guard, as held across a fork.
    #[cfg(unix)]
    pub(super) type GraphGuard =
        std::sync::MutexGuard<'static, Option<HashMap<usize, HashSet<usize>>>>;

    /// Takes the graph's lock for a fork (`crate::fork`).
    #[cfg(unix)]
    pub(super) fn lock_for_fork() -> GraphGuard {
        EDGES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many held classes one thread records (lockdep's
    /// `MAX_LOCK_DEPTH` is 48); deeper acquisitions go unrecorded.
    const DEPTH: usize = 32;

    /// The classes this thread holds, oldest first: a fixed array in a
    /// destructor-less thread-local, so that no access allocates.
    struct Held {
        len: Cell<usize>,
        /// Acquisitions past `DEPTH`, not recorded.
        overflow: Cell<usize>,
        classes: [Cell<Option<Class>>; DEPTH],
    }

    thread_local! {
        static HELD: Held = const {
            Held {
                len: Cell::new(0),
                overflow: Cell::new(0),
                classes: [const { Cell::new(None) }; DEPTH],
            }
        };
    }

    #[track_caller]
    pub(super) fn acquire(class: Class, record_order: bool) {
        HELD.with(|held| {
            let len = held.len.get();
            if record_order {
                for outer in held.classes[..len].iter().filter_map(Cell::get) {
                    if key(outer) != key(class) {
                        add_edge(outer, class);
                    }
                }
            }
            if len == DEPTH {
                held.overflow.set(held.overflow.get() + 1);
            } else {
                held.classes[len].set(Some(class));
                held.len.set(len + 1);
            }
        });
    }

    pub(super) fn release(class: Class) {
        HELD.with(|held| {
            let len = held.len.get();
            match (0..len)
                .rev()
                .find(|&i| held.classes[i].get().is_some_and(|c| key(c) == key(class)))
            {
                Some(at) => {
                    for i in at..len - 1 {
                        held.classes[i].set(held.classes[i + 1].get());
                    }
                    held.len.set(len - 1);
                }
                None if held.overflow.get() > 0 => held.overflow.set(held.overflow.get() - 1),
                None => {}
            }
        });
    }

    #[track_caller]
    fn add_edge(outer: Class, inner: Class) {
        let mut guard = EDGES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let edges = guard.get_or_insert_with(HashMap::new);
        if edges
            .get(&key(outer))
            .is_some_and(|s| s.contains(&key(inner)))
        {
            return;
        }
        // While unwinding (from an earlier report, say), a second panic
        // would abort the process: stay quiet, as lockdep does once it fired.
        if reaches(edges, key(inner), key(outer)) && !std::thread::panicking() {
            let (o, i) = (outer.name(), inner.name());
            // Report without holding the graph lock, and without recording
            // the offending edge, so later checks still see a clean graph.
            drop(guard);
            panic!(
                "lockdep: possible circular locking: `{i}` is acquired while holding `{o}`, \
                 but `{o}` was earlier acquired while holding `{i}`{}",
                hint(o, i)
            );
        }
        edges.entry(key(outer)).or_default().insert(key(inner));
    }

    fn hint(outer: &str, inner: &str) -> &'static str {
        let map = super::INVALIDATE_RANGE_START_MAP.name();
        if outer == map || inner == map {
            " (a lock taken inside an mmu notifier callback must not be held around \
             invalidate_range_start, interval read_begin or remove)"
        } else {
            ""
        }
    }

    fn reaches(edges: &HashMap<usize, HashSet<usize>>, from: usize, to: usize) -> bool {
        let mut seen = HashSet::new();
        let mut stack = vec![from];
        while let Some(node) = stack.pop() {
            if node == to {
                return true;
            }
            if seen.insert(node) {
                stack.extend(edges.get(&node).into_iter().flatten().copied());
            }
        }
        false
    }
}
