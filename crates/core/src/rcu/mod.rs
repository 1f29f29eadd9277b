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
//! of a flip count). Each set is sharded: every shard is its own
//! [`crossbeam_utils::CachePadded`] slot holding a lock count and an unlock
//! count per index, and each thread sticks to one shard, so uncontended
//! readers never share a cache line. [`Srcu::read_lock`] (`srcu_read_lock()`)
//! reads the index, increments its shard's lock count for that index and
//! issues a full fence (B); dropping the [`SrcuReadGuard`]
//! (`srcu_read_unlock()`) issues a full fence (C) and increments the unlock
//! count of the same index and shard. That is one uncontended atomic RMW and
//! one fence each way, with no lock and no shared write, and nothing a reader
//! does ever waits, so sections may nest and may sleep for as long as they
//! like. A thread-local depth per domain (std backend only) backs
//! [`Srcu::in_read_section`], used to turn self-deadlocks into panics.
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
//! shards, full fence (A), sum the lock counts, and compare. A reader's
//! unlock increment follows its lock increment across its fences, and the
//! scan reads unlocks before locks across fence A, so every unlock the scan
//! counts has its lock counted too; equality therefore means every section
//! whose lock the scan saw has ended, and fence A synchronises with those
//! sections' fence C, ordering them before whatever the updater does next.
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
//! thread, and [`Srcu::in_read_section`] always returns `false`.

mod deferred;
mod srcu;

#[cfg(test)]
mod tests;

pub use srcu::Srcu;
#[allow(unused_imports)]
pub use srcu::SrcuReadGuard;

/// The one SRCU domain shared by all address spaces (the kernel's static
/// `srcu` in `mm/mmu_notifier.c`).
#[cfg(not(mmun_loom))]
pub(crate) fn global() -> &'static Srcu {
    static GLOBAL: std::sync::OnceLock<Srcu> = std::sync::OnceLock::new();
    GLOBAL.get_or_init(Srcu::new)
}

#[cfg(mmun_loom)]
loom::lazy_static! {
    static ref GLOBAL: Srcu = Srcu::new();
}

/// The one SRCU domain shared by all address spaces (the kernel's static
/// `srcu` in `mm/mmu_notifier.c`); under loom it is reset between
/// executions.
#[cfg(mmun_loom)]
pub(crate) fn global() -> &'static Srcu {
    &GLOBAL
}
