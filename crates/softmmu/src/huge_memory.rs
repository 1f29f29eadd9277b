//! Transparent huge pages: the PMD-level fault, split and collapse.
//!
//! Kernel counterpart: `mm/huge_memory.c` (`do_huge_pmd_anonymous_page`,
//! `do_huge_zero_wp_pmd`, `__split_huge_pmd`, `vma_adjust_trans_huge`) and
//! `mm/khugepaged.c` (`collapse_huge_page` for `MADV_COLLAPSE`).

use mmun_core::{Event, HeldMmLock, Invalidation};

use crate::address_space::{Ctx, ThpMode};
use crate::error::Errno;
use crate::frame::FrameKind;
use crate::layout::{PAGE_SIZE, PMD_SIZE, align_down, align_up, is_aligned};
use crate::page_table::{PmdEntry, Pte};
use crate::vma::{VmFlags, Vma};
use crate::zap::release_pte;

/// Whether a fault at `addr` may map a PMD-sized page in `vma`
/// (`thp_vma_allowable_order` for anonymous memory).
pub(crate) fn thp_allowed<L: HeldMmLock>(ctx: &Ctx<'_, L>, vma: &Vma, addr: u64) -> bool {
    let enabled = match ctx.config.thp {
        ThpMode::Always => true,
        ThpMode::Madvise => vma.flags.contains(VmFlags::HUGEPAGE),
        ThpMode::Never => false,
    };
    let haddr = align_down(addr, PMD_SIZE);
    enabled
        && vma.is_anonymous()
        && !vma.flags.contains(VmFlags::NOHUGEPAGE)
        && vma.contains_range(haddr, haddr + PMD_SIZE)
}

/// `__split_huge_pmd`: notifies `Clear` over the PMD's 2 MiB whether or not
/// the entry is huge, then replaces a huge entry by a PTE table mapping the
/// same pages.
pub(crate) fn split_huge_pmd<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, _vma: &Vma, addr: u64) {
    let haddr = align_down(addr, PMD_SIZE);
    let inv = ctx.start(Event::Clear, haddr, haddr + PMD_SIZE);
    split_huge_pmd_locked(ctx, &inv, haddr);
    ctx.only_end(inv);
}

/// `__split_huge_pmd_locked`: a huge entry at `haddr` becomes a PTE table
/// mapping the same pages, inside `inv`, which the caller started over it.
pub(crate) fn split_huge_pmd_locked<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    inv: &Invalidation<'_>,
    haddr: u64,
) {
    if let Some(PmdEntry::Huge(huge)) = ctx.st.pt.pmd(haddr)
        && !huge.is_special()
        && matches!(ctx.mem.frame(huge.pfn()).kind, FrameKind::File { .. })
    {
        // A page-cache folio is not remapped by PTEs: the PMD is cleared
        // and later accesses fault the pages in again.
        let huge = *huge;
        inv.pmdp_huge_clear_flush_notify(haddr, || ());
        ctx.st.pt.set_pmd(haddr, PmdEntry::None);
        crate::zap::release_huge(ctx.mem, ctx.id, huge);
        return;
    }
    if let Some(PmdEntry::Huge(huge)) = ctx.st.pt.pmd(haddr) {
        let huge = *huge;
        inv.pmdp_huge_clear_flush_notify(haddr, || ());
        let table = crate::page_table::PageTable::new_pte_table();
        let mut entries = table.lock();
        for i in 0..crate::layout::HPAGE_PMD_NR {
            let a = haddr + i * PAGE_SIZE;
            let pte = if huge.is_special() {
                Pte::zero(crate::frame::ZERO_PFN)
            } else {
                Pte::new(huge.pfn() + i, huge.is_write())
            };
            // The PTEs inherit every bit of the PMD: protection, accessed,
            // dirty and soft-dirty (__split_huge_pmd_locked).
            *entries.get_mut(a) = pte
                .with_young(huge.is_young())
                .with_dirty(huge.is_dirty())
                .with_soft_dirty(huge.is_soft_dirty())
                .with_protnone(huge.is_protnone());
        }
        drop(entries);
        if !huge.is_special() {
            remap_as_ptes(ctx, huge);
        }
        ctx.st.pt.set_pmd(haddr, PmdEntry::Table(table));
    }
}

/// The frame bookkeeping of turning one PMD mapping into 512 PTE mappings.
fn remap_as_ptes<L: HeldMmLock>(ctx: &Ctx<'_, L>, huge: Pte) {
    let head = huge.pfn();
    ctx.mem.unmap_pmd(head, ctx.id);
    // PageAnonExclusive lives on the head while the folio is PMD-mapped;
    // the split copies it to every page.
    let exclusive = ctx.mem.frame(head).anon_exclusive;
    for i in 0..crate::layout::HPAGE_PMD_NR {
        ctx.mem.map_pte(head + i, ctx.id);
        ctx.mem.update(head + i, |f| f.anon_exclusive = exclusive);
    }
    ctx.mem.update(head, |f| {
        f.refcount += crate::layout::HPAGE_PMD_NR as u32 - 1
    });
}

/// `split_huge_pmd_address`: splits only where a PMD can be found
/// (`mm_find_pmd`: the PUD entry is populated).
pub(crate) fn split_huge_pmd_address<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, vma: &Vma, addr: u64) {
    if ctx.st.pt.pud_present(addr) {
        split_huge_pmd(ctx, vma, addr);
    }
}

/// `split_huge_pmd_if_needed`: a boundary that cuts a PMD-sized block lying
/// wholly inside `vma` splits it.
pub(crate) fn split_huge_pmd_if_needed<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, vma: &Vma, addr: u64) {
    if is_aligned(addr, PMD_SIZE) {
        return;
    }
    let (down, up) = (
        align_down(addr, PMD_SIZE),
        align_up(addr, PMD_SIZE).unwrap_or(u64::MAX),
    );
    if vma.contains_range(down, up) {
        split_huge_pmd_address(ctx, vma, addr);
    }
}

/// `vma_adjust_trans_huge(vma, start, end, next)`.
pub(crate) fn vma_adjust_trans_huge<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    vma: &Vma,
    start: u64,
    end: u64,
    next: Option<&Vma>,
) {
    split_huge_pmd_if_needed(ctx, vma, start);
    split_huge_pmd_if_needed(ctx, vma, end);
    if let Some(next) = next {
        split_huge_pmd_if_needed(ctx, next, end);
    }
}

/// The head of the large page-cache folio that a fault at `addr` of
/// shared `vma` could map by one PMD (`do_set_pmd`): the block lies in the
/// VMA, the object's pages are PMD-aligned in it, and the cache holds a
/// PMD-sized folio there (only `MADV_COLLAPSE` makes them here). Private
/// file mappings map such folios by PTEs in the software MMU.
pub(crate) fn file_folio_for_pmd<L: HeldMmLock>(
    ctx: &Ctx<'_, L>,
    vma: &Vma,
    addr: u64,
) -> Option<crate::Pfn> {
    let file = vma.file.as_ref()?;
    let haddr = align_down(addr, PMD_SIZE);
    if !vma.flags.contains(VmFlags::SHARED) || !vma.contains_range(haddr, haddr + PMD_SIZE) {
        return None;
    }
    let index = vma.pgoff_of(haddr);
    if !index.is_multiple_of(crate::layout::HPAGE_PMD_NR) {
        return None;
    }
    let head = file.object.find_page(index)?;
    let frame = ctx.mem.frame(head);
    let whole =
        frame.order == 9 && frame.head == head && file.object.holds_whole_folio(index, head);
    whole.then_some(head)
}

/// `do_set_pmd`: maps the large cache folio at `head` by one PMD, with no
/// notifier (the PMD was empty); writable as the shared VMA is (shmem
/// needs no write notification). False, mapping nothing, if the folio
/// left the cache since the caller found it (a hole punched beside this
/// fault frees it without the page-table lock): its reference is taken
/// with a lookup that still finds it there.
pub(crate) fn map_file_pmd<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    vma: &Vma,
    haddr: u64,
    head: crate::Pfn,
) -> bool {
    let Some(file) = vma.file.as_ref() else {
        return false;
    };
    match file.object.find_get_page(ctx.mem, vma.pgoff_of(haddr)) {
        Some(found) if found == head => {}
        Some(other) => {
            ctx.mem.put(other);
            return false;
        }
        None => return false,
    }
    ctx.mem.map_pmd(head, ctx.id);
    let writable = vma.flags.contains(VmFlags::WRITE);
    ctx.st
        .pt
        .set_pmd(haddr, PmdEntry::Huge(Pte::new(head, writable)));
    true
}

/// `do_huge_pmd_anonymous_page`: a read maps the huge zero page, a write a
/// new huge page. The caller has prepared the anon_vma. No notifier: the
/// PMD was empty. False (`VM_FAULT_FALLBACK`) when memory has no huge page
/// left: the caller faults a base page instead.
pub(crate) fn huge_anonymous_fault<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    vma: &Vma,
    addr: u64,
    write: bool,
) -> bool {
    let haddr = align_down(addr, PMD_SIZE);
    let entry = if !write && ctx.config.thp_zero_page {
        let Some(zero) = ctx.mem.huge_zero() else {
            return false;
        };
        Pte::zero(zero)
    } else {
        let Some(head) = ctx.mem.alloc_huge(FrameKind::Anon) else {
            return false;
        };
        ctx.mem.map_pmd(head, ctx.id);
        Pte::new(head, vma.flags.contains(VmFlags::WRITE))
    };
    ctx.st.pt.set_pmd(haddr, PmdEntry::Huge(entry));
    true
}

/// How [`huge_zero_wp`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ZeroWp {
    /// The huge page is mapped.
    Done,
    /// `VM_FAULT_FALLBACK`: no huge page to be had; the caller splits the
    /// PMD and faults a base page.
    Fallback,
    /// The PMD changed while the lock was dropped for the start: the fault
    /// starts over.
    Retry,
}

/// `do_huge_zero_wp_pmd` (6.18): a write to the huge zero page allocates a
/// huge page and replaces the PMD under a `Clear` of the 2 MiB.
pub(crate) fn huge_zero_wp<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, vma: &Vma, addr: u64) -> ZeroWp {
    let haddr = align_down(addr, PMD_SIZE);
    let Some(head) = ctx.mem.alloc_huge(FrameKind::Anon) else {
        return ZeroWp::Fallback;
    };
    let inv = ctx.start(Event::Clear, haddr, haddr + PMD_SIZE);
    // Under the PMD lock again: only the huge zero page is replaced. If it
    // went meanwhile (a zap, a split), the fault starts over.
    if !matches!(ctx.st.pt.pmd(haddr), Some(PmdEntry::Huge(h)) if h.is_special()) {
        ctx.only_end(inv);
        ctx.mem.put(head);
        return ZeroWp::Retry;
    }
    inv.pmdp_huge_clear_flush_notify(haddr, || ());
    ctx.mem.map_pmd(head, ctx.id);
    ctx.st.pt.set_pmd(
        haddr,
        PmdEntry::Huge(Pte::new(head, vma.flags.contains(VmFlags::WRITE))),
    );
    ctx.only_end(inv);
    ZeroWp::Done
}

/// How one PMD-sized block of `MADV_COLLAPSE` ended, sorted as
/// `madvise_collapse` sorts `enum scan_result`: a collapsed (or already
/// huge) block, a failure after which the walk goes on, or one that ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CollapseResult {
    /// `SCAN_SUCCEED` / `SCAN_PMD_MAPPED`.
    Huge,
    /// A whitelisted failure (`SCAN_PMD_NULL`, `SCAN_PTE_NON_PRESENT`,
    /// `SCAN_PAGE_NULL`, ...): the next block is tried.
    Skipped(Errno),
    /// Any other failure (`SCAN_PMD_NONE`, `SCAN_PAGE_ANON`,
    /// `SCAN_ALLOC_HUGE_PAGE_FAIL`, ...): the call stops here.
    Abort(Errno),
}

/// `hpage_collapse_scan_pmd` + `collapse_huge_page` for `MADV_COLLAPSE` of
/// anonymous memory (6.18): a 2 MiB block mapped by PTEs becomes one huge
/// page. Unlike khugepaged, `MADV_COLLAPSE` takes any number of empty,
/// zero-page, shared or read-only entries (6.18 dropped `SCAN_PAGE_RO`).
/// The huge page is allocated before anything is notified
/// (`SCAN_ALLOC_HUGE_PAGE_FAIL`, `ENOMEM`). The `Clear` brackets only the clearing of the PMD; the copy
/// and the new PMD come after it.
pub(crate) fn collapse<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    vma: &Vma,
    haddr: u64,
) -> CollapseResult {
    match ctx.st.pt.pmd(haddr) {
        Some(PmdEntry::Huge(_)) => return CollapseResult::Huge,
        Some(PmdEntry::Table(_)) => {}
        // find_pmd_or_thp_or_none: no PMD table at all is SCAN_PMD_NULL
        // (whitelisted), an empty PMD entry SCAN_PMD_NONE (not).
        _ if ctx.st.pt.pud_present(haddr) => return CollapseResult::Abort(Errno::Inval),
        _ => return CollapseResult::Skipped(Errno::Inval),
    }
    if let Err(skip) = scan_ptes(ctx, haddr) {
        return skip;
    }
    let Some(head) = ctx.mem.alloc_huge(FrameKind::Anon) else {
        return CollapseResult::Abort(Errno::NoMem);
    };
    let inv = ctx.start(Event::Clear, haddr, haddr + PMD_SIZE);
    let old = ctx.st.pt.set_pmd(haddr, PmdEntry::None);
    ctx.end(inv);
    if let PmdEntry::Table(table) = old {
        let table = table.lock();
        for i in 0..crate::layout::HPAGE_PMD_NR {
            // __collapse_huge_page_copy: each page's bytes (an empty or
            // zero-page entry leaves zeros) go to its place in the huge one.
            let pte = table.get(haddr + i * PAGE_SIZE);
            if pte.is_present() && !pte.is_special() {
                ctx.mem.copy_page(pte.pfn(), head + i);
            }
            release_pte(ctx.mem, ctx.id, pte);
        }
    }
    ctx.mem.map_pmd(head, ctx.id);
    ctx.st.pt.set_pmd(
        haddr,
        PmdEntry::Huge(Pte::new(head, vma.flags.contains(VmFlags::WRITE))),
    );
    CollapseResult::Huge
}

/// The PTE scan of `hpage_collapse_scan_pmd` as `MADV_COLLAPSE` runs it:
/// empty and zero-page entries pass; an entry that is not present, or a
/// page that is not an ordinary anonymous one, fails the block (both on
/// the whitelist: the walk goes on).
fn scan_ptes<L: HeldMmLock>(ctx: &Ctx<'_, L>, haddr: u64) -> Result<(), CollapseResult> {
    let Some(PmdEntry::Table(table)) = ctx.st.pt.pmd(haddr) else {
        return Err(CollapseResult::Skipped(Errno::Inval));
    };
    // One hold of the table's lock for the whole scan.
    let table = table.lock();
    for i in 0..crate::layout::HPAGE_PMD_NR {
        let pte = table.get(haddr + i * PAGE_SIZE);
        if pte.is_none() || pte.is_special() {
            continue;
        }
        if !pte.is_present() {
            return Err(CollapseResult::Skipped(Errno::Inval));
        }
        if ctx.mem.frame(pte.pfn()).kind != FrameKind::Anon {
            return Err(CollapseResult::Skipped(Errno::Inval));
        }
    }
    Ok(())
}
