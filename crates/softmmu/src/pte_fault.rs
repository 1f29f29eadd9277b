//! The PTE level of a page fault, under the PTE table's own lock alone.
//!
//! Kernel counterpart: `handle_pte_fault` between `pte_offset_map_lock`
//! and `pte_unmap_unlock`: `do_anonymous_page`, `do_read_fault` with
//! `do_fault_around`, `do_shared_fault`, `do_cow_fault` (`finish_fault`),
//! the reuse paths of `do_wp_page` and the accessed/dirty update that ends
//! `handle_pte_fault`. The caller holds the mmap lock for read and not the
//! PMD lock, so faults and zaps in other tables run beside this one, and a
//! fault beside `MADV_DONTNEED` waits only for the table both touch.
//!
//! What notifies (a copy-on-write copy, a device-exclusive entry taken
//! back, a device-private page brought home) goes back to the caller,
//! which handles it under the PMD lock (`fault.rs`), as does an entry in
//! the middle of a migration.

use crate::error::{Errno, SysResult};
use crate::frame::{FrameKind, Memory, ZERO_PFN};
use crate::layout::{PAGE_SIZE, PMD_SIZE, align_down};
use crate::page_table::{Pte, PteEntries, PteTable};
use crate::vma::{VmFlags, Vma};

/// How the PTE level ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PteFault {
    /// The fault is handled (or failed with this error).
    Done(SysResult),
    /// The table left its PMD entry since the caller found it: walk from
    /// the PMD again (`pte_offset_map_lock` failing).
    Retry,
    /// An empty entry needs a private page, and the VMA has no anon_vma
    /// yet: the caller prepares one (`vmf_anon_prepare`) and comes back.
    NeedsAnonVma,
    /// The entry needs a path that notifies, or is a migration entry: the
    /// caller handles it under the PMD lock.
    Notifying(Pte),
}

/// What the PTE level needs besides the table.
pub(crate) struct PteLevel<'a> {
    pub(crate) mem: &'a Memory,
    /// The address space's identity in frame bookkeeping.
    pub(crate) id: u64,
    pub(crate) vma: &'a Vma,
}

/// The PTE level of a fault at page-aligned `addr`, with `table` (found
/// under the PMD lock, now dropped) locked for the whole step.
pub(crate) fn fault_locked(
    level: &PteLevel<'_>,
    table: &PteTable,
    addr: u64,
    write: bool,
) -> PteFault {
    let mut entries = table.lock();
    if entries.is_detached() {
        return PteFault::Retry;
    }
    let pte = entries.get(addr);
    if pte.is_none() {
        if needs_private_page(level.vma, write) && level.vma.anon_vma.is_none() {
            return PteFault::NeedsAnonVma;
        }
        return PteFault::Done(fill_empty(level, &mut entries, addr, write));
    }
    if pte.swap_kind().is_some() {
        return PteFault::Notifying(pte);
    }
    if write && !pte.is_write() {
        return write_in_place(level, &mut entries, addr, pte);
    }
    // The access sets the accessed bit, and a write the dirty bit, as the
    // CPU's page walk does (a page `MADV_FREE` cleaned is dirty again).
    let touched = pte.with_young(true);
    *entries.get_mut(addr) = if write {
        touched.with_dirty(true)
    } else {
        touched
    };
    PteFault::Done(Ok(()))
}

/// Whether filling an empty entry with this access takes a private page
/// (an anonymous write, or a private copy of a file page).
fn needs_private_page(vma: &Vma, write: bool) -> bool {
    write && (vma.file.is_none() || !vma.flags.contains(VmFlags::SHARED))
}

/// `do_anonymous_page` / `do_fault`: fill an empty PTE. Never notifies.
fn fill_empty(level: &PteLevel<'_>, entries: &mut PteEntries, addr: u64, write: bool) -> SysResult {
    let (mem, id, vma) = (level.mem, level.id, level.vma);
    let writable = vma.flags.contains(VmFlags::WRITE);
    let entry = match &vma.file {
        None if !write => Pte::zero(ZERO_PFN),
        None => {
            let pfn = mem.alloc(FrameKind::Anon).ok_or(Errno::NoMem)?;
            mem.map_pte(pfn, id);
            Pte::new(pfn, writable)
        }
        Some(file) => {
            let index = vma.pgoff_of(addr);
            if index * PAGE_SIZE >= file.object.size() {
                return Err(Errno::Fault);
            }
            if write && !vma.flags.contains(VmFlags::SHARED) {
                // do_cow_fault: a private copy of the file page (a page
                // not in the cache is a hole: zeros).
                let pfn = mem.alloc(FrameKind::Anon).ok_or(Errno::NoMem)?;
                if let Some(cached) = file.object.find_get_page(mem, index) {
                    mem.copy_page(cached, pfn);
                    mem.put(cached);
                }
                mem.map_pte(pfn, id);
                Pte::new(pfn, writable)
            } else {
                let pfn = file.object.get_page(mem, index).ok_or(Errno::NoMem)?;
                mem.map_pte(pfn, id);
                if !write {
                    fault_around(level, entries, addr);
                }
                Pte::new(pfn, write && writable)
            }
        }
    };
    if write {
        mem.touch_write(entry.pfn());
    }
    *entries.get_mut(addr) = entry;
    Ok(())
}

/// `do_fault_around` (`fault_around_bytes` at its default, 64 KiB): a read
/// fault in a file VMA also maps, read-only and with no notifier (the
/// entries were empty), every other page already in the cache within the
/// 16-page aligned window around `addr`, clipped to the VMA and the page
/// table. The faulting page itself is the caller's.
fn fault_around(level: &PteLevel<'_>, entries: &mut PteEntries, addr: u64) {
    const WINDOW: u64 = 16 * PAGE_SIZE;
    let (mem, id, vma) = (level.mem, level.id, level.vma);
    let Some(file) = &vma.file else { return };
    let start = align_down(addr, WINDOW).max(vma.start);
    let end = (align_down(addr, WINDOW) + WINDOW)
        .min(vma.end)
        .min(align_down(addr, PMD_SIZE) + PMD_SIZE);
    let mut at = start;
    while at < end {
        let index = vma.pgoff_of(at);
        if at != addr
            && index * PAGE_SIZE < file.object.size()
            && entries.get(at).is_none()
            && let Some(pfn) = file.object.find_get_page(mem, index)
        {
            // The reference taken with the lookup is the mapping's.
            mem.map_pte(pfn, id);
            *entries.get_mut(at) = Pte::new(pfn, false);
        }
        at += PAGE_SIZE;
    }
}

/// The paths of `do_wp_page` that make the entry writable where it is
/// (`wp_page_shared`, `wp_page_reuse`); a page that must be copied goes
/// back to the caller.
fn write_in_place(level: &PteLevel<'_>, entries: &mut PteEntries, addr: u64, pte: Pte) -> PteFault {
    let shared = level.vma.flags.contains(VmFlags::SHARED);
    let reusable = !pte.is_special() && can_reuse_anon(level, pte.pfn());
    if !shared && !reusable {
        return PteFault::Notifying(pte);
    }
    if !shared {
        // wp_page_reuse: no other mapping can see the page.
        level.mem.update(pte.pfn(), |f| f.anon_exclusive = true);
    }
    *entries.get_mut(addr) = pte.with_write(true).with_dirty(true);
    level.mem.touch_write(pte.pfn());
    PteFault::Done(Ok(()))
}

/// `wp_can_reuse_anon_folio`: a small folio with no other reference, or a
/// large folio that only this address space maps and nobody pins.
fn can_reuse_anon(level: &PteLevel<'_>, pfn: u64) -> bool {
    let frame = level.mem.frame(pfn);
    if frame.kind != FrameKind::Anon {
        return false;
    }
    if frame.anon_exclusive {
        return true;
    }
    let head = level.mem.frame(frame.head);
    if head.order == 0 {
        head.refcount == 1
    } else {
        head.mapped_only_by(level.id) && head.refcount == head.total_mappings()
    }
}
