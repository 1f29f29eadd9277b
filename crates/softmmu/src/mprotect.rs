//! `mprotect`, `mlock` and `munlock`: changing the flags of a range of
//! VMAs, and the lazily-notified page-table walk of `change_protection`.
//!
//! Kernel counterpart: `mm/mprotect.c` (6.18: the `ProtectionVma` range
//! starts at the first populated PUD of each PGD span) and `mm/mlock.c`.

use mmun_core::{Event, HeldMmLock, Invalidation};

use crate::address_space::{AddressSpace, Ctx};
use crate::error::{Errno, SysResult};
use crate::huge_memory::split_huge_pmd;
use crate::layout::{
    PAGE_SIZE, PGDIR_SIZE, PMD_SIZE, PUD_SIZE, align_down, align_up, block_end, is_aligned,
};
use crate::mmap::{populate, prot_flags};
use crate::page_table::{PmdEntry, Pte, SwapKind};
use crate::split::vma_modify;
use crate::vma::{VmFlags, Vma};
use crate::vma_lock::Touches;

impl AddressSpace {
    /// `mprotect(2)`.
    pub fn mprotect(&self, addr: u64, len: u64, prot: crate::uapi::Prot) -> SysResult {
        if !is_aligned(addr, PAGE_SIZE) {
            return Err(Errno::Inval);
        }
        if len == 0 {
            return Ok(());
        }
        let len = align_up(len, PAGE_SIZE).ok_or(Errno::NoMem)?;
        let end = addr.checked_add(len).ok_or(Errno::NoMem)?;
        let access = prot_flags(prot);
        self.write_op_on(Touches::range(addr, end), |ctx| {
            for_each_vma_span(ctx, addr, end, |ctx, vma, start, end| {
                let new_flags = vma.flags.without(VmFlags::ACCESS).with(access);
                if !new_flags.may_allow(access) {
                    return Err(Errno::Acces);
                }
                mprotect_fixup(ctx, vma, start, end, new_flags)
            })
        })
    }

    /// `mlock(2)`: lock the VMAs, then fault the range in.
    pub fn mlock(&self, addr: u64, len: u64) -> SysResult {
        let (start, end) = lock_range(addr, len)?;
        self.write_op_on(Touches::range(start, end), |ctx| {
            let result = for_each_vma_span(ctx, start, end, |ctx, vma, s, e| {
                let flags = vma.flags.with(VmFlags::LOCKED);
                if flags != vma.flags {
                    vma_modify(ctx, vma, s, e, |v| Vma { flags, ..v.clone() })?;
                }
                Ok(())
            });
            result?;
            // __mm_populate fails; the VMAs stay locked.
            populate(ctx, start, end).map_err(mlock_errno)
        })
    }

    /// `munlock(2)`.
    pub fn munlock(&self, addr: u64, len: u64) -> SysResult {
        let (start, end) = lock_range(addr, len)?;
        self.write_op_on(Touches::range(start, end), |ctx| {
            for_each_vma_span(ctx, start, end, |ctx, vma, s, e| {
                let flags = vma
                    .flags
                    .without(VmFlags::LOCKED)
                    .without(VmFlags::LOCKONFAULT);
                if flags != vma.flags {
                    vma_modify(ctx, vma, s, e, |v| Vma { flags, ..v.clone() })?;
                }
                Ok(())
            })
        })
    }
}

/// `mlock`'s range: the start rounded down, the length up.
fn lock_range(addr: u64, len: u64) -> SysResult<(u64, u64)> {
    let start = align_down(addr, PAGE_SIZE);
    let len = align_up(
        len.checked_add(addr - start).ok_or(Errno::NoMem)?,
        PAGE_SIZE,
    )
    .ok_or(Errno::NoMem)?;
    let end = start.checked_add(len).ok_or(Errno::NoMem)?;
    Ok((start, end))
}

/// Walks the VMAs covering `[start, end)` in order, calling `f` on each
/// piece; a hole (or no VMA at `start`) ends the walk with `ENOMEM`, after
/// the pieces before it were processed — `mprotect`'s and `mlock`'s loop.
pub(crate) fn for_each_vma_span<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    start: u64,
    end: u64,
    mut f: impl FnMut(&mut Ctx<'_, L>, &Vma, u64, u64) -> SysResult,
) -> SysResult {
    let mut at = start;
    while at < end {
        let vma = match ctx.st.vmas.find(at) {
            Some(v) if v.start <= at => v.clone(),
            _ => return Err(Errno::NoMem),
        };
        let piece_end = vma.end.min(end);
        f(ctx, &vma, at, piece_end)?;
        at = piece_end;
    }
    Ok(())
}

/// `mprotect_fixup`: nothing if the flags do not change; otherwise modify
/// the VMA (merging or splitting) and change the page protections.
fn mprotect_fixup<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    vma: &Vma,
    start: u64,
    end: u64,
    flags: VmFlags,
) -> SysResult {
    if flags == vma.flags {
        return Ok(());
    }
    let was_locked_readonly = vma.flags.contains(VmFlags::LOCKED)
        && !vma.flags.intersects(VmFlags::WRITE.with(VmFlags::SHARED));
    // A private mapping made writable is charged (VM_ACCOUNT); made
    // read-only again it stays charged, unless it is anonymous memory that
    // was never faulted.
    let mut flags = flags;
    let exempt = VmFlags::ACCOUNT.with(VmFlags::WRITE).with(VmFlags::SHARED);
    if flags.contains(VmFlags::WRITE) && !vma.flags.intersects(exempt) {
        flags = flags.with(VmFlags::ACCOUNT);
    } else if !flags.contains(VmFlags::WRITE)
        && vma.flags.contains(VmFlags::ACCOUNT)
        && vma.is_anonymous()
        && vma.anon_vma.is_none()
    {
        flags = flags.without(VmFlags::ACCOUNT);
    }
    let modified = vma_modify(ctx, vma, start, end, |v| Vma { flags, ..v.clone() })?;
    change_protection(ctx, &modified, start, end);
    if was_locked_readonly && flags.contains(VmFlags::WRITE) {
        let _ = populate(ctx, start, end);
    }
    Ok(())
}

/// `change_protection` over `[start, end)` of `vma`, with the 6.18 lazy
/// notifier: one `ProtectionVma` range per PGD span, starting at the first
/// populated PUD entry and ending at the span's end.
pub(crate) fn change_protection<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    vma: &Vma,
    start: u64,
    end: u64,
) {
    let mut addr = start;
    while addr < end {
        let next = block_end(addr, end, PGDIR_SIZE);
        if ctx.st.pt.p4d_present(addr) {
            change_pud_range(ctx, vma, addr, next);
        }
        addr = next;
    }
}

fn change_pud_range<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, vma: &Vma, start: u64, end: u64) {
    let mut inv: Option<Invalidation<'_>> = None;
    let mut addr = start;
    while addr < end {
        let next = block_end(addr, end, PUD_SIZE);
        if ctx.st.pt.pud_present(addr) {
            if inv.is_none() {
                inv = Some(ctx.start(Event::ProtectionVma, addr, end));
            }
            change_pmd_range(ctx, vma, addr, next);
        }
        addr = next;
    }
    if let Some(inv) = inv {
        ctx.end(inv);
    }
}

fn change_pmd_range<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, vma: &Vma, start: u64, end: u64) {
    let mut addr = start;
    while addr < end {
        let next = block_end(addr, end, PMD_SIZE);
        if let Some(PmdEntry::Huge(huge)) = ctx.st.pt.pmd(addr) {
            let huge = *huge;
            if next - addr != PMD_SIZE {
                split_huge_pmd(ctx, vma, addr);
            } else {
                let new = new_protection(ctx, vma, huge);
                ctx.st.pt.set_pmd(addr, PmdEntry::Huge(new));
                addr = next;
                continue;
            }
        }
        change_pte_range(ctx, vma, addr, next);
        addr = next;
    }
}

fn change_pte_range<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, vma: &Vma, start: u64, end: u64) {
    let mut updates = Vec::new();
    ctx.st.pt.for_each_pte_mut(start, end, |a, pte| {
        if pte.is_present() {
            updates.push((a, *pte));
        } else if pte.is_device_private() && pte.swap_was_writable() {
            // change_pte_range: a writable device-private entry becomes
            // readable whatever the new protection (the next device or CPU
            // write faults and looks at the VMA again).
            *pte = Pte::swap(SwapKind::DevicePrivate, pte.pfn(), false);
        } else if pte.swap_kind() == Some(SwapKind::DeviceExclusive)
            && pte.swap_was_writable()
            && !vma.flags.contains(VmFlags::WRITE)
        {
            // The device's write access ends inside this range, after it was
            // told, not when the VMA's flags changed before the start: the
            // entry stops granting write here (`make_readable_device_-
            // exclusive_entry` before 6.15; since then the entry carries no
            // write bit and `restore_exclusive_pte` asks the VMA, which the
            // CPU side here does too).
            *pte = Pte::swap(SwapKind::DeviceExclusive, pte.pfn(), false);
        }
    });
    for (a, old) in updates {
        let new = new_protection(ctx, vma, old);
        if let Some(mut slot) = ctx.st.pt.pte_mut(a) {
            *slot = new;
        }
    }
}

/// A present entry under the VMA's new protection: PROT_NONE makes it
/// inaccessible; write stays only where `can_change_pte_writable` allows.
fn new_protection<L: HeldMmLock>(ctx: &Ctx<'_, L>, vma: &Vma, old: Pte) -> Pte {
    let none = !vma.flags.intersects(VmFlags::ACCESS);
    let writable = vma.flags.contains(VmFlags::WRITE)
        && !none
        && (old.is_write() || can_change_writable(ctx, vma, old));
    old.with_protnone(none).with_write(writable)
}

/// `can_change_pte_writable`: a present entry may become writable without a
/// fault (a dirty shared page, an exclusive anonymous page).
pub(crate) fn can_change_writable<L: HeldMmLock>(ctx: &Ctx<'_, L>, vma: &Vma, pte: Pte) -> bool {
    if pte.is_special() {
        return false;
    }
    if vma.flags.contains(VmFlags::SHARED) {
        return pte.is_dirty();
    }
    let frame = ctx.mem.frame(pte.pfn());
    frame.kind == crate::frame::FrameKind::Anon && frame.anon_exclusive
}

/// `__mlock_posix_error_return`: GUP's `EFAULT` (an inaccessible VMA)
/// becomes `ENOMEM`, and its `ENOMEM` (no page to be had) becomes `EAGAIN`.
fn mlock_errno(errno: Errno) -> Errno {
    match errno {
        Errno::Fault => Errno::NoMem,
        Errno::NoMem => Errno::Again,
        other => other,
    }
}
