//! `mmap`, `munmap` and exit: creating and destroying mappings.
//!
//! Kernel counterpart: `mm/mmap.c`, `mm/vma.c` (`do_vmi_align_munmap`,
//! `vms_gather_munmap_vmas`, `vms_clear_ptes`, `__mmap_region`) and
//! `free_pgtables` in `mm/memory.c`. munmap notifies `Unmap` over the
//! whole page-aligned request, once, if any VMA lies in it.

use std::sync::Arc;

use mmun_core::{Event, HeldMmLock};

use crate::address_space::{AddressSpace, Ctx, MapRequest};
use crate::error::{Errno, SysResult};
use crate::fault;
use crate::layout::{PAGE_SIZE, PMD_SIZE, TASK_SIZE, align_up, is_aligned};
use crate::shmem::ShmemObject;
use crate::split::{insert_or_merge, split_vma};
use crate::vma::{FileBacking, VmFlags, Vma};
use crate::vma_lock::Touches;
use crate::zap::zap_vma_range;

/// Where kernel-chosen mappings go: top-down from here (far above the
/// scripts' window, like the mmap base of a real process).
const MMAP_BASE: u64 = 0x7f00_0000_0000;

/// `vm_flags` for a new mapping (`calc_vm_prot_bits` + `calc_vm_flag_bits`
/// + the `VM_MAY*` bits).
pub(crate) fn prot_flags(prot: crate::uapi::Prot) -> VmFlags {
    let mut flags = VmFlags::NONE;
    for (on, bit) in [
        (prot.read, VmFlags::READ),
        (prot.write, VmFlags::WRITE),
        (prot.exec, VmFlags::EXEC),
    ] {
        if on {
            flags = flags.with(bit);
        }
    }
    flags
}

impl AddressSpace {
    /// `mmap(2)`. Returns the mapping's address.
    pub fn mmap(&self, req: MapRequest) -> SysResult<u64> {
        // Only a mapping whose place is the caller's names its VMAs up
        // front; the kernel's choice of address comes later, under the lock.
        let touches = if req.fixed || req.noreplace {
            let len = crate::layout::align_up(req.len.max(1), crate::layout::PAGE_SIZE);
            let end = req.addr.saturating_add(len.unwrap_or(u64::MAX));
            Touches::range(req.addr, end)
        } else {
            Touches::All
        };
        self.write_op_on(touches, |ctx| do_mmap(ctx, &req))
    }

    /// `munmap(2)`.
    pub fn munmap(&self, addr: u64, len: u64) -> SysResult {
        let (start, end) = check_range(addr, len)?;
        self.write_op_on(Touches::range(start, end), |ctx| {
            check_munmap_split(ctx, start, end)?;
            do_munmap(ctx, start, end);
            Ok(())
        })
    }

    /// The address space's last user is gone (`exit_mmap`): the notifiers
    /// are released (interval notifiers get `Release`), then everything is
    /// unmapped under one `Unmap` of `[0, u64::MAX)`.
    pub fn exit(&self) {
        if !self.mm().exit() {
            return;
        }
        self.write_op(|ctx| {
            let vmas: Vec<Vma> = ctx.st.vmas.iter().cloned().collect();
            if vmas.is_empty() {
                // exit_mmap skips unmap_vmas when nothing is mapped.
                return;
            }
            let inv = ctx.start(Event::Unmap, 0, u64::MAX);
            for vma in &vmas {
                zap_vma_range(ctx, vma, vma.start, vma.end);
            }
            ctx.end(inv);
            free_pgtables(ctx, &vmas, 0, 0);
            for vma in &vmas {
                ctx.st.vmas.remove(vma.start);
            }
        });
    }
}

/// Validates a munmap-style range: page-aligned start, non-zero length,
/// inside the user address space. Returns `[start, end)` with the end
/// rounded up to a page.
pub(crate) fn check_range(addr: u64, len: u64) -> SysResult<(u64, u64)> {
    if !is_aligned(addr, PAGE_SIZE) || len == 0 || addr >= TASK_SIZE {
        return Err(Errno::Inval);
    }
    let len = align_up(len, PAGE_SIZE).ok_or(Errno::Inval)?;
    let end = addr
        .checked_add(len)
        .filter(|&e| e <= TASK_SIZE)
        .ok_or(Errno::Inval)?;
    Ok((addr, end))
}

fn do_mmap<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, req: &MapRequest) -> SysResult<u64> {
    if req.len == 0 {
        return Err(Errno::Inval);
    }
    let len = align_up(req.len, PAGE_SIZE).ok_or(Errno::NoMem)?;
    // do_mmap: `>` (one over the limit is let through here; the splits
    // check `>=`).
    if ctx.st.vmas.len() > ctx.st.max_map_count {
        return Err(Errno::NoMem);
    }
    let start = if req.fixed || req.noreplace {
        // __get_unmapped_area checks the range (ENOMEM) before the
        // alignment (EINVAL); NOREPLACE then refuses any overlap.
        let end = req
            .addr
            .checked_add(len)
            .filter(|&e| e <= TASK_SIZE)
            .ok_or(Errno::NoMem)?;
        if !is_aligned(req.addr, PAGE_SIZE) {
            return Err(Errno::Inval);
        }
        if req.noreplace && ctx.st.vmas.any_in(req.addr, end) {
            return Err(Errno::Exist);
        }
        req.addr
    } else {
        unmapped_area(ctx, req.addr, len).ok_or(Errno::NoMem)?
    };
    let end = start + len;
    if req.fixed {
        check_munmap_split(ctx, start, end)?;
        do_munmap(ctx, start, end);
    }
    let vma = new_vma(req, ctx.mem, start, end);
    if let Some(file) = &vma.file {
        file.object.add_mapper(ctx.me.clone());
    }
    let vma = insert_or_merge(ctx, vma);
    if req.populate {
        let _ = populate(ctx, start, end);
    }
    let _ = vma;
    Ok(start)
}

fn new_vma(req: &MapRequest, memory: &Arc<crate::frame::Memory>, start: u64, end: u64) -> Vma {
    let mut flags = prot_flags(req.prot)
        .with(VmFlags::MAYREAD)
        .with(VmFlags::MAYWRITE)
        .with(VmFlags::MAYEXEC);
    if req.shared {
        flags = flags.with(VmFlags::SHARED).with(VmFlags::MAYSHARE);
    } else if req.prot.write {
        flags = flags.with(VmFlags::ACCOUNT);
    }
    let file = match (&req.object, req.shared) {
        (Some(object), _) => Some(FileBacking::new(Arc::clone(object), 0)),
        // shmem_zero_setup: anonymous shared memory is a shmem object.
        (None, true) => Some(FileBacking::new(
            Arc::new(ShmemObject::new(Arc::clone(memory), end - start)),
            0,
        )),
        (None, false) => None,
    };
    Vma {
        start,
        end,
        flags,
        anon_vma: None,
        file,
    }
}

/// A free range of `len` bytes: at `hint` if free, else the highest gap
/// below the mmap base (`vm_unmapped_area`, top-down).
fn unmapped_area<L: HeldMmLock>(ctx: &Ctx<'_, L>, hint: u64, len: u64) -> Option<u64> {
    if hint != 0
        && is_aligned(hint, PAGE_SIZE)
        && hint.checked_add(len)? <= TASK_SIZE
        && !ctx.st.vmas.any_in(hint, hint + len)
    {
        return Some(hint);
    }
    let mut top = MMAP_BASE;
    let mut vmas: Vec<&Vma> = ctx.st.vmas.iter().filter(|v| v.start < MMAP_BASE).collect();
    vmas.reverse();
    for vma in vmas {
        if vma.end <= top && top - vma.end >= len {
            return Some(top - len);
        }
        top = top.min(vma.start);
    }
    top.checked_sub(len)
}

/// A kernel-chosen free range for a move (`get_unmapped_area` without hint).
pub(crate) fn unmapped_area_for<L: HeldMmLock>(ctx: &Ctx<'_, L>, len: u64) -> Option<u64> {
    unmapped_area(ctx, 0, len)
}

/// `vms_gather_munmap_vmas`' limit: unmapping the middle of one VMA
/// splits it in three, which is refused (`ENOMEM`) when the address space
/// is at `vm.max_map_count` already; other splits of an unmap may go over
/// it, since the unmap frees VMAs again.
pub(crate) fn check_munmap_split<L: HeldMmLock>(
    ctx: &Ctx<'_, L>,
    start: u64,
    end: u64,
) -> SysResult {
    let first = ctx.st.vmas.overlapping(start, end).into_iter().next();
    match first {
        Some(vma)
            if vma.start < start && end < vma.end && ctx.st.vmas.len() >= ctx.st.max_map_count =>
        {
            Err(Errno::NoMem)
        }
        _ => Ok(()),
    }
}

/// `do_vmi_munmap` over `[start, end)`: split at the edges, notify `Unmap`
/// over the whole request, zap, free the page tables nobody else needs,
/// drop the VMAs. Nothing happens (and nothing is notified) if no VMA lies
/// in the range.
pub(crate) fn do_munmap<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, start: u64, end: u64) {
    if !ctx.st.vmas.any_in(start, end) {
        return;
    }
    split_vma(ctx, start);
    split_vma(ctx, end);
    let detached = ctx.st.vmas.overlapping(start, end);
    let floor = ctx.st.vmas.prev(start).map_or(0, |p| p.end);
    let ceiling = ctx.st.vmas.next_from(end).map_or(0, |n| n.start);
    let inv = ctx.start(Event::Unmap, start, end);
    for vma in &detached {
        zap_vma_range(ctx, vma, vma.start, vma.end);
    }
    ctx.end(inv);
    free_pgtables(ctx, &detached, floor, ceiling);
    for vma in &detached {
        ctx.st.vmas.remove(vma.start);
    }
}

/// `free_pgtables`: frees the page tables under the detached VMAs, in
/// groups of VMAs less than a PMD apart, bounded by `floor` (the previous
/// VMA's end) and `ceiling` (the next VMA's start, 0 for the top).
pub(crate) fn free_pgtables<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    detached: &[Vma],
    floor: u64,
    ceiling: u64,
) {
    let mut i = 0;
    while i < detached.len() {
        let addr = detached[i].start;
        let mut j = i;
        while j + 1 < detached.len()
            && detached[j + 1].start <= detached[j].end.saturating_add(PMD_SIZE)
        {
            j += 1;
        }
        let next = detached.get(j + 1).map_or(ceiling, |v| v.start);
        ctx.st.pt.free_pgd_range(addr, detached[j].end, floor, next);
        i = j + 1;
    }
}

/// `__mm_populate`: fault in every page of the VMAs in the range (write
/// faults for private writable mappings, read faults otherwise). A VMA
/// without access fails GUP with `EFAULT`; `mmap(MAP_POPULATE)` ignores
/// that, `mlock` does not.
pub(crate) fn populate<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, start: u64, end: u64) -> SysResult {
    for vma in ctx.st.vmas.overlapping(start, end) {
        if !vma.flags.intersects(VmFlags::ACCESS) {
            return Err(Errno::Fault);
        }
        let write = vma.flags.contains(VmFlags::WRITE) && !vma.flags.contains(VmFlags::SHARED);
        fault::fault_in_range(ctx, &vma, start.max(vma.start), end.min(vma.end), write)?;
    }
    Ok(())
}
