//! `MADV_COLLAPSE`: the walk over a piece's PMD-sized blocks and how its
//! results become the call's return value, and the collapse of shmem.
//!
//! Kernel counterpart: `mm/khugepaged.c` (6.18: `madvise_collapse`,
//! `madvise_collapse_errno`, `collapse_file`, `retract_page_tables`). The
//! anonymous collapse of one block is `huge_memory::collapse`.

use std::sync::{Arc, Weak};

use mmun_core::{Event, HeldMmLock};

use crate::address_space::{Ctx, Shared};
use crate::error::{Errno, SysResult};
use crate::frame::FrameKind;
use crate::huge_memory::{self, CollapseResult};
use crate::i_mmap::{self, FileMapping};
use crate::layout::{HPAGE_PMD_NR, PAGE_SIZE, PMD_SIZE, align_down, align_up};
use crate::page_table::{PmdEntry, Pte, PteEntries};
use crate::shmem::ShmemObject;
use crate::vma::{VmFlags, Vma};

/// `thp_vma_allowable_order` outside a fault: the VMA must hold at least one
/// PMD-aligned block (`thp_vma_suitable_order` at `vm_end - PMD_SIZE`),
/// whatever range the call names.
fn pmd_fits(vma: &Vma) -> bool {
    vma.end
        .checked_sub(PMD_SIZE)
        .is_some_and(|last| align_down(last, PMD_SIZE) >= vma.start)
}

/// The PMD-aligned blocks of `[start, end)`, or `EINVAL` when the range
/// lies inside one block without starting at its start: Linux then finds
/// `hend < hstart`, and the unsigned block count it compares its zero
/// successes with wraps (`SCAN_FAIL`, recorded). A range that starts a
/// block but ends before the next has no block and succeeds.
fn blocks(start: u64, end: u64) -> SysResult<impl Iterator<Item = u64>> {
    let hstart = align_up(start, PMD_SIZE).unwrap_or(u64::MAX);
    let hend = align_down(end, PMD_SIZE);
    if hend < hstart {
        return Err(Errno::Inval);
    }
    Ok((hstart..hend).step_by(PMD_SIZE as usize))
}

/// Tallies block results as `madvise_collapse` does: 0 only if every
/// block ends up huge; otherwise the errno of the last failure
/// (`madvise_collapse_errno`), the walk stopping at the first failure
/// not on the whitelist.
#[derive(Default)]
struct Tally {
    blocks: usize,
    huge: usize,
    last_fail: Option<Errno>,
}

impl Tally {
    /// Counts one result; false when the walk must stop.
    fn add(&mut self, result: CollapseResult) -> bool {
        self.blocks += 1;
        match result {
            CollapseResult::Huge => self.huge += 1,
            CollapseResult::Skipped(errno) => self.last_fail = Some(errno),
            CollapseResult::Abort(errno) => {
                self.last_fail = Some(errno);
                return false;
            }
        }
        true
    }

    fn result(&self) -> SysResult {
        if self.huge == self.blocks {
            Ok(())
        } else {
            Err(self.last_fail.unwrap_or(Errno::Inval))
        }
    }
}

/// `madvise_collapse` over one VMA piece. Anonymous blocks collapse here,
/// under the lock; a shmem piece comes back as a [`FileCollapse`] to run
/// once the mmap lock is dropped (Linux drops it for
/// `hpage_collapse_scan_file`).
pub(crate) fn madvise_collapse<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    vma: &Vma,
    start: u64,
    end: u64,
) -> SysResult<Option<FileCollapse>> {
    // thp_vma_allowable_order(TVA_FORCED_COLLAPSE): an anonymous VMA
    // with no anon_vma yet (never written) allows no order outside a fault.
    let no_anon_vma = vma.is_anonymous() && vma.anon_vma.is_none();
    if vma.flags.contains(VmFlags::NOHUGEPAGE) || !pmd_fits(vma) || no_anon_vma {
        return Err(Errno::Inval);
    }
    if let Some(file) = &vma.file {
        return Ok(Some(FileCollapse {
            object: Arc::clone(&file.object),
            blocks: blocks(start, end)?
                .map(|haddr| vma.pgoff_of(haddr))
                .collect(),
            aligned: (vma.start / PAGE_SIZE)
                .wrapping_sub(file.pgoff)
                .is_multiple_of(HPAGE_PMD_NR),
            has_anon_vma: vma.anon_vma.is_some(),
            caller: ctx.me.clone(),
            vma_start: vma.start,
        }));
    }
    let mut tally = Tally::default();
    for haddr in blocks(start, end)? {
        if !tally.add(huge_memory::collapse(ctx, vma, haddr)) {
            break;
        }
    }
    tally.result().map(|()| None)
}

/// `MADV_COLLAPSE` of a shared shmem piece, to run without the mmap lock.
pub(crate) struct FileCollapse {
    object: Arc<ShmemObject>,
    /// The first page offset of every block.
    blocks: Vec<u64>,
    /// Whether the VMA maps the object PMD-aligned
    /// (`transhuge_vma_suitable`).
    aligned: bool,
    /// Whether the VMA has an anon_vma (private copies): its page table
    /// is not retracted and `collapse_pte_mapped_thp` refuses it
    /// (`SCAN_VMA_CHECK`, `EINVAL`), after the page cache has collapsed.
    has_anon_vma: bool,
    /// The address space that asked, and its VMA, to map the new folio in.
    caller: Weak<Shared>,
    vma_start: u64,
}

impl FileCollapse {
    /// `collapse_file` + `retract_page_tables` for every block.
    pub(crate) fn run(self) -> SysResult {
        let mut tally = Tally::default();
        for &first in &self.blocks {
            let result = if self.aligned && self.already_large(first) {
                // SCAN_PTE_MAPPED_HUGEPAGE: the cache holds the folio already;
                // only the caller's mapping is made a PMD.
                if self.has_anon_vma {
                    CollapseResult::Abort(Errno::Inval)
                } else {
                    self.map_folio(first);
                    CollapseResult::Huge
                }
            } else if self.aligned {
                match collapse_file(&self.object, first) {
                    CollapseResult::Huge if self.has_anon_vma => {
                        CollapseResult::Abort(Errno::Inval)
                    }
                    CollapseResult::Huge => {
                        self.map_folio(first);
                        CollapseResult::Huge
                    }
                    result => result,
                }
            } else {
                // hugepage_vma_revalidate: SCAN_ADDRESS_RANGE.
                CollapseResult::Abort(Errno::Inval)
            };
            if !tally.add(result) {
                break;
            }
        }
        tally.result()
    }
}

impl FileCollapse {
    /// Whether the cache already holds a PMD-sized folio at `first`.
    fn already_large(&self, first: u64) -> bool {
        self.object.find_page(first).is_some_and(|head| {
            let frame = self.object.memory().frame(head);
            frame.order == 9 && frame.head == head
        })
    }

    /// `collapse_pte_mapped_thp(install_pmd)`: the caller's VMA maps the
    /// folio by one PMD — with no notifier if its PMD is empty, under a
    /// `Clear` of the 2 MiB if a page table has to go — or, where the
    /// block is not PMD-suitable there, by PTEs.
    fn map_folio(&self, first: u64) {
        let Some(space) = self.caller.upgrade() else {
            return;
        };
        i_mmap::with_vma_at(&space, self.vma_start, &self.object, |ctx, vma| {
            let Some((start, end)) = i_mmap::clip(vma, first, first + HPAGE_PMD_NR - 1) else {
                return;
            };
            if let Some(head) = crate::huge_memory::file_folio_for_pmd(ctx, vma, start) {
                match ctx.st.pt.pmd(start) {
                    Some(PmdEntry::Huge(_)) => {}
                    Some(PmdEntry::Table(_)) => {
                        let inv = ctx.start(Event::Clear, start, start + PMD_SIZE);
                        // Under the PMD lock again (a fault or a hole punch
                        // beside this walk may have changed the block
                        // meanwhile): the table goes only if the folio is
                        // still cached there and nothing but file pages is
                        // in it.
                        let same =
                            crate::huge_memory::file_folio_for_pmd(ctx, vma, start) == Some(head);
                        if same && retract_file_table(ctx, start) {
                            // Left unmapped if the folio went meanwhile: the
                            // next fault maps what the cache holds then.
                            let _ = crate::huge_memory::map_file_pmd(ctx, vma, start, head);
                        }
                        ctx.end(inv);
                    }
                    _ => {
                        let _ = crate::huge_memory::map_file_pmd(ctx, vma, start, head);
                    }
                }
                return;
            }
            let writable =
                vma.flags.contains(VmFlags::SHARED) && vma.flags.contains(VmFlags::WRITE);
            let mut addr = start;
            while addr < end {
                let index = vma.pgoff_of(addr);
                let (mem, id) = (ctx.mem, ctx.id);
                if let Some(pfn) = self.object.find_page(index) {
                    // Checked and filled in one hold of the PTE lock, which
                    // a fault beside this takes without the PMD lock.
                    let mut slot = ctx.st.pt.pte_alloc(addr);
                    if slot.is_none() {
                        mem.get(pfn);
                        mem.map_pte(pfn, id);
                        *slot = Pte::new(pfn, writable);
                    }
                }
                addr += PAGE_SIZE;
            }
        });
    }
}

/// `collapse_file` for shmem, then `retract_page_tables`: a new large
/// folio (allocated first: `SCAN_ALLOC_HUGE_PAGE_FAIL`) takes the place of
/// the block's pages in the cache, holes included; a block with nothing
/// cached is `SCAN_TRUNCATED` (`EINVAL`). Every mapped old page
/// is unmapped from every VMA mapping it (`try_to_unmap`: a `Clear` of the
/// page in each VMA, in `i_mmap` order, until the page is mapped nowhere);
/// then each VMA that maps the block PMD-aligned and has no anon_vma loses
/// its page table under a `Clear` of the 2 MiB. Linux then maps the folio
/// by a PMD in the caller's VMA (`collapse_pte_mapped_thp`, with no
/// notifier: the PMD is empty); see [`FileCollapse::map_folio`].
fn collapse_file(object: &ShmemObject, first: u64) -> CollapseResult {
    let last = first + HPAGE_PMD_NR - 1;
    if (last + 1) * PAGE_SIZE > object.size() {
        return CollapseResult::Abort(Errno::Inval);
    }
    let memory = Arc::clone(object.memory());
    let kind = FrameKind::File {
        object: object.id(),
        index: first,
    };
    let Some(head) = memory.alloc_huge(kind) else {
        return CollapseResult::Abort(Errno::NoMem);
    };
    if (first..=last).all(|index| object.find_page(index).is_none()) {
        // Nothing cached in the block: SCAN_TRUNCATED.
        memory.put(head);
        return CollapseResult::Abort(Errno::Inval);
    }
    let mappings = i_mmap::mappings(object, first, last);
    for index in first..=last {
        if let Some(old) = object.find_page(index) {
            try_to_unmap(object, &mappings, index, old);
        }
    }
    for i in 0..HPAGE_PMD_NR {
        let (index, pfn) = (first + i, head + i);
        memory.update(pfn, |f| {
            f.kind = FrameKind::File {
                object: object.id(),
                index,
            }
        });
        if i > 0 {
            memory.get(head); // one cache reference per page
        }
        if let Some(old) = object.find_page(index) {
            memory.copy_page(old, pfn);
        }
        if let Some(old) = object.replace_page(index, pfn) {
            memory.put(old);
        }
    }
    for mapping in &mappings {
        retract_page_table(object, mapping, first, last);
    }
    CollapseResult::Huge
}

/// `try_to_unmap` of one mapped cache page: every VMA covering its offset,
/// in `i_mmap` order, gets a `Clear` of the page, whether or not that VMA
/// maps it (the range starts before `page_vma_mapped_walk` looks; 6.18
/// walks on after the last mapping is gone, as recorded).
fn try_to_unmap(object: &ShmemObject, mappings: &[FileMapping], index: u64, pfn: u64) {
    if object.memory().frame(pfn).mapcount == 0 {
        return;
    }
    for mapping in mappings {
        i_mmap::with_mapping(mapping, object, |ctx, vma| {
            let Some((start, end)) = i_mmap::clip(vma, index, index) else {
                return;
            };
            let inv = ctx.start(Event::Clear, start, end);
            if ctx.st.pt.pte(start).is_present() && ctx.st.pt.pte(start).pfn() == pfn {
                i_mmap::zap_file_pages(ctx, start, end);
            }
            ctx.end(inv);
        });
    }
}

/// `retract_page_tables` for one VMA: the now empty page table of the
/// block goes, under a `Clear` of the 2 MiB.
fn retract_page_table(object: &ShmemObject, mapping: &FileMapping, first: u64, last: u64) {
    i_mmap::with_mapping(mapping, object, |ctx, vma| {
        let Some((addr, end)) = i_mmap::clip(vma, first, last) else {
            return;
        };
        if vma.anon_vma.is_some() || !addr.is_multiple_of(PMD_SIZE) || end - addr != PMD_SIZE {
            return;
        }
        if !matches!(ctx.st.pt.pmd(addr), Some(PmdEntry::Table(_))) {
            return;
        }
        let inv = ctx.start(Event::Clear, addr, end);
        // Checked again under the PMD lock, taken after the start: a fault
        // beside this walk may have put an anonymous copy in the table.
        retract_file_table(ctx, addr);
        ctx.end(inv);
    });
}

/// Takes the page table at `haddr` out of its PMD if it maps nothing but
/// file pages, zapping those; returns whether it did. The check, the zap
/// and the table's leaving are one hold of the PTE lock, which faults
/// take without the PMD lock.
fn retract_file_table<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, haddr: u64) -> bool {
    let Some(table) = ctx.st.pt.pte_table(haddr) else {
        return false;
    };
    let mut entries = table.lock();
    if !only_file_pages(ctx.mem, &entries, haddr) {
        return false;
    }
    for i in 0..HPAGE_PMD_NR {
        let old = std::mem::replace(entries.get_mut(haddr + i * PAGE_SIZE), Pte::NONE);
        crate::zap::release_pte(ctx.mem, ctx.id, old);
    }
    entries.mark_detached();
    drop(entries);
    ctx.st.pt.set_pmd(haddr, PmdEntry::None);
    true
}

/// Whether the PMD at `haddr` is a page table mapping nothing but file
/// pages (or nothing), so that zapping those leaves it empty.
fn only_file_pages(mem: &crate::frame::Memory, table: &PteEntries, haddr: u64) -> bool {
    (0..HPAGE_PMD_NR).all(|i| {
        let pte = table.get(haddr + i * PAGE_SIZE);
        pte.is_none()
            || (pte.is_present()
                && !pte.is_special()
                && matches!(mem.frame(pte.pfn()).kind, FrameKind::File { .. }))
    })
}
