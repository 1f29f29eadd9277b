//! The SRCU domain itself: read-side counters and `synchronize()`.
//!
//! The design narrative, including the memory-ordering argument that the
//! comments below refer to (fences A, B and C, in their symmetric and
//! asymmetric forms), is in the module documentation of [`crate::rcu`].

#![allow(unsafe_code)]

use std::fmt;
use std::marker::PhantomData;

use crossbeam_utils::CachePadded;

use super::deferred::Deferred;
use super::{local, membarrier};
use crate::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use crate::sync::{Arc, Condvar, Mutex};

/// One set of read-side counters: both indices' lock and unlock counts.
///
/// A registered slot belongs to one thread at a time, the only one that
/// writes its counters, so they are bumped with a plain load and store
/// ([`Slot::owner_lock`]); the domain's shared fallback slot is bumped with
/// RMWs instead. Either way, each counter only ever grows (wrapping after
/// 2^64 increments, which is out of reach), so "locks == unlocks" summed over
/// all slots means "every read section whose lock increment the scan saw has
/// also ended" (see `Inner::readers_done`).
#[derive(Debug, Default)]
pub(super) struct Slot {
    lock: [AtomicUsize; 2],
    unlock: [AtomicUsize; 2],
    /// Claimed by a live thread. Set only by `Inner::register_slot` under
    /// the registry lock; cleared by [`Slot::release`] when the owner exits.
    in_use: AtomicBool,
}

/// A slot in a cache line of its own, shared by the domain's registry and
/// its owner's thread-local cache.
pub(super) type SlotRef = Arc<CachePadded<Slot>>;

impl Slot {
    /// Adds one to `counter`, which only the calling thread writes: a
    /// relaxed load and store, no RMW. The load sees the latest value: this
    /// thread's own previous store, or the previous owner's last one, which
    /// happens before the slot was handed over (see `register_slot`).
    #[inline(always)]
    pub(super) fn bump(counter: &AtomicUsize) {
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
    }

    /// Counts a section start on index `idx`; owner thread only.
    #[inline(always)]
    pub(super) fn owner_lock(&self, idx: usize) {
        Self::bump(&self.lock[idx]);
    }

    /// Counts a section end on index `idx`; owner thread only.
    #[inline(always)]
    pub(super) fn owner_unlock(&self, idx: usize) {
        Self::bump(&self.unlock[idx]);
    }

    /// How many read sections the owner has open in this slot: its locks
    /// minus its unlocks. Owner thread only (it wrote every count since it
    /// claimed the slot, and the previous owner left them balanced).
    #[cfg(not(mmun_loom))]
    pub(super) fn open_sections(&self) -> usize {
        let locks = self.lock[0]
            .load(Ordering::Relaxed)
            .wrapping_add(self.lock[1].load(Ordering::Relaxed));
        let unlocks = self.unlock[0]
            .load(Ordering::Relaxed)
            .wrapping_add(self.unlock[1].load(Ordering::Relaxed));
        locks.wrapping_sub(unlocks)
    }

    /// Hands the slot back to its domain for a later thread; called by the
    /// owner's thread-local destructor, and only when the owner has no
    /// section open in it. Its counts stay: they are balanced, and the next
    /// owner continues from them.
    pub(super) fn release(&self) {
        // Release: pairs with the Acquire load in `register_slot` and
        // `claim_spare`, so that this owner's last counter stores happen
        // before the next owner's first load of them (which must not miss
        // any increment).
        self.in_use.store(false, Ordering::Release);
    }
}

/// The shared state of one domain. The callback worker holds an `Arc` to it,
/// so it outlives the [`Srcu`] handle until the worker has drained its queue.
pub(super) struct Inner {
    /// Number of index flips so far; bit 0 is the index new readers use.
    /// Written only by the grace period holding the `gp_running` turn.
    /// The global domain (std) uses `GLOBAL_FLIPS` instead: read it
    /// through [`Inner::flips`].
    flips: AtomicUsize,
    /// The registry: every slot ever handed to a thread. It only grows
    /// (slots of exited threads are reused, never removed), which is what
    /// lets a scan take it in two goes (see `readers_done`).
    pub(super) slots: Mutex<Vec<SlotRef>>,
    /// Counts of read sections that could not use a slot of their own
    /// (taken or ended while the thread's thread-locals were gone), updated
    /// with RMWs since any thread may write it.
    pub(super) fallback: CachePadded<Slot>,
    /// Readers use compiler-only fences and the scan uses `membarrier(2)`
    /// (see "# Fences" in the module docs). Decided at construction and
    /// never changed, so a reader cannot see the mode change under it.
    asymmetric: bool,
    /// This is the domain of [`super::global()`], whose per-thread state
    /// has its own thread-local fast path.
    pub(super) is_global: bool,
    /// How many registered slots are free (a hint: claims re-check
    /// `in_use` under the registry lock). Lets a thread without a slot fall
    /// back to the shared slot without taking the lock when none is free.
    pub(super) spare: AtomicUsize,
    /// Serialises grace periods (the kernel's `srcu_gp_mutex`): `true`
    /// while one runs. A flag under a briefly held lock rather than a lock
    /// held for the whole grace period, so that the fork protocol
    /// (`rcu/fork.rs`) can take it without waiting for a grace period
    /// (which may be waiting for a reader that waits for the forking
    /// thread), and a fork child can clear the turn of a grace period whose
    /// thread it did not inherit.
    pub(super) gp_running: Mutex<bool>,
    /// Wakes updaters waiting for the `gp_running` turn.
    gp_done: Condvar,
    /// The queue and worker of `call` and `barrier` (see `deferred.rs`).
    pub(super) deferred: Deferred,
    /// Identity of the domain for the per-thread bookkeeping; never reused.
    pub(super) id: u64,
}

/// A sleepable-RCU domain: the userspace stand-in for the kernel's
/// `DEFINE_STATIC_SRCU(srcu)`.
///
/// Readers bracket their accesses with [`Srcu::read_lock`]; updaters wait for
/// pre-existing readers with [`Srcu::synchronize`], or defer work past them
/// with [`Srcu::call`] and wait for that deferred work with
/// [`Srcu::barrier`]. Readers may block or sleep inside their section.
pub struct Srcu {
    pub(super) inner: Arc<Inner>,
}

/// An SRCU read-side critical section of one domain, ended by dropping the
/// guard (the kernel's `srcu_read_lock()` / `srcu_read_unlock()` pair, with
/// the index kept inside the guard).
///
/// The guard is `!Send`: a section begins and ends on the same thread, which
/// both the per-thread counter slots and the per-thread bookkeeping behind
/// [`Srcu::in_read_section`] rely on. Leaking a guard (`mem::forget`) leaves
/// its section open forever: every later grace period of the domain waits
/// for it, as in the kernel.
#[must_use = "the read section ends when the guard is dropped"]
pub struct SrcuReadGuard<'a> {
    srcu: &'a Srcu,
    /// Which counter pair this section incremented (0 or 1).
    idx: usize,
    /// The lock was counted in this thread's own slot (else in the shared
    /// fallback slot, which then takes the unlock too).
    own: bool,
    _not_send: PhantomData<*mut ()>,
}

/// A read section of the global domain ([`Srcu::read_lock_global`]); the
/// same as [`SrcuReadGuard`] with the per-thread lookup resolved at compile
/// time, for the dispatch path. With std it keeps the very counter its
/// unlock increments and the domain's fence mode, so that the unlock
/// touches neither the thread-local nor the domain; two registers, which
/// the dispatch keeps across the callbacks without spilling.
#[cfg(not(mmun_loom))]
#[must_use = "the read section ends when the guard is dropped"]
pub(crate) struct GlobalReadGuard {
    /// `unlock[idx]` of the slot the lock was counted in: this thread's
    /// own, or the domain's shared fallback slot (`SHARED`).
    unlock: &'static AtomicUsize,
    /// `SHARED` and `SYMMETRIC` (the domain uses full fences).
    flags: u8,
    _not_send: PhantomData<*mut ()>,
}

/// [`GlobalReadGuard::flags`]: the section is counted in the shared slot.
#[cfg(not(mmun_loom))]
const SHARED: u8 = 1;
/// [`GlobalReadGuard::flags`]: fences B and C are full fences.
#[cfg(not(mmun_loom))]
const SYMMETRIC: u8 = 2;

#[cfg(not(mmun_loom))]
impl Drop for GlobalReadGuard {
    #[inline(always)]
    fn drop(&mut self) {
        // As `SrcuReadGuard::drop`: fence C, then the unlock increment in
        // the slot the lock went to.
        reader_fence(self.flags & SYMMETRIC == 0);
        if self.flags & SHARED == 0 {
            // Only this thread writes its own slot, and the slot stays
            // claimed while it has a section open (`Slot::open_sections`).
            Slot::bump(self.unlock);
        } else {
            shared_unlock(self.unlock);
        }
    }
}

/// The unlock of a section counted in the shared fallback slot.
#[cfg(not(mmun_loom))]
#[cold]
fn shared_unlock(unlock: &AtomicUsize) {
    unlock.fetch_add(1, Ordering::Relaxed);
    local::global_shared_exit();
}

/// Fence B or C for a domain whose mode is `asymmetric` (see
/// `Inner::reader_fence`).
#[inline(always)]
fn reader_fence(asymmetric: bool) {
    #[cfg(not(mmun_loom))]
    if asymmetric {
        crate::sync::atomic::compiler_fence(Ordering::SeqCst);
        return;
    }
    let _ = asymmetric;
    fence(Ordering::SeqCst);
}

/// A read section of the global domain ([`Srcu::read_lock_global`]); the
/// same as [`SrcuReadGuard`] with the per-thread lookup resolved at compile
/// time, for the dispatch path.
#[cfg(mmun_loom)]
#[must_use = "the read section ends when the guard is dropped"]
pub(crate) struct GlobalReadGuard {
    srcu: &'static Srcu,
    idx: usize,
    own: bool,
    _not_send: PhantomData<*mut ()>,
}

#[cfg(mmun_loom)]
impl Drop for GlobalReadGuard {
    #[inline]
    fn drop(&mut self) {
        // As `SrcuReadGuard::drop`: fence C, then the unlock increment in
        // the slot the lock went to, else in the shared slot.
        let inner = &*self.srcu.inner;
        inner.reader_fence();
        if !local::global_exit(self.idx, self.own) {
            inner.fallback.unlock[self.idx].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The global domain's flip count (std backend; see [`Inner::flips`]). A
/// static, so that a read section of the global domain loads it directly:
/// reached through the domain, it was three dependent loads in front of the
/// lock increment, the longest chain of a list notifier's dispatch.
#[cfg(not(mmun_loom))]
static GLOBAL_FLIPS: AtomicUsize = AtomicUsize::new(0);

/// The global domain's `Inner::asymmetric` (std backend), for the same
/// reason: stored once while `super::global()` initialises the domain,
/// before any reader can reach it (readers get the domain from that
/// `OnceLock`, whose initialisation happens before its `get` returns).
#[cfg(not(mmun_loom))]
static GLOBAL_ASYMMETRIC: AtomicBool = AtomicBool::new(false);

/// Source of domain identities; 0 means "no domain". std's atomic under
/// both backends: an identity orders nothing, so loom need not see it (and
/// a loom atomic cannot live in a `static`).
static NEXT_DOMAIN_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Srcu {
    /// Creates a new, independent domain, with asymmetric fences when the
    /// system offers `membarrier(2)`.
    pub fn new() -> Self {
        Self::with(membarrier::available(), false)
    }

    /// Creates a new domain that uses symmetric full fences on both sides
    /// even where `membarrier(2)` is available: the fallback mode, for tests
    /// and measurements.
    #[doc(hidden)]
    #[allow(
        dead_code,
        reason = "used by the tests and by out-of-tree measurements"
    )]
    pub fn new_with_symmetric_fences() -> Self {
        Self::with(false, false)
    }

    /// The domain behind [`super::global()`].
    pub(super) fn new_global() -> Self {
        Self::with(membarrier::available(), true)
    }

    fn with(asymmetric: bool, is_global: bool) -> Self {
        #[cfg(not(mmun_loom))]
        if is_global {
            // Relaxed: published with the domain (see `GLOBAL_ASYMMETRIC`).
            GLOBAL_ASYMMETRIC.store(asymmetric, Ordering::Relaxed);
        }
        Self {
            inner: Arc::new(Inner {
                flips: AtomicUsize::new(0),
                slots: Mutex::new(Vec::new()),
                spare: AtomicUsize::new(0),
                fallback: CachePadded::new(Slot::default()),
                asymmetric,
                is_global,
                gp_running: Mutex::new(false),
                gp_done: Condvar::new(),
                deferred: Deferred::new(),
                // Relaxed: only uniqueness matters, which the RMW gives;
                // pairs with nothing.
                id: NEXT_DOMAIN_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            }),
        }
    }

    /// Whether this domain pairs compiler-only read-side fences with
    /// `membarrier(2)` in grace periods (else full fences on both sides).
    #[doc(hidden)]
    #[must_use]
    #[allow(
        dead_code,
        reason = "used by the tests and by out-of-tree measurements"
    )]
    pub fn uses_membarrier(&self) -> bool {
        self.inner.asymmetric
    }

    /// Enters a read-side critical section (`srcu_read_lock()`), which lasts
    /// until the returned guard is dropped. Sections nest, may block, and may
    /// last long; they never wait for an updater.
    ///
    /// Cost: a thread-local access, a plain load and store of this thread's
    /// own counter, and fence B, which is a compiler-only fence when the
    /// domain uses `membarrier(2)` and a full fence otherwise.
    #[inline]
    pub fn read_lock(&self) -> SrcuReadGuard<'_> {
        let (idx, own) = self.enter(local::enter);
        SrcuReadGuard {
            srcu: self,
            idx,
            own,
            _not_send: PhantomData,
        }
    }

    /// [`Srcu::read_lock`] on the domain of [`super::global()`], known to
    /// be it at compile time: the per-thread state is the global domain's
    /// own thread-local, without a lookup. The lock is this thread's slot
    /// (one thread-local load) and its counter; no depth is counted
    /// (`Slot::open_sections` tells it), and the guard keeps what its
    /// unlock needs.
    #[cfg(not(mmun_loom))]
    #[inline(always)]
    pub(crate) fn read_lock_global(&'static self) -> GlobalReadGuard {
        debug_assert!(self.inner.is_global, "read_lock_global on another domain");
        // Relaxed: as in `enter`.
        let idx = GLOBAL_FLIPS.load(Ordering::Relaxed) & 1;
        let (slot, mut flags) = match local::global_slot() {
            Some(slot) => {
                slot.owner_lock(idx);
                (slot, 0)
            }
            None => Self::global_lock_cold(&self.inner, idx),
        };
        // Relaxed: see `GLOBAL_ASYMMETRIC`.
        let asymmetric = GLOBAL_ASYMMETRIC.load(Ordering::Relaxed);
        // Fence B: as in `enter`.
        reader_fence(asymmetric);
        if !asymmetric {
            flags |= SYMMETRIC;
        }
        GlobalReadGuard {
            unlock: &slot.unlock[idx],
            flags,
            _not_send: PhantomData,
        }
    }

    /// The lock of a thread without a slot yet: claims one, else counts
    /// the section in the shared fallback slot (`SHARED`).
    #[cfg(not(mmun_loom))]
    #[cold]
    fn global_lock_cold(inner: &'static Inner, idx: usize) -> (&'static Slot, u8) {
        if local::global_enter(inner, idx) {
            let slot = local::global_slot().expect("global_enter counted in a claimed slot");
            (slot, 0)
        } else {
            // Counted in the shared slot (the thread-local counted it as a
            // shared section), with an RMW since other threads write it.
            inner.fallback.lock[idx].fetch_add(1, Ordering::Relaxed);
            (&inner.fallback, SHARED)
        }
    }

    /// [`Srcu::read_lock`] on the domain of [`super::global()`] (loom).
    #[cfg(mmun_loom)]
    #[inline(always)]
    pub(crate) fn read_lock_global(&'static self) -> GlobalReadGuard {
        let (idx, own) = self.enter(local::global_enter);
        GlobalReadGuard {
            srcu: self,
            idx,
            own,
            _not_send: PhantomData,
        }
    }

    /// The lock side of a read section: the index, and whether the lock
    /// was counted in this thread's own slot (`enter` counts it there).
    #[inline(always)]
    fn enter(&self, enter: impl FnOnce(&Inner, usize) -> bool) -> (usize, bool) {
        let inner = &*self.inner;
        // Relaxed: the grace-period argument holds whichever index a reader
        // picks (see "# Grace periods" in the module docs); the index only
        // steers new readers away from the counters being drained. It pairs
        // with nothing.
        let idx = inner.flips().load(Ordering::Relaxed) & 1;
        // The lock increment; relaxed, ordered before the section's accesses
        // by fence B below.
        let own = enter(inner, idx);
        if !own {
            // The thread-locals are gone: count the section in the shared
            // slot, with an RMW since other threads may write it too.
            inner.fallback.lock[idx].fetch_add(1, Ordering::Relaxed);
        }
        // Fence B (the kernel's smp_mb() B in __srcu_read_lock): orders the
        // lock increment before every access of the section. Pairs with the
        // updater's fence A in `readers_done`: either the scan after A sees
        // this increment (and waits for the matching unlock), or this
        // section sees everything the updater did before A (so it cannot
        // have found the object being retired). With membarrier(2) this is
        // a compiler fence: the membarrier in fence A runs a full barrier on
        // this CPU somewhere in this thread's program, either before the
        // increment (then the section sees the updater's earlier writes) or
        // after it (then the scan after fence A sees the increment).
        inner.reader_fence();
        (idx, own)
    }

    /// Waits until every read section of this domain that began before the
    /// call has ended (`synchronize_srcu()`). Sections that begin during the
    /// call are not waited for. Blocks (sleeps) for as long as the slowest
    /// such reader; concurrent callers are serialised.
    ///
    /// # Panics
    ///
    /// If the calling thread is itself inside a read section of this domain:
    /// the grace period would wait for that section, i.e. for itself.
    pub fn synchronize(&self) {
        if self.in_read_section() {
            panic!(
                "synchronize_srcu() called inside an SRCU read section of the same \
                 domain (it would wait for itself)"
            );
        }
        self.inner.synchronize();
    }

    /// Whether the current thread holds a read guard of this domain (taken
    /// while its thread-locals were alive).
    #[must_use]
    pub fn in_read_section(&self) -> bool {
        local::depth(&self.inner) > 0
    }
    /// Queues `f` to run after a full grace period that starts after this
    /// call (`call_srcu()`): every read section that began before `call` has
    /// ended by the time `f` runs.
    ///
    /// `f` runs on the domain's worker thread, never on the caller's thread,
    /// and `call` never waits for a grace period, so it may be invoked from
    /// inside a read section (of this or any domain) or from a callback.
    /// A panic in `f` is reported by the panic hook and otherwise ignored.
    ///
    /// # Panics
    ///
    /// If the worker thread has to be spawned and cannot be.
    pub fn call(&self, f: Box<dyn FnOnce() + Send + 'static>) {
        self.inner.deferred.call(&self.inner, f);
    }

    /// Waits until every callback queued by [`Srcu::call`] before this call
    /// began has finished running (`srcu_barrier()`). Callbacks queued
    /// concurrently or later are not waited for.
    ///
    /// Under the loom backend, which has no worker thread, `barrier` itself
    /// runs the pending callbacks on the calling thread, after a grace
    /// period.
    ///
    /// # Panics
    ///
    /// If the calling thread is inside a read section of this domain (the
    /// callbacks' grace period would wait for that section, i.e. for the
    /// caller), or is this domain's callback worker (a callback calling
    /// `barrier` would wait for its own batch).
    pub fn barrier(&self) {
        if self.in_read_section() {
            panic!(
                "srcu_barrier() called inside an SRCU read section of the same \
                 domain (the callbacks' grace period would wait for it)"
            );
        }
        #[cfg(not(mmun_loom))]
        if local::is_worker_of(self.inner.id) {
            panic!(
                "srcu_barrier() called from an SRCU callback of the same domain \
                 (it would wait for itself)"
            );
        }
        self.inner.deferred.barrier(&self.inner);
    }
}

impl Inner {
    /// The flip count: `GLOBAL_FLIPS` for the global domain (std), the
    /// domain's own otherwise. There is one global domain per process
    /// (`super::global()` creates it once), so the static is its alone.
    #[inline(always)]
    pub(super) fn flips(&self) -> &AtomicUsize {
        #[cfg(not(mmun_loom))]
        if self.is_global {
            return &GLOBAL_FLIPS;
        }
        &self.flips
    }

    /// Fence B or C: the reader's half of the fence pairs (see "# Fences"
    /// in the module docs). With `membarrier(2)` a compiler fence suffices:
    /// it keeps the compiler from moving the section's accesses across the
    /// counter update, and the updater's membarrier makes the CPU-level
    /// ordering hold at the moments it matters. Without, a full fence.
    #[inline(always)]
    fn reader_fence(&self) {
        reader_fence(self.asymmetric);
    }

    /// Fence A: the updater's half, between the two sums of a scan.
    fn heavy_fence(&self) {
        #[cfg(not(mmun_loom))]
        if self.asymmetric {
            // Orders the unlock sums (and the caller's earlier writes, such
            // as the unpublication of what it retires) before the
            // membarrier in the language's model, in which the system call
            // is opaque; the kernel's own smp_mb() on entry does the same
            // for the CPU.
            fence(Ordering::SeqCst);
            // Every running thread of the process executes a full barrier
            // before this returns: what a reader did before that point of
            // its program is visible to us after it, and what it does after
            // sees everything we did before the call. This stands for the
            // readers' missing full fences B and C.
            membarrier::heavy_barrier();
            // Orders the lock sums (and the caller's later frees) after the
            // membarrier; mirror of the fence above.
            fence(Ordering::SeqCst);
            return;
        }
        // Symmetric mode: one full fence, pairing with the readers' full
        // fences B and C.
        fence(Ordering::SeqCst);
    }

    /// Claims a slot for the calling thread: a registered one whose owner
    /// has exited, if any, else a new one appended to the registry.
    #[cold]
    pub(super) fn register_slot(&self) -> SlotRef {
        let mut slots = self.slots.lock();
        for slot in slots.iter() {
            // Acquire: pairs with the Release store in `Slot::release`, so
            // the previous owner's counter stores happen before ours.
            if !slot.in_use.load(Ordering::Acquire) {
                // Relaxed: only claims set the flag, and they hold the
                // registry lock.
                slot.in_use.store(true, Ordering::Relaxed);
                return Arc::clone(slot);
            }
        }
        let slot = Arc::new(CachePadded::new(Slot {
            in_use: AtomicBool::new(true),
            ..Slot::default()
        }));
        slots.push(Arc::clone(&slot));
        slot
    }

    /// Claims a free registered slot for the calling thread without
    /// allocating (the global domain's readers, which may run inside
    /// malloc-interposing hooks): `None` when no slot is free, and the
    /// caller counts its section in the shared fallback slot instead.
    #[cfg(not(mmun_loom))]
    pub(super) fn claim_spare(&'static self) -> Option<&'static Slot> {
        // Relaxed: a hint only; the claim below re-checks under the lock.
        if self.spare.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let slots = self.slots.lock();
        // Acquire: pairs with the Release store in `Slot::release`.
        let slot = slots.iter().find(|s| !s.in_use.load(Ordering::Acquire))?;
        // Relaxed: claims hold the registry lock.
        slot.in_use.store(true, Ordering::Relaxed);
        let _ = self
            .spare
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        let slot: *const CachePadded<Slot> = Arc::as_ptr(slot);
        // SAFETY: the registry owns an `Arc` of every slot and never drops
        // or removes one (it only grows), and `self` is `'static` (the
        // global domain lives in a static), so the slot outlives any use.
        Some(unsafe { &**slot })
    }

    /// Makes sure at least `n` registered slots are free, so that `n` new
    /// threads can claim one without allocating. Called where allocating is
    /// fine: registration and grace periods.
    #[cfg(not(mmun_loom))]
    pub(super) fn reserve_slots(&self, n: usize) {
        let mut slots = self.slots.lock();
        // Acquire: pairs with `Slot::release`, like a claim.
        let mut free = slots
            .iter()
            .filter(|s| !s.in_use.load(Ordering::Acquire))
            .count();
        while free < n {
            slots.push(Arc::new(CachePadded::new(Slot::default())));
            free += 1;
        }
        // Relaxed: a hint (see `spare`).
        self.spare.store(free, Ordering::Relaxed);
    }

    /// The registry's size and how many of its slots are free.
    pub(super) fn slot_stats(&self) -> (usize, usize) {
        let slots = self.slots.lock();
        // Acquire: pairs with `Slot::release`, like a claim.
        let free = slots
            .iter()
            .filter(|s| !s.in_use.load(Ordering::Acquire))
            .count();
        (slots.len(), free)
    }

    /// In a fork child, with the registry lock held (`slots`): hands back
    /// every slot but `own` (the forking thread's, the only thread the
    /// child has). Their owners do not exist here, and a section they had
    /// open at the fork will never end, so each such slot's unlock counts
    /// are raised to its lock counts first (as if those sections ended)
    /// and the slot is freed for the child's next threads. The shared
    /// fallback slot is balanced the same way unless the forking thread
    /// may have a section open in it itself (`own_in_fallback`).
    #[cfg(all(unix, not(mmun_loom)))]
    pub(super) fn free_dead_readers(
        &self,
        slots: &[SlotRef],
        own: Option<*const Slot>,
        own_in_fallback: bool,
    ) {
        let balance = |slot: &Slot| {
            for idx in 0..2 {
                // Relaxed: the child has one thread, this one.
                let locks = slot.lock[idx].load(Ordering::Relaxed);
                slot.unlock[idx].store(locks, Ordering::Relaxed);
            }
        };
        let mut free = 0;
        for slot in slots {
            let slot: &Slot = slot;
            if own != Some(std::ptr::from_ref(slot)) && slot.in_use.load(Ordering::Relaxed) {
                balance(slot);
                slot.release();
            }
            if !slot.in_use.load(Ordering::Relaxed) {
                free += 1;
            }
        }
        if !own_in_fallback {
            balance(&self.fallback);
        }
        // Relaxed: a hint (see `spare`).
        self.spare.store(free, Ordering::Relaxed);
    }

    /// Counts a slot handed back by an exiting thread of the global domain.
    #[cfg(not(mmun_loom))]
    pub(super) fn note_released(&self) {
        // Relaxed: a hint (see `spare`).
        self.spare.fetch_add(1, Ordering::Relaxed);
    }

    /// One full grace period, without the caller checks of
    /// [`Srcu::synchronize`] (the callback worker calls this directly).
    pub(super) fn synchronize(&self) {
        // Grace periods never run on the dispatch path: a good moment to
        // make room for new reader threads (see `local`).
        #[cfg(not(mmun_loom))]
        if self.is_global {
            super::prepare_global_readers();
        }
        let _turn = GpTurn::take(self);
        // Relaxed: only grace periods store `flips`, and they are serialised
        // by the `gp_running` turn: the previous grace period's flip precedes
        // its release of the turn under `gp_running`'s lock, which our
        // acquisition of that lock orders before this load.
        let flips = self.flips().load(Ordering::Relaxed);
        let cur = flips & 1;
        // Phase 1: drain the index readers are NOT using now. Its only
        // readers are ones that loaded the index before the previous flip and
        // incremented late; those that did so before this scan's fence A may
        // hold references to what the caller is retiring, so wait for them.
        self.wait_for_readers(cur ^ 1);
        // The flip. Relaxed: correctness does not depend on which index a
        // reader sees. It is sequenced after phase 1's fence A, so a reader
        // that loads the new index and then runs its fence B also sees
        // everything the caller did before this grace period.
        self.flips().store(flips.wrapping_add(1), Ordering::Relaxed);
        // Phase 2: drain the index that was current; with the flip done only
        // a bounded number of stragglers (readers that loaded the old index
        // just before the flip) can still add to it, so this terminates.
        self.wait_for_readers(cur);
    }

    /// Polls until a scan of index `idx` finds no reader still inside a
    /// section it saw begin: a short spin/yield backoff, then sleeps of
    /// growing length, since readers may sleep for long.
    fn wait_for_readers(&self, idx: usize) {
        #[cfg(not(mmun_loom))]
        {
            let backoff = crossbeam_utils::Backoff::new();
            let mut nap = std::time::Duration::from_micros(10);
            while !self.readers_done(idx) {
                if backoff.is_completed() {
                    std::thread::sleep(nap);
                    nap = (nap * 2).min(std::time::Duration::from_millis(1));
                } else {
                    backoff.snooze();
                }
            }
        }
        #[cfg(mmun_loom)]
        while !self.readers_done(idx) {
            // loom needs a yield in every spin loop; it also makes loom stop
            // handing this thread stale counter values.
            crate::sync::thread::yield_now();
        }
    }

    /// One scan of index `idx` (the kernel's srcu_readers_active_idx_check):
    /// sum the unlock counts, fence A, sum the lock counts, compare.
    ///
    /// Every unlock this scan counts belongs to a section whose lock it also
    /// counts (the reader's fence B/C sits between its two increments, fence A
    /// between our two sums), so `locks >= unlocks`, with equality exactly
    /// when every section whose lock we counted has ended.
    ///
    /// The registry is read twice, under its lock each time, and may have
    /// grown in between. A slot present only in the second read adds its
    /// locks and none of its unlocks, which keeps `locks >= unlocks` (the
    /// scan is merely conservative). A slot absent from the second read was
    /// claimed after that lock was taken, so after fence A: its owner's
    /// claim acquired the registry lock that this scan released after fence
    /// A, which orders fence A, and everything the caller did before it,
    /// before every section that owner runs in the slot. Those sections
    /// cannot hold what the caller retired, so they need not be counted.
    /// (The caller's retiring writes precede the first read as well, so the
    /// same argument covers slots claimed between the two reads; the second
    /// read merely counts their sections too.)
    fn readers_done(&self, idx: usize) -> bool {
        // Relaxed loads: ordered by fence A right after them.
        let unlocks = self.sum(|slot| &slot.unlock[idx]);
        // Fence A (the kernel's smp_mb() A in srcu_readers_active_idx_check).
        // Acquire side: pairs with each reader's fence C in `drop`, so an
        // unlock counted above makes that reader's whole section happen
        // before everything after this fence (the caller frees afterwards).
        // SeqCst side: pairs with the readers' fence B, so the lock sums
        // below see every increment whose fence B precedes this one, and any
        // later section sees what the caller wrote before this fence. With
        // `membarrier(2)`, the barrier it runs on each reader's CPU plays
        // the part of that reader's fences B and C in both pairings.
        self.heavy_fence();
        // Relaxed loads: ordered after fence A, which is what matters.
        let locks = self.sum(|slot| &slot.lock[idx]);
        locks == unlocks
    }

    /// Sums one counter over every registered slot and the fallback slot,
    /// under the registry lock.
    fn sum(&self, counter: impl Fn(&Slot) -> &AtomicUsize) -> usize {
        let slots = self.slots.lock();
        slots
            .iter()
            .map(|slot| &***slot)
            .chain(std::iter::once(&*self.fallback))
            .fold(0usize, |sum, slot| {
                sum.wrapping_add(counter(slot).load(Ordering::Relaxed))
            })
    }

    /// Number of slots in the registry (tests check that exited threads'
    /// slots are reused).
    /// The shared fallback slot's counts (tests check it was used).
    #[cfg(all(test, not(mmun_loom)))]
    pub(super) fn fallback_counts(&self) -> [usize; 4] {
        let f = &self.fallback;
        [
            f.lock[0].load(Ordering::Relaxed),
            f.lock[1].load(Ordering::Relaxed),
            f.unlock[0].load(Ordering::Relaxed),
            f.unlock[1].load(Ordering::Relaxed),
        ]
    }

    #[cfg(test)]
    pub(super) fn slot_count(&self) -> usize {
        self.slots.lock().len()
    }
}

/// The turn to run a grace period (`gp_running` set by us); given back on
/// drop, unwinding included.
struct GpTurn<'a>(&'a Inner);

impl<'a> GpTurn<'a> {
    /// Waits until no grace period runs, then claims the turn.
    fn take(inner: &'a Inner) -> Self {
        let mut running = inner.gp_running.lock();
        while *running {
            running = inner.gp_done.wait(running);
        }
        *running = true;
        Self(inner)
    }
}

impl Drop for GpTurn<'_> {
    fn drop(&mut self) {
        *self.0.gp_running.lock() = false;
        self.0.gp_done.notify_all();
    }
}

/// Dropping the handle lets the worker exit once it has run what is queued.
/// It is not joined: the last handle may be dropped by a callback running on
/// the worker itself. Under loom, callbacks still queued are dropped unrun
/// (as in the kernel, a domain must be `srcu_barrier()`ed before cleanup).
impl Drop for Srcu {
    fn drop(&mut self) {
        #[cfg(not(mmun_loom))]
        self.inner.deferred.shutdown();
    }
}

impl Default for Srcu {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Srcu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Srcu")
            .field("id", &self.inner.id)
            .field("membarrier", &self.inner.asymmetric)
            .finish_non_exhaustive()
    }
}

impl Drop for SrcuReadGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        let inner = &*self.srcu.inner;
        // Fence C (the kernel's smp_mb() C in __srcu_read_unlock): orders
        // every access of the section before the unlock increment. Release
        // side pairs with the updater's fence A: a scan that counts this
        // unlock is ordered after the whole section. With membarrier(2) a
        // compiler fence: a scan that read this unlock before its membarrier
        // has the barrier land after it in this thread's program, so the
        // whole section is complete before the membarrier returns.
        inner.reader_fence();
        // Relaxed increments: ordered after the section by fence C above.
        // The unlock goes to the slot the lock went to, unless the
        // thread-locals have gone since (the guard outlived them), in which
        // case the shared slot takes it: the scan only compares sums.
        if !local::exit(inner, self.idx, self.own) {
            inner.fallback.unlock[self.idx].fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl fmt::Debug for SrcuReadGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrcuReadGuard")
            .field("srcu", self.srcu)
            .field("idx", &self.idx)
            .field("own_slot", &self.own)
            .finish()
    }
}
