//! `madvise(2)`.
//!
//! Kernel counterpart: `mm/madvise.c`. `DONTNEED` and `FREE` notify
//! `Clear` per VMA over the VMA's part of the range; `REMOVE` punches a
//! hole in the shared object and notifies every mapping of it; the flag
//! advices change VMAs (splitting, which may split THPs); the rest change
//! no page table the notifiers care about.

use mmun_core::{Event, HeldMmLock};
use mmun_script::Advice;

use crate::address_space::{AddressSpace, Ctx};
use crate::error::{Errno, SysResult};
use crate::fault;
use crate::huge_memory;
use crate::layout::{PAGE_SIZE, PMD_SIZE, align_down, align_up, is_aligned};
use crate::split::vma_modify;
use crate::vma::{VmFlags, Vma};
use crate::zap::zap_vma_range;

impl AddressSpace {
    /// `madvise(2)`.
    pub fn madvise(&self, addr: u64, len: u64, advice: Advice) -> SysResult {
        if !is_aligned(addr, PAGE_SIZE) {
            return Err(Errno::Inval);
        }
        let aligned = align_up(len, PAGE_SIZE).ok_or(Errno::Inval)?;
        let end = addr.checked_add(aligned).ok_or(Errno::Inval)?;
        if end == addr {
            return Ok(());
        }
        self.write_op(|ctx| walk_vmas(ctx, addr, end, advice))
    }
}

/// `madvise_walk_vmas`: applies the advice to every VMA piece in the range;
/// holes make the result `ENOMEM` but do not stop the walk; an error of a
/// piece does.
fn walk_vmas<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    start: u64,
    end: u64,
    advice: Advice,
) -> SysResult {
    let mut unmapped = false;
    let mut at = start;
    while at < end {
        let Some(vma) = ctx.st.vmas.find(at).filter(|v| v.start < end).cloned() else {
            if matches!(advice, Advice::PopulateRead | Advice::PopulateWrite) {
                return Err(Errno::NoMem);
            }
            unmapped = true;
            break;
        };
        if vma.start > at {
            if matches!(advice, Advice::PopulateRead | Advice::PopulateWrite) {
                // madvise_populate faults from the start and stops at the
                // first address no VMA covers.
                return Err(Errno::NoMem);
            }
            unmapped = true;
            at = vma.start;
        }
        let piece_end = vma.end.min(end);
        apply(ctx, &vma, at, piece_end, advice)?;
        at = piece_end;
    }
    if unmapped { Err(Errno::NoMem) } else { Ok(()) }
}

fn apply<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    vma: &Vma,
    start: u64,
    end: u64,
    advice: Advice,
) -> SysResult {
    match advice {
        Advice::DontNeed | Advice::DontNeedLocked => dontneed(ctx, vma, start, end, advice),
        Advice::Free => free(ctx, vma, start, end),
        Advice::Remove => remove(ctx, vma, start, end),
        Advice::Cold | Advice::PageOut => {
            if vma.flags.contains(VmFlags::LOCKED) {
                return Err(Errno::Inval);
            }
            Ok(())
        }
        Advice::WillNeed => Ok(()),
        Advice::PopulateRead | Advice::PopulateWrite => {
            populate(ctx, vma, start, end, advice == Advice::PopulateWrite)
        }
        Advice::Collapse => collapse(ctx, vma, start, end),
        Advice::HugePage => update_flags(ctx, vma, start, end, |f| {
            f.with(VmFlags::HUGEPAGE).without(VmFlags::NOHUGEPAGE)
        }),
        Advice::NoHugePage => update_flags(ctx, vma, start, end, |f| {
            f.with(VmFlags::NOHUGEPAGE).without(VmFlags::HUGEPAGE)
        }),
        Advice::Mergeable => update_flags(ctx, vma, start, end, |f| f.with(VmFlags::MERGEABLE)),
        Advice::Unmergeable => {
            update_flags(ctx, vma, start, end, |f| f.without(VmFlags::MERGEABLE))
        }
        Advice::DontFork => update_flags(ctx, vma, start, end, |f| f.with(VmFlags::DONTCOPY)),
        Advice::DoFork => update_flags(ctx, vma, start, end, |f| f.without(VmFlags::DONTCOPY)),
        Advice::WipeOnFork => {
            if vma.file.is_some() || vma.flags.contains(VmFlags::SHARED) {
                return Err(Errno::Inval);
            }
            update_flags(ctx, vma, start, end, |f| f.with(VmFlags::WIPEONFORK))
        }
        Advice::KeepOnFork => {
            update_flags(ctx, vma, start, end, |f| f.without(VmFlags::WIPEONFORK))
        }
    }
}

/// `madvise_update_vma`: only if the flags change.
fn update_flags<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    vma: &Vma,
    start: u64,
    end: u64,
    change: impl Fn(VmFlags) -> VmFlags,
) -> SysResult {
    let flags = change(vma.flags);
    if flags != vma.flags {
        vma_modify(ctx, vma, start, end, |v| Vma { flags, ..v.clone() });
    }
    Ok(())
}

/// `madvise_dontneed_single_vma`: `Clear` over the piece, then zap.
fn dontneed<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    vma: &Vma,
    start: u64,
    end: u64,
    advice: Advice,
) -> SysResult {
    let forbidden = if advice == Advice::DontNeedLocked {
        VmFlags::NONE
    } else {
        VmFlags::LOCKED
    };
    if vma.flags.intersects(forbidden) {
        return Err(Errno::Inval);
    }
    let inv = ctx.start(Event::Clear, start, end);
    zap_vma_range(ctx, vma, start, end);
    inv.end();
    Ok(())
}

/// `madvise_free_single_vma`: anonymous memory only; `Clear` over the
/// piece while the pages are marked lazily freeable (clean, old).
fn free<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, vma: &Vma, start: u64, end: u64) -> SysResult {
    // madvise_dontneed_free_valid_vma: locked VMAs keep their pages.
    if !vma.is_anonymous() || vma.flags.contains(VmFlags::LOCKED) {
        return Err(Errno::Inval);
    }
    let inv = ctx.start(Event::Clear, start, end);
    let mut addr = start;
    while addr < end {
        let next = crate::layout::block_end(addr, end, PMD_SIZE);
        if matches!(
            ctx.st.pt.pmd(addr),
            Some(crate::page_table::PmdEntry::Huge(_))
        ) && next - addr != PMD_SIZE
        {
            huge_memory::split_huge_pmd(ctx, vma, addr);
        }
        addr = next;
    }
    ctx.st.pt.for_each_pte_mut(start, end, |_, pte| {
        if pte.is_present() && !pte.is_special() {
            *pte = pte.with_dirty(false).with_young(false);
        }
    });
    inv.end();
    Ok(())
}

/// `madvise_remove`: punch a hole in the shared object behind the piece;
/// every VMA mapping the punched pages gets a `Clear` over its overlap
/// (`unmap_mapping_range`).
fn remove<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, vma: &Vma, start: u64, end: u64) -> SysResult {
    if vma.flags.contains(VmFlags::LOCKED) {
        return Err(Errno::Inval);
    }
    let Some(file) = vma.file.clone() else {
        return Err(Errno::Inval);
    };
    if !vma.flags.contains(VmFlags::SHARED) || !vma.flags.contains(VmFlags::MAYWRITE) {
        return Err(Errno::Acces);
    }
    let (first, last) = (vma.pgoff_of(start), vma.pgoff_of(end - PAGE_SIZE));
    let mappers: Vec<Vma> = ctx
        .st
        .vmas
        .iter()
        .filter(|v| {
            v.file
                .as_ref()
                .is_some_and(|f| std::sync::Arc::ptr_eq(&f.object, &file.object))
        })
        .cloned()
        .collect();
    for mapper in mappers {
        let map_first = mapper.file.as_ref().map_or(0, |f| f.pgoff);
        let map_last = map_first + (mapper.len() / PAGE_SIZE) - 1;
        let (lo, hi) = (first.max(map_first), last.min(map_last));
        if lo > hi {
            continue;
        }
        let s = mapper.start + (lo - map_first) * PAGE_SIZE;
        let e = mapper.start + (hi - map_first + 1) * PAGE_SIZE;
        let inv = ctx.start(Event::Clear, s, e);
        zap_shared_only(ctx, &mapper, s, e);
        inv.end();
    }
    for pfn in file.object.punch(first, last) {
        ctx.mem.put(pfn);
    }
    Ok(())
}

/// Zaps the file pages of `[start, end)` in `vma`, keeping private COW
/// copies (`even_cows == false`).
fn zap_shared_only<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, vma: &Vma, start: u64, end: u64) {
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
    let _ = vma;
}

/// `madvise_populate`: fault the piece in, as reads or writes.
fn populate<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    vma: &Vma,
    start: u64,
    end: u64,
    write: bool,
) -> SysResult {
    let allowed = if write {
        vma.flags.contains(VmFlags::WRITE)
    } else {
        vma.flags.intersects(VmFlags::ACCESS)
    };
    if !allowed {
        return Err(Errno::Inval);
    }
    fault::fault_in_range(ctx, vma, start, end, write)
}

/// `madvise_collapse`: every PMD-sized block of the piece becomes a huge
/// page, or the call fails.
fn collapse<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, vma: &Vma, start: u64, end: u64) -> SysResult {
    if vma.flags.contains(VmFlags::NOHUGEPAGE) || !vma.is_anonymous() {
        return Err(Errno::Inval);
    }
    let hstart = align_up(start, PMD_SIZE).unwrap_or(u64::MAX);
    let hend = align_down(end, PMD_SIZE);
    // madvise_collapse goes on after a failure and returns the errno of
    // the last one.
    let mut last_failure = None;
    let mut haddr = hstart;
    while haddr < hend {
        let already = matches!(
            ctx.st.pt.pmd(haddr),
            Some(crate::page_table::PmdEntry::Huge(_))
        );
        if !already && let Err(errno) = huge_memory::collapse(ctx, vma, haddr) {
            last_failure = Some(errno);
        }
        haddr += PMD_SIZE;
    }
    last_failure.map_or(Ok(()), Err)
}
