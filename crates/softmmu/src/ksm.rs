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
    /// What ksmd does to the small anonymous pages of `[start, end)`: pages
    /// with the same contents (`pages_identical`) become one KSM page (the
    /// first of them, in address order), mapped read-only everywhere; a
    /// page no other page of the range equals is left alone (it would stay
    /// in the unstable tree). Returns how many pages now share a KSM page.
    pub fn ksm_merge(&self, start: u64, end: u64) -> usize {
        self.read_op(|ctx| {
            let pages: Vec<(u64, u64)> = mapped_folios(ctx, start, end)
                .into_iter()
                .filter(|f| {
                    !f.huge
                        && matches!(
                            ctx.mem.frame(f.entry.pfn()).kind,
                            FrameKind::Anon | FrameKind::Ksm
                        )
                })
                .map(|f| (f.start, f.entry.pfn()))
                .collect();
            let groups = identical_groups(ctx.mem, &pages);
            // Each page is found again after its start (the page-table
            // lock is dropped for it; a fault or a zap beside this walk
            // may have changed it) and held by a reference until merged,
            // as ksmd holds the pages it compares; a page joins its
            // group's KSM page only if, write-protected, it still holds
            // the same bytes (`pages_identical` after `write_protect_page`).
            let mut kpfn_of: Vec<Option<u64>> = vec![None; pages.len()];
            let mut merged = 0;
            for (i, &(addr, _)) in pages.iter().enumerate() {
                let group = groups[i];
                if group.members < 2 {
                    continue;
                }
                if group.first == i {
                    let Some(kpfn) = write_protect_page(ctx, addr) else {
                        continue;
                    };
                    ctx.mem.update(kpfn, |f| {
                        f.kind = FrameKind::Ksm;
                        f.anon_exclusive = false;
                    });
                    kpfn_of[i] = Some(kpfn);
                    merged += 1;
                } else if let Some(kpfn) = kpfn_of[group.first]
                    && let Some(pfn) = write_protect_page(ctx, addr)
                {
                    if ctx.mem.same_contents(pfn, kpfn) {
                        merged += usize::from(replace_page(ctx, addr, pfn, kpfn));
                    }
                    ctx.mem.put(pfn);
                }
            }
            for kpfn in kpfn_of.into_iter().flatten() {
                ctx.mem.put(kpfn);
            }
            merged
        })
    }
}

/// Which pages of a merge hold the same bytes: for each page, the index of
/// the first page with its contents and how many pages have them.
#[derive(Clone, Copy)]
struct Group {
    first: usize,
    members: usize,
}

fn identical_groups(mem: &crate::frame::Memory, pages: &[(u64, u64)]) -> Vec<Group> {
    let mut firsts: Vec<usize> = Vec::new();
    let mut of_page = Vec::with_capacity(pages.len());
    for (i, &(_, pfn)) in pages.iter().enumerate() {
        let same = firsts
            .iter()
            .copied()
            .find(|&f| mem.same_contents(pages[f].1, pfn));
        let first = same.unwrap_or_else(|| {
            firsts.push(i);
            i
        });
        of_page.push(first);
    }
    let mut members = vec![0; pages.len()];
    for &first in &of_page {
        members[first] += 1;
    }
    of_page
        .iter()
        .map(|&first| Group {
            first,
            members: members[first],
        })
        .collect()
}

/// `write_protect_page`: `Clear` of the page; if the PTE was writable or
/// dirty it is flushed and re-set clean and read-only. Returns the page,
/// with a reference the caller puts, or `None` if the entry no longer maps
/// a page once the lock is taken after the start.
fn write_protect_page<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, addr: u64) -> Option<u64> {
    let addr = align_down(addr, PAGE_SIZE);
    let inv = ctx.start(Event::Clear, addr, addr + PAGE_SIZE);
    // Checked and changed in one hold of the PTE lock, taken after the
    // start.
    let mem = ctx.mem;
    let protected = ctx.st.pt.pte_mut(addr).and_then(|mut slot| {
        let pte = *slot;
        let anon = || matches!(mem.frame(pte.pfn()).kind, FrameKind::Anon | FrameKind::Ksm);
        if !pte.is_present() || pte.is_special() || !anon() {
            return None;
        }
        mem.get(pte.pfn());
        if pte.is_write() || pte.is_dirty() {
            let new = pte.with_write(false).with_dirty(false);
            inv.set_pte_at_notify(addr, new.raw(), |_| ());
            *slot = new;
        }
        mem.update(pte.pfn(), |f| f.anon_exclusive = false);
        Some(pte.pfn())
    });
    ctx.end(inv);
    protected
}

/// `replace_page`: `Clear` of the page while its PTE moves to the KSM page.
/// Only if the entry still maps `pfn` read-only once the lock is taken
/// after the start (`pte_same` with the write-protected entry); returns
/// whether it did.
fn replace_page<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, addr: u64, pfn: u64, kpfn: u64) -> bool {
    // The first page of a merge may start mid-page (an unaligned range).
    let addr = align_down(addr, PAGE_SIZE);
    let inv = ctx.start(Event::Clear, addr, addr + PAGE_SIZE);
    let (mem, id) = (ctx.mem, ctx.id);
    let replaced = ctx.st.pt.pte_mut(addr).and_then(|mut slot| {
        let current = *slot;
        if !current.is_present() || current.pfn() != pfn || current.is_write() {
            return None;
        }
        let old = inv.ptep_clear_flush_notify(addr, || current);
        let new = Pte::new(kpfn, false).with_dirty(false);
        inv.set_pte_at_notify(addr, new.raw(), |_| ());
        mem.get(kpfn);
        mem.map_pte(kpfn, id);
        *slot = new;
        Some(old)
    });
    let Some(old) = replaced else {
        ctx.end(inv);
        return false;
    };
    ctx.only_end(inv);
    release_pte(mem, id, old);
    true
}
