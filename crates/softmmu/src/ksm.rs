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
            write_protect_page(ctx, first);
            let kpfn = ctx.st.pt.pte(first).pfn();
            ctx.mem.update(kpfn, |f| {
                f.kind = FrameKind::Ksm;
                f.anon_exclusive = false;
            });
            for &addr in rest {
                write_protect_page(ctx, addr);
                replace_page(ctx, addr, kpfn);
            }
            pages.len()
        })
    }
}

/// `write_protect_page`: `Clear` of the page; if the PTE was writable or
/// dirty it is flushed and re-set clean and read-only.
fn write_protect_page<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, addr: u64) {
    let addr = align_down(addr, PAGE_SIZE);
    let inv = ctx.start(Event::Clear, addr, addr + PAGE_SIZE);
    let pte = ctx.st.pt.pte(addr);
    if pte.is_write() || pte.is_dirty() {
        let new = pte.with_write(false).with_dirty(false);
        inv.set_pte_at_notify(addr, new.raw(), |_| ());
        if let Some(slot) = ctx.st.pt.pte_mut(addr) {
            *slot = new;
        }
    }
    ctx.mem.update(pte.pfn(), |f| f.anon_exclusive = false);
    inv.end();
}

/// `replace_page`: `Clear` of the page while its PTE moves to the KSM page.
fn replace_page<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, addr: u64, kpfn: u64) {
    let inv = ctx.start(Event::Clear, addr, addr + PAGE_SIZE);
    let old = inv.ptep_clear_flush_notify(addr, || ctx.st.pt.pte(addr));
    let new = Pte::new(kpfn, false).with_dirty(false);
    inv.set_pte_at_notify(addr, new.raw(), |_| ());
    ctx.mem.get(kpfn);
    ctx.mem.map_pte(kpfn, ctx.id);
    if let Some(slot) = ctx.st.pt.pte_mut(addr) {
        *slot = new;
    }
    inv.only_end();
    release_pte(ctx.mem, ctx.id, old);
}
