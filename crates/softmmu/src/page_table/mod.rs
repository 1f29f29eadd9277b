//! Four-level page tables (PGD → PUD → PMD → PTE), allocated lazily per
//! level as Linux does, with 2 MiB PMD and 1 GiB PUD leaves.
//!
//! Which tables exist is observable through the notifiers: mprotect starts
//! its range only where a PUD entry is populated, and a THP split notifies
//! wherever a PMD can be found. So tables are created exactly where a fault
//! creates them and freed exactly where `free_pgtables` frees them.

mod pte;

pub use pte::{Pte, SwapKind};

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use mmun_core::lockdep;
use parking_lot::{ArcMutexGuard, Mutex, RawMutex};

use crate::page_table_lock::{self as ptl, PtlGuard};

use crate::layout::{
    ENTRIES, PGDIR_SIZE, PMD_SIZE, PUD_SIZE, align_down, pgd_index, pmd_index, pte_index, pud_index,
};

/// A table of PTEs (4 KiB each): 8 bytes per entry, behind the table's
/// own lock (the split page-table lock, `pte_lockptr`).
///
/// The PMD entry owns a handle; `PteTable::share` gives another, so
/// that an operation can drop the PMD lock and work on the table under
/// its own lock alone, as Linux does between `pte_offset_map_lock` and
/// `pte_unmap_unlock`. Whoever takes a table out of its PMD entry (freeing
/// page tables, a collapse, a retraction) marks it detached under its
/// lock ([`PageTable::set_pmd`] does), so a holder of a shared handle that
/// locks it afterwards sees that and goes back to the PMD, as
/// `pte_offset_map_lock` re-checks the PMD once it has the lock.
pub struct PteTable {
    shared: Arc<Mutex<PteEntries>>,
}

/// The entries of one PTE table, reached through its lock.
pub struct PteEntries {
    entries: Box<[Pte]>,
    detached: bool,
}

/// The lock of one PTE table, held (see
/// [`AddressSpace::hold_page_table`](crate::AddressSpace::hold_page_table)).
pub struct PageTableHold {
    _guard: ArcMutexGuard<RawMutex, PteEntries>,
}

impl Drop for PageTableHold {
    fn drop(&mut self) {
        lockdep::release(&ptl::PTE_LOCK);
    }
}

impl std::fmt::Debug for PageTableHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTableHold")
    }
}

/// Whether a read waits for a busy PTE table lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Waits (and is recorded in the lock-order graph).
    Block,
    /// Gives up, as a trylock that records no order: for a reader that
    /// holds a driver lock a callback under the PTE lock may take.
    Try,
}

/// A held PTE table lock.
pub(crate) type PteGuard<'a> = PtlGuard<'a, PteEntries>;

/// One entry of a PTE table, with the table's lock held.
pub(crate) struct PteSlot<'a> {
    table: PteGuard<'a>,
    index: usize,
}

/// A PMD entry: empty, a PTE table, or a 2 MiB leaf.
pub enum PmdEntry {
    /// `pmd_none`.
    None,
    /// Points to a PTE table.
    Table(PteTable),
    /// A huge (THP) leaf, or a huge zero page.
    Huge(Pte),
}

/// The last-level entry mapping an address, as a walker finds it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Leaf {
    /// No PMD entry (or a PUD leaf, which no walker here follows).
    None,
    /// A huge PMD entry.
    Huge(Pte),
    /// The PTE, none included.
    Pte(Pte),
}

/// A table of PMD entries.
pub struct PmdTable {
    entries: Box<[PmdEntry]>,
}

/// A PUD entry: empty, a PMD table, or a 1 GiB leaf.
pub enum PudEntry {
    /// `pud_none`.
    None,
    /// Points to a PMD table.
    Table(PmdTable),
    /// A 1 GiB leaf.
    Huge(Pte),
}

/// A table of PUD entries.
pub struct PudTable {
    entries: Box<[PudEntry]>,
}

/// The page tables of one address space.
pub struct PageTable {
    pgd: Box<[Option<PudTable>]>,
    tables: usize,
}

fn boxed<T>(make: impl FnMut() -> T) -> Box<[T]> {
    std::iter::repeat_with(make).take(ENTRIES).collect()
}

impl PteTable {
    fn new() -> PteTable {
        PteTable {
            shared: Arc::new(Mutex::new(PteEntries {
                entries: vec![Pte::NONE; ENTRIES].into_boxed_slice(),
                detached: false,
            })),
        }
    }

    /// Takes the table's lock (inside the PMD lock when both are held).
    #[track_caller]
    pub(crate) fn lock(&self) -> PteGuard<'_> {
        ptl::lock_class(&self.shared, &ptl::PTE_LOCK)
    }

    /// The entry for `addr`, read under the table's lock.
    pub fn get(&self, addr: u64) -> Pte {
        self.lock().get(addr)
    }

    /// Takes the table's lock if it is free; records no order.
    pub(crate) fn try_lock(&self) -> Option<PteGuard<'_>> {
        ptl::try_lock_class(&self.shared, &ptl::PTE_LOCK)
    }

    /// Takes the table's lock and keeps it until the result is dropped.
    pub(crate) fn hold(self) -> PageTableHold {
        lockdep::acquire(&ptl::PTE_LOCK);
        PageTableHold {
            _guard: self.shared.lock_arc(),
        }
    }

    /// Another handle on the same table, to lock once the PMD lock is
    /// dropped.
    pub(crate) fn share(&self) -> PteTable {
        PteTable {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Marks the table as no longer in its PMD entry, under its lock: a
    /// holder of a shared handle waits for nothing more than this lock and
    /// then sees the table is gone.
    fn detach(&self) {
        self.lock().detached = true;
    }
}

impl PteEntries {
    /// The entry for `addr`.
    pub fn get(&self, addr: u64) -> Pte {
        self.entries[pte_index(addr)]
    }

    /// The entry for `addr`, mutably.
    pub fn get_mut(&mut self, addr: u64) -> &mut Pte {
        &mut self.entries[pte_index(addr)]
    }

    /// Whether every entry is none.
    pub fn is_empty(&self) -> bool {
        self.entries.iter().all(|p| p.is_none())
    }

    /// Whether the table was taken out of its PMD entry since the handle
    /// was shared: the walk must find the PMD again.
    pub fn is_detached(&self) -> bool {
        self.detached
    }

    /// Marks the table as leaving its PMD entry, for a caller that empties
    /// it and takes it out (under the PMD lock) with no other holder of
    /// this lock in between.
    pub(crate) fn mark_detached(&mut self) {
        self.detached = true;
    }
}

impl Deref for PteSlot<'_> {
    type Target = Pte;
    fn deref(&self) -> &Pte {
        &self.table.entries[self.index]
    }
}

impl DerefMut for PteSlot<'_> {
    fn deref_mut(&mut self) -> &mut Pte {
        &mut self.table.entries[self.index]
    }
}

impl PageTable {
    /// Empty page tables: a PGD and nothing else.
    pub fn new() -> PageTable {
        PageTable {
            pgd: boxed(|| None),
            tables: 1,
        }
    }

    /// Number of tables at all levels (the PGD included).
    pub fn table_count(&self) -> usize {
        self.tables
    }

    /// Bytes the tables occupy (entries only).
    pub fn table_bytes(&self) -> usize {
        self.tables * ENTRIES * 8
    }

    /// Whether the PGD entry covering `addr` points to a PUD table.
    pub fn p4d_present(&self, addr: u64) -> bool {
        self.pgd[pgd_index(addr)].is_some()
    }

    /// The PUD entry covering `addr`, if its table exists.
    pub fn pud(&self, addr: u64) -> Option<&PudEntry> {
        self.pgd[pgd_index(addr)]
            .as_ref()
            .map(|t| &t.entries[pud_index(addr)])
    }

    /// Whether the PUD entry covering `addr` is populated (`!pud_none`).
    pub fn pud_present(&self, addr: u64) -> bool {
        matches!(self.pud(addr), Some(PudEntry::Table(_) | PudEntry::Huge(_)))
    }

    /// The PMD entry covering `addr`, if its table exists (`mm_find_pmd`).
    pub fn pmd(&self, addr: u64) -> Option<&PmdEntry> {
        match self.pud(addr)? {
            PudEntry::Table(t) => Some(&t.entries[pmd_index(addr)]),
            _ => None,
        }
    }

    /// The PMD entry covering `addr`, mutably, if its table exists.
    pub fn pmd_mut(&mut self, addr: u64) -> Option<&mut PmdEntry> {
        let pud = &mut self.pgd[pgd_index(addr)].as_mut()?.entries[pud_index(addr)];
        match pud {
            PudEntry::Table(t) => Some(&mut t.entries[pmd_index(addr)]),
            _ => None,
        }
    }

    /// The PMD entry covering `addr`, allocating the PUD and PMD tables on
    /// the way (`pud_alloc` + `pmd_alloc`).
    pub fn pmd_alloc(&mut self, addr: u64) -> &mut PmdEntry {
        let tables = &mut self.tables;
        let pud_table = self.pgd[pgd_index(addr)].get_or_insert_with(|| {
            *tables += 1;
            PudTable {
                entries: boxed(|| PudEntry::None),
            }
        });
        let pud = &mut pud_table.entries[pud_index(addr)];
        if matches!(pud, PudEntry::None) {
            *tables += 1;
            *pud = PudEntry::Table(PmdTable {
                entries: boxed(|| PmdEntry::None),
            });
        }
        match pud {
            PudEntry::Table(t) => &mut t.entries[pmd_index(addr)],
            _ => panic!("pmd_alloc() under a huge PUD at {addr:#x}"),
        }
    }

    /// The PTE for `addr`; none if any level is missing or huge.
    pub fn pte(&self, addr: u64) -> Pte {
        match self.pmd(addr) {
            Some(PmdEntry::Table(t)) => t.get(addr),
            _ => Pte::NONE,
        }
    }

    /// The PTE for `addr` as [`PageTable::pte`] reads it, or `None` if
    /// `wait` is [`Wait::Try`] and its table's lock is busy.
    pub(crate) fn read_pte(&self, addr: u64, wait: Wait) -> Option<Pte> {
        match (self.pmd(addr), wait) {
            (Some(PmdEntry::Table(t)), Wait::Block) => Some(t.get(addr)),
            (Some(PmdEntry::Table(t)), Wait::Try) => t.try_lock().map(|table| table.get(addr)),
            _ => Some(Pte::NONE),
        }
    }

    /// The PTE slot for `addr`, with its table locked, if the table exists.
    #[track_caller]
    pub(crate) fn pte_mut(&self, addr: u64) -> Option<PteSlot<'_>> {
        match self.pmd(addr)? {
            PmdEntry::Table(t) => Some(PteSlot {
                table: t.lock(),
                index: pte_index(addr),
            }),
            _ => None,
        }
    }

    /// The PTE slot for `addr`, allocating tables down to the PTE level
    /// (`pte_alloc`), with its table locked. Panics under a huge PMD:
    /// callers split first.
    #[track_caller]
    pub(crate) fn pte_alloc(&mut self, addr: u64) -> PteSlot<'_> {
        if matches!(self.pmd_alloc(addr), PmdEntry::None) {
            self.set_pmd(addr, PmdEntry::Table(PteTable::new()));
        }
        match self.pmd(addr) {
            Some(PmdEntry::Table(t)) => PteSlot {
                table: t.lock(),
                index: pte_index(addr),
            },
            _ => panic!("pte_alloc() under a huge PMD at {addr:#x}"),
        }
    }

    /// A handle on the PTE table covering `addr`, if the PMD entry holds
    /// one: to lock once the PMD lock is dropped (`pte_offset_map`).
    pub(crate) fn pte_table(&self, addr: u64) -> Option<PteTable> {
        match self.pmd(addr)? {
            PmdEntry::Table(t) => Some(t.share()),
            _ => None,
        }
    }

    /// The same, allocating the tables down to the PTE level first
    /// (`pte_alloc`); `None` under a huge PMD.
    pub(crate) fn pte_table_alloc(&mut self, addr: u64) -> Option<PteTable> {
        if matches!(self.pmd_alloc(addr), PmdEntry::None) {
            self.set_pmd(addr, PmdEntry::Table(PteTable::new()));
        }
        self.pte_table(addr)
    }

    /// Where a walk at `addr` can resume: `addr` itself if a PMD table
    /// covers it, else the end of the empty PGD or PUD entry around it
    /// (clipped to `end`), so that walks of sparse ranges skip empty levels.
    pub fn skip_empty(&self, addr: u64, end: u64) -> u64 {
        if !self.p4d_present(addr) {
            crate::layout::block_end(addr, end, PGDIR_SIZE)
        } else if !matches!(self.pud(addr), Some(PudEntry::Table(_))) {
            crate::layout::block_end(addr, end, PUD_SIZE)
        } else {
            addr
        }
    }

    /// Calls `f(addr, pte)` for every PTE slot in `[start, end)` whose PTE
    /// table exists (not under huge PMDs), in address order.
    pub(crate) fn for_each_pte_mut(
        &mut self,
        start: u64,
        end: u64,
        mut f: impl FnMut(u64, &mut Pte),
    ) {
        // Above the user address space the indices would alias lower ones.
        let end = end.min(crate::layout::TASK_SIZE);
        let mut addr = start;
        while addr < end {
            let resume = self.skip_empty(addr, end);
            if resume != addr {
                addr = resume;
                continue;
            }
            let next = crate::layout::block_end(addr, end, PMD_SIZE);
            if let Some(PmdEntry::Table(t)) = self.pmd(addr) {
                let mut table = t.lock();
                let mut a = addr;
                while a < next {
                    f(a, table.get_mut(a));
                    a += crate::layout::PAGE_SIZE;
                }
            }
            addr = next;
        }
    }

    /// Replaces the PMD entry at `addr` (which must exist) and keeps the
    /// table count right. A PTE table taken out is marked detached.
    pub fn set_pmd(&mut self, addr: u64, entry: PmdEntry) -> PmdEntry {
        let new_is_table = matches!(entry, PmdEntry::Table(_));
        let slot = self.pmd_alloc(addr);
        let old = std::mem::replace(slot, entry);
        let old_is_table = matches!(old, PmdEntry::Table(_));
        if let PmdEntry::Table(t) = &old {
            t.detach();
        }
        self.tables = self.tables + usize::from(new_is_table) - usize::from(old_is_table);
        old
    }

    /// A fresh PTE table for `set_pmd` (e.g. when splitting a huge PMD).
    pub fn new_pte_table() -> PteTable {
        PteTable::new()
    }

    /// `free_pgd_range(addr, end, floor, ceiling)`: frees the page tables
    /// covering `[addr, end)` that no address in `[floor, ceiling)` outside
    /// the range still needs. `ceiling == 0` means the top of the address
    /// space. The entries must already be empty (the range was zapped).
    pub fn free_pgd_range(&mut self, addr: u64, end: u64, floor: u64, ceiling: u64) {
        let mut addr = align_down(addr, PMD_SIZE);
        if addr < floor {
            addr = addr.wrapping_add(PMD_SIZE);
            if addr == 0 {
                return;
            }
        }
        let mut ceiling_c = ceiling;
        if ceiling_c != 0 {
            ceiling_c = align_down(ceiling_c, PMD_SIZE);
            if ceiling_c == 0 {
                return;
            }
        }
        let mut end = end;
        if end.wrapping_sub(1) > ceiling_c.wrapping_sub(1) {
            end = end.wrapping_sub(PMD_SIZE);
        }
        if addr > end.wrapping_sub(1) {
            return;
        }
        let mut a = addr;
        loop {
            let next = crate::layout::block_end(a, end, PGDIR_SIZE);
            if self.pgd[pgd_index(a)].is_some() {
                self.free_pud_range(a, next, floor, ceiling);
            }
            a = next;
            if a == end {
                break;
            }
        }
    }

    fn free_pud_range(&mut self, addr: u64, end: u64, floor: u64, ceiling: u64) {
        let mut a = addr;
        loop {
            let next = crate::layout::block_end(a, end, PUD_SIZE);
            if matches!(self.pud(a), Some(PudEntry::Table(_))) {
                self.free_pmd_range(a, next, floor, ceiling);
            }
            a = next;
            if a == end {
                break;
            }
        }
        if covers(addr, end, floor, ceiling, PGDIR_SIZE) {
            let removed = self.pgd[pgd_index(addr)].take();
            if removed.is_some() {
                self.tables -= 1;
            }
        }
    }

    fn free_pmd_range(&mut self, addr: u64, end: u64, floor: u64, ceiling: u64) {
        let mut a = addr;
        loop {
            let next = crate::layout::block_end(a, end, PMD_SIZE);
            if let Some(entry @ PmdEntry::Table(_)) = self.pmd_mut(a) {
                if let PmdEntry::Table(t) = std::mem::replace(entry, PmdEntry::None) {
                    t.detach();
                }
                self.tables -= 1;
            }
            a = next;
            if a == end {
                break;
            }
        }
        if covers(addr, end, floor, ceiling, PUD_SIZE)
            && let Some(t) = self.pgd[pgd_index(addr)].as_mut()
        {
            let pud = &mut t.entries[pud_index(addr)];
            if matches!(pud, PudEntry::Table(_)) {
                *pud = PudEntry::None;
                self.tables -= 1;
            }
        }
    }
}

/// The tail test of `free_p?d_range`: whether the `size`-aligned table
/// around `[addr, end)` is needed by nothing between `floor` and `ceiling`.
fn covers(addr: u64, end: u64, floor: u64, ceiling: u64, size: u64) -> bool {
    let start = align_down(addr, size);
    if start < floor {
        return false;
    }
    let mut ceiling = ceiling;
    if ceiling != 0 {
        ceiling = align_down(ceiling, size);
        if ceiling == 0 {
            return false;
        }
    }
    end.wrapping_sub(1) <= ceiling.wrapping_sub(1)
}

macro_rules! opaque_debug {
    ($($ty:ident),*) => {$(
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(stringify!($ty))
            }
        }
    )*};
}

opaque_debug!(PteTable, PteEntries, PmdTable, PudTable);

impl std::fmt::Debug for PmdEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PmdEntry::None => f.write_str("none"),
            PmdEntry::Table(_) => f.write_str("PTE table"),
            PmdEntry::Huge(pte) => write!(f, "huge {pte:?}"),
        }
    }
}

impl std::fmt::Debug for PudEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PudEntry::None => f.write_str("none"),
            PudEntry::Table(_) => f.write_str("PMD table"),
            PudEntry::Huge(pte) => write!(f, "huge {pte:?}"),
        }
    }
}

impl Default for PageTable {
    fn default() -> Self {
        PageTable::new()
    }
}

impl std::fmt::Debug for PageTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageTable")
            .field("tables", &self.tables)
            .finish()
    }
}
