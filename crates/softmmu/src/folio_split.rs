//! `split_folio` of a large folio (anonymous, or shmem after a collapse),
//! as `MADV_FREE`, `MADV_COLD` and `MADV_PAGEOUT` ask for it when their
//! range covers only part of one.
//!
//! Kernel counterpart: `mm/huge_memory.c` (`__folio_split`, `unmap_folio`,
//! `remap_page`), `mm/rmap.c` (`try_to_migrate_one` with
//! `TTU_SPLIT_HUGE_PMD`) and `mm/madvise.c` (6.18:
//! `madvise_free_huge_pmd`, `madvise_free_pte_range`,
//! `madvise_cold_or_pageout_pte_range`, `madvise_folio_pte_batch`). The
//! folio is unmapped through the reverse map: each VMA mapping it gets a
//! `Clear` over the folio's extent in that VMA, clipped to the VMA, in
//! anon_vma order (by the VMA's page offset); a PMD mapping is split in
//! place under that range. Afterwards every page is a folio of its own and
//! pages no longer mapped are freed.

use mmun_core::{Event, HeldMmLock};

use crate::address_space::Ctx;
use crate::frame::{FrameKind, Pfn};
use crate::huge_memory;
use crate::layout::{HPAGE_PMD_NR, PAGE_SIZE, PMD_SIZE, block_end};
use crate::page_table::PmdEntry;
use crate::rmap::mapped_folios;
use crate::vma::{Link, Vma};

/// One VMA's mapping of the folio: the range `try_to_migrate_one` (or
/// `try_to_unmap_one`) notifies, and its place in the reverse-map walk.
struct FolioMapping {
    start: u64,
    end: u64,
    order: (i64, Link),
}

/// `split_folio` of the large folio headed by `head` — anonymous, or a
/// shmem page-cache folio (which the cache holds one reference per page
/// on). Refused (false, nothing notified) when another address space maps
/// it (`folio_maybe_mapped_shared`), when something beyond its mappings
/// and the cache holds it (`can_split_folio`: a pin), or when it is not
/// such a folio.
pub(crate) fn split_folio<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, vma: &Vma, head: Pfn) -> bool {
    let frame = ctx.mem.frame(head);
    if !splittable(ctx, head) {
        return false;
    }
    // The caller's copy of the VMA may predate its anon_vma: a fault
    // beside a walk under the mmap lock for read gives it one (and maps
    // the folio) while the walk's lock is dropped for a start.
    let vma = ctx
        .st
        .vmas
        .lookup(vma.start)
        .cloned()
        .unwrap_or_else(|| vma.clone());
    for mapping in folio_mappings(ctx, &vma, head) {
        let inv = ctx.start(Event::Clear, mapping.start, mapping.end);
        if matches!(ctx.st.pt.pmd(mapping.start), Some(PmdEntry::Huge(h)) if h.pfn() == head) {
            huge_memory::split_huge_pmd_locked(ctx, &inv, mapping.start);
        }
        ctx.end(inv);
    }
    // The page-table lock was dropped for each start, and a zap beside
    // this call (`MADV_DONTNEED` holds the mmap lock for read too) may
    // have freed the folio or mapped it elsewhere: Linux holds it by a
    // reference and its lock; here it is checked again, in the same life.
    // The split itself checks its references again, in the same hold of
    // the frame lock (a pin taken without the page-table lock, as GUP-fast
    // takes one, may have come in between).
    let now = ctx.mem.frame(head);
    if now.serial != frame.serial || now.pmd_mapcount != 0 || !splittable(ctx, head) {
        return false;
    }
    let cached = matches!(frame.kind, FrameKind::File { .. });
    ctx.mem.split_folio(head, ctx.id, cached)
}

/// Whether the folio headed by `head` may be split (see [`split_folio`]).
fn splittable<L: HeldMmLock>(ctx: &Ctx<'_, L>, head: Pfn) -> bool {
    let frame = ctx.mem.frame(head);
    let cached = matches!(frame.kind, FrameKind::File { .. });
    let cache_refs = if cached { HPAGE_PMD_NR as u32 } else { 0 };
    frame.order != 0
        && matches!(frame.kind, FrameKind::Anon | FrameKind::File { .. })
        && frame.mapped_only_by(ctx.id)
        && frame.refcount == frame.total_mappings() + cache_refs
}

/// Where the folio is mapped, in reverse-map order: for an anonymous
/// folio every VMA sharing `vma`'s anon_vma, ordered as their page offsets
/// would be (by the folio page at the VMA's start); for a shmem folio
/// every VMA of this address space mapping the object, in `i_mmap` order.
/// Only this address space maps the folio (the caller checked).
fn folio_mappings<L: HeldMmLock>(ctx: &Ctx<'_, L>, vma: &Vma, head: Pfn) -> Vec<FolioMapping> {
    let folio = head..head + HPAGE_PMD_NR;
    let same_rmap = |v: &Vma| match (&vma.file, &v.file) {
        (Some(a), Some(b)) => std::sync::Arc::ptr_eq(&a.object, &b.object),
        (None, None) => v.anon_vma.is_some() && v.anon_vma == vma.anon_vma,
        _ => false,
    };
    let vmas: Vec<Vma> = ctx
        .st
        .vmas
        .iter()
        .filter(|v| same_rmap(v))
        .cloned()
        .collect();
    let mut found = Vec::new();
    for v in &vmas {
        let hit = mapped_folios(ctx, v.start, v.end)
            .into_iter()
            .find(|m| folio.contains(&m.entry.pfn()));
        let Some(hit) = hit else { continue };
        let page = hit.entry.pfn() - head;
        let folio_va = hit.start.wrapping_sub(page * PAGE_SIZE);
        let start = folio_va.max(v.start);
        let end = folio_va.wrapping_add(PMD_SIZE).min(v.end);
        let order = match &v.file {
            Some(file) => {
                let (pgoff, link) = file.i_mmap_key();
                (pgoff as i64, link)
            }
            None => (
                page as i64 - ((hit.start - v.start) / PAGE_SIZE) as i64,
                Link::default(),
            ),
        };
        found.push(FolioMapping { start, end, order });
    }
    found.sort_by_key(|m| m.order);
    found
}

/// The splits `MADV_FREE`, `MADV_COLD` and `MADV_PAGEOUT` make in
/// `[start, end)` of `vma`: a huge PMD the range covers only partly, and
/// a PTE-mapped large folio whose run of entries from the first one in the
/// range (`madvise_folio_pte_batch`) is shorter than the folio, are split
/// if this address space alone maps them. The huge zero page is left
/// alone. A folio that cannot be split ends the work on its page table, as
/// the kernel's `break` does.
pub(crate) fn split_partial_folios<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    vma: &Vma,
    start: u64,
    end: u64,
) {
    let mut addr = start;
    while addr < end {
        let next = block_end(addr, end, PMD_SIZE);
        match ctx.st.pt.pmd(addr) {
            Some(PmdEntry::Huge(huge)) => {
                let huge = *huge;
                if next - addr != PMD_SIZE && !huge.is_special() {
                    split_folio(ctx, vma, ctx.mem.head(huge.pfn()));
                    split_pte_mapped(ctx, vma, addr, next);
                }
            }
            Some(PmdEntry::Table(_)) => split_pte_mapped(ctx, vma, addr, next),
            _ => {}
        }
        addr = next;
    }
}

/// The PTE part of [`split_partial_folios`] over `[start, end)` inside one
/// page table.
fn split_pte_mapped<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, vma: &Vma, start: u64, end: u64) {
    let mut addr = start;
    while addr < end {
        let pte = ctx.st.pt.pte(addr);
        if !pte.is_present() || pte.is_special() {
            addr += PAGE_SIZE;
            continue;
        }
        let head = ctx.mem.head(pte.pfn());
        if ctx.mem.frame(head).order == 0 {
            addr += PAGE_SIZE;
            continue;
        }
        let run = pte_batch(ctx, addr, end, head);
        if run < HPAGE_PMD_NR {
            if !split_folio(ctx, vma, head) {
                return;
            }
            continue;
        }
        addr += run * PAGE_SIZE;
    }
}

/// How many entries from `addr` on (before `end`) map consecutive pages of
/// the folio headed by `head`.
fn pte_batch<L: HeldMmLock>(ctx: &Ctx<'_, L>, addr: u64, end: u64, head: Pfn) -> u64 {
    let first = ctx.st.pt.pte(addr).pfn();
    let mut n = 0;
    while addr + n * PAGE_SIZE < end && first + n < head + HPAGE_PMD_NR {
        let pte = ctx.st.pt.pte(addr + n * PAGE_SIZE);
        if !pte.is_present() || pte.is_special() || pte.pfn() != first + n {
            break;
        }
        n += 1;
    }
    n
}
