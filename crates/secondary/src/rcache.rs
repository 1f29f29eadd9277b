//! A registration cache, as UCX's `ucs_rcache` and libfabric's MR cache
//! keep for RDMA, driven by interval notifiers the way the kernel's RDMA
//! ODP driver (`umem_odp.c`) is, instead of by hooks on `munmap`.
//!
//! [`Rcache::get`] returns a [`RegHandle`] on a registration covering the
//! requested bytes: every page faulted in and registered, with one interval
//! notifier over the page-aligned range.
//!
//! # Backends
//!
//! The cache is generic over the [`Primary`] whose pages it registers and
//! the [`Registrar`] that holds a registration; the protocol below is
//! written once, here, for all of them:
//!
//! | instance | primary | registrar |
//! |---|---|---|
//! | [`RegistrationCache`] (the stress harness's) | [`SoftPrimary`]: a software-MMU address space, every use checked by the [`Coherence`] oracle | [`Pins`]: a reference on each frame, as GUP takes |
//! | `mmun_uring::UringCache` | the calling process (`mmun_linux::process_mm`) | io_uring fixed-buffer slots |
//! | `Rcache<_, Callbacks<..>>` | either | [`Callbacks`]: a user's `mem_reg`/`mem_dereg` |
//!
//! | path | what happens |
//! |---|---|
//! | hit ([`Rcache::lookup`]) | load the index snapshot (an `arc-swap` guard: no lock, no reference count), jump table and binary search, check the registration is live, stamp the LRU clock (a relaxed store) |
//! | miss | insert a notifier; `read_begin`; walk (fault in) every page and register them; take the cache lock; `read_retry` (on a collision deregister and start over); publish a new index snapshot, dropping dead entries, replacing overlapped ones (merged into the new range, as UCX merges) and evicting the least recently used registrations with no use in flight while over the bound |
//! | use ([`RegHandle::enter`]) | take the use reference; check the registration did not change since the lookup; the device reads or writes (on the software MMU each page checked by the [`Coherence`] oracle); drop the reference |
//! | invalidation (the notifier callback) | under the cache lock `set_seq` and mark the registration dead; then wait for the uses in flight (refuse if the range is not blockable and one is); deregister (unpin) — all before the callback returns, so before the primary changes the pages |
//! | reap (next miss, [`Rcache::reap`]) | drop dead registrations from the index and remove their notifiers, which a callback may not do itself (UCX's deferred invalidation queue) |
//!
//! # Why a checked use is sound
//!
//! A use checks page `va` with `Coherence::check`, which compares what the
//! registration pinned with what the primary maps at that moment. For a
//! correct cache the two agree, for three reasons:
//!
//! 1. *Published translations are current.* The pages are walked after
//!    `read_begin` and published under the cache lock only if `read_retry`
//!    says no invalidation reached the notifier since. Any later change of
//!    a page (unmap, protection, COW, migration, …) first calls the
//!    callback, which takes the same lock; so at publication, and until the
//!    callback runs, the primary maps exactly the recorded frames (upgrades
//!    such as write-enabling an exclusive page need no notification and
//!    only make the record more conservative). The pins keep each frame in
//!    its recorded life: a pinned frame is not freed, so its serial cannot
//!    change under the registration.
//! 2. *No use starts after the callback.* A use increments `users` and
//!    then reads the state; the callback stores `Dead` and then reads
//!    `users`, all SeqCst (Dekker's pattern). Either the use sees `Dead` and
//!    gives up, or the callback sees the use and waits for it.
//! 3. *No use outlives the callback.* The callback returns only once
//!    `users` is zero (or returns `false`, when it may not sleep, and the
//!    core aborts the whole invalidation, so the primary does not change).
//!    The primary changes the pages only after every callback returned.
//!
//! So a use in flight always falls in the window where the primary still
//! maps what was registered, and the oracle's verdict is about the cache,
//! not about timing. The two injectable bugs break exactly one link each:
//! [`Bug::LookupNoRetry`](crate::Bug::LookupNoRetry) hands out dead registrations (link 2, at the
//! lookup: a use only checks that the state did not change *since the
//! lookup*, as `read_retry` only compares with what `read_begin` returned),
//! and [`Bug::KeepStaleRegistration`](crate::Bug::KeepStaleRegistration) acknowledges the callback without
//! killing or unpinning (links 2 and 3).
//!
//! # Checking a use without deadlocking
//!
//! The software MMU calls the callbacks with its page-table lock held, and
//! reading the primary takes that same lock; a callback waits for the uses
//! in flight. So a use never waits for that lock: it checks with
//! [`Coherence::try_check`](crate::Coherence::try_check), and when the
//! lock is busy it defers the check to the end of the use, when it is
//! made with [`Coherence::check_after`](crate::Coherence::check_after):
//! a primary that differs while the registration is still live was changed
//! without invalidating it.
//!
//! The rule behind link 3 is also checked directly, with no look at the
//! primary: each registration counts the callbacks that returned `true`
//! for it while it was live (counted around the protocol's callback, so a
//! broken callback cannot skip it), a handle notes the count at its
//! lookup, and a use that ends with a higher count went ahead past an
//! invalidation — a [`ViolationKind::OutlivedInvalidation`](crate::ViolationKind::OutlivedInvalidation),
//! whether or not its page checks met the page-table lock busy.
//!
//! Lock order: the primary's locks → the cache lock (in callbacks). The
//! cache lock is never held while calling into the primary or the
//! registrar, waiting for uses, or removing a notifier; while it is held
//! the cache allocates (a new index snapshot), so the primary's
//! [`Primary::quiet`] guard is held around it (a hooked `free()` in this
//! thread is then delivered late instead of waiting for this thread's
//! own lock), and the old snapshot is dropped only after the unlock.
//!
//! # Pins (the software-MMU registrar)
//!
//! A pin is a reference on the frame's head (`Memory::update` with a
//! recheck of the frame's life, then `Memory::put`), as GUP takes. The
//! software MMU honours them as Linux does: a pinned frame survives the
//! primary's unmapping until the last reference goes, and a pinned page
//! that is not `PageAnonExclusive` is copied, not reused, on a write fault.
//! (It does not refuse to migrate pinned pages, which Linux does.)

mod backend;
mod bugs;
mod callbacks;
mod config;
mod handle;
mod in_use;
mod index;
mod protocol;
mod rebuild;
mod registration;
mod snapshot;
mod soft;

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Relaxed, Release};

use arc_swap::ArcSwap;
use mmun_core::driver_lock::{DriverLock, FaultGuard, Retry};
use mmun_core::lockdep::LockClass;
use mmun_core::{IntervalNotifier, IntervalSub, Range, Seq};
use thread_local::ThreadLocal;

pub use backend::{Primary, Registrar, Step};
pub use callbacks::Callbacks;
pub use config::{RcacheConfig, RcacheStats};
use config::{Stats, bump};
use handle::Held;
pub use handle::RegHandle;
pub use in_use::InUse;
use rebuild::{Locked, Old, Rebuild, Retired};
use snapshot::Snapshot;
pub use soft::{Pins, RegistrationCache, SoftHandle, SoftPrimary, UseGuard, UseHook};

#[cfg(doc)]
use crate::coherence::Coherence;
use index::Index;
use protocol::Protocol;
use registration::{RegionOps, Registration, State};

/// Numbers the caches, for [`Snapshot`]s to name theirs.
static NEXT_CACHE: AtomicU64 = AtomicU64::new(1);

/// The cache lock's lockdep class (UCX's `rcache->lock`).
static CACHE_LOCK: LockClass = LockClass::new("rcache->lock");

/// The state shared by the cache, its handles and its notifiers' callbacks.
///
/// `repr(C)`, aligned to a cache line, with what every hit reads first (the
/// protocol, the snapshot's id and generation, the clock, the index, then
/// the primary): next to an I/O that evicts the cache's lines, each line a
/// hit touches is a miss to pay.
#[repr(C, align(64))]
pub struct Shared<P: Primary, R: Registrar<P>> {
    /// The textbook steps, or the broken ones of an injected bug.
    protocol: &'static dyn Protocol<P, R>,
    /// Unique among the caches of the process.
    id: u64,
    /// Bumped after each store of `index` (under the cache lock), so that a
    /// [`Snapshot`] revalidates with one load.
    generation: AtomicU64,
    /// The LRU clock: advanced by each publication, stamped by each hit.
    clock: AtomicU64,
    index: ArcSwap<Index<P, R>>,
    primary: P,
    registrar: R,
    config: RcacheConfig,
    next_id: AtomicU64,
    /// The cache lock: the driver lock of the retry protocol.
    locked: DriverLock<Locked<P, R>>,
    stats: Stats,
    /// Each thread's copy of the index snapshot, for [`Rcache::acquire`]:
    /// revalidated with one load of `generation`, so a hit costs no
    /// read-modify-write beyond the use count. A thread's slot is touched
    /// only by that thread (and dropped with the cache); a stale one keeps
    /// replaced registrations' memory, never their registrations, until
    /// the thread's next `acquire`.
    snapshots: ThreadLocal<RefCell<Option<Snapshot<P, R>>>>,
}

impl<P: Primary, R: Registrar<P>> Shared<P, R> {
    /// The LRU clock's reading.
    #[inline]
    fn now(&self) -> u64 {
        self.clock.load(Relaxed)
    }

    /// The primary the cache registers pages of.
    pub fn primary(&self) -> &P {
        &self.primary
    }

    /// The registrar holding the registrations.
    pub fn registrar(&self) -> &R {
        &self.registrar
    }

    /// The configuration the cache was built with.
    pub fn config(&self) -> &RcacheConfig {
        &self.config
    }

    /// The notifier callback of `reg` (see the module docs).
    fn invalidate(
        &self,
        reg: &Registration<P, R>,
        sub: &IntervalSub,
        range: &Range<'_>,
        cur_seq: Seq,
    ) -> bool {
        let Some(mut locked) = self.locked.lock_for_invalidate(sub, range, cur_seq) else {
            return false;
        };
        if reg.state() == State::Registering {
            // A registration still being walked: its `read_retry` fails and
            // it starts over, nothing was published to tear down.
            return true;
        }
        locked.kill(reg);
        drop(locked);
        if !reg.drain(range.is_blockable(), &self.primary) {
            // Dead, so no new use; the reaper deregisters once the uses end.
            return false;
        }
        reg.deregister(&self.primary, &self.registrar);
        true
    }
}

impl<P: Primary, R: Registrar<P>> fmt::Debug for Shared<P, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A registration cache over one primary, holding its registrations
/// through one registrar. See the module docs.
pub struct Rcache<P: Primary, R: Registrar<P>> {
    shared: Arc<Shared<P, R>>,
}

impl<P: Primary, R: Registrar<P>> Rcache<P, R> {
    /// An empty cache registering pages of `primary` through `registrar`.
    pub fn with_backend(primary: P, registrar: R, config: RcacheConfig) -> Self {
        let shared = Shared {
            primary,
            registrar,
            config,
            protocol: protocol::for_bug(config.bug),
            id: NEXT_CACHE.fetch_add(1, Relaxed),
            index: ArcSwap::from_pointee(Index::default()),
            generation: AtomicU64::new(0),
            clock: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            locked: DriverLock::new(&CACHE_LOCK, Locked::default()),
            stats: Stats::default(),
            snapshots: ThreadLocal::new(),
        };
        Rcache {
            shared: Arc::new(shared),
        }
    }

    /// A registration covering `[addr, addr + len)` (at least the byte at
    /// `addr`): a cached one if one is live, otherwise a new one, which
    /// walks and registers every page.
    ///
    /// # Errors
    ///
    /// What the primary's walk or the registrar fails with;
    /// [`mmun_core::Error`] (converted) for a range past the end of the
    /// address space or an address space that exited.
    #[inline(always)]
    pub fn get(&self, addr: u64, len: u64) -> Result<RegHandle<'_, P, R>, P::Error> {
        match self.lookup(addr, len) {
            Some(handle) => Ok(handle),
            None => self.get_slow(addr, len),
        }
    }

    /// The hit path of [`Rcache::get`] alone: a live cached registration
    /// covering `[addr, addr + len)`, or `None`. Takes no lock.
    #[inline(always)]
    pub fn lookup(&self, addr: u64, len: u64) -> Option<RegHandle<'_, P, R>> {
        let shared = &*self.shared;
        let end = addr.checked_add(len.max(1))?;
        let index = shared.index.load();
        let at = index.position(addr, end)?;
        let reg = &index.regs()[at];
        // The acknowledgements before the state: a callback that acked
        // after this read is one the handle's uses must not outlive.
        let acks = reg.acks();
        let issued = reg.state();
        if !shared.protocol.hands_out(issued) {
            return None;
        }
        reg.touch(shared.now());
        Some(RegHandle {
            cache: shared,
            held: Held::Snapshot(index, at),
            issued: issued as usize,
            acks,
        })
    }

    /// A use of a registration covering `[addr, addr + len)`: [`Rcache::get`]
    /// and [`RegHandle::enter`] in one step, as UCX's `ucs_rcache_get`
    /// returns a region with its reference taken; dropping the [`InUse`] is
    /// the `put`. The hit path looks in this thread's copy of the index
    /// snapshot (one load revalidates it) and takes only the use count,
    /// against four read-modify-writes for `get` + `enter` + drop.
    ///
    /// Unlike [`Rcache::get`]'s, the hit path hands out live registrations
    /// only, whatever bug is injected: a use keeps its registration alive
    /// because every teardown drains the uses of a registration it killed,
    /// which a use entered on a dead one escapes.
    ///
    /// # Errors
    ///
    /// As [`Rcache::get`]'s.
    #[inline(always)]
    pub fn acquire(&self, addr: u64, len: u64) -> Result<InUse<'_, P, R>, P::Error> {
        match self.acquire_hit(addr, len) {
            Some(in_use) => Ok(in_use),
            None => self.acquire_slow(addr, len),
        }
    }

    /// The hit path of [`Rcache::acquire`] alone: `None` on a miss (or, to
    /// be safe against re-entry, while this thread's snapshot slot is
    /// borrowed, which no path of the cache does across a call out).
    #[inline(always)]
    pub fn acquire_hit(&self, addr: u64, len: u64) -> Option<InUse<'_, P, R>> {
        let shared = &*self.shared;
        let end = addr.checked_add(len.max(1))?;
        let mut slot = shared.snapshots.get_or_default().try_borrow_mut().ok()?;
        let reg = self.refresh(&mut slot).find(addr, end)?;
        let acks = reg.acks();
        if reg.state() != State::Live || !reg.enter(State::Live as u8) {
            return None;
        }
        reg.touch(shared.now());
        Some(InUse::new(reg, acks))
    }

    #[cold]
    fn acquire_slow(&self, addr: u64, len: u64) -> Result<InUse<'_, P, R>, P::Error> {
        loop {
            let handle = self.get(addr, len)?;
            if handle.issued != State::Live as usize {
                continue; // an injected bug handed out a dead one
            }
            if let Some(in_use) = handle.enter() {
                // The use, not the handle, keeps the registration alive.
                return Ok(in_use.rebind());
            }
        }
    }

    /// Finishes the deferred work: drops invalidated registrations from the
    /// index, removes their notifiers and deregisters what they still hold.
    /// Every miss does this too. Returns how many were reaped.
    pub fn reap(&self) -> usize {
        self.rebuild_keeping(|r| r.state() == State::Live)
    }

    /// Drops every registration (as UCX does before `fork`).
    pub fn purge(&self) -> usize {
        self.rebuild_keeping(|_| false)
    }

    /// Live registrations.
    pub fn len(&self) -> usize {
        self.shared.locked.lock().live_regions
    }

    /// Whether no registration is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes covered by live registrations.
    pub fn live_bytes(&self) -> u64 {
        self.shared.locked.lock().live_bytes
    }

    /// Inserted interval notifiers: one per registration in the index,
    /// live or waiting for its deferred removal.
    pub fn notifiers(&self) -> usize {
        self.shared.locked.lock().notifiers.len()
    }

    /// Invalidated registrations still waiting for their deferred removal.
    pub fn pending(&self) -> usize {
        let index = self.shared.index.load();
        index
            .regs()
            .iter()
            .filter(|r| r.state() != State::Live)
            .count()
    }

    /// What the cache has done so far.
    pub fn stats(&self) -> RcacheStats {
        let s = &self.shared.stats;
        RcacheStats {
            registrations: s.registrations.load(Relaxed),
            retries: s.retries.load(Relaxed),
            invalidations: s.invalidations.load(Relaxed),
            evictions: s.evictions.load(Relaxed),
            reaped: s.reaped.load(Relaxed),
            faults: s.faults.load(Relaxed),
            hits: s.hits.load(Relaxed),
            misses: s.misses.load(Relaxed),
        }
    }

    /// The state shared with handles and callbacks: the primary, the
    /// registrar and the configuration.
    pub fn shared(&self) -> &Shared<P, R> {
        &self.shared
    }

    #[cold]
    fn get_slow(&self, addr: u64, len: u64) -> Result<RegHandle<'_, P, R>, P::Error> {
        let want = page_range::<P>(addr, len).ok_or(mmun_core::Error::Overflow)?;
        let merged = self.merged_with_live(want);
        match self.register(merged, want) {
            // Part of a neighbour's range went away: register just ours.
            Err(_) if merged != want => self.register(want, want),
            result => result,
        }
    }

    /// `want` grown to cover the live registrations it overlaps, which the
    /// new registration replaces (UCX merges overlapping regions too): the
    /// index stays disjoint and a later lookup of either range hits.
    fn merged_with_live(&self, want: (u64, u64)) -> (u64, u64) {
        let index = self.shared.index.load();
        index.regs()[index.overlapping(want.0, want.1)]
            .iter()
            .filter(|r| r.state() == State::Live)
            .fold(want, |(s, e), r| (s.min(r.start), e.max(r.end)))
    }

    /// The miss path: a new registration of `range`, or a live one that
    /// covers `want` if another thread published it first.
    fn register(
        &self,
        range: (u64, u64),
        want: (u64, u64),
    ) -> Result<RegHandle<'_, P, R>, P::Error> {
        let (start, end) = range;
        let id = self.shared.next_id.fetch_add(1, Relaxed);
        let reg = Arc::new(Registration::new(id, start, end));
        let ops = RegionOps {
            reg: Arc::clone(&reg),
            cache: Arc::downgrade(&self.shared),
        };
        let notifier = IntervalNotifier::insert(self.shared.primary.mm(), start, end - start, ops)?;
        let (handle, quiet, locked) = match self.walk(&notifier, start, end) {
            Ok(walked) => walked,
            Err(err) => {
                notifier.remove();
                return Err(err);
            }
        };
        reg.adopt(handle);
        let (chosen, retired, old) = self.publish(locked, reg, notifier, want);
        drop(quiet);
        drop(old);
        self.finish(retired);
        Ok(RegHandle {
            cache: &self.shared,
            acks: chosen.acks(),
            held: Held::Owned(chosen),
            issued: State::Live as usize,
        })
    }

    /// The collision-retry loop: `read_begin`, walk, register, lock,
    /// `read_retry`. Returns the registrar's handle with the cache lock held
    /// (inside the primary's quiet guard), so that publication happens
    /// before any callback can run for it.
    fn walk(
        &self,
        notifier: &IntervalNotifier<RegionOps<P, R>>,
        start: u64,
        end: u64,
    ) -> Result<Walked<'_, P, R>, P::Error> {
        let shared = &*self.shared;
        loop {
            let seq = notifier.read_begin();
            let registered = shared.primary.walk(start, end).and_then(|pages| {
                shared
                    .registrar
                    .register(&shared.primary, start, end, pages)
            });
            match registered {
                Ok(handle) => {
                    let quiet = shared.primary.quiet();
                    match shared.locked.lock_if_current(notifier, seq) {
                        Ok(locked) => return Ok((handle, quiet, locked)),
                        Err(Retry) => {
                            drop(quiet);
                            shared.registrar.deregister(&shared.primary, &handle);
                        }
                    }
                }
                Err(Step::Fail(err)) => return Err(err),
                // A page changed under the walk, so an invalidation ran;
                // the next `read_begin` waits for it to end.
                Err(Step::Retry) => {}
            }
            bump(&shared.stats.retries);
        }
    }

    /// Publishes `reg` under the lock taken by [`Self::walk`], unless a live
    /// registration covering `want` appeared meanwhile (then that one is
    /// returned and `reg` retired). Returns the registration to hand out,
    /// what left the index, and the replaced index snapshot (to drop after
    /// the unlock).
    fn publish(
        &self,
        mut locked: FaultGuard<'_, Locked<P, R>>,
        reg: Arc<Registration<P, R>>,
        notifier: IntervalNotifier<RegionOps<P, R>>,
        want: (u64, u64),
    ) -> Published<P, R> {
        let shared = &*self.shared;
        let current = shared.index.load_full();
        if let Some(existing) = current.find(want.0, want.1)
            && existing.state() == State::Live
        {
            reg.kill();
            return (Arc::clone(existing), vec![(reg, Some(notifier))], current);
        }
        let now = shared.clock.fetch_add(1, Relaxed) + 1;
        let mut rebuild = Rebuild::new(&mut locked, &current);
        rebuild.retain(|r| r.state() == State::Live && !r.overlaps(reg.start, reg.end));
        rebuild.insert(Arc::clone(&reg), notifier, now);
        let evicted = rebuild.evict(&reg, &shared.config);
        let (retired, old) = rebuild.store(&shared.index);
        shared.generation.fetch_add(1, Release);
        drop(locked);
        drop(current);
        bump(&shared.stats.registrations);
        shared.stats.evictions.fetch_add(evicted, Relaxed);
        (reg, retired, old)
    }

    /// Rebuilds the index with the live registrations `keep` accepts and
    /// tears down the rest; returns how many went.
    fn rebuild_keeping(&self, keep: impl Fn(&Registration<P, R>) -> bool) -> usize {
        let quiet = self.shared.primary.quiet();
        let (retired, old, current) = {
            let mut locked = self.shared.locked.lock();
            let current = self.shared.index.load_full();
            let mut rebuild = Rebuild::new(&mut locked, &current);
            rebuild.retain(|r| r.state() == State::Live && keep(r));
            let (retired, old) = rebuild.store(&self.shared.index);
            self.shared.generation.fetch_add(1, Release);
            (retired, old, current)
        };
        drop(quiet);
        drop((old, current));
        let count = retired.len();
        self.finish(retired);
        count
    }

    /// The deferred teardown, with no lock held: wait for the last uses,
    /// deregister, remove the notifier.
    fn finish(&self, retired: Vec<Retired<P, R>>) {
        let shared = &*self.shared;
        for (reg, notifier) in retired {
            reg.drain(true, &shared.primary);
            reg.deregister(&shared.primary, &shared.registrar);
            if let Some(notifier) = notifier {
                notifier.remove();
            }
            bump(&shared.stats.reaped);
        }
    }
}

/// A registration the walk made, with the primary's quiet guard and the
/// cache lock held (in that order, released in reverse).
type Walked<'c, P, R> = (
    <R as Registrar<P>>::Handle,
    <P as Primary>::Quiet,
    FaultGuard<'c, Locked<P, R>>,
);

/// What a publication hands back: the registration to hand out, what left
/// the index, and the replaced snapshot (dropped after the unlock).
type Published<P, R> = (Arc<Registration<P, R>>, Vec<Retired<P, R>>, Old<P, R>);

/// The pages holding `[addr, addr + len)` (at least one), or `None` past
/// the end of the address range.
fn page_range<P: Primary>(addr: u64, len: u64) -> Option<(u64, u64)> {
    let page = P::PAGE_SIZE;
    let end = addr
        .checked_add(len.max(1))?
        .checked_next_multiple_of(page)?;
    Some((addr - addr % page, end))
}

impl<P: Primary, R: Registrar<P>> Drop for Rcache<P, R> {
    /// Deregisters everything and removes every notifier.
    fn drop(&mut self) {
        self.purge();
    }
}

impl<P: Primary, R: Registrar<P>> fmt::Debug for Rcache<P, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let locked = self.shared.locked.lock();
        f.debug_struct("Rcache")
            .field("live_regions", &locked.live_regions)
            .field("live_bytes", &locked.live_bytes)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}
