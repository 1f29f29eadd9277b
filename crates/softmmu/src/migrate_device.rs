//! Migration between system memory and a device's memory, as a driver
//! drives it: `migrate_vma_setup` → `migrate_vma_pages` → the driver's
//! `finalize_and_map` → `migrate_vma_finalize`.
//!
//! Kernel counterpart: `mm/migrate_device.c` (6.18) as `lib/test_hmm.c`'s
//! `dmirror_migrate_to_device` / `dmirror_migrate_to_system` call it.
//! A device's memory is `MEMORY_DEVICE_COHERENT` (its pages stay mapped
//! by the CPU as ordinary present entries) unless the device registered
//! as device-private ([`Memory::register_device_private`]): then its pages
//! are mapped by device-private entries the CPU cannot reach, and a CPU
//! touch migrates them back ([`crate::device_private`]). Linux's rules
//! kept here:
//!
//! * The driver walks the request VMA by VMA under the mmap read lock (the
//!   write lock here: see `migrate_vmas`), in
//!   chunks of at most [`MIGRATE_CHUNK_PAGES`]; a page with no VMA, or a
//!   VMA without `VM_READ`, ends the request with `EINVAL` (chunks before
//!   it stay migrated).
//! * One `Migrate` range carrying the driver's owner covers each chunk
//!   while its pages are collected; a huge PMD in it is split first (6.18
//!   without `MIGRATE_VMA_SELECT_COMPOUND`: 512 base pages move).
//! * To a device: only private anonymous memory moves. Empty entries and
//!   zero-page entries move too (the device gets a fresh page, inserted
//!   under a second `Migrate` range, `migrate_vma_insert_page`); shared
//!   memory, KSM pages, swap-type entries and pages already in some
//!   device's memory stay (`MIGRATE_VMA_SELECT_SYSTEM` only).
//! * To system: only the pages in this owner's device memory move: its
//!   present pages (coherent) or its device-private entries
//!   (`MIGRATE_VMA_SELECT_DEVICE_PRIVATE`), never ordinary pages.
//!
//! [`Memory::register_device_private`]: crate::Memory::register_device_private

use mmun_core::{Event, HeldMmLock, Owner};

use crate::Translation;
use crate::address_space::{AddressSpace, Ctx};
use crate::error::{Errno, SysResult};
use crate::fault::anon_vma_prepare;
use crate::frame::{FrameKind, ZERO_PFN};
use crate::huge_memory::split_huge_pmd;
use crate::layout::{PAGE_SIZE, PMD_SIZE, align_down, block_end};
use crate::page_table::{PmdEntry, Pte, SwapKind};
use crate::rmap::{Mapped, finish_migration, install_migration_entry};
use crate::vma::{VmFlags, Vma};
use crate::vma_lock::Touches;

/// Pages one `migrate_vma_setup` call covers at most (test_hmm's
/// `PTRS_PER_PTE`-long pfn arrays).
const MIGRATE_CHUNK_PAGES: u64 = 512;

/// Which way a device migration moves pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// System memory → the owner's device memory.
    ToDevice,
    /// The owner's device memory → system memory.
    ToSystem,
}

/// What the collection step found at one page.
enum Collected {
    /// A mapped page, now behind a migration entry (the old entry).
    Page(Pte),
    /// Nothing, or the zero page: a fresh page is inserted.
    Hole,
}

impl AddressSpace {
    /// `migrate_vma_setup` … `migrate_vma_finalize` moving `[start, end)`
    /// to the memory of the device `owner` (see the module docs). Returns
    /// how many pages moved; 0 for a request `test_hmm` would refuse with
    /// `EINVAL` (after moving the chunks before the bad page).
    pub fn migrate_device(&self, start: u64, end: u64, owner: Owner) -> usize {
        let mut moved = 0;
        let result = self.migrate_device_and_map(start, end, owner, |_, _| moved += 1);
        result.unwrap_or(moved)
    }

    /// [`AddressSpace::migrate_device`] with the driver's
    /// `finalize_and_map` step: `map(addr, new)` is called for every moved
    /// page once its new frame is installed (`None` if the new entry is
    /// inaccessible), while the page-table lock is still held, so that the
    /// device's table holds the new frames before anyone can see the
    /// migration completed (`dmirror_migrate_finalize_and_map` runs before
    /// `migrate_vma_finalize`). The device skipped its own `Migrate`
    /// ranges, so this is what replaces its old translations. `map` runs
    /// like an invalidation callback: it may take the driver lock but must
    /// not call into this address space.
    ///
    /// # Errors
    ///
    /// `EINVAL` if a page of the range has no VMA or one without
    /// `VM_READ` (`PROT_NONE`), or the range wraps.
    pub fn migrate_device_and_map(
        &self,
        start: u64,
        end: u64,
        owner: Owner,
        map: impl FnMut(u64, Option<Translation>),
    ) -> SysResult<usize> {
        self.migrate_vmas(start, end, owner, Direction::ToDevice, map)
    }

    /// `dmirror_migrate_to_system`: the pages of `[start, end)` in
    /// `owner`'s device memory move back to system memory under
    /// `Migrate` ranges with `owner`; `unmap(addr, new)` is called for
    /// each (the driver drops its entry: `dmirror_devmem_fault_alloc_and_copy`
    /// erases it). Returns how many moved.
    ///
    /// # Errors
    ///
    /// As [`AddressSpace::migrate_device_and_map`].
    pub fn migrate_device_to_system(
        &self,
        start: u64,
        end: u64,
        owner: Owner,
        unmap: impl FnMut(u64, Option<Translation>),
    ) -> SysResult<usize> {
        self.migrate_vmas(start, end, owner, Direction::ToSystem, unmap)
    }

    /// The driver's loop: VMA by VMA, chunk by chunk. Under the mmap lock
    /// for write, where test_hmm takes it for read: the driver's map step
    /// (`dmirror_migrate_finalize_and_map`) programs the device with no
    /// `read_retry`, so a zap under the read lock whose start came before
    /// the map and whose clear comes after (`MADV_DONTNEED`, the OOM
    /// reaper) would leave the device a page the CPU no longer maps — a race
    /// test_hmm has on Linux, which `mmun stress` found here once callbacks
    /// left the page-table lock. The write lock keeps such zaps out until
    /// the mirror's migration follows the retry protocol.
    fn migrate_vmas(
        &self,
        start: u64,
        end: u64,
        owner: Owner,
        direction: Direction,
        mut map: impl FnMut(u64, Option<Translation>),
    ) -> SysResult<usize> {
        let start = align_down(start, PAGE_SIZE);
        let end = end
            .checked_next_multiple_of(PAGE_SIZE)
            .ok_or(Errno::Inval)?;
        if end < start {
            return Err(Errno::Inval);
        }
        self.write_op_on(Touches::range(start, end), |ctx| {
            let mut moved = 0;
            let mut addr = start;
            while addr < end {
                let vma = ctx.st.vmas.lookup(addr).cloned();
                let readable = |v: &Vma| v.flags.contains(VmFlags::READ);
                let vma = vma.filter(readable).ok_or(Errno::Inval)?;
                let next = end.min(addr + MIGRATE_CHUNK_PAGES * PAGE_SIZE).min(vma.end);
                let chunk = Chunk {
                    vma: &vma,
                    start: addr,
                    end: next,
                    owner,
                    direction,
                };
                moved += migrate_chunk(ctx, &chunk, &mut map);
                addr = next;
            }
            Ok(moved)
        })
    }
}

/// One `migrate_vma` call: a range inside one VMA.
struct Chunk<'v> {
    vma: &'v Vma,
    start: u64,
    end: u64,
    owner: Owner,
    direction: Direction,
}

/// Setup (collect + unmap under one `Migrate` range), then pages and
/// finalize with the driver's map step. Returns how many pages moved.
fn migrate_chunk<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    chunk: &Chunk<'_>,
    map: &mut impl FnMut(u64, Option<Translation>),
) -> usize {
    let owner = Some(chunk.owner);
    let inv = ctx.start_owner(Event::Migrate, chunk.start, chunk.end, owner);
    split_huge_pmds(ctx, chunk);
    let mut pages = Vec::new();
    let mut holes = Vec::new();
    for addr in (chunk.start..chunk.end).step_by(PAGE_SIZE as usize) {
        match collect(ctx, chunk, addr) {
            Some(Collected::Page(pte)) => pages.push((addr, pte)),
            Some(Collected::Hole) => holes.push(addr),
            None => {}
        }
    }
    let mut moved = 0;
    for &(addr, old) in &pages {
        let kind = ctx.mem.frame(old.pfn()).kind;
        let Some(new_pfn) = ctx.mem.alloc(kind) else {
            // No destination page: migrate_vma_finalize puts the source
            // back (remove_migration_ptes with the old folio).
            if let Some(mut slot) = ctx.st.pt.pte_mut(addr) {
                *slot = old;
            }
            map(addr, device_side_view(ctx, addr));
            continue;
        };
        // The new page is the device's (or not) before its entry is
        // visible: a fault or zap beside a migration back to system memory
        // may meet the entry as soon as the PTE lock is dropped.
        let device = (chunk.direction == Direction::ToDevice).then_some(chunk.owner);
        ctx.mem.update(new_pfn, |f| f.device = device);
        finish_migration(ctx, addr, old, new_pfn);
        moved += 1;
        if device.is_some() {
            make_device_private_if(ctx, addr, chunk.owner);
        }
        map(addr, device_side_view(ctx, addr));
    }
    // Ended outside the page-table lock, as every range, and only once the
    // migration entries are replaced and the driver has mapped the new
    // pages (Linux ends inside `migrate_vma_setup`, before both): no other
    // thread — a walker, the coherence check — ever meets a migration
    // entry here, and the device's table changes under the same hold of
    // the lock as the primary's. The notifier stream is the same.
    ctx.end(inv);
    if let Some(&first) = holes.first() {
        // `migrate_vma_pages` notifies once more before inserting pages
        // where there were none.
        let inv = ctx.start_owner(Event::Migrate, first, chunk.end, owner);
        for &addr in &holes {
            if insert_page(ctx, chunk, addr) {
                moved += 1;
            }
            map(addr, device_side_view(ctx, addr));
        }
        ctx.end(inv);
    }
    moved
}

/// `migrate_vma_collect_pmd` on a huge PMD: split it (a huge zero PMD
/// becomes 512 zero-page entries). Inside the `Migrate` range, as Linux
/// splits during the walk.
fn split_huge_pmds<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, chunk: &Chunk<'_>) {
    if chunk.direction == Direction::ToSystem {
        // Device memory here is only ever base pages.
        return;
    }
    let mut addr = chunk.start;
    while addr < chunk.end {
        if let Some(PmdEntry::Huge(_)) = ctx.st.pt.pmd(addr) {
            split_huge_pmd(ctx, chunk.vma, addr);
        }
        addr = block_end(addr, chunk.end, PMD_SIZE);
    }
}

/// Whether the page at `addr` is selected, and if it is mapped, replaces
/// its entry by a migration entry.
fn collect<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, chunk: &Chunk<'_>, addr: u64) -> Option<Collected> {
    let vma = chunk.vma;
    let private_anon = vma.is_anonymous() && !vma.flags.contains(VmFlags::SHARED);
    let pte = ctx.st.pt.pte(addr);
    let to_device = chunk.direction == Direction::ToDevice;
    if pte.is_none() || (pte.is_present() && pte.is_special() && pte.pfn() == ZERO_PFN) {
        return (to_device && private_anon).then_some(Collected::Hole);
    }
    if pte.is_device_private() {
        // MIGRATE_VMA_SELECT_DEVICE_PRIVATE with this owner, only back to
        // system memory.
        let ours = ctx.mem.frame(pte.pfn()).device == Some(chunk.owner);
        if to_device || !ours {
            return None;
        }
        let folio = Mapped {
            start: addr,
            end: addr + PAGE_SIZE,
            entry: pte,
            huge: false,
        };
        return install_migration_entry(ctx, &folio).map(Collected::Page);
    }
    if !pte.is_present() || pte.is_special() || pte.is_protnone() {
        return None;
    }
    let frame = ctx.mem.frame(pte.pfn());
    let selected = match chunk.direction {
        Direction::ToDevice => frame.kind == FrameKind::Anon && frame.device.is_none(),
        Direction::ToSystem => frame.device == Some(chunk.owner),
    };
    if !selected || !private_anon {
        return None;
    }
    let folio = Mapped {
        start: addr,
        end: addr + PAGE_SIZE,
        entry: pte,
        huge: false,
    };
    install_migration_entry(ctx, &folio).map(Collected::Page)
}

/// `migrate_vma_insert_page`: a fresh page of the device's memory where
/// there was none or the zero page, writable if the VMA is. False when
/// the machine has no free page (the entry stays as it was).
fn insert_page<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, chunk: &Chunk<'_>, addr: u64) -> bool {
    // The lock was dropped for the start: a fault beside this call may
    // have filled the hole, or mapped a huge page over it (Linux checks
    // the PMD and `pte_none` under the PTL too).
    if matches!(ctx.st.pt.pmd(addr), Some(PmdEntry::Huge(_))) {
        return false;
    }
    let now = ctx.st.pt.pte(addr);
    if !(now.is_none() || (now.is_present() && now.is_special() && now.pfn() == ZERO_PFN)) {
        return false;
    }
    anon_vma_prepare(ctx, chunk.vma);
    let Some(pfn) = ctx.mem.alloc(FrameKind::Anon) else {
        return false;
    };
    ctx.mem.map_pte(pfn, ctx.id);
    ctx.mem.update(pfn, |f| f.device = Some(chunk.owner));
    let writable = chunk.vma.flags.contains(VmFlags::WRITE);
    // The zero page needs no release: it is never counted.
    *ctx.st.pt.pte_alloc(addr) = Pte::new(pfn, writable);
    make_device_private_if(ctx, addr, chunk.owner);
    true
}

/// A page just placed in `owner`'s memory at `addr`: if that memory is
/// device-private, the CPU's present entry becomes a device-private entry
/// with the same write permission (`make_{writable,readable}_device_private_entry`
/// in `migrate_vma_insert_page` and `remove_migration_pte`). The map count
/// stays: a device-private entry still maps the page.
fn make_device_private_if<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, addr: u64, owner: Owner) {
    if !ctx.mem.is_device_private(owner) {
        return;
    }
    if let Some(mut slot) = ctx.st.pt.pte_mut(addr) {
        *slot = Pte::swap(SwapKind::DevicePrivate, slot.pfn(), slot.is_write());
    }
}

/// `dev_pagemap_ops::migrate_to_ram` as test_hmm's `dmirror_devmem_fault`
/// runs it: `migrate_vma_setup` … `finalize` over the one page at `addr`,
/// selecting `owner`'s device-private entry, inside the caller's fault
/// (which holds the mmap lock). `tell(addr, new)` is the driver's step,
/// called with the new entry in place.
pub(crate) fn migrate_page_to_system<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    vma: &Vma,
    addr: u64,
    owner: Owner,
    mut tell: impl FnMut(u64, Option<Translation>),
) -> usize {
    let chunk = Chunk {
        vma,
        start: addr,
        end: addr + PAGE_SIZE,
        owner,
        direction: Direction::ToSystem,
    };
    migrate_chunk(ctx, &chunk, &mut tell)
}

/// What the device driving the migration may use at `addr` now, with the
/// frame's life: what the CPU reaches, or the page of a device-private
/// entry (the migrating device's own, since only it put one there).
fn device_side_view<L: HeldMmLock>(ctx: &Ctx<'_, L>, addr: u64) -> Option<Translation> {
    let pte = ctx.st.pt.pte(addr);
    let reached = if pte.is_device_private() {
        Some((pte.pfn(), pte.grants_write()))
    } else {
        crate::fault::translate(&ctx.st.pt, addr)
    };
    reached.map(|(pfn, writable)| Translation {
        pfn,
        serial: ctx.mem.frame(pfn).serial,
        writable,
    })
}
