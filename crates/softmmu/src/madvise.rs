//! `madvise(2)`.
//!
//! Kernel counterpart: `mm/madvise.c`. `DONTNEED` and `FREE` notify
//! `Clear` per VMA over the VMA's part of the range; `REMOVE` punches a
//! hole in the shared object and notifies every mapping of it; the flag
//! advices change VMAs (splitting, which may split THPs); the rest change
//! no page table the notifiers care about.

use crate::uapi::Advice;
use crate::vma_lock::Touches;
use mmun_core::{Event, HeldMmLock};

use crate::address_space::{AddressSpace, Ctx};
use crate::error::{Errno, SysResult};
use crate::fault;
use crate::layout::{PAGE_SIZE, align_up, is_aligned};
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
        let mut walk = Walk {
            at: addr,
            unmapped: false,
        };
        loop {
            let walked = if needs_mmap_write(advice) {
                self.write_op_on(Touches::range(addr, end), |ctx| {
                    walk_vmas(ctx, &mut walk, end, advice)
                })
            } else {
                self.read_op(|ctx| walk_vmas(ctx, &mut walk, end, advice))
            };
            match walked? {
                Walked::Done => break,
                // The call dropped the mmap lock for a file operation
                // (madvise_remove, MADV_COLLAPSE of shmem) and carries on
                // from where it was, finding the VMAs again.
                Walked::Unlocked(op) => op.run()?,
            }
        }
        if walk.unmapped {
            Err(Errno::NoMem)
        } else {
            Ok(())
        }
    }
}

/// `madvise_need_mmap_write`: the advices that change VMAs take the mmap
/// lock for write; those that only read the VMA tree and work on page
/// tables (zaps, folio splits, population) take it for read, so they run
/// beside faults and each other, serialized by the page-table lock only.
/// `MADV_COLLAPSE` keeps the write lock: `collapse_huge_page` takes it
/// for the PMD swap, which must not meet a fault in the empty PMD.
fn needs_mmap_write(advice: Advice) -> bool {
    !matches!(
        advice,
        Advice::DontNeed
            | Advice::DontNeedLocked
            | Advice::Free
            | Advice::Cold
            | Advice::PageOut
            | Advice::WillNeed
            | Advice::PopulateRead
            | Advice::PopulateWrite
            | Advice::Remove
    )
}

/// Where `madvise_walk_vmas` is, kept across the times it drops the lock.
struct Walk {
    at: u64,
    unmapped: bool,
}

/// How a stretch of the walk ended.
enum Walked {
    /// The range is done.
    Done,
    /// A piece needs a file operation run without the mmap lock.
    Unlocked(FileOp),
}

/// A file operation a piece asked for, run after the lock is dropped.
enum FileOp {
    /// `vfs_fallocate(PUNCH_HOLE)` of pages `[first, last]`.
    PunchHole {
        object: std::sync::Arc<crate::shmem::ShmemObject>,
        first: u64,
        last: u64,
    },
    /// `MADV_COLLAPSE` of a shmem piece.
    Collapse(crate::khugepaged::FileCollapse),
}

impl FileOp {
    fn run(self) -> SysResult {
        match self {
            FileOp::PunchHole {
                object,
                first,
                last,
            } => {
                punch_hole(&object, first, last);
                Ok(())
            }
            FileOp::Collapse(collapse) => collapse.run(),
        }
    }
}

/// `shmem_fallocate(FALLOC_FL_PUNCH_HOLE)`: the pages leave the cache,
/// then every mapping of them, in every address space, is unmapped under a
/// `Clear` of its part, then the cache's references go.
fn punch_hole(object: &crate::shmem::ShmemObject, first: u64, last: u64) {
    // The pages leave the cache before their mappings go (Linux unmaps,
    // then truncates with each folio locked, and a fault that finds a
    // locked or truncated folio looks again). A fault that found a page
    // before it left holds its PTE lock until it has mapped it, so the
    // unmap that follows waits for it and takes that mapping too; one
    // after finds nothing. The notifier ranges are the same.
    let punched = object.punch(first, last);
    crate::i_mmap::unmap_mapping_range(object, first, last);
    let memory = object.memory();
    for pfn in punched {
        memory.put(pfn);
    }
}

/// `madvise_walk_vmas`: applies the advice to every VMA piece in the range;
/// holes make the result `ENOMEM` but do not stop the walk; an error of a
/// piece does.
fn walk_vmas<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    walk: &mut Walk,
    end: u64,
    advice: Advice,
) -> SysResult<Walked> {
    while walk.at < end {
        let at = walk.at;
        let Some(vma) = ctx.st.vmas.find(at).filter(|v| v.start < end).cloned() else {
            if matches!(advice, Advice::PopulateRead | Advice::PopulateWrite) {
                return Err(Errno::NoMem);
            }
            walk.unmapped = true;
            break;
        };
        let at = if vma.start > at {
            if matches!(advice, Advice::PopulateRead | Advice::PopulateWrite) {
                // madvise_populate faults from the start and stops at the
                // first address no VMA covers.
                return Err(Errno::NoMem);
            }
            walk.unmapped = true;
            vma.start
        } else {
            at
        };
        let piece_end = vma.end.min(end);
        walk.at = piece_end;
        if let Some(op) = apply(ctx, &vma, at, piece_end, advice)? {
            return Ok(Walked::Unlocked(op));
        }
    }
    Ok(Walked::Done)
}

/// One piece of the walk; some advices continue without the lock.
fn apply<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    vma: &Vma,
    start: u64,
    end: u64,
    advice: Advice,
) -> SysResult<Option<FileOp>> {
    match advice {
        Advice::Remove => remove(vma, start, end).map(Some),
        Advice::Collapse => crate::khugepaged::madvise_collapse(ctx, vma, start, end)
            .map(|file| file.map(FileOp::Collapse)),
        _ => apply_locked(ctx, vma, start, end, advice).map(|()| None),
    }
}

fn apply_locked<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    vma: &Vma,
    start: u64,
    end: u64,
    advice: Advice,
) -> SysResult {
    match advice {
        Advice::DontNeed | Advice::DontNeedLocked => dontneed(ctx, vma, start, end, advice),
        Advice::Free => free(ctx, vma, start, end),
        Advice::Remove | Advice::Collapse => unreachable!("run by apply"),
        Advice::Cold | Advice::PageOut => {
            if vma.flags.contains(VmFlags::LOCKED) {
                return Err(Errno::Inval);
            }
            // Deactivation and (with no swap) pageout notify nothing, but
            // a large folio the range covers only partly is split first.
            crate::folio_split::split_partial_folios(ctx, vma, start, end);
            if advice == Advice::PageOut {
                crate::pageout::pageout(ctx, vma, start, end);
            }
            Ok(())
        }
        Advice::WillNeed => Ok(()),
        Advice::PopulateRead | Advice::PopulateWrite => {
            populate(ctx, vma, start, end, advice == Advice::PopulateWrite)
        }
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
        vma_modify(ctx, vma, start, end, |v| Vma { flags, ..v.clone() })?;
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
    ctx.end(inv);
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
    // madvise_free_huge_pmd / madvise_free_pte_range: a large folio the
    // range covers only partly is split (not merely its PMD).
    crate::folio_split::split_partial_folios(ctx, vma, start, end);
    let mem = ctx.mem;
    ctx.st.pt.for_each_pte_mut(start, end, |_, pte| {
        if pte.is_present() && !pte.is_special() {
            *pte = pte.with_dirty(false).with_young(false);
            // folio_mark_lazyfree (small anonymous folios; a large one
            // left here is wholly covered and keeps PG_swapbacked in the
            // model).
            if mem.frame(pte.pfn()).order == 0 && mem.head(pte.pfn()) == pte.pfn() {
                mem.update(pte.pfn(), |f| {
                    f.lazyfree = f.kind == crate::frame::FrameKind::Anon
                });
            }
        }
    });
    ctx.end(inv);
    Ok(())
}

/// `madvise_remove`: checks the piece and names the hole to punch in the
/// shared object behind it; the punch runs after the mmap lock is dropped
/// (as `madvise_remove` drops it around `vfs_fallocate`) and reaches every
/// VMA mapping the pages, in every address space.
fn remove(vma: &Vma, start: u64, end: u64) -> SysResult<FileOp> {
    if vma.flags.contains(VmFlags::LOCKED) {
        return Err(Errno::Inval);
    }
    let Some(file) = vma.file.clone() else {
        return Err(Errno::Inval);
    };
    if !vma.flags.contains(VmFlags::SHARED) || !vma.flags.contains(VmFlags::MAYWRITE) {
        return Err(Errno::Acces);
    }
    Ok(FileOp::PunchHole {
        object: file.object,
        first: vma.pgoff_of(start),
        last: vma.pgoff_of(end - PAGE_SIZE),
    })
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
