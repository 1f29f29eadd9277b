//! `mremap(2)`: shrink, grow in place, move (to a chosen or a fixed
//! address), and move-without-unmap.
//!
//! Kernel counterpart: `mm/mremap.c` (6.18). A move notifies `Unmap` over
//! the source while the page tables move (the start possibly realigned
//! down to a PMD boundary, `try_realign_addr`), then unmaps the source
//! (a second `Unmap`) unless `MREMAP_DONTUNMAP`.

use mmun_core::{Event, HeldMmLock};

use crate::address_space::{AddressSpace, Ctx};
use crate::error::{Errno, SysResult};
use crate::layout::{PAGE_SIZE, PMD_SIZE, TASK_SIZE, align_down, align_up, block_end, is_aligned};
use crate::mmap::do_munmap;
use crate::page_table::{PmdEntry, Pte};
use crate::split::insert_or_merge;
use crate::vma::{VmFlags, Vma};
use crate::vma_lock::Touches;

/// The optional behaviour of an `mremap` call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MremapFlags {
    /// `MREMAP_MAYMOVE`.
    pub may_move: bool,
    /// `MREMAP_DONTUNMAP`.
    pub dont_unmap: bool,
    /// `MREMAP_FIXED` to this address.
    pub fixed: Option<u64>,
}

impl AddressSpace {
    /// `mremap(2)`. Returns the mapping's new address.
    pub fn mremap(
        &self,
        addr: u64,
        old_len: u64,
        new_len: u64,
        flags: MremapFlags,
    ) -> SysResult<u64> {
        let may_move = flags.may_move || flags.fixed.is_some();
        if flags.dont_unmap && !may_move {
            return Err(Errno::Inval);
        }
        if !is_aligned(addr, PAGE_SIZE) {
            return Err(Errno::Inval);
        }
        let old_len = align_up(old_len, PAGE_SIZE).ok_or(Errno::Inval)?;
        let new_len = align_up(new_len, PAGE_SIZE).ok_or(Errno::Inval)?;
        if new_len == 0 || (flags.dont_unmap && old_len != new_len) {
            return Err(Errno::Inval);
        }
        let beyond = |len: u64| addr.checked_add(len).is_none_or(|end| end > TASK_SIZE);
        if beyond(old_len) || beyond(new_len) {
            return Err(Errno::Inval);
        }
        if let Some(new_addr) = flags.fixed {
            let overlap =
                new_addr < addr.saturating_add(old_len) && addr < new_addr.saturating_add(new_len);
            if !is_aligned(new_addr, PAGE_SIZE)
                || new_addr.saturating_add(new_len) > TASK_SIZE
                || overlap
            {
                return Err(Errno::Inval);
            }
        }
        // In place the VMA grows or shrinks within `[addr, addr + max
        // len)`; a move names its destination unless the kernel picks it.
        let in_place = (addr, addr + old_len.max(new_len));
        let touches = match flags.fixed {
            Some(to) => Touches::Ranges(vec![in_place, (to, to.saturating_add(new_len))]),
            None if may_move => Touches::All,
            None => Touches::Ranges(vec![in_place]),
        };
        self.write_op_on(touches, |ctx| {
            // check_mremap_params: a move to a new address may split both
            // the source and the destination in three.
            let implies_new_addr = flags.fixed.is_some() || flags.dont_unmap;
            if implies_new_addr && ctx.st.vmas.len() + 2 >= ctx.st.max_map_count.saturating_sub(3) {
                return Err(Errno::NoMem);
            }
            let Some(vma) = ctx.st.vmas.lookup(addr) else {
                return Err(Errno::Fault);
            };
            // An old length of 0 asks for a second mapping of the same
            // pages (check_prep_vma): only shared memory has pages to share.
            if old_len == 0
                && !vma
                    .flags
                    .intersects(VmFlags::SHARED.with(VmFlags::MAYSHARE))
            {
                return Err(Errno::Inval);
            }
            match flags.fixed {
                Some(new_addr) if old_len == new_len && !flags.dont_unmap => {
                    move_all(ctx, addr, old_len, new_addr)
                }
                Some(new_addr) => {
                    mremap_to(ctx, addr, old_len, new_len, new_addr, flags.dont_unmap)
                }
                None if flags.dont_unmap => {
                    // MREMAP_DONTUNMAP always moves, to an address the
                    // kernel picks when none is fixed.
                    let vma = vma_to_resize(ctx, addr, old_len)?;
                    let new_addr =
                        crate::mmap::unmapped_area_for(ctx, new_len).ok_or(Errno::NoMem)?;
                    move_vma(ctx, &vma, addr, old_len, new_len, new_addr, true)?;
                    Ok(new_addr)
                }
                None if new_len <= old_len => {
                    if new_len < old_len {
                        do_munmap(ctx, addr + new_len, addr + old_len);
                    }
                    Ok(addr)
                }
                None => grow(ctx, addr, old_len, new_len, may_move, flags.dont_unmap),
            }
        })
    }
}

/// The single VMA that `[addr, addr + old_len)` must lie in (`vma_to_resize`).
fn vma_to_resize<L: HeldMmLock>(ctx: &Ctx<'_, L>, addr: u64, old_len: u64) -> SysResult<Vma> {
    let vma = ctx.st.vmas.lookup(addr).cloned().ok_or(Errno::Fault)?;
    if old_len > vma.end - addr {
        return Err(Errno::Fault);
    }
    Ok(vma)
}

fn grow<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    addr: u64,
    old_len: u64,
    new_len: u64,
    may_move: bool,
    dont_unmap: bool,
) -> SysResult<u64> {
    let vma = vma_to_resize(ctx, addr, old_len)?;
    let new_end = addr.checked_add(new_len).filter(|&e| e <= TASK_SIZE);
    if let Some(new_end) = new_end
        && vma.end == addr + old_len
        && !ctx.st.vmas.any_in(vma.end, new_end)
    {
        let slot = ctx.st.vmas.get_mut(vma.start).expect("vma");
        slot.end = new_end;
        return Ok(addr);
    }
    if !may_move {
        return Err(Errno::NoMem);
    }
    let new_addr = crate::mmap::unmapped_area_for(ctx, new_len).ok_or(Errno::NoMem)?;
    move_vma(ctx, &vma, addr, old_len, new_len, new_addr, dont_unmap)?;
    Ok(new_addr)
}

/// `mremap_to`: to a fixed address, after unmapping the destination and
/// trimming the source to the new length.
fn mremap_to<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    addr: u64,
    old_len: u64,
    new_len: u64,
    new_addr: u64,
    dont_unmap: bool,
) -> SysResult<u64> {
    do_munmap(ctx, new_addr, new_addr + new_len);
    let mut old_len = old_len;
    if old_len > new_len {
        do_munmap(ctx, addr + new_len, addr + old_len);
        old_len = new_len;
    }
    let vma = vma_to_resize(ctx, addr, old_len)?;
    move_vma(ctx, &vma, addr, old_len, new_len, new_addr, dont_unmap)?;
    Ok(new_addr)
}

/// A pure move to a fixed address (6.17+): every VMA of the source range
/// moves on its own, to the same offset; holes stay holes.
fn move_all<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    addr: u64,
    len: u64,
    new_addr: u64,
) -> SysResult<u64> {
    let end = addr + len;
    let vmas = ctx.st.vmas.overlapping(addr, end);
    do_munmap(ctx, new_addr, new_addr + len);
    for vma in vmas {
        let (s, e) = (vma.start.max(addr), vma.end.min(end));
        let current = ctx.st.vmas.lookup(s).cloned().expect("source VMA");
        move_vma(ctx, &current, s, e - s, e - s, new_addr + (s - addr), false)?;
    }
    Ok(new_addr)
}

/// `move_vma`: a copy of the VMA at the destination, the page tables moved
/// under an `Unmap` of the source, then the source unmapped. `ENOMEM`
/// first if the unmap could split the source in three past
/// `vm.max_map_count` (`prep_move_vma`: `map_count >= max - 3`).
fn move_vma<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    vma: &Vma,
    old_addr: u64,
    old_len: u64,
    new_len: u64,
    new_addr: u64,
    dont_unmap: bool,
) -> SysResult {
    if ctx.st.vmas.len() >= ctx.st.max_map_count.saturating_sub(3) {
        return Err(Errno::NoMem);
    }
    let mut copy = vma.clone();
    copy.start = new_addr;
    copy.end = new_addr + new_len;
    if let Some(file) = copy.file.as_mut() {
        file.pgoff = vma.pgoff_of(old_addr);
    }
    let new_vma = insert_or_merge(ctx, copy);
    if let Some(file) = &new_vma.file {
        file.object.add_mapper(ctx.me.clone());
    }
    if old_len == 0 {
        // A duplicate (old length 0): nothing moves, nothing is unmapped.
        return Ok(());
    }
    move_page_tables(ctx, vma, old_addr, &new_vma, new_addr, old_len);
    if !dont_unmap {
        do_munmap(ctx, old_addr, old_addr + old_len);
    }
    Ok(())
}

/// `move_page_tables`: the entries of `[old_addr, old_addr + len)` move to
/// `new_addr`, under one `Unmap` of the (possibly realigned) source.
fn move_page_tables<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    old: &Vma,
    old_addr: u64,
    new: &Vma,
    new_addr: u64,
    len: u64,
) {
    let old_end = old_addr + len;
    let (start, dest) = realign(ctx, old, old_addr, new, new_addr, len);
    let inv = ctx.start(Event::Unmap, start, old_end);
    let mut addr = start;
    while addr < old_end {
        let next = block_end(addr, old_end, PMD_SIZE);
        let to = dest + (addr - start);
        if let Some(PmdEntry::Huge(huge)) = ctx.st.pt.pmd(addr) {
            let huge = *huge;
            if next - addr == PMD_SIZE && is_aligned(to, PMD_SIZE) {
                ctx.st.pt.set_pmd(addr, PmdEntry::None);
                ctx.st.pt.set_pmd(to, PmdEntry::Huge(huge));
                addr = next;
                continue;
            }
            crate::huge_memory::split_huge_pmd(ctx, old, addr);
        }
        move_ptes(ctx, addr, next, to);
        addr = next;
    }
    ctx.end(inv);
}

fn move_ptes<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, start: u64, end: u64, to: u64) {
    let mut moved: Vec<(u64, Pte)> = Vec::new();
    ctx.st.pt.for_each_pte_mut(start, end, |a, pte| {
        if !pte.is_none() {
            moved.push((a, std::mem::replace(pte, Pte::NONE)));
        }
    });
    for (a, pte) in moved {
        *ctx.st.pt.pte_alloc(to + (a - start)) = pte;
    }
}

/// `try_realign_addr` (6.18): when the source starts its VMA, spans at
/// least to the next PMD boundary, and both sides are misaligned alike with
/// nothing mapped below them to the boundary, the move starts at the PMD
/// boundary (and so does the notifier range).
fn realign<L: HeldMmLock>(
    ctx: &Ctx<'_, L>,
    old: &Vma,
    old_addr: u64,
    new: &Vma,
    new_addr: u64,
    len: u64,
) -> (u64, u64) {
    let offset = old_addr & (PMD_SIZE - 1);
    let can = offset != 0
        && len >= PMD_SIZE - offset
        && offset == new_addr & (PMD_SIZE - 1)
        && can_align_down(ctx, old, old_addr)
        && can_align_down(ctx, new, new_addr);
    if can {
        (
            align_down(old_addr, PMD_SIZE),
            align_down(new_addr, PMD_SIZE),
        )
    } else {
        (old_addr, new_addr)
    }
}

fn can_align_down<L: HeldMmLock>(ctx: &Ctx<'_, L>, vma: &Vma, addr: u64) -> bool {
    vma.start == addr && !ctx.st.vmas.any_in(align_down(addr, PMD_SIZE), vma.start)
}
