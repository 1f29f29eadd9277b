//! Tearing down mappings: the PTE and PMD clearing of `unmap_page_range`
//! (`zap_pte_range`, `zap_huge_pmd`) and the frame release that follows.
//!
//! Kernel counterpart: `mm/memory.c` (`unmap_vmas`, `unmap_single_vma`,
//! `zap_page_range_single`). Callers bracket these with the notifier
//! range; a huge PMD that the range only partly covers is split first,
//! which notifies on its own (`__split_huge_pmd`, nested inside).

use mmun_core::HeldMmLock;

use crate::address_space::Ctx;
use crate::frame::{Memory, ZERO_PFN};
use crate::huge_memory;
use crate::layout::{PAGE_SIZE, PMD_SIZE, block_end};
use crate::page_table::{PmdEntry, Pte, PteTable, SwapKind};
use crate::vma::Vma;

/// Clears every mapping of `[start, end) ∩ vma`, releasing the frames.
pub(crate) fn zap_vma_range<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, vma: &Vma, start: u64, end: u64) {
    let (start, end) = (start.max(vma.start), end.min(vma.end));
    let mut addr = start;
    while addr < end {
        let resume = ctx.st.pt.skip_empty(addr, end);
        if resume != addr {
            addr = resume;
            continue;
        }
        let next = block_end(addr, end, PMD_SIZE);
        let huge = matches!(ctx.st.pt.pmd(addr), Some(PmdEntry::Huge(_)));
        if huge && next - addr != PMD_SIZE {
            huge_memory::split_huge_pmd(ctx, vma, addr);
        } else if huge {
            zap_huge_pmd(ctx, addr);
            addr = next;
            continue;
        }
        if zap_pte_range(ctx, addr, next) {
            addr = next;
        }
    }
}

/// `zap_huge_pmd`: clears the huge entry at `addr`, inside the caller's
/// range, and releases what it held.
pub(crate) fn zap_huge_pmd<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, addr: u64) {
    if let PmdEntry::Huge(pte) = ctx.st.pt.set_pmd(addr, PmdEntry::None) {
        release_huge(ctx.mem, ctx.id, pte);
    }
}

/// `zap_pte_range` over `[start, end)`, inside one PMD: the entries are
/// cleared under the PTE table's lock with the PMD lock dropped, so that
/// faults and zaps in other tables go on meanwhile. Returns false if the
/// table left its PMD entry before it was locked: the caller looks at the
/// PMD again.
fn zap_pte_range<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, start: u64, end: u64) -> bool {
    let Some(table) = ctx.st.pt.pte_table(start) else {
        return true;
    };
    let (mem, id) = (ctx.mem, ctx.id);
    match ctx.st.unlocked(|| zap_table(mem, id, &table, start, end)) {
        TableZap::Done => true,
        TableZap::Detached => false,
        TableZap::Migrating => {
            // A device migration held the PMD lock while its entries were
            // in the table; it is over now that the lock is held again.
            ctx.st.pt.for_each_pte_mut(start, end, |_, pte| {
                let old = std::mem::replace(pte, Pte::NONE);
                release_pte(mem, id, old);
            });
            true
        }
    }
}

/// How a zap of one table under its own lock ended.
enum TableZap {
    Done,
    /// The table is no longer in its PMD entry.
    Detached,
    /// A migration entry is in the range: its migration (which holds the
    /// PMD lock throughout) has the page, so the zap waits for that lock.
    Migrating,
}

fn zap_table(mem: &Memory, id: u64, table: &PteTable, start: u64, end: u64) -> TableZap {
    let mut entries = table.lock();
    if entries.is_detached() {
        return TableZap::Detached;
    }
    let pages = (start..end).step_by(PAGE_SIZE as usize);
    if pages
        .clone()
        .any(|a| entries.get(a).swap_kind() == Some(SwapKind::Migration))
    {
        return TableZap::Migrating;
    }
    let mut released = Vec::with_capacity(((end - start) / PAGE_SIZE) as usize);
    for addr in pages {
        let old = std::mem::replace(entries.get_mut(addr), Pte::NONE);
        released.extend(held_by(old));
    }
    // Still under the PTE lock, as `zap_pte_range` flushes its batch
    // before it unlocks: no one can map a page of the table meanwhile
    // and meet a frame that is about to be freed.
    mem.unmap_and_put(id, &released);
    TableZap::Done
}

/// What one PTE holds: the frame it references, and whether it counts as
/// one of the frame's mappings.
fn held_by(pte: Pte) -> Option<(crate::Pfn, bool)> {
    if pte.is_none() || pte.is_special() || pte.pfn() == ZERO_PFN {
        return None;
    }
    // `zap_nonpresent_ptes` drops a device-private entry's rmap as a
    // present one's: the device page is freed with its last reference.
    Some((pte.pfn(), pte.maps_frame()))
}

/// Drops what one PTE held: its map count and its frame reference.
pub(crate) fn release_pte(mem: &Memory, mm: u64, pte: Pte) {
    if let Some(held) = held_by(pte) {
        mem.unmap_and_put(mm, &[held]);
    }
}

/// Drops what a huge PMD held.
pub(crate) fn release_huge(mem: &Memory, mm: u64, pte: Pte) {
    if pte.is_special() || pte.pfn() == ZERO_PFN {
        return;
    }
    mem.unmap_pmd(pte.pfn(), mm);
    mem.put(pte.pfn());
}
