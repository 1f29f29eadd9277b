//! Page faults: the anonymous, zero-page, shared and copy-on-write paths.
//!
//! Kernel counterpart: `mm/memory.c` (`handle_mm_fault`,
//! `do_anonymous_page`, `do_fault`, `do_wp_page`, `wp_page_copy`,
//! `remove_device_exclusive_entry`, `do_swap_page`'s device-private
//! branch). Only replacing an existing entry
//! notifies: filling an empty one or upgrading permission never does.

use std::sync::atomic::{AtomicU64, Ordering};

use mmun_core::{Event, HeldMmLock};

use crate::address_space::Ctx;
use crate::error::{Errno, SysResult};
use crate::frame::{FrameKind, Pfn};
use crate::huge_memory;
use crate::layout::{PAGE_SIZE, PMD_SIZE, align_down};
use crate::page_table::{Leaf, PageTable, PmdEntry, Pte, SwapKind, Wait};
use crate::pte_fault::{PteFault, PteLevel};
use crate::vma::{AnonVmaId, VmFlags, Vma};

/// The frame an entry maps at `addr` regardless of protection.
pub(crate) fn mapped_frame(pt: &PageTable, addr: u64) -> Option<(Pfn, bool)> {
    match pt.pmd(addr)? {
        PmdEntry::Huge(huge) => Some((
            huge.pfn() + ((addr & (PMD_SIZE - 1)) / PAGE_SIZE),
            huge.is_write(),
        )),
        PmdEntry::Table(_) => {
            let pte = pt.pte(addr);
            pte.is_present().then(|| (pte.pfn(), pte.is_write()))
        }
        PmdEntry::None => None,
    }
}

/// What an access to `addr` reaches, following huge entries.
pub(crate) fn translate(pt: &PageTable, addr: u64) -> Option<(Pfn, bool)> {
    translate_waiting(pt, addr, Wait::Block).expect("a blocking read gets its entry")
}

/// [`translate`], giving up (`Err`) if `wait` is [`Wait::Try`] and the
/// PTE table's lock is busy.
pub(crate) fn translate_waiting(
    pt: &PageTable,
    addr: u64,
    wait: Wait,
) -> Result<Option<(Pfn, bool)>, crate::PageTableBusy> {
    let leaf = match pt.pmd(addr) {
        Some(PmdEntry::Huge(huge)) => Leaf::Huge(*huge),
        Some(PmdEntry::Table(_)) => Leaf::Pte(pt.read_pte(addr, wait).ok_or(crate::PageTableBusy)?),
        Some(PmdEntry::None) | None => Leaf::None,
    };
    Ok(cpu_reach(leaf, addr))
}

/// What a CPU access to `addr` reaches through `leaf`: the frame and
/// whether it may be written; `None` for an empty, swap or PROT_NONE entry.
pub(crate) fn cpu_reach(leaf: Leaf, addr: u64) -> Option<(Pfn, bool)> {
    match leaf {
        Leaf::Huge(huge) if !huge.is_protnone() => {
            let pfn = huge.pfn() + ((addr & (PMD_SIZE - 1)) / PAGE_SIZE);
            Some((pfn, huge.is_write()))
        }
        Leaf::Pte(pte) if pte.is_present() && !pte.is_protnone() => {
            Some((pte.pfn(), pte.is_write()))
        }
        Leaf::Huge(_) | Leaf::Pte(_) | Leaf::None => None,
    }
}

/// Whether the VMA lets the CPU access it this way (x86 `access_error`).
fn access_allowed(vma: &Vma, write: bool) -> bool {
    if write {
        vma.flags.contains(VmFlags::WRITE)
    } else {
        vma.flags.intersects(VmFlags::ACCESS)
    }
}

/// `handle_mm_fault` for a CPU access to `addr`.
pub(crate) fn handle_fault<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    addr: u64,
    write: bool,
) -> SysResult {
    let vma = ctx.st.vmas.lookup(addr).cloned().ok_or(Errno::Fault)?;
    if !access_allowed(&vma, write) {
        return Err(Errno::Fault);
    }
    fault_in_vma(ctx, &vma, addr, write)
}

/// `do_user_addr_fault`'s first try: the fault under the lock of the VMA
/// at `addr` alone (`lock_vma_under_rcu`). `None` if there is no VMA there
/// or an mmap writer has it marked: the caller faults under the mmap lock.
///
/// The caller holds the rmap stand-in, not the mmap lock: registration
/// (which takes both for write, as `mm_take_all_locks` write-locks every
/// VMA) waits for this fault, and the fault's ranges are under it.
fn fault_under_vma_lock<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    addr: u64,
    write: bool,
) -> Option<SysResult> {
    let vma = ctx.st.vmas.lookup(addr).cloned()?;
    if ctx.st.write_marks.locked(vma.start, vma.end) {
        return None;
    }
    let _inside = ctx.vma_readers.enter(vma.start, vma.end);
    if !access_allowed(&vma, write) {
        return Some(Err(Errno::Fault));
    }
    Some(fault_in_vma(ctx, &vma, addr, write))
}

/// Faults in every page of `[start, end)` of `vma` (GUP-driven population:
/// `MAP_POPULATE`, `mlock`, `MADV_POPULATE_*`). The VMA is looked up again
/// per page, since a THP fault may have given it an anon_vma.
pub(crate) fn fault_in_range<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    vma: &Vma,
    start: u64,
    end: u64,
    write: bool,
) -> SysResult {
    let mut addr = start;
    while addr < end {
        let current = ctx
            .st
            .vmas
            .lookup(addr)
            .cloned()
            .unwrap_or_else(|| vma.clone());
        fault_in_vma(ctx, &current, addr, write)?;
        addr += PAGE_SIZE;
    }
    Ok(())
}

/// The fault once the VMA and the access are known to be valid (also the
/// body of GUP-driven population).
pub(crate) fn fault_in_vma<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    vma: &Vma,
    addr: u64,
    write: bool,
) -> SysResult {
    // __handle_mm_fault allocates the PUD and PMD tables before it looks.
    ctx.st.pt.pmd_alloc(addr);
    if matches!(ctx.st.pt.pmd(addr), Some(PmdEntry::None))
        && let Some(head) = huge_memory::file_folio_for_pmd(ctx, vma, addr)
        && huge_memory::map_file_pmd(ctx, vma, align_down(addr, PMD_SIZE), head)
    {
        return Ok(());
    }
    if matches!(ctx.st.pt.pmd(addr), Some(PmdEntry::None))
        && huge_memory::thp_allowed(ctx, vma, addr)
    {
        let vma = anon_vma_prepare(ctx, vma);
        if huge_memory::huge_anonymous_fault(ctx, &vma, addr, write) {
            return Ok(());
        }
        // VM_FAULT_FALLBACK: no huge page to be had; base pages instead.
        return pte_fault(ctx, &vma, addr, write);
    }
    if let Some(PmdEntry::Huge(huge)) = ctx.st.pt.pmd(addr) {
        let huge = *huge;
        if !write || huge.is_write() {
            return Ok(());
        }
        if huge.is_special() {
            match huge_memory::huge_zero_wp(ctx, vma, addr) {
                huge_memory::ZeroWp::Done => return Ok(()),
                huge_memory::ZeroWp::Retry => return fault_in_vma(ctx, vma, addr, write),
                huge_memory::ZeroWp::Fallback => {}
            }
        }
        // wp_huge_pmd: a page-cache PMD is split (write-notify and COW
        // happen on the PTE level).
        let file = matches!(ctx.mem.frame(huge.pfn()).kind, FrameKind::File { .. });
        if !huge.is_special() && !file && reuse_huge(ctx, align_down(addr, PMD_SIZE), huge) {
            return Ok(());
        }
        huge_memory::split_huge_pmd(ctx, vma, addr);
    }
    pte_fault(ctx, vma, addr, write)
}

fn reuse_huge<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, haddr: u64, huge: Pte) -> bool {
    let frame = ctx.mem.frame(huge.pfn());
    let exclusive = frame.mapped_only_by(ctx.id) && frame.refcount == frame.total_mappings();
    if frame.anon_exclusive || exclusive {
        ctx.mem.update(huge.pfn(), |f| f.anon_exclusive = true);
        ctx.st.pt.set_pmd(
            haddr,
            PmdEntry::Huge(huge.with_write(true).with_dirty(true)),
        );
        return true;
    }
    false
}

/// The PTE level of a fault: the table is found (or made) under the PMD
/// lock, which is then dropped while the table's own lock is held
/// (`pte_fault.rs`); what notifies comes back here.
fn pte_fault<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, vma: &Vma, addr: u64, write: bool) -> SysResult {
    let addr = align_down(addr, PAGE_SIZE);
    let Some(table) = ctx.st.pt.pte_table_alloc(addr) else {
        // The PMD lock was dropped on the way here (for a start of a PMD
        // split, a COW, a device page coming back, or this function's own
        // PTE step) and a huge fault beside this one filled the PMD:
        // `pte_offset_map_lock` finds no table, and the fault starts over
        // at the PMD level.
        return fault_in_vma(ctx, vma, addr, write);
    };
    let level = PteLevel {
        mem: ctx.mem,
        id: ctx.id,
        vma,
    };
    let step = ctx
        .st
        .unlocked(|| crate::pte_fault::fault_locked(&level, &table, addr, write));
    match step {
        PteFault::Done(result) => result,
        PteFault::Retry => pte_fault(ctx, vma, addr, write),
        PteFault::NeedsAnonVma => {
            let vma = anon_vma_prepare(ctx, vma);
            pte_fault(ctx, &vma, addr, write)
        }
        PteFault::Notifying(pte) => notifying_fault(ctx, vma, addr, write, pte),
    }
}

/// The faults that notify, under the PMD lock: whatever the PTE level
/// saw is found again by each path after its start.
fn notifying_fault<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    vma: &Vma,
    addr: u64,
    write: bool,
    pte: Pte,
) -> SysResult {
    match pte.swap_kind() {
        Some(SwapKind::DeviceExclusive) => {
            remove_device_exclusive_entry(ctx, vma, addr, pte);
            pte_fault(ctx, vma, addr, write)
        }
        Some(SwapKind::DevicePrivate) => {
            // do_swap_page: the owner's migrate_to_ram, then the access again.
            if page_held_if_same(ctx, addr, pte, true) {
                let migrated = crate::device_private::migrate_to_ram(ctx, vma, addr, pte);
                ctx.mem.put(pte.pfn());
                migrated?;
            }
            pte_fault(ctx, vma, addr, write)
        }
        // A device migration's entry, seen while it held the PMD lock and
        // gone now that this holds it (`migration_entry_wait`).
        Some(_) => pte_fault(ctx, vma, addr, write),
        None => {
            // do_wp_page: the zero page is not counted, so not held.
            let counted = !pte.is_special();
            if !page_held_if_same(ctx, addr, pte, counted) {
                return pte_fault(ctx, vma, addr, write);
            }
            let copied = wp_page_copy(ctx, vma, addr, pte);
            if counted {
                ctx.mem.put(pte.pfn());
            }
            match copied {
                Some(result) => result,
                None => pte_fault(ctx, vma, addr, write),
            }
        }
    }
}

/// `pte_same` under the PTE lock, and (if `take_ref`) a reference on the
/// page the entry maps taken in that same hold (`do_wp_page` and
/// `do_swap_page` take one before they drop the lock): whatever a zap
/// beside the caller does, the page stays the one the entry named until
/// the caller puts it. False, with no reference, if the entry changed.
fn page_held_if_same<L: HeldMmLock>(ctx: &Ctx<'_, L>, addr: u64, pte: Pte, take_ref: bool) -> bool {
    let mem = ctx.mem;
    ctx.st.pt.pte_mut(addr).is_some_and(|slot| {
        let same = *slot == pte;
        if same && take_ref {
            mem.get(pte.pfn());
        }
        same
    })
}

/// `wp_page_copy`: copy the page, and swap the PTE under a `Clear` of the
/// page (v6.5: `ptep_clear_flush_notify` + `set_pte_at_notify`, then
/// `invalidate_range_only_end`).
///
/// `None` if the entry changed meanwhile: the caller drops its reference
/// on the old page and retries the access.
fn wp_page_copy<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    vma: &Vma,
    addr: u64,
    old: Pte,
) -> Option<SysResult> {
    let vma = anon_vma_prepare(ctx, vma);
    let Some(new_pfn) = ctx.mem.alloc(FrameKind::Anon) else {
        return Some(Err(Errno::NoMem));
    };
    ctx.mem.copy_page(old.pfn(), new_pfn);
    let inv = ctx.start(Event::Clear, addr, addr + PAGE_SIZE);
    // The page-table lock was dropped for the start: `pte_same` under the
    // PTE lock, in the same hold as the swap, or the fault starts over
    // from what is there now (the CPU retries the access).
    let new = Pte::new(new_pfn, vma.flags.contains(VmFlags::WRITE));
    let (mem, id) = (ctx.mem, ctx.id);
    let swapped = ctx.st.pt.pte_mut(addr).and_then(|mut slot| {
        if *slot != old {
            return None;
        }
        let slot_old = inv.ptep_clear_flush_notify(addr, || old);
        inv.set_pte_at_notify(addr, new.raw(), |_| ());
        mem.map_pte(new_pfn, id);
        mem.touch_write(new_pfn);
        *slot = new;
        Some(slot_old)
    });
    let Some(slot_old) = swapped else {
        ctx.end(inv);
        ctx.mem.put(new_pfn);
        return None;
    };
    ctx.only_end(inv);
    crate::zap::release_pte(ctx.mem, ctx.id, slot_old);
    Some(Ok(()))
}

/// `remove_device_exclusive_entry`: a CPU access takes the page back from
/// the device, under a `Clear` (6.18; v6.5 used `Exclusive`) without owner.
fn remove_device_exclusive_entry<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    vma: &Vma,
    addr: u64,
    entry: Pte,
) {
    let inv = ctx.start(Event::Clear, addr, addr + PAGE_SIZE);
    // Found again under the PTE lock, and restored in the same hold:
    // another CPU access may have restored it (the caller's fault then
    // goes on with whatever is there).
    if let Some(mut slot) = ctx.st.pt.pte_mut(addr)
        && *slot == entry
    {
        ctx.mem.map_pte(entry.pfn(), ctx.id);
        *slot = restore_exclusive_pte(ctx, vma, entry);
    }
    ctx.end(inv);
}

/// `restore_exclusive_pte` (6.15+): the present entry is rebuilt from the
/// VMA's protection as it is now, writable only where
/// `can_change_pte_writable` allows (an `mprotect(PROT_READ)` while the
/// device held the page leaves it read-only), not from the write bit the
/// entry had when the device took it.
pub(crate) fn restore_exclusive_pte<L: HeldMmLock>(ctx: &Ctx<'_, L>, vma: &Vma, entry: Pte) -> Pte {
    let read_only = Pte::new(entry.pfn(), false);
    let writable = vma.flags.contains(VmFlags::WRITE)
        && crate::mprotect::can_change_writable(ctx, vma, read_only);
    read_only.with_write(writable)
}

/// `anon_vma_prepare`: gives the VMA an anon_vma, reusing an adjacent
/// compatible VMA's (`find_mergeable_anon_vma`) so that they may still
/// merge. Returns the VMA as updated.
pub(crate) fn anon_vma_prepare<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, vma: &Vma) -> Vma {
    let current = ctx
        .st
        .vmas
        .lookup(vma.start)
        .cloned()
        .unwrap_or_else(|| vma.clone());
    if current.anon_vma.is_some() {
        return current;
    }
    let reuse = neighbour_anon_vma(ctx, &current);
    let id = reuse.unwrap_or_else(new_anon_vma);
    let slot = ctx
        .st
        .vmas
        .get_mut(current.start)
        .expect("VMA is in the tree");
    slot.anon_vma = Some(id);
    slot.clone()
}

fn neighbour_anon_vma<L: HeldMmLock>(ctx: &Ctx<'_, L>, vma: &Vma) -> Option<AnonVmaId> {
    let compatible = |other: &Vma| {
        crate::vma::merge_key(other.flags) == crate::vma::merge_key(vma.flags)
            && other.file.is_none()
            && vma.file.is_none()
    };
    let prev = ctx
        .st
        .vmas
        .prev(vma.start)
        .filter(|p| p.end == vma.start && compatible(p));
    let next = ctx
        .st
        .vmas
        .next_from(vma.end)
        .filter(|n| n.start == vma.end && compatible(n));
    prev.and_then(|p| p.anon_vma)
        .or_else(|| next.and_then(|n| n.anon_vma))
}

/// A fresh anon_vma identity.
pub(crate) fn new_anon_vma() -> AnonVmaId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl crate::AddressSpace {
    /// A CPU access to `addr`: a page fault if the page is not mapped with
    /// the needed permission. `EFAULT` where the access would `SIGSEGV`.
    ///
    /// The fault takes its VMA's lock, not the mmap lock, unless an mmap
    /// writer is changing that VMA (`lock_vma_under_rcu`, then the mmap
    /// lock for read if that fails).
    pub fn access(&self, addr: u64, write: bool) -> SysResult {
        if !self.every_vma_written()
            && let Some(done) = self.rmap_op(|ctx| fault_under_vma_lock(ctx, addr, write))
        {
            return done;
        }
        self.read_op(|ctx| handle_fault(ctx, addr, write))
    }
}
