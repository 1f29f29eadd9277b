//! The file side of the reverse map: every VMA, in every address space,
//! that maps pages of a shmem object.
//!
//! Kernel counterpart: `mm/memory.c` (`unmap_mapping_range`,
//! `unmap_mapping_range_tree`, `zap_page_range_single`) and the `i_mmap`
//! interval tree (`mm/interval_tree.c`). Linux walks the tree in order of
//! each VMA's first page offset, a VMA inserted later going after an
//! equal one (a fork's child right after its parent); here the VMAs of
//! every mapper are sorted by page offset and then by their place in that
//! insertion order (`FileBacking::i_mmap_key`). The walk holds no mmap lock, only each address
//! space's rmap stand-in in turn, so the caller must hold none of this
//! object's mappers' locks.

use std::sync::Arc;

use mmun_core::{Event, HeldMmLock};

use crate::address_space::{Ctx, Shared};
use crate::layout::{PAGE_SIZE, PMD_SIZE};
use crate::page_table::PmdEntry;
use crate::shmem::ShmemObject;
use crate::vma::Vma;

/// One VMA mapping part of the object: its address space and where.
pub(crate) struct FileMapping {
    pub(crate) space: Arc<Shared>,
    pub(crate) vma: Vma,
}

/// The addresses of pages `[first, last]` in `vma`, clipped to it; `None`
/// if it maps none of them.
pub(crate) fn clip(vma: &Vma, first: u64, last: u64) -> Option<(u64, u64)> {
    let map_first = vma.file.as_ref()?.pgoff;
    let map_last = map_first + vma.len() / PAGE_SIZE - 1;
    let (lo, hi) = (first.max(map_first), last.min(map_last));
    (lo <= hi).then(|| {
        (
            vma.start + (lo - map_first) * PAGE_SIZE,
            vma.start + (hi - map_first + 1) * PAGE_SIZE,
        )
    })
}

fn maps_object(vma: &Vma, object: &ShmemObject) -> bool {
    vma.file
        .as_ref()
        .is_some_and(|f| std::ptr::eq(Arc::as_ptr(&f.object), object))
}

/// `vma_interval_tree_foreach(vma, &mapping->i_mmap, first, last)`.
pub(crate) fn mappings(object: &ShmemObject, first: u64, last: u64) -> Vec<FileMapping> {
    let mut found = Vec::new();
    for space in object.mappers() {
        let vmas: Vec<Vma> =
            space.vmas_mapping(|v| maps_object(v, object) && clip(v, first, last).is_some());
        found.extend(vmas.into_iter().map(|vma| FileMapping {
            space: Arc::clone(&space),
            vma,
        }));
    }
    found.sort_by_key(|m| m.vma.file.as_ref().map(|f| f.i_mmap_key()));
    found
}

/// Runs `f` on the VMA of `space` that contains `addr` now, if it maps
/// `object`, under that address space's rmap stand-in.
pub(crate) fn with_vma_at<R>(
    space: &Shared,
    addr: u64,
    object: &ShmemObject,
    f: impl FnOnce(&mut Ctx<'_, mmun_core::RmapGuard<'_>>, &Vma) -> R,
) -> Option<R> {
    space.rmap_op(|ctx| {
        let vma = ctx.st.vmas.lookup(addr).cloned()?;
        maps_object(&vma, object).then(|| f(ctx, &vma))
    })
}

/// Runs `f` on `mapping`'s VMA as its address space has it now, under that
/// address space's rmap stand-in: the VMA found by the walk may have been
/// unmapped, moved or split since, and then is skipped or clipped anew.
pub(crate) fn with_mapping<R>(
    mapping: &FileMapping,
    object: &ShmemObject,
    f: impl FnOnce(&mut Ctx<'_, mmun_core::RmapGuard<'_>>, &Vma) -> R,
) -> Option<R> {
    mapping.space.rmap_op(|ctx| {
        let vma = ctx.st.vmas.lookup(mapping.vma.start).cloned()?;
        let same = maps_object(&vma, object)
            && vma.file.as_ref().map(|f| f.pgoff) == mapping.vma.file.as_ref().map(|f| f.pgoff);
        same.then(|| f(ctx, &vma))
    })
}

/// `unmap_mapping_range(mapping, first, last, even_cows = 0)`: every VMA
/// of every address space mapping pages `[first, last]` of `object` gets a
/// `Clear` over its part of them while their file pages are unmapped
/// (private copy-on-write copies stay).
pub(crate) fn unmap_mapping_range(object: &ShmemObject, first: u64, last: u64) {
    for mapping in mappings(object, first, last) {
        with_mapping(&mapping, object, |ctx, vma| {
            if let Some((start, end)) = clip(vma, first, last) {
                let inv = ctx.start(Event::Clear, start, end);
                zap_file_pmds(ctx, vma, start, end);
                zap_file_pages(ctx, start, end);
                ctx.end(inv);
            }
        });
    }
}

/// `zap_pmd_range`'s huge entries: a huge PMD the range covers whole is
/// zapped (`zap_huge_pmd`), one it covers in part is split first
/// (`__split_huge_pmd`, under a `Clear` of its own 2 MiB, which for a file
/// folio just clears the PMD: the pages left fault back by PTEs).
fn zap_file_pmds<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, vma: &Vma, start: u64, end: u64) {
    let mut addr = start;
    while addr < end {
        let haddr = crate::layout::align_down(addr, PMD_SIZE);
        let next = (haddr + PMD_SIZE).min(end);
        let file_pmd = match ctx.st.pt.pmd(haddr) {
            Some(PmdEntry::Huge(huge)) => matches!(
                ctx.mem.frame(huge.pfn()).kind,
                crate::frame::FrameKind::File { .. }
            ),
            _ => false,
        };
        if file_pmd {
            if haddr >= start && haddr + PMD_SIZE <= end {
                crate::zap::zap_huge_pmd(ctx, haddr);
            } else {
                crate::huge_memory::split_huge_pmd(ctx, vma, haddr);
            }
        }
        addr = next;
    }
}

/// Zaps the file pages of `[start, end)`, keeping private copy-on-write
/// copies (`even_cows == false`).
pub(crate) fn zap_file_pages<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, start: u64, end: u64) {
    let (mem, id) = (ctx.mem, ctx.id);
    ctx.st.pt.for_each_pte_mut(start, end, |_, pte| {
        if pte.is_present()
            && !pte.is_special()
            && matches!(
                mem.frame(pte.pfn()).kind,
                crate::frame::FrameKind::File { .. }
            )
        {
            let old = std::mem::replace(pte, crate::page_table::Pte::NONE);
            crate::zap::release_pte(mem, id, old);
        }
    });
}
