//! The SRCU domain itself: read-side counters and `synchronize()`.
//!
//! The design narrative, including the memory-ordering argument that the
//! comments below refer to (fences A, B and C), is in the module
//! documentation of [`crate::rcu`].

use std::fmt;
use std::marker::PhantomData;

use crossbeam_utils::CachePadded;

use super::deferred::Callbacks;
use crate::sync::atomic::{AtomicUsize, Ordering, fence};
use crate::sync::{Arc, Condvar, Mutex};

/// Upper bound on the number of counter shards of one domain.
#[cfg(not(mmun_loom))]
const MAX_SHARDS: usize = 64;

/// Shards under loom: two, so that the models cover sums over several slots
/// while the state space stays small.
#[cfg(mmun_loom)]
const LOOM_SHARDS: usize = 2;

/// One shard of the read-side counters: both indices' lock and unlock
/// counts, in one cache line of their own (the `CachePadded` around it), so
/// that a reader touches exactly one line that no other shard shares.
///
/// The counters only ever grow (wrapping after 2^64 increments, which is out
/// of reach), so "locks == unlocks" over all shards means "every read section
/// whose lock increment the scan saw has also ended" (see `readers_done`).
#[derive(Debug, Default)]
pub(super) struct Shard {
    lock: [AtomicUsize; 2],
    unlock: [AtomicUsize; 2],
}

/// The shared state of one domain. The callback worker holds an `Arc` to it,
/// so it outlives the [`Srcu`] handle until the worker has drained its queue.
pub(super) struct Inner {
    /// Number of index flips so far; bit 0 is the index new readers use.
    /// Written only by `synchronize` under `gp_lock`.
    pub(super) flips: AtomicUsize,
    /// The read-side counters; the length is a power of two.
    shards: Box<[CachePadded<Shard>]>,
    /// Serialises grace periods (the kernel's `srcu_gp_mutex`).
    gp_lock: Mutex<()>,
    /// Deferred callbacks queued by `call` (see `deferred.rs`).
    pub(super) callbacks: Mutex<Callbacks>,
    /// Wakes the worker when callbacks are queued or the domain is dropped.
    pub(super) work_cv: Condvar,
    /// Wakes `barrier` callers when a batch of callbacks has finished.
    pub(super) done_cv: Condvar,
    /// Identity of the domain for the per-thread read-depth bookkeeping.
    #[cfg(not(mmun_loom))]
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
/// the per-thread bookkeeping behind [`Srcu::in_read_section`] relies on.
#[must_use = "the read section ends when the guard is dropped"]
pub struct SrcuReadGuard<'a> {
    srcu: &'a Srcu,
    /// Which counter pair this section incremented (0 or 1).
    idx: usize,
    /// Which shard; the unlock must go to the same one only for tidiness:
    /// the scan sums all shards anyway.
    shard: usize,
    _not_send: PhantomData<*mut ()>,
}

impl Srcu {
    /// Creates a new, independent domain.
    pub fn new() -> Self {
        #[cfg(not(mmun_loom))]
        let nshards = std::thread::available_parallelism()
            .map_or(4, std::num::NonZeroUsize::get)
            .next_power_of_two()
            .min(MAX_SHARDS);
        #[cfg(mmun_loom)]
        let nshards = LOOM_SHARDS;
        let shards = (0..nshards)
            .map(|_| CachePadded::new(Shard::default()))
            .collect();
        Self {
            inner: Arc::new(Inner {
                flips: AtomicUsize::new(0),
                shards,
                gp_lock: Mutex::new(()),
                callbacks: Mutex::new(Callbacks::default()),
                work_cv: Condvar::new(),
                done_cv: Condvar::new(),
                #[cfg(not(mmun_loom))]
                id: local::new_domain_id(),
            }),
        }
    }

    /// Enters a read-side critical section (`srcu_read_lock()`), which lasts
    /// until the returned guard is dropped. Sections nest, may block, and may
    /// last long; they never wait for an updater.
    ///
    /// Cost: one uncontended atomic increment on this thread's shard and one
    /// full fence, plus a thread-local depth update.
    #[inline]
    pub fn read_lock(&self) -> SrcuReadGuard<'_> {
        let inner = &*self.inner;
        #[cfg(not(mmun_loom))]
        let shard = local::enter(inner.id);
        #[cfg(mmun_loom)]
        let shard = local::loom_thread_index();
        let shard = shard & (inner.shards.len() - 1);
        // Relaxed: the grace-period argument holds whichever index a reader
        // picks (see "# Grace periods" in the module docs); the index only
        // steers new readers away from the counters being drained. It pairs
        // with nothing.
        let idx = inner.flips.load(Ordering::Relaxed) & 1;
        // Relaxed: ordered before the section's accesses by fence B below.
        inner.shards[shard].lock[idx].fetch_add(1, Ordering::Relaxed);
        // Fence B (the kernel's smp_mb() B in __srcu_read_lock): orders the
        // lock increment before every access of the section. Pairs with the
        // updater's fence A in `readers_done`: either the scan after A sees
        // this increment (and waits for the matching unlock), or this
        // section sees everything the updater did before A (so it cannot
        // have found the object being retired).
        fence(Ordering::SeqCst);
        SrcuReadGuard {
            srcu: self,
            idx,
            shard,
            _not_send: PhantomData,
        }
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

    /// Whether the current thread holds a read guard of this domain.
    ///
    /// Under the loom backend the per-thread depth is not tracked and this
    /// always returns `false`.
    #[must_use]
    pub fn in_read_section(&self) -> bool {
        #[cfg(not(mmun_loom))]
        {
            local::depth(self.inner.id) > 0
        }
        #[cfg(mmun_loom)]
        {
            false
        }
    }
}

impl Inner {
    /// One full grace period, without the caller checks of
    /// [`Srcu::synchronize`] (the callback worker calls this directly).
    pub(super) fn synchronize(&self) {
        let _gp = self.gp_lock.lock();
        // Relaxed: only grace periods store `flips`, and they are serialised
        // by `gp_lock`, whose acquisition orders this load after the previous
        // grace period's flip.
        let flips = self.flips.load(Ordering::Relaxed);
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
        self.flips.store(flips.wrapping_add(1), Ordering::Relaxed);
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
    fn readers_done(&self, idx: usize) -> bool {
        // Relaxed loads: ordered by fence A right after them.
        let unlocks = self.shards.iter().fold(0usize, |sum, shard| {
            sum.wrapping_add(shard.unlock[idx].load(Ordering::Relaxed))
        });
        // Fence A (the kernel's smp_mb() A in srcu_readers_active_idx_check).
        // Acquire side: pairs with each reader's fence C in `drop`, so an
        // unlock counted above makes that reader's whole section happen
        // before everything after this fence (the caller frees afterwards).
        // SeqCst side: pairs with the readers' fence B, so the lock sums
        // below see every increment whose fence B precedes this one, and any
        // later section sees what the caller wrote before this fence.
        fence(Ordering::SeqCst);
        // Relaxed loads: ordered after fence A, which is what matters.
        let locks = self.shards.iter().fold(0usize, |sum, shard| {
            sum.wrapping_add(shard.lock[idx].load(Ordering::Relaxed))
        });
        locks == unlocks
    }
}

impl Default for Srcu {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Srcu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Srcu");
        #[cfg(not(mmun_loom))]
        s.field("id", &self.inner.id);
        s.field("shards", &self.inner.shards.len())
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
        // unlock is ordered after the whole section.
        fence(Ordering::SeqCst);
        // Relaxed: ordered after the section by fence C above.
        inner.shards[self.shard].unlock[self.idx].fetch_add(1, Ordering::Relaxed);
        #[cfg(not(mmun_loom))]
        local::exit(inner.id);
    }
}

impl fmt::Debug for SrcuReadGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrcuReadGuard")
            .field("srcu", self.srcu)
            .field("idx", &self.idx)
            .field("shard", &self.shard)
            .finish()
    }
}

/// Per-thread state: the thread's shard, its read-section depth in each
/// domain, and whether it is some domain's callback worker.
#[cfg(not(mmun_loom))]
pub(super) mod local {
    use std::cell::{Cell, RefCell};

    use crate::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    /// Source of domain identities; 0 means "no domain".
    static NEXT_DOMAIN_ID: AtomicU64 = AtomicU64::new(1);
    /// Round-robin source of per-thread shard numbers.
    static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

    struct Local {
        /// This thread's shard number (masked by each domain), or MAX.
        shard: Cell<usize>,
        /// (domain id, depth) for each domain this thread is reading; one
        /// entry in the common case, removed when the depth drops to zero.
        depths: RefCell<Vec<(u64, usize)>>,
        /// The domain whose callback worker this thread is, or 0.
        worker_of: Cell<u64>,
    }

    thread_local! {
        static LOCAL: Local = const {
            Local {
                shard: Cell::new(usize::MAX),
                depths: RefCell::new(Vec::new()),
                worker_of: Cell::new(0),
            }
        };
    }

    pub(in crate::rcu) fn new_domain_id() -> u64 {
        // Relaxed: only uniqueness matters, which the RMW gives; pairs with
        // nothing.
        NEXT_DOMAIN_ID.fetch_add(1, Ordering::Relaxed)
    }

    /// Records one more read section of `domain` on this thread and returns
    /// the thread's shard number. During thread-local teardown (a read lock
    /// taken from a TLS destructor) the depth is not tracked and shard 0 is
    /// used; the counters stay exact either way.
    #[inline]
    pub(in crate::rcu) fn enter(domain: u64) -> usize {
        LOCAL
            .try_with(|local| {
                let mut depths = local.depths.borrow_mut();
                match depths.iter_mut().find(|(id, _)| *id == domain) {
                    Some((_, depth)) => *depth += 1,
                    None => depths.push((domain, 1)),
                }
                let mut shard = local.shard.get();
                if shard == usize::MAX {
                    // Relaxed: only spreads threads over shards; pairs with
                    // nothing.
                    shard = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) & (usize::MAX >> 1);
                    local.shard.set(shard);
                }
                shard
            })
            .unwrap_or(0)
    }

    /// Records the end of one read section of `domain` on this thread.
    #[inline]
    pub(in crate::rcu) fn exit(domain: u64) {
        let _ = LOCAL.try_with(|local| {
            let mut depths = local.depths.borrow_mut();
            if let Some(pos) = depths.iter().position(|(id, _)| *id == domain) {
                depths[pos].1 -= 1;
                if depths[pos].1 == 0 {
                    depths.swap_remove(pos);
                }
            }
        });
    }

    /// This thread's read-section depth in `domain`.
    pub(in crate::rcu) fn depth(domain: u64) -> usize {
        LOCAL
            .try_with(|local| {
                local
                    .depths
                    .borrow()
                    .iter()
                    .find(|(id, _)| *id == domain)
                    .map_or(0, |&(_, depth)| depth)
            })
            .unwrap_or(0)
    }

    /// Marks the current thread as `domain`'s callback worker.
    pub(in crate::rcu) fn set_worker_of(domain: u64) {
        LOCAL.with(|local| local.worker_of.set(domain));
    }

    /// Whether the current thread is `domain`'s callback worker.
    pub(in crate::rcu) fn is_worker_of(domain: u64) -> bool {
        LOCAL
            .try_with(|local| local.worker_of.get() == domain)
            .unwrap_or(false)
    }
}

/// Per-thread state under loom: only the shard choice, derived from loom's
/// per-execution thread index so that it is the same in every execution.
#[cfg(mmun_loom)]
pub(super) mod local {
    /// The loom thread's index (0 for the model's main thread). loom exposes
    /// it only through `ThreadId`'s `Debug` form, `ThreadId(N)`.
    pub(in crate::rcu) fn loom_thread_index() -> usize {
        let id = format!("{:?}", crate::sync::thread::current().id());
        id.bytes()
            .filter(u8::is_ascii_digit)
            .fold(0, |n, d| n * 10 + usize::from(d - b'0'))
    }
}
