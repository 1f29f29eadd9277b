//! The notifier side of the shadow MMU: the state the callbacks share with
//! the fault and access paths, and the ops tables.
//!
//! Kernel counterpart: `kvm_mmu_notifier_ops` and its callbacks in
//! `virt/kvm/kvm_main.c` (v6.5), with the memslot machinery reduced to one
//! identity slot covering the whole address space.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mmun_core::ops::PteValue;
use mmun_core::{Mm, NotifierOps, Range, StartFn};
use mmun_softmmu::frame::FrameKind;
use mmun_softmmu::layout::{PAGE_SIZE, align_down};
use mmun_softmmu::{Memory, Translation};
use std::sync::OnceLock;

use parking_lot::{Mutex, MutexGuard};

use super::protocol::Protocol;
use super::table::Table;
use crate::Bug;

/// x86-64 PTE bits `change_pte` decodes (`pte_present`, `pte_write`,
/// `pte_pfn`): the layout the software MMU's PTEs use.
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITE: u64 = 1 << 1;
const PTE_PFN_SHIFT: u32 = 12;
const PTE_PFN_BITS: u32 = 40;

/// Event counts, updated without `mmu_lock`.
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) faults: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) walk_retries: AtomicU64,
    pub(super) invalidations: AtomicU64,
    pub(super) nonblocking: AtomicU64,
    pub(super) ends: AtomicU64,
    pub(super) unpaired_ends: AtomicU64,
    pub(super) zapped: AtomicU64,
    pub(super) hits: AtomicU64,
    pub(super) misses: AtomicU64,
    pub(super) checks: AtomicU64,
    pub(super) inconclusive: AtomicU64,
    pub(super) aging: AtomicU64,
    pub(super) young: AtomicU64,
    pub(super) flushes: AtomicU64,
    pub(super) test_young: AtomicU64,
    pub(super) change_pte: AtomicU64,
    pub(super) change_pte_updates: AtomicU64,
    pub(super) releases: AtomicU64,
}

/// Adds one to a counter.
pub(super) fn bump(counter: &AtomicU64) {
    add(counter, 1);
}

/// Adds `n` to a counter.
pub(super) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Reads a counter.
pub(super) fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// What the callbacks and the fault/access paths share.
#[derive(Debug)]
pub(super) struct Inner {
    pub(super) bug: Option<Bug>,
    /// The textbook steps, or the broken ones of an injected bug.
    pub(super) protocol: &'static dyn Protocol,
    /// To look up the life (serial) of the frame `change_pte` names,
    /// without the primary's page-table lock its caller holds.
    pub(super) memory: Arc<Memory>,
    /// `kvm->mmu_lock`.
    mmu_lock: Mutex<Table>,
    /// `kvm->mmu_invalidate_seq`: written only under `mmu_lock`, read
    /// without it by the fault path's snapshot.
    seq: AtomicU64,
    pub(super) stats: Stats,
    /// Run after each release of `mmu_lock` (see [`PreemptHook`]).
    pub(super) preempt: OnceLock<Preempt>,
    /// Run at the end of each fault's walk (see `ShadowMmu::set_walk_hook`).
    pub(super) walked: OnceLock<Preempt>,
}

/// A [`PreemptHook`], shown in `Debug` by its presence only.
pub(super) struct Preempt(pub(super) PreemptHook);

impl std::fmt::Debug for Preempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreemptHook")
    }
}

/// A hook a test harness runs right after each release of `mmu_lock`, on
/// the releasing thread: the points where a kernel thread running KVM's
/// code could be preempted (or another CPU take the lock), between two
/// critical sections of one callback in particular. It lives in the lock,
/// not in the callbacks, so it reaches every such point a callback has,
/// correct or not.
pub type PreemptHook = Box<dyn Fn() + Send + Sync>;

/// `mmu_lock` held: the table, and the hook to run once it is released.
pub(super) struct MmuGuard<'a> {
    table: Option<MutexGuard<'a, Table>>,
    preempt: Option<&'a Preempt>,
}

impl std::ops::Deref for MmuGuard<'_> {
    type Target = Table;
    fn deref(&self) -> &Table {
        self.table.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for MmuGuard<'_> {
    fn deref_mut(&mut self) -> &mut Table {
        self.table.as_mut().expect("held until dropped")
    }
}

impl Drop for MmuGuard<'_> {
    fn drop(&mut self) {
        // Unlock first: the hook may take `mmu_lock` itself.
        drop(self.table.take());
        if let Some(hook) = self.preempt {
            (hook.0)();
        }
    }
}

impl Inner {
    pub(super) fn new(memory: Arc<Memory>, bug: Option<Bug>) -> Inner {
        Inner {
            bug,
            protocol: super::protocol::for_bug(bug),
            memory,
            mmu_lock: Mutex::new(Table::default()),
            seq: AtomicU64::new(0),
            stats: Stats::default(),
            preempt: OnceLock::new(),
            walked: OnceLock::new(),
        }
    }

    /// Takes `mmu_lock`. Never held across anything that may block on
    /// another lock (in particular not across a walk of the primary, whose
    /// page-table lock the callbacks are called under).
    pub(super) fn lock(&self) -> MmuGuard<'_> {
        MmuGuard {
            table: Some(self.mmu_lock.lock()),
            preempt: self.preempt.get(),
        }
    }

    /// `fault->mmu_seq = kvm->mmu_invalidate_seq; smp_rmb()`: the acquire
    /// keeps the walk that follows from being done before the snapshot.
    pub(super) fn seq_snapshot(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// The sequence as seen under `mmu_lock`.
    pub(super) fn seq_locked(&self, _table: &Table) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }

    /// `seq++`, under `mmu_lock`; release-ordered for the lockless
    /// snapshot (KVM's `smp_wmb` before `in_progress--`).
    pub(super) fn bump_seq(&self, _table: &mut Table) {
        self.seq.fetch_add(1, Ordering::Release);
    }

    /// `is_page_fault_stale` → `mmu_invalidate_retry_hva` (v6.5): an
    /// invalidation covering the page is in progress, or one ended since
    /// the snapshot.
    pub(super) fn fault_is_stale(&self, table: &Table, page: u64, mmu_seq: u64) -> bool {
        table.collides(page) || self.seq_locked(table) != mmu_seq
    }

    /// `invalidate_range_start` → `kvm_mmu_invalidate_begin` +
    /// `kvm_unmap_gfn_range` + flush. Every event is an unmap to KVM.
    ///
    /// For a non-blockable range (the OOM reaper) this still takes
    /// `mmu_lock` and waits for it, as KVM takes its spinning `mmu_lock`:
    /// every critical section under it is short and never sleeps or waits
    /// for another lock, so the wait is bounded spinning, not the sleep a
    /// non-blockable range forbids. KVM's start never fails, so the start is
    /// `Infallible` and there is no `try_lock` to refuse with.
    pub(super) fn invalidate_range_start(&self, range: &Range<'_>) {
        let mut table = self.lock();
        table.begin(range.start(), range.end());
        self.zap(&mut table, range);
    }

    /// `kvm_unmap_gfn_range` + flush.
    pub(super) fn zap(&self, table: &mut Table, range: &Range<'_>) {
        let zapped = table.zap(range.start(), range.end());
        add(&self.stats.zapped, zapped as u64);
    }

    /// `invalidate_range_end` → `kvm_mmu_invalidate_end`: `seq++` first,
    /// then `in_progress--`. The other order would let a fault that walked
    /// the primary before the update see neither: no invalidation in
    /// progress and the sequence it snapshot, and install the old page.
    pub(super) fn invalidate_range_end(&self, _range: &Range<'_>) {
        let mut table = self.lock();
        self.bump_seq(&mut table);
        self.finish(&mut table);
    }

    /// `mmu_invalidate_in_progress--`, counting an end without a start.
    pub(super) fn finish(&self, table: &mut Table) {
        if !table.finish() {
            bump(&self.stats.unpaired_ends);
        }
    }

    /// `clear_flush_young` / `clear_young` → `kvm_age_gfn`: test and clear
    /// the accessed bits of the range; the flush is counted, since uses read
    /// the table itself and there is no cached copy to shoot down.
    fn age(&self, start: u64, end: u64, flush: bool) -> bool {
        bump(&self.stats.aging);
        let young = self.lock().age(start, end);
        if young {
            bump(&self.stats.young);
            if flush {
                bump(&self.stats.flushes);
            }
        }
        young
    }

    /// `test_young` → `kvm_test_age_gfn` on `[addr, addr + 1)`.
    fn test_young(&self, addr: u64) -> bool {
        bump(&self.stats.test_young);
        self.lock().is_young(align_down(addr, PAGE_SIZE))
    }

    /// `change_pte` (v6.5) → `kvm_set_spte_gfn`, as the TDP MMU's
    /// `set_spte_gfn` does it: nothing unless an invalidation is in
    /// progress; a present entry is dropped, and replaced by a read-only,
    /// not-accessed entry for the new frame if the new PTE is present and
    /// read-only. A writable new PTE is left to the next fault, which keeps
    /// the write-tracking in the primary.
    ///
    /// The call is always nested in a `Clear` whose start already zapped
    /// the page, so for a correct shadow this finds nothing (KVM's
    /// change_pte was dead code for that reason). The replacement is still
    /// coherent: the primary installs exactly this PTE right after, under
    /// the page-table lock every check of the primary has to wait for; the
    /// frame's life is read from the frame itself, which is already
    /// allocated.
    fn change_pte(&self, addr: u64, pte: PteValue) {
        bump(&self.stats.change_pte);
        let page = align_down(addr, PAGE_SIZE);
        let mut table = self.lock();
        if table.in_progress() == 0 || !table.is_present(page) {
            return;
        }
        table.zap(page, page + PAGE_SIZE);
        let Some(translation) = self.read_only_translation(pte) else {
            return;
        };
        table.install(page, translation, false);
        bump(&self.stats.change_pte_updates);
    }

    /// The frame a new primary PTE maps, if it is present, read-only and
    /// allocated.
    fn read_only_translation(&self, pte: PteValue) -> Option<Translation> {
        if pte & PTE_PRESENT == 0 || pte & PTE_WRITE != 0 {
            return None;
        }
        let pfn = (pte >> PTE_PFN_SHIFT) & ((1 << PTE_PFN_BITS) - 1);
        let frame = self.memory.frame(pfn);
        (frame.kind != FrameKind::Free).then_some(Translation {
            pfn,
            serial: frame.serial,
            writable: false,
        })
    }

    /// `release` → `kvm_flush_shadow_all`. Idempotent: unregister and exit
    /// may both call it.
    fn release(&self) {
        bump(&self.stats.releases);
        let zapped = self.lock().release();
        add(&self.stats.zapped, zapped as u64);
    }
}

/// The callbacks take the shared state through the `Arc` the notifier owns.
type Data = Arc<Inner>;

fn start(data: &Data, range: &Range<'_>) {
    bump(&data.stats.invalidations);
    if !range.is_blockable() {
        bump(&data.stats.nonblocking);
    }
    data.protocol.invalidate_range_start(data, range);
}

fn end(data: &Data, range: &Range<'_>) {
    bump(&data.stats.ends);
    data.protocol.invalidate_range_end(data, range);
}

fn clear_flush_young(data: &Data, _mm: &Mm, start: u64, end: u64) -> bool {
    data.age(start, end, true)
}

fn clear_young(data: &Data, _mm: &Mm, start: u64, end: u64) -> bool {
    data.age(start, end, false)
}

fn test_young(data: &Data, _mm: &Mm, addr: u64) -> bool {
    data.test_young(addr)
}

fn change_pte(data: &Data, _mm: &Mm, addr: u64, pte: PteValue) {
    data.change_pte(addr, pte);
}

fn release(data: &Data, _mm: &Mm) {
    data.release();
}

/// `kvm_mmu_notifier_ops` (v6.5), with or without the end.
const fn ops(with_end: bool) -> NotifierOps<Data> {
    NotifierOps {
        release: Some(release),
        clear_flush_young: Some(clear_flush_young),
        clear_young: Some(clear_young),
        test_young: Some(test_young),
        change_pte: Some(change_pte),
        invalidate_range_start: Some(StartFn::Infallible(start)),
        invalidate_range_end: if with_end { Some(end) } else { None },
        ..NotifierOps::EMPTY
    }
}

/// The shadow MMU's callbacks.
pub(super) static OPS: NotifierOps<Data> = ops(true);

/// The same without `invalidate_range_end`, for a shadow MMU that has none.
pub(super) static OPS_WITHOUT_END: NotifierOps<Data> = ops(false);
