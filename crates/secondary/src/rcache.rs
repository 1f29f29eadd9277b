//! A registration cache, as UCX's `ucs_rcache` and libfabric's MR cache
//! keep for RDMA, driven by interval notifiers the way the kernel's RDMA
//! ODP driver (`umem_odp.c`) is, instead of by hooks on `munmap`.
//!
//! [`RegistrationCache::get`] returns a [`RegHandle`] on a registration
//! covering the requested bytes: every page faulted in and pinned, with one
//! interval notifier over the page-aligned range.
//!
//! | path | what happens |
//! |---|---|
//! | hit ([`RegistrationCache::lookup`]) | load the index snapshot (an `arc-swap` guard: no lock, no reference count), jump table and binary search, check the registration is live, stamp the LRU clock (a relaxed store) |
//! | miss | insert a notifier; `read_begin`; fault and pin every page; take the cache lock; `read_retry` (on a collision unpin and start over); publish a new index snapshot, dropping dead entries, replacing overlapped ones (merged into the new range, as UCX merges) and evicting the least recently used registrations with no use in flight while over the bound |
//! | use ([`RegHandle::begin_use`]) | take the use reference; check the registration did not change since the lookup; the device reads or writes (each page checked by the [`Coherence`] oracle); drop the reference |
//! | invalidation (the notifier callback) | under the cache lock `set_seq` and mark the registration dead; then wait for the uses in flight (refuse if the range is not blockable and one is); unpin |
//! | reap (next miss, [`RegistrationCache::reap`]) | drop dead registrations from the index and remove their notifiers, which a callback may not do itself (UCX's deferred invalidation queue) |
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
//! cache lock is never held while calling into the primary, waiting for
//! uses, or removing a notifier.
//!
//! # Pins
//!
//! A pin is a reference on the frame's head (`Memory::update` with a
//! recheck of the frame's life, then `Memory::put`), as GUP takes. The
//! software MMU honours them as Linux does: a pinned frame survives the
//! primary's unmapping until the last reference goes, and a pinned page
//! that is not `PageAnonExclusive` is copied, not reused, on a write fault.
//! (It does not refuse to migrate pinned pages, which Linux does.)

mod bugs;
mod config;
mod handle;
mod index;
mod protocol;
mod rebuild;
mod registration;

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use mmun_core::driver_lock::{DriverLock, FaultGuard, Retry};
use mmun_core::lockdep::LockClass;
use mmun_core::{IntervalNotifier, IntervalSub, Range, Seq};
use mmun_softmmu::layout::{PAGE_SIZE, align_down, align_up};
use mmun_softmmu::{AddressSpace, Translation};

pub use config::{RcacheConfig, RcacheStats};
use config::{Stats, bump};
use handle::Held;
pub use handle::{RegHandle, UseGuard};
use rebuild::{Locked, Rebuild, Retired};

use crate::coherence::Coherence;
use crate::secondary::{Access, Counters, FaultError, Secondary};
use index::Index;
use protocol::Protocol;
use registration::{RegionOps, Registration, State, pin, unpin_all};

/// The name the oracle reports violations under.
const NAME: &str = "rcache";

/// The cache lock's lockdep class (UCX's `rcache->lock`).
static CACHE_LOCK: LockClass = LockClass::new("rcache->lock");

/// The state shared by the cache, its handles and its notifiers' callbacks.
struct Shared {
    space: Arc<AddressSpace>,
    coherence: Arc<Coherence>,
    config: RcacheConfig,
    /// The textbook steps, or the broken ones of an injected bug.
    protocol: &'static dyn Protocol,
    index: ArcSwap<Index>,
    /// The LRU clock: advanced by each publication, stamped by each hit.
    clock: AtomicU64,
    next_id: AtomicU64,
    /// The cache lock: the driver lock of the retry protocol.
    locked: DriverLock<Locked>,
    stats: Stats,
    /// Counts [`Secondary::fault`]s, to choose their buffers.
    buffers: AtomicU64,
    /// Called in the middle of each [`Secondary::access`] use (see
    /// [`RegistrationCache::set_use_hook`]).
    use_hook: OnceLock<UseHook>,
}

/// A hook a test harness runs in the middle of a use, while the use
/// reference is held: where a real device's transfer takes its time.
pub type UseHook = Box<dyn Fn() + Send + Sync>;

impl Shared {
    /// The LRU clock's reading.
    #[inline]
    fn now(&self) -> u64 {
        self.clock.load(Relaxed)
    }

    /// The notifier callback of `reg` (see the module docs).
    fn invalidate(
        &self,
        reg: &Registration,
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
        if !reg.drain(range.is_blockable()) {
            // Dead, so no new use; the reaper unpins once the uses end.
            return false;
        }
        reg.unpin(self.space.memory());
        true
    }
}

/// Why a walk of the primary did not produce a registration.
enum WalkError {
    /// A page is not accessible: the registration fails.
    Unmapped,
    /// A page changed between faulting and pinning: walk again.
    Collided,
}

/// A registration cache over one address space. See the module docs.
pub struct RegistrationCache {
    shared: Arc<Shared>,
}

impl RegistrationCache {
    /// An empty cache over `space`, whose uses `coherence` checks.
    pub fn new(
        space: Arc<AddressSpace>,
        coherence: Arc<Coherence>,
        config: RcacheConfig,
    ) -> RegistrationCache {
        let shared = Shared {
            space,
            coherence,
            config,
            protocol: protocol::for_bug(config.bug),
            index: ArcSwap::from_pointee(Index::default()),
            clock: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            locked: DriverLock::new(&CACHE_LOCK, Locked::default()),
            stats: Stats::default(),
            buffers: AtomicU64::new(0),
            use_hook: OnceLock::new(),
        };
        RegistrationCache {
            shared: Arc::new(shared),
        }
    }

    /// A registration covering `[addr, addr + len)` (at least the byte at
    /// `addr`): a cached one if one is live, otherwise a new one, which
    /// faults in and pins every page (for writing where the mapping
    /// allows it).
    ///
    /// # Errors
    ///
    /// [`FaultError::Unmapped`] if a page is not accessible;
    /// [`FaultError::Released`] after the address space exited.
    #[inline(always)]
    pub fn get(&self, addr: u64, len: u64) -> Result<RegHandle<'_>, FaultError> {
        match self.lookup(addr, len) {
            Some(handle) => Ok(handle),
            None => self.get_slow(addr, len),
        }
    }

    /// The hit path of [`RegistrationCache::get`] alone: a live cached
    /// registration covering `[addr, addr + len)`, or `None`. Takes no lock.
    #[inline(always)]
    pub fn lookup(&self, addr: u64, len: u64) -> Option<RegHandle<'_>> {
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
            issued,
            acks,
        })
    }

    /// Finishes the deferred work: drops invalidated registrations from the
    /// index, removes their notifiers and releases what they still pin.
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

    /// Sets the hook every [`Secondary::access`] runs twice: between its
    /// lookup and taking the use reference (a preempted thread), and after
    /// its first page and before the rest, with the use reference held (a
    /// slow transfer: invalidations of the registration must wait for it).
    /// Once per cache.
    ///
    /// # Errors
    ///
    /// Gives `hook` back if one is set already.
    pub fn set_use_hook(&self, hook: UseHook) -> Result<(), UseHook> {
        self.shared.use_hook.set(hook)
    }

    /// The address space the cache registers memory of.
    pub fn space(&self) -> &Arc<AddressSpace> {
        &self.shared.space
    }

    #[cold]
    fn get_slow(&self, addr: u64, len: u64) -> Result<RegHandle<'_>, FaultError> {
        let want = page_range(addr, len).ok_or(FaultError::Unmapped)?;
        let merged = self.merged_with_live(want);
        match self.register(merged, want) {
            // Part of a neighbour's range went away: register just ours.
            Err(FaultError::Unmapped) if merged != want => self.register(want, want),
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
    fn register(&self, range: (u64, u64), want: (u64, u64)) -> Result<RegHandle<'_>, FaultError> {
        let (start, end) = range;
        let id = self.shared.next_id.fetch_add(1, Relaxed);
        let reg = Arc::new(Registration::new(id, start, end));
        let ops = RegionOps {
            reg: Arc::clone(&reg),
            cache: Arc::downgrade(&self.shared),
        };
        let notifier = IntervalNotifier::insert(self.shared.space.mm(), start, end - start, ops)
            .map_err(core_error)?;
        let (pages, locked) = match self.walk(&notifier, start, end) {
            Ok(walked) => walked,
            Err(err) => {
                notifier.remove();
                return Err(err);
            }
        };
        reg.adopt(pages);
        let (chosen, retired) = self.publish(locked, reg, notifier, want);
        self.finish(retired);
        Ok(RegHandle {
            cache: &self.shared,
            acks: chosen.acks(),
            held: Held::Owned(chosen),
            issued: State::Live,
        })
    }

    /// The collision-retry loop: `read_begin`, fault and pin, lock,
    /// `read_retry`. Returns the pinned pages with the cache lock held, so
    /// that publication happens before any callback can run for them.
    fn walk(
        &self,
        notifier: &IntervalNotifier<RegionOps>,
        start: u64,
        end: u64,
    ) -> Result<(Vec<Translation>, FaultGuard<'_, Locked>), FaultError> {
        loop {
            let seq = notifier.read_begin();
            match fault_and_pin(&self.shared.space, start, end) {
                Ok(pages) => match self.shared.locked.lock_if_current(notifier, seq) {
                    Ok(locked) => return Ok((pages, locked)),
                    Err(Retry) => unpin_all(self.shared.space.memory(), &pages),
                },
                Err(WalkError::Unmapped) => return Err(FaultError::Unmapped),
                // The page changed under the walk, so an invalidation ran;
                // the next `read_begin` waits for it to end.
                Err(WalkError::Collided) => {}
            }
            bump(&self.shared.stats.retries);
        }
    }

    /// Publishes `reg` under the lock taken by [`Self::walk`], unless a live
    /// registration covering `want` appeared meanwhile (then that one is
    /// returned and `reg` retired). Returns the registration to hand out
    /// and what left the index.
    fn publish(
        &self,
        mut locked: FaultGuard<'_, Locked>,
        reg: Arc<Registration>,
        notifier: IntervalNotifier<RegionOps>,
        want: (u64, u64),
    ) -> (Arc<Registration>, Vec<Retired>) {
        let shared = &*self.shared;
        let current = shared.index.load_full();
        if let Some(existing) = current.find(want.0, want.1)
            && existing.state() == State::Live
        {
            reg.kill();
            return (Arc::clone(existing), vec![(reg, Some(notifier))]);
        }
        let now = shared.clock.fetch_add(1, Relaxed) + 1;
        let mut rebuild = Rebuild::new(&mut locked, &current);
        rebuild.retain(|r| r.state() == State::Live && !r.overlaps(reg.start, reg.end));
        rebuild.insert(Arc::clone(&reg), notifier, now);
        let evicted = rebuild.evict(&reg, &shared.config);
        let retired = rebuild.store(&shared.index);
        drop(locked);
        bump(&shared.stats.registrations);
        shared.stats.evictions.fetch_add(evicted, Relaxed);
        (reg, retired)
    }

    /// Rebuilds the index with the live registrations `keep` accepts and
    /// tears down the rest; returns how many went.
    fn rebuild_keeping(&self, keep: impl Fn(&Registration) -> bool) -> usize {
        let retired = {
            let mut locked = self.shared.locked.lock();
            let current = self.shared.index.load_full();
            let mut rebuild = Rebuild::new(&mut locked, &current);
            rebuild.retain(|r| r.state() == State::Live && keep(r));
            rebuild.store(&self.shared.index)
        };
        let count = retired.len();
        self.finish(retired);
        count
    }

    /// The deferred teardown, with no lock held: wait for the last uses,
    /// unpin, remove the notifier.
    fn finish(&self, retired: Vec<Retired>) {
        for (reg, notifier) in retired {
            reg.drain(true);
            reg.unpin(self.shared.space.memory());
            if let Some(notifier) = notifier {
                notifier.remove();
            }
            bump(&self.shared.stats.reaped);
        }
    }
}

/// Faults in and pins every page of `[start, end)`; on failure nothing
/// stays pinned.
fn fault_and_pin(
    space: &AddressSpace,
    start: u64,
    end: u64,
) -> Result<Vec<Translation>, WalkError> {
    let mut pages = Vec::with_capacity(((end - start) / PAGE_SIZE) as usize);
    for va in (start..end).step_by(PAGE_SIZE as usize) {
        match fault_page(space, va) {
            Ok(t) => pages.push(t),
            Err(err) => {
                unpin_all(space.memory(), &pages);
                return Err(err);
            }
        }
    }
    Ok(pages)
}

/// One page of the walk: a write fault where the mapping allows it (it
/// breaks COW now, as `ibv_reg_mr` with write access does), else a read
/// fault; then the translation, pinned.
fn fault_page(space: &AddressSpace, va: u64) -> Result<Translation, WalkError> {
    if space.access(va, true).is_err() {
        space.access(va, false).map_err(|_| WalkError::Unmapped)?;
    }
    let t = space.translate_frame(va).ok_or(WalkError::Collided)?;
    if !pin(space.memory(), t) {
        return Err(WalkError::Collided);
    }
    Ok(t)
}

/// The pages holding `[addr, addr + len)` (at least one), or `None` past
/// the end of the address range.
fn page_range(addr: u64, len: u64) -> Option<(u64, u64)> {
    let end = align_up(addr.checked_add(len.max(1))?, PAGE_SIZE)?;
    Some((align_down(addr, PAGE_SIZE), end))
}

fn core_error(err: mmun_core::Error) -> FaultError {
    match err {
        mmun_core::Error::Overflow => FaultError::Unmapped,
        _ => FaultError::Released,
    }
}

impl Secondary for RegistrationCache {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Gets a registration of the page holding `va`, or of a buffer
    /// around it (see [`RcacheConfig::fault_pages`]).
    fn fault(&self, va: u64, write: bool) -> Result<(), FaultError> {
        let page = align_down(va, PAGE_SIZE);
        let (addr, len) = self.buffer_around(page);
        let handle = match self.get(addr, len) {
            Err(FaultError::Unmapped) if len > PAGE_SIZE => self.get(page, PAGE_SIZE)?,
            result => result?,
        };
        if write && !handle.translation(va).is_some_and(|t| t.writable) {
            // Registered read-only because the mapping refused a write.
            return Err(FaultError::Unmapped);
        }
        bump(&self.shared.stats.faults);
        Ok(())
    }

    /// The hit path, then (after the use hook) one use: of the page
    /// holding `va`, then (after the use hook again) of up to [`RcacheConfig::fault_pages`] - 1 more pages
    /// of the registration.
    fn access(&self, va: u64, write: bool) -> Access {
        let outcome = match self.lookup(va, 1) {
            Some(handle) => self.use_pages(&handle, va, write),
            None => Access::Miss,
        };
        match outcome {
            Access::Hit => bump(&self.shared.stats.hits),
            Access::Miss => bump(&self.shared.stats.misses),
        }
        outcome
    }

    fn counters(&self) -> Counters {
        let s = self.stats();
        Counters {
            faults: s.faults,
            retries: s.retries,
            invalidations: s.invalidations,
            hits: s.hits,
            misses: s.misses,
        }
    }
}

impl RegistrationCache {
    /// The buffer a fault of `page` registers: `(addr, len)` covering it.
    fn buffer_around(&self, page: u64) -> (u64, u64) {
        let most = self.shared.config.fault_pages.max(1);
        if most == 1 {
            return (page, PAGE_SIZE);
        }
        let r = mix(self.shared.buffers.fetch_add(1, Relaxed));
        let pages = 1 + r % most;
        let before = ((r >> 8) % pages).min(page / PAGE_SIZE);
        let after = pages - 1 - before;
        // Unaligned ends half the time, as malloc'd buffers have.
        let (head, tail) = if r & (1 << 40) != 0 {
            ((r >> 16) % PAGE_SIZE, (r >> 28) % PAGE_SIZE)
        } else {
            (0, 0)
        };
        let head = if before == 0 { 0 } else { head };
        let addr = page - before * PAGE_SIZE + head;
        let end = page + (after + 1) * PAGE_SIZE - tail;
        (addr, end - addr)
    }

    /// One use of `handle`: `va`'s page, the hook, then more pages.
    fn use_pages(&self, handle: &RegHandle<'_>, va: u64, write: bool) -> Access {
        let hook = self.shared.use_hook.get();
        if let Some(hook) = hook {
            // Between the lookup and the use reference: where a thread
            // preempted after its lookup resumes with a handle that may
            // have been invalidated meanwhile.
            hook();
        }
        let Some(guard) = handle.begin_use() else {
            return Access::Miss;
        };
        let outcome = guard.access(va, write);
        if outcome == Access::Miss {
            return outcome;
        }
        if let Some(hook) = hook {
            hook();
        }
        let more = self.shared.config.fault_pages.max(1) - 1;
        let page = align_down(va, PAGE_SIZE);
        for i in 1..=more {
            let next = page + i * PAGE_SIZE;
            if next >= handle.end() {
                break;
            }
            // A read: the registration may be writable only in part.
            guard.access(next, false);
        }
        outcome
    }
}

/// A 64-bit finaliser (splitmix64's), to spread a counter's bits.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Drop for RegistrationCache {
    /// Unpins everything and removes every notifier.
    fn drop(&mut self) {
        self.purge();
    }
}

impl fmt::Debug for RegistrationCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let locked = self.shared.locked.lock();
        f.debug_struct("RegistrationCache")
            .field("live_regions", &locked.live_regions)
            .field("live_bytes", &locked.live_bytes)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}
