//! The address space: VMAs and page tables behind the mmap lock, and the
//! context every operation runs in.
//!
//! # Locking
//!
//! Operations take the core `Mm`'s mmap lock — for write to change the
//! layout (`mmap`, `munmap`, `mprotect`, `mremap`, `fork`, the flag
//! advices, `MADV_COLLAPSE`; device migration too, see
//! `migrate_device.rs`), for read to fault, zap or split within it
//! (faults, `MADV_DONTNEED`/`FREE`/`COLD`/`PAGEOUT`/`POPULATE_*`, KSM, the
//! OOM reaper; a CPU fault first tries its VMA's lock alone, see
//! `vma_lock.rs`) — or only the rmap stand-in (migration,
//! aging, reclaim, the file side's `i_mmap` walks). Then `state`, the PMD
//! lock (the upper tables and huge entries), and inside it or alone each
//! PTE table's own lock (`page_table::PteTable`): faults and zaps drop
//! `state` once they have found their table and work under its lock alone
//! (DESIGN.md, "Split page-table locks"). The VMA tree lives in `state`
//! too, but it is the mmap
//! lock that keeps it still: it changes only under the write side (plus a
//! VMA's anon_vma, set under `state` by a fault as `anon_vma_prepare` does
//! under the anon_vma lock), so an operation may keep a copy of a VMA
//! across a dropped `state`, the anon_vma excepted.
//!
//! Notifier callbacks never run under `state`: [`Ctx::start`] drops it for
//! `invalidate_range_start` and takes it again, as Linux starts before
//! `pte_offset_map_lock`, and [`Ctx::end`] drops it for the end, as Linux
//! ends after `pte_unmap_unlock`. So walkers (`translate`, `device_view`,
//! the secondaries' faults, which take `state` alone as GUP-fast and the
//! per-table step of `hmm_range_fault` do) and operations under the read
//! side can run between a start and the update, and every entry read
//! before a start is read again after it (`pte_same`).
//!
//! Secondary MMUs must still not call back into this address space from
//! their callbacks (Linux forbids the same: a callback may not take the
//! mmap lock or fault pages in). The file side of the reverse map (a hole
//! punch, a shmem collapse) runs with none of a caller's locks held and
//! takes each mapping address space's rmap stand-in, then its state, one
//! address space at a time.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use mmun_core::{Event, HeldMmLock, Invalidation, Mm, Owner, Range};
use parking_lot::Mutex;

use crate::page_table_lock::{self as ptl, PtlGuard};

use crate::frame::Memory;
use crate::page_table::{Leaf, PageTable, PmdEntry, Wait};
use crate::vma::VmaTree;
use crate::vma_lock::{Touches, VmaReaders, WriteMarks};

/// How transparent huge pages behave (`/sys/kernel/mm/transparent_hugepage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThpMode {
    /// `always`.
    Always,
    /// `madvise`: only in `MADV_HUGEPAGE` VMAs (the recorded kernel's setting).
    Madvise,
    /// `never`.
    Never,
}

/// Tunables of the simulated kernel.
#[derive(Debug, Clone)]
pub struct Config {
    /// `transparent_hugepage/enabled`.
    pub thp: ThpMode,
    /// `transparent_hugepage/use_zero_page`.
    pub thp_zero_page: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            thp: ThpMode::Madvise,
            thp_zero_page: true,
        }
    }
}

/// What `mmap` is asked for.
#[derive(Debug, Clone, Default)]
pub struct MapRequest {
    /// The address (a hint unless `fixed` or `noreplace`).
    pub addr: u64,
    /// Length in bytes (rounded up to pages).
    pub len: u64,
    /// Protection.
    pub prot: crate::uapi::Prot,
    /// `MAP_SHARED`.
    pub shared: bool,
    /// A shmem object to map (memfd) instead of anonymous memory.
    pub object: Option<Arc<crate::shmem::ShmemObject>>,
    /// `MAP_POPULATE`.
    pub populate: bool,
    /// `MAP_FIXED`: replace whatever is mapped there.
    pub fixed: bool,
    /// `MAP_FIXED_NOREPLACE`: fail with `EEXIST` if anything is mapped.
    pub noreplace: bool,
}

/// The mutable state behind the mmap lock.
pub(crate) struct State {
    pub(crate) vmas: VmaTree,
    pub(crate) pt: PageTable,
    /// `vm.max_map_count` as this process sees it (a sysctl on Linux; per
    /// address space here, so that tests can lower it).
    pub(crate) max_map_count: usize,
    /// The VMAs the current mmap writer changes (`vma_start_write`).
    pub(crate) write_marks: WriteMarks,
}

/// `DEFAULT_MAX_MAP_COUNT`: `USHRT_MAX - 5`.
pub const DEFAULT_MAX_MAP_COUNT: usize = 65_530;

/// One translation of the primary: a page frame in one of its lives, and
/// whether the primary lets it be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The base page frame.
    pub pfn: crate::Pfn,
    /// Which allocation of that frame ([`Frame::serial`](crate::frame::Frame::serial)).
    pub serial: u64,
    /// Whether the primary's entry is writable.
    pub writable: bool,
}

/// What a device may use at one address of the primary (see
/// [`AddressSpace::device_view`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceView {
    /// The frame life and whether it may be written.
    pub translation: Translation,
    /// Whether the device reaches it through its own device-exclusive entry
    /// (the CPU cannot reach it until a CPU access takes it back).
    pub exclusive: bool,
    /// Whether the device reaches it through a device-private entry of its
    /// own memory (the CPU cannot address the page at all: a CPU access
    /// migrates it back to system memory).
    pub device_private: bool,
}

/// Whether [`AddressSpace::read_leaf`] keeps the PMD lock while it reads
/// a PTE.
#[derive(Debug, Clone, Copy)]
enum Pmd {
    Hold,
    Drop,
}

/// The page-table lock was busy; see [`AddressSpace::try_device_view`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageTableBusy;

/// A simulated process address space.
pub struct AddressSpace {
    inner: Arc<Shared>,
}

/// What an address space is, behind a shared handle: a shmem object's
/// list of mappers (its `i_mmap`) holds weak references to it, so that a
/// hole punch reaches every address space mapping the object.
pub(crate) struct Shared {
    /// This address space, for the shmem objects it maps.
    me: std::sync::Weak<Shared>,
    /// Identifies this address space in frame bookkeeping.
    id: u64,
    mm: Arc<Mm>,
    memory: Arc<Memory>,
    config: Config,
    state: Mutex<State>,
    /// The faults inside a VMA under its lock rather than the mmap lock.
    vma_readers: VmaReaders,
    /// Whether the current mmap writer write-locks every VMA: a fault
    /// then goes straight to the mmap lock (a hint read without `state`;
    /// the marks under it decide).
    every_vma_written: std::sync::atomic::AtomicBool,
}

/// Everything an operation needs while it holds the locks.
pub(crate) struct Ctx<'a, L: HeldMmLock> {
    pub(crate) id: u64,
    /// The address space, as a shmem object's mapper list holds it.
    pub(crate) me: &'a std::sync::Weak<Shared>,
    pub(crate) lock: &'a L,
    pub(crate) mm: &'a Mm,
    pub(crate) mem: &'a Arc<Memory>,
    pub(crate) config: &'a Config,
    /// The faults inside VMAs under their locks (`vma_lock.rs`).
    pub(crate) vma_readers: &'a VmaReaders,
    pub(crate) st: PtlGuard<'a, State>,
}

impl<'a, L: HeldMmLock> Ctx<'a, L> {
    /// `mmu_notifier_invalidate_range_start` of a plain (owner-less) range.
    ///
    /// Linux calls the start before it takes the page-table lock for the
    /// update, so the callbacks run here with `st` dropped and taken again
    /// after they return. Meanwhile walkers (`translate`, `device_view`,
    /// the secondaries' faults) and operations that hold the mmap lock for
    /// read, or only the rmap stand-in, may read or change the page
    /// tables: whatever the caller read from `st` before the start must be
    /// read again after it.
    pub(crate) fn start(&mut self, event: Event, start: u64, end: u64) -> Invalidation<'a> {
        self.start_owner(event, start, end, None)
    }

    /// The same with an owner (`range_init_owner`).
    pub(crate) fn start_owner(
        &mut self,
        event: Event,
        start: u64,
        end: u64,
        owner: Option<Owner>,
    ) -> Invalidation<'a> {
        let range = Range::new(self.lock, event, start, end);
        let range = match owner {
            Some(o) => range.with_owner(o),
            None => range,
        };
        self.st.unlocked(|| Invalidation::start(range))
    }

    /// `mmu_notifier_invalidate_range_start_nonblock` (the OOM reaper),
    /// outside the page-table lock as [`Ctx::start`].
    pub(crate) fn start_nonblock(
        &mut self,
        event: Event,
        start: u64,
        end: u64,
    ) -> Result<Invalidation<'a>, mmun_core::WouldBlock> {
        let range = Range::new(self.lock, event, start, end);
        self.st.unlocked(|| Invalidation::start_nonblock(range))
    }

    /// `mmu_notifier_invalidate_range_end`, run after the page-table lock
    /// is dropped (Linux ends once `pte_unmap_unlock` is done); `st` is
    /// taken again for whatever the operation does next.
    pub(crate) fn end(&mut self, inv: Invalidation<'_>) {
        self.st.unlocked(|| inv.end());
    }

    /// `mmu_notifier_invalidate_range_only_end`, likewise outside the lock.
    pub(crate) fn only_end(&mut self, inv: Invalidation<'_>) {
        self.st.unlocked(|| inv.only_end());
    }
}

impl AddressSpace {
    /// Sets `vm.max_map_count` for this address space (default
    /// [`DEFAULT_MAX_MAP_COUNT`]); a fork's child inherits it.
    pub fn set_max_map_count(&self, max: usize) {
        ptl::lock(&self.inner.state).max_map_count = max;
    }

    /// `vm.max_map_count` as this address space applies it.
    pub fn max_map_count(&self) -> usize {
        ptl::lock(&self.inner.state).max_map_count
    }

    /// An empty, live address space using `memory` for its frames.
    pub fn new(memory: Arc<Memory>) -> AddressSpace {
        AddressSpace::with_config(memory, Config::default())
    }

    /// The same with explicit tunables.
    pub fn with_config(memory: Arc<Memory>, config: Config) -> AddressSpace {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        AddressSpace {
            inner: Arc::new_cyclic(|me| Shared {
                me: me.clone(),
                id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                mm: Mm::new(),
                memory,
                config,
                state: Mutex::new(State {
                    vmas: VmaTree::default(),
                    pt: PageTable::new(),
                    max_map_count: DEFAULT_MAX_MAP_COUNT,
                    write_marks: WriteMarks::default(),
                }),
                vma_readers: VmaReaders::default(),
                every_vma_written: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// The notifier side of this address space: register notifiers on it.
    pub fn mm(&self) -> &Arc<Mm> {
        &self.inner.mm
    }

    /// This address space's identity in frame bookkeeping.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The physical memory it maps.
    pub fn memory(&self) -> &Arc<Memory> {
        &self.inner.memory
    }

    /// The tunables.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// A snapshot of the VMAs.
    pub fn vmas(&self) -> Vec<crate::Vma> {
        ptl::lock(&self.inner.state).vmas.iter().cloned().collect()
    }

    /// The PTE mapping `addr` (none if unmapped or mapped by a huge entry).
    pub fn pte(&self, addr: u64) -> crate::page_table::Pte {
        ptl::lock(&self.inner.state).pt.pte(addr)
    }

    /// What a CPU access to `addr` would reach: the frame and whether it
    /// may be written. Follows huge entries. `None` if nothing is mapped or
    /// the entry is inaccessible (PROT_NONE): a secondary MMU mirroring the
    /// primary must not map it either.
    pub fn translate(&self, addr: u64) -> Option<(crate::Pfn, bool)> {
        let st = ptl::lock(&self.inner.state);
        crate::fault::translate(&st.pt, addr)
    }

    /// What a CPU access to `addr` would reach right now, with the life of
    /// the frame ([`Frame::serial`](crate::frame::Frame::serial)), read
    /// under the lock holding the entry: the primary's side of a coherence
    /// check, and the walk of a secondary MMU's fault.
    pub fn translate_frame(&self, addr: u64) -> Option<Translation> {
        self.read_leaf(addr, Wait::Block, Pmd::Drop, |leaf| {
            let (pfn, writable) = crate::fault::cpu_reach(leaf, addr)?;
            Some(self.frame_life(pfn, writable))
        })
        .expect("a blocking read gets its entry")
    }

    /// What the device `device` may use at `addr`: what a CPU access would
    /// reach ([`AddressSpace::translate_frame`]), or else the frame of a
    /// device-exclusive entry that `device` made or of a device-private
    /// entry naming a page of `device`'s memory (writable only while the
    /// entry and the VMA both allow writes). `None` otherwise, e.g. for an
    /// exclusive or device-private entry of another device.
    ///
    /// Read with the PMD lock held throughout (unlike `translate_frame`):
    /// a device's own migration changes the primary's entry and the
    /// device's table in one hold of it (the model closes test_hmm's window
    /// between `migrate_vma_pages` and `dmirror_migrate_finalize_and_map`),
    /// and the device's coherence check reads its table and this view as
    /// one state.
    pub fn device_view(&self, addr: u64, device: Option<Owner>) -> Option<DeviceView> {
        self.read_leaf(addr, Wait::Block, Pmd::Hold, |leaf| {
            self.view_of(leaf, addr, device)
        })
        .expect("a blocking read gets its entry")
    }

    /// [`AddressSpace::device_view`] without waiting for a page-table
    /// lock (the PMD lock or the PTE table's). A coherence check runs
    /// under the secondary's own lock; no callback runs under the PMD lock
    /// any more, but `invalidate_range` and `change_pte` run under a PTE
    /// table's (as Linux's do) and may take the secondary's lock, and an
    /// operation holding the PMD lock may wait for that lock through the
    /// driver's own paths (device migration's map step): the checker
    /// backs off (drops its lock, tries again) instead of waiting.
    pub fn try_device_view(
        &self,
        addr: u64,
        device: Option<Owner>,
    ) -> Result<Option<DeviceView>, PageTableBusy> {
        self.read_leaf(addr, Wait::Try, Pmd::Hold, |leaf| {
            self.view_of(leaf, addr, device)
        })
    }

    /// Reads the entry mapping `addr`: the PMD lock to find the PMD entry
    /// (a huge leaf is read under it), then the PTE table's lock. With
    /// [`Pmd::Drop`], as Linux's walkers do, the PMD lock is dropped first
    /// (`pte_offset_map_lock`), and the PMD found again if the table left
    /// it meanwhile (whoever takes a table out marks it detached under its
    /// lock): such a walk waits neither for faults nor for operations in
    /// other PTE tables, and sees every state an operation leaves between
    /// its PTE-lock holds. `f` runs under the lock that holds the entry:
    /// the frame it reads about is the life the entry maps (a zap clears
    /// an entry under that lock before it drops the frame).
    fn read_leaf<R>(
        &self,
        addr: u64,
        wait: Wait,
        pmd: Pmd,
        f: impl Fn(Leaf) -> R,
    ) -> Result<R, PageTableBusy> {
        loop {
            let st = match wait {
                Wait::Block => ptl::lock(&self.inner.state),
                Wait::Try => ptl::try_lock(&self.inner.state).ok_or(PageTableBusy)?,
            };
            let table = match st.pt.pmd(addr) {
                Some(PmdEntry::Table(table)) => table.share(),
                Some(PmdEntry::Huge(huge)) => return Ok(f(Leaf::Huge(*huge))),
                Some(PmdEntry::None) | None => return Ok(f(Leaf::None)),
            };
            let _held = match pmd {
                Pmd::Hold => Some(st),
                Pmd::Drop => {
                    drop(st);
                    None
                }
            };
            let entries = match wait {
                Wait::Block => table.lock(),
                Wait::Try => table.try_lock().ok_or(PageTableBusy)?,
            };
            if !entries.is_detached() {
                return Ok(f(Leaf::Pte(entries.get(addr))));
            }
        }
    }

    /// [`AddressSpace::device_view`] of the entry `leaf`, under its lock.
    fn view_of(&self, leaf: Leaf, addr: u64, device: Option<Owner>) -> Option<DeviceView> {
        if let Some((pfn, writable)) = crate::fault::cpu_reach(leaf, addr) {
            return Some(DeviceView {
                translation: self.frame_life(pfn, writable),
                exclusive: false,
                device_private: false,
            });
        }
        match (leaf, device) {
            (Leaf::Pte(pte), Some(device)) => self.exclusive_view_of(pte, device),
            _ => None,
        }
    }

    /// The device-exclusive entry `pte` if `device` made it, or the
    /// device-private entry if the page is in `device`'s memory.
    fn exclusive_view_of(&self, pte: crate::page_table::Pte, device: Owner) -> Option<DeviceView> {
        let device_private = match pte.swap_kind() {
            Some(crate::page_table::SwapKind::DeviceExclusive) => false,
            Some(crate::page_table::SwapKind::DevicePrivate) => true,
            _ => return None,
        };
        let frame = self.inner.memory.frame(pte.pfn());
        let holder = if device_private {
            frame.device
        } else {
            frame.exclusive_owner
        };
        if holder != Some(device) {
            return None;
        }
        // The entry alone says what the device may do: `mprotect` takes
        // write away inside its range, after the device was told. (Asking
        // the VMA instead would revoke it before the notifier ran: the VMA
        // changes before the start, which drops the page-table lock.)
        let writable = pte.swap_was_writable();
        Some(DeviceView {
            translation: self.frame_life(pte.pfn(), writable),
            exclusive: !device_private,
            device_private,
        })
    }

    fn frame_life(&self, pfn: crate::Pfn, writable: bool) -> Translation {
        Translation {
            pfn,
            serial: self.inner.memory.frame(pfn).serial,
            writable,
        }
    }

    /// The frame mapped at `addr`, whatever its protection (PROT_NONE
    /// included), and whether the entry is writable: the page-table view,
    /// for bookkeeping checks.
    pub fn mapped_frame(&self, addr: u64) -> Option<(crate::Pfn, bool)> {
        let st = ptl::lock(&self.inner.state);
        crate::fault::mapped_frame(&st.pt, addr)
    }

    /// Holds the lock of the PTE table covering `addr` until the result is
    /// dropped, as an operation in the middle of an update of that table
    /// does: faults, zaps and walks of that table wait for it, those of
    /// other tables go on (split page-table locks). `None` where no PTE
    /// table covers `addr` (nothing mapped, or a huge entry). For tests of
    /// how a secondary MMU copes with a primary stalled in one table.
    ///
    /// Do not call into this address space's page-table operations on the
    /// same thread while holding it: one that reaches this table waits for
    /// ever.
    pub fn hold_page_table(&self, addr: u64) -> Option<crate::page_table::PageTableHold> {
        let table = ptl::lock(&self.inner.state).pt.pte_table(addr)?;
        Some(table.hold())
    }

    /// Bytes of page tables in use.
    pub fn page_table_bytes(&self) -> usize {
        ptl::lock(&self.inner.state).pt.table_bytes()
    }

    /// The state of a fresh child, locked, for `fork` to fill.
    pub(crate) fn state_for_fork(&self) -> PtlGuard<'_, State> {
        ptl::lock(&self.inner.state)
    }

    /// Runs `f` with the mmap lock held for write and every VMA
    /// write-locked (see [`AddressSpace::write_op_on`]).
    pub(crate) fn write_op<R>(
        &self,
        f: impl FnOnce(&mut Ctx<'_, mmun_core::MmapWriteGuard<'_>>) -> R,
    ) -> R {
        self.write_op_on(Touches::All, f)
    }

    /// Runs `f` with the mmap lock held for write and the VMAs `touches`
    /// names write-locked (`vma_start_write`): faults already inside them
    /// finish first, later ones wait for the mmap lock; faults in other
    /// VMAs go on beside `f` (`vma_lock.rs`). `f` must change no VMA, and
    /// no page of a VMA, outside `touches`.
    pub(crate) fn write_op_on<R>(
        &self,
        touches: Touches,
        f: impl FnOnce(&mut Ctx<'_, mmun_core::MmapWriteGuard<'_>>) -> R,
    ) -> R {
        let readers = &self.inner.vma_readers;
        let every = &self.inner.every_vma_written;
        self.with_lock(&self.inner.mm.mmap_write(), |ctx| {
            every.store(touches == Touches::All, Ordering::Relaxed);
            ctx.st.write_marks.mark(touches.clone());
            if readers.any_inside(&touches) {
                ctx.st.unlocked(|| readers.wait_out(&touches));
            }
            let out = f(ctx);
            ctx.st.write_marks.clear();
            every.store(false, Ordering::Relaxed);
            out
        })
    }

    /// Whether an mmap writer has every VMA write-locked right now (a
    /// hint: see [`Shared::every_vma_written`]).
    pub(crate) fn every_vma_written(&self) -> bool {
        self.inner.every_vma_written.load(Ordering::Relaxed)
    }

    /// Runs `f` with the mmap lock held for read.
    pub(crate) fn read_op<R>(
        &self,
        f: impl FnOnce(&mut Ctx<'_, mmun_core::MmapReadGuard<'_>>) -> R,
    ) -> R {
        self.with_lock(&self.inner.mm.mmap_read(), f)
    }

    /// Runs `f` with the rmap stand-in held (reclaim, migration: no mmap lock).
    pub(crate) fn rmap_op<R>(
        &self,
        f: impl FnOnce(&mut Ctx<'_, mmun_core::RmapGuard<'_>>) -> R,
    ) -> R {
        self.inner.rmap_op(f)
    }

    /// Runs `f` with `lock` held, then the state lock.
    fn with_lock<'a, L: HeldMmLock, R>(
        &'a self,
        lock: &'a L,
        f: impl FnOnce(&mut Ctx<'a, L>) -> R,
    ) -> R {
        self.inner.with_lock(lock, f)
    }

    /// A weak handle on this address space, for a shmem object's list of
    /// mappers.
    pub(crate) fn downgrade(&self) -> std::sync::Weak<Shared> {
        Arc::downgrade(&self.inner)
    }
}

impl Shared {
    /// A snapshot of the VMAs `keep` accepts.
    pub(crate) fn vmas_mapping(&self, keep: impl Fn(&crate::Vma) -> bool) -> Vec<crate::Vma> {
        ptl::lock(&self.state)
            .vmas
            .iter()
            .filter(|v| keep(v))
            .cloned()
            .collect()
    }

    /// Runs `f` with the rmap stand-in held: how the file side
    /// (`unmap_mapping_range`, the `i_mmap` walk) reaches an address space
    /// without its mmap lock.
    pub(crate) fn rmap_op<R>(
        &self,
        f: impl FnOnce(&mut Ctx<'_, mmun_core::RmapGuard<'_>>) -> R,
    ) -> R {
        self.with_lock(&self.mm.rmap_lock(), f)
    }

    /// Runs `f` with `lock` held, then the state lock: the order every
    /// operation takes them in.
    fn with_lock<'a, L: HeldMmLock, R>(
        &'a self,
        lock: &'a L,
        f: impl FnOnce(&mut Ctx<'a, L>) -> R,
    ) -> R {
        let mut ctx = Ctx {
            id: self.id,
            me: &self.me,
            lock,
            mm: &self.mm,
            mem: &self.memory,
            config: &self.config,
            vma_readers: &self.vma_readers,
            st: ptl::lock(&self.state),
        };
        f(&mut ctx)
    }
}

impl fmt::Debug for AddressSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = ptl::lock(&self.inner.state);
        f.debug_struct("AddressSpace")
            .field("vmas", &st.vmas.len())
            .field("page_tables", &st.pt.table_count())
            .finish()
    }
}
