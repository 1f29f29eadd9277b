//! `MADV_PAGEOUT`'s reclaim on the recorded machine, which has no swap.
//!
//! Kernel counterpart: `mm/madvise.c` (`madvise_cold_or_pageout_pte_range`
//! collecting folios, `reclaim_pages` with references ignored) and
//! `mm/vmscan.c` (`shrink_folio_list`). An anonymous page cannot be
//! swapped out and is only activated, unless `MADV_FREE` made it lazily
//! freeable: then it is unmapped (`try_to_unmap`) and dropped if still
//! clean, or kept if written since. A shmem page is unmapped, then fails
//! to be written out and stays in the page cache. `try_to_unmap` notifies
//! a `Clear` of the page in every VMA covering its offset (the range starts
//! before the walk looks for the entry). A page mapped more than once is
//! left alone (`folio_maybe_mapped_shared`), so only this address space
//! maps it; VMAs of other address spaces that cover the offset without
//! mapping the page are not reached here (Linux notifies them too).

use mmun_core::{Event, HeldMmLock};

use crate::address_space::Ctx;
use crate::frame::FrameKind;
use crate::layout::PAGE_SIZE;
use crate::page_table::{PmdEntry, Pte};
use crate::vma::Vma;
use crate::zap::release_pte;

/// Reclaims what `MADV_PAGEOUT` collected from `[start, end)` of `vma`.
pub(crate) fn pageout<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, vma: &Vma, start: u64, end: u64) {
    let mut addr = start;
    while addr < end {
        if let Some(next) = split_large(ctx, vma, addr, end) {
            addr = next;
            continue;
        }
        let pte = ctx.st.pt.pte(addr);
        if pte.is_present() && !pte.is_special() {
            let frame = ctx.mem.frame(pte.pfn());
            if frame.order == 0 && frame.head == pte.pfn() && frame.mapcount == 1 {
                match frame.kind {
                    FrameKind::File { index, .. } => unmap_file_page(ctx, vma, index, pte),
                    FrameKind::Anon if frame.lazyfree => discard_lazyfree(ctx, addr, pte),
                    _ => {}
                }
            }
        }
        addr += PAGE_SIZE;
    }
}

/// A large anonymous folio at `addr` (the range covers it whole: a partial
/// one was split before): with no swap, `shrink_folio_list` fails
/// `add_to_swap` and splits it (`split_folio_to_list`, a `Clear` of the
/// folio per mapping), then activates its pages. Returns where to go on
/// when there was one.
fn split_large<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, vma: &Vma, addr: u64, end: u64) -> Option<u64> {
    let pfn = match ctx.st.pt.pmd(addr) {
        Some(PmdEntry::Huge(huge)) if !huge.is_special() => huge.pfn(),
        _ => {
            let pte = ctx.st.pt.pte(addr);
            if !pte.is_present() || pte.is_special() {
                return None;
            }
            pte.pfn()
        }
    };
    let head = ctx.mem.head(pfn);
    let frame = ctx.mem.frame(head);
    if frame.order == 0 || frame.kind != FrameKind::Anon || frame.lazyfree {
        return None;
    }
    crate::folio_split::split_folio(ctx, vma, head);
    let next = crate::layout::block_end(addr, end, crate::layout::PMD_SIZE);
    Some(next)
}

/// `try_to_unmap` of a shmem page: the VMAs of this address space
/// covering `index`, in `i_mmap` order, up to the one that maps it (the
/// walk stops once the page is mapped nowhere, `folio_not_mapped`); the
/// page stays cached.
fn unmap_file_page<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, vma: &Vma, index: u64, pte: Pte) {
    let Some(file) = &vma.file else { return };
    let object = std::sync::Arc::clone(&file.object);
    let mut covering: Vec<Vma> = ctx
        .st
        .vmas
        .iter()
        .filter(|v| {
            v.file
                .as_ref()
                .is_some_and(|f| std::sync::Arc::ptr_eq(&f.object, &object))
                && crate::i_mmap::clip(v, index, index).is_some()
        })
        .cloned()
        .collect();
    covering.sort_by_key(|v| v.file.as_ref().map(|f| f.i_mmap_key()));
    for v in &covering {
        let Some((s, e)) = crate::i_mmap::clip(v, index, index) else {
            continue;
        };
        let inv = ctx.start(Event::Clear, s, e);
        let here = ctx.st.pt.pte(s);
        let mapped_here = here.is_present() && here.pfn() == pte.pfn();
        if mapped_here {
            crate::i_mmap::zap_file_pages(ctx, s, e);
        }
        ctx.end(inv);
        if mapped_here {
            // folio_not_mapped: the walk ends with the last mapping.
            break;
        }
    }
}

/// `try_to_unmap_one` of a lazily freeable anonymous page: dropped if its
/// entry is clean; otherwise it is written again and stays
/// (`folio_set_swapbacked`).
fn discard_lazyfree<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, addr: u64, pte: Pte) {
    let inv = ctx.start(Event::Clear, addr, addr + PAGE_SIZE);
    // Found again under the PTE lock, taken after the start, and cleared
    // in the same hold: only the same page is dropped, and only if it is
    // still clean.
    let (mem, id) = (ctx.mem, ctx.id);
    let dropped = ctx.st.pt.pte_mut(addr).and_then(|mut slot| {
        if !slot.is_present() || slot.pfn() != pte.pfn() {
            return None;
        }
        if slot.is_dirty() {
            mem.update(pte.pfn(), |f| f.lazyfree = false);
            return None;
        }
        Some(std::mem::replace(&mut *slot, Pte::NONE))
    });
    if let Some(old) = dropped {
        release_pte(mem, id, old);
    }
    ctx.end(inv);
}
