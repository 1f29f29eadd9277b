//! One registration: what the registrar holds of it, its state, its in-flight uses,
//! and the interval notifier callback that tears it down.

use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize};
use std::sync::{Arc, OnceLock, Weak};

use mmun_core::{IntervalNotifierOps, IntervalSub, Range, Seq};

use super::Shared;
use super::backend::{Primary, Registrar};
use super::config::bump;
use super::in_use;

/// The mark in [`Registration`]'s `users` word: a drain sleeps until the
/// uses in flight reach zero.
const DRAINER: usize = 1 << (usize::BITS - 1);

/// The uses in flight a `users` word counts.
fn in_flight(users: usize) -> usize {
    users & !DRAINER
}

/// Where a registration is in its one life. It only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum State {
    /// Its notifier is inserted and its pages are being faulted and registered;
    /// not in the index yet.
    Registering = 0,
    /// In the index, registered, usable.
    Live = 1,
    /// Invalidated, evicted or replaced: no use may start any more.
    Dead = 2,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Registering,
            1 => State::Live,
            _ => State::Dead,
        }
    }
}

/// A page-aligned registered range and what the registrar holds of it.
///
/// `repr(C)`, aligned to a cache line, the fields a hit and a use touch
/// first (see [`Shared`]'s layout note).
#[repr(C, align(64))]
pub(super) struct Registration<P: Primary, R: Registrar<P>> {
    /// Uses in flight ([`super::InUse`]s), plus [`DRAINER`] once a drain
    /// sleeps on them. Invalidation waits for the count to drain before it
    /// lets the primary change the pages.
    users: AtomicUsize,
    /// Invalidation callbacks that returned `true` (let the primary go
    /// on) for this registration. Counted by [`RegionOps`], around the
    /// protocol's callback, so a use can check directly that no callback
    /// completed while it was in flight.
    acks: AtomicU64,
    /// The LRU clock when it was last looked up.
    last_used: AtomicU64,
    /// A [`State`]. Every change happens under the cache lock; the hit path
    /// and the uses read it without the lock.
    state: AtomicU8,
    /// Whether `held` is still registered (not yet deregistered).
    registered: AtomicBool,
    /// What the registrar returned; set once, before it goes live.
    held: OnceLock<R::Handle>,
    /// Unique per cache; keys the notifier in the locked map.
    pub(super) id: u64,
    pub(super) start: u64,
    pub(super) end: u64,
}

impl<P: Primary, R: Registrar<P>> Registration<P, R> {
    pub(super) fn new(id: u64, start: u64, end: u64) -> Self {
        Registration {
            id,
            start,
            end,
            state: AtomicU8::new(State::Registering as u8),
            users: AtomicUsize::new(0),
            last_used: AtomicU64::new(0),
            held: OnceLock::new(),
            registered: AtomicBool::new(false),
            acks: AtomicU64::new(0),
        }
    }

    /// Callbacks acknowledged so far (see the field). SeqCst: a use reads
    /// it after its `enter`, which is SeqCst too.
    pub(super) fn acks(&self) -> u64 {
        self.acks.load(SeqCst)
    }

    pub(super) fn len(&self) -> u64 {
        self.end - self.start
    }

    /// The state as the lock-free readers see it. Acquire pairs with the
    /// cache lock's release of whoever changed it.
    #[inline]
    pub(super) fn state(&self) -> State {
        State::from_u8(self.state.load(Acquire))
    }

    pub(super) fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start < end && start < self.end
    }

    /// Records a lookup. Stores only when the clock moved, so concurrent
    /// hits on a hot registration keep its cache line shared.
    #[inline]
    pub(super) fn touch(&self, now: u64) {
        if self.last_used.load(Relaxed) != now {
            self.last_used.store(now, Relaxed);
        }
    }

    pub(super) fn last_used(&self) -> u64 {
        self.last_used.load(Relaxed)
    }

    /// What the registrar holds, once registered.
    #[inline]
    pub(super) fn held(&self) -> Option<&R::Handle> {
        self.held.get()
    }

    /// Takes over a successful registration. Under the cache lock, after
    /// `read_retry` said the walk is still current.
    pub(super) fn adopt(&self, handle: R::Handle) {
        let fresh = self.held.set(handle).is_ok();
        debug_assert!(fresh, "a registration is registered once");
        self.registered.store(true, Release);
    }

    /// Registering → Live. Under the cache lock; the index store that
    /// follows publishes it.
    pub(super) fn go_live(&self, now: u64) {
        self.last_used.store(now, Relaxed);
        self.state.store(State::Live as u8, SeqCst);
    }

    /// Live (or Registering) → Dead; returns whether it was Live. Under the
    /// cache lock. SeqCst: with [`Registration::enter`] this is Dekker's
    /// pattern, so either the use sees `Dead` or the killer sees the use.
    pub(super) fn kill(&self) -> bool {
        State::from_u8(self.state.swap(State::Dead as u8, SeqCst)) == State::Live
    }

    /// Starts a use of a registration handed out while it was in state
    /// `issued` (a raw [`State`]): fails if the state changed since (the registration's
    /// `read_retry`, with the handle as the reader).
    pub(super) fn enter(&self, issued: u8) -> bool {
        self.users.fetch_add(1, SeqCst);
        if self.state.load(SeqCst) == issued {
            return true;
        }
        self.leave();
        false
    }

    /// Whether no use is in flight (a hint, for eviction's choice).
    pub(super) fn idle(&self) -> bool {
        in_flight(self.users.load(Relaxed)) == 0
    }

    /// Ends a use, and wakes a drain sleeping on it if it was the last.
    /// Release: what the use did happens before the drain that sees the
    /// count drop.
    pub(super) fn leave(&self) {
        // Taken first: once the count drops the drain may free the
        // registration, so the decrement is the last touch of `self`, and
        // the wake uses only an address, never dereferenced.
        let key = self.drain_key();
        if self.users.fetch_sub(1, Release) == DRAINER | 1 {
            in_use::wake_drains(key);
        }
    }

    /// Where drains of this registration sleep.
    fn drain_key(&self) -> usize {
        std::ptr::from_ref(&self.users) as usize
    }

    /// Waits until no use is in flight, if it may sleep; otherwise reports
    /// whether none is. Only after [`Registration::kill`], so no new use
    /// can start. Tells `primary` before it sleeps.
    pub(super) fn drain(&self, may_sleep: bool, primary: &P) -> bool {
        if in_flight(self.users.load(SeqCst)) == 0 {
            return true;
        }
        if !may_sleep {
            return false;
        }
        mmun_core::might_sleep();
        // Uses are short (a few page checks, one I/O): spin first. Then
        // sleep rather than yield: a use may wait for something (a slow
        // transfer) that the processor is better given to.
        for _ in 0..64 {
            if in_flight(self.users.load(SeqCst)) == 0 {
                return true;
            }
            std::hint::spin_loop();
        }
        // Marked, the last use to leave wakes us. Once set the mark stays:
        // the registration is dead, so only `enter`s that fail (and wake
        // nobody who still waits) count up and down past it.
        self.users.fetch_or(DRAINER, SeqCst);
        primary.awaiting_uses();
        while in_flight(self.users.load(SeqCst)) != 0 {
            in_use::sleep_while_used(self.drain_key(), || in_flight(self.users.load(SeqCst)) != 0);
        }
        true
    }

    /// Releases the registration, once, whoever gets here first.
    pub(super) fn deregister(&self, primary: &P, registrar: &R) {
        if !self.registered.swap(false, AcqRel) {
            return;
        }
        if let Some(handle) = self.held.get() {
            registrar.deregister(primary, handle);
        }
    }

    /// Whether the device still holds the registration.
    pub(super) fn is_registered(&self) -> bool {
        self.registered.load(Acquire)
    }
}

impl<P: Primary, R: Registrar<P>> std::fmt::Debug for Registration<P, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.id)
            .field("start", &format_args!("{:#x}", self.start))
            .field("end", &format_args!("{:#x}", self.end))
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// The interval notifier's driver state: the registration it guards and
/// the cache it belongs to.
///
/// The cache is held weakly: the cache owns the notifiers, and removes
/// them all before it goes away.
pub(super) struct RegionOps<P: Primary, R: Registrar<P>> {
    pub(super) reg: Arc<Registration<P, R>>,
    pub(super) cache: Weak<Shared<P, R>>,
}

impl<P: Primary, R: Registrar<P>> IntervalNotifierOps for RegionOps<P, R> {
    fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool {
        let Some(cache) = self.cache.upgrade() else {
            // Only while the cache drops, after it deregistered everything and
            // with no fault in flight: nothing to order `set_seq` against.
            sub.set_seq(cur_seq);
            return true;
        };
        bump(&cache.stats.invalidations);
        // Only a callback that found the registration live can have a use
        // in flight to wait for: one that met it registering lets the walk
        // retry, and may still be counting when the retried walk publishes.
        let was_live = self.reg.state() == State::Live;
        let acked = cache
            .protocol
            .invalidate(&cache, &self.reg, sub, range, cur_seq);
        if acked && was_live {
            // After the callback, whatever it did: the primary may change
            // the pages from here on, so no use may still be in flight.
            self.reg.acks.fetch_add(1, SeqCst);
        }
        acked
    }
}
