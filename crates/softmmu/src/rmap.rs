//! Operations the kernel drives from the page's side (the reverse map)
//! rather than from a system call: migration, reclaim and aging.
//!
//! Kernel counterpart: `mm/rmap.c` (`try_to_migrate_one`,
//! `try_to_unmap_one`, `folio_referenced_one`), `mm/migrate.c`,
//! `mm/vmscan.c` (6.18 MGLRU aging: `clear_young`), `mm/khugepaged.c`
//! (`test_young`). These paths hold the rmap lock, not the mmap lock. The
//! software MMU's reverse map is the walk of the one address space.
//!
//! Per-folio ranges are as in Linux: `[addr, addr + 4 KiB)` for a base
//! page, the 2 MiB of a PMD-mapped huge page.

use mmun_core::{Event, HeldMmLock, notify};

use crate::address_space::{AddressSpace, Ctx};
use crate::frame::{FrameKind, Pfn};
use crate::layout::{PAGE_SIZE, PMD_SIZE, align_down, block_end};
use crate::page_table::{PmdEntry, Pte, SwapKind};
use crate::zap::release_pte;

/// A mapped folio found by a walk: its range in the address space and how
/// it is mapped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mapped {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) entry: Pte,
    pub(crate) huge: bool,
}

/// Every present, non-zero-page mapping of `[start, end)`, one per folio
/// mapping (a huge PMD is one).
pub(crate) fn mapped_folios<L: HeldMmLock>(ctx: &Ctx<'_, L>, start: u64, end: u64) -> Vec<Mapped> {
    // Only user addresses have page tables; above them the table indices
    // would alias lower addresses.
    let end = end.min(crate::layout::TASK_SIZE);
    let mut out = Vec::new();
    let mut addr = start;
    while addr < end {
        let resume = ctx.st.pt.skip_empty(addr, end);
        if resume != addr {
            addr = resume;
            continue;
        }
        let next = block_end(addr, end, PMD_SIZE);
        match ctx.st.pt.pmd(addr) {
            Some(PmdEntry::Huge(huge)) if !huge.is_special() => {
                let haddr = align_down(addr, PMD_SIZE);
                out.push(Mapped {
                    start: haddr,
                    end: haddr + PMD_SIZE,
                    entry: *huge,
                    huge: true,
                });
            }
            Some(PmdEntry::Table(_)) => {
                let mut a = addr;
                while a < next {
                    let pte = ctx.st.pt.pte(a);
                    if pte.is_present() && !pte.is_special() {
                        out.push(Mapped {
                            start: a,
                            end: a + PAGE_SIZE,
                            entry: pte,
                            huge: false,
                        });
                    }
                    a += PAGE_SIZE;
                }
            }
            _ => {}
        }
        addr = next;
    }
    out
}

impl AddressSpace {
    /// Migrates every mapped anonymous page of `[start, end)` to a new frame, as
    /// `migrate_pages(2)`, NUMA balancing or compaction would: `Clear` over
    /// each folio while migration entries replace its mappings; the new
    /// mappings are installed without notification. Returns how many folios
    /// moved.
    pub fn migrate(&self, start: u64, end: u64) -> usize {
        self.rmap_op(|ctx| {
            let folios: Vec<Mapped> = mapped_folios(ctx, start, end)
                .into_iter()
                .filter(|f| ctx.mem.frame(f.entry.pfn()).kind == FrameKind::Anon)
                .collect();
            folios.iter().filter(|f| migrate_one(ctx, f)).count()
        })
    }

    /// Aging as MGLRU's page-table walk does it in 6.18: every present entry
    /// of `[start, end)` has its accessed bit cleared in the primary, then
    /// in the secondaries (`clear_young` per page or per 2 MiB). Returns
    /// how many were young on either side.
    pub fn age(&self, start: u64, end: u64) -> usize {
        self.rmap_op(|ctx| {
            let folios = mapped_folios(ctx, start, end);
            folios.iter().filter(|f| age_one(ctx, f, false)).count()
        })
    }

    /// Reclaim of `[start, end)`: `folio_referenced` asks the secondaries
    /// with `clear_flush_young`; unreferenced reclaimable folios (shared
    /// memory, and anonymous pages `MADV_FREE` left clean — the recorded
    /// kernel has no swap) are unmapped under a `Clear` of the folio.
    /// Returns how many folios were reclaimed.
    pub fn reclaim(&self, start: u64, end: u64) -> usize {
        self.rmap_op(|ctx| {
            let folios = mapped_folios(ctx, start, end);
            let mut reclaimed = 0;
            for folio in &folios {
                let referenced = age_one(ctx, folio, true);
                if !referenced && reclaimable(ctx, folio) && unmap_one(ctx, folio) {
                    reclaimed += 1;
                }
            }
            reclaimed
        })
    }

    /// khugepaged's question for a PTE that is not young in the primary:
    /// has a secondary MMU used the page (`test_young`)?
    pub fn test_young(&self, addr: u64) -> bool {
        self.rmap_op(|ctx| {
            let pte = ctx.st.pt.pte(addr);
            pte.is_young() || ctx.mm.test_young(align_down(addr, PAGE_SIZE))
        })
    }
}

fn age_one<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, folio: &Mapped, flush: bool) -> bool {
    let mm = ctx.mm;
    let primary = folio.entry.is_young();
    let clear = |pte: Pte| pte.with_young(false);
    if folio.huge {
        // Read again: reclaim unmaps earlier folios of its walk under their
        // own starts, which drop the lock, so the PMD the walk found may
        // have been split, zapped or migrated since.
        match ctx.st.pt.pmd(folio.start) {
            Some(PmdEntry::Huge(now)) if now.pfn() == folio.entry.pfn() => {
                let now = *now;
                ctx.st.pt.set_pmd(folio.start, PmdEntry::Huge(clear(now)));
            }
            _ => return false,
        }
        if flush {
            notify::pmdp_clear_flush_young_notify(mm, folio.start, || primary)
        } else {
            notify::pmdp_clear_young_notify(mm, folio.start, || primary)
        }
    } else {
        if let Some(mut slot) = ctx.st.pt.pte_mut(folio.start) {
            *slot = clear(*slot);
        }
        if flush {
            notify::ptep_clear_flush_young_notify(mm, folio.start, || primary)
        } else {
            notify::ptep_clear_young_notify(mm, folio.start, || primary)
        }
    }
}

fn reclaimable<L: HeldMmLock>(ctx: &Ctx<'_, L>, folio: &Mapped) -> bool {
    match ctx.mem.frame(folio.entry.pfn()).kind {
        // A PMD-mapped page-cache folio is not reclaimed here.
        FrameKind::File { .. } => !folio.huge,
        FrameKind::Anon => !folio.huge && !folio.entry.is_dirty(),
        _ => false,
    }
}

/// `try_to_unmap_one`: `Clear` over the folio, the entry cleared and the
/// secondary TLBs flushed per PTE (v6.5 `invalidate_range`), then the
/// folio is dropped. Returns whether it was (the entry found again).
fn unmap_one<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, folio: &Mapped) -> bool {
    let inv = ctx.start(Event::Clear, folio.start, folio.end);
    // `page_vma_mapped_walk` finds the entry again under the PTL, taken
    // after the start: it is unmapped only if it still maps the folio.
    // A lazily freed page written since the walk looked (its entry dirty
    // again) is kept, as `try_to_unmap_one` re-checks the dirty bit under
    // the PTL.
    let (mem, id) = (ctx.mem, ctx.id);
    let written_since =
        |slot: &Pte| slot.is_dirty() && mem.frame(slot.pfn()).kind == FrameKind::Anon;
    let cleared = ctx.st.pt.pte_mut(folio.start).and_then(|mut slot| {
        let still_mapped = slot.is_present() && slot.pfn() == folio.entry.pfn();
        if !still_mapped || written_since(&slot) {
            return None;
        }
        let old = std::mem::replace(&mut *slot, Pte::NONE);
        inv.invalidate_range(folio.start, folio.start + PAGE_SIZE);
        Some(old)
    });
    if let Some(old) = cleared {
        release_pte(mem, id, old);
    }
    ctx.end(inv);
    cleared.is_some()
}

/// `try_to_migrate_one` + `remove_migration_ptes`. The destination is
/// allocated first (`migrate_folio_unmap` gets it before unmapping): with
/// no memory for it the folio stays where it is, unnotified, and this
/// returns false.
fn migrate_one<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, folio: &Mapped) -> bool {
    let kind = ctx.mem.frame(folio.entry.pfn()).kind;
    if folio.huge {
        let Some(head) = ctx.mem.alloc_huge(kind) else {
            return false;
        };
        for i in 0..crate::layout::HPAGE_PMD_NR {
            ctx.mem.copy_page(folio.entry.pfn() + i, head + i);
        }
        let inv = ctx.start(Event::Clear, folio.start, folio.end);
        // Found again under the PMD lock, taken after the start.
        let current = match ctx.st.pt.pmd(folio.start) {
            Some(PmdEntry::Huge(h)) if h.is_present() && h.pfn() == folio.entry.pfn() => *h,
            _ => {
                ctx.end(inv);
                ctx.mem.put(head);
                return true;
            }
        };
        ctx.mem.map_pmd(head, ctx.id);
        let new = Pte::new(head, current.is_write()).with_young(current.is_young());
        ctx.st.pt.set_pmd(folio.start, PmdEntry::Huge(new));
        ctx.end(inv);
        crate::zap::release_huge(ctx.mem, ctx.id, current);
        return true;
    }
    let Some(new_pfn) = ctx.mem.alloc(kind) else {
        return false;
    };
    let inv = ctx.start(Event::Clear, folio.start, folio.end);
    // `try_to_migrate_one` takes the PTL only after the start (which
    // dropped it here), and `page_vma_mapped_walk` finds the entry again
    // under it.
    //
    // Modelled simplification: the new entry replaces the migration entry
    // in the same hold of the PTE lock (Linux's `remove_migration_ptes`
    // runs after the end), so no other thread ever meets a migration
    // entry: the faults and zaps here do not wait for one as Linux's do.
    let (mem, id) = (ctx.mem, ctx.id);
    let moved = ctx.st.pt.pte_mut(folio.start).and_then(|mut slot| {
        let current = *slot;
        if !current.is_present() || current.pfn() != folio.entry.pfn() {
            return None;
        }
        *slot = Pte::swap(SwapKind::Migration, current.pfn(), current.grants_write());
        mem.copy_page(current.pfn(), new_pfn);
        mem.map_pte(new_pfn, id);
        *slot = migrated_pte(new_pfn, current);
        Some(current)
    });
    match moved {
        Some(old) => release_pte(mem, id, old),
        None => mem.put(new_pfn),
    }
    ctx.end(inv);
    true
}

/// `remove_migration_pte` rebuilds the entry from the VMA's protection: a
/// PROT_NONE page stays inaccessible.
fn migrated_pte(new_pfn: Pfn, old: Pte) -> Pte {
    Pte::new(new_pfn, old.grants_write())
        .with_young(old.is_young())
        .with_dirty(old.is_dirty())
        .with_protnone(old.is_protnone())
}

/// Replaces the entry `folio` names by a migration entry, if it is still
/// that entry: the check and the swap are one hold of the PTE lock, since
/// a fault or a zap beside the caller may have changed it since the
/// caller read it (`try_to_migrate_one`'s `page_vma_mapped_walk`). Returns
/// the entry replaced.
pub(crate) fn install_migration_entry<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    folio: &Mapped,
) -> Option<Pte> {
    let old = folio.entry;
    let mut slot = ctx.st.pt.pte_mut(folio.start)?;
    if *slot != old {
        return None;
    }
    *slot = Pte::swap(SwapKind::Migration, old.pfn(), old.grants_write());
    Some(old)
}

pub(crate) fn finish_migration<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    addr: u64,
    old: Pte,
    new_pfn: Pfn,
) {
    // migrate_folio: the contents move with the page.
    ctx.mem.copy_page(old.pfn(), new_pfn);
    ctx.mem.map_pte(new_pfn, ctx.id);
    if let Some(mut slot) = ctx.st.pt.pte_mut(addr) {
        *slot = migrated_pte(new_pfn, old);
    }
    release_pte(ctx.mem, ctx.id, old);
}
