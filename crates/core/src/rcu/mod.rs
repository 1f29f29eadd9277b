//! Sleepable RCU: the grace-period domain that stands in for the kernel's
//! `DEFINE_STATIC_SRCU(srcu)` in `mm/mmu_notifier.c`.
//!
//! `mm/mmu_notifier.c` walks an address space's subscription list under
//! `srcu_read_lock()`, and the callbacks it runs there may sleep (take locks,
//! wait for hardware). Unregistration unlinks a subscription and then either
//! waits with `synchronize_srcu()` or frees it later via `call_srcu()`; module
//! unload waits for those deferred frees with `srcu_barrier()`. [`Srcu`]
//! provides those four operations as [`Srcu::read_lock`],
//! [`Srcu::synchronize`], [`Srcu::call`] and [`Srcu::barrier`], and
//! [`global()`] is the single domain shared by every address space.
//!
//! No existing crate fits. Epoch-based reclamation (crossbeam-epoch, seize
//! and their kin) only reclaims memory at some unspecified later time: there
//! is no "wait for all current readers" (`synchronize`) nor "wait for all
//! deferred work" (`barrier`), and a reader that sleeps while pinned stalls
//! global epoch advancement, which is exactly what notifier callbacks do.
//!
//! # Readers
//!
//! A domain keeps two sets of read-side counters, selected by an index (bit 0
//! of a flip count). Every thread that reads a domain owns a *slot* there:
//! a [`crossbeam_utils::CachePadded`] block holding a lock count and an
//! unlock count per index, claimed from the domain's registry on the
//! thread's first read section and cached in a thread-local (the global
//! domain has a dedicated one, so its readers do no lookup at all). Only the
//! owner writes its slot, so the counters are bumped with a plain relaxed
//! load and store, no RMW, and no two readers share a cache line.
//! [`Srcu::read_lock`] (`srcu_read_lock()`) reads the index, increments its
//! slot's lock count for that index and issues fence B; dropping the
//! [`SrcuReadGuard`] (`srcu_read_unlock()`) issues fence C and increments
//! the unlock count of the same index and slot. Nothing a reader does ever
//! waits, so sections may nest and may sleep for as long as they like. A
//! thread-local depth per domain backs [`Srcu::in_read_section`], used to
//! turn self-deadlocks into panics; the global domain (std) counts none on
//! its fast path and reads the depth off the thread's own slot instead (its
//! locks minus its unlocks: only the thread writes them), plus a count of
//! the sections it had to put in the shared slot.
//!
//! The dispatch path enters the global domain through
//! `Srcu::read_lock_global`: the flip count and the fence mode are statics
//! (no load of the domain in front of the lock increment), the lock is one
//! thread-local load and the increment, and the guard keeps the counter its
//! unlock increments, so the unlock is the fence and that increment.
//!
//! The global domain's readers run on the hook-safe dispatch path, so its
//! per-thread state differs (std backend): a destructor-less thread-local,
//! a slot claimed from free ones kept ready by registration and grace
//! periods (never allocated on the spot; the shared fallback slot when none
//! is free), handed back at thread exit by a pthread key destructor. See
//! `local.rs`.
//!
//! When a thread exits, its thread-local destructor releases its slots; a
//! later thread claims a released slot and continues from its (balanced)
//! counts, so the registry only grows to the peak number of threads that
//! read the domain at once, and no count ever leaves the sums. A section
//! taken while the thread's thread-locals are already destroyed (from
//! another thread-local's destructor) is counted in the domain's shared
//! fallback slot with RMWs instead. A guard leaked with `mem::forget` keeps
//! its section open for good: every later grace period of the domain waits
//! for it, as a leaked `srcu_read_lock()` does in the kernel.
//!
//! # Fences
//!
//! Fences B and C pair with the updater's fence A (see below). By default
//! they are asymmetric, like liburcu's "memb" flavour: B and C are mere
//! compiler fences, and fence A is `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`
//! between two full fences. The system call makes every running thread of
//! the process execute a full memory barrier before it returns (a thread
//! that is not running has executed one when it was switched out), which
//! promotes the readers' compiler fences to full fences with respect to
//! that fence A: wherever the barrier lands in a reader's program, either
//! what the reader did before it (its lock increment, or its whole section
//! and unlock increment) is visible to the scan after fence A, or what the
//! reader does after it sees everything the updater did before fence A.
//! The compiler fences keep the section's accesses between the two counter
//! updates in the reader's program, which is where that argument needs
//! them. A read section thus costs a thread-local access and two plain
//! counter updates, and a grace period a few microseconds more.
//!
//! The process registers for the command once, when the first domain is
//! created. Where `membarrier(2)` is unavailable or refused (other systems,
//! old kernels, seccomp), every domain uses symmetric full fences instead:
//! B and C are `fence(SeqCst)`, and so is A. The choice is made per domain at
//! construction and never changes. Under loom, which cannot model the system
//! call, fences are always symmetric.
//!
//! # Grace periods
//!
//! [`Srcu::synchronize`] (`synchronize_srcu()`) serialises updaters on a
//! mutex and then works like the kernel's classic counter-based SRCU:
//!
//! 1. wait until the index readers are *not* using has no reader left;
//! 2. flip the index, so new readers move to the other counter set;
//! 3. wait until the previously current index has no reader left.
//!
//! "No reader left" on an index is one scan: sum the unlock counts over all
//! slots, fence A, sum the lock counts, and compare. A reader's unlock
//! increment follows its lock increment across its fences, and the scan
//! reads unlocks before locks across fence A, so every unlock the scan
//! counts has its lock counted too; equality therefore means every section
//! whose lock the scan saw has ended, and fence A synchronises with those
//! sections' fence C, ordering them before whatever the updater does next.
//! Each sum reads the registry under its lock; a slot claimed between the two
//! sums only adds locks (a conservative answer), and one claimed after the
//! second sum's lock was taken belongs to a thread whose sections all start
//! after fence A, through that lock.
//!
//! A section whose lock increment the final scan of its index did *not* see
//! had its fence B after that scan's fence A in the single order of `SeqCst`
//! fences, so it observes everything the updater wrote before the grace
//! period, such as the unlinking of the object about to be freed: it cannot
//! hold a reference to it. This argument holds whichever index a reader
//! picked, because both indices are scanned; the flip only guarantees
//! progress, by bounding how many readers can still add to the index being
//! drained (those that read the index just before the flip). Phase 1 is
//! what covers such a straggler from an *earlier* grace period: a reader that
//! read the then-current index, was delayed past that grace period's scan,
//! and entered its section on what is now the inactive index, where phase 3
//! alone would never look.
//!
//! Waiting is polling: a short spin/yield backoff, then sleeps that grow to
//! a millisecond, because readers may legitimately sleep for long.
//!
//! # Deferred calls
//!
//! [`Srcu::call`] (`call_srcu()`) queues a boxed closure and returns at once;
//! it never waits, so it may be called from inside a read section. The
//! queue is drained in batches by a worker thread named `mmun-srcu`, spawned
//! on a domain's first `call`: it takes the whole queue, runs one full grace
//! period (which thus starts after every `call` of the batch), runs the
//! closures in order, and counts them as done. [`Srcu::barrier`]
//! (`srcu_barrier()`) notes how many closures had been queued when it began
//! and sleeps until that many are done. Calling `synchronize` or `barrier`
//! from inside a read section of the same domain, or `barrier` from one of
//! the domain's own callbacks, would wait for itself; those calls panic
//! instead.
//!
//! Under the loom backend (`--cfg mmun_loom`) there is no worker thread;
//! `barrier` runs the pending batches itself, grace period first, on its own
//! thread. The per-thread state lives in loom's mock thread-locals, which
//! loom destroys as each modelled thread finishes, so slot reuse is modelled
//! too.

mod deferred;
#[cfg(all(unix, not(mmun_loom)))]
pub(crate) mod fork;
mod local;
mod membarrier;
mod srcu;

#[cfg(test)]
mod tests;

pub use srcu::Srcu;
#[allow(unused_imports)]
pub use srcu::SrcuReadGuard;

/// Free slots the global domain keeps ready for threads that have not read
/// it yet, so that their first read section (on the dispatch path) claims
/// one without allocating.
#[cfg(not(mmun_loom))]
const SPARE_GLOBAL_SLOTS: usize = 64;

/// Readies the global domain for new reader threads: the thread-exit key
/// and `SPARE_GLOBAL_SLOTS` free slots. Called at registration and by
/// every grace period, where allocating is fine.
pub(crate) fn prepare_global_readers() {
    #[cfg(not(mmun_loom))]
    {
        #[cfg(unix)]
        crate::fork::register_atfork_once();
        local::prepare_exit_key();
        global().inner.reserve_slots(SPARE_GLOBAL_SLOTS);
    }
}

/// Test probe: the global domain's slot registry size and free slots.
#[doc(hidden)]
pub fn global_slot_stats() -> (usize, usize) {
    global().inner.slot_stats()
}

/// The one SRCU domain shared by all address spaces (the kernel's static
/// `srcu` in `mm/mmu_notifier.c`).
#[cfg(not(mmun_loom))]
pub(crate) fn global() -> &'static Srcu {
    static GLOBAL: std::sync::OnceLock<Srcu> = std::sync::OnceLock::new();
    GLOBAL.get_or_init(Srcu::new_global)
}

#[cfg(mmun_loom)]
loom::lazy_static! {
    static ref GLOBAL: Srcu = Srcu::new_global();
}

/// The one SRCU domain shared by all address spaces (the kernel's static
/// `srcu` in `mm/mmu_notifier.c`); under loom it is reset between
/// executions.
#[cfg(mmun_loom)]
pub(crate) fn global() -> &'static Srcu {
    &GLOBAL
}
