//! KSM: merging identical anonymous pages into one write-protected page.
//!
//! Kernel counterpart: `mm/ksm.c` (`write_protect_page`, `replace_page`,
//! `try_to_merge_two_pages`). Every page first becomes write-protected and
//! clean under a `Clear` of the page (v6.5 `set_pte_at_notify` →
//! `change_pte`); every page but the first is then pointed at the first
//! under a second `Clear` (again with `change_pte`).

use mmun_core::{Event, HeldMmLock};

use crate::address_space::{AddressSpace, Ctx};
use crate::frame::FrameKind;
use crate::layout::{PAGE_SIZE, align_down};
use crate::page_table::Pte;
use crate::rmap::mapped_folios;
use crate::zap::release_pte;

impl AddressSpace {
    /// What ksmd does to the small anonymous pages of `[start, end)` if
    /// their contents are equal: one KSM page, mapped read-only everywhere.
    /// Returns how many pages now share it.
    pub fn ksm_merge(&self, start: u64, end: u64) -> usize {
        self.read_op(|ctx| {
            let pages: Vec<u64> = mapped_folios(ctx, start, end)
                .into_iter()
                .filter(|f| {
                    !f.huge
                        && matches!(
                            ctx.mem.frame(f.entry.pfn()).kind,
                            FrameKind::Anon | FrameKind::Ksm
                        )
                })
                .map(|f| f.start)
                .collect();
            let Some((&first, rest)) = pages.split_first() else {
                return 0;
            };
            // Each page is found again after its start (the page-table
            // lock is dropped for it; a fault or a zap beside this walk
            // may have changed it) and held by a reference until merged,
            // as ksmd holds the pages it compares.
            let Some(kpfn) = write_protect_page(ctx, first) else {
                return 0;
            };
            ctx.mem.update(kpfn, |f| {
                f.kind = FrameKind::Ksm;
                f.anon_exclusive = false;
            });
            let mut merged = 1;
            for &addr in rest {
                if let Some(pfn) = write_protect_page(ctx, addr) {
                    merged += usize::from(replace_page(ctx, addr, pfn, kpfn));
                    ctx.mem.put(pfn);
                }
            }
            ctx.mem.put(kpfn);
            merged
        })
    }
}

/// `write_protect_page`: `Clear` of the page; if the PTE was writable or
/// dirty it is flushed and re-set clean and read-only. Returns the page,
/// with a reference the caller puts, or `None` if the entry no longer maps
/// a page once the lock is taken after the start.
fn write_protect_page<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, addr: u64) -> Option<u64> {
    let addr = align_down(addr, PAGE_SIZE);
    let inv = ctx.start(Event::Clear, addr, addr + PAGE_SIZE);
    let pte = ctx.st.pt.pte(addr);
    let anon = |pte: Pte| {
        matches!(
            ctx.mem.frame(pte.pfn()).kind,
            FrameKind::Anon | FrameKind::Ksm
        )
    };
    if !pte.is_present() || pte.is_special() || !anon(pte) {
        ctx.end(inv);
        return None;
    }
    ctx.mem.get(pte.pfn());
    if pte.is_write() || pte.is_dirty() {
        let new = pte.with_write(false).with_dirty(false);
        inv.set_pte_at_notify(addr, new.raw(), |_| ());
        if let Some(slot) = ctx.st.pt.pte_mut(addr) {
            *slot = new;
        }
    }
    ctx.mem.update(pte.pfn(), |f| f.anon_exclusive = false);
    ctx.end(inv);
    Some(pte.pfn())
}

/// `replace_page`: `Clear` of the page while its PTE moves to the KSM page.
/// Only if the entry still maps `pfn` read-only once the lock is taken
/// after the start (`pte_same` with the write-protected entry); returns
/// whether it did.
fn replace_page<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, addr: u64, pfn: u64, kpfn: u64) -> bool {
    let inv = ctx.start(Event::Clear, addr, addr + PAGE_SIZE);
    let current = ctx.st.pt.pte(addr);
    if !current.is_present() || current.pfn() != pfn || current.is_write() {
        ctx.end(inv);
        return false;
    }
    let old = inv.ptep_clear_flush_notify(addr, || current);
    let new = Pte::new(kpfn, false).with_dirty(false);
    inv.set_pte_at_notify(addr, new.raw(), |_| ());
    ctx.mem.get(kpfn);
    ctx.mem.map_pte(kpfn, ctx.id);
    if let Some(slot) = ctx.st.pt.pte_mut(addr) {
        *slot = new;
    }
    ctx.only_end(inv);
    release_pte(ctx.mem, ctx.id, old);
    true
}
