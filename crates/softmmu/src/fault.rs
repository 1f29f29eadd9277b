//! Page faults: the anonymous, zero-page, shared and copy-on-write paths.
//!
//! Kernel counterpart: `mm/memory.c` (`handle_mm_fault`,
//! `do_anonymous_page`, `do_fault`, `do_wp_page`, `wp_page_copy`,
//! `remove_device_exclusive_entry`, `do_swap_page`'s device-private
//! branch). Only replacing an existing entry
//! notifies: filling an empty one or upgrading permission never does.

use std::sync::atomic::{AtomicU64, Ordering};

use mmun_core::{Event, HeldMmLock};

use crate::address_space::Ctx;
use crate::error::{Errno, SysResult};
use crate::frame::{FrameKind, Pfn, ZERO_PFN};
use crate::huge_memory;
use crate::layout::{PAGE_SIZE, PMD_SIZE, align_down};
use crate::page_table::{PageTable, PmdEntry, Pte, SwapKind};
use crate::vma::{AnonVmaId, VmFlags, Vma};

/// The frame an entry maps at `addr` regardless of protection.
pub(crate) fn mapped_frame(pt: &PageTable, addr: u64) -> Option<(Pfn, bool)> {
    match pt.pmd(addr)? {
        PmdEntry::Huge(huge) => Some((
            huge.pfn() + ((addr & (PMD_SIZE - 1)) / PAGE_SIZE),
            huge.is_write(),
        )),
        PmdEntry::Table(_) => {
            let pte = pt.pte(addr);
            pte.is_present().then(|| (pte.pfn(), pte.is_write()))
        }
        PmdEntry::None => None,
    }
}

/// What an access to `addr` reaches, following huge entries.
pub(crate) fn translate(pt: &PageTable, addr: u64) -> Option<(Pfn, bool)> {
    match pt.pmd(addr)? {
        PmdEntry::Huge(huge) if !huge.is_protnone() => {
            let pfn = huge.pfn() + ((addr & (PMD_SIZE - 1)) / PAGE_SIZE);
            Some((pfn, huge.is_write()))
        }
        PmdEntry::Table(_) => {
            let pte = pt.pte(addr);
            (pte.is_present() && !pte.is_protnone()).then(|| (pte.pfn(), pte.is_write()))
        }
        PmdEntry::Huge(_) => None,
        PmdEntry::None => None,
    }
}

/// Whether the VMA lets the CPU access it this way (x86 `access_error`).
fn access_allowed(vma: &Vma, write: bool) -> bool {
    if write {
        vma.flags.contains(VmFlags::WRITE)
    } else {
        vma.flags.intersects(VmFlags::ACCESS)
    }
}

/// `handle_mm_fault` for a CPU access to `addr`.
pub(crate) fn handle_fault<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    addr: u64,
    write: bool,
) -> SysResult {
    let vma = ctx.st.vmas.lookup(addr).cloned().ok_or(Errno::Fault)?;
    if !access_allowed(&vma, write) {
        return Err(Errno::Fault);
    }
    fault_in_vma(ctx, &vma, addr, write)
}

/// Faults in every page of `[start, end)` of `vma` (GUP-driven population:
/// `MAP_POPULATE`, `mlock`, `MADV_POPULATE_*`). The VMA is looked up again
/// per page, since a THP fault may have given it an anon_vma.
pub(crate) fn fault_in_range<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    vma: &Vma,
    start: u64,
    end: u64,
    write: bool,
) -> SysResult {
    let mut addr = start;
    while addr < end {
        let current = ctx
            .st
            .vmas
            .lookup(addr)
            .cloned()
            .unwrap_or_else(|| vma.clone());
        fault_in_vma(ctx, &current, addr, write)?;
        addr += PAGE_SIZE;
    }
    Ok(())
}

/// The fault once the VMA and the access are known to be valid (also the
/// body of GUP-driven population).
pub(crate) fn fault_in_vma<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    vma: &Vma,
    addr: u64,
    write: bool,
) -> SysResult {
    // __handle_mm_fault allocates the PUD and PMD tables before it looks.
    ctx.st.pt.pmd_alloc(addr);
    if matches!(ctx.st.pt.pmd(addr), Some(PmdEntry::None))
        && let Some(head) = huge_memory::file_folio_for_pmd(ctx, vma, addr)
    {
        huge_memory::map_file_pmd(ctx, vma, align_down(addr, PMD_SIZE), head);
        return Ok(());
    }
    if matches!(ctx.st.pt.pmd(addr), Some(PmdEntry::None))
        && huge_memory::thp_allowed(ctx, vma, addr)
    {
        let vma = anon_vma_prepare(ctx, vma);
        if huge_memory::huge_anonymous_fault(ctx, &vma, addr, write) {
            return Ok(());
        }
        // VM_FAULT_FALLBACK: no huge page to be had; base pages instead.
        return pte_fault(ctx, &vma, addr, write);
    }
    if let Some(PmdEntry::Huge(huge)) = ctx.st.pt.pmd(addr) {
        let huge = *huge;
        if !write || huge.is_write() {
            return Ok(());
        }
        if huge.is_special() {
            match huge_memory::huge_zero_wp(ctx, vma, addr) {
                huge_memory::ZeroWp::Done => return Ok(()),
                huge_memory::ZeroWp::Retry => return fault_in_vma(ctx, vma, addr, write),
                huge_memory::ZeroWp::Fallback => {}
            }
        }
        // wp_huge_pmd: a page-cache PMD is split (write-notify and COW
        // happen on the PTE level).
        let file = matches!(ctx.mem.frame(huge.pfn()).kind, FrameKind::File { .. });
        if !huge.is_special() && !file && reuse_huge(ctx, align_down(addr, PMD_SIZE), huge) {
            return Ok(());
        }
        huge_memory::split_huge_pmd(ctx, vma, addr);
    }
    pte_fault(ctx, vma, addr, write)
}

fn reuse_huge<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, haddr: u64, huge: Pte) -> bool {
    let frame = ctx.mem.frame(huge.pfn());
    let exclusive = frame.mapped_only_by(ctx.id) && frame.refcount == frame.total_mappings();
    if frame.anon_exclusive || exclusive {
        ctx.mem.update(huge.pfn(), |f| f.anon_exclusive = true);
        ctx.st.pt.set_pmd(
            haddr,
            PmdEntry::Huge(huge.with_write(true).with_dirty(true)),
        );
        return true;
    }
    false
}

fn pte_fault<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, vma: &Vma, addr: u64, write: bool) -> SysResult {
    let addr = align_down(addr, PAGE_SIZE);
    if matches!(ctx.st.pt.pmd(addr), Some(PmdEntry::Huge(_))) {
        // The page-table lock was dropped for a start on the way here (a
        // PMD split, a COW, a device page coming back) and a huge fault
        // beside this one filled the PMD: `pte_offset_map_lock` finds no
        // table, and the fault starts over at the PMD level.
        return fault_in_vma(ctx, vma, addr, write);
    }
    let pte = ctx.st.pt.pte(addr);
    if pte.is_none() {
        return fill_empty(ctx, vma, addr, write);
    }
    if pte.swap_kind() == Some(SwapKind::DeviceExclusive) {
        remove_device_exclusive_entry(ctx, vma, addr, pte);
        return pte_fault(ctx, vma, addr, write);
    }
    if pte.is_device_private() {
        // do_swap_page: the owner's migrate_to_ram, then the access again.
        crate::device_private::migrate_to_ram(ctx, vma, addr, pte)?;
        return pte_fault(ctx, vma, addr, write);
    }
    if write && !pte.is_write() {
        return do_wp_page(ctx, vma, addr, pte);
    }
    // The access sets the accessed bit, and a write the dirty bit, as the
    // CPU's page walk does (a page `MADV_FREE` cleaned is dirty again).
    let touched = pte.with_young(true);
    *ctx.st.pt.pte_alloc(addr) = if write {
        touched.with_dirty(true)
    } else {
        touched
    };
    Ok(())
}

/// `do_anonymous_page` / `do_fault`: fill an empty PTE. Never notifies.
fn fill_empty<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, vma: &Vma, addr: u64, write: bool) -> SysResult {
    let writable = vma.flags.contains(VmFlags::WRITE);
    let entry = match &vma.file {
        None if !write => Pte::zero(ZERO_PFN),
        None => {
            anon_vma_prepare(ctx, vma);
            let pfn = ctx.mem.alloc(FrameKind::Anon).ok_or(Errno::NoMem)?;
            ctx.mem.map_pte(pfn, ctx.id);
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
                anon_vma_prepare(ctx, vma);
                let pfn = ctx.mem.alloc(FrameKind::Anon).ok_or(Errno::NoMem)?;
                if let Some(cached) = file.object.find_page(index) {
                    ctx.mem.copy_page(cached, pfn);
                }
                ctx.mem.map_pte(pfn, ctx.id);
                Pte::new(pfn, writable)
            } else {
                let pfn = file.object.get_page(ctx.mem, index).ok_or(Errno::NoMem)?;
                ctx.mem.map_pte(pfn, ctx.id);
                if !write {
                    fault_around(ctx, vma, addr);
                }
                Pte::new(pfn, write && writable)
            }
        }
    };
    if write {
        ctx.mem.touch_write(entry.pfn());
    }
    *ctx.st.pt.pte_alloc(addr) = entry;
    Ok(())
}

/// `do_fault_around` (`fault_around_bytes` at its default, 64 KiB): a read
/// fault in a file VMA also maps, read-only and with no notifier (the
/// entries were empty), every other page already in the cache within the
/// 16-page aligned window around `addr`, clipped to the VMA and the page
/// table. The faulting page itself is the caller's.
fn fault_around<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, vma: &Vma, addr: u64) {
    const WINDOW: u64 = 16 * PAGE_SIZE;
    let Some(file) = &vma.file else { return };
    let start = crate::layout::align_down(addr, WINDOW).max(vma.start);
    let end = (crate::layout::align_down(addr, WINDOW) + WINDOW)
        .min(vma.end)
        .min(crate::layout::align_down(addr, crate::layout::PMD_SIZE) + crate::layout::PMD_SIZE);
    let mut at = start;
    while at < end {
        let index = vma.pgoff_of(at);
        if at != addr
            && index * PAGE_SIZE < file.object.size()
            && ctx.st.pt.pte(at).is_none()
            && let Some(pfn) = file.object.find_page(index)
        {
            ctx.mem.get(pfn);
            ctx.mem.map_pte(pfn, ctx.id);
            *ctx.st.pt.pte_alloc(at) = Pte::new(pfn, false);
        }
        at += PAGE_SIZE;
    }
}

/// `do_wp_page`: a write to a present, write-protected PTE.
fn do_wp_page<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, vma: &Vma, addr: u64, pte: Pte) -> SysResult {
    if vma.flags.contains(VmFlags::SHARED) {
        // wp_page_shared: the page cache page becomes writable in place.
        *ctx.st.pt.pte_alloc(addr) = pte.with_write(true).with_dirty(true);
        ctx.mem.touch_write(pte.pfn());
        return Ok(());
    }
    if !pte.is_special() && can_reuse_anon(ctx, pte.pfn()) {
        // wp_page_reuse: no other mapping can see the page.
        ctx.mem.update(pte.pfn(), |f| f.anon_exclusive = true);
        *ctx.st.pt.pte_alloc(addr) = pte.with_write(true).with_dirty(true);
        ctx.mem.touch_write(pte.pfn());
        return Ok(());
    }
    wp_page_copy(ctx, vma, addr, pte)
}

/// `wp_can_reuse_anon_folio`: a small folio with no other reference, or a
/// large folio that only this address space maps and nobody pins.
fn can_reuse_anon<L: HeldMmLock>(ctx: &Ctx<'_, L>, pfn: Pfn) -> bool {
    let frame = ctx.mem.frame(pfn);
    if frame.kind != FrameKind::Anon {
        return false;
    }
    if frame.anon_exclusive {
        return true;
    }
    let head = ctx.mem.frame(frame.head);
    if head.order == 0 {
        head.refcount == 1
    } else {
        head.mapped_only_by(ctx.id) && head.refcount == head.total_mappings()
    }
}

/// `wp_page_copy`: copy the page, and swap the PTE under a `Clear` of the
/// page (v6.5: `ptep_clear_flush_notify` + `set_pte_at_notify`, then
/// `invalidate_range_only_end`).
fn wp_page_copy<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, vma: &Vma, addr: u64, old: Pte) -> SysResult {
    let vma = anon_vma_prepare(ctx, vma);
    let new_pfn = ctx.mem.alloc(FrameKind::Anon).ok_or(Errno::NoMem)?;
    ctx.mem.copy_page(old.pfn(), new_pfn);
    let inv = ctx.start(Event::Clear, addr, addr + PAGE_SIZE);
    // The page-table lock was dropped for the start: `pte_same` under it,
    // or the fault starts over from what is there now (the CPU retries
    // the access).
    if ctx.st.pt.pte(addr) != old {
        ctx.end(inv);
        ctx.mem.put(new_pfn);
        return pte_fault(ctx, &vma, addr, true);
    }
    let new = Pte::new(new_pfn, vma.flags.contains(VmFlags::WRITE));
    let slot_old = inv.ptep_clear_flush_notify(addr, || old);
    inv.set_pte_at_notify(addr, new.raw(), |_| ());
    ctx.mem.map_pte(new_pfn, ctx.id);
    ctx.mem.touch_write(new_pfn);
    *ctx.st.pt.pte_alloc(addr) = new;
    ctx.only_end(inv);
    crate::zap::release_pte(ctx.mem, ctx.id, slot_old);
    Ok(())
}

/// `remove_device_exclusive_entry`: a CPU access takes the page back from
/// the device, under a `Clear` (6.18; v6.5 used `Exclusive`) without owner.
fn remove_device_exclusive_entry<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    vma: &Vma,
    addr: u64,
    entry: Pte,
) {
    let inv = ctx.start(Event::Clear, addr, addr + PAGE_SIZE);
    // Found again under the lock: another CPU access may have restored it
    // (the caller's fault then goes on with whatever is there).
    if ctx.st.pt.pte(addr) != entry {
        ctx.end(inv);
        return;
    }
    let restored = restore_exclusive_pte(ctx, vma, entry);
    ctx.mem.map_pte(entry.pfn(), ctx.id);
    *ctx.st.pt.pte_alloc(addr) = restored;
    ctx.end(inv);
}

/// `restore_exclusive_pte` (6.15+): the present entry is rebuilt from the
/// VMA's protection as it is now, writable only where
/// `can_change_pte_writable` allows (an `mprotect(PROT_READ)` while the
/// device held the page leaves it read-only), not from the write bit the
/// entry had when the device took it.
pub(crate) fn restore_exclusive_pte<L: HeldMmLock>(ctx: &Ctx<'_, L>, vma: &Vma, entry: Pte) -> Pte {
    let read_only = Pte::new(entry.pfn(), false);
    let writable = vma.flags.contains(VmFlags::WRITE)
        && crate::mprotect::can_change_writable(ctx, vma, read_only);
    read_only.with_write(writable)
}

/// `anon_vma_prepare`: gives the VMA an anon_vma, reusing an adjacent
/// compatible VMA's (`find_mergeable_anon_vma`) so that they may still
/// merge. Returns the VMA as updated.
pub(crate) fn anon_vma_prepare<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, vma: &Vma) -> Vma {
    let current = ctx
        .st
        .vmas
        .lookup(vma.start)
        .cloned()
        .unwrap_or_else(|| vma.clone());
    if current.anon_vma.is_some() {
        return current;
    }
    let reuse = neighbour_anon_vma(ctx, &current);
    let id = reuse.unwrap_or_else(new_anon_vma);
    let slot = ctx
        .st
        .vmas
        .get_mut(current.start)
        .expect("VMA is in the tree");
    slot.anon_vma = Some(id);
    slot.clone()
}

fn neighbour_anon_vma<L: HeldMmLock>(ctx: &Ctx<'_, L>, vma: &Vma) -> Option<AnonVmaId> {
    let compatible = |other: &Vma| {
        crate::vma::merge_key(other.flags) == crate::vma::merge_key(vma.flags)
            && other.file.is_none()
            && vma.file.is_none()
    };
    let prev = ctx
        .st
        .vmas
        .prev(vma.start)
        .filter(|p| p.end == vma.start && compatible(p));
    let next = ctx
        .st
        .vmas
        .next_from(vma.end)
        .filter(|n| n.start == vma.end && compatible(n));
    prev.and_then(|p| p.anon_vma)
        .or_else(|| next.and_then(|n| n.anon_vma))
}

/// A fresh anon_vma identity.
pub(crate) fn new_anon_vma() -> AnonVmaId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl crate::AddressSpace {
    /// A CPU access to `addr`: a page fault if the page is not mapped with
    /// the needed permission. `EFAULT` where the access would `SIGSEGV`.
    pub fn access(&self, addr: u64, write: bool) -> SysResult {
        self.read_op(|ctx| handle_fault(ctx, addr, write))
    }
}
